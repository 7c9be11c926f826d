"""A gold-free overoptimization monitor: signals a practitioner has without gold, a detector that
turns them into a score and an alarm per evaluation point, reward-only baselines, and a
forecaster of the gold peak from a small gold budget (docs/methods.md §8, §9)."""

from proxygap.monitor.benchmark import BASELINES, auroc, judge, label_points
from proxygap.monitor.detector import Detector, Monitor, default_detector, fit_detector
from proxygap.monitor.forecast import PeakForecast, forecast_peak, gao_rl_peak
from proxygap.monitor.signals import FEATURES, features

__all__ = [
    "BASELINES",
    "FEATURES",
    "Detector",
    "Monitor",
    "PeakForecast",
    "auroc",
    "default_detector",
    "features",
    "fit_detector",
    "forecast_peak",
    "gao_rl_peak",
    "judge",
    "label_points",
]
