"""The loop every optimiser runs: evaluate, train a step, record, checkpoint, stop on NaN.

RL (:mod:`proxygap.optimize.rl`), Quark (:mod:`proxygap.optimize.quark`) and direct alignment
(:mod:`proxygap.optimize.daa`) differ only in how one training step is taken and how the policy
is evaluated; :func:`run_loop` does the rest the same way for all of them:

- evaluate when the :class:`Schedule` says (e.g. at step 0 and every ``k`` steps) and after the
  last step; an
  evaluation row holds ``step``, ``samples_seen``, the evaluation's metrics, the means of the
  training metrics since the previous row (absent at step 0), ``time/wall`` (seconds since the
  start, evaluations included) and ``time/eval`` (seconds of this evaluation);
- record every step's metrics (``LoopResult.steps``, with ``step`` = steps done and
  ``time/step``, the step's seconds);
- call the ``on_evaluate`` hooks with each new row (a monitor reads the run here) and the
  ``on_step`` hooks with each step's row (a tracker logs here);
- show a progress bar (steps, latest proxy and KL) when given a description;
- checkpoint every ``checkpoint_every`` steps (or before each evaluation) through the
  optimiser's own ``checkpoint``, handing it the loop's own state (:func:`loop_state`: the record
  so far, the watchers' state, torch's random state, the wall time) to save beside its own; given
  that state back as ``resume``, the loop continues where the checkpoint was taken, and the run
  ends with the numbers of one that was never interrupted (timings aside);
- turn a NaN or inf anywhere in a step into :class:`~proxygap.errors.NonFiniteError` naming the
  step and holding the run so far.

:func:`optimiser_step` is the update every optimiser shares: gradients accumulated over forward
passes, each pass's loss weighted by its share of the step, clipped, one optimiser step.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from proxygap.errors import NonFiniteError

__all__ = [
    "EvalHook",
    "StepHook",
    "Stateful",
    "Watchers",
    "LoopResult",
    "Schedule",
    "checked_rewards",
    "loop_state",
    "optimiser_step",
    "run_loop",
    "window_means",
]


@dataclass
class LoopResult:
    """What a training loop records: ``history`` (one row per evaluation point), ``steps`` (the
    training metrics of every step), ``examples`` (evaluation samples tagged with their step) and
    ``config`` (the run's settings, JSON-ready); ``stopped_at``: the step at which a watcher
    stopped the run early (None when it ran to the end); ``resumed_at``: the step a resumed run
    continued from (None: it started at 0)."""

    history: list[dict[str, float]] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    stopped_at: int | None = None
    resumed_at: int | None = None


@dataclass(frozen=True)
class Schedule:
    """When a loop evaluates: ``total`` training steps, an evaluation after every step count
    ``evaluates`` accepts and after the last step; ``samples_per_step`` counts
    ``samples_seen``."""

    total: int
    evaluates: Callable[[int], bool]
    samples_per_step: int

    @classmethod
    def every(cls, k: int, *, total: int, samples_per_step: int) -> Schedule:
        """Evaluate every ``k`` steps (and at 0 and ``total``)."""
        return cls(total, lambda step: step % k == 0, samples_per_step)

    @classmethod
    def at(cls, steps: Iterable[int], *, total: int, samples_per_step: int) -> Schedule:
        """Evaluate after each step count in ``steps`` (and at 0 and ``total``)."""
        points = frozenset(steps)
        return cls(total, points.__contains__, samples_per_step)

    def is_eval(self, step: int) -> bool:
        return step == self.total or self.evaluates(step)


class EvalHook(Protocol):
    """Called with every new evaluation row and the run so far (e.g. a monitor, a tracker). It
    may add its own namespaced keys to ``row``; returning True stops the run after this row."""

    def __call__(self, row: dict[str, float], result: LoopResult) -> bool | None: ...


class StepHook(Protocol):
    """Called with every training step's row (``step`` = steps done), e.g. a tracker."""

    def __call__(self, row: dict[str, float]) -> None: ...


@runtime_checkable
class Stateful(Protocol):
    """A watcher whose memory a checkpoint keeps (a monitor's baseline, a policy keeper's best
    weights): what ``state_dict`` returns (tensors, numbers, strings, lists and dicts of them)
    is saved and handed back to ``load_state_dict`` on resume."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Watchers:
    """What watches a run without changing it: ``on_evaluate`` hooks (a monitor, a tracker),
    ``on_step`` hooks (a tracker), ``on_close`` callables run once when the loop returns (a
    tracker flushes and finishes), ``on_resume`` callables told ``(step, result)`` when the
    loop continues a checkpoint at ``step`` with its record restored (a tracker replaces what
    it logged from that step on before the stop) and a progress bar described by ``progress``
    (None: none)."""

    on_evaluate: list[EvalHook] = field(default_factory=list)
    on_step: list[StepHook] = field(default_factory=list)
    progress: str | None = None
    on_close: list[Callable[[], Any]] = field(default_factory=list)
    on_resume: list[Callable[[int, LoopResult], Any]] = field(default_factory=list)


Evaluate = Callable[[int], tuple[dict[str, float], list[dict[str, Any]]]]
"""``step -> (metrics, examples)``: the policy measured on held-out prompts."""
TrainStep = Callable[[int], dict[str, float]]
"""``step -> metrics``: one training step taken from step ``step`` (0-based)."""


def run_loop(
    *,
    schedule: Schedule,
    train_step: TrainStep,
    evaluate: Evaluate,
    result: LoopResult,
    log: Callable[[str], Any] = print,
    describe: Callable[[dict[str, float]], str] | None = None,
    checkpoint: Callable[[int, dict[str, Any]], Any] | None = None,
    checkpoint_every: int = 0,
    watch: Watchers | None = None,
    resume: dict[str, Any] | None = None,
) -> LoopResult:
    """Run ``schedule.total`` training steps with evaluations, filling ``result`` in place.

    Args:
        schedule: how many steps and when to evaluate.
        train_step: takes one step; returns its metrics (namespaced, e.g. ``train/loss``).
        evaluate: measures the policy; returns its metrics and example samples.
        result: the record to fill (its ``config`` set by the caller).
        log: called with one line per evaluation (:func:`describe_row`, or ``describe``).
        checkpoint: ``(steps_done, loop_state) -> None``, called every ``checkpoint_every``
            steps (0: after every step followed by an evaluation, before that evaluation) once
            the step's row is recorded; it saves ``loop_state`` with the optimiser's state.
        watch: hooks called with each evaluation row and each step's row after they are
            recorded, and the progress bar's description.
        resume: a ``loop_state`` a checkpoint saved: the record, the watchers' memory and the
            random state are restored and the loop continues from its step (the optimiser has
            restored its own state).

    Raises:
        NonFiniteError: from a step, with ``step`` and ``result`` filled in.
    """
    watch = watch or Watchers()
    window: list[dict[str, float]] = []
    start, t_start = 0, time.perf_counter()
    if resume is not None:
        start, window = _restore(resume, result, watch)
        result.resumed_at = start
        for hook in watch.on_resume:
            hook(start, result)
        t_start -= float(resume["wall"])
    bar = tqdm(
        total=schedule.total, initial=start, desc=watch.progress, unit="step",
        disable=watch.progress is None,
    )  # fmt: skip
    try:  # the watchers close (trackers flush, keepers write) even when a step fails
        for step in range(start, schedule.total + 1):
            if schedule.is_eval(step):
                t0 = time.perf_counter()
                metrics, examples = evaluate(step)
                row = {
                    "step": float(step),
                    "samples_seen": float(step * schedule.samples_per_step),
                    **metrics,
                    **window_means(window),
                    "time/wall": time.perf_counter() - t_start,
                    "time/eval": time.perf_counter() - t0,
                }
                result.history.append(row)
                result.examples += [{"step": step, **e} for e in examples]
                log((describe or describe_row)(row))
                stop = [bool(hook(row, result)) for hook in watch.on_evaluate]
                window = []
                bar.set_postfix(_postfix(row), refresh=False)
                if any(stop) and step < schedule.total:
                    result.stopped_at = step
                    log(f"stopped at step {step}: a watcher asked to stop")
                    break
            if step == schedule.total:
                break
            t_step = time.perf_counter()
            try:
                metrics = train_step(step)
            except NonFiniteError as err:
                if err.step is not None:
                    raise
                raise NonFiniteError(err.message, step=step, result=result) from err
            metrics["time/step"] = time.perf_counter() - t_step
            step_row = {"step": float(step + 1), **metrics}
            result.steps.append(step_row)
            window.append(metrics)
            for step_hook in watch.on_step:
                step_hook(step_row)
            bar.update()
            due = (
                (step + 1) % checkpoint_every == 0
                if checkpoint_every
                else schedule.is_eval(step + 1)
            )
            if checkpoint is not None and due:
                checkpoint(step + 1, loop_state(step + 1, result, window, watch, t_start))
    finally:
        bar.close()
        for close in watch.on_close:
            close()
    return result


def loop_state(
    step: int,
    result: LoopResult,
    window: list[dict[str, float]],
    watch: Watchers,
    t_start: float,
) -> dict[str, Any]:
    """What the loop needs to continue after ``step`` steps: the record so far (history, step
    rows, examples), the step metrics not yet averaged into a row, the memory of every
    :class:`Stateful` watcher (by class name, in order), torch's random state and the seconds
    since the start. Loadable with ``torch.load(..., weights_only=True)``."""
    stateful = [h for h in watch.on_evaluate if isinstance(h, Stateful)]
    return {
        "step": step,
        "history": result.history,
        "steps": result.steps,
        "examples": result.examples,
        "window": window,
        "watchers": [[type(h).__name__, h.state_dict()] for h in stateful],
        "torch_rng": torch.get_rng_state(),
        "wall": time.perf_counter() - t_start,
    }


def _restore(
    state: dict[str, Any], result: LoopResult, watch: Watchers
) -> tuple[int, list[dict[str, float]]]:
    """Put a :func:`loop_state` back: fill ``result``, the watchers and torch's random state;
    return the step to continue from and the unaveraged step metrics."""
    stateful = [h for h in watch.on_evaluate if isinstance(h, Stateful)]
    names = [type(h).__name__ for h in stateful]
    saved = [name for name, _ in state["watchers"]]
    if names != saved:
        raise ValueError(
            f"the checkpoint was taken with the watchers {saved}, this run has {names}"
        )
    for hook, (_, memory) in zip(stateful, state["watchers"], strict=True):
        hook.load_state_dict(memory)
    result.history[:] = state["history"]
    result.steps[:] = state["steps"]
    result.examples[:] = state["examples"]
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["window"])


def _postfix(row: dict[str, float]) -> dict[str, str]:
    """The progress bar's summary of an evaluation row: proxy, gold and KL."""
    keys = {"reward/proxy": "proxy", "reward/gold": "gold", "kl/k1": "kl"}
    return {short: f"{row[k]:+.3f}" for k, short in keys.items() if k in row}


def describe_row(row: dict[str, float]) -> str:
    """One log line for an evaluation row: step, proxy, gold with its SE, KL, wall time."""
    return (
        f"step {int(row['step']):5d}  proxy {row.get('reward/proxy', math.nan):+.3f}  "
        f"gold {row['reward/gold']:+.3f}±{row['reward/gold_se']:.3f}  "
        f"kl {row['kl/k1']:.3f}  ({row['time/wall']:.0f}s)"
    )


def window_means(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every metric over ``rows`` (a key missing from some rows: mean of the others)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for k, v in row.items():
            sums[k].append(v)
    return {k: float(np.mean(v)) for k, v in sums.items()}


def checked_rewards(raw: Any, reward: Any, *, n: int) -> np.ndarray:
    """The (transformed) rewards ``reward`` as float64 ``(n,)``, after checking that ``raw`` and
    ``reward`` have that shape and ``reward`` is finite (else :class:`NonFiniteError`)."""
    raw, reward = np.asarray(raw, dtype=np.float64), np.asarray(reward, dtype=np.float64)
    if raw.shape != (n,) or reward.shape != (n,):
        raise ValueError(
            f"rewards must have shape ({n},), got {raw.shape} and {reward.shape} after the "
            "transform"
        )
    if not np.isfinite(reward).all():
        bad = int((~np.isfinite(reward)).sum())
        raise NonFiniteError(f"{bad} non-finite rewards")
    return reward


def optimiser_step(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    passes: Iterable[Any],
    pass_loss: Callable[[Any], tuple[Tensor, float]],
    *,
    max_grad_norm: float | None,
) -> float:
    """One optimiser step with gradients accumulated over forward passes.

    For every item of ``passes``, ``pass_loss(item) -> (loss, weight)`` computes that pass's loss
    (recording its own metrics) and ``loss * weight`` is back-propagated, so the accumulated
    gradient is that of the weighted sum (e.g. weights = each pass's share of the step's tokens
    for a token mean over the whole step). Then the gradient norm of ``params`` is clipped to
    ``max_grad_norm`` (None: not clipped) and the optimiser steps.

    Returns:
        The gradient norm before clipping.

    Raises:
        NonFiniteError: a pass's loss or the gradient norm is NaN or inf (the optimiser has not
            stepped).
    """
    optimizer.zero_grad(set_to_none=True)
    for item in passes:
        loss, weight = pass_loss(item)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"loss is {loss.item()}")
        (loss * weight).backward()
    limit = max_grad_norm if max_grad_norm is not None else math.inf
    norm = torch.nn.utils.clip_grad_norm_(list(params), limit)
    if not torch.isfinite(norm):
        raise NonFiniteError(f"gradient norm is {norm.item()}")
    optimizer.step()
    return norm.item()
