"""Tests for proxygap.rewards.reward_model: encoding, batch-invariant scores, training, accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from proxygap.rewards.reward_model import (
    RewardTrainConfig,
    encode_texts,
    new_reward_model,
    pairwise_accuracy,
    score_texts,
    train_reward_model,
)
from proxygap.tasks.reviews.build import build_tokenizer
from proxygap.tasks.reviews.grammar import sample_corpus

TOK = build_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id  # 0, 1, 2
N_POSITIONS = 64

TEXTS = [
    "the plot was great .",
    "i loved the cast",
    "the",
    "",
    "the music was dull but the ending was very moving and the cast was superb .",
    " ".join(["the film was good and"] * 20),  # 100 words: truncated to 64 tokens
    "i loved the cast",  # duplicate of TEXTS[1]
]


@pytest.fixture(scope="module")
def rm():
    model = new_reward_model(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=N_POSITIONS, seed=0)
    with torch.no_grad():
        model.score.weight.mul_(20.0)  # random init gives rewards ~0.1; make them O(1)
    return model


def ids_of(words: str) -> list[int]:
    return TOK.convert_tokens_to_ids(words.split())


# ---------------------------------------------------------------- encode_texts


def test_encode_texts_hand_case() -> None:
    ids, attn = encode_texts(TOK, ["the plot was great", "i", ""], max_length=64)
    # [bos] text [eos], right-padded with pad to the longest row (4 words + 2 = 6)
    expected = torch.tensor(
        [
            [BOS, *ids_of("the plot was great"), EOS],
            [BOS, *ids_of("i"), EOS, PAD, PAD, PAD],
            [BOS, EOS, PAD, PAD, PAD, PAD],
        ]
    )
    assert torch.equal(ids, expected)
    assert torch.equal(attn, (expected != PAD).long())


def test_encode_texts_truncates_and_keeps_the_eos() -> None:
    text = "the film was good and the plot was dull ."  # 10 words
    ids, attn = encode_texts(TOK, [text, "i"], max_length=6)
    # max_length 6: [bos] + the first 4 words + [eos]
    assert ids[0].tolist() == [BOS, *ids_of("the film was good"), EOS]
    assert ids[1].tolist() == [BOS, *ids_of("i"), EOS, PAD, PAD, PAD]
    assert attn.sum(dim=1).tolist() == [6, 3]
    # every row's last attended token is eos
    last = attn.sum(dim=1) - 1
    assert torch.all(ids[torch.arange(2), last] == EOS)


# ---------------------------------------------------------------- score_texts


def score_one_by_one(model, texts):
    """Reference: each text in its own batch of one (no padding at all)."""
    return np.array([score_texts(model, TOK, [t])[0] for t in texts])


def test_score_is_invariant_to_batch_size_order_and_padding(rm) -> None:
    ref = score_one_by_one(rm, TEXTS)
    assert np.ptp(ref) > 0.5  # rewards differ between texts, so a mix-up would show
    for batch_size in (1, 2, 3, 1024):
        got = score_texts(rm, TOK, TEXTS, batch_size=batch_size)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    got = score_texts(rm, TOK, [TEXTS[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(got, ref[perm], rtol=0, atol=1e-5)
    # a short text padded in a batch with a 64-token one, first and last
    short, long_ = TEXTS[0], TEXTS[5]
    for batch in ([short, long_], [long_, short]):
        got = dict(zip(batch, score_texts(rm, TOK, batch, batch_size=2), strict=True))
        np.testing.assert_allclose(got[short], ref[0], rtol=0, atol=1e-5)
    assert score_texts(rm, TOK, TEXTS).dtype == np.float64


def test_score_reads_the_head_at_the_eos(rm) -> None:
    # Independent reference: the score head applied to the trunk's hidden state at the eos of
    # the unpadded [bos] text [eos] sequence.
    text = TEXTS[4]
    ids = torch.tensor([[BOS, *ids_of(text), EOS]])
    with torch.no_grad():
        h = rm.transformer(input_ids=ids).last_hidden_state[0, -1]  # (C,)
        expected = float(rm.score(h)[0])
    assert score_texts(rm, TOK, [text])[0] == pytest.approx(expected, abs=1e-5)


def test_duplicates_are_scored_once_and_returned_everywhere(rm) -> None:
    rows_seen: list[int] = []

    def count_rows(module, args, kwargs, output):
        rows_seen.append(int(kwargs["input_ids"].shape[0]))

    texts = ["a", "i loved the cast", "the", "i loved the cast", "the", "i loved the cast"]
    handle = rm.register_forward_hook(count_rows, with_kwargs=True)
    try:
        got = score_texts(rm, TOK, texts, batch_size=2)
    finally:
        handle.remove()
    assert sum(rows_seen) == 3  # "a", "i loved the cast", "the"
    assert got[1] == got[3] == got[5] and got[2] == got[4]
    np.testing.assert_allclose(got, score_one_by_one(rm, texts), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- training


def synthetic_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Pairs that differ in one word at a random position: "brilliant" (chosen), "awful"."""
    rng = np.random.default_rng(seed)
    chosen, rejected = [], []
    for review in sample_corpus(n, seed=seed):
        words = review.split()
        k = int(rng.integers(0, len(words) + 1))
        chosen.append(" ".join([*words[:k], "brilliant", *words[k:]]))
        rejected.append(" ".join([*words[:k], "awful", *words[k:]]))
    return chosen, rejected


def test_training_learns_a_trivial_preference() -> None:
    chosen, rejected = synthetic_pairs(256, seed=0)
    held_c, held_r = synthetic_pairs(128, seed=1)
    model = new_reward_model(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=N_POSITIONS, seed=0)
    before = pairwise_accuracy(
        score_texts(model, TOK, held_c),
        score_texts(model, TOK, held_r),
        np.ones(128),
        np.zeros(128),
    )
    cfg = RewardTrainConfig(epochs=4, lr=3e-3, batch_size=32, seed=0)
    history = train_reward_model(model, TOK, chosen, rejected, cfg=cfg)
    assert not model.training
    assert len(history.loss) == len(history.accuracy) == 4 * math.ceil(256 / 32)
    assert history.loss[0] > 0.5 and np.mean(history.loss[-4:]) < 0.2  # from ~log 2 to ~0
    r_c, r_r = score_texts(model, TOK, held_c), score_texts(model, TOK, held_r)
    after = pairwise_accuracy(r_c, r_r, np.ones(128), np.zeros(128))
    assert before < 0.9 and after > 0.95, (before, after)  # untrained: 0.72 with seed 0


def test_train_rejects_unequal_pairs() -> None:
    model = new_reward_model(TOK, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(ValueError, match="equally many"):
        train_reward_model(model, TOK, ["a", "b"], ["c"], cfg=RewardTrainConfig())
    with pytest.raises(ValueError, match="equally many"):
        train_reward_model(model, TOK, [], [], cfg=RewardTrainConfig())


# ---------------------------------------------------------------- pairwise_accuracy


def test_pairwise_accuracy_hand_cases() -> None:
    r_a = np.array([1.0, 2.0, 3.0, 3.0, 5.0])
    r_b = np.array([0.0, 3.0, 3.0, 1.0, 5.0])
    g_a = np.array([1.0, 1.0, 0.0, 2.0, 7.0])
    g_b = np.array([0.0, 0.0, 1.0, 2.0, 1.0])
    # pair 0: dr = +1, dg = +1 -> agree          1
    # pair 1: dr = -1, dg = +1 -> disagree       0
    # pair 2: dr =  0, dg = -1 -> reward tie     1/2
    # pair 3: dg = 0             -> gold tie, skipped
    # pair 4: dr =  0, dg = +6 -> reward tie     1/2
    # mean over the 4 kept pairs: (1 + 0 + 1/2 + 1/2) / 4 = 1/2
    assert pairwise_accuracy(r_a, r_b, g_a, g_b) == 0.5
    # only pairs 0 and 1 kept by making the others gold ties: (1 + 0) / 2
    g_b2 = np.array([0.0, 0.0, 0.0, 2.0, 7.0])
    assert pairwise_accuracy(r_a, r_b, np.array([1.0, 1.0, 0.0, 2.0, 7.0]), g_b2) == 0.5
    # swapping both sides of every pair leaves agreement unchanged
    assert pairwise_accuracy(r_b, r_a, g_b, g_a) == 0.5
    # a constant reward model scores exactly 1/2, a perfect one 1, a reversed one 0
    g = np.arange(6.0)
    rng = np.random.default_rng(0)
    ga, gb = rng.permutation(g), rng.permutation(g)  # some positions may tie: skipped
    assert pairwise_accuracy(np.zeros(6), np.zeros(6), ga, gb) == 0.5
    assert pairwise_accuracy(2 * ga + 1, 2 * gb + 1, ga, gb) == 1.0
    assert pairwise_accuracy(-ga, -gb, ga, gb) == 0.0


def test_pairwise_accuracy_all_gold_ties_is_nan() -> None:
    g = np.array([1.0, 2.0])
    assert math.isnan(pairwise_accuracy(np.array([0.0, 1.0]), np.array([1.0, 0.0]), g, g))
