"""Aggregation over seeds: t confidence intervals, grouping of sweep cells, mean curves.

A sweep runs every combination of its grid values; the cells that differ only in a seed are
replicates of one setting. For each setting (a *group*) and proxy, every scalar result of the
study (gold at the peak, ``d`` at the peak, gold at the largest ``n``, the drop, held-out accuracy,
the law's ``alpha``, ``beta``, ``R^2``) is summarised by its mean over seeds and a two-sided
Student-t confidence interval

    mean ± t_{(1 + level) / 2, S - 1} * s / sqrt(S),   s = sample std (ddof = 1), S seeds,

which assumes the seeds' results are i.i.d. normal; with S < 2 the interval is undefined (nan).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import t as student_t

__all__ = [
    "METRICS",
    "Interval",
    "ProxyAggregate",
    "aggregate_proxy",
    "group_cells",
    "group_key",
    "is_seed_path",
    "metric_value",
    "t_band",
    "t_interval",
]

# metric name -> path inside one proxy's entry of ``summary.json``
METRICS: dict[str, tuple[str, ...]] = {
    "gold_peak": ("turn_down", "gold_peak"),
    "d_peak": ("turn_down", "d_peak"),
    "gold_end": ("turn_down", "gold_end"),
    "drop": ("turn_down", "drop"),
    "heldout_accuracy": ("heldout_accuracy",),
    "alpha": ("fit", "alpha"),
    "beta": ("fit", "beta"),
    "r2": ("fit", "r2"),
}


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` finite values and its two-sided confidence interval ``[lo, hi]``."""

    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def t_interval(values: Sequence[float | None], *, level: float = 0.95) -> Interval:
    """Student-t interval of the mean; non-finite values and ``None`` are left out (``n`` counts
    the values used). One value gives its mean with a nan interval; none gives all nan."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(student_t.ppf((1.0 + level) / 2.0, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def t_band(x: np.ndarray, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise :func:`t_interval` of the rows of ``x`` (S, T): mean, lo, hi, each (T,).

    The band is pointwise (each column on its own), not a simultaneous band for the curve."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be (S, T) with S >= 1, got shape {x.shape}")
    S = x.shape[0]
    mean = x.mean(axis=0)
    if S < 2:
        nan = np.full_like(mean, math.nan)
        return mean, nan, nan.copy()
    half = student_t.ppf((1.0 + level) / 2.0, S - 1) * x.std(axis=0, ddof=1) / math.sqrt(S)
    return mean, mean - half, mean + half


def is_seed_path(path: str) -> bool:
    """Whether a grid path sets a seed (its last component is ``seed``): such values are
    replicates, averaged over, not settings compared."""
    return path.split(".")[-1] == "seed"


def group_key(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The setting a cell belongs to: its non-seed grid values, as hashable JSON text."""
    return tuple(
        (path, json.dumps(v, sort_keys=True))
        for path, v in values.items()
        if not is_seed_path(path)
    )


def group_cells(values: Sequence[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], list[int]]:
    """Indices of cells sharing a setting, keyed by :func:`group_key`, in first-seen order."""
    groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault(group_key(v), []).append(i)
    return groups


def metric_value(proxy_summary: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at ``path`` in one proxy's ``summary.json`` entry (None when absent)."""
    node: Any = proxy_summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return None if node is None else float(node)


@dataclass(frozen=True)
class ProxyAggregate:
    """One proxy of one group: an interval per metric and how many seeds turned down."""

    metrics: dict[str, Interval]
    n_seeds: int
    n_significant: int

    @property
    def significant_fraction(self) -> float:
        return self.n_significant / self.n_seeds if self.n_seeds else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_seeds": self.n_seeds,
            "n_significant": self.n_significant,
            "significant_fraction": self.significant_fraction,
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
        }


def aggregate_proxy(summaries: Sequence[dict[str, Any]], *, level: float = 0.95) -> ProxyAggregate:
    """Aggregate one proxy's ``summary.json`` entries, one per seed."""
    metrics = {
        name: t_interval([metric_value(s, path) for s in summaries], level=level)
        for name, path in METRICS.items()
    }
    significant = sum(bool(s.get("turn_down", {}).get("significant")) for s in summaries)
    return ProxyAggregate(metrics, len(summaries), significant)
