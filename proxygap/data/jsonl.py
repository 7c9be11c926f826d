"""Reading user files line by line with messages that name the file, the line and the problem:
bytes that are not UTF-8, lines that are not JSON, and a summary of every problem found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DataFileError", "file_lines", "json_lines", "problems"]


class DataFileError(ValueError):
    """A data file (prompts, preference pairs) that cannot be used; the first line of the
    message names the file and the first problem, the next lines list the others."""


def file_lines(path: str | Path, what: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, problem)`` for every line of ``path``: the text without its line
    break, or None and why (bytes that are not UTF-8). Raises :class:`DataFileError` if
    ``path`` is not a readable file."""
    p = Path(path).expanduser()
    if not p.is_file():
        kind = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise DataFileError(f"{what} {str(path)!r} {kind}")
    try:
        fh = p.open("rb")
    except OSError as err:
        raise DataFileError(f"{what} {str(path)!r} cannot be read: {err.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield (
                    lineno,
                    None,
                    (
                        f"line {lineno}: not UTF-8 (byte {raw[err.start]:#04x} at column "
                        f"{err.start + 1}); save the file as UTF-8"
                    ),
                )
                continue
            yield lineno, text.rstrip("\r\n"), None


def json_lines(path: str | Path, what: str) -> Iterator[tuple[int, object, str | None]]:
    """``(line number, value, problem)`` for every non-blank line of a JSONL file: the parsed
    value, or None and why it could not be read."""
    for lineno, text, problem in file_lines(path, what):
        if problem is not None or text is None:
            yield lineno, None, problem
            continue
        if not text.strip():
            continue
        try:
            yield lineno, json.loads(text), None
        except json.JSONDecodeError as err:
            yield lineno, None, f"line {lineno}: not valid JSON ({err.msg}, column {err.colno})"


def problems(path: str | Path, errors: list[str], *, max_errors: int = 20) -> str:
    """One message for every problem of ``path``: the first on the first line."""
    if len(errors) == 1:
        return f"{path}: {errors[0]}"
    shown = "\n  ".join(errors[:max_errors])
    more = f"\n  ... and {len(errors) - max_errors} more" if len(errors) > max_errors else ""
    return f"{path}: {len(errors)} problem(s), first {errors[0]}:\n  {shown}{more}"
