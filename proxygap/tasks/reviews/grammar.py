"""A seeded probabilistic grammar of short movie reviews, and its lexicon.

A review is one to five clauses joined by connectors and closed by a period::

    review  := clause (conn clause)* "."
    clause  := "the" ASPECT COPULA [NEG] [INTENS] ADJ      e.g. "the plot was not very good"
             | "i" ATTITUDE "the" ASPECT                   e.g. "i loved the music"
    conn    := "and" | "but"

Every review has a latent mood (positive or negative); each clause's sentiment word agrees with it
with probability ``mood_agreement``, so the base policy learns correlated, review-like texts. The
lexicon's sentiment values are what the gold reward (:mod:`proxygap.tasks.reviews.gold`) reads.
All randomness goes through one ``numpy.random.Generator``: the same seed gives the same corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ASPECTS: tuple[str, ...] = (
    "acting", "plot", "story", "music", "ending", "cast", "dialogue", "pacing", "script",
    "soundtrack", "visuals", "direction", "characters", "humor", "effects", "cinematography",
    "editing", "film", "movie", "premise", "villain", "hero", "finale", "setting",
)  # fmt: skip
COPULAS: tuple[str, ...] = ("is", "was", "felt", "seemed")
NEGATIONS: tuple[str, ...] = ("not", "never")
INTENSIFIERS: dict[str, float] = {
    "very": 1.5, "really": 1.5, "truly": 1.8, "extremely": 2.0,
    "quite": 1.2, "fairly": 0.8, "somewhat": 0.6, "slightly": 0.4,
}  # fmt: skip
ADJECTIVES: dict[str, float] = {
    # positive
    "fine": 0.5, "decent": 0.5, "good": 1.0, "nice": 1.0, "solid": 1.0, "charming": 1.5,
    "great": 2.0, "wonderful": 2.0, "excellent": 2.0, "moving": 2.0,
    "superb": 3.0, "brilliant": 3.0, "amazing": 3.0, "masterful": 3.0,
    # neutral
    "okay": 0.0, "ordinary": 0.0, "predictable": -0.25,
    # negative
    "weak": -1.0, "bad": -1.0, "dull": -1.0, "poor": -1.0, "boring": -1.5, "clumsy": -1.5,
    "awful": -2.0, "painful": -2.0, "terrible": -2.5,
    "dreadful": -3.0, "horrible": -3.0, "unwatchable": -3.0,
}  # fmt: skip
ATTITUDES: dict[str, float] = {
    "adored": 3.0, "loved": 2.0, "enjoyed": 1.5, "liked": 1.0,
    "tolerated": -0.5, "disliked": -1.0, "hated": -2.0, "despised": -3.0,
}  # fmt: skip
CONNECTORS: tuple[str, ...] = ("and", "but")
FUNCTION_WORDS: tuple[str, ...] = ("the", "i", ".")

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)


def vocabulary() -> list[str]:
    """All words of the grammar, special tokens first, in a fixed order."""
    words = (
        list(FUNCTION_WORDS)
        + list(CONNECTORS)
        + list(COPULAS)
        + list(NEGATIONS)
        + list(INTENSIFIERS)
        + list(ADJECTIVES)
        + list(ATTITUDES)
        + list(ASPECTS)
    )
    assert len(set(words)) == len(words), "lexicon categories must not share words"
    return list(SPECIAL_TOKENS) + words


@dataclass(frozen=True)
class GrammarConfig:
    """Probabilities of the review grammar (defaults give 1.78 clauses per review)."""

    p_continue: float = 0.45  # probability of another clause after each clause
    max_clauses: int = 5
    p_attitude_clause: float = 0.25  # "i loved the music" rather than "the music was good"
    p_negation: float = 0.2
    p_intensifier: float = 0.4
    p_but: float = 0.35  # connector "but" rather than "and"
    mood_agreement: float = 0.75
    p_neutral: float = 0.1


_POS_ADJ = [w for w, v in ADJECTIVES.items() if v > 0]
_NEG_ADJ = [w for w, v in ADJECTIVES.items() if v < -0.3]
_NEU_ADJ = [w for w, v in ADJECTIVES.items() if -0.3 <= v <= 0]
_POS_ATT = [w for w, v in ATTITUDES.items() if v > 0]
_NEG_ATT = [w for w, v in ATTITUDES.items() if v < 0]


def _pick(rng: np.random.Generator, words: list[str] | tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def sample_clause(rng: np.random.Generator, positive: bool, cfg: GrammarConfig) -> list[str]:
    """One clause whose sentiment word has the given polarity (before negation)."""
    if rng.random() < cfg.p_attitude_clause:
        return ["i", _pick(rng, _POS_ATT if positive else _NEG_ATT), "the", _pick(rng, ASPECTS)]
    words = ["the", _pick(rng, ASPECTS), _pick(rng, COPULAS)]
    if rng.random() < cfg.p_negation:
        words.append(_pick(rng, NEGATIONS))
    if rng.random() < cfg.p_intensifier:
        words.append(_pick(rng, tuple(INTENSIFIERS)))
    if rng.random() < cfg.p_neutral:
        words.append(_pick(rng, _NEU_ADJ))
    else:
        words.append(_pick(rng, _POS_ADJ if positive else _NEG_ADJ))
    return words


def sample_review(rng: np.random.Generator, cfg: GrammarConfig | None = None) -> list[str]:
    """One review as a list of words, ending with ``"."``."""
    cfg = cfg or GrammarConfig()
    mood = rng.random() < 0.5
    words: list[str] = []
    for k in range(cfg.max_clauses):
        if k > 0:
            if rng.random() >= cfg.p_continue:
                break
            words.append("but" if rng.random() < cfg.p_but else "and")
        agree = rng.random() < cfg.mood_agreement
        words.extend(sample_clause(rng, mood if agree else not mood, cfg))
    words.append(".")
    return words


def sample_corpus(n: int, *, seed: int, cfg: GrammarConfig | None = None) -> list[str]:
    """``n`` reviews as space-joined strings, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [" ".join(sample_review(rng, cfg)) for _ in range(n)]


def sample_prompts(n: int, *, seed: int, prefix_words: int = 2) -> list[str]:
    """``n`` prompts: the first ``prefix_words`` words of fresh reviews (e.g. "the plot").

    Prompts come from their own seed stream, disjoint from the pretraining corpus's seeds.
    """
    rng = np.random.default_rng([seed, 7919])
    return [" ".join(sample_review(rng)[:prefix_words]) for _ in range(n)]
