"""Tests for weight-space mitigations: Elastic Reset (Noukhovitch et al. 2023) and the weight
average used as a soup KL reference (SALSA)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from transformers import GPT2LMHeadModel, GPT2Model

from proxygap.mitigations.elastic_reset import ElasticReset
from proxygap.mitigations.soup import weight_average
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.optimize.rl import RLConfig, RLHooks, train_rl
from proxygap.sampling.generate import encode_prompts
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

TOK = build_tokenizer()


def linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(2, 1).double()


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_flat(model: nn.Module, values: torch.Tensor) -> None:
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            p.copy_(values[i : i + p.numel()].reshape(p.shape))
            i += p.numel()


# ---------------------------------------------------------------- Elastic Reset
def test_ema_matches_the_closed_form_and_resets_at_multiples_of_R():
    """Hand-made weights theta_t after each update t (3 numbers: weight (1, 2) and bias (1,)).
    Between resets, after k updates: ema_k = eta^k theta_0 + (1 - eta) sum_t eta^(k-t) theta_t
    (the EMA restarts from theta_0 after each reset); at t = R, 2R the policy becomes ema_R."""
    eta, R = 0.9, 3
    policy = linear()
    theta0 = flat(policy).clone()
    hook = ElasticReset(policy, eta=eta, every=R)
    gen = torch.Generator().manual_seed(1)
    thetas = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(7)]
    since: list[torch.Tensor] = []  # weights after each update since the last reset
    resets = []
    for t, theta in enumerate(thetas, start=1):
        set_flat(policy, theta)  # stands in for the optimizer step
        since.append(theta)
        k = len(since)
        expect = eta**k * theta0 + (1 - eta) * sum(
            eta ** (k - j) * th for j, th in enumerate(since, 1)
        )
        metrics = hook(policy=policy, ref=None, optimizer=None, step=t)
        resets.append(metrics["elastic/reset"])
        if t % R == 0:
            torch.testing.assert_close(flat(policy), expect, rtol=0, atol=1e-14)  # theta <- ema
            torch.testing.assert_close(
                torch.cat([v.reshape(-1) for v in hook.ema.values()]), theta0
            )
            since = []
        else:
            torch.testing.assert_close(flat(policy), theta)  # untouched between resets
            ema = torch.cat([v.reshape(-1) for v in hook.ema.values()])
            torch.testing.assert_close(ema, expect, rtol=0, atol=1e-14)
            assert metrics["elastic/ema_distance"] == pytest.approx(float((theta - expect).norm()))
    assert resets == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert hook.resets == 2


def test_reset_order_policy_takes_the_ema_first_then_the_ema_restarts_at_theta0():
    """R = 1, eta = 0.5. Step 1: ema = 0.5 theta0 + 0.5 theta1; policy <- that; ema <- theta0.
    Step 2: ema = 0.5 theta0 + 0.5 theta2 (restarted from theta0, not from the new policy).
    The other order (ema <- theta0 first, then policy <- ema) would put the policy at theta0."""
    policy = linear()
    theta0 = flat(policy).clone()
    hook = ElasticReset(policy, eta=0.5, every=1)
    theta1 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    set_flat(policy, theta1)
    hook(policy=policy, ref=None, optimizer=None, step=1)
    torch.testing.assert_close(flat(policy), 0.5 * theta0 + 0.5 * theta1)
    assert not torch.allclose(flat(policy), theta0)
    theta2 = torch.tensor([-4.0, 0.0, 8.0], dtype=torch.float64)
    set_flat(policy, theta2)
    m = hook(policy=policy, ref=None, optimizer=None, step=2)
    torch.testing.assert_close(flat(policy), 0.5 * theta0 + 0.5 * theta2)
    # drift metric: after the reset, |theta - theta0| = |0.5 (theta2 - theta0)|
    assert m["elastic/init_distance"] == pytest.approx(float((0.5 * (theta2 - theta0)).norm()))


def test_reset_keeps_optimizer_state_and_parameter_objects():
    policy, ref = linear(0), linear(1)
    ref_before = flat(ref).clone()
    opt = torch.optim.Adam(policy.parameters(), lr=0.1)
    hook = ElasticReset(policy, eta=0.9, every=2)
    for step in (1, 2):
        opt.zero_grad()
        policy(torch.ones(4, 2, dtype=torch.float64)).square().sum().backward()
        opt.step()
        if step == 1:
            hook(policy=policy, ref=ref, optimizer=opt, step=step)
    params = list(policy.parameters())
    state_objs = {id(p): (opt.state[p], dict(opt.state[p])) for p in params}
    state_vals = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    theta_before = flat(policy).clone()
    m = hook(policy=policy, ref=ref, optimizer=opt, step=2)
    assert m["elastic/reset"] == 1.0
    assert not torch.equal(flat(policy), theta_before)  # a reset happened
    assert list(policy.parameters())[0] is params[0] and opt.param_groups[0]["params"] == params
    for p in params:
        state, entries = state_objs[id(p)]
        assert opt.state[p] is state  # same state dict ...
        for k, v in opt.state[p].items():
            assert v is entries[k]  # ... holding the same tensors ...
            torch.testing.assert_close(v, state_vals[id(p)][k], rtol=0, atol=0)  # ... unchanged
    torch.testing.assert_close(flat(ref), ref_before, rtol=0, atol=0)


def test_elastic_reset_argument_errors():
    with pytest.raises(ValueError, match="eta must lie"):
        ElasticReset(linear(), eta=0.0, every=1)
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        ElasticReset(linear(), every=0)
    hook = ElasticReset(linear(), every=1)
    with pytest.raises(ValueError, match="shape"):
        hook(policy=nn.Linear(3, 1).double(), ref=None, optimizer=None, step=1)


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(TOK, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        e = model.transformer.wte.weight[TOK.eos_token_id]
        model.transformer.ln_f.bias.add_(2.5 * e / e.dot(e))
    return model


def test_elastic_reset_in_the_rl_recipe():
    """Through the real loop: with eta = 1 the EMA never leaves theta_0, so every reset is a
    reset to the initial weights; with R = 2 the policy after 2 steps equals the reference
    exactly, step 1 is not a reset, and Adam's state survives."""
    ref = tiny_lm()
    policy = copy.deepcopy(ref)
    hook = ElasticReset(policy, eta=1.0, every=2)
    states = []

    def post_step(**kw):
        out = hook(**kw)
        states.append(len(kw["optimizer"].state))
        return out

    join = lambda ps, rs: [f"{p} {r}" for p, r in zip(ps, rs, strict=True)]  # noqa: E731
    words = lambda texts: np.array([float(len(t.split())) for t in texts])  # noqa: E731
    prompts = ["i enjoyed", "the plot", "the cast", "i hated"]
    ev = PolicyEvaluator(
        ref=ref, tokenizer=TOK, join=join, prompts=prompts[:1],
        prompt_ids=encode_prompts(TOK, prompts[:1]), gold=words, proxy=words,
        n_per_prompt=2, max_new_tokens=6, seed=3,
    )  # fmt: skip
    cfg = RLConfig(steps=2, prompts_per_step=2, group_size=2, eval_every=100, lr=1e-2)
    res = train_rl(
        policy, ref, TOK, cfg=cfg, train_prompts=prompts, join=join, reward_fn=words,
        evaluator=ev, hooks=RLHooks(post_step=post_step), log=lambda _: None,
    )  # fmt: skip
    assert [s["elastic/reset"] for s in res.steps] == [0.0, 1.0]
    assert res.steps[0]["elastic/init_distance"] > 0  # the update moved the weights
    assert res.steps[1]["elastic/init_distance"] == 0.0
    for p, q in zip(policy.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert states == [len(list(policy.parameters()))] * 2  # optimizer state kept at the reset


# ---------------------------------------------------------------- soup
def test_soup_is_the_elementwise_weighted_average():
    a, b = tiny_lm(0), tiny_lm(1)
    a_before = {k: v.clone() for k, v in a.state_dict().items()}
    soup = weight_average([a, b])
    sa, sb, ss = a.state_dict(), b.state_dict(), soup.state_dict()
    for k, v in ss.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sa[k] + sb[k]) / 2)
    assert soup.lm_head.weight is soup.transformer.wte.weight  # tied weights stay tied
    assert soup is not a and all(torch.equal(v, a_before[k]) for k, v in a.state_dict().items())
    w = weight_average([a, b], [0.25, 0.75])
    for name, p in w.named_parameters():
        torch.testing.assert_close(p, 0.25 * sa[name] + 0.75 * sb[name])
    # the soup is a working model: same logits as a model loaded with the averaged weights
    ids = torch.tensor([[TOK.bos_token_id, 5, 6, 7]])
    manual = copy.deepcopy(a)
    manual.load_state_dict({k: (sa[k] + sb[k]) / 2 for k in sa})
    torch.testing.assert_close(soup(ids).logits, manual(ids).logits)


def test_soup_of_one_model_equals_it():
    a = tiny_lm(0)
    soup = weight_average([a])
    assert soup is not a
    for (k, v), (k2, v2) in zip(a.state_dict().items(), soup.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_soup_rejects_mismatched_models_and_bad_weights():
    a = tiny_lm(0)
    deeper = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    wider = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    trunk = GPT2Model(tiny_gpt2_config(TOK, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(ValueError, match="model 1 has different tensors"):
        weight_average([a, deeper])
    with pytest.raises(ValueError, match=r"tensor 'transformer.wte.weight': model 1 has"):
        weight_average([a, wider])
    with pytest.raises(ValueError, match="GPT2Model, model 0 a GPT2LMHeadModel"):
        weight_average([a, trunk])
    with pytest.raises(ValueError, match="at least one model"):
        weight_average([])
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        weight_average([a, a, a], [0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        weight_average([a, a], [0.5, 0.6])
    with pytest.raises(ValueError, match=">= 0"):
        weight_average([a, a], [1.5, -0.5])

    class WithCounter(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))
            self.register_buffer("count", torch.tensor(n))

    with pytest.raises(ValueError, match="non-floating tensor 'count' differs"):
        weight_average([WithCounter(1), WithCounter(2)])
    same = weight_average([WithCounter(3), WithCounter(3)])
    assert int(same.count) == 3
