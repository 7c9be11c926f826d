"""One scoring service for trainers that call a reward function per sample or per batch from
their own workers (verl's reward managers, OpenRLHF's ``reward_func`` file): the ensemble
reward, gold when given, each sample's member disagreement, and the windowed signals and monitor
metrics (:class:`~proxygap.integrations.scoring.SampleWindow`) as extra logs.

Such trainers load the reward function from a file path, so :meth:`RewardService.from_env`
builds the service from environment variables (each error names the variable and its value):

=============================  ==================================================================
``PROXYGAP_REWARD_MODELS``     reward-model folders, separated by ``os.pathsep`` (required)
``PROXYGAP_AGGREGATION``       ``mean`` (default), ``wco`` or ``uwo``
``PROXYGAP_UWO_LAMBDA``        UWO's variance weight (default 0.5)
``PROXYGAP_REFERENCE``         a text file, one base-policy text per line, to standardise members
``PROXYGAP_GOLD``              ``module:function`` mapping a list of texts to gold scores
``PROXYGAP_WINDOW``            samples per batch of signals (default 64)
``PROXYGAP_DEVICE``            device of the reward models (default ``cpu``)
``PROXYGAP_TRUST_REMOTE_CODE`` ``1`` to allow a model's own code (default: never)
=============================  ==================================================================
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from proxygap.integrations.scoring import (
    AGGREGATIONS,
    EnsembleScorer,
    SampleWindow,
    default_monitor,
    member_std,
)

__all__ = ["RewardService", "ServiceConfigError", "shared_service"]


class ServiceConfigError(ValueError):
    """An environment variable that does not configure a reward service."""


class RewardService:
    """Scores texts with an ensemble (and gold), keeping a window of signals.

    Args:
        scorer: the ensemble.
        gold: optional ``fn(texts) -> (B,)`` gold scores, logged and never returned as reward.
        window: samples per batch of signals.
        monitor: ``"auto"`` (:func:`~proxygap.integrations.scoring.default_monitor`), None or
            an object with ``update(row) -> dict``.
    """

    def __init__(
        self,
        scorer: EnsembleScorer,
        *,
        gold: Callable[[list[str]], Any] | None = None,
        window: int = 64,
        monitor: Any = "auto",
    ) -> None:
        self.scorer, self.gold = scorer, gold
        monitor = default_monitor() if isinstance(monitor, str) and monitor == "auto" else monitor
        self.window = SampleWindow(window, monitor=monitor)
        self.keys = self._keys(monitor is not None)

    def _keys(self, with_monitor: bool) -> tuple[str, ...]:
        """The extra-log keys every result carries (verl needs the same keys for every sample)."""
        keys = ["proxygap/proxy", "proxygap/ensemble_std"]
        if self.gold is not None:
            keys.append("proxygap/gold")
        if with_monitor:
            keys += ["proxygap/monitor/score", "proxygap/monitor/alarm"]
        return tuple(keys)

    def score(
        self, texts: Sequence[str], completions: Sequence[str]
    ) -> tuple[np.ndarray, list[dict[str, float]]]:
        """Rewards ``(B,)`` of the full ``texts`` and, per sample, its extra logs: its proxy,
        member SD and gold, and the window's latest monitor score and alarm (NaN and 0 before
        the first full window)."""
        if len(texts) != len(completions):
            raise ValueError(f"{len(texts)} texts for {len(completions)} completions")
        members = self.scorer.members(list(texts))
        rewards = self.scorer.aggregate(members)
        stds = member_std(members)
        gold = None
        if self.gold is not None:
            gold = np.asarray(self.gold(list(texts)), dtype=np.float64).reshape(-1)
            if gold.shape[0] != len(texts):
                raise ValueError(f"gold returned {gold.shape[0]} scores for {len(texts)} texts")
        extras = []
        for i, completion in enumerate(completions):
            latest = self.window.add(
                float(rewards[i]), completion,
                gold=None if gold is None else float(gold[i]), std=float(stds[i]),
            )  # fmt: skip
            row = {"proxygap/proxy": float(rewards[i]), "proxygap/ensemble_std": float(stds[i])}
            if gold is not None:
                row["proxygap/gold"] = float(gold[i])
            if "proxygap/monitor/score" in self.keys:
                row["proxygap/monitor/score"] = latest.get("proxygap/monitor/score", float("nan"))
                row["proxygap/monitor/alarm"] = latest.get("proxygap/monitor/alarm", 0.0)
            extras.append(row)
        return rewards, extras

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RewardService:
        """A service configured by the ``PROXYGAP_*`` variables (module docstring)."""
        env = os.environ if env is None else env
        paths = [p for p in env.get("PROXYGAP_REWARD_MODELS", "").split(os.pathsep) if p]
        if not paths:
            raise ServiceConfigError(
                "PROXYGAP_REWARD_MODELS is not set: give the reward-model folders, separated by "
                f"{os.pathsep!r}"
            )
        aggregation = env.get("PROXYGAP_AGGREGATION", "mean")
        if aggregation not in AGGREGATIONS:
            raise ServiceConfigError(
                f"PROXYGAP_AGGREGATION={aggregation!r} is not one of {list(AGGREGATIONS)}"
            )
        lam = _number(env, "PROXYGAP_UWO_LAMBDA", "0.5", float)
        window = _number(env, "PROXYGAP_WINDOW", "64", int)
        reference = None
        if env.get("PROXYGAP_REFERENCE"):
            path = Path(env["PROXYGAP_REFERENCE"])
            try:
                reference = [x for x in path.read_text(encoding="utf-8").splitlines() if x]
            except (OSError, UnicodeDecodeError) as err:
                raise ServiceConfigError(f"PROXYGAP_REFERENCE={str(path)!r}: {err}") from err
        gold = _import_function(env["PROXYGAP_GOLD"]) if env.get("PROXYGAP_GOLD") else None
        scorer = EnsembleScorer.from_folders(
            paths, aggregation=aggregation, uwo_lambda=lam, reference=reference,
            device=env.get("PROXYGAP_DEVICE", "cpu"),
            trust_remote_code=env.get("PROXYGAP_TRUST_REMOTE_CODE", "0") == "1",
        )  # fmt: skip
        return cls(scorer, gold=gold, window=window)


def _number(env: Mapping[str, str], name: str, default: str, kind: type) -> Any:
    text = env.get(name, default)
    try:
        return kind(text)
    except ValueError:
        raise ServiceConfigError(f"{name}={text!r} is not a {kind.__name__}") from None


def _import_function(spec: str) -> Callable[[list[str]], Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ServiceConfigError(f"PROXYGAP_GOLD={spec!r} must look like 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ServiceConfigError(f"PROXYGAP_GOLD={spec!r}: {err}") from err
    if not callable(fn):
        raise ServiceConfigError(f"PROXYGAP_GOLD={spec!r} is not callable")
    return fn


_SHARED: dict[str, RewardService] = {}
_SHARED_LOCK = threading.Lock()


def shared_service() -> RewardService:
    """The process's service from the environment, built once on first use (the trainers call
    reward functions from several threads)."""
    with _SHARED_LOCK:
        if "env" not in _SHARED:
            _SHARED["env"] = RewardService.from_env()
        return _SHARED["env"]
