"""What watches every training run of a study without changing it: the gold-free monitor, the
trackers of ``runtime.report_to`` (:mod:`proxygap.store.trackers`), a progress bar, and for the
RL stage the keeper of the final and best-by-gold policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxygap.monitor.detector import Detector, Monitor
from proxygap.optimize.checkpoint import PolicyKeeper
from proxygap.optimize.loop import EvalHook, Watchers
from proxygap.store.trackers import open_trackers
from proxygap.study.context import StudyContext

__all__ = ["watchers"]


def watchers(
    ctx: StudyContext,
    *,
    progress: str | None = None,
    run: str | None = None,
    config: Mapping[str, Any] | None = None,
    keep: PolicyKeeper | None = None,
) -> Watchers:
    """Fresh watchers for one run: the monitor of ``ctx.cfg.monitor`` (its features, score and
    alarm join every evaluation row; with ``stop_on_alarm`` the run stops at its first alarm);
    for a run named ``run`` (``rl/kl-0``) the trackers of ``ctx.cfg.runtime.report_to`` (with
    ``config``, the run's settings) and a progress bar described by ``progress`` (default: the
    run's name; None and no run: none); ``keep`` keeps the final and best policy."""
    hooks: list[EvalHook] = []
    spec = ctx.cfg.monitor
    if spec.enabled:
        detector = Detector.load(spec.detector) if spec.detector else None
        hooks.append(Monitor(detector, stop_on_alarm=spec.stop_on_alarm))
    watch = Watchers(on_evaluate=hooks, progress=progress or run)
    if keep is not None:
        watch.on_evaluate.append(keep)
        watch.on_close.append(keep.close)
    if run is not None and ctx.cfg.runtime.report_to:
        trackers = open_trackers(
            ctx.cfg.runtime.report_to, folder=ctx.run.dir, project=ctx.cfg.name, run=run,
            config=config,
        )  # fmt: skip
        for t in trackers:  # after the monitor: its signals are in the rows they log
            watch.on_evaluate.append(t.on_evaluate)
            watch.on_step.append(t.on_step)
            watch.on_close.append(t.close)
            watch.on_resume.append(t.on_resume)
    return watch
