"""The mitigation study's hooks: checked by name when the config loads, built when a run starts.

A config names a hook of :data:`proxygap.mitigations.MITIGATIONS` (a reward ``transform`` or a
``weight_update`` post-step hook) with its hyperparameters; the inputs only the study can make
are supplied here, never in the config:

- ``lsc`` (Wang et al. 2024) and ``par`` (Fu et al. 2025): ``ref_rewards``, the run's own reward
  on ``reference_samples`` initial-policy samples of every training prompt;
- ``diversity`` (DARLING, Li et al. 2025): ``group_size``, the RL group size;
- ``elastic_reset`` (Noukhovitch et al. 2023): ``policy``, the model being trained, at its
  initial weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from proxygap.mitigations import MITIGATIONS, make_post_step, make_transform
from proxygap.mitigations.transforms import ChainTransform
from proxygap.optimize.rl_hooks import PostStepHook, RewardTransform, identity_transform

SUPPLIED: dict[str, frozenset[str]] = {
    "lsc": frozenset({"ref_rewards"}),
    "par": frozenset({"ref_rewards"}),
    "diversity": frozenset({"group_size"}),
    "elastic_reset": frozenset({"policy"}),
}
NEEDS_REFERENCES = frozenset({"lsc", "par"})


def check_hook(method: str, params: Mapping[str, Any], *, kind: str, where: str) -> None:
    """Raise ValueError naming ``where`` if ``method`` is not an RL hook of ``kind`` or
    ``params`` are not its hyperparameters (the study-supplied inputs excluded)."""
    allowed = sorted(
        n
        for n, s in MITIGATIONS.items()
        if s.kind == kind and "rl" in s.applies_to and (kind != "transform" or n != "constrained")
    )
    if method not in allowed:
        raise ValueError(f"{where}.method: unknown {kind} {method!r}; allowed: {allowed}")
    sig = inspect.signature(MITIGATIONS[method].build).parameters
    supplied = SUPPLIED.get(method, frozenset())
    names = [n for n, p in sig.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    free = [n for n in names if n not in supplied]
    bad = sorted(set(params) - set(free))
    if bad:
        raise ValueError(f"{where}.params: unknown {bad} for {method!r}; allowed: {free}")
    missing = [
        n
        for n in free
        if sig[n].default is inspect.Parameter.empty
        and sig[n].kind is not inspect.Parameter.VAR_POSITIONAL
        and n not in params
    ]
    if missing:
        raise ValueError(f"{where}.params: {method!r} needs {missing}")


def build_transform(
    hooks: list[Any],
    *,
    ref_rewards: Mapping[str, np.ndarray] | None,
    group_size: int,
) -> RewardTransform:
    """The run's transforms (each a :class:`~proxygap.config.MitigationHookConfig`) chained in
    order, with the study's inputs supplied; the identity if there are none."""
    if not hooks:
        return identity_transform
    built = []
    for h in hooks:
        kw = dict(h.params)
        if h.method in NEEDS_REFERENCES:
            if ref_rewards is None:
                raise ValueError(f"{h.method!r} needs reference rewards")
            kw["ref_rewards"] = ref_rewards
        if h.method == "diversity":
            kw["group_size"] = group_size
        built.append(make_transform(h.method, **kw))
    return built[0] if len(built) == 1 else ChainTransform(built)


def build_post_step(hook: Any | None, *, policy: nn.Module) -> PostStepHook | None:
    """The run's post-step hook with the policy supplied, or None."""
    if hook is None:
        return None
    return make_post_step(hook.method, policy=policy, **hook.params)
