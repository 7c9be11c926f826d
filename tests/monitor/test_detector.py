"""The logistic detector and the Monitor watcher (monitor/detector.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.monitor.detector import Detector, Monitor, default_detector, fit_detector
from proxygap.monitor.signals import FEATURES
from proxygap.optimize.loop import LoopResult, Schedule, Watchers, run_loop


def test_fit_recovers_known_logistic_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2)) * [1.0, 2.0] + [0.0, 1.0]
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    true_w, true_b = np.array([1.5, -0.8]), 0.3
    y = (rng.random(20000) < 1 / (1 + np.exp(-(true_b + z @ true_w)))).astype(float)
    det = fit_detector(x, y, names=("a", "b"), l2=1e-6)
    np.testing.assert_allclose(det.weights, true_w, atol=0.06)
    assert det.bias == pytest.approx(true_b, abs=0.05)
    # the probability is the fitted model's: sigmoid(b + w . (x - mean) / scale)
    p = det.probability(x[:3])
    manual = 1 / (1 + np.exp(-(det.bias + ((x[:3] - det.mean) / det.scale) @ det.weights)))
    np.testing.assert_allclose(p, manual, rtol=1e-12)


def test_fit_refuses_one_class_and_bad_shapes():
    with pytest.raises(ValueError, match="both labels"):
        fit_detector(np.zeros((4, 1)), np.zeros(4), names=("a",))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        fit_detector(np.zeros((4, 3)), np.array([0, 1, 0, 1]), names=("a", "b"))


def test_save_and_load_round_trip(tmp_path):
    det = Detector(("a", "b"), (0.0, 1.0), (1.0, 2.0), (0.5, -0.5), 0.1, 0.3)
    det.save(tmp_path / "d.json")
    assert Detector.load(tmp_path / "d.json") == det
    assert default_detector().features == FEATURES


def _d_only() -> Detector:
    """A detector that reads only d: ``p = sigmoid(-2 + d)``."""
    n = len(FEATURES)
    return Detector(FEATURES, (0.0,) * n, (1.0,) * n, (1.0,) + (0.0,) * (n - 1), -2.0, 0.5)


def _rows():
    base = {"reward/proxy": 0.0, "signal/proxy_std": 1.0, "length/mean": 10.0}
    return [base | {"step": float(10 * i), "d": float(i)} for i in range(5)]


def test_monitor_scores_rows_against_the_first_and_keeps_the_first_alarm():
    # only d counts: p = sigmoid(-2 + d), alarm at p >= 0.5, i.e. from d = 2 (step 20)
    det = _d_only()
    mon = Monitor(det)
    out = [mon.update(r) for r in _rows()]
    assert [o["monitor/alarm"] for o in out] == [0, 0, 1, 1, 1]
    assert out[1]["monitor/score"] == pytest.approx(1 / (1 + np.exp(1.0)))
    assert [o["monitor/first_alarm_step"] for o in out] == [-1, -1, 20, 20, 20]
    assert out[3]["monitor/d"] == 3.0


def test_stop_on_alarm_ends_the_loop_at_the_alarm():
    det = _d_only()
    rows = iter(_rows())

    def evaluate(step):
        r = next(rows)
        return {k: v for k, v in r.items() if k != "step"} | {
            "reward/gold": 0.0, "reward/gold_se": 0.0, "kl/k1": r["d"] ** 2,
        }, []  # fmt: skip

    result = run_loop(
        schedule=Schedule.every(10, total=40, samples_per_step=1),
        train_step=lambda step: {"train/x": 1.0},
        evaluate=evaluate,
        result=LoopResult(),
        log=lambda _: None,
        watch=Watchers(on_evaluate=[Monitor(det, stop_on_alarm=True)]),
    )
    assert result.stopped_at == 20
    assert [h["step"] for h in result.history] == [0, 10, 20]
    assert result.history[-1]["monitor/alarm"] == 1.0 and len(result.steps) == 20


def test_a_signal_first_measured_later_takes_its_first_value_as_baseline():
    # a TRL run's unlikely-sample share appears once the probe has calibrated (third row)
    rows = _rows()
    rows[2] = rows[2] | {"signal/unlikely_rate": 0.02}
    rows[3] = rows[3] | {"signal/unlikely_rate": 0.30}
    mon = Monitor(_d_only())
    out = [mon.update(r) for r in rows[:4]]
    assert [o["monitor/unlikely_excess"] for o in out] == pytest.approx([0.0, 0.0, 0.0, 0.28])
    assert out[0]["monitor/missing_signals"] == out[2]["monitor/missing_signals"] + 1


def test_a_nan_signal_counts_as_missing_not_as_a_silent_nan_score():
    mon = Monitor(_d_only())
    rows = _rows()
    mon.update(rows[0])
    out = mon.update(rows[3] | {"d": math.nan})  # d missing: no drift, p = sigmoid(-2)
    assert out["monitor/score"] == pytest.approx(1 / (1 + np.exp(2.0)))
    assert out["monitor/missing_signals"] == mon.update(rows[3])["monitor/missing_signals"] + 1
    assert mon.update(rows[3])["monitor/alarm"] == 1.0  # the same row with d alarms
