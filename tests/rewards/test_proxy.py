"""Tests for proxygap.rewards.proxy: one proxy's members scoring texts, normalised on references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from proxygap.rewards.ensemble import aggregate
from proxygap.rewards.proxy import ProxyScorer, aggregate_members
from proxygap.rewards.reward_model import new_reward_model, score_texts
from proxygap.tasks.reviews.build import build_tokenizer
from proxygap.tasks.reviews.grammar import sample_corpus

TOK = build_tokenizer()
REFERENCE = sample_corpus(40, seed=1)
TEXTS = sample_corpus(12, seed=2)


def _member(seed: int) -> torch.nn.Module:
    model = new_reward_model(TOK, n_embd=32, n_layer=1, n_head=2, n_positions=64, seed=seed)
    with torch.no_grad():
        model.score.weight.mul_(10.0 * (seed + 1))  # members on different scales
    return model.eval()


@pytest.fixture(scope="module")
def scorer() -> ProxyScorer:
    members = [_member(0), _member(1), _member(2)]
    return ProxyScorer("ens", members, TOK, REFERENCE, aggregation="uwo", uwo_lambda=0.5)


def test_reference_statistics_are_the_members_on_the_references(scorer: ProxyScorer) -> None:
    cols = [score_texts(m, TOK, REFERENCE) for m in scorer.models]
    raw = np.stack(cols, axis=1)
    assert scorer.n_members == 3 and scorer.reference.shape == (40, 3)
    np.testing.assert_array_equal(scorer.reference, raw)
    np.testing.assert_array_equal(scorer.centre, raw.mean(axis=0))
    np.testing.assert_array_equal(scorer.scale, raw.std(axis=0))
    std = scorer.standardised_reference
    np.testing.assert_allclose(std.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(std.std(axis=0), 1.0, atol=1e-9)


def test_centred_standardised_member_and_reward(scorer: ProxyScorer) -> None:
    raw = np.stack([score_texts(m, TOK, TEXTS) for m in scorer.models], axis=1)
    np.testing.assert_array_equal(scorer.raw(TEXTS), raw)
    np.testing.assert_array_equal(scorer.raw(TEXTS, [2])[:, 0], raw[:, 2])
    centred = raw - scorer.centre
    np.testing.assert_array_equal(scorer.centred(TEXTS), centred)
    np.testing.assert_array_equal(scorer.standardised(TEXTS), centred / scorer.scale)
    np.testing.assert_array_equal(scorer.member(1, TEXTS), centred[:, 1] / scorer.scale[1])
    # the proxy's reward: members centred (not scaled), then UWO with the configured lambda
    expected = aggregate(torch.from_numpy(centred), "uwo", lam=0.5).numpy()
    np.testing.assert_array_equal(scorer.reward(TEXTS), expected)


def test_a_member_constant_on_the_references_has_scale_one() -> None:
    flat = _member(0)
    with torch.no_grad():
        flat.score.weight.zero_()
    scorer = ProxyScorer("flat", [flat, _member(1)], TOK, REFERENCE)
    assert scorer.scale[0] == 1.0 and scorer.scale[1] > 0
    np.testing.assert_array_equal(scorer.standardised_reference[:, 0], 0.0)


def test_aggregate_members_reads_one_member_or_aggregates() -> None:
    x = np.array([[[1.0, 3.0], [0.0, -2.0]]])  # (1, 2, K=2)
    assert aggregate_members(x, "single", member=1).tolist() == [[3.0, -2.0]]
    assert aggregate_members(x, "mean").tolist() == [[2.0, -1.0]]
    assert aggregate_members(x, "uwo", lam=0.5).tolist() == [[1.5, -1.5]]
    with pytest.raises(ValueError, match="needs the member"):
        aggregate_members(x, "single")


def test_a_proxy_needs_members() -> None:
    with pytest.raises(ValueError, match="has no members"):
        ProxyScorer("none", [], TOK, REFERENCE)
