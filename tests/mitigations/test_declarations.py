"""Mitigations describe themselves: a registry row's declarations (kind, optimisers, needs,
claim) drive config validation, what the study supplies and which claim the report tests, with
no name compared anywhere else; and the one keyword checker behind every registry."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from proxygap.config import MitigationRunConfig
from proxygap.mitigations import INPUTS, MITIGATIONS, MitigationSpec, build_hook, check_params
from proxygap.mitigations.constrained import ConstrainedTransform
from proxygap.mitigations.transforms import LengthPenalty
from proxygap.report.mitigation_claims import frontier_claim, transform_claim
from proxygap.schema import check_keywords, keyword_parameters
from proxygap.study.mitigation_hooks import build_hooks, hooks_need_references, supply

REF_REWARDS = {"p": np.array([0.0, 1.0]), "q": np.array([2.0, 2.0])}


class Fake:
    """A transform that records what it was built with: ``r * scale + group_size``."""

    def __init__(self, *, ref_rewards: dict, group_size: int, scale: float = 1.0) -> None:
        self.ref_rewards, self.group_size, self.scale = ref_rewards, group_size, scale

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        return rewards * self.scale + self.group_size


def _fake_row(**kw) -> MitigationSpec:
    row = dict(name="fake", kind="transform", applies_to=("rl",), build=Fake, reference="a test",
               summary="a test", needs=frozenset({"group_size", "ref_rewards"}))  # fmt: skip
    return MitigationSpec(**(row | kw))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> MitigationSpec:
    spec = _fake_row()
    monkeypatch.setitem(MITIGATIONS, "fake", spec)
    return spec


def _counting(calls: list[str]) -> dict:
    values = {"ref_rewards": REF_REWARDS, "group_size": 3, "policy": "pi", "components": "c",
              "thresholds": np.zeros(2)}  # fmt: skip

    def provider(name: str):
        return lambda: calls.append(name) or values[name]

    return {name: provider(name) for name in INPUTS}


# ---------------------------------------------------------------- the one keyword checker
def test_keyword_parameters_and_check_keywords():
    assert keyword_parameters(LengthPenalty) == {
        "coef": inspect.Parameter.empty,
        "length_fn": LengthPenalty.__init__.__kwdefaults__["length_fn"],
    }
    assert list(keyword_parameters(LengthPenalty, keyword_only=True)) == ["length_fn"]

    def f(a, *args, b, c=1, **kw):
        return a

    assert keyword_parameters(f) == {"a": inspect.Parameter.empty, "b": inspect.Parameter.empty,
                                     "c": 1}  # fmt: skip
    msgs = {"unknown": "unknown {names}; allowed: {allowed}", "missing": "needs {names}"}
    check_keywords(keyword_parameters(f), ["a", "b"], **msgs)
    with pytest.raises(ValueError, match=r"^unknown \['x', 'y'\]; allowed: \['a', 'b', 'c'\]$"):
        check_keywords(keyword_parameters(f), ["y", "a", "x"], **msgs)
    with pytest.raises(ValueError, match=r"^needs \['a', 'b'\]$"):
        check_keywords(keyword_parameters(f), ["c"], **msgs)


# ---------------------------------------------------------------- rows check themselves
def test_a_malformed_row_fails_naming_itself():
    with pytest.raises(ValueError, match=r"'fake': needs \['policy'\], which its build does not"):
        _fake_row(needs=frozenset({"policy"}))
    with pytest.raises(ValueError, match=r"'fake': unknown needs \['gold'\]; allowed: \['ref_re"):
        _fake_row(needs=frozenset({"gold"}))
    with pytest.raises(ValueError, match=r"'fake': applies_to \['ppo'\]; allowed: a non-empty"):
        _fake_row(applies_to=("ppo",))
    with pytest.raises(ValueError, match=r"'fake': unknown claim 'magic'; allowed: \['shaping'"):
        _fake_row(claim="magic")
    with pytest.raises(ValueError, match="'fake': unknown kind 'aggregation'"):
        _fake_row(kind="aggregation")
    spec = _fake_row()
    assert spec.needs_references and list(spec.hyperparameters) == ["scale"]


# ---------------------------------------------------------------- config validation
def test_check_params_names_the_field_and_the_allowed_names():
    with pytest.raises(
        ValueError, match=r"^transforms.0.params: unknown \['z'\] for 'lsc'; allowed: \['q'\]$"
    ):
        check_params("lsc", {"z": 1}, kind="transform", where="transforms.0")
    # a supplied input is not a hyperparameter
    with pytest.raises(ValueError, match=r"unknown \['ref_rewards'\] for 'par'; allowed: \['m'\]"):
        check_params("par", {"ref_rewards": {}}, kind="transform", where="transforms.0")
    with pytest.raises(ValueError, match=r"^post_step.params: 'elastic_reset' needs \['every'\]$"):
        check_params("elastic_reset", {}, kind="weight_update", where="post_step")
    with pytest.raises(ValueError, match=r"transforms.1.method: unknown transform 'nope'; allowed"):
        check_params("nope", {}, kind="transform", where="transforms.1")
    # the constraint is a row of another kind, not a transform an arm lists
    with pytest.raises(ValueError, match="unknown transform 'constrained'"):
        check_params("constrained", {}, kind="transform", where="transforms.0")
    # the optimisers a row applies to
    assert check_params("length_penalty", {"coef": 0.1}, kind="transform", optimiser="bon",
                        where="x").name == "length_penalty"  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown transform 'lsc'; allowed: \[.*'length_penalty'"):
        check_params("lsc", {}, kind="transform", optimiser="bon", where="x")


def test_a_new_row_is_validated_by_the_config(fake: MitigationSpec):
    arm = MitigationRunConfig(name="x", transforms=[{"method": "fake", "params": {"scale": 2.0}}])
    assert arm.transforms[0].method == "fake"
    with pytest.raises(ValidationError, match=r"unknown \['group_size'\] for 'fake'; allowed"):
        MitigationRunConfig(name="x", transforms=[{"method": "fake", "params": {"group_size": 2}}])
    # it declares reference rewards: the arm must start from the base policy
    with pytest.raises(ValidationError, match=r"transforms \['fake'\] compare with base-policy"):
        MitigationRunConfig(name="x", reference="soup", transforms=[{"method": "fake"}])


# ---------------------------------------------------------------- what the study supplies
def test_a_declared_need_is_supplied_once_and_only_it(fake: MitigationSpec):
    arm = MitigationRunConfig(
        name="x",
        transforms=[{"method": "fake", "params": {"scale": 2.0}}, {"method": "fake"}],
    )
    assert hooks_need_references(arm)
    calls: list[str] = []
    hooks = build_hooks(arm, _counting(calls))
    assert calls == ["ref_rewards", "group_size"]  # each once, in INPUTS order; nothing else
    first, second = hooks.transform.transforms  # type: ignore[attr-defined]
    assert first.ref_rewards is REF_REWARDS and first.group_size == 3 and first.scale == 2.0
    assert second.ref_rewards is REF_REWARDS and second.scale == 1.0
    # (r * 2 + 3) * 1 + 3
    np.testing.assert_allclose(hooks.transform(np.array([1.0]), ["t"], ["p"]), [8.0])
    assert not hooks_need_references(MitigationRunConfig(name="y"))


def test_a_need_without_a_provider_or_value_is_refused(fake: MitigationSpec):
    arm = MitigationRunConfig(name="x", transforms=[{"method": "fake"}])
    providers = _counting([])
    del providers["group_size"]
    with pytest.raises(ValueError, match=r"arm 'x' needs \['group_size'\], which the study does"):
        build_hooks(arm, providers)
    with pytest.raises(ValueError, match=r"arm 'x' needs \['ref_rewards'\] \(\{prompt"):
        supply(frozenset({"ref_rewards"}), {"ref_rewards": lambda: None}, who="arm 'x'")
    with pytest.raises(ValueError, match=r"'fake' needs \['group_size'\] supplied"):
        build_hook("fake", {}, {"ref_rewards": REF_REWARDS}, kind="transform")
    with pytest.raises(ValueError, match=r"'fake': \['group_size'\] are supplied inputs"):
        build_hook(
            "fake", {"group_size": 2}, {"ref_rewards": {}, "group_size": 3}, kind="transform"
        )


def test_the_constraint_is_built_through_its_row():
    arm = MitigationRunConfig(
        name="c", components=["a", "b"], constraint={"points_from": "s", "lr": 0.25}
    )
    calls: list[str] = []
    providers = _counting(calls)
    providers["components"] = lambda: (
        calls.append("components") or (lambda texts: np.ones((len(texts), 2)))
    )
    hooks = build_hooks(arm, providers)
    assert calls == ["components", "thresholds"]
    assert isinstance(hooks.transform, ConstrainedTransform)
    hooks.transform(np.zeros(2), ["a", "b"], ["p", "p"])
    assert hooks.post_step() == hooks.transform.metrics  # the multipliers, logged every step
    # every field of the constraint section is a hyperparameter of the row
    hyper = MITIGATIONS["constrained"].hyperparameters
    assert {"lr", "mode", "objective"} <= set(hyper) and not {"points_from"} & set(hyper)


# ---------------------------------------------------------------- what the report tests
def test_claims_follow_the_rows(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(MITIGATIONS, "fake", _fake_row())
    down = {"turned_down": {"mean": 1.0, "n": 3}}
    hist = [[{"reward/gold": 0.0, "d": 0.0}, {"reward/gold": 0.1, "d": 1.0}]] * 3
    arms = [MitigationRunConfig(name="base"), MitigationRunConfig(name="x", transforms=[
        {"method": "fake"}])]  # fmt: skip
    summary, hists = {"base": down, "x": down}, {"base": hist, "x": hist}
    assert "Not tested" in transform_claim(arms, summary, hists)
    monkeypatch.setitem(MITIGATIONS, "fake", _fake_row(claim="shaping"))
    assert "`x`: end gold minus baseline" in transform_claim(arms, summary, hists)
    er = MitigationRunConfig(name="er", post_step={"method": "elastic_reset", "params": {
        "every": 2}})  # fmt: skip
    assert "Not tested" not in frontier_claim([er, arms[0]], summary | {"er": down},
                                              hists | {"er": hist})  # fmt: skip
