"""The mitigation study's hooks, built when an arm's run starts.

An arm names rows of :data:`proxygap.mitigations.MITIGATIONS` (reward ``transforms``, a
``post_step`` hook, and through ``constraint`` the :data:`CONSTRAINT` row) with their
hyperparameters, checked when the config loads (:func:`proxygap.mitigations.check_params`).
What a hook needs besides, its row declares
(:attr:`~proxygap.mitigations.MitigationSpec.needs`), and the study makes exactly those inputs
of the arm's run, each once, by the providers of :mod:`proxygap.study.mitigation_arms`:

- ``ref_rewards``: the arm's own reward on the ``reference_samples`` initial-policy samples of
  every training prompt (LSC, Wang et al. 2024; PAR, Fu et al. 2025);
- ``group_size``: the RL group size (DARLING, Li et al. 2025);
- ``policy``: the model being trained, at its initial weights (Elastic Reset, Noukhovitch et
  al. 2023);
- ``components`` and ``thresholds``: the arm's component scorer and the proxy points of its
  ``constraint.points_from`` arm (constrained RLHF, Moskovitz et al. 2023).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxygap.config import MitigationHookConfig, MitigationRunConfig
from proxygap.mitigations import INPUTS, MITIGATIONS, MitigationSpec, build_hook
from proxygap.mitigations.transforms import ChainTransform
from proxygap.optimize.rl_hooks import (
    PostStepHook,
    RewardTransform,
    RLHooks,
    identity_transform,
    no_post_step,
)

CONSTRAINT = "constrained"  # the registry row an arm's ``constraint`` section configures

Provider = Callable[[], Any]


def hook_specs(arm: MitigationRunConfig) -> list[MitigationSpec]:
    """The registry rows of the arm's hooks: its transforms in order, then its post-step hook
    and its constraint."""
    names = [t.method for t in arm.transforms]
    if arm.post_step is not None:
        names.append(arm.post_step.method)
    if arm.constraint is not None:
        names.append(CONSTRAINT)
    return [MITIGATIONS[n] for n in names]


def hooks_need_references(arm: MitigationRunConfig) -> bool:
    """Whether a hook of the arm declares it needs reference samples (``ref_rewards``)."""
    return any(s.needs_references for s in hook_specs(arm))


def supply(needs: frozenset[str], providers: Mapping[str, Provider], *, who: str) -> dict[str, Any]:
    """The inputs named by ``needs``, each made once by its provider, in the order of
    :data:`~proxygap.mitigations.INPUTS` (reference rewards first)."""
    absent = sorted(needs - set(providers))
    if absent:
        raise ValueError(f"{who} needs {absent}, which the study does not provide")
    inputs = {n: providers[n]() for n in INPUTS if n in needs}
    empty = [n for n, v in inputs.items() if v is None]
    if empty:
        raise ValueError(f"{who} needs {empty} ({'; '.join(INPUTS[n] for n in empty)}), got none")
    return inputs


def build_transform(
    hooks: Sequence[MitigationHookConfig], inputs: Mapping[str, Any]
) -> RewardTransform:
    """The transforms chained in order, each given the inputs it needs; the identity if there
    are none."""
    if not hooks:
        return identity_transform
    built = [build_hook(h.method, h.params, inputs, kind="transform") for h in hooks]
    return built[0] if len(built) == 1 else ChainTransform(built)


def build_post_step(
    hook: MitigationHookConfig | None, inputs: Mapping[str, Any]
) -> PostStepHook | None:
    """The post-step hook given the inputs it needs, or None."""
    if hook is None:
        return None
    return build_hook(hook.method, hook.params, inputs, kind="weight_update")


def build_hooks(arm: MitigationRunConfig, providers: Mapping[str, Provider]) -> RLHooks:
    """The arm's RL hooks: its transforms and post-step hook, or its constraint (whose
    multipliers and violations are the step's metrics). The inputs the hooks declare are made
    first, then the hooks are built in order."""
    who = f"arm {arm.name!r}"
    c = arm.constraint
    if c is not None and (arm.transforms or arm.post_step is not None):
        raise ValueError(f"{who}: a constraint replaces transforms and post-step hooks")
    needs = frozenset().union(*(s.needs for s in hook_specs(arm)))
    inputs = supply(needs, providers, who=who)
    if c is None:
        transform = build_transform(arm.transforms, inputs)
        post_step = build_post_step(arm.post_step, inputs) or no_post_step
        return RLHooks(transform=transform, post_step=post_step)
    params = {"lr": c.lr, "mode": c.mode, "objective": c.objective}
    constrained = build_hook(CONSTRAINT, params, inputs, kind="constraint")
    return RLHooks(transform=constrained, post_step=lambda **_: dict(constrained.metrics))
