"""proxygap inside TRL 1.16: reward functions in TRL's signature checked against hand
computations, and a real ``GRPOTrainer`` run (the reviews task's 0.6 M-parameter policy, CPU,
3 steps of 2 prompts x 2 samples) with ``ProxygapCallback``, checked against TRL's own logged
numbers (its ``reward`` is the weighted sum the callback calls ``reward/proxy``; its ``kl`` is
the token mean of the same unclamped k3)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from proxygap.integrations.scoring import EnsembleScorer, concat_join, text_join
from proxygap.integrations.trl import (
    GoldReward,
    ProxygapCallback,
    TRLReward,
    ensemble_reward,
    gold_reward,
    kl_metrics,
    lsc_reward,
    monitor_reward,
    par_reward,
    reference_rewards,
)
from proxygap.integrations.trl_kl import UNLIKELY_CALIBRATION, KLProbe
from proxygap.integrations.trl_rewards import take
from proxygap.models.loading import load_policy, load_reward_model
from proxygap.rewards.reward_model import score_texts
from proxygap.runs import load_run
from proxygap.tasks import get_task

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASK = get_task("reviews")


def join_for(tok) -> Any:
    return text_join(" ", strip_prefix=f"{tok.bos_token} ")


PROMPTS = ["<bos> the movie", "<bos> the plot was"]
COMPLETIONS = ["was great .", "good but boring ."]
REFERENCE = ["the movie was bad .", "the acting is very good .", "i loved the music ."]


def test_ensemble_reward_is_wco_and_uwo_of_the_members(member_paths, tok):
    """The reward TRL receives equals WCO / UWO computed by hand on each member's scores,
    standardised on the reference texts."""
    texts = ["the movie was great .", "the plot was good but boring ."]
    raw = np.stack(
        [score_texts(load_reward_model(p), tok, texts) for p in member_paths], axis=1
    )  # (2, 3)
    ref = np.stack([score_texts(load_reward_model(p), tok, REFERENCE) for p in member_paths], 1)
    z = (raw - ref.mean(axis=0)) / ref.std(axis=0)  # population SD, as Coste et al.
    wco = z.min(axis=1)
    uwo = z.mean(axis=1) - 0.25 * ((z - z.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)
    state = object()
    for aggregation, expected in (("wco", wco), ("uwo", uwo)):
        fn = ensemble_reward(
            member_paths, aggregation=aggregation, uwo_lambda=0.25, reference=REFERENCE,
            join=join_for(tok),
        )  # fmt: skip
        assert fn.__name__ == f"ensemble_{aggregation}"
        out = fn(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=[[1, 2], [3]],
                 trainer_state=state, log_metric=lambda *a: None)  # fmt: skip
        assert out == pytest.approx(expected.tolist(), abs=1e-6)
        (item,) = take(state)
        assert item.role == "proxy" and item.members is not None
        np.testing.assert_allclose(item.members, z, atol=1e-6)
        assert item.lengths is not None and item.lengths.tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        EnsembleScorer.from_folders(member_paths[:1], aggregation="max")


def test_transforms_gold_and_joins_by_hand():
    class Fixed(TRLReward):
        def score(self, texts, prompts):
            return np.array([1.0, 3.0]), None

    base = Fixed("fixed")
    ref = {"a": np.array([1.0, 3.0]), "b": np.array([1.0, 3.0])}
    # PAR row 1: (sigmoid(0) + sigmoid(-2)) / 2; row 2: (sigmoid(2) + sigmoid(0)) / 2
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    out = par_reward(base, ref)(prompts=["a", "b"], completions=["x", "y"])
    assert out == pytest.approx([(0.5 + sig(-2)) / 2, (sig(2) + 0.5) / 2], rel=1e-12)
    # LSC with q = 0.5: r_ref = median of (1, 3) = 2; log sigmoid(1 - 2), log sigmoid(3 - 2)
    out = lsc_reward(base, ref, q=0.5)(prompts=["a", "b"], completions=["x", "y"])
    assert out == pytest.approx([math.log(sig(-1)), math.log(sig(1))], rel=1e-12)
    with pytest.raises(KeyError, match="no PAR reference for 1 prompt"):
        par_reward(base, ref)(prompts=["a", "zzz"], completions=["x", "y"])

    gold = gold_reward(lambda texts: [len(t) for t in texts], scale=2.0)
    assert isinstance(gold, GoldReward) and gold.role == "gold"
    assert gold(prompts=["ab", "c"], completions=["c", "de"]) == [1.5, 1.5]
    assert text_join(" ", strip_prefix="<bos> ")(["<bos> p", ""], ["r", "s"]) == ["p r", "s"]
    with pytest.raises(TypeError, match="conversational"):
        concat_join([[{"role": "user", "content": "hi"}]], ["x"])


def test_monitor_reward_passes_through_sync_and_async():
    def bonus(prompts, completions, **kwargs):
        return [float(len(c)) for c in completions]

    async def abonus(prompts, completions, **kwargs):
        return [float(len(c)) + 1 for c in completions]

    state = object()
    wrapped = monitor_reward(bonus)
    assert wrapped.__name__ == "bonus"
    assert wrapped(prompts=["p"], completions=["abc"], trainer_state=state) == [3.0]
    awrapped = monitor_reward(abonus, role="gold", name="g")
    out = asyncio.run(awrapped(prompts=["p"], completions=["ab"], trainer_state=state))
    assert out == [3.0]
    a, b = take(state)
    assert (a.name, a.role, a.rewards.tolist()) == ("bonus", "proxy", [3.0])
    assert (b.name, b.role, b.rewards.tolist()) == ("g", "gold", [3.0])


def test_kl_metrics_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, -100.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the 9.0 is padding
    m = kl_metrics(logp, ref, mask, clamp=20.0)
    # lr row 1: 0.5, -1 (k1 sum -0.5); row 2: 0, -99 (sum -99) -> mean -49.75
    assert m["kl/k1"] == pytest.approx(-49.75)
    # k3(x) = exp(-x) - 1 + x: row 1 k3(0.5) + k3(-1); row 2 k3(0) + k3(-20) (clamped)
    k3 = lambda x: math.exp(-x) - 1 + x  # noqa: E731
    assert m["kl/k3"] == pytest.approx((k3(0.5) + k3(-1) + k3(-20)) / 2, rel=1e-6)
    assert m["kl/clamped"] == 1.0
    assert m["signal/entropy"] == pytest.approx((1 + 2 + 0.5 + 100) / 4)


def test_kl_probe_weights_batches_and_says_when_it_cannot(caplog):
    probe = KLProbe()
    zero, one = torch.zeros(1, 2), torch.ones(1, 2)
    probe._add(zero, zero, one)  # B = 1: k1 = 0
    probe._add(torch.zeros(3, 2), -torch.ones(3, 2), torch.ones(3, 2))  # B = 3: k1 = 2
    pooled = probe.pop()
    assert pooled["kl/k1"] == pytest.approx((1 * 0.0 + 3 * 2.0) / 4)  # weighted by sequences
    assert probe.pop() == {}
    probe.attach(SimpleNamespace())  # a trainer without per-token log-probs
    assert probe.status.startswith("no KL: SimpleNamespace exposes no per-token log-probs")
    probe.trainer = SimpleNamespace(ref_model=None)
    with caplog.at_level(logging.WARNING):
        probe._measure({"completion_mask": torch.ones(1, 2)})
    assert "beta = 0" in probe.status and "ref_model" in caplog.text and probe.pop() == {}


def test_kl_probe_calibrates_the_unlikely_cutoff_on_its_first_completions():
    probe = KLProbe()
    # batches of 64 one-token completions with reference NLLs 1..64, then 65..128: the first
    # only calibrates (no rate), the second completes the UNLIKELY_CALIBRATION = 128 and fixes
    # the cutoff at the 0.99-quantile of 1..128 (126.73); its row reports the pool's own share
    assert UNLIKELY_CALIBRATION == 128
    ones = torch.ones(64, 1)
    probe._add(torch.zeros(64, 1), -torch.arange(1.0, 65.0)[:, None], ones)
    assert probe.unlikely_cutoff is None and "signal/unlikely_rate" not in probe.pop()
    probe._add(torch.zeros(64, 1), -torch.arange(65.0, 129.0)[:, None], ones)
    cutoff = float(np.quantile(np.arange(1.0, 129.0), 0.99))
    assert probe.unlikely_cutoff == pytest.approx(cutoff)
    assert probe.pop()["signal/unlikely_rate"] == pytest.approx(2 / 128)  # 127 and 128
    # a later batch of two-token completions, padding (-inf) masked, one completion masked out
    # entirely (left out): NLLs 50, 150, 127, 200 -> 150, 127 and 200 pass 126.73
    ref = torch.tensor(
        [[-50.0, -50.0], [-150.0, -math.inf], [-126.0, -128.0], [-200.0, -200.0], [-900.0, -9.0]]
    )
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    probe._add(torch.zeros(5, 2), ref, mask)
    assert probe.pop()["signal/unlikely_rate"] == pytest.approx(3 / 4)
    assert probe.unlikely_cutoff == pytest.approx(cutoff)  # fixed once calibrated
    # a batch whose completions were all masked out reports no share
    probe._add(torch.zeros(2, 2), ref[:2], torch.zeros(2, 2))
    assert "signal/unlikely_rate" not in probe.pop()
    probe.restart()  # a fresh training calibrates anew
    assert probe.unlikely_cutoff is None


def test_gold_weight_is_reported(caplog):
    cb = ProxygapCallback(monitor=None)
    cb.trainer = SimpleNamespace(
        reward_funcs=[gold_reward(len)], reward_weights=torch.tensor([1.0])
    )
    with caplog.at_level(logging.WARNING):
        cb._check_gold_weights()
    assert "gold reward 'gold' has weight 1" in caplog.text
    with pytest.raises(TypeError, match="update"):
        ProxygapCallback(monitor=object())


def test_reference_rewards_samples_the_policy(tok):
    class Words(TRLReward):
        def score(self, texts, prompts):
            return np.array([float(len(t.split())) for t in texts]), None

    policy = load_policy(TASK.policy_path)
    base = Words("words", join_for(tok))
    ref = reference_rewards(base, policy, tok, PROMPTS, n=3, max_new_tokens=8, seed=1)
    assert list(ref) == PROMPTS and all(v.shape == (3,) for v in ref.values())
    # every text is the prompt (2 or 3 words) plus 1..8 response words
    assert all(3 <= x <= 11 for v in ref.values() for x in v)


class StepAlarm:
    """A stand-in monitor: score = step / 10, alarm from step 2."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def update(self, row: dict[str, float]) -> dict[str, float]:
        self.rows.append(dict(row))
        return {"monitor/score": row["step"] / 10, "monitor/alarm": float(row["step"] >= 2)}


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, member_paths, tok):
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    out = tmp_path_factory.mktemp("grpo")
    join = join_for(tok)

    def length_bonus(prompts, completions, **kwargs):
        return [0.1 * len(c.split()) for c in completions]

    data = datasets.Dataset.from_dict(
        {"prompt": [f"{tok.bos_token} {p}" for p in TASK.prompts(8, seed=0)]}
    )
    monitor = StepAlarm()
    cb = ProxygapCallback(monitor=monitor, stop_on_alarm=True, save_on_alarm=True)
    cfg = GRPOConfig(
        output_dir=str(out), use_cpu=True, report_to="none", per_device_train_batch_size=4,
        num_generations=2, max_completion_length=12, max_steps=3, logging_steps=1,
        save_strategy="no", disable_tqdm=True, beta=0.04, learning_rate=1e-2, seed=0,
        reward_weights=[1.0, 0.5, 0.0], model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=str(TASK.policy_path),
        reward_funcs=[
            ensemble_reward(member_paths, aggregation="uwo", join=join),
            monitor_reward(length_bonus),
            gold_reward(TASK.gold, join=join),
        ],
        args=cfg,
        train_dataset=data,
        processing_class=tok,
        callbacks=[cb],
    )
    trainer.train()
    return SimpleNamespace(trainer=trainer, cb=cb, out=out, monitor=monitor)


def test_grpo_logs_proxygap_metrics(grpo_run):
    trainer, cb = grpo_run.trainer, grpo_run.cb
    assert cb.trainer is trainer  # found without attach()
    rows = [r for r in trainer.state.log_history if "proxygap/reward/proxy" in r]
    assert [r["step"] for r in rows] == [1, 2]  # the alarm at step 2 stopped training
    expected = {
        "proxygap/reward/proxy", "proxygap/signal/proxy_std", "proxygap/reward/gold",
        "proxygap/signal/gold_std", "proxygap/signal/ensemble_std", "proxygap/kl/k1",
        "proxygap/kl/k2", "proxygap/kl/k3", "proxygap/kl/clamped", "proxygap/d",
        "proxygap/signal/entropy", "proxygap/length/mean", "proxygap/diversity/distinct2",
        "proxygap/monitor/score", "proxygap/monitor/alarm",
    }  # fmt: skip
    for r in rows:
        assert expected <= set(r), expected - set(r)
        # TRL's "reward" is sum_i w_i * mean(f_i) with weights (1, 0.5, 0): the proxy
        assert r["proxygap/reward/proxy"] == pytest.approx(r["reward"], abs=1e-5)
        assert r["proxygap/reward/gold"] == pytest.approx(r["rewards/gold/mean"], abs=1e-5)
        assert r["proxygap/length/mean"] == pytest.approx(r["completions/mean_length"])
        # TRL's "kl" is sum(k3 over tokens) / tokens; ours the mean over sequences of the sum
        assert r["proxygap/kl/k3"] == pytest.approx(
            r["kl"] * r["completions/mean_length"], rel=1e-4, abs=1e-6
        )
    first, second = rows
    assert first["proxygap/kl/k1"] == 0.0 and first["proxygap/d"] == 0.0  # policy == reference
    assert second["proxygap/kl/k3"] > 0 and second["proxygap/d"] > 0
    assert (first["proxygap/monitor/alarm"], second["proxygap/monitor/alarm"]) == (0.0, 1.0)
    assert cb.alarm_step == 2 and trainer.state.global_step == 2
    assert (grpo_run.out / "checkpoint-2").is_dir()  # saved on the alarm
    # the monitor saw the package's evaluation keys
    assert {"step", "reward/proxy", "d", "kl/k1", "length/mean"} <= set(grpo_run.monitor.rows[0])


def test_grpo_history_file_and_load_run(grpo_run):
    run = load_run(grpo_run.out)
    assert [r["step"] for r in run.trl] == [1.0, 2.0]
    log = [r for r in grpo_run.trainer.state.log_history if "proxygap/reward/gold" in r]
    gold = [r["proxygap/reward/gold"] for r in log]
    assert run.trl[1]["reward/gold"] == pytest.approx(gold[1] - gold[0])
    assert run.trl[1]["reward/gold_raw"] == pytest.approx(gold[1])
    assert run.trl[1]["d"] == pytest.approx(log[1]["proxygap/d"])


def test_rloo_kl_by_forward_passes_matches_trl(member_paths, tok, tmp_path):
    """RLOO keeps no reference log-probs in its batches: the callback computes them with the
    trainer's ``ref_model``. TRL's RLOO ``kl`` is the token mean of k1, so ours (the mean over
    sequences of the per-sequence sum) is it times the mean completion length."""
    import datasets
    import transformers
    from trl import RLOOConfig, RLOOTrainer

    transformers.logging.set_verbosity_error()
    data = datasets.Dataset.from_dict(
        {"prompt": [f"{tok.bos_token} {p}" for p in TASK.prompts(4, seed=1)]}
    )
    cb = ProxygapCallback(monitor=None, history=False)
    cfg = RLOOConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4,
        num_generations=2, max_completion_length=8, max_steps=2, logging_steps=1,
        save_strategy="no", disable_tqdm=True, beta=0.05, learning_rate=1e-2, seed=0,
        model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    trainer = RLOOTrainer(
        model=str(TASK.policy_path),
        reward_funcs=ensemble_reward(member_paths[:2], join=join_for(tok)),
        args=cfg, train_dataset=data, processing_class=tok, callbacks=[cb],
    )  # fmt: skip
    trainer.train()
    rows = [r for r in trainer.state.log_history if "proxygap/kl/k1" in r]
    assert len(rows) == 2 and cb.kl_status == "measured"
    assert rows[0]["proxygap/kl/k1"] == 0.0  # step 1 samples the initial policy
    for r in rows:
        assert r["proxygap/kl/k1"] == pytest.approx(
            r["kl"] * r["completions/mean_length"], rel=1e-4, abs=1e-6
        )
