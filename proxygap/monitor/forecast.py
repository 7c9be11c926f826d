"""Forecasting the gold peak from a small gold budget (docs/methods.md §1).

A team without a gold reward can still label a few samples now and then (human or judge labels):
gold on ``n`` samples of the policy at the evaluation points seen so far, a noisy curve of gold
against ``d = sqrt(KL)``. :func:`forecast_peak` fits the concave quadratic through the origin,
``g(d) = a d - b d^2`` (Gao et al. 2023's best-of-n form, the lowest-order curve that can turn),
by least squares weighted with ``1 / se^2``, and puts the peak at ``d* = a / (2 b)``; a parametric
bootstrap of the gold points (each redrawn from ``N(g_t, se_t^2)``) gives the interval. The step
of the peak is read off the run's ``d``-against-step path so far (linear in ``sqrt(step)``,
extrapolated when the peak lies ahead). :func:`gao_rl_peak` is the comparison: the peak of Gao et
al.'s RL law ``d (alpha - beta log d)`` fitted to the same points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from proxygap.analysis.laws import ArrayLike, fit_bon_law, fit_rl_law

__all__ = ["PeakForecast", "forecast_peak", "gao_rl_peak"]


@dataclass(frozen=True)
class PeakForecast:
    """The forecast gold peak: ``d`` with an interval ``[lo, hi]`` (``inf`` when no turn is in
    sight) and the training ``step`` it is expected at (None without steps)."""

    d: float
    lo: float
    hi: float
    step: float | None


def _peak(d: np.ndarray, g: np.ndarray, se: np.ndarray | None) -> float:
    try:
        fit = fit_bon_law(d, g, se)
    except ValueError:
        return math.inf
    return fit.d_peak if fit.alpha > 0 else 0.0


def forecast_peak(
    d: ArrayLike,
    gold: ArrayLike,
    se: ArrayLike | None = None,
    *,
    steps: ArrayLike | None = None,
    level: float = 0.8,
    n_boot: int = 200,
    seed: int = 0,
) -> PeakForecast:
    """The gold peak forecast from the points so far (see the module docstring).

    Args:
        d: ``(M,)`` ``sqrt(KL)`` of the points so far, ``>= 0``.
        gold: ``(M,)`` gold at those points (relative to the initial policy).
        se: ``(M,)`` standard errors of ``gold`` (None: unweighted, no bootstrap interval).
        steps: ``(M,)`` training steps of the points, to place the peak in steps.
        level: coverage of the bootstrap interval.
    """
    d, g = np.asarray(d, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    s = None if se is None else np.maximum(np.nan_to_num(np.asarray(se, dtype=np.float64)), 1e-6)
    point = _peak(d, g, s)
    lo = hi = point
    if s is not None and n_boot > 0:
        rng = np.random.default_rng(seed)
        boot = np.array([_peak(d, g + rng.normal(0.0, s), s) for _ in range(n_boot)])
        lo, hi = (float(np.quantile(boot, q)) for q in ((1 - level) / 2, (1 + level) / 2))
    step = None
    if steps is not None and math.isfinite(point):
        t = np.asarray(steps, dtype=np.float64)
        if len(t) >= 2 and np.ptp(np.sqrt(t)) > 0:
            slope, icpt = np.polyfit(np.sqrt(t), d, 1)
            step = float(((point - icpt) / slope) ** 2) if slope > 0 else None
    return PeakForecast(point, lo, hi, step)


def gao_rl_peak(d: ArrayLike, gold: ArrayLike, se: ArrayLike | None = None) -> float:
    """``d*`` of Gao et al.'s RL law fitted to the points (``inf`` when it does not turn)."""
    try:
        return fit_rl_law(d, gold, se).d_peak
    except ValueError:
        return math.inf
