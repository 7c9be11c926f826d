"""Labels from gold, AUROC, detector scores and reward-only baselines (monitor/benchmark.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from proxygap.monitor.benchmark import (
    auroc,
    choose_threshold,
    cusum_slope,
    gold_se,
    judge,
    label_points,
    length_drift,
    variance_collapse,
)
from proxygap.optimize.evaluate import _prompt_se


def _run(gold, se=0.1, step=10):
    return [
        {"step": float(i * step), "reward/gold": g, "reward/gold_se": se}
        for i, g in enumerate(gold)
    ]


def test_points_past_the_peak_by_more_than_one_se_are_positive():
    # peak 1.0 at index 2; margin sqrt(0.1^2 + 0.1^2) = 0.141: 0.9 is within it, 0.5 is not
    lab = label_points(_run([0.0, 0.5, 1.0, 0.9, 0.5, 0.2]))
    assert lab.peak == 2 and lab.drop == 4
    assert lab.labels.tolist() == [0, 0, 0, 0, 1, 1]
    # a run that only rises is benign; points before the peak are never positive
    assert label_points(_run([0.0, 0.2, -0.5, 0.6])).drop is None


def test_labels_use_the_prompt_clustered_se_where_measured():
    # per-sample SE 0.1 would flag 0.8 (margin 0.141 below the peak 1.0); the prompt-clustered
    # SE 0.2 (margin 0.283) does not, but still flags 0.5
    rows = _run([0.0, 1.0, 0.8, 0.5])
    assert label_points(rows).drop == 2
    for r in rows:
        r["reward/gold_se_prompt"] = 0.2
    assert label_points(rows).drop == 3
    assert gold_se({"reward/gold_se": 0.1}) == 0.1 and gold_se({}) == 0.0


def test_prompt_clustered_se_by_hand():
    # per-prompt means 2 and 6: SE = std([2, 6], ddof=1) / sqrt(2) = 2; ignoring prompts, the
    # per-sample SE would be std([1, 3, 5, 7], ddof=1) / 2 = 1.29
    x, prompt = np.array([1.0, 3.0, 5.0, 7.0]), np.array([4, 4, 9, 9])
    assert _prompt_se(x, prompt) == pytest.approx(2.0)
    assert _prompt_se(x, np.array([0, 1, 2, 3])) == pytest.approx(np.std(x, ddof=1) / 2)


def test_auroc_equals_the_pairwise_count_with_ties_as_half():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=30).astype(float)  # many ties
    y = rng.integers(0, 2, size=30)
    pairs = [
        1.0 if a > b else 0.5 if a == b else 0.0
        for (a, ya), (b, yb) in itertools.product(zip(s, y, strict=True), repeat=2)
        if ya == 1 and yb == 0
    ]
    assert auroc(s, y) == pytest.approx(np.mean(pairs))
    assert math.isnan(auroc(s, np.zeros(30)))


def test_judge_counts_alarms_before_the_drop_leads_and_false_alarms():
    over = _run([0.0, 0.5, 1.0, 0.9, 0.5, 0.2])  # drop at index 4 (step 40)
    benign = _run([0.0, 0.3, 0.6, 0.9])
    early = np.array([0.0, 0.2, 0.7, 0.8, 0.9, 0.9])  # alarm (>= 0.6) at index 2: lead 20 steps
    late = np.array([0.0, 0.0, 0.0, 0.0, 0.9, 0.9])  # alarm at the drop: not before it
    quiet = np.array([0.0, 0.1, 0.2, 0.3])
    noisy = np.array([0.0, 0.7, 0.2, 0.3])
    r = judge([(over, early), (over, late), (benign, quiet), (benign, noisy)], 0.6)
    assert r["alarm_before_drop"] == 0.5 and r["median_lead_steps"] == 20.0
    assert r["false_alarm_rate"] == 0.5
    assert r["n_overoptimizing"] == 2 and r["n_benign"] == 2
    # the checkpoint kept before the alarm: index 1 (gold 0.5) and index 3 (0.9, within one SE
    # of the peak 1.0: not fallen) -> losses 0.5 and 0.1; without a monitor both runs end at
    # 0.2, past the peak (loss 0.8); the quiet benign run loses nothing, the noisy one stops
    # at its start (0.9 given up)
    assert r["kept_fallen"] == 0.0 and r["kept_gold_loss"] == pytest.approx(0.3)
    assert r["end_fallen"] == 1.0 and r["end_gold_loss"] == pytest.approx(0.8)
    assert r["benign_gold_loss"] == pytest.approx(0.45)
    # neither benign run fell below its start: no dips to excuse the noisy run's alarm
    assert r["n_benign_dipped"] == 0 and r["false_alarms_dipped"] == 0
    # a benign run that collapses below its start (-0.5 < 0 - sqrt(0.1^2 + 0.1^2)) and recovers
    # to a new peak: benign (nothing falls below the final peak), but dipped; its alarm counts
    # as a false alarm and is told apart
    recovered = _run([0.0, 0.4, -0.5, 0.2, 0.8])
    r = judge([(recovered, np.array([0.0, 0.1, 0.9, 0.2, 0.1])), (benign, noisy)], 0.6)
    assert r["n_benign"] == 2 and r["false_alarm_rate"] == 1.0
    assert r["n_benign_dipped"] == 1 and r["false_alarms_dipped"] == 1
    # an alarm before the dip is not told apart; a dipped run without alarm counts as dipped
    r = judge([(recovered, np.array([0.0, 0.9, 0.1, 0.1, 0.1])), (recovered, np.zeros(5))], 0.6)
    assert r["n_benign_dipped"] == 2 and r["false_alarms_dipped"] == 0
    assert r["false_alarm_rate"] == 0.5
    # the margin: one SE of the difference, sqrt(0.1^2 + 0.1^2) = 0.1414 below the start
    assert judge([(_run([0.0, 0.4, -0.14, 0.8]), np.zeros(4))], 0.6)["n_benign_dipped"] == 0
    assert judge([(_run([0.0, 0.4, -0.15, 0.8]), np.zeros(4))], 0.6)["n_benign_dipped"] == 1
    # an overoptimizing run that dips is not a benign one
    assert judge([(_run([0.0, 0.5, -0.5, 0.9, 0.2]), np.zeros(5))], 0.6)["n_benign_dipped"] == 0
    # an alarm at the start keeps the start; a run that never alarms keeps its end
    r = judge([(over, np.full(6, 0.9)), (over, np.zeros(6))], 0.6)
    assert r["kept_fallen"] == 0.5 and r["kept_gold_loss"] == pytest.approx((1.0 + 0.8) / 2)


def test_choose_threshold_takes_the_lowest_within_the_false_alarm_budget():
    over = _run([0.0, 0.5, 1.0, 0.9, 0.5, 0.2])
    benign = [_run([0.0, 0.3, 0.6, 0.9])] * 10
    # benign run k peaks at 0.1 * k: a threshold t alarms the runs with 0.1 k >= t
    runs = [(over, np.array([0.0, 0.2, 0.7, 0.8, 0.9, 0.9]))] + [
        (b, np.array([0.0, 0.0, 0.0, 0.1 * k])) for k, b in enumerate(benign)
    ]
    # a 10% budget allows one false alarm of the 10: at t = 0.9 only run k = 9 alarms, at the
    # next lower observed score, 0.8, runs 8 and 9 do (20%)
    assert choose_threshold(runs, max_false_alarms=0.1) == pytest.approx(0.9)
    # a 30% budget allows runs 7, 8 and 9: t = 0.7; at 0.6 four would alarm
    assert choose_threshold(runs, max_false_alarms=0.3) == pytest.approx(0.7)


def test_without_benign_runs_the_threshold_is_the_highest_score():
    over = _run([0.0, 0.5, 1.0, 0.9, 0.5, 0.2])
    assert choose_threshold([(over, np.array([0.1, 0.2, 0.7, 0.8, 0.9, 0.95]))]) == 0.95


def test_an_alarm_at_the_start_is_not_a_warning():
    # at the first evaluation every feature is 0: an alarm there reads no signal
    over = _run([0.0, 0.5, 1.0, 0.9, 0.5, 0.2])  # drop at index 4
    r = judge([(over, np.array([0.9, 0.1, 0.1, 0.1, 0.1, 0.1]))], 0.5)
    assert r["alarm_before_drop"] == 0.0 and r["alarm_before_drop_warnable"] == 0.0


def test_reward_only_baselines_by_hand():
    rows = [
        {"reward/proxy": 0.0, "signal/proxy_std": 2.0, "length/mean": 10.0},
        {"reward/proxy": 1.0, "signal/proxy_std": 1.0, "length/mean": 20.0},
        {"reward/proxy": 1.2, "signal/proxy_std": 0.5, "length/mean": 5.0},
    ]
    np.testing.assert_allclose(variance_collapse(rows), [0.0, math.log(2), math.log(4)])
    np.testing.assert_allclose(length_drift(rows), [0.0, math.log(2), math.log(2)])
    # slopes in units of spread 2: first gain 0.5 (m), then 0.1: S = 0.5 - 0.1 - 0.05 = 0.35
    np.testing.assert_allclose(cusum_slope(rows, slack=0.05), [0.0, 0.0, 0.35])
