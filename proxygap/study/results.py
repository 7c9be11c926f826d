"""What a study produces, as plain typed records: one per stage and :class:`StudyResult` for the
whole run (everything the report needs). The report reads these and nothing else of the study.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
