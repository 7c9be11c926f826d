"""Faults of the disk under a running study: a full disk or quota, a read-only file system, a
folder without write permission. Each becomes a :class:`WriteFault` whose message names the
stage, the path and what to do; the command line prints it and exits 2 without a traceback.

Nothing is lost by such a fault: every output is written atomically (the previous file, or none,
stays in place), finished stages are recorded only once their outputs are complete, and a rerun
of the same command after the space is freed (or the folder made writable) resumes the study,
removing the temporary files of the interrupted write and continuing an interrupted RL or DAA run
from its newest checkpoint.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from proxygap.errors import NonFiniteError

__all__ = ["WriteFault", "stage_faults", "write_fault"]

REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
"""The errors a user fixes outside proxygap (free space, make the folder writable), by errno."""

MESSAGES = {  # what writers that do not raise OSError (safetensors, torch.save) say instead
    "No space left on device": errno.ENOSPC,
    "os error 28": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
}


FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".npz", ".png", ".html", ".yaml", ".txt", ".pt")
"""What the files a study writes end with (``daa/dpo-0.1`` is a run's folder, not a file)."""


class WriteFault(RuntimeError):
    """A run folder that could not be written mid-run (full disk, read-only, no permission)."""

    def __init__(self, message: str, *, stage: str | None, path: str | None, code: int) -> None:
        super().__init__(message)
        self.stage, self.path, self.errno = stage, path, code


def _code(err: BaseException) -> int | None:
    if isinstance(err, OSError) and err.errno in REASONS:
        return err.errno
    text = str(err)
    return next((code for needle, code in MESSAGES.items() if needle in text), None)


def stage_of(path: str | Path, run_dir: Path) -> str | None:
    """The stage a path of the run folder belongs to, by the study's layout: ``rl/kl-0/...`` is
    stage ``rl:kl-0``, ``proxies/rm/...`` stage ``proxy:rm``, ``pool.jsonl`` stage ``pool``
    (None: outside the run folder)."""
    try:
        parts = Path(path).resolve().relative_to(run_dir.resolve()).parts
    except ValueError:
        return None
    if not parts:
        return None
    if len(parts) >= 3 or (len(parts) == 2 and Path(parts[1]).suffix not in FILE_SUFFIXES):
        group = "proxy" if parts[0] == "proxies" else parts[0]
        return f"{group}:{parts[1]}"
    return Path(parts[0]).stem


def write_fault(
    err: BaseException, *, run_dir: Path | None, stage: str | None = None
) -> WriteFault | None:
    """``err`` as a :class:`WriteFault` if it is a fault of the disk (None otherwise), naming
    ``stage`` (else the stage the path belongs to, :func:`stage_of`) and the path."""
    if isinstance(err, WriteFault):
        return err
    code = _code(err)
    if code is None:
        return None
    path = getattr(err, "filename", None)
    path = str(path) if path is not None else None
    if stage is None and path is not None and run_dir is not None:
        stage = stage_of(path, run_dir)
    where = f"stage {stage!r}" if stage else "the study"
    what = f"could not write {path!r}" if path else f"could not write in {str(run_dir)!r}"
    fix = (
        "free some space"
        if code in (errno.ENOSPC, errno.EDQUOT)
        else "make the run folder writable"
    )
    return WriteFault(
        f"{where} {what}: {REASONS[code]} ({errno.errorcode[code]}). Finished stages are kept; "
        f"{fix} and run the same command again to resume",
        stage=stage,
        path=path,
        code=code,
    )


@contextmanager
def stage_faults(stage: str, run_dir: Path) -> Iterator[None]:
    """Name ``stage`` in what stops it: a fault of the disk becomes a :class:`WriteFault`, a
    training step's :class:`~proxygap.errors.NonFiniteError` (a diverged run) one that names
    the stage and says what to do."""
    try:
        yield
    except NonFiniteError as err:
        if err.step is None:
            raise
        raise NonFiniteError(
            f"stage {stage!r}: {err}: the run diverged (lower the learning rate); its result was "
            "not written"
        ) from err
    except Exception as err:
        fault = write_fault(err, run_dir=run_dir, stage=stage)
        if fault is None or fault is err:
            raise
        raise fault from err
