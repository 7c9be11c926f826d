"""Forecasting the gold peak from a small gold budget (docs/methods.md §8).

A team without a gold reward can still label a few samples now and then (human or judge labels):
gold on ``n`` samples of the policy at the evaluation points seen so far, a noisy curve of gold
against ``d = sqrt(KL)``. :func:`forecast_peak` has two methods:

- ``"argmax"`` (the default): a parametric bootstrap of the gold points (each redrawn from
  ``N(g_t, se_t^2)``) and, in each draw, the ``d`` of the highest point; the forecast is the
  median of those ``d``, the interval their quantiles, its upper end raised to the current ``d``
  (the curve may not have turned yet). It never extrapolates: it says where, among the points
  seen, gold most likely peaked, and how unsure that is under the labels' noise;
- ``"plateau"``: the midpoint of ``"argmax"``'s forecast and the end of the plateau, the ``d``
  of the last point whose gold is within one standard error of the difference of the highest
  (``g_t >= g_p - sqrt(se_t^2 + se_p^2)``), the interval widened to hold that end. While no
  point lies significantly below the best, the peak may be anywhere on the plateau or ahead of
  it; ``"argmax"`` bets on the highest point, the plateau's end on the latest;
- ``"quadratic"``: the concave quadratic through the origin, ``g(d) = a d - b d^2`` (Gao et al.
  2023's best-of-n form, the lowest-order curve that can turn), fitted by least squares weighted
  with ``1 / se^2``, the peak at ``d* = a / (2 b)``, the interval from the same bootstrap.

``"argmax"`` was chosen over the quadratic on the training seeds of the built-in ``detect``
corpus, where gold stays flat within noise and then collapses within one or two evaluation
points: neither the quadratic nor Gao et al.'s RL law describes that shape, and both put the
peak at 0 or nowhere. The study then uses ``"plateau"``, chosen on that corpus's development
seeds (docs/methods.md §8): ``"argmax"`` is exact once the peak has been seen but far short
while it still lies ahead, the plateau's end the reverse, their midpoint fair at both. The step
of the peak is read off the run's ``d``-against-step path so far (linear in ``sqrt(step)``,
extrapolated when the peak lies ahead). :func:`gao_rl_peak` and :func:`gao_bon_peak` are the
comparisons: the peaks of Gao et al.'s RL law ``d (alpha - beta log d)`` and of their best-of-n
law ``d (alpha - beta d)`` fitted to the same points.

The bootstrap interval reflects only the labels' noise, not the error of the method itself
(a peak still ahead lies beyond every point seen), so it covers too rarely before the peak.
:func:`conformal_radius` calibrates an interval instead (split conformal prediction, Vovk et
al. 2005; Lei et al. 2018): on calibration runs, whose true peak is known, the scores
``|log(d_true / d_forecast)|``; their ``ceil((n + 1) level)``-th smallest, ``q``, gives the
interval ``d_forecast * [exp(-q), exp(q)]`` (:meth:`PeakForecast.conformal`), which covers a
new run's peak with probability at least ``level`` when runs are exchangeable with the
calibration runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from proxygap.analysis.laws import ArrayLike, fit_bon_law, fit_rl_law

__all__ = [
    "FORECAST_METHODS",
    "PeakForecast",
    "conformal_radius",
    "forecast_peak",
    "gao_bon_peak",
    "gao_rl_peak",
    "plateau_end",
]

ForecastMethod = Literal["argmax", "plateau", "quadratic"]
FORECAST_METHODS: tuple[ForecastMethod, ...] = ("argmax", "plateau", "quadratic")


@dataclass(frozen=True)
class PeakForecast:
    """The forecast gold peak: ``d`` with an interval ``[lo, hi]`` (``inf`` when no turn is in
    sight) and the training ``step`` it is expected at (None without steps)."""

    d: float
    lo: float
    hi: float
    step: float | None

    def conformal(self, radius: float) -> tuple[float, float]:
        """The calibrated interval ``d * [exp(-radius), exp(radius)]`` (see
        :func:`conformal_radius`); ``(0, inf)`` when the forecast or the radius is not finite
        or the forecast is not positive."""
        if not (math.isfinite(self.d) and self.d > 0 and math.isfinite(radius)):
            return 0.0, math.inf
        return self.d * math.exp(-radius), self.d * math.exp(radius)


def conformal_radius(forecast: ArrayLike, truth: ArrayLike, level: float = 0.8) -> float:
    """The split-conformal radius (module docstring) from calibration runs' forecast and true
    peak ``d``: the ``ceil((n + 1) level)``-th smallest of ``|log(truth / forecast)|``; ``inf``
    when ``n`` is too small for that rank (fewer than ``level / (1 - level)`` runs) and for a
    forecast or truth that is not positive and finite."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    f, t = np.asarray(forecast, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if f.shape != t.shape or f.ndim != 1:
        raise ValueError(f"forecast and truth must be (n,) alike, got {f.shape} and {t.shape}")
    ok = np.isfinite(f) & np.isfinite(t) & (f > 0) & (t > 0)
    scores = np.full(len(f), np.inf)
    scores[ok] = np.abs(np.log(t[ok] / f[ok]))
    scores.sort()
    rank = math.ceil((len(scores) + 1) * level)
    return float(scores[rank - 1]) if rank <= len(scores) else math.inf


def _peak(d: np.ndarray, g: np.ndarray, se: np.ndarray | None) -> float:
    try:
        fit = fit_bon_law(d, g, se)
    except ValueError:
        return math.inf
    return fit.d_peak if fit.alpha > 0 else 0.0


def _argmax_d(d: np.ndarray, g: np.ndarray) -> float:
    return float(d[int(np.argmax(g))])


def plateau_end(d: np.ndarray, g: np.ndarray, se: np.ndarray | None) -> float:
    """``d`` of the last point whose gold is within one standard error of the difference of the
    highest point's (the highest point itself without ``se``)."""
    p = int(np.argmax(g))
    s = np.zeros_like(g) if se is None else se
    within = np.flatnonzero(g >= g[p] - np.sqrt(s**2 + s[p] ** 2))
    return float(d[within[-1]])


def forecast_peak(
    d: ArrayLike,
    gold: ArrayLike,
    se: ArrayLike | None = None,
    *,
    steps: ArrayLike | None = None,
    level: float = 0.8,
    n_boot: int = 200,
    seed: int = 0,
    method: ForecastMethod = "argmax",
) -> PeakForecast:
    """The gold peak forecast from the points so far (see the module docstring).

    Args:
        d: ``(M,)`` ``sqrt(KL)`` of the points so far, ``>= 0``.
        gold: ``(M,)`` gold at those points (relative to the initial policy).
        se: ``(M,)`` standard errors of ``gold`` (None: unweighted, no bootstrap interval; a
            point with ``se = 0``, such as the initial policy's gold relative to itself, is not
            redrawn).
        steps: ``(M,)`` training steps of the points, to place the peak in steps.
        level: coverage of the bootstrap interval.
        method: ``"argmax"``, ``"plateau"`` or ``"quadratic"`` (module docstring).
    """
    if method not in FORECAST_METHODS:
        raise ValueError(f"method must be one of {FORECAST_METHODS}, got {method!r}")
    d, g = np.asarray(d, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if d.ndim != 1 or d.shape != g.shape or len(d) == 0:
        raise ValueError(f"d and gold must be (M,) with M >= 1, got {d.shape} and {g.shape}")
    s = None if se is None else np.nan_to_num(np.asarray(se, dtype=np.float64))
    boot: np.ndarray | None = None
    if s is not None and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = g + rng.normal(0.0, 1.0, size=(n_boot, len(g))) * s  # (n_boot, M)
        fit_se = np.maximum(s, 1e-6)
        peak = _argmax_d if method != "quadratic" else lambda x, y: _peak(x, y, fit_se)
        boot = np.array([peak(d, row) for row in draws])
    if method != "quadratic":
        point = _argmax_d(d, g) if boot is None else float(np.median(boot))
    else:
        point = _peak(d, g, None if s is None else np.maximum(s, 1e-6))
    lo = hi = point
    if boot is not None:
        lo, hi = (float(np.quantile(boot, q)) for q in ((1 - level) / 2, (1 + level) / 2))
        if method != "quadratic":
            hi = max(hi, float(d.max()))  # the curve may not have turned yet
    if method == "plateau":
        end = plateau_end(d, g, s)
        point = (point + end) / 2
        lo, hi = min(lo, point), max(hi, end)
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


def gao_bon_peak(d: ArrayLike, gold: ArrayLike, se: ArrayLike | None = None) -> float:
    """``d*`` of Gao et al.'s best-of-n law fitted to the points (``inf`` when it does not turn,
    0 when it falls from the start)."""
    try:
        return fit_bon_law(d, gold, se).d_peak
    except ValueError:
        return math.inf
