"""The overoptimization detector: gold-free features of a run, a score and an alarm per
evaluation point, and the :class:`Monitor` that runs it inside a training loop.

The score is a logistic model over the standardised features of
:func:`proxygap.monitor.signals.features`, ``p = sigmoid(b + sum_j w_j (f_j - mu_j) / s_j)``,
the estimated probability that the run is already past its gold peak by more than one standard
error (the label of :func:`proxygap.monitor.benchmark.label_points`). The alarm fires when
``p >= threshold``. :func:`fit_detector` fits the weights by L2-regularised maximum likelihood
(Newton's method) on labelled evaluation points of gold-labelled runs; the shipped default,
:data:`DEFAULT_DETECTOR_PATH`, was fitted on the training runs of the built-in ``detect`` study
(``proxygap run detect``), never on the runs it is reported on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from proxygap.monitor.signals import FEATURES, features
from proxygap.store.atomic import atomic_write_text

__all__ = [
    "DEFAULT_DETECTOR_PATH",
    "SIGNALS",
    "Detector",
    "Monitor",
    "default_detector",
    "fit_detector",
]

SIGNALS = (
    "d",
    "reward/proxy",
    "length/mean",
    "diversity/distinct2",
    "signal/proxy_std",
    "signal/entropy",
    "signal/ensemble_std",
    "signal/outlier_rate",
    "signal/unlikely_rate",
)
"""The row keys the monitor's features read."""

DEFAULT_DETECTOR_PATH = Path(__file__).with_name("default_detector.json")
"""The detector the monitor uses unless given another."""


@dataclass(frozen=True)
class Detector:
    """A fitted logistic detector: per feature a centre ``mean``, a ``scale`` and a weight, a
    ``bias`` and the alarm ``threshold`` on the probability."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float = 0.5

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.mean) == len(self.scale) == len(self.weights) == n):
            raise ValueError("features, mean, scale and weights must have the same length")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Feature dicts -> ``(n, F)`` array in this detector's feature order."""
        return np.array([[float(r[f]) for f in self.features] for r in rows], dtype=np.float64)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """``(n, F)`` features -> ``(n,)`` probabilities of being past the gold peak."""
        z = (x - np.array(self.mean)) / np.array(self.scale)
        return _sigmoid(self.bias + z @ np.array(self.weights))

    def with_threshold(self, threshold: float) -> Detector:
        return Detector(
            self.features, self.mean, self.scale, self.weights, self.bias, float(threshold)
        )

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        raw: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            features=tuple(raw["features"]),
            mean=tuple(raw["mean"]),
            scale=tuple(raw["scale"]),
            weights=tuple(raw["weights"]),
            bias=float(raw["bias"]),
            threshold=float(raw["threshold"]),
        )


def default_detector() -> Detector:
    """The shipped detector (:data:`DEFAULT_DETECTOR_PATH`)."""
    return Detector.load(DEFAULT_DETECTOR_PATH)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


def fit_detector(
    x: np.ndarray,
    y: np.ndarray,
    *,
    names: Sequence[str] = FEATURES,
    l2: float = 1.0,
    threshold: float = 0.5,
    iterations: int = 50,
) -> Detector:
    """L2-regularised logistic regression by Newton's method on standardised features.

    Minimises ``-sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)] + l2/2 |w|^2`` (the bias is not
    penalised); features are centred and scaled by their mean and standard deviation over ``x``
    (a constant feature gets scale 1 and, with the penalty, weight 0).

    Args:
        x: ``(n, F)`` features, columns in the order of ``names``.
        y: ``(n,)`` labels in {0, 1}.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape != (len(y), len(names)):
        raise ValueError(f"x must be (n, {len(names)}) with n = len(y), got {x.shape}")
    if not set(np.unique(y)) <= {0.0, 1.0} or len(set(y)) < 2:
        raise ValueError("y must hold both labels 0 and 1")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])  # (n, F + 1)
    penalty = np.diag([0.0] + [l2] * len(names))
    theta = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = _sigmoid(z @ theta)
        grad = z.T @ (p - y) + penalty @ theta
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return Detector(
        features=tuple(names),
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        weights=tuple(float(v) for v in theta[1:]),
        bias=float(theta[0]),
        threshold=threshold,
    )


class Monitor:
    """Runs a detector over a training run, one evaluation row at a time.

    Use it as a :class:`~proxygap.optimize.loop.Watchers` ``on_evaluate`` hook (it adds its keys
    to each row) or call :meth:`update` with rows from any trainer. Keys it adds: ``monitor/<f>``
    for every feature, ``monitor/score`` (the probability), ``monitor/alarm`` (0 or 1) and
    ``monitor/first_alarm_step`` (the step of the first alarm so far, -1 before any) and
    ``monitor/missing_signals`` (how many of :data:`SIGNALS` the row lacks: each counts as no
    drift, so the score then reads less than the detector was fitted on). With
    ``stop_on_alarm`` the hook asks the loop to stop at the first alarm.
    """

    def __init__(self, detector: Detector | None = None, *, stop_on_alarm: bool = False) -> None:
        self.detector = detector or default_detector()
        self.stop_on_alarm = stop_on_alarm
        self.first: dict[str, float] | None = None
        self.first_alarm_step = -1.0

    def update(self, row: Mapping[str, float]) -> dict[str, float]:
        """The monitor's metrics for one evaluation row (the first row seen is the baseline; a
        signal first measured later, such as a TRL run's unlikely-sample share once calibrated,
        takes its first value as its own). A NaN value counts as a missing signal: no drift,
        and one more in ``monitor/missing_signals``."""
        row = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        if self.first is None:
            self.first = dict(row)
        for key in SIGNALS:
            if key not in self.first and key in row:
                self.first[key] = row[key]
        feats = features(row, self.first)
        score = float(self.detector.probability(self.detector.matrix([feats]))[0])
        alarm = score >= self.detector.threshold
        if alarm and self.first_alarm_step < 0:
            self.first_alarm_step = float(row.get("step", 0.0))
        return {
            **{f"monitor/{k}": v for k, v in feats.items()},
            "monitor/score": score,
            "monitor/alarm": float(alarm),
            "monitor/first_alarm_step": self.first_alarm_step,
            "monitor/missing_signals": float(sum(k not in row for k in SIGNALS)),
        }

    def state_dict(self) -> dict[str, Any]:
        """What the monitor remembers of a run (its baseline row, the first alarm), for a
        training checkpoint."""
        return {"first": self.first, "first_alarm_step": self.first_alarm_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a run from a checkpoint's :meth:`state_dict`."""
        self.first, self.first_alarm_step = state["first"], float(state["first_alarm_step"])

    def __call__(self, row: dict[str, float], result: Any) -> bool:
        """Watchers hook: adds the metrics to ``row``; True asks the loop to stop."""
        row.update(self.update(row))
        return self.stop_on_alarm and row["monitor/alarm"] == 1.0
