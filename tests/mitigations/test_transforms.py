"""Tests for proxygap.mitigations.transforms, .reference and .ensemble: LSC (Wang et al. 2024),
PAR (Fu et al. 2025), length penalty, clipping, whitening, their hooks, per-prompt references
from the initial policy, and the ensemble reward function (Coste et al. 2023)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from proxygap.mitigations.ensemble import EnsembleReward
from proxygap.mitigations.reference import reference_rewards
from proxygap.mitigations.transforms import (
    ChainTransform,
    ClipTransform,
    LengthPenalty,
    LSCTransform,
    PARTransform,
    WhitenTransform,
    clip_rewards,
    length_penalty,
    lsc,
    par,
    reference_quantile,
    response_words,
    sigmoid,
    whiten,
)
from proxygap.sampling.generate import decode_responses, encode_prompts, sample
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

LOG3 = math.log(3.0)


# ---------------------------------------------------------------- LSC
def test_lsc_hand_values():
    # r - r_ref = log 3 -> log sigma(log 3) = log(3 / (3 + 1)) = log 0.75
    # r - r_ref = 0     -> log 0.5
    # r - r_ref = -log 3 -> log sigma(-log 3) = log(1 / (1 + 3)) = log 0.25
    r = np.array([LOG3, 0.0, 1.0 - LOG3])
    ref = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(lsc(r, ref), np.log([0.75, 0.5, 0.25]), rtol=0, atol=1e-15)


def test_lsc_is_never_positive_and_finite_at_extremes():
    r = np.random.default_rng(0).normal(scale=10.0, size=1000)
    u = lsc(r, np.zeros_like(r))
    assert (u <= 0).all()
    # log sigma(-800) = -800 - log(1 + e^-800) = -800; log sigma(800) = -e^-800 -> -0.0
    np.testing.assert_allclose(lsc(np.array([-800.0, 800.0]), np.zeros(2)), [-800.0, 0.0])


def test_reference_quantile_hand_value_and_numpy():
    # sorted [1..5], q = 0.85: position 0.85 * 4 = 3.4 -> 4 + 0.4 * (5 - 4) = 4.4
    ref = np.array([[5.0, 1.0, 3.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(reference_quantile(ref), [4.4, 0.4])
    x = np.random.default_rng(1).normal(size=(7, 9))
    for q in (0.0, 0.5, 0.85, 1.0):
        np.testing.assert_array_equal(reference_quantile(x, q), np.quantile(x, q, axis=1))
    with pytest.raises(ValueError, match="q must lie"):
        reference_quantile(x, 1.5)
    with pytest.raises(ValueError, match=r"\(P, M>=1\)"):
        reference_quantile(np.zeros(3))


def test_lsc_hook_uses_each_rows_prompt_reference():
    hook = LSCTransform.from_rewards({"a": np.array([1.0, 2.0, 3.0, 4.0, 5.0]), "b": [0.0]})
    assert hook.reference == {"a": pytest.approx(4.4), "b": 0.0}
    r = np.array([4.4 + LOG3, 0.0, -LOG3])
    out = hook(r, ["t1", "t2", "t3"], ["a", "b", "b"])
    np.testing.assert_allclose(out, np.log([0.75, 0.5, 0.25]), atol=1e-12)
    with pytest.raises(KeyError, match="no LSC reference for 1 prompt"):
        hook(np.zeros(2), ["x", "y"], ["a", "c"])


# ---------------------------------------------------------------- PAR
def test_par_hand_values():
    # r=1,   refs [0, 2]:     (sigma(1) + sigma(-1)) / 2 = 1/2 (sigma(x) + sigma(-x) = 1)
    # r=log3, refs [0, log3]: (3/4 + 1/2) / 2 = 5/8
    # r=0,   refs [log3, log3]: sigma(-log 3) = 1/4
    r = np.array([1.0, LOG3, 0.0])
    refs = np.array([[0.0, 2.0], [0.0, LOG3], [LOG3, LOG3]])
    np.testing.assert_allclose(par(r, refs), [0.5, 0.625, 0.25], atol=1e-15)


def test_par_bounded_monotone_and_m1_is_sigmoid():
    rng = np.random.default_rng(2)
    refs = rng.normal(size=(1, 10)).repeat(200, axis=0)  # one prompt, 10 references
    r = np.sort(rng.normal(scale=3.0, size=200))
    out = par(r, refs)
    assert ((out > 0) & (out < 1)).all()
    assert (np.diff(out) > 0).all()  # strictly increasing in r for fixed references
    one = rng.normal(size=(50, 1))
    r1 = rng.normal(size=50)
    np.testing.assert_allclose(par(r1, one), 1.0 / (1.0 + np.exp(-(r1 - one[:, 0]))), rtol=1e-14)
    # with one reference, LSC is the log of PAR
    np.testing.assert_allclose(lsc(r1, one[:, 0]), np.log(par(r1, one)), rtol=1e-12)


def test_par_shape_errors_and_hook():
    with pytest.raises(ValueError, match=r"shape \(B=2, M>=1\)"):
        par(np.zeros(2), np.zeros((3, 1)))
    hook = PARTransform({"a": [0.0, 2.0], "b": np.array([LOG3, LOG3])})
    np.testing.assert_allclose(hook(np.array([1.0, 0.0]), ["x", "y"], ["a", "b"]), [0.5, 0.25])
    with pytest.raises(ValueError, match="same number M"):
        PARTransform({"a": [0.0], "b": [0.0, 1.0]})
    with pytest.raises(KeyError, match="no PAR reference"):
        hook(np.zeros(1), ["x"], ["z"])


# ---------------------------------------------------------------- length, clip, whiten, chain
def test_length_penalty_clip_whiten_hand_values():
    # [1 - 0.1 * 3, 2 - 0.1 * 10] = [0.7, 1.0]
    np.testing.assert_allclose(length_penalty([1.0, 2.0], [3, 10], coef=0.1), [0.7, 1.0])
    with pytest.raises(ValueError, match="coef must be >= 0"):
        length_penalty([1.0], [1], coef=-1.0)
    np.testing.assert_array_equal(clip_rewards([-3.0, 0.5, 9.0], low=-1, high=1), [-1, 0.5, 1])
    with pytest.raises(ValueError, match="low <= high"):
        clip_rewards([0.0], low=1, high=0)
    # [1, 3]: mean 2, population variance 1 -> [-1, 1]
    np.testing.assert_allclose(whiten([1.0, 3.0], eps=0.0), [-1.0, 1.0])
    np.testing.assert_array_equal(whiten([2.0, 2.0, 2.0]), [0.0, 0.0, 0.0])


def test_length_hook_counts_response_words_after_the_prompt():
    assert response_words("i liked the plot a lot", "i liked") == 4
    assert response_words("other text here", "i liked") == 3  # prompt not a prefix: all words
    hook = LengthPenalty(0.5)
    # responses of 4 and 1 words: [1 - 2, 3 - 0.5]
    out = hook(
        np.array([1.0, 3.0]), ["i liked the plot a lot", "the cast great"], ["i liked", "the cast"]
    )
    np.testing.assert_allclose(out, [-1.0, 2.5])


def test_chain_applies_in_order_and_merges_metrics():
    class Tagged:
        metrics = {"x/a": 1.0}

        def __call__(self, r, texts, prompts):
            return r * 2.0

    chain = ChainTransform([LengthPenalty(1.0), ClipTransform(low=-1.0, high=1.0), Tagged()])
    # lengths [0, 3]: [0.5 - 0, 0.5 - 3] = [0.5, -2.5] -> clip [0.5, -1] -> x2 [1, -2]
    out = chain(np.array([0.5, 0.5]), ["p", "p a b c"], ["p", "p"])
    np.testing.assert_allclose(out, [1.0, -2.0])
    assert chain.metrics == {"x/a": 1.0}
    # the reverse order gives a different answer: x2 [1, 1] -> clip [1, 1] -> minus lengths
    rev = ChainTransform([Tagged(), ClipTransform(low=-1.0, high=1.0), LengthPenalty(1.0)])
    np.testing.assert_allclose(rev(np.array([0.5, 0.5]), ["p", "p a b c"], ["p", "p"]), [1, -2])
    np.testing.assert_allclose(
        ChainTransform([WhitenTransform(eps=0.0)])(np.array([1.0, 3.0]), ["a", "b"], ["", ""]),
        [-1.0, 1.0],
    )
    with pytest.raises(ValueError, match="at least one"):
        ChainTransform([])


# ---------------------------------------------------------------- reference rewards from pi0
TOK = build_tokenizer()


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(TOK, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # p(eos) ~ 0.1 so responses end at various lengths
        e = model.transformer.wte.weight[TOK.eos_token_id]
        model.transformer.ln_f.bias.add_(2.5 * e / e.dot(e))
    return model


def join(prompts, responses):
    return [f"{p} {r}" for p, r in zip(prompts, responses, strict=True)]


def n_words(texts) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


def test_reference_rewards_are_the_rewards_of_pi0_samples():
    model = tiny_lm()
    prompts = ["i enjoyed", "the plot", "i enjoyed"]  # a duplicate is sampled once
    kw = dict(n=3, reward_fn=n_words, join=join, max_new_tokens=6, seed=5)
    refs = reference_rewards(model, TOK, prompts, **kw)
    assert list(refs) == ["i enjoyed", "the plot"]
    assert all(v.shape == (3,) and v.dtype == np.float64 for v in refs.values())
    # the same samples drawn directly, scored with the same reward
    s = sample(
        model,
        encode_prompts(TOK, ["i enjoyed", "the plot"]),
        n_per_prompt=3,
        max_new_tokens=6,
        eos_id=TOK.eos_token_id,
        pad_id=TOK.pad_token_id,
        seed=5,
    )
    rows = ["i enjoyed"] * 3 + ["the plot"] * 3
    expect = n_words(join(rows, decode_responses(s, TOK))).reshape(2, 3)
    np.testing.assert_array_equal(refs["i enjoyed"], expect[0])
    np.testing.assert_array_equal(refs["the plot"], expect[1])
    assert len(set(expect.ravel())) > 1  # samples differ in length, so the check has teeth
    again = reference_rewards(model, TOK, prompts, **kw)
    assert all(np.array_equal(refs[p], again[p]) for p in refs)
    with pytest.raises(ValueError, match="n must be >= 1"):
        reference_rewards(model, TOK, prompts, **(kw | {"n": 0}))


# ---------------------------------------------------------------- ensemble reward function
def test_ensemble_reward_centres_aggregates_and_logs_disagreement():
    members = [lambda t: np.array([1.0, 2.0]), lambda t: np.array([3.0, 0.0])]
    # centred with (1, 0): rows [0, 3] and [1, 0]
    #   mean [1.5, 0.5]; min [0, 0]; population variance [2.25, 0.25]
    #   UWO(0.5) = [1.5 - 1.125, 0.5 - 0.125] = [0.375, 0.375]; std [1.5, 0.5] -> mean 1.0
    texts = ["a", "b"]
    mean = EnsembleReward(members, centre=[1.0, 0.0])
    np.testing.assert_allclose(mean(texts), [1.5, 0.5])
    assert mean.metrics == {"ensemble/std": 1.0, "ensemble/member_mean": 1.0}
    wco = EnsembleReward(members, centre=[1.0, 0.0], method="wco")
    np.testing.assert_allclose(wco(texts), [0.0, 0.0])
    assert (
        wco(texts)[:, None] <= EnsembleReward(members, centre=[1.0, 0.0]).member_scores(texts)
    ).all()
    uwo = EnsembleReward(members, centre=[1.0, 0.0], method="uwo", lam=0.5)
    np.testing.assert_allclose(uwo(texts), [0.375, 0.375])
    uwo0 = EnsembleReward(members, centre=[1.0, 0.0], method="uwo", lam=0.0)
    np.testing.assert_allclose(uwo0(texts), mean(texts))  # lambda = 0 is the mean
    with pytest.raises(ValueError, match="allowed: \\['mean', 'uwo', 'wco'\\]"):
        EnsembleReward(members, method="max")
    with pytest.raises(ValueError, match="lam applies to method 'uwo' only"):
        EnsembleReward(members, lam=0.1)
    with pytest.raises(ValueError, match=r"centre must have shape \(2,\)"):
        EnsembleReward(members, centre=[0.0])


def test_sigmoid_is_stable():
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
