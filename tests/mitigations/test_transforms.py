"""Tests for proxygap.mitigations.transforms: LSC (Wang et al. 2024), PAR (Fu et al. 2025),
length penalty, clipping, whitening and their hooks."""

from __future__ import annotations

import math

import numpy as np
import pytest

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


def test_sigmoid_is_stable():
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])
