"""f-DPG as an RL algorithm (``algo: fdpg`` in proxygap/optimize/rl.py, Go et al. 2023).

Tiny random GPT-2s over the ``reviews`` vocabulary, as in test_rl.py; the reward is the number of
times "great" appears plus a small length term, so every group has distinct rewards.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

import proxygap.optimize.rl as rl_module
from proxygap.models.logprobs import response_logprobs
from proxygap.optimize import rollout as rl_rollout
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.optimize.rl import RLConfig, train_rl
from proxygap.sampling.generate import encode_prompts, sample
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

TOK = build_tokenizer()
PROMPTS = ["i enjoyed", "the characters", "the plot", "i hated"]


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # p(eos) ~ 0.1 so responses have many lengths
        e = model.transformer.wte.weight[TOK.eos_token_id]
        model.transformer.ln_f.bias.add_(2.5 * e / e.dot(e))
    return model


def join(prompts, responses):
    return [f"{p} {r}" for p, r in zip(prompts, responses, strict=True)]


def reward(texts) -> np.ndarray:
    return np.array([t.split().count("great") + 0.1 * len(t.split()) for t in texts])


def evaluator(ref) -> PolicyEvaluator:
    return PolicyEvaluator(
        ref=ref,
        tokenizer=TOK,
        join=join,
        prompts=["the ending"],
        prompt_ids=encode_prompts(TOK, ["the ending"]),
        gold=reward,
        proxy=reward,
        n_per_prompt=2,
        max_new_tokens=6,
        seed=1,
    )


def run(cfg: RLConfig, policy, ref, reward_fn=reward):
    return train_rl(
        policy,
        ref,
        TOK,
        cfg=cfg,
        train_prompts=PROMPTS,
        join=join,
        reward_fn=reward_fn,
        evaluator=evaluator(ref),
        log=lambda _: None,
    )


def cfg(**kw) -> RLConfig:
    base = dict(algo="fdpg", steps=2, prompts_per_step=2, group_size=4, eval_every=100, lr=1e-3)
    base |= dict(kl_coef=0.2, max_new_tokens=6)
    return RLConfig(**(base | kw))


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"kl_coef": 0.0}, "kl_coef"),
        ({"divergence": "hellinger"}, "divergence"),
        ({"kl_mode": "loss"}, "kl_mode"),
        ({"group_size": 1}, "group_size"),
        ({"algo": "rloo", "divergence": "js"}, "divergence"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        cfg(**kw)


@pytest.mark.parametrize("divergence", ["forward_kl", "js", "tv"])
def test_fdpg_steps_run_and_move_the_policy(divergence):
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    res = run(cfg(divergence=divergence), policy, ref)
    assert [r["step"] for r in res.history] == [0.0, 2.0]
    assert all(math.isfinite(v) for v in res.history[-1].values())
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(policy.parameters(), ref.parameters(), strict=True)
    )
    assert moved > 1e-5


def test_reverse_kl_advantages_are_the_kl_penalised_reward(monkeypatch):
    """Reverse-KL f-DPG gives every response token ``x_i - mean_G(x)`` with the KL-penalised
    sequence reward ``x = score - beta * sum_t (log pi - log pi_ref)``, recomputed here from the
    sampler's log-probs and a fresh reference forward pass."""
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # a policy away from ref, so the KL term matters
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    beta = 0.3
    samples, seen, scores = [], [], []

    def recording_sample(*args, **kwargs):
        samples.append(sample(*args, **kwargs))
        return samples[-1]

    def recording_fdpg(*args, **kw):
        out = rl_rollout.fdpg(*args, **kw)
        seen.append(out[0])
        return out

    def scored(texts):
        scores.append(reward(texts))
        return scores[-1]

    monkeypatch.setattr(rl_module, "sample", recording_sample)
    monkeypatch.setitem(rl_rollout.ADVANTAGES, "fdpg", recording_fdpg)
    c = cfg(steps=1, kl_coef=beta)
    train_rl(
        policy,
        ref,
        TOK,
        cfg=c,
        train_prompts=PROMPTS,
        join=join,
        reward_fn=scored,
        evaluator=evaluator(ref),
        log=lambda _: None,
    )
    s = samples[0]
    with torch.no_grad():
        ref_lp = response_logprobs(
            ref, s.prompt_ids_rows(), s.response_ids, s.mask, pad_id=TOK.pad_token_id
        )
    seq_lr = ((s.logprobs - ref_lp) * s.mask).sum(dim=1)
    assert seq_lr.abs().max() > 0.1
    x = (torch.tensor(scores[0], dtype=torch.float32) - beta * seq_lr).view(-1, 4)
    expected = (x - x.mean(dim=1, keepdim=True)).reshape(-1)[:, None] * s.mask
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=0)


def test_steps_log_the_estimators_ess_and_log_z(monkeypatch):
    """Each step row carries the f-DPG estimator's ``fdpg/ess`` and ``fdpg/log_z``, recomputed
    here from the sampler's log-probs, a fresh reference pass and the scores:
    ``log Z = logsumexp_i(r_i/beta - l_i) - log G`` per prompt and ``ess = 1 / (G sum_i w_i^2)``
    with ``w = softmax(r/beta - l)``, each averaged over prompts."""
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    beta, samples, scores = 0.5, [], []

    def recording_sample(*args, **kwargs):
        samples.append(sample(*args, **kwargs))
        return samples[-1]

    def scored(texts):
        scores.append(reward(texts))
        return scores[-1]

    monkeypatch.setattr(rl_module, "sample", recording_sample)
    res = run(cfg(steps=1, kl_coef=beta, divergence="js"), policy, ref, reward_fn=scored)
    s = samples[0]
    with torch.no_grad():
        ref_lp = response_logprobs(
            ref, s.prompt_ids_rows(), s.response_ids, s.mask, pad_id=TOK.pad_token_id
        )
    seq_lr = ((s.logprobs - ref_lp) * s.mask).sum(dim=1).double().view(-1, 4)
    tilted = torch.tensor(scores[0], dtype=torch.float64).view(-1, 4) / beta - seq_lr
    log_z = torch.logsumexp(tilted, dim=1) - math.log(4)
    w = torch.softmax(tilted, dim=1)
    ess = 1.0 / (4 * w.square().sum(dim=1))
    row = res.steps[0]
    assert row["fdpg/log_z"] == pytest.approx(float(log_z.mean()), abs=1e-4)
    assert row["fdpg/ess"] == pytest.approx(float(ess.mean()), abs=1e-4)
    assert 0.25 <= row["fdpg/ess"] <= 1.0
    assert float(ess.min()) < 0.99  # the weights are uneven, so the check is not trivially 1
