"""Resuming RL, Quark and DAA runs from their newest checkpoint (``optimize/checkpoint.py`` and the
loop's ``resume``): a run stopped after its first checkpoint and resumed in fresh objects ends
with the numbers, examples and kept policies of a run that was never stopped, and the steps
before the checkpoint are not taken again.

A stop is an exception raised by a step hook once step 3 is recorded, after the checkpoint
taken before the evaluation at step 2 and before the next one: what a kill leaves on disk (the
checkpoint is renamed into place whole; see tests/study/test_resume_kill.py for SIGKILL).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from proxygap.data.preferences import Pairs
from proxygap.mitigations import make_post_step, make_transform
from proxygap.models.tiny import tiny_gpt2_config
from proxygap.monitor.detector import Monitor
from proxygap.optimize.checkpoint import CheckpointError, PolicyKeeper, prune_checkpoints
from proxygap.optimize.daa import DAAConfig, train_daa
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.optimize.loop import LoopResult, Watchers
from proxygap.optimize.quark import QuarkSettings, train_quark
from proxygap.optimize.rl import RLConfig, train_rl
from proxygap.optimize.rl_hooks import RLHooks
from proxygap.sampling.generate import encode_prompts
from proxygap.tasks.reviews.build import build_tokenizer

TOK = build_tokenizer()
PROMPTS = ["i enjoyed", "the characters", "the plot", "i hated", "the movie", "the hero"]
EVAL_PROMPTS = ["the ending", "i loved"]


class Stop(Exception):
    """Stands for a kill: raised by a step hook."""


def tiny_lm() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        tiny_gpt2_config(TOK, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    ).eval()


def join(prompts, responses) -> list[str]:
    return [f"{p} {r}" for p, r in zip(prompts, responses, strict=True)]


def reward(texts) -> np.ndarray:
    return np.array([t.split().count("great") + 0.1 * len(t.split()) for t in texts])


def evaluator(ref: GPT2LMHeadModel) -> PolicyEvaluator:
    return PolicyEvaluator(
        ref=ref, tokenizer=TOK, join=join, prompts=EVAL_PROMPTS,
        prompt_ids=encode_prompts(TOK, EVAL_PROMPTS), gold=reward, proxy=reward,
        n_per_prompt=2, max_new_tokens=6, seed=5,
    )  # fmt: skip


def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def watched(policy, folder: Path, stop_at: int | None) -> tuple[Watchers, list[float]]:
    """The monitor and a policy keeper (both with memory a checkpoint must keep), and a step
    hook that records the steps taken and stops the run once ``stop_at`` is recorded."""
    keeper, taken = PolicyKeeper(policy, TOK, folder), []

    def on_step(row: dict[str, float]) -> None:
        taken.append(row["step"])
        if row["step"] == stop_at:
            raise Stop

    watch = Watchers(on_evaluate=[Monitor(), keeper], on_step=[on_step], on_close=[keeper.close])
    return watch, taken


RL = RLConfig(
    algo="ppo", steps=5, prompts_per_step=2, group_size=2, eval_every=2, lr=3e-3,
    kl_coef=0.05, kl_controller="adaptive", kl_target=0.5, kl_horizon=100.0,
    lr_schedule="cosine", warmup_steps=2, eval_prompts=2, eval_samples_per_prompt=2,
)  # fmt: skip
# a critic, an adaptive KL controller and a schedule: every piece of trainer state matters


def rl_run(folder: Path, *, stop_at: int | None = None, cfg: RLConfig = RL):
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    watch, taken = watched(policy, folder / "kept", stop_at)
    result = train_rl(
        policy, ref, TOK, cfg=cfg, train_prompts=PROMPTS, join=join, reward_fn=reward,
        evaluator=evaluator(ref), log=lambda _: None, checkpoint_dir=folder / "checkpoints",
        resume=True, keep_checkpoints=1, watch=watch,
    )  # fmt: skip
    return result, policy, taken


def _same_run(a: LoopResult, b: LoopResult, folder_a: Path, folder_b: Path) -> None:
    assert without_time(a.history) == without_time(b.history)
    assert without_time(a.steps) == without_time(b.steps)
    assert a.examples == b.examples
    for name in ("policy-final", "policy-best"):
        weights = "model.safetensors"
        assert (folder_a / name / weights).read_bytes() == (folder_b / name / weights).read_bytes()


@pytest.fixture(scope="module")
def rl_reference(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("reference")
    result, policy, taken = rl_run(folder)
    return folder, result, policy, taken


def test_rl_resumes_from_its_checkpoint_with_the_numbers_of_an_uninterrupted_run(
    rl_reference, tmp_path: Path
) -> None:
    ref_folder, reference, ref_policy, ref_taken = rl_reference
    assert ref_taken == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(Stop):
        rl_run(tmp_path, stop_at=3)
    # checkpoints before the evaluations at 2 and 4: only the one at 2 was written
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]
    result, policy, taken = rl_run(tmp_path)
    assert taken == [3.0, 4.0, 5.0]  # steps 1 and 2 were not taken again
    assert result.resumed_at == 2 and reference.resumed_at is None
    assert [r["step"] for r in result.history] == [0.0, 2.0, 4.0, 5.0]
    assert "monitor/score" in result.history[-1] and result.steps[0]["kl/beta"] == 0.05
    _same_run(result, reference, tmp_path / "kept", ref_folder / "kept")
    for a, b in zip(policy.state_dict().values(), ref_policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the newest checkpoint only: the one before the last evaluation
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000005"]


def test_checkpointing_changes_no_number(rl_reference) -> None:
    _, reference, _, _ = rl_reference
    ref = tiny_lm()
    plain = train_rl(
        copy.deepcopy(ref), ref, TOK, cfg=RL, train_prompts=PROMPTS, join=join,
        reward_fn=reward, evaluator=evaluator(ref), log=lambda _: None,
    )  # fmt: skip
    assert without_time(plain.history) == [
        {k: v for k, v in r.items() if not k.startswith(("time/", "monitor/"))}
        for r in without_time(reference.history)
    ]


def test_a_checkpoint_of_other_settings_is_refused(rl_reference, tmp_path: Path) -> None:
    with pytest.raises(Stop):
        rl_run(tmp_path, stop_at=3)
    with pytest.raises(CheckpointError, match=r"other settings \(lr\)"):
        rl_run(tmp_path, cfg=RL.model_copy(update={"lr": 1e-3}))


def test_prune_keeps_the_newest_and_removes_interrupted_writes(tmp_path: Path) -> None:
    for step in (2, 4, 10):
        (tmp_path / f"step-{step:06d}").mkdir()
        (tmp_path / f"step-{step:06d}" / "trainer_state.pt").write_bytes(b"x")
    (tmp_path / ".step-000012.ab12.tmp").mkdir()  # what a kill while saving leaves
    (tmp_path / ".step-000012.ab12.tmp" / "policy").mkdir()
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000010"]


# ---------------------------------------------------------------- direct alignment
def _pairs(n: int, subjects: list[str]) -> Pairs:
    prompts = [f"the {subjects[i % len(subjects)]}" for i in range(n)]
    return Pairs(prompt=prompts, chosen=["was great ."] * n, rejected=["was bad ."] * n)


DAA = DAAConfig(loss="dpo", beta=0.5, lr=3e-3, batch_size=8, epochs=2, warmup=3,
                eval_at=[0, 0.5, 1.0], eval_prompts=2, eval_samples_per_prompt=2)  # fmt: skip


def daa_run(folder: Path, *, stop_at: int | None = None):
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    watch, taken = watched(policy, folder / "kept", stop_at)
    result = train_daa(
        policy, ref, TOK, _pairs(32, ["acting", "plot", "story", "music"]),
        _pairs(8, ["villain", "hero"]), cfg=DAA, evaluator=evaluator(ref), log=lambda _: None,
        watch=watch, checkpoint_dir=folder / "checkpoints", resume=True, keep_checkpoints=1,
    )  # fmt: skip
    return result, taken


def test_daa_resumes_from_its_checkpoint_with_the_numbers_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    reference, ref_taken = daa_run(tmp_path / "reference")
    assert [r["step"] for r in reference.history] == [0.0, 2.0, 4.0, 8.0]
    with pytest.raises(Stop):
        daa_run(tmp_path / "stopped", stop_at=3)
    result, taken = daa_run(tmp_path / "stopped")
    assert ref_taken == [float(s) for s in range(1, 9)]
    assert taken == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # the data order continues at pair 16
    _same_run(result, reference, tmp_path / "stopped" / "kept", tmp_path / "reference" / "kept")


# ---------------------------------------------------------------- Quark and stateful hooks
QUARK_RL = RLConfig(
    steps=5, prompts_per_step=2, group_size=2, eval_every=2, lr=3e-3, lr_schedule="cosine",
    warmup_steps=2, eval_prompts=2, eval_samples_per_prompt=2,
)  # fmt: skip


def quark_run(folder: Path, *, stop_at: int | None = None):
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    watch, taken = watched(policy, folder / "kept", stop_at)
    result = train_quark(
        policy, ref, TOK, cfg=QUARK_RL, quark=QuarkSettings(k=3, batch_size=4),
        train_prompts=PROMPTS, join=join, reward_fn=reward, evaluator=evaluator(ref),
        log=lambda _: None, watch=watch, checkpoint_dir=folder / "checkpoints", resume=True,
        keep_checkpoints=1,
    )  # fmt: skip
    return result, taken


def test_quark_resumes_with_its_pool_and_the_numbers_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """The pool grows by 4 samples a step and is drawn from by a seeded generator: a resumed
    run that filled it again with initial samples, or redrew from a fresh generator, would
    train on other batches and end with other weights."""
    reference, ref_taken = quark_run(tmp_path / "reference")
    with pytest.raises(Stop):
        quark_run(tmp_path / "stopped", stop_at=3)
    state = torch.load(
        tmp_path / "stopped" / "checkpoints" / "step-000002" / "trainer_state.pt",
        weights_only=True,
    )
    assert len(state["pool"]["rewards"]) == 4 + 2 * 4  # initial samples, then 4 per step
    result, taken = quark_run(tmp_path / "stopped")
    assert ref_taken == [1.0, 2.0, 3.0, 4.0, 5.0] and taken == [3.0, 4.0, 5.0]
    assert result.resumed_at == 2
    assert [r["quark/pool_size"] for r in result.steps] == [8.0, 12.0, 16.0, 20.0, 24.0]
    _same_run(result, reference, tmp_path / "stopped" / "kept", tmp_path / "reference" / "kept")


def hooked_run(folder: Path, *, stop_at: int | None = None):
    """GRPO with the two mitigation hooks that remember earlier steps, built by the registry
    as the mitigation study builds them: Elastic Reset (its EMA, reset at step 3, right after
    the checkpoint at 2) and a constraint (its Lagrange multipliers, updated every step)."""
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    watch, taken = watched(policy, folder / "kept", stop_at)
    components = lambda texts: np.stack(  # noqa: E731
        [[t.split().count("great") for t in texts], [0.1 * len(t.split()) for t in texts]], axis=1
    ).astype(float)
    hooks = RLHooks(
        transform=make_transform(
            "constrained", components=components, thresholds=[0.2, 0.5], lr=0.5
        ),
        post_step=make_post_step("elastic_reset", policy=policy, eta=0.5, every=3),
    )
    cfg = RL.model_copy(update={"algo": "grpo", "kl_mode": "loss"})
    result = train_rl(
        policy, ref, TOK, cfg=cfg, train_prompts=PROMPTS, join=join, reward_fn=reward,
        evaluator=evaluator(ref), hooks=hooks, log=lambda _: None, watch=watch,
        checkpoint_dir=folder / "checkpoints", resume=True, keep_checkpoints=1,
    )  # fmt: skip
    return result, taken, hooks


def test_rl_hooks_resume_with_their_memory(tmp_path: Path) -> None:
    reference, _, ref_hooks = hooked_run(tmp_path / "reference")
    with pytest.raises(Stop):
        hooked_run(tmp_path / "stopped", stop_at=3)
    state = torch.load(
        tmp_path / "stopped" / "checkpoints" / "step-000002" / "trainer_state.pt",
        weights_only=True,
    )
    assert set(state["hooks"]) == {"transform", "post_step"}
    assert state["hooks"]["post_step"]["resets"] == 0
    result, taken, hooks = hooked_run(tmp_path / "stopped")
    assert taken == [3.0, 4.0, 5.0] and result.resumed_at == 2
    assert [r["elastic/reset"] for r in result.steps] == [0.0, 0.0, 1.0, 0.0, 0.0]
    _same_run(result, reference, tmp_path / "stopped" / "kept", tmp_path / "reference" / "kept")
    raw = hooks.transform.multipliers.raw  # type: ignore[attr-defined]
    assert np.array_equal(raw, ref_hooks.transform.multipliers.raw)  # type: ignore[attr-defined]
    assert hooks.post_step.resets == ref_hooks.post_step.resets == 1  # type: ignore[attr-defined]
