"""A user's prompts: a JSONL file of ``{"prompt": ...}`` objects (a string, or TRL's
conversational list of one user message) or a text file with one prompt per line, and the
seeded split of them into training and held-out prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proxygap.data.jsonl import DataFileError, file_lines, json_lines, problems

__all__ = ["PromptSplit", "read_prompts", "split_prompts"]


def _from_json(row: object, lineno: int, field: str) -> str | tuple[str]:
    if not isinstance(row, dict):
        return (f"line {lineno}: expected a JSON object, got {type(row).__name__}",)
    if field not in row:
        return (f"line {lineno}: missing key {field!r} (keys: {sorted(row)})",)
    v = row[field]
    one = isinstance(v, list) and len(v) == 1 and isinstance(v[0], dict)
    if one and v[0].get("role") == "user" and isinstance(v[0].get("content"), str):
        return str(v[0]["content"])
    if not isinstance(v, str):
        return (f"line {lineno}: {field} must be a string or one user message, got {v!r:.60}",)
    return v


def read_prompts(path: str | Path, *, field: str = "prompt", max_errors: int = 20) -> list[str]:
    """The prompts of ``path``: JSONL (``.jsonl``/``.json``) or one per line (anything else;
    blank lines skipped). Raises :class:`DataFileError` naming the file, the line and the field
    of every problem (bytes that are not UTF-8, bad JSON, missing field, empty prompt)."""
    errors: list[str] = []
    prompts: list[str] = []
    is_json = Path(path).suffix.lower() in (".jsonl", ".json")
    rows = json_lines(path, "prompt file") if is_json else file_lines(path, "prompt file")
    for lineno, value, problem in rows:
        if problem is not None:
            errors.append(problem)
            continue
        if is_json:
            text = _from_json(value, lineno, field)
            if isinstance(text, tuple):
                errors.append(text[0])
                continue
        else:
            assert isinstance(value, str)
            if not value.strip():
                continue
            text = value
        if not text.strip():
            errors.append(f"line {lineno}: empty prompt")
            continue
        prompts.append(text)
    if not prompts and not errors:
        errors.append("the file holds no prompts")
    if errors:
        raise DataFileError(problems(path, errors, max_errors=max_errors))
    return prompts


@dataclass(frozen=True)
class PromptSplit:
    """Prompts split once, by a seed, into training and held-out ones (indices into the file)."""

    prompts: list[str]
    train: list[int]
    heldout: list[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": self.train, "heldout": self.heldout}


def split_prompts(prompts: Sequence[str], *, heldout: float | int, seed: int) -> PromptSplit:
    """Shuffle the distinct prompts with ``seed`` and hold out a share (``heldout`` < 1) or a
    number (``heldout`` >= 1) of them; repeated prompts stay on one side. Both sides must be
    non-empty."""
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        first.setdefault(p, i)
    distinct = list(first.values())
    n = len(distinct)
    k = int(round(heldout * n)) if heldout < 1 else int(heldout)
    if n < 2 or not 1 <= k < n:
        raise DataFileError(
            f"cannot hold out {heldout:g} of {n} distinct prompt(s): both the training and the "
            "held-out prompts need at least one"
        )
    order = np.random.default_rng([seed, 15485863]).permutation(n)
    held = {distinct[i] for i in order[:k]}
    side = {p: first[p] in held for p in first}
    train = [i for i, p in enumerate(prompts) if not side[p]]
    return PromptSplit(list(prompts), train, [i for i, p in enumerate(prompts) if side[p]])
