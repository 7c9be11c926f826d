"""Typed study configs, validated on load with errors that name the bad field.

A study is a YAML file; :func:`load_config` parses and validates it (unknown fields, wrong types,
out-of-range values and unknown names are all refused) and :func:`resolve` fills in defaults so
the run folder records exactly what ran. The mitigation study's sections are in
:mod:`proxygap.config.mitigations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from proxygap.config.daa_scale import DAAScaleConfig
from proxygap.config.detect import DetectConfig
from proxygap.config.fdiv import FDivStudyConfig
from proxygap.config.inputs import RuntimeConfig, TaskConfig, check_inputs
from proxygap.config.mitigations import (
    ConstraintConfig,
    MitigationBonConfig,
    MitigationHookConfig,
    MitigationRunConfig,
    MitigationStudyConfig,
)
from proxygap.config.scaling import ScalingConfig, check_scaling
from proxygap.config.sections import (
    BonConfig,
    DAARunConfig,
    PreferenceConfig,
    ProxyConfig,
    RLRunConfig,
    SFTConfig,
)
from proxygap.schema import SAFE_NAME, PosFloat, PosInt, Strict, format_errors, safe_name

__all__ = [
    "SAFE_NAME",
    "ConfigError",
    "BonConfig",
    "ConstraintConfig",
    "DAARunConfig",
    "FDivStudyConfig",
    "MitigationBonConfig",
    "MitigationHookConfig",
    "MitigationRunConfig",
    "MitigationStudyConfig",
    "PosFloat",
    "PosInt",
    "PreferenceConfig",
    "ProxyConfig",
    "RLRunConfig",
    "SFTConfig",
    "RuntimeConfig",
    "StudyConfig",
    "Strict",
    "TaskConfig",
]


class ConfigError(ValueError):
    """A config that cannot run; the message names every bad field."""


class MonitorConfig(Strict):
    """The gold-free overoptimization monitor (:mod:`proxygap.monitor`) in every RL, Quark and
    DAA run of a study: its features, score and alarm join each evaluation row. With
    ``stop_on_alarm`` a run stops at its first alarm; ``detector`` is a detector JSON file
    (default: the shipped one)."""

    enabled: bool = True
    stop_on_alarm: bool = False
    detector: str | None = None


class StudyConfig(Strict):
    """A whole study; see ``configs/demo.yaml`` for a commented example."""

    name: str = Field(default="demo", description="the study's name (names its run folder)")
    seed: int = Field(default=0, description="seed of every random stream of the study")
    task: TaskConfig = Field(
        default_factory=TaskConfig, description="the task, and models replacing its built-in ones"
    )
    preferences: PreferenceConfig = Field(
        default_factory=PreferenceConfig,
        description="gold-labelled preference pairs sampled from the base policy",
    )
    proxies: list[ProxyConfig] = Field(
        min_length=1, description="proxy reward models trained on those pairs"
    )
    bon: BonConfig | None = Field(
        default_factory=BonConfig, description="the best-of-n study; null: none"
    )
    rl: RLRunConfig | None = Field(
        default=None, description="online RL against one proxy over KL coefficients; null: none"
    )
    daa: DAARunConfig | None = Field(
        default=None, description="direct alignment over losses and betas; null: none"
    )
    mitigations: MitigationStudyConfig | None = Field(
        default=None, description="the mitigation comparison; null: none"
    )
    sft: SFTConfig | None = Field(
        default=None, description="SFT variants, for 'sft' and 'soup' references"
    )
    detect: DetectConfig | None = None  # the overoptimization-detection corpus
    daa_scale: DAAScaleConfig | None = Field(
        default=None, description="direct alignment over betas at several policy sizes; null: none"
    )
    fdiv: FDivStudyConfig | None = Field(
        default=None, description="f-DPG arms and f-DPO rows over seeds (methods §7); null: none"
    )
    scaling: ScalingConfig | None = Field(
        default=None, description="reward-model scaling (the proxies are its sizes); null: none"
    )
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig())
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "study name")

    @model_validator(mode="after")
    def _unique(self) -> StudyConfig:
        names = [p.name for p in self.proxies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"proxy names must be unique; repeated: {dup}")
        if self.rl is not None and self.rl.proxy not in names:
            raise ValueError(f"rl.proxy {self.rl.proxy!r} is not one of the proxies {names}")
        if self.daa is not None and self.daa.proxy is not None and self.daa.proxy not in names:
            raise ValueError(f"daa.proxy {self.daa.proxy!r} is not one of the proxies {names}")
        if self.daa is not None and (self.daa.n_pairs or 0) > self.preferences.n_pairs:
            raise ValueError(
                f"daa.n_pairs ({self.daa.n_pairs}) exceeds preferences.n_pairs "
                f"({self.preferences.n_pairs})"
            )
        if self.mitigations is not None:
            _check_mitigations(self.mitigations, self.proxies)
        if self.fdiv is not None:
            if self.fdiv.proxy not in names:
                raise ValueError(
                    f"fdiv.proxy {self.fdiv.proxy!r} is not one of the proxies {names}"
                )
            n = self.fdiv.daa.n_pairs if self.fdiv.daa is not None else None
            if (n or 0) > self.preferences.n_pairs:
                raise ValueError(
                    f"fdiv.daa.n_pairs ({n}) exceeds preferences.n_pairs "
                    f"({self.preferences.n_pairs})"
                )
        if self.detect is not None:
            bad = sorted({f.reward for f in self.detect.families} - {*names, "gold", "gold_noisy"})
            if bad:
                raise ValueError(
                    f"detect.families: rewards {bad} are none of the proxies {names}, 'gold' or "
                    "'gold_noisy'"
                )
            if self.detect.monitor_proxy not in names:
                raise ValueError(
                    f"detect.monitor_proxy {self.detect.monitor_proxy!r} is not one of the "
                    f"proxies {names}"
                )
            monitor = next(p for p in self.proxies if p.name == self.detect.monitor_proxy)
            if monitor.path is None and monitor.ensemble < 2:
                raise ValueError(
                    f"detect.monitor_proxy {monitor.name!r} has {monitor.ensemble} member; the "
                    "monitor's disagreement signal needs an ensemble (ensemble >= 2)"
                )
        _check_targets(self)
        _check_scale(self)
        check_scaling(self)
        check_inputs(self.preferences.file, self.proxies)
        needs = [
            f"mitigations.rl arm {a.name!r}"
            for a in (self.mitigations.rl if self.mitigations else [])
            if a.reference != "base"
        ]
        if self.daa is not None and self.daa.reference != "base":
            needs.append("daa")
        if needs and self.sft is None:
            raise ValueError(f"{', '.join(needs)} start from SFT variants: set sft")
        if self.sft is not None and 2 * self.sft.n_texts > self.preferences.n_pairs:
            raise ValueError(
                f"sft.n_texts ({self.sft.n_texts}) x 2 exceeds preferences.n_pairs "
                f"({self.preferences.n_pairs}): the variants take disjoint halves"
            )
        for p in self.proxies:
            if p.n_pairs is not None and p.n_pairs > self.preferences.n_pairs:
                raise ValueError(
                    f"proxy {p.name!r} asks for {p.n_pairs} pairs but preferences.n_pairs is "
                    f"{self.preferences.n_pairs}"
                )
        return self


def _check_mitigations(m: MitigationStudyConfig, proxies: list[ProxyConfig]) -> None:
    names = [p.name for p in proxies]
    proxy = next((p for p in proxies if p.name == m.proxy), None)
    if proxy is None:
        raise ValueError(f"mitigations.proxy {m.proxy!r} is not one of the proxies {names}")
    k = proxy.ensemble
    if m.ensembles == "per_seed" and proxy.path is not None:
        raise ValueError(
            f"mitigations.ensembles 'per_seed' retrains the members of {m.proxy!r} for every "
            "seed, but it is a trained model (path): set mitigations.ensembles: fixed"
        )
    if m.member >= k:
        raise ValueError(f"mitigations.member {m.member} must be < the ensemble size {k}")
    needs = [r.name for r in m.rl if r.aggregation != "single"]
    bon = m.bon.methods if m.bon is not None else []
    if k < 2 and (bon or needs):
        raise ValueError(
            f"mitigations.proxy {m.proxy!r} has ensemble: {k}, but mitigations.bon.methods "
            f"{bon} and mitigations.rl {needs} aggregate members: it needs ensemble >= 2"
        )
    for arm in m.rl:
        unknown = [c for c in arm.components if c not in names]
        if unknown:
            raise ValueError(
                f"mitigations.rl arm {arm.name!r}: components {unknown} are not proxies {names}"
            )


def _check_scale(cfg: StudyConfig) -> None:
    from proxygap.tasks import get_task

    spec = cfg.daa_scale
    if spec is None:
        return
    if cfg.task.prompts is not None:
        raise ValueError("daa_scale needs a built-in task with base policies of several sizes")
    sizes = get_task(cfg.task.name).policy_sizes
    unknown = [s for s in spec.sizes if s not in sizes]
    if unknown:
        raise ValueError(
            f"daa_scale.sizes {unknown} are not base-policy sizes of task {cfg.task.name!r} "
            f"(sizes: {sorted(sizes)})"
        )
    if (spec.n_pairs or 0) > cfg.preferences.n_pairs:
        raise ValueError(
            f"daa_scale.n_pairs ({spec.n_pairs}) exceeds preferences.n_pairs "
            f"({cfg.preferences.n_pairs})"
        )


def _check_targets(cfg: StudyConfig) -> None:
    from proxygap.tasks import get_task

    targets = [p for p in cfg.proxies if p.target != "gold"]
    if not targets:
        return
    if cfg.task.gold is not None:
        raise ValueError(
            f"proxies {[p.name for p in targets]} are trained on gold components, which a gold "
            "model (task.gold) does not have; use target: gold"
        )
    allowed = sorted(get_task(cfg.task.name).components)
    for p in targets:
        if p.target not in allowed:
            raise ValueError(
                f"proxy {p.name!r}: unknown target {p.target!r}; allowed: ['gold', *{allowed}]"
            )


def parse_config(data: Any, *, source: str = "<dict>") -> StudyConfig:
    """Validate a mapping as a :class:`StudyConfig`; raise :class:`ConfigError` naming fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level")
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, f"config {source}")) from None


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a YAML study config."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    return parse_config(data, source=str(path))


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped with the package (``demo``, ...)."""
    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    if not path.is_file():
        shipped = sorted(q.stem for q in path.parent.glob("*.yaml"))
        raise ConfigError(f"no built-in config {name!r}; shipped configs: {shipped}")
    return path


def dump_config(cfg: StudyConfig) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
