"""The gold-peak forecaster (monitor/forecast.py) recovers known peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.monitor.forecast import (
    PeakForecast,
    conformal_radius,
    forecast_peak,
    gao_bon_peak,
    gao_rl_peak,
    plateau_end,
)


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


def test_gao_bon_peak_recovers_the_bon_law_peak_and_says_when_it_does_not_turn():
    d = np.linspace(0.0, 1.5, 8)
    assert gao_bon_peak(d, d * (2.0 - 0.5 * d)) == pytest.approx(2.0, rel=1e-9)  # a / (2 b)
    assert gao_bon_peak(d, d * (1.0 + 0.3 * d)) == math.inf  # convex: no turn
    assert gao_rl_peak(d[1:], d[1:] * (1.0 + 0.3 * np.log(d[1:]))) == math.inf


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


def test_conformal_radius_is_the_rank_ceil_n_plus_1_level_score():
    f = np.array([1.0, 2.0, 0.5, 4.0])
    scores = np.array([0.4, 0.1, 0.3, 0.2])  # |log(truth / forecast)| by construction
    truth = f * np.exp(scores * np.array([1, -1, 1, -1]))
    # n = 4, level 0.6: rank ceil(5 * 0.6) = 3, the third smallest score
    assert conformal_radius(f, truth, 0.6) == pytest.approx(0.3, rel=1e-12)
    # level 0.8 needs rank 4 = n: the largest; 0.85 needs rank 5 > n: no finite radius
    assert conformal_radius(f, truth, 0.8) == pytest.approx(0.4, rel=1e-12)
    assert math.isinf(conformal_radius(f, truth, 0.85))
    # a forecast that is not finite scores inf: it takes the top rank
    # (n = 5, level 0.6: rank ceil(3.6) = 4, the largest finite score)
    assert conformal_radius([*f, math.inf], [*truth, 1.0], 0.6) == pytest.approx(0.4, rel=1e-12)
    assert math.isinf(conformal_radius([*f, math.inf], [*truth, 1.0], 0.8))
    with pytest.raises(ValueError, match="level"):
        conformal_radius(f, truth, 1.0)


def test_conformal_interval_covers_exchangeable_runs_at_its_level():
    # forecasts off by a lognormal factor; calibrate on 200 runs, cover fresh ones
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.5, 2.0, size=4200)
    forecast = truth * np.exp(rng.normal(0.2, 0.5, size=4200))
    radius = conformal_radius(forecast[:200], truth[:200], 0.8)
    hits = []
    for f, t in zip(forecast[200:], truth[200:], strict=True):
        lo, hi = PeakForecast(float(f), 0.0, 0.0, None).conformal(radius)
        hits.append(lo <= t <= hi)
    # marginal coverage >= 0.8 in expectation over calibration sets; its SD here is ~0.028
    assert 0.74 <= np.mean(hits) <= 0.92
    # the bootstrap-free interval around a forecast with no turn in sight is unbounded
    assert PeakForecast(math.inf, 0.0, math.inf, None).conformal(radius) == (0.0, math.inf)
    assert PeakForecast(1.0, 1.0, 1.0, None).conformal(math.inf) == (0.0, math.inf)
