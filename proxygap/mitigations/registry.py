"""The mitigation registry: every mitigation a config can name, described by its own row.

Each row of :data:`MITIGATIONS` (a :class:`MitigationSpec`) declares as data all that the rest
of the package asks about it, so no caller compares names to decide how to treat one:

- ``kind``: where it plugs in (a reward ``transform``; a ``constraint``, a transform that also
  learns Lagrange multipliers from each batch; a ``weight_update`` post-step hook);
- ``applies_to``: the optimisers whose hooks it fits (:data:`OPTIMISERS`);
- ``needs``: the inputs only the caller of the optimiser can make (:data:`INPUTS`, e.g. the
  rewards of reference samples or the policy being trained). They are supplied when the hook is
  built and never written in a config; the other keyword parameters of ``build`` are the
  hyperparameters a config gives;
- ``claim``: the published claim of the report that an arm with this mitigation tests, if any
  (:data:`CLAIMS`);
- ``reference`` and ``summary``: its source and a one-line description.

A row is checked when the registry is made (a need ``build`` does not accept, or an unknown
optimiser, kind or input, fails the import with the row named). :func:`check_params` validates
a config's choice when it loads; :func:`build_hook` builds one from the config's hyperparameters
and a mapping of inputs, taking from it exactly the inputs the row declares;
:func:`make_transform` and :func:`make_post_step` build one from keyword arguments. All of them
refuse unknown names and hyperparameters with the allowed ones in the message (one checker,
:func:`proxygap.schema.check_keywords`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from proxygap.mitigations.constrained import ConstrainedTransform, LagrangeMultipliers, Mode
from proxygap.mitigations.diversity import DiversityTransform
from proxygap.mitigations.elastic_reset import ElasticReset
from proxygap.mitigations.hooks import PostStepHook, RewardTransform
from proxygap.mitigations.transforms import (
    ClipTransform,
    LengthPenalty,
    LSCTransform,
    PARTransform,
    ReferenceCapTransform,
    WhitenTransform,
)
from proxygap.schema import check_keywords, keyword_parameters

Kind = Literal["transform", "constraint", "weight_update"]
KINDS: tuple[Kind, ...] = ("transform", "constraint", "weight_update")

OPTIMISERS: dict[str, str] = {
    "rl": "online RL: the hooks of proxygap.optimize.rl.train_rl",
    "quark": "Quark: proxygap.optimize.quark.train_quark",
    "bon": "best-of-n: the selection score of a sample pool",
    "daa": "direct alignment: proxygap.optimize.daa",
}

# What a caller can supply, in the order a caller makes them (reference rewards first).
INPUTS: dict[str, str] = {
    "ref_rewards": "{prompt: (M,) the run's reward on M initial-policy samples of the prompt}: "
    "the run needs reference samples",
    "group_size": "G, the responses per prompt (consecutive rows of a batch)",
    "policy": "the model being trained, at its initial weights",
    "components": "texts -> (B, C): the run's component rewards",
    "thresholds": "(C,): the components' proxy points",
}

CLAIMS: dict[str, str] = {
    "shaping": "Wang et al. 2024 (LSC) and Fu et al. 2025 (PAR): a bounded reward centred on the "
    "initial policy's rewards mitigates reward hacking",
    "drift_front": "Noukhovitch et al. 2023: a better gold-vs-drift front than a KL penalty",
}


@dataclass(frozen=True)
class MitigationSpec:
    """A named mitigation and what it declares about itself (see the module docstring)."""

    name: str
    kind: Kind
    applies_to: tuple[str, ...]
    build: Callable[..., Any]
    reference: str
    summary: str
    needs: frozenset[str] = field(default_factory=frozenset)
    claim: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        where = f"mitigation {self.name!r}"
        if self.kind not in KINDS:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; allowed: {list(KINDS)}")
        if not self.applies_to or not set(self.applies_to) <= set(OPTIMISERS):
            raise ValueError(
                f"{where}: applies_to {list(self.applies_to)}; allowed: a non-empty subset of "
                f"{list(OPTIMISERS)}"
            )
        unknown = sorted(self.needs - set(INPUTS))
        if unknown:
            raise ValueError(f"{where}: unknown needs {unknown}; allowed: {list(INPUTS)}")
        absent = sorted(self.needs - set(keyword_parameters(self.build)))
        if absent:
            raise ValueError(f"{where}: needs {absent}, which its build does not accept")
        if self.claim is not None and self.claim not in CLAIMS:
            raise ValueError(f"{where}: unknown claim {self.claim!r}; allowed: {list(CLAIMS)}")

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The keyword parameters of ``build`` a config gives, in order, with their defaults
        (``inspect.Parameter.empty`` if required): all but the ``needs``."""
        return {k: v for k, v in keyword_parameters(self.build).items() if k not in self.needs}

    @property
    def needs_references(self) -> bool:
        """Whether a run with it needs reference samples (its ``ref_rewards`` are theirs)."""
        return "ref_rewards" in self.needs


# ---------------------------------------------------------------- builders taking inputs
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


MITIGATIONS: dict[str, MitigationSpec] = {
    s.name: s
    for s in [
        MitigationSpec("lsc", "transform", ("rl",), _lsc,
                       "Wang et al. 2024, Transforming and Combining Rewards",
                       "log sigmoid(r - q-quantile of pi0 rewards for the prompt)",
                       needs=frozenset({"ref_rewards"}), claim="shaping"),
        MitigationSpec("par", "transform", ("rl",), _par,
                       "Fu et al. 2025, Reward Shaping to Mitigate Reward Hacking in RLHF",
                       "mean sigmoid(r - r_ref_m) over pi0 reference responses",
                       needs=frozenset({"ref_rewards"}), claim="shaping"),
        MitigationSpec("reference_cap", "transform", ("rl",), ReferenceCapTransform,
                       "Wang et al. 2024 (LSC without its smoothing); Fu et al. 2025 (bounded "
                       "rewards)", "min(r, q-quantile of pi0 rewards for the prompt)",
                       needs=frozenset({"ref_rewards"})),
        MitigationSpec("length_penalty", "transform", ("bon", "rl"), LengthPenalty,
                       "common baseline", "r - coef * response length"),
        MitigationSpec("clip", "transform", ("bon", "rl"), ClipTransform,
                       "common baseline", "r clipped to [low, high]"),
        MitigationSpec("whiten", "transform", ("rl",), WhitenTransform,
                       "common baseline", "batch-whitened r"),
        MitigationSpec("diversity", "transform", ("rl",), DiversityTransform,
                       "Li et al. 2025, Jointly Reinforcing Diversity and Quality (DARLING)",
                       "r * within-group n-gram diversity", needs=frozenset({"group_size"})),
        MitigationSpec("constrained", "constraint", ("rl",), _constrained,
                       "Moskovitz et al. 2023, Confronting Reward Model Overoptimization with "
                       "Constrained RLHF",
                       "Lagrangian mix of component rewards held at thresholds",
                       needs=frozenset({"components", "thresholds"})),
        MitigationSpec("elastic_reset", "weight_update", ("rl",), ElasticReset,
                       "Noukhovitch et al. 2023, Language Model Alignment with Elastic Reset",
                       "policy <- EMA every R steps, then EMA <- initial weights",
                       needs=frozenset({"policy"}), claim="drift_front"),
    ]
}  # fmt: skip


# ---------------------------------------------------------------- lookup, checks, builders
_WHAT = {"transform": "transform", "constraint": "constraint", "weight_update": "post-step hook"}


def _spec(name: str, kinds: Collection[str], what: str) -> MitigationSpec:
    allowed = sorted(n for n, s in MITIGATIONS.items() if s.kind in kinds)
    if name not in MITIGATIONS:
        raise ValueError(f"unknown {what} {name!r}; allowed: {allowed}")
    spec = MITIGATIONS[name]
    if spec.kind not in kinds:
        raise ValueError(
            f"{name!r} is a {spec.kind} mitigation, not a {what}; allowed {what}s: {allowed}"
        )
    return spec


def _call(spec: MitigationSpec, kw: Mapping[str, Any]) -> Any:
    check_keywords(
        keyword_parameters(spec.build),
        kw,
        unknown=f"unknown hyperparameter(s) {{names}} for {spec.name!r}; allowed: {{allowed}}",
        missing=f"{spec.name!r} needs {{names}}; allowed: {{allowed}}",
    )
    return spec.build(**kw)


def check_params(
    name: str, params: Mapping[str, Any], *, kind: Kind, optimiser: str = "rl", where: str
) -> MitigationSpec:
    """The row of ``name``, or a ValueError naming ``where`` (a config field) if ``name`` is not
    a mitigation of ``kind`` that applies to ``optimiser``, or ``params`` are not its
    hyperparameters (its declared ``needs`` excluded: the caller supplies those)."""
    allowed = sorted(
        n for n, s in MITIGATIONS.items() if s.kind == kind and optimiser in s.applies_to
    )
    if name not in allowed:
        raise ValueError(f"{where}.method: unknown {kind} {name!r}; allowed: {allowed}")
    spec = MITIGATIONS[name]
    check_keywords(
        spec.hyperparameters,
        params,
        unknown=f"{where}.params: unknown {{names}} for {name!r}; allowed: {{allowed}}",
        missing=f"{where}.params: {name!r} needs {{names}}",
    )
    return spec


def build_hook(
    name: str, params: Mapping[str, Any], inputs: Mapping[str, Any], *, kind: Kind
) -> Any:
    """Build ``name`` (a mitigation of ``kind``) with its hyperparameters ``params`` and, from
    ``inputs``, exactly the inputs its row declares it needs."""
    spec = _spec(name, (kind,), _WHAT[kind])
    absent = sorted(spec.needs - set(inputs))
    if absent:
        raise ValueError(f"{name!r} needs {absent} supplied; supplied: {sorted(inputs)}")
    given = sorted(spec.needs & set(params))
    if given:
        raise ValueError(f"{name!r}: {given} are supplied inputs, not hyperparameters")
    return _call(spec, {**params, **{n: inputs[n] for n in spec.needs}})


def make_transform(name: str, **kw: Any) -> RewardTransform:
    """A reward-transform hook (kinds ``transform`` and ``constraint``) by name; ``kw`` holds its
    hyperparameters and the inputs it needs."""
    return _call(_spec(name, ("transform", "constraint"), "transform"), kw)


def make_post_step(name: str, **kw: Any) -> PostStepHook:
    """A post-step hook (kind ``weight_update``) by name; pass ``policy=`` the initial model."""
    return _call(_spec(name, ("weight_update",), "post-step hook"), kw)
