"""What watches every training run of a study without changing it: the gold-free monitor."""

from __future__ import annotations

from proxygap.monitor.detector import Detector, Monitor
from proxygap.optimize.loop import EvalHook, Watchers
from proxygap.study.context import StudyContext

__all__ = ["watchers"]


def watchers(ctx: StudyContext, *, progress: str | None = None) -> Watchers:
    """Fresh watchers for one run: the monitor of ``ctx.cfg.monitor`` (its features, score and
    alarm join every evaluation row; with ``stop_on_alarm`` the run stops at its first alarm)
    and a progress bar described by ``progress`` (None: none)."""
    hooks: list[EvalHook] = []
    spec = ctx.cfg.monitor
    if spec.enabled:
        detector = Detector.load(spec.detector) if spec.detector else None
        hooks.append(Monitor(detector, stop_on_alarm=spec.stop_on_alarm))
    return Watchers(on_evaluate=hooks, progress=progress)
