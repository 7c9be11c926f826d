"""The gold-peak forecaster (monitor/forecast.py) recovers known peaks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.monitor.forecast import forecast_peak, gao_rl_peak


def test_exact_quadratic_gives_its_peak_and_step():
    d = np.array([0.0, 0.5, 1.0, 1.5])
    g = d * (2.0 - 0.5 * d)  # peak at d = 2 (value 2)
    steps = (d / 0.1) ** 2  # d = 0.1 sqrt(step)
    f = forecast_peak(d, g, np.full(4, 0.01), steps=steps, n_boot=50)
    assert f.d == pytest.approx(2.0, rel=1e-6)
    assert f.lo <= 2.0 <= f.hi and f.hi - f.lo < 0.2
    assert f.step == pytest.approx(400.0, rel=1e-6)


def test_noisy_points_give_an_interval_that_covers_usually():
    rng = np.random.default_rng(0)
    d = np.linspace(0, 1.6, 9)
    hits = 0
    for seed in range(40):
        g = d * (2.0 - 0.5 * d) + rng.normal(0, 0.05, size=9)
        f = forecast_peak(d, g, np.full(9, 0.05), level=0.8, n_boot=100, seed=seed)
        hits += f.lo <= 2.0 <= f.hi
    assert hits >= 24  # 80% nominal; at least 60% of 40 (binomial tail ~0.2%)


def test_a_rising_line_has_no_peak_in_sight():
    d = np.array([0.0, 1.0, 2.0])
    assert math.isinf(forecast_peak(d, d, None).d)


def test_gao_rl_peak_recovers_the_rl_law_peak():
    d = np.linspace(0.2, 2.0, 10)
    g = d * (1.0 - 0.5 * np.log(d))  # d* = exp(alpha / beta - 1) = e
    assert gao_rl_peak(d, g) == pytest.approx(math.e, rel=1e-6)
