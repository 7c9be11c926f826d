"""Judging the monitor on the detection corpus: fit on training runs, report on held-out runs.

For each split (by seed: ``test_seeds`` held out; by family: ``test_families`` held out) the
proxygap detector's weights (:func:`proxygap.monitor.detector.fit_detector`, trained to flag the
points from the gold peak on in runs that overoptimize, so that it warns before the drop:
:attr:`~proxygap.monitor.benchmark.RunLabels.warning`) and every detector's alarm threshold
(:func:`proxygap.monitor.benchmark.choose_threshold`: the lowest with at most 10% false alarms)
are fitted on the training runs only, then :func:`proxygap.monitor.benchmark.judge` scores them
on the held-out runs. The reward-only baselines (:data:`proxygap.monitor.benchmark.BASELINES`)
are judged the same way.

The forecast (by-seed split, held-out runs that overoptimize): with gold known at the
evaluation points up to the proxygap detector's first alarm (or up to the point before the drop
when it did not alarm in time; at least three points), :func:`proxygap.monitor.forecast.
forecast_peak` predicts the peak's ``d`` and :func:`~proxygap.monitor.forecast.gao_rl_peak`
extrapolates Gao et al.'s RL law; both are compared with the run's observed gold-peak ``d``.
When the detector does not alarm before the peak, those points include the peak itself, so
``before_peak`` also scores the forecast made at the point just before the peak (at least three
points): the peak then lies ahead, unseen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from proxygap.config.detect import DetectConfig
from proxygap.monitor.benchmark import BASELINES, choose_threshold, judge, label_points
from proxygap.monitor.detector import Detector, fit_detector
from proxygap.monitor.forecast import forecast_peak, gao_rl_peak
from proxygap.monitor.signals import FEATURES, features

__all__ = ["analyse_corpus"]

RunKey = tuple[str, int]
Rows = list[dict[str, float]]


def _features(history: Rows) -> np.ndarray:
    return np.array([[features(r, history[0])[f] for f in FEATURES] for r in history])


def _fit(histories: Mapping[RunKey, Rows], train: Sequence[RunKey]) -> Detector | None:
    """The detector fitted on the training runs; None when they hold only one label (e.g. no
    training run overoptimizes: nothing to learn from)."""
    x = np.concatenate([_features(histories[k]) for k in train])
    y = np.concatenate([label_points(histories[k]).warning for k in train])
    if len(set(y.tolist())) < 2:
        return None
    return fit_detector(x, y)


def _scores(detector: Detector, history: Rows) -> np.ndarray:
    return detector.probability(_features(history))


def _split(
    histories: Mapping[RunKey, Rows], train: Sequence[RunKey], test: Sequence[RunKey]
) -> tuple[dict[str, dict[str, Any]], Detector | None]:
    """Every detector fitted on ``train`` and judged on ``test`` (the proxygap detector marked
    unfitted, and None returned for it, when the training runs hold a single label)."""
    out: dict[str, dict[str, Any]] = {}
    detector = _fit(histories, train)
    if detector is None:
        out["proxygap"] = {"fitted": False}
    else:
        scored = {k: _scores(detector, histories[k]) for k in histories}
        threshold = choose_threshold([(histories[k], scored[k]) for k in train])
        detector = detector.with_threshold(float(np.clip(threshold, 1e-6, 1 - 1e-6)))
        out["proxygap"] = judge([(histories[k], scored[k]) for k in test], detector.threshold)
    for name, baseline in BASELINES.items():
        base = {k: baseline(histories[k]) for k in histories}
        t = choose_threshold([(histories[k], base[k]) for k in train])
        out[name] = judge([(histories[k], base[k]) for k in test], t)
    return out, detector


def _forecast(
    histories: Mapping[RunKey, Rows],
    test: Sequence[RunKey],
    detector: Detector | None,
    level: float,
) -> dict[str, Any]:
    errors, gao_errors, covered, rows = [], [], [], []
    before: list[float] = []
    before_gao: list[float] = []
    before_cov: list[bool] = []
    for key in test:
        h = histories[key]
        lab = label_points(h)
        if lab.drop is None:
            continue
        if lab.drop < 3:  # fewer than three points before the drop: nothing to fit
            continue
        alarms = (
            np.flatnonzero(_scores(detector, h) >= detector.threshold)
            if detector is not None
            else np.zeros(0, dtype=np.int64)
        )
        cut = int(alarms[0]) if len(alarms) and 2 <= alarms[0] < lab.drop else lab.drop - 1
        seen = h[: cut + 1]
        d = [r["d"] for r in seen]
        g = [r["reward/gold"] for r in seen]
        se = [r["reward/gold_se"] for r in seen]
        f = forecast_peak(d, g, se, steps=[r["step"] for r in seen], level=level)
        true = float(h[lab.peak]["d"])
        gao = gao_rl_peak(d, g, se)
        if not true > 0:
            continue
        err, gao_err = abs(f.d - true) / true, abs(gao - true) / true
        errors.append(err)
        gao_errors.append(gao_err)
        covered.append(f.lo <= true <= f.hi)
        rows.append(
            {"family": key[0], "seed": key[1], "at_step": seen[-1]["step"], "true_d": true,
             "forecast_d": _finite(f.d), "lo": _finite(f.lo), "hi": _finite(f.hi),
             "gao_rl_d": _finite(gao)}
        )  # fmt: skip
        if lab.peak >= 3:  # the forecast one point before the peak
            ahead = h[: lab.peak]
            d, g, se = ([r[k] for r in ahead] for k in ("d", "reward/gold", "reward/gold_se"))
            early = forecast_peak(d, g, se, level=level)
            before.append(abs(early.d - true) / true)
            before_gao.append(abs(gao_rl_peak(d, g, se) - true) / true)
            before_cov.append(early.lo <= true <= early.hi)
    return {  # relative errors: |forecast - observed| / observed; a law that does not turn is inf
        "n_runs": len(errors),
        "peak_d_rel_error": _finite(float(np.median(errors))) if errors else None,
        "gao_extrapolation_rel_error": _finite(float(np.median(gao_errors)))
        if gao_errors
        else None,
        "share_gao_no_turn": float(np.mean(np.isinf(gao_errors))) if gao_errors else None,
        "interval_coverage": float(np.mean(covered)) if covered else None,
        "level": level,
        "before_peak": {
            "n_runs": len(before),
            "peak_d_rel_error": _median(before),
            "gao_extrapolation_rel_error": _median(before_gao),
            "interval_coverage": float(np.mean(before_cov)) if before_cov else None,
        },
        "runs": rows,
    }


def _median(x: list[float]) -> float | None:
    return _finite(float(np.median(x))) if x else None


def _finite(x: float) -> float | None:
    """``x``, or None for inf and NaN (JSON has neither)."""
    return x if math.isfinite(x) else None


def analyse_corpus(
    cfg: DetectConfig, histories: Mapping[RunKey, Rows]
) -> tuple[dict[str, Any], Detector | None]:
    """The summary (``detectors``, ``forecast``, ``corpus``, ``detector``) and the by-seed
    detector (None when its training runs hold a single label)."""
    keys = list(histories)
    by_seed_test = [k for k in keys if k[1] in cfg.test_seeds]
    by_seed_train = [k for k in keys if k[1] not in cfg.test_seeds]
    detectors, detector = _split(histories, by_seed_train, by_seed_test)
    if cfg.test_families:
        fam_test = [k for k in keys if k[0] in cfg.test_families]
        fam_train = [k for k in keys if k[0] not in cfg.test_families]
        by_family, _ = _split(histories, fam_train, fam_test)
        for name, scores in by_family.items():
            detectors[name]["by_family"] = scores
    families: dict[str, dict[str, int]] = {}
    for (family, _), h in histories.items():
        entry = families.setdefault(family, {"runs": 0, "overoptimizing": 0})
        entry["runs"] += 1
        entry["overoptimizing"] += label_points(h).drop is not None
    summary = {
        "detectors": detectors,
        "forecast": _forecast(histories, by_seed_test, detector, cfg.forecast_level),
        "corpus": {
            "runs": len(keys),
            "overoptimizing": sum(v["overoptimizing"] for v in families.values()),
            "families": families,
            "test_seeds": cfg.test_seeds,
            "test_families": cfg.test_families,
        },
        "detector": None
        if detector is None
        else {
            "features": list(detector.features),
            "weights": list(detector.weights),
            "bias": detector.bias,
            "threshold": detector.threshold,
        },
    }
    return summary, detector
