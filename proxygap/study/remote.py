"""A study's independent runs as Ray tasks: the call a task makes, and the context it makes it in.

A forked worker inherits the study's models from its parent; a Ray task cannot (models carry
hooks that do not survive pickling, and the task may run on another machine). So a task gets
only plain data: the resolved config, the run folder's path, the study's working folder and a
:class:`RemoteCall` naming a module-level function; on a cluster every node needs proxygap, the
study's inputs and the runs folder at the same paths. The task loads the task's models afresh
from the inputs, attaches to the run folder without its lock
(:func:`proxygap.study.context.attach`), reads back the preference pairs and the trained proxies
the study wrote there, and calls the function with that context and the training pairs. A Ray
worker process keeps the context for the next task of the same run folder. The function writes
its run's own files; the study, which holds the lock, marks the run done when the task returns.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch

from proxygap.config import StudyConfig, parse_config
from proxygap.data.preferences import Pairs
from proxygap.store.run import RunFolderError
from proxygap.study.context import StudyContext, attach
from proxygap.study.data import stage_preferences

__all__ = ["RemoteCall", "remote_call", "run_remote", "shared", "task_threads"]

T = TypeVar("T")


@dataclass(frozen=True)
class RemoteCall:
    """``target(ctx, train, *args)``: ``target`` a ``"module:function"`` name, ``args`` plain
    data (names, seeds)."""

    target: str
    args: tuple[Any, ...] = ()


def remote_call(fn: Callable[..., Any], *args: Any) -> RemoteCall:
    """The :class:`RemoteCall` of the module-level function ``fn`` with ``args``."""
    qualname = getattr(fn, "__qualname__", "")
    if "." in qualname or "<" in qualname:
        raise ValueError(f"{fn!r} is not a module-level function: a Ray task cannot import it")
    return RemoteCall(f"{fn.__module__}:{qualname}", tuple(args))


_OPEN: dict[tuple[str, str], tuple[StudyContext, Pairs]] = {}
"""The context this worker process has opened, by run folder and config digest (a folder
started over holds other models)."""


def _context(config: dict[str, Any], folder: str) -> tuple[StudyContext, Pairs]:
    path = Path(folder).resolve()
    try:
        digest = (path / "config.digest").read_text().strip()
    except OSError as err:
        raise RunFolderError(
            f"{str(path)!r} is not a run folder this worker can read: {err}"
        ) from None
    key = (str(path), digest)
    if key not in _OPEN:
        cfg: StudyConfig = parse_config(config, source=f"the config of {str(path)!r}")
        ctx = attach(cfg, path)
        if not ctx.run.done("preferences"):
            raise RunFolderError(f"{str(path)!r} has no preference pairs yet")
        train, _ = stage_preferences(ctx)  # read back: the study finished this stage
        _OPEN.clear()  # one study at a time: a new one's models replace the last one's
        _SHARED.clear()
        _OPEN[key] = ctx, train
    return _OPEN[key]


_SHARED: list[tuple[StudyContext, dict[str, Any]]] = []
"""What the runs of the study this worker process holds share, built once (:func:`shared`)."""


def shared(ctx: StudyContext, name: str, make: Callable[[], T]) -> T:
    """``make()``, built once per worker process and study ``ctx``: what several runs of a study
    share (references, prepared pairs, start policies), kept while the worker holds ``ctx``."""
    if not _SHARED or _SHARED[0][0] is not ctx:
        _SHARED[:] = [(ctx, {})]
    store = _SHARED[0][1]
    if name not in store:
        store[name] = make()
    return cast(T, store[name])


def task_threads(config: dict[str, Any]) -> int:
    """The torch threads (and Ray CPUs) of one task of the study ``config``:
    ``runtime.threads``, 1 when unset."""
    return int(config.get("runtime", {}).get("threads") or 1)


def run_remote(config: dict[str, Any], folder: str, search: str, call: RemoteCall) -> None:
    """What a Ray task runs: ``call`` in the context of the run folder ``folder`` of the study
    ``config``, in the study's working folder ``search`` where this node has it (its relative
    input paths are relative to it: on a cluster, every node needs the inputs and the runs folder
    at the same paths), on ``runtime.threads`` threads (1 when unset)."""
    torch.set_num_threads(task_threads(config))
    if Path(search).is_dir():  # else the inputs' paths must be absolute on this node
        os.chdir(search)
    ctx, train = _context(config, folder)
    module, _, name = call.target.partition(":")
    getattr(importlib.import_module(module), name)(ctx, train, *call.args)
