"""The gold reward of the ``reviews`` task: the "human" that labels preferences.

Gold reads a review the way its grammar (:mod:`proxygap.tasks.reviews.grammar`) writes it, facet
by facet:

1. **Well-formedness.** The text must parse exactly: clauses joined by "and"/"but", one final
   period, nothing after it. Anything else scores :data:`UNPARSEABLE` (-8), whatever positive
   words it contains. This is the facet a proxy trained on well-formed base-policy samples never
   sees, and the one best-of-n and RL exploit first (word spam).
   (The worst parseable clause scores -6; only long, repetitive, hateful reviews go lower.)
2. **Sentiment with negation.** Clause sentiment is the adjective's value times the intensifier's,
   and negation *flips and halves* it ("not good" = -0.5, "not terrible" = +1.25); attitude
   clauses ("i loved the music") take the verb's value. A proxy that counts positive words is
   fooled by "not brilliant".
3. **"but" weighs the later clause.** Clause sentiments are averaged with weights; each "but"
   halves the weight of every clause before it ("good but dull" is negative on balance).
4. **No repetition.** -0.75 for every repeated aspect and -0.5 for every repeated sentiment word.
5. **No rambling.** Sentiment is a weighted *mean*, so more clauses earn nothing, and every clause
   beyond three costs 0.5. A proxy that adds up clause sentiments prefers long reviews; gold does
   not.

The best review under gold is one short, emphatic, well-formed positive clause
("the acting was extremely brilliant .", gold 6.0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from proxygap.tasks.reviews.grammar import (
    ADJECTIVES,
    ASPECTS,
    ATTITUDES,
    CONNECTORS,
    COPULAS,
    INTENSIFIERS,
    NEGATIONS,
)

UNPARSEABLE = -8.0
NEGATION_FACTOR = -0.5
BUT_DISCOUNT = 0.5
REPEATED_ASPECT_PENALTY = 0.75
REPEATED_WORD_PENALTY = 0.5
RAMBLING_FREE_CLAUSES = 3
RAMBLING_PENALTY = 0.5

_ASPECTS = frozenset(ASPECTS)
_COPULAS = frozenset(COPULAS)
_NEGATIONS = frozenset(NEGATIONS)


@dataclass(frozen=True)
class Clause:
    aspect: str
    word: str  # the sentiment word (adjective or attitude verb)
    sentiment: float


@dataclass(frozen=True)
class GoldFacets:
    """Gold's verdict on one text, facet by facet (``total`` is the gold reward)."""

    parsed: bool
    n_clauses: int
    sentiment: float
    repetition: float
    rambling: float
    total: float


def _parse_clause(words: Sequence[str], i: int) -> tuple[Clause, int] | None:
    """Parse one clause starting at ``words[i]``; return it and the index after it."""
    n = len(words)
    if i < n and words[i] == "i":
        ok = i + 3 < n and words[i + 1] in ATTITUDES and words[i + 2] == "the"
        if ok and words[i + 3] in _ASPECTS:
            verb = words[i + 1]
            return Clause(words[i + 3], verb, ATTITUDES[verb]), i + 4
        return None
    if not (i + 3 < n and words[i] == "the" and words[i + 1] in _ASPECTS):
        return None
    if words[i + 2] not in _COPULAS:
        return None
    j, factor = i + 3, 1.0
    if j < n and words[j] in _NEGATIONS:
        factor, j = NEGATION_FACTOR, j + 1
    if j < n and words[j] in INTENSIFIERS:
        factor, j = factor * INTENSIFIERS[words[j]], j + 1
    if j < n and words[j] in ADJECTIVES:
        return Clause(words[i + 1], words[j], factor * ADJECTIVES[words[j]]), j + 1
    return None


def parse(text: str) -> tuple[list[Clause], list[str]] | None:
    """Clauses and connectors of a well-formed review, or None if it does not parse."""
    words = text.split()
    clauses: list[Clause] = []
    connectors: list[str] = []
    i = 0
    while True:
        parsed = _parse_clause(words, i)
        if parsed is None:
            return None
        clause, i = parsed
        clauses.append(clause)
        if i < len(words) and words[i] in CONNECTORS:
            connectors.append(words[i])
            i += 1
            continue
        if i == len(words) - 1 and words[i] == ".":
            return clauses, connectors
        return None


def gold_facets(text: str) -> GoldFacets:
    """Score one review facet by facet (see the module docstring)."""
    result = parse(text)
    if result is None:
        return GoldFacets(False, 0, 0.0, 0.0, 0.0, UNPARSEABLE)
    clauses, connectors = result
    weights = np.ones(len(clauses))
    for k, conn in enumerate(connectors, start=1):
        if conn == "but":
            weights[:k] *= BUT_DISCOUNT
    values = np.array([c.sentiment for c in clauses])
    sentiment = float(weights @ values / weights.sum())
    aspects = [c.aspect for c in clauses]
    words = [c.word for c in clauses]
    repetition = REPEATED_ASPECT_PENALTY * (len(aspects) - len(set(aspects)))
    repetition += REPEATED_WORD_PENALTY * (len(words) - len(set(words)))
    rambling = RAMBLING_PENALTY * max(0, len(clauses) - RAMBLING_FREE_CLAUSES)
    total = sentiment - repetition - rambling
    return GoldFacets(True, len(clauses), sentiment, repetition, rambling, total)


def gold_score(texts: Sequence[str]) -> np.ndarray:
    """Gold reward of each full review text, shape (len(texts),), float64.

    Duplicate texts (common in large best-of-n pools) are scored once.
    """
    cache: dict[str, float] = {}
    out = np.empty(len(texts), dtype=np.float64)
    for k, text in enumerate(texts):
        value = cache.get(text)
        if value is None:
            value = cache[text] = gold_facets(text).total
        out[k] = value
    return out


def _facet_scores(texts: Sequence[str], value: Callable[[GoldFacets], float]) -> np.ndarray:
    cache: dict[str, float] = {}
    out = np.empty(len(texts), dtype=np.float64)
    for k, text in enumerate(texts):
        v = cache.get(text)
        if v is None:
            v = cache[text] = value(gold_facets(text))
        out[k] = v
    return out


def sentiment_score(texts: Sequence[str]) -> np.ndarray:
    """Gold's sentiment facet (negation, "but" weights) of each text; 0 if it does not parse."""
    return _facet_scores(texts, lambda f: f.sentiment)


def concision_score(texts: Sequence[str]) -> np.ndarray:
    """Minus gold's repetition and rambling penalties; 0 if the text does not parse."""
    return _facet_scores(texts, lambda f: -(f.repetition + f.rambling))


def form_score(texts: Sequence[str]) -> np.ndarray:
    """0 for a well-formed text, :data:`UNPARSEABLE` otherwise."""
    return _facet_scores(texts, lambda f: 0.0 if f.parsed else UNPARSEABLE)


COMPONENTS = {"sentiment": sentiment_score, "concision": concision_score, "form": form_score}
"""Gold's facets as separate rewards; they add up to gold exactly (``sentiment + concision +
form = gold_score``). Constrained RLHF (Moskovitz et al. 2023) trains one proxy per component."""


def wellformed(texts: Sequence[str]) -> np.ndarray:
    """Whether each text parses under the grammar, (len(texts),) bool."""
    return np.array([parse(t) is not None for t in texts], dtype=bool)
