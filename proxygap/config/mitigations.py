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

    method: str = Field(description="the hook's registry name (proxygap.mitigations.MITIGATIONS)")
    params: dict[str, Any] = Field(default_factory=dict, description="its hyperparameters")


class ConstraintConfig(Strict):
    """Constrained RLHF (Moskovitz et al. 2023) over an arm's ``components``: each component is
    held at its proxy point by a Lagrange multiplier. The proxy points are the components'
    values at the gold peak of ``points_from``, an arm that optimises the same components
    unconstrained (their sum), averaged over its seeds."""

    points_from: str = Field(description="the earlier arm whose gold peak gives the proxy points")
    mode: Literal["equality", "upper", "lower"] = Field(
        default="equality",
        description=(
            "equality holds each component at its point (Moskovitz et al.'s best); upper and lower "
            "bound it"
        ),
    )
    objective: Literal["none", "sum"] = Field(
        default="none",
        description="none: only the KL penalty beside the constraints; sum: also their sum",
    )
    lr: PosFloat = Field(
        default=0.5, description="multiplier step per RL step (components in base-sample SD units)"
    )

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

    name: str = Field(description="the arm's name (names its folder)")
    aggregation: Literal["single", "mean", "wco", "uwo"] = Field(
        default="single",
        description="single (one member: the unmitigated baseline) or an ensemble aggregation",
    )
    uwo_lambda: Annotated[float, Field(ge=0.0)] = Field(
        default=0.1, description="variance weight of UWO (Coste et al. use ~0.1 with PPO)"
    )
    components: list[str] = Field(
        default_factory=list, description="proxy names whose standardised sum is the reward"
    )
    transforms: list[MitigationHookConfig] = Field(
        default_factory=list, description="reward transforms, applied in order"
    )
    post_step: MitigationHookConfig | None = Field(
        default=None, description="a hook after each step (e.g. Elastic Reset)"
    )
    kl_coef: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0, description="KL coefficient of the arm"
    )
    constraint: ConstraintConfig | None = Field(
        default=None, description="constrained RLHF over the components"
    )
    reference: Literal["base", "sft", "soup"] = Field(
        default="base",
        description="start and KL reference: base, sft (the first SFT variant) or soup (SALSA)",
    )
    quark: QuarkSettings | None = Field(
        default=None, description="train with Quark instead of the RL recipe"
    )

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

    methods: list[Literal["mean", "wco", "uwo"]] = Field(
        default_factory=lambda: [*_AGGREGATIONS],
        description="ensemble aggregations compared with the single member",
    )
    uwo_lambda: Annotated[float, Field(ge=0.0)] = Field(
        default=0.5, description="variance weight of UWO (Coste et al.'s best-of-n value)"
    )
    n_prompts: PosInt = Field(default=32, description="prompts of each seed's pool")
    pool_size: Annotated[int, Field(ge=2)] = Field(default=512, description="samples per prompt")
    temperature: PosFloat = Field(default=1.3, description="sampling temperature of the pools")
    max_new_tokens: PosInt | None = Field(
        default=None, description="response length budget in tokens; None: the task's default"
    )
    n_points: Annotated[int, Field(ge=3)] = Field(
        default=17, description="log-spaced n values on the curves"
    )


class MitigationStudyConfig(Strict):
    """The mitigation comparison (docs/methods.md §4): best-of-n selection variants from the members
    of one ensemble proxy, and arms each run with every seed, on the same prompts, proxy and
    settings. ``member`` is the single reward model of the baseline."""

    proxy: str = Field(
        description="an ensemble proxy of the study (Coste et al.: 5 members, 25% label noise)"
    )
    member: Annotated[int, Field(ge=0)] = Field(
        default=0,
        description=(
            "the member (of each seed's ensemble) that is the single reward model of the RL arms "
            "without aggregation; best-of-n compares every member and their average"
        ),
    )
    ensembles: Literal["per_seed", "fixed"] = Field(
        default="per_seed",
        description=(
            "per_seed: every seed trains its own ensemble (member seeds drawn from the seed, "
            "stream mitigation_members); fixed: the proxy's one ensemble for every seed"
        ),
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=3,
        description="seeds every arm runs with (intervals are over them)",
    )
    bon: MitigationBonConfig | None = Field(
        default_factory=MitigationBonConfig, description="best-of-n selection variants; null: none"
    )
    rl: list[MitigationRunConfig] = Field(default_factory=list, description="the RL arms")
    reference_samples: PosInt = Field(
        default=4, description="initial-policy samples per training prompt for LSC, PAR and Quark"
    )
    settings: RLConfig = Field(
        default_factory=RLConfig, description="the RL settings every arm shares"
    )

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
