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
from dataclasses import dataclass
from typing import Any

import numpy as np

from proxygap.analysis.bootstrap import percentile_interval
from proxygap.config.detect import DetectConfig
from proxygap.monitor.benchmark import (
    BASELINES,
    choose_threshold,
    gold_se,
    judge,
    kept_index,
    label_points,
)
from proxygap.monitor.detector import Detector, fit_detector
from proxygap.monitor.forecast import (
    PeakForecast,
    conformal_radius,
    forecast_peak,
    gao_bon_peak,
    gao_rl_peak,
)
from proxygap.monitor.signals import FEATURES, features

__all__ = ["analyse_corpus", "kept_saving"]

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


BUDGETS = (0.1, 0.25, 0.5)
"""False-alarm budgets of the operating points: the alarm threshold chosen on the training runs
for each, so that the price of an earlier alarm in false ones is measured, not guessed."""


def _judged(
    histories: Mapping[RunKey, Rows],
    scores: Mapping[RunKey, np.ndarray],
    train: Sequence[RunKey],
    scored_on: Mapping[str, Sequence[RunKey]],
) -> tuple[dict[str, dict[str, Any]], float]:
    """One detector's scores judged on each set of ``scored_on`` at the threshold with at most
    10% false alarms on the training runs, each with its ``operating_points`` (one per
    :data:`BUDGETS` budget), and that threshold."""

    def runs(keys: Sequence[RunKey]) -> list[tuple[Rows, np.ndarray]]:
        return [(histories[k], scores[k]) for k in keys]

    thresholds = {b: choose_threshold(runs(train), max_false_alarms=b) for b in BUDGETS}
    out: dict[str, dict[str, Any]] = {}
    for name, keys in scored_on.items():
        out[name] = judge(runs(keys), thresholds[0.1])
        out[name]["kept_saving"] = kept_saving(histories, scores, keys, thresholds[0.1])
        out[name]["operating_points"] = [
            {"false_alarm_budget": b, **judge(runs(keys), t)} for b, t in thresholds.items()
        ]
    return out, thresholds[0.1]


def kept_saving(
    histories: Mapping[RunKey, Rows],
    scores: Mapping[RunKey, np.ndarray],
    keys: Sequence[RunKey],
    threshold: float,
    *,
    level: float = 0.95,
    n_boot: int = 2000,
) -> dict[str, Any] | None:
    """The gold a user saves by keeping the checkpoint before the first alarm instead of the
    last one, ``g_kept - g_last``, averaged over the overoptimizing runs of ``keys``, with a
    ``level`` interval from a bootstrap that resamples families (runs of one family share their
    configuration, so they are not independent) and then runs within each; None without
    overoptimizing runs."""
    by_family: dict[str, list[float]] = {}
    for k in keys:
        h = histories[k]
        if label_points(h).drop is None:
            continue
        gold = [float(r["reward/gold"]) for r in h]
        by_family.setdefault(k[0], []).append(gold[kept_index(scores[k], threshold)] - gold[-1])
    if not by_family:
        return None
    groups = [np.array(v) for v in by_family.values()]
    rng = np.random.default_rng(0)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        picked = [groups[i] for i in rng.integers(len(groups), size=len(groups))]
        reps[b] = np.concatenate([rng.choice(g, size=len(g)) for g in picked]).mean()
    lo, hi = percentile_interval(reps, level)
    return {"mean": float(np.concatenate(groups).mean()), "lo": lo, "hi": hi, "level": level,
            "n_runs": int(sum(map(len, groups))), "n_families": len(groups)}  # fmt: skip


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
        judged, threshold = _judged(histories, scored, train, scored_on)
        detector = detector.with_threshold(float(np.clip(threshold, 1e-6, 1 - 1e-6)))
        for name in scored_on:
            out[name]["proxygap"] = judged[name]
    for base_name, baseline in BASELINES.items():
        base = {k: baseline(histories[k]) for k in histories}
        judged, _ = _judged(histories, base, train, scored_on)
        for name in scored_on:
            out[name][base_name] = judged[name]
    return out, detector


@dataclass(frozen=True)
class _Case:
    """The forecasts of one overoptimizing run: at the alarm (or the point before the drop)
    and, when the peak is the fourth point or later, one point before the peak."""

    key: RunKey
    true_d: float
    at_step: float
    at_alarm: PeakForecast
    gao: tuple[float, float]  # the peaks of Gao et al.'s RL and best-of-n laws
    before: PeakForecast | None
    before_gao: tuple[float, float]


def _case(key: RunKey, h: Rows, detector: Detector | None, cfg: DetectConfig) -> _Case | None:
    """None for a benign run, a drop before the third point (nothing to fit) or a peak at
    ``d = 0``."""
    lab = label_points(h)
    if lab.drop is None or lab.drop < 3 or not float(h[lab.peak]["d"]) > 0:
        return None
    alarms = (
        np.flatnonzero(_scores(detector, h) >= detector.threshold)
        if detector is not None
        else np.zeros(0, dtype=np.int64)
    )
    cut = int(alarms[0]) if len(alarms) and 2 <= alarms[0] < lab.drop else lab.drop - 1

    def predict(seen: Rows, with_steps: bool) -> tuple[PeakForecast, tuple[float, float]]:
        d, g, se = [r["d"] for r in seen], *_budget(seen)
        steps = [r["step"] for r in seen] if with_steps else None
        f = forecast_peak(
            d, g, se, steps=steps, level=cfg.forecast_level, method=cfg.forecast_method
        )
        return f, (gao_rl_peak(d, g, se), gao_bon_peak(d, g, se))

    at_alarm, gao = predict(h[: cut + 1], True)
    before, before_gao = (
        predict(h[: lab.peak], False) if lab.peak >= 3 else (None, (math.nan, math.nan))
    )
    true = float(h[lab.peak]["d"])
    return _Case(key, true, float(h[cut]["step"]), at_alarm, gao, before, before_gao)


def _budget(rows: Rows) -> tuple[list[float], list[float]]:
    """Gold and its SE as the forecaster sees them: on the gold budget's samples
    (``reward/gold_budget``) where the evaluator measured it, else on all samples."""
    if all("reward/gold_budget" in r for r in rows):
        return [r["reward/gold_budget"] for r in rows], [
            r.get("reward/gold_budget_se", 0.0) for r in rows
        ]
    return [r["reward/gold"] for r in rows], [gold_se(r) for r in rows]


def _scored(
    cases: Sequence[tuple[float, PeakForecast, tuple[float, float]]], radius: float
) -> dict[str, Any]:
    """Median relative errors of ``(true d, forecast, Gao RL and best-of-n peaks)`` and the
    coverage of the bootstrap and of the conformal interval of ``radius``."""
    if not cases:
        return {"n_runs": 0, "peak_d_rel_error": None, "gao_extrapolation_rel_error": None,
                "gao_bon_extrapolation_rel_error": None, "interval_coverage": None,
                "conformal_coverage": None}  # fmt: skip
    err = [abs(f.d - t) / t for t, f, _ in cases]
    gao = [abs(g[0] - t) / t for t, _, g in cases]
    bon = [abs(g[1] - t) / t for t, _, g in cases]
    conformal = [f.conformal(radius) for _, f, _ in cases]
    return {  # relative errors: |forecast - observed| / observed; a law that does not turn: inf
        "n_runs": len(cases),
        "peak_d_rel_error": _median(err),
        "gao_extrapolation_rel_error": _median(gao),
        "share_gao_no_turn": float(np.mean(np.isinf(gao))),
        "gao_bon_extrapolation_rel_error": _median(bon),
        "share_gao_bon_no_turn": float(np.mean(np.isinf(bon))),
        "interval_coverage": float(np.mean([f.lo <= t <= f.hi for t, f, _ in cases])),
        "conformal_coverage": float(
            np.mean([lo <= t <= hi for (t, _, _), (lo, hi) in zip(cases, conformal, strict=True)])
        ),
    }


def _forecast(
    histories: Mapping[RunKey, Rows],
    test: Sequence[RunKey],
    calibration: Sequence[RunKey],
    detector: Detector | None,
    cfg: DetectConfig,
) -> dict[str, Any]:
    """The forecast's scores on the ``test`` runs, its conformal intervals calibrated on the
    ``calibration`` runs (the training seeds: never the runs scored)."""
    cases = {k: _case(k, histories[k], detector, cfg) for k in {*test, *calibration}}
    cal = [c for k in calibration if (c := cases[k]) is not None]
    held = [c for k in test if (c := cases[k]) is not None]
    level = cfg.forecast_level
    radius = conformal_radius([c.at_alarm.d for c in cal], [c.true_d for c in cal], level)
    cal_before = [c for c in cal if c.before is not None]
    radius_before = conformal_radius(
        [c.before.d for c in cal_before if c.before], [c.true_d for c in cal_before], level
    )
    at_alarm = _scored([(c.true_d, c.at_alarm, c.gao) for c in held], radius)
    before = _scored([(c.true_d, c.before, c.before_gao) for c in held if c.before], radius_before)
    return {
        **at_alarm,
        "level": level,
        "method": cfg.forecast_method,
        "conformal_radius": _finite(radius),
        "n_calibration_runs": len(cal),
        "before_peak": {**before, "conformal_radius": _finite(radius_before)},
        "runs": [
            {
                "family": c.key[0],
                "seed": c.key[1],
                "at_step": c.at_step,
                "true_d": c.true_d,
                "forecast_d": _finite(c.at_alarm.d),
                "lo": _finite(c.at_alarm.lo),
                "hi": _finite(c.at_alarm.hi),
                "gao_rl_d": _finite(c.gao[0]),
                "gao_bon_d": _finite(c.gao[1]),
            }
            for c in held
        ],  # fmt: skip
    }


def _median(x: Sequence[float]) -> float | None:
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
            "forecast": _forecast(histories, sets["validation"], train, detector, cfg),
        }
    summary = {
        "detectors": results["test"],
        "forecast": _forecast(histories, sets["test"], train, detector, cfg),
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
