"""Mitigations of reward-model overoptimization as small composable pieces (docs/methods.md §4).

Each mitigation is one concept in one module. Those a config selects by name are rows of the
registry :data:`MITIGATIONS` (:mod:`proxygap.mitigations.registry`), and each row describes
itself: its kind, the optimisers it applies to, the inputs it needs from the caller and the
published claim it tests:

=================  ==========================================================================
kind               what it is, and where it plugs in
=================  ==========================================================================
``transform``      a :class:`~proxygap.mitigations.hooks.RewardTransform` (``hooks.transform``)
``constraint``     a transform that also learns Lagrange multipliers from each batch
``weight_update``  a :class:`~proxygap.mitigations.hooks.PostStepHook` (``hooks.post_step``)
=================  ==========================================================================

The other mitigations are used directly by the optimisers and the study: ensemble aggregations
(:mod:`proxygap.rewards.ensemble`), the weight average of a soup reference
(:mod:`proxygap.mitigations.soup`) and Quark's quantile pool (:mod:`proxygap.mitigations.quark`).
"""

from __future__ import annotations

from proxygap.mitigations.registry import (
    INPUTS,
    MITIGATIONS,
    OPTIMISERS,
    MitigationSpec,
    build_hook,
    check_params,
    make_post_step,
    make_transform,
)

__all__ = [
    "INPUTS",
    "MITIGATIONS",
    "OPTIMISERS",
    "MitigationSpec",
    "build_hook",
    "check_params",
    "make_post_step",
    "make_transform",
]
