"""The mitigation study's config sections (docs/methods.md §4): its arms with their hooks, named by
the registry (:data:`proxygap.mitigations.MITIGATIONS`) and checked against its rows, their
constraint and the study's best-of-n selection."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from proxygap.mitigations.registry import MITIGATIONS, check_params
from proxygap.optimize.quark import QuarkSettings
from proxygap.optimize.rl import RLConfig
from proxygap.schema import PosFloat, PosInt, Strict, safe_name

_AGGREGATIONS: tuple[Literal["mean", "wco", "uwo"], ...] = ("mean", "wco", "uwo")


class MitigationHookConfig(Strict):
    """One mitigation hook by its registry name (:data:`proxygap.mitigations.MITIGATIONS`) and
    its hyperparameters; inputs the study supplies (reference rewards, group size, the policy)
    are not given here."""

    method: str
    params: dict[str, Any] = Field(default_factory=dict)


class ConstraintConfig(Strict):
    """Constrained RLHF (Moskovitz et al. 2023) over an arm's ``components``: each component is
    held at its proxy point by a Lagrange multiplier. The proxy points are the components'
    values at the gold peak of ``points_from``, an arm that optimises the same components
    unconstrained (their sum), averaged over its seeds."""

    points_from: str
    mode: Literal["equality", "upper", "lower"] = "equality"  # Moskovitz et al.'s best: equality
    objective: Literal["none", "sum"] = "none"  # none: only the KL penalty besides the constraints
    lr: PosFloat = 0.5  # multiplier step per RL step (components in base-sample SD units)

    @model_validator(mode="after")
    def _objective(self) -> ConstraintConfig:
        if self.mode != "equality" and self.objective == "none":
            raise ValueError(
                f"mode {self.mode!r} bounds the components of an objective: set objective: sum "
                "(with objective none only the penalty terms would be optimised)"
            )
        return self


class MitigationRunConfig(Strict):
    """One arm of the mitigation study. The reward is one ensemble member (``single``: the
    unmitigated baseline) or an ensemble aggregation, or the standardised sum of component
    proxies (``components``); reward transforms apply in order; an optional post-step hook, a
    KL coefficient, a constraint on the components, the policy's start and KL reference
    (``base``; ``sft``: the first SFT variant; ``soup``: the average of the two, SALSA), and
    ``quark`` to train with Quark instead of the RL recipe."""

    name: str
    aggregation: Literal["single", "mean", "wco", "uwo"] = "single"
    uwo_lambda: Annotated[float, Field(ge=0.0)] = 0.1  # Coste et al. use ~0.1 with PPO
    components: list[str] = Field(default_factory=list)  # proxy names
    transforms: list[MitigationHookConfig] = Field(default_factory=list)
    post_step: MitigationHookConfig | None = None
    kl_coef: Annotated[float, Field(ge=0.0)] = 0.0
    constraint: ConstraintConfig | None = None
    reference: Literal["base", "sft", "soup"] = "base"
    quark: QuarkSettings | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "mitigation name")

    @model_validator(mode="after")
    def _hooks(self) -> MitigationRunConfig:
        for i, t in enumerate(self.transforms):
            check_params(t.method, t.params, kind="transform", where=f"transforms.{i}")
        if self.post_step is not None:
            check_params(
                self.post_step.method,
                self.post_step.params,
                kind="weight_update",
                where="post_step",
            )
        if self.components and self.aggregation != "single":
            raise ValueError("components replace the ensemble: leave aggregation at 'single'")
        if len(set(self.components)) != len(self.components):
            raise ValueError(f"components must be distinct, got {self.components}")
        if self.constraint is not None and not self.components:
            raise ValueError("constraint needs components (the proxies it holds at proxy points)")
        if self.constraint is not None and (self.transforms or self.post_step is not None):
            raise ValueError("a constraint replaces the reward transforms and post-step hooks")
        refs = [t.method for t in self.transforms if MITIGATIONS[t.method].needs_references]
        if refs and self.reference != "base":
            raise ValueError(
                f"transforms {refs} compare with base-policy samples; with reference "
                f"{self.reference!r} the arm's initial policy is another: use reference base"
            )
        if self.quark is not None:
            extra = [
                n
                for n, on in (
                    ("transforms", bool(self.transforms)),
                    ("post_step", self.post_step is not None),
                    ("constraint", self.constraint is not None),
                    ("kl_coef", self.kl_coef > 0),
                    ("reference", self.reference != "base"),
                )
                if on
            ]
            if extra:
                raise ValueError(
                    f"a quark arm trains with its own loss (its KL coefficient is quark.kl_coef); "
                    f"remove {extra}"
                )
        return self


class MitigationBonConfig(Strict):
    """Best-of-n in the mitigation study: for every seed, a fresh pool of ``pool_size`` samples
    on the same ``n_prompts`` prompts; the single member and each ensemble aggregation of
    ``methods`` (UWO with ``uwo_lambda``) select from it."""

    methods: list[Literal["mean", "wco", "uwo"]] = Field(default_factory=lambda: [*_AGGREGATIONS])
    uwo_lambda: Annotated[float, Field(ge=0.0)] = 0.5  # Coste et al.'s best-of-n value
    n_prompts: PosInt = 32
    pool_size: Annotated[int, Field(ge=2)] = 512
    temperature: PosFloat = 1.3
    max_new_tokens: PosInt | None = None
    n_points: Annotated[int, Field(ge=3)] = 17


class MitigationStudyConfig(Strict):
    """The mitigation comparison (docs/methods.md §4): best-of-n selection variants from the members
    of one ensemble proxy, and arms each run with every seed, on the same prompts, proxy and
    settings. ``member`` is the single reward model of the baseline."""

    proxy: str  # an ensemble proxy of the study (Coste et al.: 5 members, 25% label noise)
    member: Annotated[int, Field(ge=0)] = 0
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=3)
    bon: MitigationBonConfig | None = Field(default_factory=MitigationBonConfig)
    rl: list[MitigationRunConfig] = Field(default_factory=list)
    reference_samples: PosInt = 4  # pi0 samples per training prompt for LSC, PAR and Quark
    settings: RLConfig = Field(default_factory=RLConfig)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"seeds must be distinct and >= 0, got {v}")
        return v

    @field_validator("rl")
    @classmethod
    def _names(cls, v: list[MitigationRunConfig]) -> list[MitigationRunConfig]:
        names = [r.name for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"mitigation names must be unique; repeated: {dup}")
        for i, arm in enumerate(v):
            c = arm.constraint
            if c is None:
                continue
            source = next((a for a in v[:i] if a.name == c.points_from), None)
            if source is None:
                raise ValueError(
                    f"arm {arm.name!r}: constraint.points_from {c.points_from!r} must name an "
                    f"earlier arm; earlier arms: {names[:i]}"
                )
            if source.components != arm.components or source.constraint is not None:
                raise ValueError(
                    f"arm {arm.name!r}: points_from {c.points_from!r} must optimise the same "
                    f"components {arm.components} without a constraint"
                )
        return v

    @model_validator(mode="after")
    def _kl(self) -> MitigationStudyConfig:
        if self.settings.kl_controller == "adaptive":
            zero = [a.name for a in self.rl if a.kl_coef == 0 and a.quark is None]
            if zero:
                raise ValueError(
                    f"settings.kl_controller 'adaptive' needs kl_coef > 0 in every arm; "
                    f"arms {zero} have 0"
                )
        return self
