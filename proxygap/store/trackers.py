"""Experiment trackers (TensorBoard, Weights & Biases, trackio) as watchers of a training loop.

``runtime.report_to`` names the trackers of a study; every RL, Quark and DAA run then logs to
each of them through the loop's hooks (:class:`proxygap.optimize.loop.Watchers`):

- ``on_step``: every training step's metrics at ``step`` = steps done, named as in the run's
  ``steps.jsonl`` (``train/loss``, ``kl/beta``, ``time/step``...);
- ``on_evaluate``: every evaluation's metrics at its step, named as in ``history.json``
  (``reward/gold``, ``reward/proxy``, ``kl/k1``, ``d``, ``samples_seen``, ``time/wall``...),
  except the means of the training metrics since the previous evaluation, which the history row
  holds under the training metrics' own names: those were logged step by step already.

Each run is one tracker run named ``<stage>/<run>`` (``rl/kl-0``, ``daa/dpo-0.1``,
``mitigations/uwo/seed-0``) in a project named after the study; TensorBoard writes under
``<run folder>/tensorboard/<run>``, W&B and trackio keep their files under ``<run folder>``.

A run killed and continued from its checkpoint at step ``k`` (``on_resume``) stays one run per
tracker, with one point per step: TensorBoard purges what the stopped run logged from ``k`` on
(``purge_step``) and the rows at ``k`` kept in the checkpoint are logged again; W&B continues
the same run (its id is kept in ``<run folder>/.wandb-ids/``, ``resume="allow"``) and drops the
steps it already holds, which the continued run reproduces; trackio continues the run of the
same name when its ``init`` takes ``resume``.
The packages are optional extras (``pip install 'proxygap[tensorboard]'``, ``[wandb]``,
``[trackio]``): :func:`check_trackers` names the missing one before anything runs. Nothing is
sent anywhere unless the tracker itself is set up to (W&B obeys ``WANDB_MODE=offline``; trackio
logs to a local database unless given a space).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TRACKERS",
    "TensorBoardTracker",
    "Tracker",
    "TrackerError",
    "TrackioTracker",
    "WandbTracker",
    "check_trackers",
    "open_trackers",
]

TRACKERS = ("tensorboard", "wandb", "trackio")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


class TrackerError(RuntimeError):
    """A tracker that cannot be used (its package is not installed, or it failed to start)."""


def check_trackers(names: Sequence[str]) -> None:
    """Raise :class:`TrackerError` naming each tracker of ``names`` that is unknown or whose
    package is not installed (and how to install it)."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TrackerError(f"unknown tracker(s) {unknown}; allowed: {list(TRACKERS)}")
    missing = [n for n in names if importlib.util.find_spec(_PACKAGE[n]) is None]
    if missing:
        extras = ",".join(missing)
        raise TrackerError(
            f"runtime.report_to lists {missing}, but the package(s) are not installed: "
            f"pip install 'proxygap[{extras}]'"
        )


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise TrackerError(
            f"the {name} tracker needs the package {name!r}: pip install 'proxygap[{name}]' ({err})"
        ) from err


def _numbers(row: Mapping[str, Any], skip: set[str]) -> dict[str, float]:
    """The finite numeric metrics of ``row`` (not ``step``, not in ``skip``), as floats."""
    out = {}
    for k, v in row.items():
        if k == "step" or k in skip or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


class Tracker:
    """One training run logged to one tracker: a watcher with ``on_step`` and ``on_evaluate``
    hooks; subclasses implement :meth:`log` and :meth:`close`."""

    def __init__(self) -> None:
        self._step_keys: set[str] = set()

    def on_step(self, row: Mapping[str, float]) -> None:
        """A training step's row (``step`` = steps done)."""
        self._step_keys.update(row)
        self.log(_numbers(row, set()), int(row["step"]))

    def on_evaluate(self, row: Mapping[str, float], result: Any = None) -> None:
        """An evaluation row (the training-metric means in it are left out, see the module)."""
        self.log(_numbers(row, self._step_keys), int(row["step"]))

    def on_resume(self, step: int, result: Any) -> None:
        """The run continues a checkpoint at ``step`` with ``result`` (its history and step
        rows) restored: what was logged from ``step`` on before the stop is replaced by the
        restored rows at ``step`` and what the continued run logs next."""
        for row in result.steps:
            self._step_keys.update(row)
        self.purge_from(step)
        for row in result.steps:
            if row["step"] >= step:
                self.on_step(row)
        for row in result.history:
            if row["step"] >= step:
                self.on_evaluate(row)

    def purge_from(self, step: int) -> None:
        """Drop what this run logged at ``step`` and later (where the tracker can)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and finish the run (idempotent)."""


class TensorBoardTracker(Tracker):
    """Scalars in a TensorBoard event file under ``folder`` (one tag per metric name)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        _import("tensorboard")
        self.folder = Path(folder)
        self.writer: Any = None  # opened by the first log, after a purge if any
        self._purge: int | None = None

    def purge_from(self, step: int) -> None:
        if self.writer is not None:
            raise RuntimeError("a TensorBoard run can only purge before it logs")
        self._purge = step

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=self._purge)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker(Tracker):
    """One W&B run (``wandb.init``; offline with ``WANDB_MODE=offline``)."""

    def __init__(self, *, project: str, name: str, folder: Path, config: Mapping[str, Any]):
        super().__init__()
        wandb = _import("wandb")
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.run: Any = wandb.init(
            project=project, name=name, group=project, dir=str(folder), config=dict(config),
            reinit="create_new", id=_run_id(Path(folder), name), resume="allow",
        )  # fmt: skip

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TrackioTracker(Tracker):
    """One trackio run (a local database unless trackio is given a space), through trackio's
    module functions ``init``, ``log`` and ``finish`` (one run at a time per process)."""

    def __init__(self, *, project: str, name: str, config: Mapping[str, Any]):
        super().__init__()
        self.trackio: Any = _import("trackio")
        resume = {"resume": "allow"} if "resume" in _parameters(self.trackio.init) else {}
        self.trackio.init(project=project, name=name, config=dict(config), **resume)
        self.open = True

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        if self.open:
            self.trackio.finish()
            self.open = False


def _run_id(folder: Path, run: str) -> str:
    """The W&B id of the run ``run`` of the run folder ``folder``: made once and kept in
    ``folder/.wandb-ids/`` so that a continued run logs to the same W&B run (a new folder, as
    after ``--restart``, makes new ids)."""
    path = folder / ".wandb-ids" / run.replace("/", "--")
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:16]
    path.write_text(run_id + "\n")
    return run_id


def _parameters(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def open_trackers(
    names: Sequence[str],
    *,
    folder: Path,
    project: str,
    run: str,
    config: Mapping[str, Any] | None = None,
) -> list[Tracker]:
    """One tracker per name of ``names`` for the training run ``run`` of the study ``project``
    whose run folder is ``folder``; the caller closes them (:meth:`Tracker.close`)."""
    check_trackers(names)
    config = dict(config or {})
    out: list[Tracker] = []
    try:
        for name in names:
            if name == "tensorboard":
                out.append(TensorBoardTracker(Path(folder) / "tensorboard" / run))
            elif name == "wandb":
                out.append(WandbTracker(project=project, name=run, folder=folder, config=config))
            else:
                out.append(TrackioTracker(project=project, name=run, config=config))
    except BaseException:
        for t in out:
            t.close()
        raise
    return out
