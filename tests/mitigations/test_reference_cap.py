"""The reference cap, ``min(r, q-quantile of pi0 rewards for the prompt)``: hand values, its
limit relation to LSC (Wang et al. 2024), and that its registry row alone makes it a config
option whose reference rewards the study supplies."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from proxygap.config import MitigationRunConfig
from proxygap.mitigations import MITIGATIONS, make_transform
from proxygap.mitigations.transforms import ReferenceCapTransform, lsc
from proxygap.optimize.loop import checked_rewards
from proxygap.study.mitigation_hooks import build_hooks, hooks_need_references

REF_REWARDS = {"p": np.array([0.0, 1.0, 2.0]), "q": np.array([4.0, 4.0, 4.0])}


def test_caps_each_reward_at_its_prompts_quantile():
    # 0.85 quantile of [0, 1, 2]: 0 + 0.85 * 2 = 1.7; of [4, 4, 4]: 4
    cap = ReferenceCapTransform(REF_REWARDS)
    assert cap.reference == pytest.approx({"p": 1.7, "q": 4.0})
    out = cap(np.array([1.0, 3.0, 5.0, 2.0]), ["t"] * 4, ["p", "p", "q", "q"])
    np.testing.assert_allclose(out, [1.0, 1.7, 4.0, 2.0])
    # the median of [0, 1, 2] is 1; q = 1 caps at the best reference
    half = ReferenceCapTransform(REF_REWARDS, q=0.5)
    np.testing.assert_allclose(half(np.array([1.5, -1.0]), ["t", "u"], ["p", "p"]), [1.0, -1.0])
    np.testing.assert_allclose(ReferenceCapTransform(REF_REWARDS, q=1.0).reference["p"], 2.0)
    with pytest.raises(ValueError, match=r"q must lie in \[0, 1\]"):
        ReferenceCapTransform(REF_REWARDS, q=1.5)
    with pytest.raises(KeyError, match="no reference cap for 1 prompt"):
        cap(np.array([0.0]), ["t"], ["unseen"])
    with pytest.raises(ValueError, match="must match"):
        cap(np.array([0.0, 1.0]), ["t"], ["p"])


def test_is_the_limit_of_lsc_far_from_the_reference():
    """log sigma(r - r_ref) -> min(r, r_ref) - r_ref as |r - r_ref| grows (error < e^-|m|)."""
    cap = ReferenceCapTransform(REF_REWARDS)
    r = np.array([1.7 - 30.0, 1.7 + 30.0, 4.0 - 25.0, 4.0 + 25.0])
    prompts = ["p", "p", "q", "q"]
    ref = np.array([1.7, 1.7, 4.0, 4.0])
    np.testing.assert_allclose(cap(r, ["t"] * 4, prompts) - ref, lsc(r, ref), atol=1e-10)


def test_the_registry_row_makes_it_a_config_option_with_supplied_references():
    spec = MITIGATIONS["reference_cap"]
    assert spec.needs_references and list(spec.hyperparameters) == ["q"]
    hook = make_transform("reference_cap", ref_rewards=REF_REWARDS, q=0.5)
    raw = np.array([1.5, 5.0])
    np.testing.assert_allclose(checked_rewards(raw, hook(raw, ["t", "u"], ["p", "q"]), n=2), [1, 4])
    arm = MitigationRunConfig(
        name="cap", transforms=[{"method": "reference_cap", "params": {"q": 0.5}}]
    )
    assert hooks_need_references(arm)
    calls: list[str] = []
    built = build_hooks(
        arm, {"ref_rewards": lambda: calls.append("ref_rewards") or REF_REWARDS}
    ).transform
    assert calls == ["ref_rewards"] and built.reference == {"p": 1.0, "q": 4.0}
    with pytest.raises(ValidationError, match=r"unknown \['ref_rewards'\] for 'reference_cap'"):
        MitigationRunConfig(
            name="cap", transforms=[{"method": "reference_cap", "params": {"ref_rewards": {}}}]
        )
    with pytest.raises(ValidationError, match=r"\['reference_cap'\] compare with base-policy"):
        MitigationRunConfig(name="cap", reference="sft", transforms=[{"method": "reference_cap"}])
