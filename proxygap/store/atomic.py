"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or a full disk mid-write leaves the previous file (or no file) in place, never a
truncated one. The temporary file is created with mode ``0o666`` filtered by the process's
umask (``tempfile.mkstemp`` would make it ``0o600``), so outputs get the permissions any other
file the user creates gets. A process killed mid-write leaves its ``.<name>.<random>.tmp``
file behind (and a model or checkpoint folder being saved, its ``.<name>.<random>.tmp``
folder): :func:`remove_stale_tmp` clears them when a run folder is resumed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

TMP_SUFFIX = ".tmp"


def _new_tmp(target: Path) -> Path:
    """A fresh, empty temporary file beside ``target`` (mode 0o666 & ~umask)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {str(target)!r}")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` then atomically move ``tmp_path`` to ``path``.

    Whatever ``write`` returns (e.g. the byte count of ``Path.write_bytes``) is ignored.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_tmp(target)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files an interrupted :func:`atomic_write` left under
    ``folder`` (recursively), and the ``.<name>.<random>.tmp`` folders of an interrupted model
    or checkpoint save; return what was removed. Call it only while no other process writes
    there (a run folder's lock is held)."""
    removed = []
    for p in sorted(Path(folder).rglob(f".*{TMP_SUFFIX}")):
        if p.is_symlink() or not p.exists():  # gone with a removed folder
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_npz(path: str | Path, arrays: Mapping[str, Any]) -> None:
    """Write ``arrays`` (name -> array) as an uncompressed ``.npz`` file, atomically."""
    named: dict[str, Any] = dict(arrays)

    def write(p: Path) -> None:
        with p.open("wb") as fh:
            np.savez(fh, **named)

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
