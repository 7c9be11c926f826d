"""Trends of law coefficients and peaks against reward-model size (docs/methods.md §1,
"Scaling with the proxy's size").

Gao et al. 2023 (fig. 3) report that, as the proxy grows, the best-of-n ``alpha`` rises,
``beta`` falls, and gold peaks later and higher. Here a trend is the least-squares slope of a
quantity against ``log10(parameters)`` over the model sizes. Two intervals:

- **over seeds**: one slope per seed (each seed has its own pairs, noise, initialisation and
  pool), and the Student-t interval of their mean; it holds every source of variation, with
  ``S - 1`` degrees of freedom;
- **over prompts**: the slope of each bootstrap replicate, the prompts of every seed's pool
  resampled jointly for all sizes (they share the pool), as a percentile interval; it holds the
  pools' sampling only (the reward models are fixed).

:func:`direction` turns an interval into a verdict on an expected sign.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from proxygap.analysis.bootstrap import percentile_interval
from proxygap.analysis.seeds import t_interval

__all__ = ["Trend", "direction", "slopes", "trend"]

Verdict = Literal["held", "not held", "inconclusive"]


def slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of every row of ``y`` (R, K) against ``x`` (K,): (R,).

    ``slope = sum((x - x_mean) (y - y_mean)) / sum((x - x_mean)^2)``; rows holding a non-finite
    value give NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if y.shape[1] != x.size or x.size < 2:
        raise ValueError(f"y must be (R, {x.size}) with at least 2 sizes, got {y.shape}")
    xc = x - x.mean()
    if not (xc**2).sum() > 0:
        raise ValueError("x must hold at least two distinct values")
    with np.errstate(invalid="ignore"):
        out = (y - y.mean(axis=1, keepdims=True)) @ xc / (xc**2).sum()
    return np.where(np.isfinite(y).all(axis=1), out, np.nan)


@dataclass(frozen=True)
class Trend:
    """Slope of a quantity against ``log10(parameters)``.

    Attributes:
        slope: the mean of the per-seed slopes; ``lo``/``hi`` its t interval over seeds.
        per_seed: the per-seed slopes (NaN where a seed's value was infinite, e.g. no peak).
        boot_lo, boot_hi: percentile interval of the slope of the seeds' mean over bootstrap
            replicates of the prompts (NaN when no replicates were given).
    """

    slope: float
    lo: float
    hi: float
    per_seed: tuple[float, ...]
    boot_lo: float
    boot_hi: float

    def as_dict(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def trend(
    log_params: np.ndarray,
    values: np.ndarray,
    *,
    replicates: np.ndarray | None = None,
    level: float = 0.95,
) -> Trend:
    """The trend of ``values`` (S seeds, K sizes) against ``log_params`` (K,).

    ``replicates`` (B, S, K), optional: bootstrap replicates of ``values``; the slope of their
    mean over seeds gives the prompt-resampling interval.
    """
    per_seed = slopes(log_params, values)
    iv = t_interval(per_seed.tolist(), level=level)
    b_lo = b_hi = float("nan")
    if replicates is not None:
        reps = slopes(log_params, np.asarray(replicates).mean(axis=1))
        finite = reps[np.isfinite(reps)]
        if finite.size == reps.size:
            b_lo, b_hi = percentile_interval(finite, level)
    return Trend(
        slope=iv.mean,
        lo=iv.lo,
        hi=iv.hi,
        per_seed=tuple(float(s) for s in per_seed),
        boot_lo=b_lo,
        boot_hi=b_hi,
    )


def direction(lo: float, hi: float, expected: int) -> Verdict:
    """``held`` if ``[lo, hi]`` lies wholly on the side of 0 that ``expected`` (+1 or -1) names,
    ``not held`` if wholly on the other side, else ``inconclusive`` (also for a NaN interval)."""
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1, got {expected}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive"
    if expected * lo > 0 and expected * hi > 0:
        return "held"
    if expected * lo < 0 and expected * hi < 0:
        return "not held"
    return "inconclusive"
