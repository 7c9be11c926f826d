"""Atomic training checkpoints (policy, critic, tokenizer, trainer state) of any optimiser, and
a watcher that keeps a run's final and best-by-gold policy (:class:`PolicyKeeper`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel


def save_checkpoint(
    folder: Path | str,
    *,
    step: int,
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    tokenizer: Any,
    state: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write ``folder/step-{step:06d}`` atomically: into a temporary folder beside it, renamed
    when complete. Holds ``policy/`` (and ``critic/``) as safetensors model folders, the
    tokenizer, ``trainer_state.pt`` (``state``: optimiser, scheduler, KL controller, prompt
    position, history so far, ...; loadable with ``torch.load(..., weights_only=True)``) and
    ``rl_config.json`` (the run's config). Sampling and shuffling seeds derive from
    ``(seed, step)``, so a run resumed from this state can continue exactly.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        if critic is not None:
            critic.save_pretrained(tmp / "critic", safe_serialization=True)
        torch.save({"step": step, **state}, tmp / "trainer_state.pt")
        (tmp / "rl_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class PolicyKeeper:
    """Keeps a run's final and best policy: an evaluation watcher
    (:class:`~proxygap.optimize.loop.Watchers`) that remembers the policy's weights (a copy on
    the CPU) at the evaluation with the highest ``metric`` (gold by default: the policy one
    would have wanted to stop at, Gao et al. 2023), and a close hook that writes
    ``folder/policy-final`` and ``folder/policy-best`` (safetensors model folders with the
    tokenizer) and ``folder/policy-best.json`` (the step and value of the best evaluation).

    When the overoptimization monitor watches the run (its ``monitor/alarm`` in the rows, the
    monitor placed before the keeper), it also keeps the policy of the last evaluation before the
    first alarm, what a practitioner without gold would roll back to, and writes it as
    ``folder/policy-before-alarm`` with ``folder/policy-before-alarm.json`` (its step).

    It reads the policy and changes nothing: the run's numbers are the same with or without it.
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        tokenizer: Any,
        folder: Path | str,
        *,
        metric: str = "reward/gold",
    ) -> None:
        self.policy, self.tokenizer, self.folder, self.metric = (
            policy,
            tokenizer,
            Path(folder),
            metric,
        )
        self.best: dict[str, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.alarmed = False
        self.before_alarm: dict[str, float] | None = None
        self.before_alarm_state: dict[str, torch.Tensor] | None = None

    def _snapshot(self) -> dict[str, torch.Tensor]:
        copies: dict[int, torch.Tensor] = {}  # tied weights stay tied in the copy
        return {
            k: copies.setdefault(id(v), v.detach().to("cpu", copy=True))
            for k, v in self.policy.state_dict().items()
        }

    def __call__(self, row: dict[str, float], result: Any = None) -> None:
        alarm = row.get("monitor/alarm")
        if alarm is not None and not self.alarmed:
            if alarm == 1.0:
                self.alarmed = True
            else:
                self.before_alarm = {"step": row["step"]}
                self.before_alarm_state = self._snapshot()
        value = row.get(self.metric)
        if value is None or value != value:  # absent or NaN
            return
        if self.best is None or value > self.best[self.metric]:
            self.best = {"step": row["step"], self.metric: float(value)}
            self.best_state = self._snapshot()

    def _write(self, name: str, state: dict[str, torch.Tensor] | None) -> None:
        folder = self.folder / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder))
        try:
            self.policy.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def close(self) -> None:
        """Write the final and the best policy (nothing if no evaluation was seen), and the
        last one before the monitor's first alarm when it alarmed."""
        if self.best is None or self.best_state is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write("policy-final", None)
        self._write("policy-best", self.best_state)
        info = json.dumps({"metric": self.metric, **self.best}, indent=2) + "\n"
        (self.folder / "policy-best.json").write_text(info, encoding="utf-8")
        if self.alarmed and self.before_alarm_state is not None:
            self._write("policy-before-alarm", self.before_alarm_state)
            info = json.dumps(self.before_alarm, indent=2) + "\n"
            (self.folder / "policy-before-alarm.json").write_text(info, encoding="utf-8")
