"""Tests for the mitigation registry (proxygap.mitigations) and for every hook called exactly as
the RL recipe (proxygap.optimize.rl.train_rl) calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from proxygap.mitigations import MITIGATIONS, OPTIMISERS, make_post_step, make_transform
from proxygap.mitigations.constrained import ConstrainedTransform
from proxygap.mitigations.diversity import DiversityTransform
from proxygap.mitigations.elastic_reset import ElasticReset
from proxygap.mitigations.transforms import ChainTransform, LengthPenalty, LSCTransform
from proxygap.optimize.loop import checked_rewards
from proxygap.optimize.rl_hooks import RLHooks

KINDS = {"transform", "weight_update", "constraint"}
REF_REWARDS = {"p": np.array([0.0, 1.0, 2.0]), "q": np.array([4.0, 4.0, 4.0])}


def test_registry_is_well_formed():
    assert set(MITIGATIONS) >= {
        "lsc", "par", "length_penalty", "clip", "whiten", "elastic_reset", "constrained",
        "diversity",
    }  # fmt: skip
    for name, spec in MITIGATIONS.items():
        assert spec.name == name
        assert spec.kind in KINDS
        assert spec.applies_to and set(spec.applies_to) <= set(OPTIMISERS)
        assert spec.reference and spec.summary and callable(spec.build)
    assert MITIGATIONS["elastic_reset"].kind == "weight_update"
    assert MITIGATIONS["length_penalty"].applies_to == ("bon", "rl")
    # what each needs from the caller, and whether that means reference samples (a new row
    # declares its own: these are the rows' declarations, not a list to extend)
    needs = {
        "lsc": {"ref_rewards"}, "par": {"ref_rewards"}, "diversity": {"group_size"},
        "constrained": {"components", "thresholds"}, "elastic_reset": {"policy"},
        "length_penalty": set(), "clip": set(), "whiten": set(),
    }  # fmt: skip
    assert {n: MITIGATIONS[n].needs for n in needs} == needs
    assert [n for n in needs if MITIGATIONS[n].needs_references] == ["lsc", "par"]
    assert list(MITIGATIONS["lsc"].hyperparameters) == ["q"]
    assert list(MITIGATIONS["length_penalty"].hyperparameters) == ["coef", "length_fn"]


def test_make_transform_builds_by_name_with_the_right_numbers():
    # LSC reference of prompt p: 0.85 quantile of [0, 1, 2] = 1.7; of q: 4
    lsc = make_transform("lsc", ref_rewards=REF_REWARDS)
    assert isinstance(lsc, LSCTransform)
    np.testing.assert_allclose(
        lsc(np.array([1.7, 4.0]), ["t", "u"], ["p", "q"]), np.log([0.5, 0.5]), atol=1e-12
    )
    # PAR with m = 1 uses the first reference only: sigma(0 - 0) = 1/2, sigma(4 - 4) = 1/2
    par1 = make_transform("par", ref_rewards=REF_REWARDS, m=1)
    np.testing.assert_allclose(par1(np.array([0.0, 4.0]), ["t", "u"], ["p", "q"]), [0.5, 0.5])
    # all three references of p: (sigma(1) + sigma(0) + sigma(-1)) / 3 = (1 + 1/2) / 3 = 1/2
    par3 = make_transform("par", ref_rewards=REF_REWARDS)
    np.testing.assert_allclose(par3(np.array([1.0]), ["t"], ["p"]), [0.5])
    lp = make_transform("length_penalty", coef=0.5)
    np.testing.assert_allclose(lp(np.array([1.0]), ["p a b"], ["p"]), [0.0])
    assert isinstance(make_transform("diversity", group_size=2), DiversityTransform)
    con = make_transform(
        "constrained", components=lambda t: np.ones((len(t), 2)), thresholds=[0, 0], lr=0.1
    )
    assert isinstance(con, ConstrainedTransform)


def test_factories_reject_unknown_names_kinds_and_hyperparameters():
    with pytest.raises(ValueError, match=r"unknown transform 'nope'; allowed: \[.*'lsc'.*\]"):
        make_transform("nope")
    with pytest.raises(ValueError, match="'elastic_reset' is a weight_update mitigation"):
        make_transform("elastic_reset")
    with pytest.raises(ValueError, match=r"'lsc' is a transform mitigation.*\['elastic_reset'\]"):
        make_post_step("lsc")
    with pytest.raises(
        ValueError,
        match=r"unknown hyperparameter\(s\) \['bogus'\] for 'length_penalty'; "
        r"allowed: \['coef', 'length_fn'\]",
    ):
        make_transform("length_penalty", coef=0.1, bogus=1)
    with pytest.raises(ValueError, match=r"'length_penalty' needs \['coef'\]"):
        make_transform("length_penalty")
    with pytest.raises(ValueError, match=r"'lsc' needs \['ref_rewards'\]"):
        make_transform("lsc", q=0.5)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['lam'\]"):
        make_transform("clip", low=0.0, high=1.0, lam=0.1)
    with pytest.raises(ValueError, match="unknown post-step hook 'nope'"):
        make_post_step("nope")


def test_make_post_step_builds_elastic_reset():
    hook = make_post_step("elastic_reset", policy=nn.Linear(2, 1), every=4)
    assert isinstance(hook, ElasticReset) and hook.every == 4 and hook.eta == 0.995


def test_hooks_called_as_the_rl_recipe_calls_them():
    """The recipe does ``hooks.transform(raw, texts, rows)`` then ``checked_rewards`` (float64
    ``(B,)``, finite), and ``hooks.post_step(policy=, ref=, optimizer=, step=step + 1)`` with
    metrics merged into the step's row."""
    rows = ["p", "p", "q", "q"]  # G = 2 samples per prompt, consecutive
    texts = ["p a b", "p c d", "q a", "q a"]
    raw = np.array([0.5, 1.5, 4.0, 5.0])
    transforms = [
        make_transform("lsc", ref_rewards=REF_REWARDS),
        make_transform("par", ref_rewards=REF_REWARDS),
        make_transform("length_penalty", coef=0.1),
        make_transform("clip", low=-1.0, high=1.0),
        make_transform("whiten"),
        make_transform("diversity", group_size=2),
        make_transform(
            "constrained",
            components=lambda t: np.stack([np.ones(len(t)), np.arange(len(t), dtype=float)], 1),
            thresholds=[0.0, 1.0],
            lr=0.1,
            objective="reward",
        ),
        ChainTransform([LengthPenalty(0.1), make_transform("diversity", group_size=2)]),
    ]
    for t in transforms:
        hooks = RLHooks(transform=t)
        reward = checked_rewards(raw, hooks.transform(raw, texts, rows), n=4)
        assert reward.shape == (4,) and reward.dtype == np.float64
        assert all(isinstance(v, float) for v in (getattr(t, "metrics", None) or {}).values())
    policy, ref = nn.Linear(2, 1), nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(policy.parameters())
    hooks = RLHooks(post_step=make_post_step("elastic_reset", policy=policy, every=2))
    for step in range(3):
        metrics = hooks.post_step(policy=policy, ref=ref, optimizer=optimizer, step=step + 1)
        row = {"train/loss": 0.0, **(metrics or {})}
        assert row["elastic/reset"] == float((step + 1) % 2 == 0)
        assert all(isinstance(v, float) for v in row.values())
