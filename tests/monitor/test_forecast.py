"""The gold-peak forecaster (monitor/forecast.py) recovers known peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.monitor.forecast import forecast_peak, gao_rl_peak, plateau_end


def test_exact_quadratic_gives_its_peak_and_step():
    d = np.array([0.0, 0.5, 1.0, 1.5])
    g = d * (2.0 - 0.5 * d)  # peak at d = 2 (value 2)
    steps = (d / 0.1) ** 2  # d = 0.1 sqrt(step)
    f = forecast_peak(d, g, np.full(4, 0.01), steps=steps, n_boot=50, method="quadratic")
    assert f.d == pytest.approx(2.0, rel=1e-6)
    assert f.lo <= 2.0 <= f.hi and f.hi - f.lo < 0.2
    assert f.step == pytest.approx(400.0, rel=1e-6)


def test_noisy_points_give_an_interval_that_covers_usually():
    rng = np.random.default_rng(0)
    d = np.linspace(0, 1.6, 9)
    hits = 0
    for seed in range(40):
        g = d * (2.0 - 0.5 * d) + rng.normal(0, 0.05, size=9)
        f = forecast_peak(
            d, g, np.full(9, 0.05), level=0.8, n_boot=100, seed=seed, method="quadratic"
        )
        hits += f.lo <= 2.0 <= f.hi
    assert hits >= 24  # 80% nominal; at least 60% of 40 (binomial tail ~0.2%)


def test_a_rising_line_has_no_peak_in_sight():
    d = np.array([0.0, 1.0, 2.0])
    assert math.isinf(forecast_peak(d, d, None, method="quadratic").d)


def test_gao_rl_peak_recovers_the_rl_law_peak():
    d = np.linspace(0.2, 2.0, 10)
    g = d * (1.0 - 0.5 * np.log(d))  # d* = exp(alpha / beta - 1) = e
    assert gao_rl_peak(d, g) == pytest.approx(math.e, rel=1e-6)


def test_argmax_without_noise_is_the_highest_point_and_its_step():
    d = np.array([0.0, 0.3, 0.6, 0.9, 1.2])
    g = np.array([0.0, 0.1, 0.4, 0.2, -1.0])
    f = forecast_peak(d, g, None, steps=(d / 0.3) ** 2)  # d = 0.3 sqrt(step)
    assert (f.d, f.lo, f.hi) == (0.6, 0.6, 0.6)
    assert f.step == pytest.approx(4.0, rel=1e-9)
    # tiny label noise: every bootstrap draw keeps the same argmax; the interval's upper end is
    # raised to the current d (the curve may not have turned)
    f = forecast_peak(d, g, np.full(5, 1e-4), n_boot=50)
    assert (f.d, f.lo, f.hi) == (0.6, 0.6, 1.2)


def test_argmax_bootstrap_matches_a_hand_count_of_draws():
    # two points tied within noise: each is the highest in about half of the draws, so the
    # median lies between their d and the 80% interval spans both
    d = np.array([0.0, 1.0, 2.0])
    g = np.array([0.0, 1.0, 1.0])
    se = np.array([0.0, 0.1, 0.1])
    f = forecast_peak(d, g, se, n_boot=400, seed=3)
    rng = np.random.default_rng(3)
    draws = g + rng.normal(0.0, 1.0, size=(400, 3)) * se
    share_second = float(np.mean(np.argmax(draws, axis=1) == 2))
    assert 0.4 < share_second < 0.6
    assert f.d == float(np.median(d[np.argmax(draws, axis=1)]))
    assert (f.lo, f.hi) == (1.0, 2.0)
    # the initial point (se 0, gold 0) is never redrawn above the others
    assert not np.any(np.argmax(draws, axis=1) == 0)


def test_plateau_is_the_midpoint_of_the_argmax_and_the_plateau_end():
    d = np.array([0.0, 0.3, 0.6, 0.9, 1.2])
    g = np.array([0.0, 0.1, 0.4, 0.35, -1.0])
    # without noise the plateau is the highest point alone
    assert plateau_end(d, g, None) == 0.6
    assert forecast_peak(d, g, None, method="plateau").d == 0.6
    # se 0.1: 0.35 lies within sqrt(0.1^2 + 0.1^2) = 0.141 of 0.4, -1.0 does not: the plateau
    # ends at d = 0.9, and the forecast is halfway between it and the argmax forecast
    se = np.array([0.0, 0.1, 0.1, 0.1, 0.1])
    assert plateau_end(d, g, se) == 0.9
    arg = forecast_peak(d, g, se, n_boot=100, seed=1)
    f = forecast_peak(d, g, se, n_boot=100, seed=1, method="plateau")
    assert f.d == pytest.approx((arg.d + 0.9) / 2)
    assert (f.lo, f.hi) == (min(arg.lo, f.d), 1.2)


def test_unknown_method_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        forecast_peak([0.0, 1.0], [0.0, 1.0], method="cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d and gold"):
        forecast_peak([0.0, 1.0], [0.0])
