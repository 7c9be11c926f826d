"""Content fingerprints of a run's inputs (prompt and preference files, model folders, a gold
function's source), so a run folder notices when an input changed under it.

A file's fingerprint is the SHA-256 of its bytes; a folder's is the SHA-256 of its files'
relative paths and fingerprints, in sorted order (hidden files and ``__pycache__`` left out).
Hashing a multi-gigabyte model takes seconds, so :func:`fingerprint` takes the previous record of
the same input: a file whose size and modification time are unchanged keeps its recorded hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["changed_files", "fingerprint", "hash_file"]

_CHUNK = 1 << 20


def hash_file(path: Path) -> str:
    """SHA-256 of the bytes of ``path`` (hex)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(
            part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts
        )
    )


def fingerprint(path: str | Path, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of input ``path``: ``{"sha256": ..., "files": {relpath: [size, mtime_ns,
    sha256]}}`` (``relpath`` is ``"."`` for a single file). Files whose size and modification time
    match ``previous["files"]`` keep their recorded hash instead of being read again."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    old: Mapping[str, Any] = (previous or {}).get("files", {})
    files: dict[str, list[Any]] = {}
    for f in _files(p):
        rel = "." if f == p else f.relative_to(p).as_posix()
        st = f.stat()
        known = old.get(rel)
        if known is not None and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            files[rel] = list(known)
        else:
            files[rel] = [st.st_size, st.st_mtime_ns, hash_file(f)]
    h = hashlib.sha256()
    for rel, (_, _, digest) in sorted(files.items()):
        h.update(f"{rel}\0{digest}\n".encode())
    return {"sha256": h.hexdigest(), "files": files}


def changed_files(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The relative paths whose content differs between two records of one input (added,
    removed or edited files), sorted."""
    a, b = old.get("files", {}), new.get("files", {})
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k][2] != b[k][2])
