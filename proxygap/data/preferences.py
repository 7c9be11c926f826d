"""Gold-labelled preference pairs: labelling, label noise, and JSONL files.

Files use the common ``{"prompt", "chosen", "rejected"}`` layout, one JSON object per line (or
TRL's implicit-prompt and conversational layouts, :mod:`proxygap.data.formats`); gold scores
travel as the optional extra fields ``gold_chosen`` and ``gold_rejected``. Reading validates
every row and reports *all* problems with their line numbers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from proxygap.data.formats import parse_row
from proxygap.data.jsonl import DataFileError, json_lines, problems
from proxygap.store.atomic import atomic_write_text


@dataclass(frozen=True)
class Pairs:
    """Preference pairs as parallel lists; ``gold_*`` may be None for external data."""

    prompt: list[str]
    chosen: list[str]
    rejected: list[str]
    gold_chosen: np.ndarray | None = None
    gold_rejected: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.prompt)

    def subset(self, index: Sequence[int] | np.ndarray) -> Pairs:
        idx = np.asarray(index, dtype=np.int64)
        return Pairs(
            prompt=[self.prompt[i] for i in idx],
            chosen=[self.chosen[i] for i in idx],
            rejected=[self.rejected[i] for i in idx],
            gold_chosen=None if self.gold_chosen is None else self.gold_chosen[idx],
            gold_rejected=None if self.gold_rejected is None else self.gold_rejected[idx],
        )


LABEL_MODES = ("deterministic", "bradley_terry")


def gold_preferences(
    gold_a: np.ndarray,
    gold_b: np.ndarray,
    *,
    mode: str = "deterministic",
    temperature: float = 1.0,
    noise: float = 0.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """Whether ``a`` is preferred over ``b`` for each pair, as gold labels them (Gao et al. §2).

    ``deterministic``: a wins iff g_a > g_b (exact ties are broken by a fair coin).
    ``bradley_terry``: a wins with probability sigma((g_a - g_b) / temperature).
    Then each label is flipped independently with probability ``noise`` (Coste et al. 2023 use
    0.25).

    Returns a bool array (B,).
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; allowed: {list(LABEL_MODES)}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"label noise must be in [0, 0.5], got {noise}")
    if temperature <= 0:
        raise ValueError(f"Bradley-Terry temperature must be > 0, got {temperature}")
    diff = np.asarray(gold_a, dtype=np.float64) - np.asarray(gold_b, dtype=np.float64)
    coin = rng.random(diff.shape)
    if mode == "deterministic":
        a_wins = np.where(diff == 0, coin < 0.5, diff > 0)
    else:
        a_wins = coin < expit(diff / temperature)
    flips = rng.random(diff.shape) < noise
    return a_wins ^ flips


def label_pairs(
    prompt: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    gold_a: np.ndarray,
    gold_b: np.ndarray,
    *,
    mode: str = "deterministic",
    temperature: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
) -> Pairs:
    """Turn two responses per prompt into (chosen, rejected) pairs labelled by gold."""
    rng = np.random.default_rng([seed, 104729])
    a_wins = gold_preferences(
        gold_a, gold_b, mode=mode, temperature=temperature, noise=noise, rng=rng
    )
    chosen = [x if w else y for x, y, w in zip(a, b, a_wins, strict=True)]
    rejected = [y if w else x for x, y, w in zip(a, b, a_wins, strict=True)]
    ga, gb = np.asarray(gold_a, dtype=np.float64), np.asarray(gold_b, dtype=np.float64)
    return Pairs(
        prompt=list(prompt),
        chosen=chosen,
        rejected=rejected,
        gold_chosen=np.where(a_wins, ga, gb),
        gold_rejected=np.where(a_wins, gb, ga),
    )


def relabel(pairs: Pairs, **label_kwargs: object) -> Pairs:
    """Relabel pairs (e.g. with another noise rate or seed).

    Pairs that carry gold scores are labelled again from them (:func:`label_pairs`). Pairs
    without (a user's file: its labels are used as given) keep their order as the clean label,
    and ``noise`` flips each with the same random draws :func:`label_pairs` makes, so pairs with
    gold scores and no ties get the same labels either way; Bradley-Terry labels need scores.
    """
    if pairs.gold_chosen is None or pairs.gold_rejected is None:
        mode = label_kwargs.get("mode", "deterministic")
        if mode != "deterministic":
            raise ValueError(
                f"label mode {mode!r} draws labels from gold scores, and these pairs carry "
                "none (gold_chosen/gold_rejected): their own labels can only be flipped"
            )
        noise = float(label_kwargs.get("noise", 0.0))  # type: ignore[arg-type]
        seed = int(label_kwargs.get("seed", 0))  # type: ignore[call-overload]
        ones = np.ones(len(pairs))
        keep = gold_preferences(
            ones, 0 * ones, noise=noise, rng=np.random.default_rng([seed, 104729])
        )
        return Pairs(
            prompt=list(pairs.prompt),
            chosen=[
                c if k else r for c, r, k in zip(pairs.chosen, pairs.rejected, keep, strict=True)
            ],
            rejected=[
                r if k else c for c, r, k in zip(pairs.chosen, pairs.rejected, keep, strict=True)
            ],
        )
    return label_pairs(
        pairs.prompt,
        pairs.chosen,
        pairs.rejected,
        pairs.gold_chosen,
        pairs.gold_rejected,
        **label_kwargs,  # type: ignore[arg-type]
    )


def write_jsonl(pairs: Pairs, path: str | Path) -> None:
    """Write pairs atomically (a crash never leaves a half-written file)."""
    lines = []
    for i in range(len(pairs)):
        row: dict[str, object] = {
            "prompt": pairs.prompt[i],
            "chosen": pairs.chosen[i],
            "rejected": pairs.rejected[i],
        }
        if pairs.gold_chosen is not None and pairs.gold_rejected is not None:
            row["gold_chosen"] = float(pairs.gold_chosen[i])
            row["gold_rejected"] = float(pairs.gold_rejected[i])
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


class PreferenceFileError(DataFileError):
    """A preference file that cannot be used; the message lists every bad line."""


def _finite_number(v: object) -> bool:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


DUPLICATE_POLICIES = ("error", "warn", "keep")


def read_jsonl(path: str | Path, *, max_errors: int = 20, duplicates: str = "warn") -> Pairs:
    """Read and validate a preference JSONL file (:mod:`proxygap.data.formats` layouts).

    Checks: UTF-8 text, valid JSON objects, chosen and rejected present (prompt too, unless it is
    implicit), non-empty chosen and rejected texts, chosen != rejected, optional gold fields finite
    numbers (all rows or none). Exact duplicate rows reweight the data: ``duplicates="error"``
    refuses them, ``"warn"`` (default) keeps them and warns with their count and line numbers,
    ``"keep"`` keeps them. Raises :class:`PreferenceFileError` naming the file, the lines and
    the fields.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, got {duplicates!r}")
    repeated: list[str] = []
    errors: list[str] = []
    rows: list[tuple[str, str, str, dict[str, object]]] = []
    seen: dict[tuple[str, str, str], int] = {}
    try:
        lines = list(json_lines(path, "preference file"))
    except DataFileError as err:
        raise PreferenceFileError(str(err)) from None
    for lineno, row, problem in lines:
        if problem is not None:
            errors.append(problem)
            continue
        if not isinstance(row, dict):
            errors.append(f"line {lineno}: expected a JSON object, got {type(row).__name__}")
            continue
        parsed = parse_row(row, lineno)
        if isinstance(parsed, str):
            errors.append(parsed)
            continue
        prompt, chosen, rejected, _ = parsed
        empty = [k for k, v in (("chosen", chosen), ("rejected", rejected)) if not v.strip()]
        if empty:
            errors.append(f"line {lineno}: empty text in {empty}")
            continue
        if chosen == rejected:
            errors.append(f"line {lineno}: chosen and rejected are the same text")
            continue
        bad_gold = False
        for k in ("gold_chosen", "gold_rejected"):
            if k in row and not _finite_number(row[k]):
                errors.append(f"line {lineno}: {k} must be a finite number, got {row[k]!r}")
                bad_gold = True
        if bad_gold:
            continue
        key = (prompt, chosen, rejected)
        if key in seen:
            msg = f"line {lineno}: duplicate of line {seen[key]}"
            if duplicates == "error":
                errors.append(msg)
                continue
            repeated.append(msg)
        seen.setdefault(key, lineno)
        rows.append((prompt, chosen, rejected, row))
    if not rows and not errors:
        errors.append("the file holds no preference pairs")
    has_gold = [("gold_chosen" in r and "gold_rejected" in r) for *_, r in rows]
    if any(has_gold) and not all(has_gold):
        errors.append(
            f"gold_chosen/gold_rejected present on {sum(has_gold)} of {len(rows)} rows: "
            "give them on every row or on none"
        )
    if errors:
        raise PreferenceFileError(problems(path, errors, max_errors=max_errors))
    if repeated and duplicates == "warn":
        shown = "; ".join(repeated[:5]) + (" ..." if len(repeated) > 5 else "")
        warnings.warn(f"{path}: {len(repeated)} duplicate row(s) kept: {shown}", stacklevel=2)
    gold = bool(rows) and all(has_gold)
    return Pairs(
        prompt=[r[0] for r in rows],
        chosen=[r[1] for r in rows],
        rejected=[r[2] for r in rows],
        gold_chosen=np.array([r[3]["gold_chosen"] for r in rows], np.float64) if gold else None,
        gold_rejected=np.array([r[3]["gold_rejected"] for r in rows], np.float64) if gold else None,
    )
