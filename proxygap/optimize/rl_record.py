"""What an RL run records: its result, its failure, and how an evaluation row is assembled.

Used by :func:`proxygap.optimize.rl.train_rl`; the metric names are documented in
:mod:`proxygap.optimize.rl`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedModel

from proxygap.optimize.evaluate import PolicyEvaluator


@dataclass
class RLResult:
    """``history``: one row per evaluation point (see :mod:`proxygap.optimize.rl`); ``steps``: the
    training metrics of every step; ``examples``: evaluator examples tagged with their step."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


class NonFiniteError(FloatingPointError):
    """A reward or loss became NaN or inf; ``step`` is where, ``result`` the run so far."""

    def __init__(self, message: str, *, step: int, result: RLResult) -> None:
        super().__init__(f"step {step}: {message}")
        self.message = message
        self.step = step
        self.result = result

    def __reduce__(self) -> tuple[Any, tuple[str, int, RLResult]]:
        # keyword-only arguments: pickling (e.g. from a worker process) goes through a function
        return _non_finite, (self.message, self.step, self.result)


def _non_finite(message: str, step: int, result: RLResult) -> NonFiniteError:
    return NonFiniteError(message, step=step, result=result)


def checked_rewards(raw: Any, reward: Any, *, n: int, step: int, result: RLResult) -> np.ndarray:
    """The transformed rewards as float64 ``(n,)``, after checking shapes and finiteness."""
    raw, reward = np.asarray(raw, dtype=np.float64), np.asarray(reward, dtype=np.float64)
    if raw.shape != (n,) or reward.shape != (n,):
        raise ValueError(
            f"rewards must have shape ({n},), got {raw.shape} and {reward.shape} after the "
            "transform"
        )
    if not np.isfinite(reward).all():
        bad = int((~np.isfinite(reward)).sum())
        raise NonFiniteError(f"{bad} non-finite rewards", step=step, result=result)
    return reward


def evaluation_row(
    evaluator: PolicyEvaluator,
    policy: PreTrainedModel,
    *,
    step: int,
    batch_size: int,
    window: list[dict[str, float]],
    t_start: float,
    **eval_kw: Any,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """One history row: ``step``, ``samples_seen``, the evaluator's metrics, the means of the
    training metrics over ``window`` (the steps since the last row), ``time/wall`` and
    ``time/eval``; and the evaluator's examples tagged with the step. ``eval_kw`` go to the
    evaluator's call (e.g. ``prefix`` and ``vocab_size`` for a conditioned policy)."""
    t0 = time.perf_counter()
    metrics, examples = evaluator(policy, **eval_kw)
    row = {"step": float(step), "samples_seen": float(step * batch_size), **metrics}
    row |= window_means(window)
    row |= {"time/wall": time.perf_counter() - t_start, "time/eval": time.perf_counter() - t0}
    return row, [{"step": step, **e} for e in examples]


def record_evaluation(
    result: RLResult,
    evaluator: PolicyEvaluator,
    policy: PreTrainedModel,
    *,
    step: int,
    batch_size: int,
    window: list[dict[str, float]],
    t_start: float,
    log: Callable[[str], Any],
    note: str = "",
    **eval_kw: Any,
) -> None:
    """Append an evaluation row (:func:`evaluation_row`) and its examples to ``result`` and log
    one line (``note`` adds the trainer's own state, e.g. the KL coefficient)."""
    row, examples = evaluation_row(
        evaluator, policy, step=step, batch_size=batch_size, window=window, t_start=t_start,
        **eval_kw,
    )  # fmt: skip
    result.history.append(row)
    result.examples += examples
    log(
        f"step {step:5d}  proxy {row.get('reward/proxy', math.nan):+.3f}  "
        f"gold {row['reward/gold']:+.3f}±{row['reward/gold_se']:.3f}  "
        f"kl {row['kl/k1']:.3f}  {note}  ({row['time/wall']:.0f}s)"
    )


def window_means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over ``rows`` (a key missing from some rows: mean of the others)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for k, v in row.items():
            sums[k].append(v)
    return {k: float(np.mean(v)) for k, v in sums.items()}
