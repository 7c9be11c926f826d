"""Judging the monitor on the detection corpus: fit on training runs, report on held-out runs.

Splits: by seed, detectors are fitted on the training seeds and scored on the validation seeds
(for choosing settings, as often as needed) and on the test seeds (the headline, scored once);
by family, ``test_families`` are held out besides. The proxygap detector's weights
(:func:`proxygap.monitor.detector.fit_detector`, trained to flag the points from the gold peak
on in runs that overoptimize, so that it warns before the drop:
:attr:`~proxygap.monitor.benchmark.RunLabels.warning`) and every detector's alarm threshold
(:func:`proxygap.monitor.benchmark.choose_threshold`: the lowest with at most 10% false alarms)
are fitted on the training runs only; :func:`proxygap.monitor.benchmark.judge` scores them. The
reward-only baselines (:data:`proxygap.monitor.benchmark.BASELINES`) are judged the same way.

The forecast (by-seed split, validation and test runs that overoptimize): with gold known at the
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
from proxygap.monitor.benchmark import BASELINES, choose_threshold, gold_se, judge, label_points
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
    histories: Mapping[RunKey, Rows],
    train: Sequence[RunKey],
    scored_on: Mapping[str, Sequence[RunKey]],
) -> tuple[dict[str, dict[str, dict[str, Any]]], Detector | None]:
    """Every detector fitted on ``train`` and judged on each set of ``scored_on`` (name ->
    runs): ``{set: {detector: scores}}``; the proxygap detector is marked unfitted, and None
    returned for it, when the training runs hold a single label."""
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in scored_on}
    detector = _fit(histories, train)
    if detector is None:
        for name in scored_on:
            out[name]["proxygap"] = {"fitted": False}
    else:
        scored = {k: _scores(detector, histories[k]) for k in histories}
        threshold = choose_threshold([(histories[k], scored[k]) for k in train])
        detector = detector.with_threshold(float(np.clip(threshold, 1e-6, 1 - 1e-6)))
        for name, runs in scored_on.items():
            out[name]["proxygap"] = judge(
                [(histories[k], scored[k]) for k in runs], detector.threshold
            )
    for base_name, baseline in BASELINES.items():
        base = {k: baseline(histories[k]) for k in histories}
        t = choose_threshold([(histories[k], base[k]) for k in train])
        for name, runs in scored_on.items():
            out[name][base_name] = judge([(histories[k], base[k]) for k in runs], t)
    return out, detector


def _forecast(
    histories: Mapping[RunKey, Rows],
    test: Sequence[RunKey],
    detector: Detector | None,
    cfg: DetectConfig,
) -> dict[str, Any]:
    level, method = cfg.forecast_level, cfg.forecast_method
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
        se = [gold_se(r) for r in seen]
        f = forecast_peak(d, g, se, steps=[r["step"] for r in seen], level=level, method=method)
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
            d, g = [r["d"] for r in ahead], [r["reward/gold"] for r in ahead]
            se = [gold_se(r) for r in ahead]
            early = forecast_peak(d, g, se, level=level, method=method)
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
        "method": method,
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
    """The summary and the by-seed detector (None when its training runs hold a single label).

    ``detectors`` and ``forecast`` score the test seeds (the headline); ``validation`` holds the
    same for the validation seeds (None without them); every detector's ``by_family`` scores
    the held-out families on the same seeds, fitted on the training seeds of the others.
    """
    keys = list(histories)
    train = [k for k in keys if k[1] in cfg.train_seeds]
    sets = {"test": [k for k in keys if k[1] in cfg.test_seeds]}
    if cfg.validation_seeds:
        sets["validation"] = [k for k in keys if k[1] in cfg.validation_seeds]
    results, detector = _split(histories, train, sets)
    if cfg.test_families:
        held = set(cfg.test_families)
        fam_train = [k for k in train if k[0] not in held]
        fam_sets = {name: [k for k in runs if k[0] in held] for name, runs in sets.items()}
        by_family, _ = _split(histories, fam_train, fam_sets)
        for name, per_detector in by_family.items():
            for det, scores in per_detector.items():
                results[name][det]["by_family"] = scores
    families: dict[str, dict[str, int]] = {}
    for (family, _), h in histories.items():
        entry = families.setdefault(family, {"runs": 0, "overoptimizing": 0})
        entry["runs"] += 1
        entry["overoptimizing"] += label_points(h).drop is not None
    validation = None
    if "validation" in sets:
        validation = {
            "detectors": results["validation"],
            "forecast": _forecast(histories, sets["validation"], detector, cfg),
        }
    summary = {
        "detectors": results["test"],
        "forecast": _forecast(histories, sets["test"], detector, cfg),
        "validation": validation,
        "corpus": {
            "runs": len(keys),
            "overoptimizing": sum(v["overoptimizing"] for v in families.values()),
            "families": families,
            "train_seeds": cfg.train_seeds,
            "validation_seeds": cfg.validation_seeds,
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
