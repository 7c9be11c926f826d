"""What a study produces, as plain typed records: one per stage and :class:`StudyResult` for the
whole run (everything the report needs). The report reads these and nothing else of the study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxygap.analysis.hump import Decline, Peak
from proxygap.analysis.rl_analysis import RLAnalysis
from proxygap.config import FDivStudyConfig, MitigationStudyConfig, ProxyConfig, StudyConfig
from proxygap.optimize.bon import BonCurve
from proxygap.optimize.daa_sweep import DAASweep

__all__ = [
    "DetectResult",
    "FDivResult",
    "BonVariant",
    "DAASweep",
    "MitigationResult",
    "ProxyResult",
    "RLRunResult",
    "ScalingResult",
    "StudyResult",
]


@dataclass
class ProxyResult:
    """One proxy: its best-of-n curve and how well it agrees with gold on base samples."""

    config: ProxyConfig
    curve: BonCurve
    heldout_accuracy: float
    spearman: float
    n_params: int | None
    train_seconds: float | None
    ensemble_std_growth: float | None = None
    wellformed_top: float | None = None  # well-formed fraction of the n = N picks


@dataclass
class RLRunResult:
    """One RL run of the KL sweep: its evaluations, examples and their analysis."""

    name: str
    kl_coef: float
    history: list[dict[str, float]]
    examples: list[dict[str, Any]]
    analysis: RLAnalysis


@dataclass
class BonVariant:
    """One selection rule of the mitigation study's best-of-n: its curve over all seeds'
    prompts (for the plot), its quantities per seed and their summary over seeds."""

    name: str
    curve: BonCurve
    runs: list[dict[str, float]]
    summary: dict[str, dict[str, float]]


@dataclass
class MitigationResult:
    """The mitigation study: best-of-n rules, every arm's histories over seeds, their
    summaries, and the proxy points of constrained arms."""

    config: MitigationStudyConfig
    bon: list[BonVariant] = field(default_factory=list)
    histories: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    points: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> component -> point
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # best-of-n, one per seed


@dataclass
class DetectResult:
    """The detection corpus (evaluation rows per ``(family, seed)``) and its analysis, as
    written to ``detect/summary.json``: ``detectors``, ``forecast``, ``corpus``, ``detector``."""

    histories: dict[tuple[str, int], list[dict[str, float]]]
    summary: dict[str, Any]


@dataclass
class FDivResult:
    """The f-divergence comparison: evaluation rows per arm (RL: divergence; DAA: loss), one
    list per seed in ``config.seeds`` order, and their numbers
    (:func:`proxygap.study.fdiv_stats.summarise_arms`, keyed ``rl`` and ``daa``)."""

    config: FDivStudyConfig
    rl: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    daa: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScaleCurve:
    """One DAA loss at one policy size: gold against ``d`` over the beta grid (the final
    checkpoint of every beta and seed, sorted by ``d``, after the initial policy's ``d = 0``
    point), the share of responses that never end and the mean length at each point, the peak
    with its interval, the fall past it split into gradual decline and collapse, and the peak's
    ``d`` per seed. ``betas`` and ``seeds`` label the points after the first."""

    betas: list[float]
    seeds: list[int]
    d: list[float]
    gold: list[float]
    gold_se: list[float]
    collapse: list[float]
    length: list[float]
    peak: Peak
    decline: Decline
    seed_peaks: list[float]

    def summary(self) -> dict[str, Any]:
        """The curve as plain JSON values (``daa_scale/summary.json``)."""
        return {
            "betas": self.betas, "seeds": self.seeds, "d": self.d, "gold": self.gold,
            "gold_se": self.gold_se,
            "collapse": self.collapse, "length": self.length,
            "peak": {**self.peak.__dict__, "hump": self.peak.hump},
            "decline": self.decline.__dict__, "seed_peaks": self.seed_peaks,
        }  # fmt: skip


@dataclass
class DAAScaleResult:
    """The DAA scale study: parameters and initial-policy evaluation per size, every run's
    evaluation rows keyed ``(size, loss, beta, seed)``, and the curves ``curves[size][loss]``."""

    params: dict[str, int]
    init: dict[str, dict[str, float]]
    histories: dict[tuple[str, str, float, int], list[dict[str, float]]]
    curves: dict[str, dict[str, ScaleCurve]]


@dataclass
class ScalingResult:
    """The scaling study: ``scaling/summary.json`` (sizes, the per-size table, trends against
    log parameters, Gao et al.'s directions judged, every cell, mean curves)."""

    summary: dict[str, Any]


@dataclass
class StudyResult:
    """A whole run: where it lives and what every stage found."""

    config: StudyConfig
    dir: Path  # the run folder
    gold_scale: float  # gold's standard deviation over base-policy samples (raw units)
    data: str = ""  # how the task, gold and pairs were set up, in words (the report's setup)
    proxies: list[ProxyResult] = field(default_factory=list)  # best-of-n, one per proxy
    picks: list[dict[str, Any]] = field(default_factory=list)  # best-of-n examples
    timings: dict[str, float] = field(default_factory=dict)  # wall time, well-formed shares
    rl_runs: list[RLRunResult] = field(default_factory=list)
    daa: DAASweep | None = None
    mitigations: MitigationResult | None = None
    detect: DetectResult | None = None
    fdiv: FDivResult | None = None
    daa_scale: DAAScaleResult | None = None
    scaling: ScalingResult | None = None
