"""The detection analysis fits on training runs only: validation and test runs cannot move the
detector or any threshold, and the two splits are scored apart
(proxygap/study/detect_analysis.py)."""

from __future__ import annotations

import numpy as np
import pytest

from proxygap.config.detect import DetectConfig
from proxygap.monitor.benchmark import BASELINES, choose_threshold, judge
from proxygap.monitor.forecast import forecast_peak
from proxygap.study.detect_analysis import analyse_corpus


def _run(rng: np.random.Generator, overoptimizes: bool) -> list[dict[str, float]]:
    rows = []
    for i in range(8):
        drift = i / 7
        gold = 0.5 * drift - (2.0 * max(drift - 0.5, 0) if overoptimizes else 0.0)
        rows.append(
            {
                "step": float(10 * i), "d": 2 * drift + 0.05 * rng.random(),
                "reward/gold": gold + 0.01 * rng.normal(), "reward/gold_se": 0.05,
                "reward/proxy": drift, "signal/proxy_std": 1.0, "length/mean": 10.0 + drift,
                "diversity/distinct2": 0.8, "signal/entropy": 2.0 - drift * overoptimizes,
                "signal/ensemble_std": 0.3,
                "signal/outlier_rate": 0.05 + 0.5 * drift * overoptimizes,
            }
        )  # fmt: skip
    return rows


def _corpus(seed: int, n_seeds: int = 4) -> dict[tuple[str, int], list[dict[str, float]]]:
    rng = np.random.default_rng(seed)
    return {(f, s): _run(rng, f == "hack") for f in ("hack", "calm") for s in range(n_seeds)}


CFG = DetectConfig.model_validate(
    {
        "monitor_proxy": "ens", "seeds": [0, 1, 2, 3], "test_seeds": [3],
        "test_families": ["calm"],
        "families": [{"name": "hack", "reward": "rm"}, {"name": "calm", "reward": "rm"}],
    }
)  # fmt: skip


def test_held_out_runs_do_not_move_the_detector_or_thresholds():
    base = _corpus(0)
    other = _corpus(1)
    changed = {k: (other[k] if k[1] == 3 else v) for k, v in base.items()}  # new seed-3 runs
    a, det_a = analyse_corpus(CFG, base)
    b, det_b = analyse_corpus(CFG, changed)
    assert det_a == det_b
    for name in a["detectors"]:
        assert a["detectors"][name]["threshold"] == b["detectors"][name]["threshold"], name


def test_the_corpus_counts_and_the_split_sizes():
    summary, detector = analyse_corpus(CFG, _corpus(0))
    assert summary["corpus"]["runs"] == 8 and summary["corpus"]["overoptimizing"] == 4
    ours = summary["detectors"]["proxygap"]
    assert ours["n_overoptimizing"] == 1 and ours["n_benign"] == 1  # seed 3 of each family
    assert detector is not None and detector.weights[FEATURE_OUTLIER] > 0
    # the conformal intervals are calibrated on the training seeds' overoptimizing runs
    assert summary["forecast"]["n_calibration_runs"] == 3  # 'hack' seeds 0-2


FEATURE_OUTLIER = 7  # "outlier_excess" in FEATURES


def test_the_forecast_before_the_peak_reads_only_the_points_before_it():
    corpus = _corpus(0)
    summary, _ = analyse_corpus(CFG, corpus)
    run = corpus[("hack", 3)]  # the one held-out run that overoptimizes
    gold = [r["reward/gold"] for r in run]
    peak = int(np.argmax(gold))
    assert peak >= 3  # three points at least before it
    d, g, se = ([r[k] for r in run[:peak]] for k in ("d", "reward/gold", "reward/gold_se"))
    expected = forecast_peak(d, g, se, level=CFG.forecast_level, method=CFG.forecast_method)
    true = run[peak]["d"]
    bp = summary["forecast"]["before_peak"]
    assert bp["n_runs"] == 1
    assert bp["peak_d_rel_error"] == abs(expected.d - true) / true
    assert bp["interval_coverage"] == float(expected.lo <= true <= expected.hi)
    # gold from the peak on can change freely (peak and drop kept) without moving this forecast
    changed = {k: [dict(r) for r in v] for k, v in corpus.items()}
    for r in changed[("hack", 3)][peak + 1 :]:
        r["reward/gold"] -= 1.0
    again, _ = analyse_corpus(CFG, changed)
    assert again["forecast"]["before_peak"] == bp


VAL = CFG.model_copy(update={"seeds": [0, 1, 2, 3, 4], "validation_seeds": [4]})


def test_validation_and_test_seeds_are_scored_apart_and_neither_is_fitted_on():
    base = _corpus(0, 5)
    other = _corpus(1, 5)
    summary, det = analyse_corpus(VAL, base)
    assert VAL.train_seeds == [0, 1, 2]
    assert summary["corpus"]["validation_seeds"] == [4] and summary["corpus"]["test_seeds"] == [3]
    val = summary["validation"]["detectors"]["proxygap"]
    assert val["n_overoptimizing"] == 1 and val["n_benign"] == 1  # seed 4 of each family
    assert summary["validation"]["forecast"]["n_runs"] == 1
    # new validation runs change the validation scores only; detector and test scores stay
    changed = {k: (other[k] if k[1] == 4 else v) for k, v in base.items()}
    again, det_again = analyse_corpus(VAL, changed)
    assert det_again == det and again["detectors"] == summary["detectors"]
    assert again["forecast"] == summary["forecast"]
    assert again["validation"]["forecast"] != summary["validation"]["forecast"]
    # the family split fits on the training seeds only and scores each split's held-out family
    fam = summary["detectors"]["proxygap"]["by_family"]
    assert fam["n_benign"] == 1 and fam["n_overoptimizing"] == 0  # calm, seed 3
    assert "by_family" in summary["validation"]["detectors"]["length_drift"]


def test_operating_points_trade_false_alarms_for_earlier_alarms_on_training_thresholds():
    corpus = _corpus(0)
    summary, _ = analyse_corpus(CFG, corpus)
    train = [k for k in corpus if k[1] in CFG.train_seeds]
    test = [k for k in corpus if k[1] in CFG.test_seeds]
    for name, scores in summary["detectors"].items():
        points = scores["operating_points"]
        assert [p["false_alarm_budget"] for p in points] == [0.1, 0.25, 0.5]
        headline = {k: v for k, v in points[0].items() if k != "false_alarm_budget"}
        assert headline == {k: v for k, v in scores.items() if k in headline}, name
        # a larger budget never raises the threshold
        assert points[0]["threshold"] >= points[1]["threshold"] >= points[2]["threshold"], name
    # recomputed by hand for one baseline: threshold on the training runs, judged on the test
    base = {k: BASELINES["length_drift"](corpus[k]) for k in corpus}
    t = choose_threshold([(corpus[k], base[k]) for k in train], max_false_alarms=0.25)
    expected = judge([(corpus[k], base[k]) for k in test], t)
    got = summary["detectors"]["length_drift"]["operating_points"][1]
    assert got == {"false_alarm_budget": 0.25, **expected}


def _gold_run(gold: list[float]) -> list[dict[str, float]]:
    return [{"step": 5.0 * i, "reward/gold": g, "reward/gold_se": 0.05} for i, g in enumerate(gold)]


def test_kept_saving_averages_runs_and_resamples_whole_families():
    from proxygap.monitor.benchmark import kept_index
    from proxygap.study.detect_analysis import kept_saving

    # the point before the first alarm, the start for an alarm there, the end without one
    assert kept_index(np.array([0.1, 0.2, 0.9, 0.1]), 0.5) == 1
    assert kept_index(np.array([0.9, 0.2]), 0.5) == 0
    assert kept_index(np.array([0.1, 0.2, 0.3]), 0.5) == 2
    over = _gold_run([0.0, 0.5, 1.0, 0.2])  # peak at 2, fallen at 3
    histories = {("a", 0): over, ("a", 1): over, ("b", 0): over, ("c", 0): _gold_run([0, 1, 2])}
    scores = {
        ("a", 0): np.array([0.0, 0.0, 0.0, 0.9]),  # kept point 2: saves 1.0 - 0.2 = 0.8
        ("a", 1): np.array([0.0, 0.0, 0.9, 0.9]),  # kept point 1: saves 0.5 - 0.2 = 0.3
        ("b", 0): np.zeros(4),  # never alarms: keeps the end, saves 0
        ("c", 0): np.array([0.0, 0.9, 0.9]),  # benign: not counted
    }
    out = kept_saving(histories, scores, list(histories), 0.5)
    assert out is not None and (out["n_runs"], out["n_families"]) == (3, 2)
    assert out["mean"] == pytest.approx((0.8 + 0.3 + 0.0) / 3)
    # a replicate draws families a and b with replacement, then runs within them: its mean lies
    # between 0 (b only) and 0.8 (a's best run only), and a family's runs move together
    assert 0.0 <= out["lo"] < out["mean"] < out["hi"] <= 0.8
    assert kept_saving(histories, scores, [("c", 0)], 0.5) is None
    # family a: nine runs saving 0.8 each; family b: one run saving 0. Resampling families draws
    # b twice in a quarter of the replicates (mean 0), so the interval starts at 0; resampling
    # runs alone would almost never draw b ten times
    many = {("a", s): over for s in range(9)} | {("b", 0): over}
    alarm = {k: np.array([0.0, 0.0, 0.0, 0.9]) for k in many}
    alarm[("b", 0)] = np.zeros(4)
    out = kept_saving(many, alarm, list(many), 0.5)
    assert out is not None and out["mean"] == pytest.approx(0.72)
    assert out["lo"] == 0.0 and out["hi"] == pytest.approx(0.8)
