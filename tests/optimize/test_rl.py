"""Tests for the online RL recipe (proxygap.optimize.rl and its parts).

The policies are tiny random GPT-2s over the ``reviews`` vocabulary (84 words) whose final layer
norm is nudged so that eos has probability ~0.1 (as in ``test_sampling.py``): responses then end
at many different lengths, which is what makes token weighting, packing and accumulation
non-trivial. The reward is hand-made: the number of times the word "great" appears.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

import proxygap.optimize.rl as rl_module
from proxygap.errors import NonFiniteError
from proxygap.estimators.advantages import kl_penalised_token_rewards
from proxygap.models.logprobs import response_logprobs
from proxygap.models.schedule import lr_factor
from proxygap.optimize import rollout as rl_rollout
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.optimize.ppo_update import critic_values, new_critic, optimiser_steps
from proxygap.optimize.rl import RLConfig, train_rl
from proxygap.optimize.rl_hooks import RLHooks
from proxygap.optimize.rollout import PromptStream, pack
from proxygap.sampling.generate import decode_responses, encode_prompts, sample
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

TOK = build_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id
GREAT = "great"
PROMPTS = [
    "i enjoyed",
    "the characters",
    "the plot",
    "i hated",
    "the movie",
    "the hero",
    "i liked",
    "the cast",
]
EVAL_PROMPTS = ["the ending", "i loved", "the music", "the villain"]
MAX_NEW = 8
SKIP = ("time/",)  # wall-clock metrics differ between runs


def tiny_lm(seed: int = 0, *, eos_boost: float = 2.5) -> GPT2LMHeadModel:
    """A random LM with p(eos) ~ 0.1: ``eos_boost * wte[eos] / |wte[eos]|^2`` added to ln_f's
    bias raises the eos logit by ``eos_boost`` (tied embeddings)."""
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        e = model.transformer.wte.weight[EOS]
        model.transformer.ln_f.bias.add_(eos_boost * e / e.dot(e))
    return model


def perturbed(model: GPT2LMHeadModel, scale: float, seed: int = 7) -> GPT2LMHeadModel:
    """A copy with Gaussian noise of std ``scale`` on every weight (a policy far from ``model``)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return out


def join(prompts, responses):
    return [f"{p} {r}" for p, r in zip(prompts, responses, strict=True)]


def count_great(texts) -> np.ndarray:
    return np.array([t.split().count(GREAT) for t in texts], dtype=np.float64)


def dense_reward(texts) -> np.ndarray:
    """Varies in every group (length in words), so every advantage path has signal."""
    return count_great(texts) + np.array([0.1 * len(t.split()) for t in texts])


def evaluator(ref, *, n_prompts: int = 2, n: int = 2) -> PolicyEvaluator:
    prompts = EVAL_PROMPTS[:n_prompts]
    return PolicyEvaluator(
        ref=ref,
        tokenizer=TOK,
        join=join,
        prompts=prompts,
        prompt_ids=encode_prompts(TOK, prompts),
        gold=count_great,
        proxy=count_great,
        n_per_prompt=n,
        max_new_tokens=MAX_NEW,
        seed=123,
    )


def run(cfg: RLConfig, policy, ref, *, reward=count_great, ev=None, **kw):
    return train_rl(
        policy,
        ref,
        TOK,
        cfg=cfg,
        train_prompts=PROMPTS,
        join=join,
        reward_fn=reward,
        evaluator=ev or evaluator(ref),
        log=lambda _: None,
        **kw,
    )


def small(**kw) -> RLConfig:
    base = dict(steps=2, prompts_per_step=2, group_size=4, eval_every=100, lr=1e-3)
    return RLConfig(**(base | kw))


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max((x - y).abs().max().item() for x, y in pairs)


def without_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith(SKIP)} for r in rows]


class SampleRecorder:
    """Wraps the recipe's ``sample`` and keeps what it returned."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, *args, **kwargs):
        s = sample(*args, **kwargs)
        self.calls.append(s)
        return s


# ---------------------------------------------------------------- batch invariance
@pytest.mark.parametrize(
    ("algo", "extra"),
    [
        ("grpo", {"kl_mode": "loss", "kl_coef": 0.1}),
        ("rloo", {"kl_mode": "loss", "kl_coef": 0.1, "loss_aggregation": "seq_mean"}),
        ("ppo", {"kl_coef": 0.1, "group_size": 2, "prompts_per_step": 4}),
    ],
)
def test_batch_8x1_equals_1x8_with_accumulation(monkeypatch, algo, extra):
    """One optimiser step on 8 responses, as one forward pass of 8 rows or as 8 accumulated
    passes of 1 row, gives the same parameters. Responses have different lengths, so the
    per-pass weights (tokens or sequences over the step's total) matter: a plain mean over
    passes would weight short responses' tokens more and fail this test.

    In float64: Adam's first step is ``lr * g / (|g| + eps)``, which turns float32 rounding in
    a gradient that nearly cancels into differences of ~1e-6; in float64 the two runs agree to
    ~1e-15."""
    ref = tiny_lm().double()
    start = perturbed(ref, 0.02)  # away from ref, so the KL term has a gradient too
    recorder = SampleRecorder()
    monkeypatch.setattr(rl_module, "sample", recorder)
    results = []
    for micro, accum in [(8, 1), (1, 8)]:
        policy = copy.deepcopy(start)
        cfg = small(algo=algo, steps=1, minibatch_size=micro, grad_accum=accum, **extra)
        res = run(cfg, policy, ref, reward=dense_reward)
        results.append((policy, res))
    lengths = recorder.calls[0].lengths
    assert len(set(lengths.tolist())) > 1, "responses of equal length make the test vacuous"
    assert torch.equal(recorder.calls[0].response_ids, recorder.calls[1].response_ids)
    (p1, r1), (p2, r2) = results
    assert r1.steps[0]["train/optimizer_steps"] == r2.steps[0]["train/optimizer_steps"] == 1
    assert max_diff(p1, start) > 1e-4  # the step did something (lr 1e-3, Adam)
    diff = max_diff(p1, p2)
    assert diff < 1e-12
    assert r1.steps[0]["train/loss"] == pytest.approx(r2.steps[0]["train/loss"], abs=1e-12)


# ---------------------------------------------------------------- determinism
def test_same_seed_gives_identical_metrics():
    ref = tiny_lm()
    cfg = small(algo="rloo", steps=3, eval_every=1, kl_coef=0.05)
    a = run(cfg, copy.deepcopy(ref), ref)
    b = run(cfg, copy.deepcopy(ref), ref)
    c = run(cfg.model_copy(update={"seed": 1}), copy.deepcopy(ref), ref)
    assert without_time(a.history) == without_time(b.history)
    assert without_time(a.steps) == without_time(b.steps)
    assert a.examples == b.examples
    assert without_time(a.steps) != without_time(c.steps)  # the seed matters


# ---------------------------------------------------------------- KL in the reward
def test_kl_in_reward_matches_penalised_token_rewards(monkeypatch):
    """The per-token rewards of the recipe equal ``kl_penalised_token_rewards(score, lr, mask,
    beta)`` with ``lr`` recomputed here from the sampler's log-probs and a fresh reference
    forward pass; their row sums equal ``score - beta * sum_t lr_t``."""
    ref = tiny_lm()
    policy = perturbed(ref, 0.05)
    beta = 0.3
    seen, scores = [], []
    recorder = SampleRecorder()

    def recording_rloo(rewards, values, mask, **kw):
        seen.append((rewards.clone(), mask.clone()))
        return rl_rollout.rloo(rewards, values, mask, **kw)

    def reward(texts):
        scores.append(count_great(texts) + 0.25 * np.arange(len(texts)) % 3)
        return scores[-1]

    monkeypatch.setitem(rl_rollout.ADVANTAGES, "rloo", recording_rloo)
    monkeypatch.setattr(rl_module, "sample", recorder)
    res = run(small(algo="rloo", steps=1, kl_coef=beta), policy, ref, reward=reward)

    s = recorder.calls[0]
    with torch.no_grad():
        ref_lp = response_logprobs(ref, s.prompt_ids_rows(), s.response_ids, s.mask, pad_id=PAD)
    lr = s.logprobs - ref_lp
    score = torch.tensor(scores[0], dtype=torch.float32)
    expected = kl_penalised_token_rewards(score, lr, s.mask, beta=beta)
    got, mask = seen[0]
    assert torch.equal(mask, s.mask)
    assert (lr * s.mask).abs().sum() > 0.1  # the policy is far enough from ref to matter
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    seq = score - beta * (lr * s.mask).sum(dim=1)
    torch.testing.assert_close(got.sum(dim=1), seq, atol=1e-5, rtol=0)
    assert res.steps[0]["train/return_mean"] == pytest.approx(seq.mean().item(), abs=1e-5)


# ---------------------------------------------------------------- adaptive controller
def test_adaptive_controller_uses_the_measured_kl():
    """Ziegler et al. 2019: ``beta <- beta (1 + clip(KL/target - 1, +-0.2) B / horizon)``. The
    target is set to the first step's measured KL / 1.1, so the error is 0.1, inside the clip:
    the update can only match if the controller saw exactly that KL."""
    ref = tiny_lm()
    policy = perturbed(ref, 0.05)
    kw = dict(algo="rloo", steps=2, kl_coef=0.2, kl_controller="adaptive", kl_horizon=100.0)
    first = run(small(kl_target=1.0, **kw), copy.deepcopy(policy), ref)
    kl0 = first.steps[0]["train/kl_k1"]
    assert kl0 > 0.01
    res = run(small(kl_target=kl0 / 1.1, **kw), copy.deepcopy(policy), ref)
    assert res.steps[0]["train/kl_k1"] == kl0  # the first rollout does not depend on target
    B = 8
    assert res.steps[0]["kl/beta"] == 0.2
    assert res.steps[1]["kl/beta"] == pytest.approx(0.2 * (1 + 0.1 * B / 100.0), rel=1e-9)


# ---------------------------------------------------------------- learning
def test_rloo_raises_a_hand_made_reward():
    """Reward = number of "great" in the text. A random policy emits it with p ~ 1/84 per token
    (~0.1 per response of at most 8 tokens). After 30 RLOO steps the mean on held-out prompts
    must exceed the initial mean by 10 standard errors of the initial mean, and triple it."""
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    ev = evaluator(ref, n_prompts=4, n=16)
    s0 = sample(
        ref,
        ev.prompt_ids,
        n_per_prompt=ev.n_per_prompt,
        max_new_tokens=MAX_NEW,
        eos_id=EOS,
        pad_id=PAD,
        seed=ev.seed,
    )
    init = count_great(
        join([ev.prompts[i] for i in s0.prompt_index.tolist()], decode_responses(s0, TOK))
    )
    m0, se0 = init.mean(), init.std(ddof=1) / math.sqrt(len(init))
    cfg = small(algo="rloo", steps=30, prompts_per_step=8, eval_every=30, lr=1e-3)
    res = run(cfg, policy, ref, ev=ev)
    final = m0 + res.history[-1]["reward/proxy"]
    assert final > m0 + 10 * se0
    assert final > 3 * m0
    assert res.history[-1]["reward/gold"] == res.history[-1]["reward/proxy"]


# ---------------------------------------------------------------- other algorithms
EVAL_KEYS = {
    "reward/proxy",
    "reward/proxy_se",
    "reward/gold",
    "reward/gold_se",
    "kl/k1",
    "kl/k2",
    "kl/k3",
    "kl/clamped",
    "d",
    "winrate/gold_vs_init",
    "length/mean",
    "diversity/distinct1",
    "diversity/distinct2",
    "step",
    "samples_seen",
    "time/wall",
}
TRAIN_KEYS = {
    "train/reward_mean",
    "train/reward_raw",
    "train/return_mean",
    "train/kl_k1",
    "train/kl_k3",
    "train/kl_clamped",
    "kl/beta",
    "kl/loss_term",
    "policy/clipfrac",
    "policy/approx_kl",
    "policy/ratio_mean",
    "train/loss",
    "train/grad_norm",
    "train/lr",
    "time/sample",
    "time/update",
}
VALUE_KEYS = {"value/loss", "value/mse", "value/clipfrac"}


@pytest.mark.parametrize(
    ("algo", "extra", "keys"),
    [
        ("grpo", {"kl_mode": "loss", "kl_coef": 0.05}, TRAIN_KEYS),
        (
            "ppo",
            {
                "group_size": 1,
                "prompts_per_step": 8,
                "minibatch_size": 4,
                "ppo_epochs": 2,
                "kl_coef": 0.05,
            },
            TRAIN_KEYS | VALUE_KEYS,
        ),
    ],
)
def test_grpo_and_ppo_give_finite_metrics(algo, extra, keys):
    ref = tiny_lm()
    res = run(small(algo=algo, eval_every=2, **extra), copy.deepcopy(ref), ref)
    assert [r["step"] for r in res.history] == [0.0, 2.0]
    last = res.history[-1]
    assert EVAL_KEYS | keys <= set(last)
    assert all(math.isfinite(v) for v in last.values())
    if algo == "ppo":  # 2 epochs x 2 optimiser steps: the later ones are off-policy
        assert last["train/optimizer_steps"] == 4
        assert last["policy/ratio_mean"] != 1.0


def test_ppo_critic_starts_from_the_policy_trunk_with_zero_values():
    policy = tiny_lm()
    critic = new_critic(policy)
    for (n1, p1), (n2, p2) in zip(
        critic.base_model.named_parameters(), policy.base_model.named_parameters(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)
    s = sample(
        policy,
        encode_prompts(TOK, PROMPTS[:2]),
        n_per_prompt=2,
        max_new_tokens=MAX_NEW,
        eos_id=EOS,
        pad_id=PAD,
    )
    batch = rl_rollout.Rollout(
        s.prompt_ids_rows(), s.response_ids.clone(), s.mask.clone(), s.logprobs.clone()
    )
    with torch.no_grad():
        assert torch.equal(critic_values(critic, batch, pad_id=PAD), torch.zeros_like(s.mask))


# ---------------------------------------------------------------- failure modes
def test_non_finite_reward_stops_naming_the_step():
    ref = tiny_lm()
    calls = []

    def reward(texts):
        calls.append(1)
        out = count_great(texts)
        if len(calls) == 3:  # the rollout of step 2 (0-based)
            out[1] = math.nan
        return out

    with pytest.raises(NonFiniteError, match="step 2") as info:
        run(small(steps=5, eval_every=1), copy.deepcopy(ref), ref, reward=reward)
    err = info.value
    assert err.step == 2
    assert [r["step"] for r in err.result.history] == [0.0, 1.0, 2.0]
    assert len(err.result.steps) == 2


def test_transform_hook_output_is_what_is_checked_and_optimised():
    ref = tiny_lm()
    hooks = RLHooks(transform=lambda r, texts, prompts: r + math.inf)
    with pytest.raises(NonFiniteError, match="step 0"):
        run(small(), copy.deepcopy(ref), ref, hooks=hooks)
    hooks = RLHooks(transform=lambda r, texts, prompts: r + 10.0)
    res = run(small(steps=1), copy.deepcopy(ref), ref, hooks=hooks)
    assert res.steps[0]["train/reward_mean"] == res.steps[0]["train/reward_raw"] + 10.0


def test_k3_never_overflows_on_far_apart_policies():
    """Policy and reference are two different random LMs with logits scaled x300, and samples
    are drawn at temperature 1000 (nearly uniform), so the log ratio of a sampled token is the
    difference of two large random log-probabilities: about a third of the tokens have
    ``lr < -20`` and some ``lr < -88``, where ``exp(-lr)`` overflows float32. The k3 penalty
    in the loss and the logged KL stay finite, and the clamped tokens are counted."""
    ref = tiny_lm(seed=0, eos_boost=0.0)
    policy = tiny_lm(seed=1, eos_boost=0.0)
    for m in (ref, policy):
        with torch.no_grad():
            m.transformer.ln_f.weight.mul_(300.0)
            m.transformer.ln_f.bias.mul_(300.0)
    cfg = small(algo="grpo", steps=1, kl_mode="loss", kl_coef=0.1, temperature=1000.0)
    res = run(cfg, policy, ref, reward=dense_reward)
    step = res.steps[0]
    assert step["train/kl_clamped"] > 0 and step["kl/loss_clamped"] > 0
    assert all(math.isfinite(v) for v in step.values())


# ---------------------------------------------------------------- post-step hook, checkpoints
def test_post_step_hook_sees_live_objects_and_its_metrics_are_logged():
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    seen = []

    def hook(*, policy, ref, optimizer, step):
        seen.append((step, len(optimizer.state)))
        return {"reset/called": float(step)}

    res = run(small(steps=2), policy, ref, hooks=RLHooks(post_step=hook))
    assert [s for s, _ in seen] == [1, 2]
    assert seen[0][1] > 0  # Adam state exists after the first update
    assert [r["reset/called"] for r in res.steps] == [1.0, 2.0]


def test_checkpoints_are_complete_and_reloadable(tmp_path):
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    run(small(steps=2, checkpoint_every=1, kl_coef=0.1), policy, ref, checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001", "step-000002"]
    last = tmp_path / "step-000002"
    state = torch.load(last / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and state["kl_controller"] == {"beta": 0.1}
    assert state["prompts"] == {"position": 4} and "state" in state["optimizer"]
    assert [r["step"] for r in state["loop"]["steps"]] == [1.0, 2.0]
    reloaded = GPT2LMHeadModel.from_pretrained(last / "policy")
    for a, b in zip(reloaded.parameters(), policy.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- pieces
def test_pack_covers_every_row_once_within_limits():
    lengths = torch.tensor([3, 40, 7, 7, 12, 1, 40, 5, 9, 2])
    idx = torch.tensor([0, 2, 3, 4, 6, 7, 9])
    passes = pack(lengths, idx, max_rows=3, max_tokens=30)
    assert sorted(torch.cat(passes).tolist()) == sorted(idx.tolist())
    for p in passes:
        assert len(p) <= 3
        assert len(p) == 1 or len(p) * lengths[p].max() <= 30
    assert passes[0].tolist() == [6]  # 40 tokens: alone in its pass (above the budget)
    assert passes[1].tolist() == [4, 2]  # 12 -> floor(30 / 12) = 2 rows


def test_optimiser_steps_partition_each_epoch():
    gen = torch.Generator().manual_seed(0)
    steps = list(optimiser_steps(12, rows=4, epochs=2, gen=gen))
    assert len(steps) == 6
    for e in range(2):
        assert sorted(torch.cat(steps[3 * e : 3 * e + 3]).tolist()) == list(range(12))
    with pytest.raises(ValueError, match="multiple"):
        list(optimiser_steps(10, rows=4, epochs=1, gen=gen))


def test_prompt_stream_walks_shuffled_passes():
    stream = PromptStream(list("abcdefg"), batch=3, seed=0)
    first = stream.next() + stream.next()
    assert sorted(first) == sorted(set(first)) and len(first) == 6  # no repeat within a pass
    resumed = PromptStream(list("abcdefg"), batch=3, seed=0)
    resumed.position = 6
    assert resumed.next() == stream.next()


def test_lr_schedule_hand_values():
    # warm-up 2 steps: 1/2, 2/2; cosine over the remaining 8: step 6 is halfway -> 0.5
    f = [lr_factor(s, kind="cosine", warmup=2, total=10) for s in range(11)]
    assert f[:3] == [0.5, 1.0, 1.0]
    assert f[6] == pytest.approx(0.5)
    assert f[10] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(7, kind="constant", warmup=2, total=10) == 1.0
