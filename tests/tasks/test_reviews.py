"""Tests for the built-in ``reviews`` task: its grammar, its gold reward and its tokenizer."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from proxygap.tasks.reviews.build import build_tokenizer
from proxygap.tasks.reviews.gold import (
    UNPARSEABLE,
    GoldFacets,
    gold_facets,
    gold_score,
    parse,
    wellformed,
)
from proxygap.tasks.reviews.grammar import (
    ADJECTIVES,
    ASPECTS,
    ATTITUDES,
    INTENSIFIERS,
    NEGATIONS,
    GrammarConfig,
    sample_corpus,
    sample_prompts,
    sample_review,
    vocabulary,
)

# ---------------------------------------------------------------- grammar


def test_every_sampled_review_parses_and_ends_with_one_period() -> None:
    corpus = sample_corpus(2_000, seed=123)
    assert len(corpus) == 2_000
    for text in corpus:
        assert parse(text) is not None, text
        assert text.endswith(" .") and text.count(".") == 1, text
    assert wellformed(corpus).all()


def test_number_of_clauses_follows_p_continue() -> None:
    # N clauses: after each clause another follows with p = 0.45, at most 5 clauses, so
    # P(N = k) = 0.45^(k-1) * 0.55 for k < 5 and P(N = 5) = 0.45^4;
    # E[N] = sum_k P(N >= k) = 1 + 0.45 + 0.2025 + 0.091125 + 0.04100625 = 1.78463125.
    p = 0.45
    probs = {k: p ** (k - 1) * (1 - p) for k in range(1, 5)} | {5: p**4}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    mean = sum(k * q for k, q in probs.items())
    assert mean == pytest.approx(1.78463125, abs=1e-12)
    var = sum(k * k * q for k, q in probs.items()) - mean**2
    n = 4_000
    counts = [len(parse(t)[0]) for t in sample_corpus(n, seed=5)]  # type: ignore[index]
    assert set(counts) <= {1, 2, 3, 4, 5}
    assert abs(np.mean(counts) - mean) < 4 * math.sqrt(var / n)


def test_grammar_config_extremes() -> None:
    # No continuation, no attitude clause, always "not", never an intensifier or neutral word,
    # mood always agreeing: every review is "the ASPECT COPULA NEG ADJ ." with gold -0.5 * adj.
    cfg = GrammarConfig(
        p_continue=0.0, p_attitude_clause=0.0, p_negation=1.0, p_intensifier=0.0, p_neutral=0.0
    )
    rng = np.random.default_rng(0)
    for _ in range(300):
        words = sample_review(rng, cfg)
        assert len(words) == 6 and words[0] == "the" and words[3] in NEGATIONS, words
        assert gold_facets(" ".join(words)).total == -0.5 * ADJECTIVES[words[4]]


def test_mood_agreement_one_gives_one_polarity_per_review() -> None:
    # mood_agreement = 1 and no negation/neutral words: all clause sentiments share one sign.
    cfg = GrammarConfig(p_continue=1.0, mood_agreement=1.0, p_negation=0.0, p_neutral=0.0)
    rng = np.random.default_rng(1)
    signs = []
    for _ in range(300):
        clauses, connectors = parse(" ".join(sample_review(rng, cfg)))  # type: ignore[misc]
        assert len(clauses) == 5 and len(connectors) == 4  # p_continue = 1: always max_clauses
        clause_signs = {math.copysign(1.0, c.sentiment) for c in clauses}
        assert len(clause_signs) == 1 and 0.0 not in {c.sentiment for c in clauses}
        signs.append(clause_signs.pop())
    # the mood is a fair coin: 300 reviews, 4-sigma band = 4 * sqrt(300 / 4) = 34.6
    assert abs(sum(s > 0 for s in signs) - 150) < 35


def test_same_seed_same_corpus_different_seed_different_corpus() -> None:
    a = sample_corpus(200, seed=7)
    assert a == sample_corpus(200, seed=7)
    b = sample_corpus(200, seed=8)
    assert a != b
    # not just one review apart: most reviews differ at the same index
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 100
    assert sample_prompts(50, seed=7) == sample_prompts(50, seed=7)
    assert sample_prompts(50, seed=7) != sample_prompts(50, seed=8)


@pytest.mark.parametrize("prefix_words", [1, 2, 3])
def test_prompts_are_prefixes_of_grammatical_reviews(prefix_words: int) -> None:
    prompts = sample_prompts(300, seed=11, prefix_words=prefix_words)
    # the prompts' own stream: numpy's default_rng([seed, 7919]), one review per prompt
    rng = np.random.default_rng([11, 7919])
    for prompt in prompts:
        review = sample_review(rng)
        assert parse(" ".join(review)) is not None
        assert prompt == " ".join(review[:prefix_words])
        assert len(prompt.split()) == prefix_words
    heads = {p.split()[0] for p in prompts}
    assert heads == {"the", "i"}  # both clause kinds start reviews
    if prefix_words == 2:
        for p in prompts:
            first, second = p.split()
            assert (first == "the" and second in ASPECTS) or (first == "i" and second in ATTITUDES)


def test_prompts_differ_from_the_corpus_stream() -> None:
    # prompts use seed stream [seed, 7919], not the corpus's default_rng(seed)
    corpus_prefixes = [" ".join(t.split()[:2]) for t in sample_corpus(100, seed=3)]
    assert sample_prompts(100, seed=3) != corpus_prefixes


# ---------------------------------------------------------------- gold: hand-derived values

HAND_CASES = [
    # one clause: adjective value times intensifier
    ("the acting was extremely brilliant .", 6.0),  # 2.0 * 3.0 = 6.0
    ("the plot was good .", 1.0),  # 1.0
    ("the plot is fairly dull .", -0.8),  # 0.8 * -1.0 = -0.8
    ("the plot was very okay .", 0.0),  # 1.5 * 0.0 = 0.0
    ("the villain was extremely horrible .", -6.0),  # 2.0 * -3.0 = -6.0, the worst clause
    # negation flips and halves
    ("the plot was not good .", -0.5),  # -0.5 * 1.0 = -0.5
    ("the plot was not terrible .", 1.25),  # -0.5 * -2.5 = 1.25
    ("the plot was not very terrible .", 1.875),  # -0.5 * 1.5 * -2.5 = 1.875
    ("the plot was never slightly good .", -0.2),  # -0.5 * 0.4 * 1.0 = -0.2
    ("the plot was not brilliant .", -1.5),  # -0.5 * 3.0 = -1.5
    # attitude clauses take the verb's value
    ("i despised the villain .", -3.0),
    ("i enjoyed the soundtrack .", 1.5),
    # "and" averages with equal weights
    ("the plot was great and the music was dull .", 0.5),  # (2 + -1) / 2 = 0.5
    # "but" halves the weight of every clause before it: weights [0.5, 1]
    ("the plot was great but the music was dull .", 0.0),  # (0.5*2 + 1*(-1)) / 1.5 = 0.0
    ("the plot was good but the music was dull .", -1 / 3),  # (0.5*1 - 1) / 1.5 = -1/3
    # two "but"s: weights [1,1,1] -> [0.5,1,1] -> [0.25,0.5,1];
    # (0.25*2 + 0.5*(-1) + 1*3) / 1.75 = 3 / 1.75 = 12/7
    ("the plot was great but the music was dull but the acting was brilliant .", 12 / 7),
    # "and" then "but": weights [0.5, 0.5, 1]; (0.5*2 + 0.5*(-1) + 3) / 2 = 1.75
    ("the plot was great and the music was dull but the acting was brilliant .", 1.75),
    # repeated aspect: sentiment (2 + 1) / 2 = 1.5, minus 0.75 -> 0.75
    ("i loved the music and the music was good .", 0.75),
    # repeated sentiment word: sentiment (1 + 1) / 2 = 1, minus 0.5 -> 0.5
    ("the plot was good and the music was good .", 0.5),
    # aspect and word both repeated twice over three clauses: sentiment 1,
    # repetition 2*0.75 + 2*0.5 = 2.5 -> -1.5
    ("the plot was good and the plot was good and the plot was good .", -1.5),
    # five clauses: mean (1 + 1 + 1 + 0.5 + 0.5) / 5 = 0.8, rambling (5 - 3) * 0.5 = 1 -> -0.2
    (
        "the plot was good and the music was nice and the acting was solid and "
        "the ending was fine and the cast was decent .",
        -0.2,
    ),
    # five clauses, "good" twice: mean (1 + 1 + 1 + 0.5 + 0.5) / 5 = 0.8,
    # repeated word 0.5, rambling 1 -> 0.8 - 0.5 - 1 = -0.7
    (
        "the plot was good and the music was nice and the acting was good and "
        "the ending was fine and the cast was decent .",
        -0.7,
    ),
]


@pytest.mark.parametrize(("text", "expected"), HAND_CASES)
def test_gold_hand_derived(text: str, expected: float) -> None:
    assert gold_facets(text).total == pytest.approx(expected, abs=1e-12)
    assert gold_score([text])[0] == pytest.approx(expected, abs=1e-12)


def test_gold_facets_of_a_five_clause_review() -> None:
    # clauses good 1, great 2, good 1, dull -1, okay 0 over aspects plot, music, plot, cast, film;
    # connectors and, but, and, but: weights start [1]*5, but #2 -> [.5,.5,1,1,1],
    # but #4 -> [.25,.25,.5,.5,1]; sum 2.5; weighted sum .25 + .5 + .5 - .5 + 0 = 0.75 -> 0.3
    # repetition: aspect "plot" twice 0.75 + word "good" twice 0.5 = 1.25; rambling 2 * 0.5 = 1
    text = (
        "the plot was good and the music was great but the plot was good and "
        "the cast was dull but the film was okay ."
    )
    f = gold_facets(text)
    assert f.parsed and f.n_clauses == 5
    assert f.sentiment == pytest.approx(0.3, abs=1e-12)
    assert f.repetition == pytest.approx(1.25, abs=1e-12)
    assert f.rambling == pytest.approx(1.0, abs=1e-12)
    assert f.total == pytest.approx(0.3 - 1.25 - 1.0, abs=1e-12)


def test_parse_returns_clauses_and_connectors() -> None:
    clauses, connectors = parse("i loved the music but the plot was not very good .")  # type: ignore[misc]
    assert connectors == ["but"]
    assert [(c.aspect, c.word) for c in clauses] == [("music", "loved"), ("plot", "good")]
    assert clauses[0].sentiment == 2.0
    assert clauses[1].sentiment == pytest.approx(-0.75, abs=1e-12)  # -0.5 * 1.5 * 1.0


def test_single_clause_range_is_minus_six_to_six() -> None:
    # Exhaustive over one aspect/copula: 3 negation options x 9 intensifier options x 29 adjectives.
    # Max 2.0 * 3.0 = 6 (un-negated), min 2.0 * -3.0 = -6; negated the range is only [-3, 3].
    values = []
    for neg, inten, adj in itertools.product(
        [None, "not", "never"], [None, *INTENSIFIERS], ADJECTIVES
    ):
        words = ["the", "plot", "was", neg, inten, adj, "."]
        values.append(gold_facets(" ".join(w for w in words if w)).total)
    assert len(values) == 3 * 9 * 29
    assert max(values) == 6.0 and min(values) == -6.0
    for verb, v in ATTITUDES.items():
        assert gold_facets(f"i {verb} the plot .").total == v


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "the plot was good",  # no final period
        "the plot was good . and",  # text after the period
        "the plot was good . the plot was good .",  # two sentences
        "the plot was good . .",
        "the plot was good.",  # period glued to the word
        "brilliant brilliant .",  # word spam
        "brilliant brilliant brilliant brilliant brilliant .",
        "the plot was zesty .",  # unknown word
        "the Plot was good .",  # case matters
        "the plot good .",  # no copula
        "the plot was very not good .",  # intensifier before negation
        "the plot was not not good .",
        "i loved plot .",  # attitude clause without "the"
        "i loved the music the plot was good .",  # no connector
        "the plot was good and .",  # dangling connector
        "the plot was good but",
        "and the plot was good .",
    ],
)
def test_unparseable_texts_score_minus_eight(text: str) -> None:
    assert parse(text) is None
    assert gold_facets(text) == GoldFacets(False, 0, 0.0, 0.0, 0.0, UNPARSEABLE)
    assert UNPARSEABLE == -8.0
    assert gold_score([text])[0] == -8.0
    assert not wellformed([text])[0]


def test_gold_score_equals_facet_totals_and_handles_duplicates() -> None:
    texts = sample_corpus(300, seed=2)
    texts = texts + texts[:50] + ["brilliant brilliant .", "brilliant brilliant ."]
    scores = gold_score(texts)
    assert scores.shape == (352,) and scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [gold_facets(t).total for t in texts])
    np.testing.assert_array_equal(scores[300:350], scores[:50])
    assert scores[-1] == scores[-2] == -8.0
    assert gold_score([]).shape == (0,)


def test_wellformed_flags() -> None:
    texts = ["the plot was good .", "the plot was good", "i hated the ending .", "good good ."]
    got = wellformed(texts)
    assert got.dtype == np.bool_
    assert got.tolist() == [True, False, True, False]
    assert wellformed([]).shape == (0,)


# ---------------------------------------------------------------- tokenizer


def test_vocabulary_layout() -> None:
    vocab = vocabulary()
    # 4 special + 3 function words + 2 connectors + 4 copulas + 2 negations + 8 intensifiers
    # + 29 adjectives + 8 attitudes + 24 aspects = 84
    assert len(vocab) == 84 and len(set(vocab)) == 84
    assert vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]


def test_tokenizer_round_trips_every_word_and_maps_unknowns() -> None:
    tok = build_tokenizer()
    vocab = vocabulary()
    assert len(tok) == len(vocab)
    ids = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
    assert ids == (0, 1, 2, 3)  # distinct, in vocabulary order
    for index, word in enumerate(vocab[4:], start=4):
        encoded = tok.encode(word, add_special_tokens=False)
        assert encoded == [index], word
        assert tok.decode(encoded) == word
    # unknown words (and near-misses) map to <unk>, known ones keep their id
    encoded = tok.encode("zebra plot Plot goood", add_special_tokens=False)
    assert encoded == [3, vocab.index("plot"), 3, 3]


def test_tokenizer_round_trips_whole_reviews() -> None:
    # Gold reads decoded text: decoding must restore " ." exactly (no space clean-up).
    tok = build_tokenizer()
    texts = sample_corpus(100, seed=4)
    batch = tok(texts, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in {i for ids in batch for i in ids}
    assert [len(ids) for ids in batch] == [len(t.split()) for t in texts]
    assert tok.batch_decode(batch, skip_special_tokens=True) == texts
    with_specials = [[tok.bos_token_id, *ids, tok.eos_token_id, tok.pad_token_id] for ids in batch]
    assert tok.batch_decode(with_specials, skip_special_tokens=True) == texts
