"""Functional forms of gold reward versus ``d = sqrt(KL)``, and overoptimization summaries.

Gao, Schulman, Hilton 2023 ("Scaling Laws for Reward Model Overoptimization") fit the gold reward
``R`` (with ``R(0) = 0``) as a function of ``d = sqrt(KL(pi || pi0))``:

    best-of-n:  R_bon(d) = d * (alpha_bon - beta_bon * d)
    RL:         R_rl(d)  = d * (alpha_rl  - beta_rl  * log d)

Both are linear in ``(alpha, beta)``, so the fits below are exact weighted least squares, not
iterative curve fitting. R^2 alone does not show overoptimization (a rising curve fits well too):
:func:`overoptimization` and :func:`divergence_point` compare the turn-down of the gold curve with
its standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

ArrayLike = np.ndarray | Sequence[float]
LawKind = Literal["bon", "rl"]

__all__ = [
    "LawFit",
    "Overoptimization",
    "divergence_point",
    "fit_bon_law",
    "fit_law_batch",
    "fit_rl_law",
    "law_peaks",
    "overoptimization",
]


def _vector(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains inf")
    return a


def _basis(kind: LawKind, d: np.ndarray) -> np.ndarray:
    """Design matrix (M, 2) with ``R = X @ [alpha, beta]``; ``d log d`` is 0 at ``d = 0``."""
    if kind == "bon":
        return np.stack([d, -d * d], axis=1)
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.stack([d, -d_log_d], axis=1)


@dataclass(frozen=True)
class LawFit:
    """A fitted Gao et al. 2023 law (see :func:`fit_bon_law`, :func:`fit_rl_law`).

    Attributes:
        kind: ``"bon"`` for ``d (alpha - beta d)``, ``"rl"`` for ``d (alpha - beta log d)``.
        alpha, beta: fitted coefficients.
        alpha_se, beta_se: their standard errors (see the fit functions for how they are scaled).
        r2: ``1 - SS_res / SS_tot`` on the fitted points, both sums weighted by ``1 / se^2`` when
            standard errors were given, ``SS_tot`` about the weighted mean.
        d_peak, r_peak: the maximiser of the curve over ``d >= 0`` and its value; ``inf`` for both
            when ``beta <= 0`` (no interior maximum: the curve is unbounded or linear).
        n_points: number of points used in the fit.
    """

    kind: LawKind
    alpha: float
    beta: float
    alpha_se: float
    beta_se: float
    r2: float
    d_peak: float
    r_peak: float
    n_points: int

    def predict(self, d: ArrayLike | float) -> np.ndarray:
        """The fitted ``R(d)`` for ``d >= 0`` of any shape; float64 array of the same shape."""
        a = np.asarray(d, dtype=np.float64)
        if (a < 0).any():
            raise ValueError("d must be >= 0")
        flat = a.reshape(-1)
        return (_basis(self.kind, flat) @ np.array([self.alpha, self.beta])).reshape(a.shape)

    def as_dict(self) -> dict[str, float | int | str]:
        """All fields as plain Python scalars (for JSON reports)."""
        return asdict(self)


def _peak(kind: LawKind, alpha: float, beta: float) -> tuple[float, float]:
    if beta <= 0:
        return math.inf, math.inf
    if kind == "bon":
        if alpha <= 0:  # decreasing from R(0) = 0 for all d >= 0
            return 0.0, 0.0
        return alpha / (2 * beta), alpha**2 / (4 * beta)
    d_peak = math.exp(alpha / beta - 1)  # dR/dd = alpha - beta (log d + 1) = 0
    return d_peak, beta * d_peak


def _fit(kind: LawKind, d: ArrayLike, r: ArrayLike, se: ArrayLike | None) -> LawFit:
    d_a, r_a = _vector(d, "d"), _vector(r, "r")
    if d_a.shape != r_a.shape:
        raise ValueError(f"d and r must have the same length, got {d_a.size} and {r_a.size}")
    if (d_a < 0).any():
        raise ValueError("d must be >= 0 (d = sqrt(KL))")
    if se is None:
        w = np.ones_like(d_a)
    else:
        se_a = _vector(se, "se")
        if se_a.shape != d_a.shape:
            raise ValueError(f"se must have the same length as d, got {se_a.size} and {d_a.size}")
        if (se_a <= 0).any():
            raise ValueError("se must be > 0 (a zero standard error gives an infinite weight)")
        w = 1.0 / se_a**2
    keep = d_a > 0 if kind == "rl" else np.ones_like(d_a, dtype=bool)
    d_a, r_a, w = d_a[keep], r_a[keep], w[keep]
    m = d_a.size
    if m < 2:
        raise ValueError(f"need at least 2 points to fit 2 coefficients, got {m}")

    X = _basis(kind, d_a)  # (M, 2)
    sw = np.sqrt(w)
    Xw, rw = X * sw[:, None], r_a * sw  # whitened system
    coef, _, rank, _ = np.linalg.lstsq(Xw, rw, rcond=None)
    if rank < 2:
        raise ValueError("design is singular: need at least 2 distinct d > 0")
    resid = rw - Xw @ coef
    ss_res = float(resid @ resid)
    cov = np.linalg.inv(Xw.T @ Xw)  # (2, 2)
    if se is None:  # unknown noise: estimate its variance from the residuals
        cov = cov * (ss_res / (m - 2) if m > 2 else math.nan)
    r_mean = float(np.sum(w * r_a) / np.sum(w))
    ss_tot = float(np.sum(w * (r_a - r_mean) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    alpha, beta = float(coef[0]), float(coef[1])
    d_peak, r_peak = _peak(kind, alpha, beta)
    return LawFit(
        kind=kind,
        alpha=alpha,
        beta=beta,
        alpha_se=float(np.sqrt(cov[0, 0])),
        beta_se=float(np.sqrt(cov[1, 1])),
        r2=r2,
        d_peak=d_peak,
        r_peak=r_peak,
        n_points=m,
    )


def fit_bon_law(d: ArrayLike, r: ArrayLike, se: ArrayLike | None = None) -> LawFit:
    """Fit the best-of-n law ``R(d) = d (alpha - beta d)`` (Gao et al. 2023) by least squares.

    Minimises ``sum_k w_k (r_k - alpha d_k + beta d_k^2)^2`` exactly (linear least squares), with
    ``w_k = 1 / se_k^2`` when ``se`` is given and 1 otherwise. Peak: ``d* = alpha / (2 beta)``,
    ``R* = alpha^2 / (4 beta)``; ``d* = R* = 0`` if ``alpha <= 0 < beta``, ``inf`` if ``beta <= 0``.

    Standard errors of ``(alpha, beta)``: with ``se`` given, ``sqrt(diag((X^T W X)^-1))``, i.e.
    ``se`` is taken as the true noise scale (not rescaled by the residuals); without ``se``,
    ``(X^T X)^-1`` times the residual variance ``SS_res / (M - 2)`` (NaN when M = 2).

    Args:
        d: (M,) ``sqrt(KL)`` values, >= 0 (``d = 0`` points are kept; the law passes through 0).
        r: (M,) gold (or proxy) reward at each ``d``.
        se: optional (M,) standard errors of ``r``, > 0.
    """
    return _fit("bon", d, r, se)


def fit_rl_law(d: ArrayLike, r: ArrayLike, se: ArrayLike | None = None) -> LawFit:
    """Fit the RL law ``R(d) = d (alpha - beta log d)`` (Gao et al. 2023) by least squares.

    Same weighting and standard errors as :func:`fit_bon_law`. Points with ``d = 0`` are dropped
    (``log d`` is undefined there; the law gives ``R(0) = 0`` regardless). Peak:
    ``d* = exp(alpha / beta - 1)``, ``R* = beta d*`` (``inf`` for both if ``beta <= 0``); the curve
    returns to 0 at ``d = exp(alpha / beta)``.

    Args:
        d: (M,) ``sqrt(KL)`` values, >= 0.
        r: (M,) gold (or proxy) reward at each ``d``.
        se: optional (M,) standard errors of ``r``, > 0.
    """
    return _fit("rl", d, r, se)


def law_peaks(kind: LawKind, alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_peak` elementwise: the peak ``d*`` and value ``R*`` of each ``(alpha, beta)``
    (float64 arrays of one shape; ``inf`` where ``beta <= 0``, 0 for a best-of-n law with
    ``alpha <= 0 < beta``)."""
    a, b = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    up = b > 0
    safe_b = np.where(up, b, 1.0)
    if kind == "bon":
        pos = up & (a > 0)
        d = np.where(pos, a / (2 * safe_b), 0.0)
        r = np.where(pos, a * a / (4 * safe_b), 0.0)
    else:
        with np.errstate(over="ignore"):
            d = np.exp(np.where(up, a / safe_b - 1, 0.0))
        r = b * d
    return np.where(up, d, np.inf), np.where(up, r, np.inf)


def fit_law_batch(
    kind: LawKind, d: ArrayLike, r: np.ndarray, se: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Refit one law to many curves on the same ``d`` grid with fixed weights.

    The same weighted least squares as :func:`fit_bon_law` / :func:`fit_rl_law` (weights
    ``1 / se^2``, the RL law without ``d = 0``), applied to every row of ``r`` at once: the
    coefficients are the fixed linear map ``(X^T W X)^-1 X^T W`` of each row. This is what a
    bootstrap over prompts refits (``proxygap.analysis.bootstrap``).

    Args:
        kind: ``"bon"`` or ``"rl"``.
        d: (M,) ``sqrt(KL)`` values, >= 0.
        r: (B, M) curves.
        se: optional (M,) standard errors, > 0, shared by all rows.

    Returns:
        ``alpha`` (B,) and ``beta`` (B,).
    """
    d_a = _vector(d, "d")
    r_a = np.asarray(r, dtype=np.float64)
    if r_a.ndim != 2 or r_a.shape[1] != d_a.size:
        raise ValueError(f"r must have shape (B, {d_a.size}), got {r_a.shape}")
    w = np.ones_like(d_a) if se is None else 1.0 / _vector(se, "se") ** 2
    keep = d_a > 0 if kind == "rl" else np.ones_like(d_a, dtype=bool)
    X = _basis(kind, d_a[keep]) * np.sqrt(w[keep])[:, None]  # (M', 2), whitened
    if X.shape[0] < 2 or np.linalg.matrix_rank(X) < 2:
        raise ValueError("design is singular: need at least 2 distinct d > 0")
    A = np.linalg.pinv(X) * np.sqrt(w[keep])[None, :]  # (2, M'): coef = A @ r
    coef = r_a[:, keep] @ A.T  # (B, 2)
    return coef[:, 0], coef[:, 1]


@dataclass(frozen=True)
class Overoptimization:
    """Where the gold curve peaks and how far it falls by the last point.

    Attributes:
        peak_index: index of the largest gold value (first one if tied).
        d_peak: ``d`` at the peak.
        gold_peak, gold_end: gold at the peak and at the last point.
        drop: ``gold_peak - gold_end`` (>= 0).
        drop_se: ``sqrt(se_peak^2 + se_end^2)``, standard error of the drop for independent
            estimates; 0 when the peak is the last point (the drop is then exactly 0).
        significant: ``drop > 2 * drop_se``.
    """

    peak_index: int
    d_peak: float
    gold_peak: float
    gold_end: float
    drop: float
    drop_se: float
    significant: bool

    @property
    def turns_down(self) -> bool:
        """True iff the peak comes before the last point and the drop exceeds 2 standard errors."""
        return self.significant and self.drop > 0


def _curve(d: ArrayLike, gold: ArrayLike, gold_se: ArrayLike) -> tuple[np.ndarray, ...]:
    d_a, g_a, s_a = _vector(d, "d"), _vector(gold, "gold"), _vector(gold_se, "gold_se")
    if not d_a.size == g_a.size == s_a.size:
        raise ValueError(
            f"d, gold and gold_se must have the same length, got {d_a.size}, {g_a.size}, {s_a.size}"
        )
    if d_a.size == 0:
        raise ValueError("the curve is empty")
    if (np.diff(d_a) < 0).any():
        raise ValueError("d must be sorted ascending")
    if (s_a < 0).any():
        raise ValueError("gold_se must be >= 0")
    return d_a, g_a, s_a


def overoptimization(d: ArrayLike, gold: ArrayLike, gold_se: ArrayLike) -> Overoptimization:
    """Summarise the turn-down of a gold-vs-``d`` curve against its standard errors.

    The peak is ``argmax(gold)``; the drop is ``gold[peak] - gold[-1]`` with standard error
    ``sqrt(gold_se[peak]^2 + gold_se[-1]^2)``, and it is flagged ``significant`` above 2 standard
    errors. The peak is chosen after seeing the data (the largest of several noisy values is
    biased upwards), so the flag is a screening rule, not a calibrated test; on a long flat noisy
    curve it fires more often than a single 2-sigma test would.

    Args:
        d: (M,) ``sqrt(KL)`` values, sorted ascending.
        gold: (M,) mean gold reward at each ``d``.
        gold_se: (M,) standard errors of ``gold``, >= 0.
    """
    d_a, g_a, s_a = _curve(d, gold, gold_se)
    k = int(np.argmax(g_a))
    last = g_a.size - 1
    drop = float(g_a[k] - g_a[last])
    drop_se = 0.0 if k == last else float(math.hypot(s_a[k], s_a[last]))
    return Overoptimization(
        peak_index=k,
        d_peak=float(d_a[k]),
        gold_peak=float(g_a[k]),
        gold_end=float(g_a[last]),
        drop=drop,
        drop_se=drop_se,
        significant=bool(k < last and drop > 2 * drop_se),
    )


def divergence_point(
    d: ArrayLike, proxy: ArrayLike, gold: ArrayLike, gold_se: ArrayLike
) -> int | None:
    """First index where gold has fallen below its peak while the proxy is still above its value.

    With ``p = argmax(gold)`` (first if tied), returns the first ``k > p`` such that
    ``proxy[k] > proxy[p]`` and ``gold[k] < gold[p] - 2 * sqrt(gold_se[p]^2 + gold_se[k]^2)``
    (gold fell by more than two standard errors of the difference), or ``None`` if there is none.
    ``d[k]`` is the proxy-gold divergence point reported per run (docs/methods.md §6).

    Args:
        d: (M,) ``sqrt(KL)`` values, sorted ascending.
        proxy: (M,) mean proxy reward at each ``d``.
        gold: (M,) mean gold reward at each ``d``.
        gold_se: (M,) standard errors of ``gold``, >= 0.
    """
    _, g_a, s_a = _curve(d, gold, gold_se)
    p_a = _vector(proxy, "proxy")
    if p_a.size != g_a.size:
        raise ValueError(f"proxy must have the same length as gold, got {p_a.size} and {g_a.size}")
    p = int(np.argmax(g_a))
    for k in range(p + 1, g_a.size):
        if p_a[k] > p_a[p] and g_a[k] < g_a[p] - 2 * math.hypot(s_a[p], s_a[k]):
            return k
    return None
