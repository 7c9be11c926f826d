"""A run folder's lock: one process at a time writes a run folder.

The lock is an advisory ``fcntl.flock`` on ``<folder>/.lock``, held until every
:class:`RunLock` of the folder in this process is released (or the process ends); the kernel
drops it when the process dies, so a killed run never leaves a stale lock behind. The file
records the holder's process id for the message a second process gets. Within one process the
lock is shared (a resumed run opens its folder again), and forked worker processes inherit it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS: no locking
    fcntl = None  # type: ignore[assignment]

__all__ = ["LockedError", "RunLock"]


class LockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive, non-blocking lock on ``folder``; raises :class:`LockedError` if another
    process holds it."""

    _held: ClassVar[dict[Path, list[int]]] = {}  # lock file -> [descriptor, holders]

    def __init__(self, folder: Path) -> None:
        self.path = (Path(folder) / ".lock").resolve()
        self._open = False
        held = self._held.get(self.path)
        if held is not None and held[1] > 0:
            held[1] += 1
            self._open = True
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise LockedError(
                    f"run folder {str(folder)!r} is in use by another run (process {holder}); "
                    "wait for it to finish or stop it"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._held[self.path] = [fd, 1]
        self._open = True

    def release(self) -> None:
        """Drop this holder; the last one closes the descriptor, which drops the flock."""
        if not self._open:
            return
        self._open = False
        held = self._held[self.path]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.path]
            os.close(held[0])

    def __del__(self) -> None:
        self.release()
