"""The gold-vs-``d`` hump of a KL-budget sweep: where it peaks, with an interval, and how it ends.

Rafailov et al. 2024 sweep ``beta`` of a direct alignment loss to sweep the KL budget; gold
against ``d = sqrt(KL)`` over the final checkpoints is hump-shaped, and smaller policies
overoptimize earlier (docs/methods.md §5). Three pure functions measure that:

- :func:`locate_peak` places the peak of a curve sampled at a few ``d``: the observed maximum,
  refined by the parabola through it and its two neighbours, with a percentile interval from a
  parametric bootstrap of the points' standard errors; it also tests the rise before the peak and
  the fall after it (each against 2 standard errors).
- :func:`collapse_share` is the share of sampled responses that never end (they fill the token
  budget without an end-of-sequence token): the collapse mode of a DAA policy pushed too far.
- :func:`split_decline` separates the two ways gold falls past the peak: a gradual decline among
  checkpoints whose responses still end, and the collapse past the first ``d`` where most do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Decline", "Peak", "collapse_share", "locate_peak", "split_decline"]


def _vectors(d: ArrayLike, gold: ArrayLike, gold_se: ArrayLike) -> tuple[np.ndarray, ...]:
    d_a, g_a, s_a = (np.asarray(x, dtype=np.float64) for x in (d, gold, gold_se))
    if d_a.ndim != 1 or d_a.shape != g_a.shape or d_a.shape != s_a.shape:
        raise ValueError(
            f"d, gold and gold_se must be 1-D of one length, got {d_a.shape}, {g_a.shape}, "
            f"{s_a.shape}"
        )
    if d_a.size == 0:
        raise ValueError("an empty curve has no peak")
    if not (np.isfinite(d_a).all() and np.isfinite(g_a).all() and np.isfinite(s_a).all()):
        raise ValueError("d, gold and gold_se must be finite")
    if (s_a < 0).any():
        raise ValueError("gold_se must be >= 0")
    if (np.diff(d_a) < 0).any():
        raise ValueError("d must be sorted ascending")
    return d_a, g_a, s_a


def _vertex(x: np.ndarray, y: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, the abscissa of the parabola's vertex through points ``k-1, k, k+1`` of that row
    (``x`` and ``y`` of shape (B, M), ``k`` (B,)); ``x[k]`` where ``k`` is an end or the three
    points are not concave. The vertex is kept within half the distance from ``x[k]`` to its
    nearer neighbour: next to a far neighbour (a cliff after the peak) the parabola says nothing
    about where between the points the peak lies."""
    rows = np.arange(x.shape[0])
    out = x[rows, k].copy()
    inner = (k > 0) & (k < x.shape[1] - 1)
    r, kk = rows[inner], k[inner]
    x0, x1, x2 = x[r, kk - 1], x[r, kk], x[r, kk + 1]
    y0, y1, y2 = y[r, kk - 1], y[r, kk], y[r, kk + 1]
    # Lagrange form: y = a x^2 + b x + c; vertex at -b / (2a)
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
        v = -b / (2 * a)
    ok = (den != 0) & (a < 0) & np.isfinite(v)
    half = np.minimum(np.abs(x1 - x0), np.abs(x2 - x1)) / 2
    out[r[ok]] = np.clip(v[ok], x1[ok] - half[ok], x1[ok] + half[ok])
    return out


@dataclass(frozen=True)
class Peak:
    """Where a gold-vs-``d`` curve peaks.

    ``index`` is the observed maximum's position; ``d_peak`` the refined peak (parabola through
    it and its neighbours; the observed ``d`` at an end of the curve); ``d_lo``, ``d_hi`` the
    bootstrap interval of ``d_peak``. ``rise`` (``gold[index] - gold[0]``) and ``fall``
    (``gold[index] - gold[-1]``) come with their standard errors.
    """

    index: int
    d_peak: float
    d_lo: float
    d_hi: float
    gold_peak: float
    rise: float
    rise_se: float
    fall: float
    fall_se: float

    @property
    def rises(self) -> bool:
        """Gold at the peak is more than 2 SE above the curve's first point."""
        return self.rise > 2 * self.rise_se and self.rise > 0

    @property
    def falls(self) -> bool:
        """Gold at the peak is more than 2 SE above the curve's last point."""
        return self.fall > 2 * self.fall_se and self.fall > 0

    @property
    def hump(self) -> bool:
        """Rises, then falls: the peak lies inside the sweep."""
        return self.rises and self.falls


def locate_peak(
    d: ArrayLike,
    gold: ArrayLike,
    gold_se: ArrayLike,
    *,
    d_se: ArrayLike | None = None,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> Peak:
    """The peak of gold against ``d`` with a ``level`` percentile interval.

    The estimate is the vertex of the parabola through the highest point and its two neighbours,
    moved at most half the distance to the nearer neighbour (the highest point's ``d`` when it is
    the first or last). The interval comes from ``n_boot``
    parametric bootstrap curves, ``gold + gold_se * z`` (and ``d + d_se * z'`` when ``d_se`` is
    given), each located the same way: it covers the evaluation noise the standard errors
    describe; training noise shows only as the scatter of points from several seeds. The peak is
    chosen after seeing the data, so ``rises``/``falls`` are screening rules, as in
    :func:`proxygap.analysis.laws.overoptimization`.

    Args:
        d: (M,) ``sqrt(KL)`` of each point, ascending.
        gold: (M,) mean gold reward.
        gold_se: (M,) standard errors of ``gold``, >= 0.
        d_se: (M,) standard errors of ``d`` (default 0).
    """
    d_a, g_a, s_a = _vectors(d, gold, gold_se)
    ds = np.zeros_like(d_a) if d_se is None else np.asarray(d_se, dtype=np.float64)
    if ds.shape != d_a.shape or (ds < 0).any() or not np.isfinite(ds).all():
        raise ValueError("d_se must be finite, >= 0 and of the length of d")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    k = int(np.argmax(g_a))
    d_peak = float(_vertex(d_a[None], g_a[None], np.array([k]))[0])
    rng = np.random.default_rng(seed)
    g_b = g_a + s_a * rng.standard_normal((n_boot, g_a.size))
    d_b = d_a + ds * rng.standard_normal((n_boot, d_a.size))
    peaks = _vertex(d_b, g_b, np.argmax(g_b, axis=1))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(peaks, [tail, 100 - tail])
    last = g_a.size - 1
    return Peak(
        index=k,
        d_peak=d_peak,
        d_lo=float(lo),
        d_hi=float(hi),
        gold_peak=float(g_a[k]),
        rise=float(g_a[k] - g_a[0]),
        rise_se=float(math.hypot(s_a[k], s_a[0])) if k > 0 else 0.0,
        fall=float(g_a[k] - g_a[last]),
        fall_se=float(math.hypot(s_a[k], s_a[last])) if k < last else 0.0,
    )


def collapse_share(
    response_ids: ArrayLike, mask: ArrayLike, *, eos_id: int, max_new_tokens: int
) -> float:
    """Share of responses that fill the budget of ``max_new_tokens`` tokens without ending.

    A response has ``mask.sum()`` tokens (its closing end-of-sequence token included); it has
    collapsed when that is ``max_new_tokens`` and its last token is not ``eos_id``. A response
    that ends with ``eos_id`` exactly at the budget has ended.

    Args:
        response_ids: (B, T) token ids, right-padded; ``T <= max_new_tokens``.
        mask: (B, T) 1 on response tokens, 0 on padding.
    """
    ids, m = np.asarray(response_ids), np.asarray(mask)
    if ids.ndim != 2 or ids.shape != m.shape:
        raise ValueError(f"response_ids and mask must be (B, T) alike, got {ids.shape}, {m.shape}")
    if ids.shape[0] == 0:
        raise ValueError("no responses")
    if ids.shape[1] > max_new_tokens:
        raise ValueError(f"responses of {ids.shape[1]} tokens exceed max_new_tokens")
    lengths = (m > 0).sum(axis=1)
    last = ids[np.arange(ids.shape[0]), np.maximum(lengths - 1, 0)]
    collapsed = (lengths >= max_new_tokens) & (last != eos_id)
    return float(collapsed.mean())


@dataclass(frozen=True)
class Decline:
    """How gold falls past a curve's peak (:func:`split_decline`).

    ``onset`` is the index of the first point past the peak whose collapse share reaches the
    threshold (None: no such point); ``gradual`` (and ``gradual_se``) is the drop from the peak to
    the last point before the onset (or to the curve's end): the decline of policies whose
    responses still end; ``collapsed`` counts the points at or past the onset.
    """

    onset: int | None
    onset_d: float | None
    gradual: float
    gradual_se: float
    collapsed: int

    @property
    def gradual_significant(self) -> bool:
        return self.gradual > 2 * self.gradual_se


def split_decline(
    d: ArrayLike,
    gold: ArrayLike,
    gold_se: ArrayLike,
    collapse: ArrayLike,
    *,
    threshold: float = 0.5,
) -> Decline:
    """Split the fall past the observed peak into gradual decline and collapse.

    Args:
        d, gold, gold_se: (M,) the curve, ``d`` ascending.
        collapse: (M,) :func:`collapse_share` at each point.
        threshold: the collapse share from which a point counts as collapsed.
    """
    d_a, g_a, s_a = _vectors(d, gold, gold_se)
    c_a = np.asarray(collapse, dtype=np.float64)
    if c_a.shape != d_a.shape:
        raise ValueError(f"collapse must have the length of d, got {c_a.shape}")
    k = int(np.argmax(g_a))
    past = [i for i in range(k + 1, d_a.size) if c_a[i] >= threshold]
    onset = past[0] if past else None
    end = (onset - 1) if onset is not None else d_a.size - 1
    end = max(end, k)
    return Decline(
        onset=onset,
        onset_d=float(d_a[onset]) if onset is not None else None,
        gradual=float(g_a[k] - g_a[end]),
        gradual_se=float(math.hypot(s_a[k], s_a[end])) if end > k else 0.0,
        collapsed=d_a.size - onset if onset is not None else 0,
    )
