"""Typed study configs, validated on load with errors that name the bad field.

A study is a YAML file; :func:`load_config` parses and validates it (unknown fields, wrong types,
out-of-range values and unknown names are all refused) and :func:`resolve` fills in defaults so
the run folder records exactly what ran. The mitigation study's sections are in
:mod:`proxygap.config.mitigations`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from proxygap.config.detect import DetectConfig
from proxygap.config.mitigations import (
    ConstraintConfig,
    MitigationBonConfig,
    MitigationHookConfig,
    MitigationRunConfig,
    MitigationStudyConfig,
)
from proxygap.optimize.daa import DAAConfig
from proxygap.optimize.rl import RLConfig
from proxygap.schema import SAFE_NAME, PosFloat, PosInt, Strict, format_errors, safe_name

__all__ = [
    "SAFE_NAME",
    "ConfigError",
    "ConstraintConfig",
    "MitigationBonConfig",
    "MitigationHookConfig",
    "MitigationRunConfig",
    "MitigationStudyConfig",
    "PosFloat",
    "PosInt",
    "StudyConfig",
    "Strict",
]


class ConfigError(ValueError):
    """A config that cannot run; the message names every bad field."""


class TaskConfig(Strict):
    """Which task, and optionally which models replace its built-in ones (Hugging Face paths)."""

    name: Literal["reviews"] = "reviews"
    policy: str | None = None  # causal LM folder; None: the task's built-in base policy
    tokenizer: str | None = None  # None: the policy's folder, else the task's tokenizer
    gold: str | None = None  # sequence-classification folder; None: the task's gold function
    trust_remote_code: bool = False


class PreferenceConfig(Strict):
    """How preference pairs are made: two base-policy samples per prompt, labelled by gold."""

    n_pairs: PosInt = 24_000  # training pairs (proxies take the first ``n_pairs`` of their own)
    n_heldout: PosInt = 2_000  # pairs kept aside for held-out accuracy against gold
    temperature: PosFloat = 1.0  # sampling temperature of the pair responses
    max_new_tokens: PosInt | None = None  # None: the task's default
    file: str | None = None  # a {prompt, chosen, rejected} JSONL file instead of sampling


class ProxyConfig(Strict):
    """One proxy reward model (or a k-member ensemble differing by seed)."""

    name: str
    n_pairs: PosInt | None = None  # None: all training pairs
    labels: Literal["deterministic", "bradley_terry"] = "deterministic"
    bt_temperature: PosFloat = 1.0
    label_noise: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    n_embd: PosInt = 64
    n_layer: PosInt = 2
    n_head: PosInt = 2
    epochs: PosFloat = 2.0
    lr: PosFloat = 1e-3
    batch_size: PosInt = 64
    ensemble: PosInt = 1
    aggregation: Literal["mean", "wco", "uwo"] = "mean"
    uwo_lambda: Annotated[float, Field(ge=0.0)] = 0.5
    seed: int = 0
    path: str | None = None  # a trained reward model folder: scored as is, not trained
    target: str = "gold"  # what labels its pairs: gold, or one of the task's gold components

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "proxy name")

    @model_validator(mode="after")
    def _heads(self) -> ProxyConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class BonConfig(Strict):
    """The best-of-n study: one pool of ``pool_size`` samples for each of ``n_prompts`` prompts."""

    n_prompts: PosInt = 64
    pool_size: Annotated[int, Field(ge=2)] = 1024
    temperature: PosFloat = 1.3
    max_new_tokens: PosInt | None = None
    n_points: Annotated[int, Field(ge=3)] = 41  # log-spaced n values on the curves
    examples_at: list[PosInt] = Field(default_factory=lambda: [1, 16, 128, 1024])
    examples_per_n: PosInt = 4


class RLRunConfig(Strict):
    """Online RL against one proxy, one run per KL coefficient (the rest shared)."""

    proxy: str  # the name of one of the study's proxies
    kl_coefs: list[Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=lambda: [0.0], min_length=1
    )
    settings: RLConfig = Field(default_factory=RLConfig)

    @field_validator("kl_coefs")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"kl_coefs must be distinct, got {v}")
        return v


class SFTConfig(Strict):
    """The study's two SFT variants, behind ``sft`` and ``soup`` references (mitigation arms,
    DAA): each fine-tunes the base policy on ``n_texts`` chosen responses of the training pairs
    (disjoint halves) with its own seed; the soup is their weight average (SALSA)."""

    n_texts: PosInt = 2000
    epochs: PosFloat = 1.0
    lr: PosFloat = 1e-4
    batch_size: PosInt = 32


class DAARunConfig(Strict):
    """Direct alignment on the study's gold-labelled pairs: one run per (loss, beta).

    The runs train on the first ``n_pairs`` training pairs with ``label_noise`` flips (the same
    labels a proxy with that noise would see) and share ``settings`` otherwise; ``proxy``
    optionally names a study proxy whose reward is tracked too, to compare with RLHF;
    ``reference`` picks the start and reference model (``sft``/``soup`` need the study's
    ``sft``).
    """

    betas: dict[str, list[Annotated[float, Field(gt=0.0)]]] = Field(
        default_factory=lambda: {"dpo": [0.05, 0.25, 1.0]}, min_length=1
    )
    n_pairs: PosInt | None = None  # None: all training pairs
    label_noise: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0
    proxy: str | None = None
    # the policy's start and the loss's reference model: the base policy, the first SFT
    # variant, or the soup of the two (SALSA); gold and d are measured against the base policy
    reference: Literal["base", "sft", "soup"] = "base"
    settings: DAAConfig = Field(default_factory=DAAConfig)

    @field_validator("betas")
    @classmethod
    def _losses(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        from proxygap.losses.daa import DAA_LOSSES

        unknown = sorted(set(v) - set(DAA_LOSSES))
        if unknown:
            raise ValueError(f"unknown DAA loss(es) {unknown}; allowed: {sorted(DAA_LOSSES)}")
        empty = sorted(k for k, b in v.items() if not b)
        if empty:
            raise ValueError(f"no betas given for {empty}")
        return v


class RuntimeConfig(Strict):
    device: str = "cpu"
    threads: PosInt | None = None  # torch threads; None: torch's default
    sample_batch_size: PosInt = 1024
    score_batch_size: PosInt = 2048
    workers: PosInt = 1  # processes for independent runs (mitigation arms x seeds; Linux)

    @model_validator(mode="after")
    def _workers(self) -> RuntimeConfig:
        # worker processes are forked: torch's thread pools and CUDA do not survive a fork
        if self.workers > 1 and (self.threads != 1 or self.device != "cpu"):
            raise ValueError(
                f"workers: {self.workers} needs threads: 1 and device: cpu (got threads: "
                f"{self.threads}, device: {self.device!r}); forked processes cannot share "
                "torch thread pools or a GPU"
            )
        return self


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

    name: str = "demo"
    seed: int = 0
    task: TaskConfig = Field(default_factory=TaskConfig)
    preferences: PreferenceConfig = Field(default_factory=PreferenceConfig)
    proxies: list[ProxyConfig] = Field(min_length=1)
    bon: BonConfig | None = Field(default_factory=BonConfig)
    rl: RLRunConfig | None = None
    daa: DAARunConfig | None = None
    mitigations: MitigationStudyConfig | None = None
    sft: SFTConfig | None = None  # SFT variants, for 'sft' and 'soup' references
    detect: DetectConfig | None = None  # the overoptimization-detection corpus
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
        _check_targets(self)
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
