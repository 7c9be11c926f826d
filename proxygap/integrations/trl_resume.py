"""What proxygap's TRL callbacks remember of a training, carried through its checkpoints.

A training resumed from a checkpoint (``trainer.train(resume_from_checkpoint=...)``) must not
start the monitor over: its baseline row, its first alarm and the unlikely-sample cutoff all
belong to the initial policy, which the resumed process never sees. The callbacks keep that
state in ``TrainerState.stateful_callbacks`` under :data:`STATE_KEY`, a dictionary the
``Trainer`` writes into every checkpoint's ``trainer_state.json`` and reads back on resume,
so the state travels with the checkpoint wherever it is copied. (The key names no callback
class: ``transformers``'s own ``restore_callback_states_from_checkpoint`` rebuilds callbacks
from their constructor arguments, which for these callbacks are live models and reward
functions, and leaves this entry alone.)

On resume the callbacks also cut their ``history.jsonl`` back to the checkpoint's step, so the
rows written after the checkpoint by the interrupted training are not kept twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from proxygap.store.atomic import atomic_write_text

__all__ = ["STATE_KEY", "cut_history", "monitor_state", "restore_monitor", "saved", "store"]

logger = logging.getLogger(__name__)
STATE_KEY = "proxygap"


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values (``json.dumps``'s ``default``)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot keep a {type(value).__name__} in a checkpoint's trainer state")


def store(state: Any, name: str, data: Mapping[str, Any]) -> None:
    """Keep a copy of ``data`` as callback ``name``'s entry of ``state``, for the next checkpoint
    the trainer writes: made of plain JSON values here (numpy numbers converted), so that
    writing the checkpoint cannot fail on it later."""
    if getattr(state, "stateful_callbacks", None) is None:
        state.stateful_callbacks = {}
    box = state.stateful_callbacks.setdefault(STATE_KEY, {})
    box[name] = json.loads(json.dumps(dict(data), default=_plain))


def saved(state: Any, name: str) -> dict[str, Any] | None:
    """Callback ``name``'s entry in a resumed training's state, or None when it has none (a
    checkpoint written without the callback, or by a version that kept no state)."""
    box = (getattr(state, "stateful_callbacks", None) or {}).get(STATE_KEY)
    entry = box.get(name) if isinstance(box, dict) else None
    return dict(entry) if isinstance(entry, dict) else None


def monitor_state(monitor: Any) -> dict[str, Any] | None:
    """The monitor's :meth:`~proxygap.monitor.Monitor.state_dict`, or None for a monitor
    without one."""
    get = getattr(monitor, "state_dict", None)
    return get() if callable(get) else None


def restore_monitor(monitor: Any, data: Mapping[str, Any] | None) -> None:
    """Load a saved :func:`monitor_state` into ``monitor`` (a no-op for either missing)."""
    load = getattr(monitor, "load_state_dict", None)
    if data is not None and callable(load):
        load(data)


def _step(line: str) -> float | None:
    """A history line's step; None for a line that is no JSON object (a row the interrupted
    training was writing when it stopped)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return float(row.get("step", 0)) if isinstance(row, dict) else None


def cut_history(path: Path, step: int) -> int:
    """Drop the rows of ``path`` (JSON lines with a ``step``) after ``step``, and any line cut
    short by the interruption; returns how many were dropped. The file is replaced atomically,
    so an interruption of this keeps the old one."""
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if (at := _step(line)) is not None and at <= step]
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        logger.info("proxygap: resumed at step %d: %d later rows dropped", step, dropped)
    return dropped
