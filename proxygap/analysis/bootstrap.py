"""Intervals for law fits and peaks from a bootstrap over prompts (docs/methods.md §1).

The points of one best-of-n curve are averages over the same prompts and the same pools, so their
errors are strongly correlated (about 0.97 between neighbours in the demo). A least-squares fit that
treats the points as independent reports standard errors that are too small. Prompts, with their
pools, are independent draws, so resampling prompts with replacement and recomputing the whole
curve from the per-prompt curves reproduces the correlation: the spread of the refitted
coefficients over the replicates is the honest uncertainty.

Everything here works on per-prompt curves ``(P, M)`` (the exact best-of-n estimator of
:mod:`proxygap.estimators.bon` is an average of such curves), so one replicate is one weighted
average: ``curve_b = w_b @ per_prompt`` with ``w_b`` a row of :func:`prompt_weights`. The refit
uses the point estimate's weights (:func:`proxygap.analysis.laws.fit_law_batch`). Intervals are
percentile intervals of the replicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from proxygap.analysis.laws import LawKind, fit_law_batch, law_peaks

__all__ = [
    "LawBootstrap",
    "LawReplicates",
    "bootstrap_law",
    "curve_fit_se",
    "law_replicates",
    "percentile_interval",
    "prompt_weights",
]

Interval = tuple[float, float]


def prompt_weights(strata: Sequence[int], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights over prompts, ``(n_boot, sum(strata))``, each row summing to 1.

    Prompts come in strata (e.g. one per seed, each with its own pool); within a stratum of
    ``P_s`` prompts a replicate draws ``P_s`` of them with replacement (multinomial counts), and
    the strata count equally: ``w = counts / (P_s * n_strata)``. One stratum is the ordinary
    bootstrap over prompts, whose row ``b`` averages a resample: ``w_b @ per_prompt``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not strata or min(strata) < 1:
        raise ValueError(f"every stratum needs at least one prompt, got {list(strata)}")
    parts = [
        rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot) / (p * len(strata)) for p in strata
    ]
    return np.concatenate(parts, axis=1)


def percentile_interval(samples: np.ndarray, level: float) -> Interval:
    """The central ``level`` percentile interval of 1-D ``samples`` (order statistics, no
    interpolation, so infinite replicates give an infinite end, never NaN)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x = np.asarray(samples, dtype=np.float64)
    q = (1 - level) / 2
    lo, hi = np.quantile(x, [q, 1 - q], method="inverted_cdf")
    return float(lo), float(hi)


def curve_fit_se(se: np.ndarray) -> np.ndarray:
    """Standard errors used as fit weights for a curve relative to its first point.

    The first point (``n = 1``, ``d = 0``) has zero error by construction; it is weighted like
    the most precise other point. With one point only, 1.
    """
    se = np.asarray(se, dtype=np.float64)
    return np.maximum(se, se[1:].min() if se.size > 1 else 1.0)


@dataclass(frozen=True)
class LawReplicates:
    """Bootstrap replicates of one curve's law fit and observed peak, each ``(B,)``.

    ``d_peak``/``r_peak`` are the law's peak (``inf`` when ``beta <= 0``); ``observed_d_peak``
    and ``observed_gold_peak`` are where the replicate curve itself is largest and its value.
    """

    alpha: np.ndarray
    beta: np.ndarray
    d_peak: np.ndarray
    r_peak: np.ndarray
    observed_d_peak: np.ndarray
    observed_gold_peak: np.ndarray


def law_replicates(
    kind: LawKind,
    d: np.ndarray,
    per_prompt: np.ndarray,
    weights: np.ndarray,
    *,
    se: np.ndarray | None,
) -> LawReplicates:
    """Recompute the curve for every row of ``weights`` and refit the law.

    Args:
        kind: ``"bon"`` (``d (alpha - beta d)``) or ``"rl"`` (``d (alpha - beta log d)``).
        d: (M,) the curve's ``d`` grid, ascending.
        per_prompt: (P, M) per-prompt curves (their plain mean is the curve).
        weights: (B, P) rows of :func:`prompt_weights`.
        se: (M,) the point estimate's fit standard errors (fixed weights ``1 / se^2``), or None.
    """
    per = np.asarray(per_prompt, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if per.ndim != 2 or per.shape[1] != d.size:
        raise ValueError(f"per_prompt must have shape (P, {d.size}), got {per.shape}")
    if weights.ndim != 2 or weights.shape[1] != per.shape[0]:
        raise ValueError(f"weights must have shape (B, {per.shape[0]}), got {weights.shape}")
    curves = weights @ per  # (B, M)
    alpha, beta = fit_law_batch(kind, d, curves, se)
    d_peak, r_peak = law_peaks(kind, alpha, beta)
    top = np.argmax(curves, axis=1)  # (B,)
    return LawReplicates(
        alpha=alpha,
        beta=beta,
        d_peak=d_peak,
        r_peak=r_peak,
        observed_d_peak=d[top],
        observed_gold_peak=curves[np.arange(len(top)), top],
    )


@dataclass(frozen=True)
class LawBootstrap:
    """Percentile intervals (at ``level``) from ``n_boot`` replicates over prompts.

    Attributes:
        alpha, beta: intervals of the law's coefficients; ``alpha_se``/``beta_se`` their
            bootstrap standard deviations (compare with :class:`~proxygap.analysis.laws.LawFit`'s
            least-squares ``alpha_se``/``beta_se``).
        d_peak, r_peak: intervals of the law's peak ``d*`` and its value (``inf`` ends when
            enough replicates have no interior maximum); ``share_no_peak`` is the share of
            replicates with ``beta <= 0``.
        observed_d_peak, observed_gold_peak: intervals of where the curve itself peaks and of
            its value there (the largest of noisy points: biased upwards like the point
            estimate, see :func:`~proxygap.analysis.laws.overoptimization`).
    """

    kind: LawKind
    n_boot: int
    level: float
    alpha: Interval
    beta: Interval
    alpha_se: float
    beta_se: float
    d_peak: Interval
    r_peak: Interval
    share_no_peak: float
    observed_d_peak: Interval
    observed_gold_peak: Interval

    def law_misplaces_peak(self, observed_d_peak: float) -> bool:
        """Whether the observed peak ``d`` lies outside the law's ``d*`` interval."""
        lo, hi = self.d_peak
        return not lo <= observed_d_peak <= hi

    def as_dict(self) -> dict[str, object]:
        """Plain values for JSON (intervals as ``[lo, hi]`` lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def summarise(reps: LawReplicates, kind: LawKind, level: float) -> LawBootstrap:
    """The :class:`LawBootstrap` of a set of replicates."""
    return LawBootstrap(
        kind=kind,
        n_boot=int(reps.alpha.size),
        level=level,
        alpha=percentile_interval(reps.alpha, level),
        beta=percentile_interval(reps.beta, level),
        alpha_se=float(reps.alpha.std(ddof=1)),
        beta_se=float(reps.beta.std(ddof=1)),
        d_peak=percentile_interval(reps.d_peak, level),
        r_peak=percentile_interval(reps.r_peak, level),
        share_no_peak=float(np.mean(reps.beta <= 0)),
        observed_d_peak=percentile_interval(reps.observed_d_peak, level),
        observed_gold_peak=percentile_interval(reps.observed_gold_peak, level),
    )


def bootstrap_law(
    kind: LawKind,
    d: np.ndarray,
    per_prompt: np.ndarray,
    *,
    se: np.ndarray | None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> LawBootstrap:
    """Intervals of a law fit and of the observed peak by a bootstrap over the P prompts of
    ``per_prompt`` (P, M); see :func:`law_replicates` for the arguments."""
    rng = np.random.default_rng(seed)
    weights = prompt_weights([np.asarray(per_prompt).shape[0]], n_boot, rng)
    return summarise(law_replicates(kind, d, per_prompt, weights, se=se), kind, level)
