"""Tests for proxygap.analysis.rl_analysis on synthetic histories with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.analysis.rl_analysis import analyse_rl

ALPHA, BETA = 1.0, 0.5  # R(d) = d (1 - 0.5 log d): peak at d* = exp(1/0.5 - 1) = e, R* = e / 2


def law(d: np.ndarray) -> np.ndarray:
    return np.where(d > 0, d * (ALPHA - BETA * np.log(np.where(d > 0, d, 1.0))), 0.0)


def history(d: np.ndarray, gold: np.ndarray, *, se: float = 0.01) -> list[dict[str, float]]:
    proxy = 2.0 * d  # the proxy keeps rising
    return [
        {
            "step": 10.0 * i,
            "d": float(x),
            "kl/k1": float(x * x),
            "reward/gold": float(g),
            "reward/gold_se": 0.0 if i == 0 else se,
            "reward/proxy": float(p),
        }
        for i, (x, g, p) in enumerate(zip(d, gold, proxy, strict=True))
    ]


def test_recovers_the_law_and_the_peak():
    d = np.linspace(0.0, 6.0, 13)  # 0, 0.5, ..., 6.0
    out = analyse_rl(history(d, law(d)))
    assert out.fit is not None
    assert out.fit.alpha == pytest.approx(ALPHA, abs=1e-9)
    assert out.fit.beta == pytest.approx(BETA, abs=1e-9)
    assert out.fit.d_peak == pytest.approx(math.e, rel=1e-9)
    assert out.fit.r_peak == pytest.approx(math.e / 2, rel=1e-9)
    assert out.fit.n_points == 12  # d = 0 is dropped (log d)
    # on the grid the best point is d = 2.5 (R = 1.355) next to e = 2.718 (R = 1.359)
    assert out.peak_d == 2.5 and out.peak_step == 50
    assert out.peak_kl == 6.25
    assert out.turn.turns_down  # R(6) = 6 (1 - 0.5 log 6) = 0.62, far below 1.355
    # first point past the peak that is 2 * sqrt(2) * 0.01 below it: d = 3.5 (R = 1.307)
    assert out.divergence_step == 70 and out.divergence_d == 3.5


def test_points_are_ordered_by_d_and_a_rising_curve_has_no_divergence():
    d = np.array([0.0, 0.3, 0.2, 0.6, 0.9])  # one evaluation with a noisy, lower KL estimate
    gold = np.array([0.0, 0.25, 0.2, 0.5, 0.7])
    out = analyse_rl(history(d, gold))
    assert out.peak_step == 40 and out.peak_d == 0.9
    assert not out.turn.turns_down
    assert out.divergence_step is None and out.divergence_d is None


def test_too_few_points_give_no_fit_and_json_friendly_output():
    out = analyse_rl(history(np.array([0.0, 0.5]), np.array([0.0, 0.2])))
    assert out.fit is None
    summary = out.as_dict()
    assert summary["fit"] is None and summary["turn"]["turns_down"] is False


def test_missing_metric_is_named():
    rows = history(np.array([0.0, 0.5]), np.array([0.0, 0.2]))
    del rows[1]["reward/proxy"]
    with pytest.raises(ValueError, match="reward/proxy"):
        analyse_rl(rows)


def test_max_d_restricts_the_fit_only():
    d = np.linspace(0.0, 6.0, 13)
    gold = law(d)
    gold[-2:] = -5.0  # a collapse the law does not describe
    full = analyse_rl(history(d, gold))
    early = analyse_rl(history(d, gold), max_d=5.0)
    assert early.fit is not None and early.fit.n_points == 10
    assert early.fit.alpha == pytest.approx(ALPHA, abs=1e-9)
    assert full.fit is not None and abs(full.fit.alpha - ALPHA) > 0.1
    assert early.peak_step == full.peak_step == 50
