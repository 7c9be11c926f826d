"""Reward functions in TRL's ``reward_funcs`` signature, which also tell
:class:`~proxygap.integrations.trl_callback.ProxygapCallback` what they scored.

TRL (1.16, ``GRPOTrainer._calculate_rewards``; ``RLOOTrainer`` alike) calls every custom reward
function as ``f(prompts=..., completions=..., completion_ids=..., trainer_state=...,
log_extra=..., log_metric=..., **dataset_columns)`` and expects one float (or None) per
completion; it logs ``rewards/<f.__name__>/mean`` and trains on ``sum_i reward_weights[i] *
f_i``. A reward that is logged and not trained on is a function with weight 0 (``GRPOConfig(
reward_weights=[1.0, 0.0])``), which is how :func:`gold_reward` is meant to be used.

Each function here (and any function wrapped by :func:`monitor_reward`) leaves what it scored on
a per-trainer board keyed by the ``trainer_state`` TRL passes; the callback reads the board after
every optimiser step. Roles: ``"proxy"`` (what the policy optimises; the callback's
``reward/proxy`` is the weighted sum of the proxy-role functions) and ``"gold"`` (logged as
``reward/gold``).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from proxygap.integrations.scoring import EnsembleScorer, Joiner, concat_join
from proxygap.mitigations.hooks import RewardTransform
from proxygap.mitigations.transforms import LSCTransform, PARTransform
from proxygap.sampling.generate import decode_responses, sample

__all__ = [
    "EnsembleReward",
    "GoldReward",
    "Scored",
    "TRLReward",
    "TransformedReward",
    "ensemble_reward",
    "gold_reward",
    "lsc_reward",
    "monitor_reward",
    "par_reward",
    "reference_rewards",
    "take",
]

Role = Literal["proxy", "gold"]
MAX_PENDING = 256  # batches kept per trainer when no callback reads them


# ---------------------------------------------------------------- the board
@dataclass
class Scored:
    """One reward function's scores of one batch: ``rewards`` ``(B,)``, ``members`` ``(B, K)``
    for ensembles, the completions as text and their lengths in tokens (when TRL passed ids)."""

    name: str
    role: Role
    rewards: np.ndarray
    completions: list[str]
    members: np.ndarray | None = None
    lengths: np.ndarray | None = None


_BOARD: dict[int, deque[Scored]] = {}
_LOCK = threading.Lock()


def record(state: Any, item: Scored) -> None:
    """Leave ``item`` for the callback of the trainer whose ``state`` TRL passed (async reward
    functions run on other threads, hence the lock)."""
    key = id(state) if state is not None else 0
    with _LOCK:
        _BOARD.setdefault(key, deque(maxlen=MAX_PENDING)).append(item)


def take(state: Any) -> list[Scored]:
    """Everything recorded for ``state``'s trainer since the last call, oldest first."""
    with _LOCK:
        items = _BOARD.pop(id(state), None)
    return list(items) if items else []


def _text(completion: Any) -> str:
    """A completion as text: itself, or the content of the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else str(content)
    return str(completion)


def _lengths(completion_ids: Any) -> np.ndarray | None:
    if completion_ids is None:
        return None
    return np.array([len(ids) for ids in completion_ids], dtype=np.float64)


# ---------------------------------------------------------------- reward functions
class TRLReward:
    """Base of the reward functions: ``join`` the prompts and completions into texts, ``score``
    them, record, return a list of floats. Subclasses implement :meth:`score`."""

    role: Role = "proxy"

    def __init__(self, name: str, join: Joiner = concat_join) -> None:
        if not name.isidentifier():
            raise ValueError(f"reward name must be an identifier (TRL logs it), got {name!r}")
        self.__name__ = name
        self.join = join

    def score(
        self, texts: list[str], prompts: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(rewards (B,), members (B, K) or None)`` of the joined ``texts``."""
        raise NotImplementedError

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
        **kwargs: Any,
    ) -> list[float]:  # fmt: skip
        rewards, members = self.score(self.join(prompts, completions), prompts)
        record(
            kwargs.get("trainer_state"),
            Scored(self.__name__, self.role, np.asarray(rewards, dtype=np.float64),
                   [_text(c) for c in completions], members, _lengths(completion_ids)),
        )  # fmt: skip
        return [float(r) for r in rewards]


class EnsembleReward(TRLReward):
    """An :class:`~proxygap.integrations.scoring.EnsembleScorer` as a TRL reward function."""

    def __init__(self, scorer: EnsembleScorer, *, name: str, join: Joiner = concat_join) -> None:
        super().__init__(name, join)
        self.scorer = scorer

    def score(self, texts: list[str], prompts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        members = self.scorer.members(texts)
        return self.scorer.aggregate(members), members


class TransformedReward(TRLReward):
    """``transform(base(texts), texts, prompts)``: a reward transform hook
    (:class:`proxygap.mitigations.hooks.RewardTransform`) over another reward function's
    scores; prompts are TRL's, so per-prompt references are keyed by the dataset's prompts."""

    def __init__(self, base: TRLReward, transform: RewardTransform, *, name: str) -> None:
        super().__init__(name, base.join)
        self.base, self.transform = base, transform

    def score(
        self, texts: list[str], prompts: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        rewards, members = self.base.score(texts, prompts)
        keys = [p if isinstance(p, str) else str(p) for p in prompts]
        return np.asarray(self.transform(rewards, texts, keys), dtype=np.float64), members


class GoldReward(TRLReward):
    """A gold reward ``fn(texts) -> (B,)`` divided by ``scale``, logged as ``reward/gold`` by
    the callback. Give it weight 0 in ``reward_weights`` to log it without training on it."""

    role: Role = "gold"

    def __init__(
        self, fn: Callable[[list[str]], Any], *, name: str = "gold", join: Joiner = concat_join,
        scale: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__(name, join)
        if not scale > 0:
            raise ValueError(f"gold scale must be > 0, got {scale}")
        self.fn, self.scale = fn, scale

    def score(self, texts: list[str], prompts: Sequence[Any]) -> tuple[np.ndarray, None]:
        out = np.asarray(self.fn(texts), dtype=np.float64).reshape(-1)
        if out.shape[0] != len(texts):
            raise ValueError(f"gold returned {out.shape[0]} scores for {len(texts)} texts")
        return out / self.scale, None


def ensemble_reward(
    members: Sequence[str | Path] | EnsembleScorer,
    *,
    aggregation: str = "mean",
    uwo_lambda: float = 0.5,
    reference: Sequence[str] | None = None,
    join: Joiner = concat_join,
    name: str | None = None,
    **load: Any,
) -> EnsembleReward:
    """An ensemble reward (Coste et al. 2023) from reward-model folders (or a built scorer).

    Args:
        members: folders loadable by :func:`proxygap.models.loading.load_reward_model`
            (safetensors, no remote code unless ``trust_remote_code=True`` is passed), e.g. a
            study's ``proxies/<name>/member-*``; or an
            :class:`~proxygap.integrations.scoring.EnsembleScorer`.
        aggregation: ``"mean"``, ``"wco"`` or ``"uwo"``.
        uwo_lambda: UWO's variance weight.
        reference: base-policy texts the members are standardised on (recommended for WCO and
            UWO); see :class:`~proxygap.integrations.scoring.EnsembleScorer`.
        join: ``(prompts, completions) -> texts`` as the members read them; TRL's
            ``prompt + completion`` by default, :func:`~proxygap.integrations.scoring.text_join`
            for the built-in tasks.
        name: the name TRL logs (default ``ensemble_<aggregation>``).
        load: ``tokenizer``, ``device``, ``dtype``, ``trust_remote_code``, ``normalise``,
            ``batch_size`` for :meth:`EnsembleScorer.from_folders`.
    """
    if isinstance(members, EnsembleScorer):
        if load or reference is not None:
            raise ValueError("pass loading options and reference texts to the scorer itself")
        scorer = members
    else:
        scorer = EnsembleScorer.from_folders(
            list(members), aggregation=aggregation, uwo_lambda=uwo_lambda, reference=reference,
            **load,
        )  # fmt: skip
    return EnsembleReward(scorer, name=name or f"ensemble_{scorer.aggregation}", join=join)


def gold_reward(
    fn: Callable[[list[str]], Any], *, join: Joiner = concat_join, scale: float = 1.0,
    name: str = "gold",
) -> GoldReward:  # fmt: skip
    """A gold reward to log beside training: pass it in ``reward_funcs`` with weight 0 in
    ``reward_weights`` (TRL's documented way to log a reward it does not train on)."""
    return GoldReward(fn, name=name, join=join, scale=scale)


def par_reward(
    base: TRLReward, reference: Mapping[str, np.ndarray], *, name: str = "par"
) -> TransformedReward:
    """Preference As Reward over ``base`` (Fu et al. 2025; docs/methods.md §4):
    ``mean_m sigmoid(r - r_ref_m)`` with ``reference`` mapping every training prompt (as in the
    dataset) to the ``(M,)`` base rewards of its initial-policy responses
    (:func:`reference_rewards`)."""
    return TransformedReward(base, PARTransform(reference), name=name)


def lsc_reward(
    base: TRLReward, reference: Mapping[str, np.ndarray], *, q: float = 0.85, name: str = "lsc"
) -> TransformedReward:
    """Log-sigmoid centred ``base`` (Wang et al. 2024; docs/methods.md §4):
    ``log sigmoid(r - r_ref(x))``, ``r_ref(x)`` the ``q`` quantile of each prompt's
    initial-policy rewards (``reference`` as for :func:`par_reward`)."""
    return TransformedReward(base, LSCTransform.from_rewards(reference, q=q), name=name)


def monitor_reward(fn: Callable[..., Any], *, role: Role = "proxy", name: str | None = None) -> Any:
    """``fn`` (a TRL reward function, sync or async) unchanged for TRL, and recorded for the
    callback: its rewards become ``reward/proxy`` (``role="proxy"``) or ``reward/gold``."""
    label = name or str(getattr(fn, "__name__", type(fn).__name__))

    def keep(out: Any, completions: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        values = np.array([np.nan if r is None else float(r) for r in out], dtype=np.float64)
        record(
            kwargs.get("trainer_state"),
            Scored(label, role, values, [_text(c) for c in completions],
                   lengths=_lengths(kwargs.get("completion_ids"))),
        )  # fmt: skip

    if inspect.iscoroutinefunction(fn):

        async def wrapped_async(prompts: Any, completions: Any, **kwargs: Any) -> Any:
            out = await fn(prompts=prompts, completions=completions, **kwargs)
            keep(out, completions, kwargs)
            return out

        wrapper: Any = wrapped_async
    else:

        def wrapped(prompts: Any, completions: Any, **kwargs: Any) -> Any:
            out = fn(prompts=prompts, completions=completions, **kwargs)
            keep(out, completions, kwargs)
            return out

        wrapper = wrapped
    functools.update_wrapper(wrapper, fn)
    wrapper.__name__ = label
    wrapper.proxygap_role = role
    return wrapper


@torch.no_grad()
def reference_rewards(
    base: TRLReward,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    n: int = 4,
    max_new_tokens: int = 40,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """``n`` initial-policy responses per prompt scored by ``base``: the per-prompt references
    of :func:`par_reward` and :func:`lsc_reward`, keyed by the prompts as the dataset holds them.

    Prompts are tokenized as TRL tokenizes standard-format prompts (``tokenizer(text=prompts)``)
    and sampled with :func:`proxygap.sampling.generate.sample`.
    """
    prompts = list(dict.fromkeys(prompts))
    ids = [list(x) for x in tokenizer(text=prompts)["input_ids"]]
    s = sample(
        policy, ids, n_per_prompt=n, max_new_tokens=max_new_tokens, temperature=temperature,
        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, batch_size=batch_size,
        seed=seed,
    )  # fmt: skip
    rows = [prompts[i] for i in s.prompt_index.tolist()]
    responses = decode_responses(s, tokenizer)
    rewards, _ = base.score(base.join(rows, responses), rows)
    grid = np.asarray(rewards, dtype=np.float64).reshape(len(prompts), n)
    return {p: grid[i] for i, p in enumerate(prompts)}
