"""Trends against model size: slopes by hand, intervals over seeds and over prompt resamples,
and the verdict on an expected direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from proxygap.analysis.scaling import direction, slopes, trend


def test_slopes_by_hand() -> None:
    # x = 0, 1, 2 (mean 1, sum of squares 2); y = 1, 3, 5 -> slope (-1*-2 + 1*2) / 2 = 2
    x = np.array([0.0, 1.0, 2.0])
    out = slopes(x, np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 2.0], [0.0, math.inf, 1.0]]))
    assert out[0] == pytest.approx(2.0) and out[1] == 0.0 and math.isnan(out[2])
    with pytest.raises(ValueError, match="two distinct"):
        slopes(np.array([1.0, 1.0]), np.array([[1.0, 2.0]]))


def test_trend_over_seeds_is_a_t_interval_of_the_slopes() -> None:
    x = np.log10([1e4, 1e5, 1e6])  # 4, 5, 6
    # seeds' slopes: 0.10, 0.20, 0.30 -> mean 0.2, sd 0.1, half = t_{0.975, 2} * 0.1 / sqrt(3)
    values = np.array([[0.0, 0.1, 0.2], [0.0, 0.2, 0.4], [1.0, 1.3, 1.6]])
    tr = trend(x, values)
    half = student_t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert tr.slope == pytest.approx(0.2)
    assert (tr.lo, tr.hi) == pytest.approx((0.2 - half, 0.2 + half))
    assert tr.per_seed == pytest.approx((0.1, 0.2, 0.3))
    assert math.isnan(tr.boot_lo)


def test_trend_over_prompt_replicates() -> None:
    # replicates: the seeds' mean slope is 0.2 + noise of sd 0.05 -> interval ~ 0.2 ± 0.098
    rng = np.random.default_rng(0)
    x = np.array([0.0, 1.0, 2.0])
    noise = rng.normal(0.0, 0.05, size=(4000, 1, 1)) * (x - 1)  # a pure slope perturbation
    reps = np.array([[0.0, 0.2, 0.4]] * 2)[None] + noise
    tr = trend(x, np.array([[0.0, 0.2, 0.4]] * 2), replicates=reps)
    assert tr.boot_lo == pytest.approx(0.2 - 1.96 * 0.05, abs=0.01)
    assert tr.boot_hi == pytest.approx(0.2 + 1.96 * 0.05, abs=0.01)


@pytest.mark.parametrize(
    ("lo", "hi", "expected", "verdict"),
    [
        (0.1, 0.3, 1, "held"),
        (-0.3, -0.1, 1, "not held"),
        (-0.1, 0.3, 1, "inconclusive"),
        (-0.3, -0.1, -1, "held"),
        (math.nan, math.nan, 1, "inconclusive"),
    ],
)
def test_direction(lo: float, hi: float, expected: int, verdict: str) -> None:
    assert direction(lo, hi, expected) == verdict
