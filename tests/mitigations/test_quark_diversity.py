"""Tests for Quark (Lu et al. 2022): quantile buckets, the data pool and the loss; and for
DARLING's diversity-aware reward (Li et al. 2025)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from proxygap.mitigations.diversity import (
    DiversityTransform,
    darling_rewards,
    diversity_scores,
    jaccard_distance,
    ngram_set,
)
from proxygap.mitigations.quark import (
    QuarkPool,
    quantile_token_strings,
    quantile_tokens,
    quark_loss,
)


# ---------------------------------------------------------------- Quark buckets
def test_quantile_buckets_hand_values():
    # ascending order 0.1 < 0.2 < 0.3 < 0.4 at positions p = 0..3; bucket floor(k p / N)
    r = np.array([0.3, 0.1, 0.2, 0.4])
    np.testing.assert_array_equal(quantile_tokens(r, 2), [1, 0, 0, 1])  # floor(2 p / 4)
    np.testing.assert_array_equal(quantile_tokens(r, 4), [2, 0, 1, 3])
    np.testing.assert_array_equal(quantile_tokens(r, 1), [0, 0, 0, 0])
    # N = 5, distinct: k = 2 -> floor(2p/5) = [0, 0, 0, 1, 1]; k = 3 -> floor(3p/5) = [0,0,1,1,2]
    five = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    np.testing.assert_array_equal(quantile_tokens(five, 2), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(quantile_tokens(five, 3), [2, 1, 1, 0, 0])


def test_quantile_tie_rule_ties_share_the_lowest_bucket_of_their_block():
    # [1, 1, 1, 2]: the tied block starts at p = 0 -> all three in bucket 0; 2 at p = 3 -> 1
    np.testing.assert_array_equal(quantile_tokens(np.array([1.0, 1.0, 1.0, 2.0]), 2), [0, 0, 0, 1])
    # [1, 2, 2, 2]: the tied block starts at p = 1 -> floor(2 * 1 / 4) = 0: never promoted
    np.testing.assert_array_equal(quantile_tokens(np.array([1.0, 2.0, 2.0, 2.0]), 2), [0, 0, 0, 0])
    np.testing.assert_array_equal(quantile_tokens(np.full(6, 7.0), 3), np.zeros(6))


def test_quantile_buckets_against_a_naive_loop():
    rng = np.random.default_rng(0)
    for N, k in [(10, 3), (17, 5), (50, 7), (3, 5)]:
        r = rng.integers(0, 6, size=N).astype(float)  # many ties
        naive = [(k * sum(x < ri for x in r)) // N for ri in r]
        got = quantile_tokens(r, k)
        np.testing.assert_array_equal(got, naive)
        assert got.min() >= 0 and got.max() <= k - 1
        order = np.argsort(r, kind="stable")
        assert (np.diff(got[order]) >= 0).all()  # higher reward, never a worse bucket
        distinct = rng.permutation(N).astype(float)
        counts = np.bincount(quantile_tokens(distinct, k), minlength=k)
        if k <= N:
            assert counts.max() - counts.min() <= 1  # near-equal buckets
    with pytest.raises(ValueError, match="finite"):
        quantile_tokens(np.array([1.0, np.nan]), 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        quantile_tokens(np.array([1.0]), 0)


def test_token_strings():
    assert quantile_token_strings(3) == ["<rq0>", "<rq1>", "<rq2>"]


# ---------------------------------------------------------------- Quark pool
def test_pool_rebuckets_everything_on_add():
    pool = QuarkPool(2, seed=0)
    pool.add(["p"] * 4, ["a", "b", "c", "d"], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(pool.buckets, [0, 0, 1, 1])
    assert pool.example(3).token == "<rq1>" == pool.best_token
    pool.add(["q"] * 4, ["e", "f", "g", "h"], [0.5, 0.6, 0.7, 0.8])
    # the old top half (0.3, 0.4) is now in the bottom half of the 8-sample pool
    np.testing.assert_array_equal(pool.buckets, [0, 0, 0, 0, 1, 1, 1, 1])
    assert pool.example(3).token == "<rq0>"
    assert len(pool) == 8
    batch = pool.sample(5)
    assert len({(e.prompt, e.response) for e in batch}) == 5  # distinct examples
    for e in batch:
        i = ["a", "b", "c", "d", "e", "f", "g", "h"].index(e.response)
        assert e.bucket == pool.buckets[i] and e.token == f"<rq{e.bucket}>"
        assert e.reward == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8][i])
        assert e.prompt == ("p" if i < 4 else "q")
    m = pool.metrics()
    assert m["quark/pool_size"] == 8.0
    assert m["quark/reward_bucket0"] == pytest.approx(0.25)
    assert m["quark/reward_bucket1"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match=r"batch_size must lie in \[1, 8\]"):
        pool.sample(9)
    with pytest.raises(ValueError, match="2 prompts, 1 responses and 2 rewards"):
        pool.add(["p", "q"], ["a"], [1.0, 2.0])


# ---------------------------------------------------------------- Quark loss
def _two_tokens():
    # token 1: pi = (1/2, 1/2), pi0 = (1/4, 3/4), label 0
    # token 2: pi = pi0 = (4/5, 1/5), label 1
    logps = torch.log(torch.tensor([[[0.5, 0.5], [0.8, 0.2]]], dtype=torch.float64))
    ref = torch.log(torch.tensor([[[0.25, 0.75], [0.8, 0.2]]], dtype=torch.float64))
    return logps, ref, torch.tensor([[0, 1]])


def test_quark_loss_hand_values():
    """nll_1 = log 2; KL_1 = 1/2 log(1/2 / 1/4) + 1/2 log(1/2 / 3/4) = 1/2 log(4/3);
    nll_2 = log 5; KL_2 = 0. H_1 = log 2, H_2 = -(0.8 log 0.8 + 0.2 log 0.2)."""
    logps, ref, labels = _two_tokens()
    mask = torch.ones(1, 2)
    losses, m = quark_loss(logps, ref, labels, mask, beta=0.1)
    kl1 = 0.5 * math.log(4.0 / 3.0)
    expect = torch.tensor([[math.log(2.0) + 0.1 * kl1, math.log(5.0)]], dtype=torch.float64)
    torch.testing.assert_close(losses, expect)
    assert m["quark/kl"] == pytest.approx(kl1 / 2)
    assert m["quark/nll"] == pytest.approx((math.log(2.0) + math.log(5.0)) / 2)
    h2 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    losses, m = quark_loss(logps, ref, labels, mask, beta=0.0, entropy_coef=0.2)
    expect = torch.tensor([[math.log(2.0) * 0.8, math.log(5.0) - 0.2 * h2]], dtype=torch.float64)
    torch.testing.assert_close(losses, expect)


def test_quark_loss_mask_kl_oracle_and_gradients():
    logps, ref, labels = _two_tokens()
    padded = logps.clone()
    padded[0, 1] = float("nan")  # padding may hold anything
    losses, m = quark_loss(padded, ref, labels, torch.tensor([[1.0, 0.0]]), beta=0.1)
    assert losses[0, 1] == 0.0 and torch.isfinite(losses).all()
    assert m["quark/nll"] == pytest.approx(math.log(2.0))
    # KL(pi || pi0) against torch's kl_div(input=log pi0, target=log pi, log_target=True)
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).log_softmax(-1)
    lr = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).log_softmax(-1)
    lab = torch.randint(0, 6, (3, 4), generator=gen)
    mask = torch.ones(3, 4)
    oracle = F.kl_div(lr, lp, log_target=True, reduction="none").sum(-1)
    nll = -lp.gather(-1, lab[..., None])[..., 0]
    torch.testing.assert_close(quark_loss(lp, lr, lab, mask, beta=0.3)[0], nll + 0.3 * oracle)
    # smooth in the policy log-probs (float64 gradcheck)
    x = lp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: quark_loss(t, lr, lab, mask, beta=0.3, entropy_coef=0.1)[0], (x,)
    )
    with pytest.raises(ValueError, match=r"equal \(B, T, V\)"):
        quark_loss(lp, lr[:, :2], lab, mask, beta=0.1)
    with pytest.raises(ValueError, match=">= 0"):
        quark_loss(lp, lr, lab, mask, beta=-0.1)


# ---------------------------------------------------------------- DARLING
def test_diversity_identical_is_zero_disjoint_is_one():
    np.testing.assert_array_equal(diversity_scores(["a b c"] * 3, 3), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(diversity_scores(["a b", "c d", "e f"], 3), [1.0, 1.0, 1.0])
    # two groups are measured separately: [identical pair | disjoint pair]
    np.testing.assert_array_equal(diversity_scores(["x y", "x y", "x y", "u v"], 2), [0, 0, 1, 1])


def test_diversity_hand_values_and_darling_product():
    """bigrams: A = {ab, bc}, B = {ab, bd}, C = {xy, yz}.
    d(A,B) = 1 - 1/3 = 2/3, d(A,C) = d(B,C) = 1 -> Div = [(2/3 + 1)/2, same, 1] = [5/6, 5/6, 1].
    With threshold 0.3, sim(A,B) = 1/3 >= 0.3 counts as equivalent -> Div = [1/2, 1/2, 1]."""
    texts = ["a b c", "a b d", "x y z"]
    div = diversity_scores(texts, 3)
    np.testing.assert_allclose(div, [5 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(diversity_scores(texts, 3, threshold=0.3), [0.5, 0.5, 1.0])
    np.testing.assert_allclose(darling_rewards(np.array([1.0, 2.0, 3.0]), div), [5 / 6, 5 / 3, 3])
    # unigrams: A = {a,b,c}, B = {a,b,d}: d = 1 - 2/4 = 1/2
    np.testing.assert_allclose(diversity_scores(texts[:2], 2, n=1), [0.5, 0.5])


def test_ngram_edge_cases():
    assert ngram_set("a", 2) == frozenset([("a",)])  # shorter than n: one gram
    assert ngram_set("", 2) == frozenset()
    assert jaccard_distance(frozenset(), frozenset()) == 0.0
    np.testing.assert_array_equal(diversity_scores(["", "", "a b"], 3), [0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="do not split into groups of 2"):
        diversity_scores(["a", "b", "c"], 2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        diversity_scores(["a"], 1)


def test_diversity_transform_measures_responses_within_prompt_groups():
    hook = DiversityTransform(2)
    prompts = ["i liked", "i liked", "the plot", "the plot"]
    # group 1: identical responses -> 0; group 2: disjoint responses -> 1, even though the
    # full texts share the prompt's bigram
    texts = ["i liked x y", "i liked x y", "the plot a b", "the plot c d"]
    out = hook(np.array([1.0, 2.0, 3.0, 4.0]), texts, prompts)
    np.testing.assert_allclose(out, [0.0, 0.0, 3.0, 4.0])
    assert hook.metrics == {"diversity/group_mean": 0.5}
    with pytest.raises(ValueError, match="do not share one prompt"):
        hook(np.zeros(2), ["a b", "c d"], ["p", "q"])
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        DiversityTransform(1)
