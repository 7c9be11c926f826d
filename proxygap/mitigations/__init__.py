"""Mitigations of reward-model overoptimization as small composable pieces (METHODS.md §4).

Each mitigation is one concept in one module and is named in :data:`MITIGATIONS` with its kind
and the optimisers it applies to, so a config selects it by name:

=================  ==========================================================================
kind               what it is, and where it plugs in
=================  ==========================================================================
``aggregation``    a reward function from several reward models (the RL ``reward_fn``, or the
                   best-of-n selection score)
``transform``      a :class:`~proxygap.optimize.rl_hooks.RewardTransform` (``hooks.transform``)
``constraint``     a transform that also learns Lagrange multipliers from each batch
``weight_update``  a :class:`~proxygap.optimize.rl_hooks.PostStepHook` (``hooks.post_step``)
``reference``      builds the KL reference model (RL) or the reference model (DAA)
``sampling``       changes what the policy is conditioned on when sampling (Quark's tokens)
=================  ==========================================================================

``applies_to`` uses ``"bon"`` (best-of-n), ``"rl"`` (online RL) and ``"daa"`` (direct
alignment). :func:`make_transform`, :func:`make_post_step` and :func:`build_mitigation` build one
by name, rejecting unknown names and hyperparameters with the allowed ones in the message.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from proxygap.mitigations.constrained import ConstrainedTransform, LagrangeMultipliers, Mode
from proxygap.mitigations.diversity import DiversityTransform
from proxygap.mitigations.elastic_reset import ElasticReset
from proxygap.mitigations.ensemble import EnsembleReward, ScoreFn
from proxygap.mitigations.quark import QuarkPool
from proxygap.mitigations.soup import weight_average
from proxygap.mitigations.transforms import (
    ClipTransform,
    LengthPenalty,
    LSCTransform,
    PARTransform,
    WhitenTransform,
)
from proxygap.optimize.rl_hooks import PostStepHook, RewardTransform

Kind = Literal["aggregation", "transform", "weight_update", "reference", "constraint", "sampling"]


@dataclass(frozen=True)
class MitigationSpec:
    """A named mitigation: its kind, the optimisers it applies to, its builder and source."""

    name: str
    kind: Kind
    applies_to: tuple[str, ...]
    build: Callable[..., Any]
    reference: str
    summary: str


# ---------------------------------------------------------------- builders taking config inputs
def _ensemble(method: str) -> Callable[..., EnsembleReward]:
    def build(
        *, members: Sequence[ScoreFn], centre: Sequence[float] | None = None
    ) -> EnsembleReward:
        return EnsembleReward(members, centre=centre, method=method)

    return build


def _ensemble_uwo(
    *, members: Sequence[ScoreFn], centre: Sequence[float] | None = None, lam: float = 0.5
) -> EnsembleReward:
    return EnsembleReward(members, centre=centre, method="uwo", lam=lam)


def _lsc(*, ref_rewards: Mapping[str, np.ndarray], q: float = 0.85) -> LSCTransform:
    return LSCTransform.from_rewards(ref_rewards, q=q)


def _par(*, ref_rewards: Mapping[str, np.ndarray], m: int | None = None) -> PARTransform:
    if m is not None and m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    return PARTransform({p: np.asarray(v)[:m] for p, v in ref_rewards.items()})


def _constrained(
    *,
    components: Callable[[Sequence[str]], np.ndarray],
    thresholds: Sequence[float],
    lr: float,
    mode: Mode = "equality",
    objective: Literal["none", "reward", "sum"] = "none",
    init: float | Sequence[float] | None = None,
) -> ConstrainedTransform:
    multipliers = LagrangeMultipliers(thresholds, lr=lr, mode=mode, init=init)
    return ConstrainedTransform(components, multipliers, objective=objective)


_COSTE = "Coste et al. 2023, Reward Model Ensembles Help Mitigate Overoptimization"
MITIGATIONS: dict[str, MitigationSpec] = {
    s.name: s
    for s in [
        MitigationSpec("ensemble_mean", "aggregation", ("bon", "rl"), _ensemble("mean"), _COSTE,
                       "mean of k centred reward models"),
        MitigationSpec("ensemble_wco", "aggregation", ("bon", "rl"), _ensemble("wco"), _COSTE,
                       "worst-case (min) of k centred reward models"),
        MitigationSpec("ensemble_uwo", "aggregation", ("bon", "rl"), _ensemble_uwo, _COSTE,
                       "mean - lam * variance of k centred reward models"),
        MitigationSpec("lsc", "transform", ("rl",), _lsc,
                       "Wang et al. 2024, Transforming and Combining Rewards",
                       "log sigmoid(r - q-quantile of pi0 rewards for the prompt)"),
        MitigationSpec("par", "transform", ("rl",), _par,
                       "Fu et al. 2025, Reward Shaping to Mitigate Reward Hacking in RLHF",
                       "mean sigmoid(r - r_ref_m) over pi0 reference responses"),
        MitigationSpec("length_penalty", "transform", ("bon", "rl"), LengthPenalty,
                       "common baseline", "r - coef * response length"),
        MitigationSpec("clip", "transform", ("bon", "rl"), ClipTransform,
                       "common baseline", "r clipped to [low, high]"),
        MitigationSpec("whiten", "transform", ("rl",), WhitenTransform,
                       "common baseline", "batch-whitened r"),
        MitigationSpec("diversity", "transform", ("rl",), DiversityTransform,
                       "Li et al. 2025, Jointly Reinforcing Diversity and Quality (DARLING)",
                       "r * within-group n-gram diversity"),
        MitigationSpec("constrained", "constraint", ("rl",), _constrained,
                       "Moskovitz et al. 2023, Confronting Reward Model Overoptimization with "
                       "Constrained RLHF",
                       "Lagrangian mix of component rewards held at thresholds"),
        MitigationSpec("elastic_reset", "weight_update", ("rl",), ElasticReset,
                       "Noukhovitch et al. 2023, Language Model Alignment with Elastic Reset",
                       "policy <- EMA every R steps, then EMA <- initial weights"),
        MitigationSpec("soup_reference", "reference", ("rl", "daa"), weight_average,
                       "SALSA (soup of SFT models as the KL reference)",
                       "weight average of independently fine-tuned models"),
        MitigationSpec("quark", "sampling", ("rl",), QuarkPool,
                       "Lu et al. 2022, Quark: Controllable Text Generation with Reinforced "
                       "Unlearning", "reward-quantile tokens, LM loss + KL to pi0"),
    ]
}  # fmt: skip


# ---------------------------------------------------------------- factories
def _spec(name: str, kinds: tuple[str, ...], what: str) -> MitigationSpec:
    allowed = sorted(n for n, s in MITIGATIONS.items() if s.kind in kinds)
    if name not in MITIGATIONS:
        raise ValueError(f"unknown {what} {name!r}; allowed: {allowed}")
    spec = MITIGATIONS[name]
    if spec.kind not in kinds:
        raise ValueError(
            f"{name!r} is a {spec.kind} mitigation, not a {what}; allowed {what}s: {allowed}"
        )
    return spec


def _call(spec: MitigationSpec, kw: dict[str, Any]) -> Any:
    params = inspect.signature(spec.build).parameters
    variadic = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kw) - set(named))
    if unknown and not variadic:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for {spec.name!r}; allowed: {named}")
    missing = [
        n
        for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and n not in kw
    ]
    if missing:
        raise ValueError(f"{spec.name!r} needs {missing}; allowed: {named}")
    return spec.build(**kw)


def make_transform(name: str, **kw: Any) -> RewardTransform:
    """A reward-transform hook (kinds ``transform`` and ``constraint``) by name."""
    return _call(_spec(name, ("transform", "constraint"), "transform"), kw)


def make_post_step(name: str, **kw: Any) -> PostStepHook:
    """A post-step hook (kind ``weight_update``) by name; pass ``policy=`` the initial model."""
    return _call(_spec(name, ("weight_update",), "post-step hook"), kw)


def build_mitigation(name: str, **kw: Any) -> Any:
    """Any mitigation by name (e.g. an ``aggregation`` reward function, a ``reference`` model)."""
    return _call(
        _spec(name, tuple(sorted({s.kind for s in MITIGATIONS.values()})), "mitigation"), kw
    )


__all__ = [
    "MITIGATIONS",
    "MitigationSpec",
    "build_mitigation",
    "make_post_step",
    "make_transform",
]
