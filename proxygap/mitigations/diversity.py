"""Diversity-aware rewards (DARLING: Li et al. 2025, "Jointly Reinforcing Diversity and Quality in
Language Model Generations"; docs/methods.md §4).

DARLING multiplies each response's quality reward by its normalised diversity within the group
of ``G`` responses to the same prompt: ``r_darling = r * Norm(Div(y_i))``, where ``Div`` is
the fraction of the other ``G - 1`` responses that a learned classifier judges semantically
distinct from ``y_i``, and optimises it with GRPO without the standard-deviation
normalisation. Here the learned classifier is replaced by lexical overlap (no such classifier
exists for the built-in tasks):

    d(i, j) = 1 - |A_i & A_j| / |A_i | A_j|        (Jaccard distance of n-gram sets)
    Div_i   = (1 / (G - 1)) sum_{j != i} d(i, j)

``A_i`` is the set of word n-grams of response ``i`` (``n = 2`` by default; a response with
fewer than ``n`` words contributes its whole word tuple as one gram, and two empty responses
are identical). Dividing by ``G - 1`` is the normalisation: ``Div_i`` lies in ``[0, 1]``, 0 when
every other response has the same n-gram set, 1 when none shares an n-gram with it. With
``threshold`` set, ``d(i, j) = 1[Jaccard similarity < threshold]``, DARLING's count of
distinct responses with a lexical equivalence test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ngram_set(text: str, n: int = 2) -> frozenset[tuple[str, ...]]:
    """Word n-grams of ``text`` (a shorter non-empty text gives its word tuple as one gram)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = text.split()
    if 0 < len(words) < n:
        return frozenset([tuple(words)])
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard_distance(a: frozenset, b: frozenset) -> float:
    """``1 - |a & b| / |a | b|``; 0 for two empty sets."""
    union = len(a | b)
    return 0.0 if union == 0 else 1.0 - len(a & b) / union


def _check_groups(n_rows: int, group_size: int) -> int:
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 to measure diversity, got {group_size}")
    if n_rows % group_size:
        raise ValueError(f"{n_rows} rows do not split into groups of {group_size}")
    return n_rows // group_size


def diversity_scores(
    texts: Sequence[str], group_size: int, *, n: int = 2, threshold: float | None = None
) -> np.ndarray:
    """``Div_i`` of every response within its group, ``(B,)`` in ``[0, 1]``.

    Args:
        texts: ``B = P * G`` responses, the ``G = group_size`` responses of one prompt in
            consecutive rows (as the RL recipe lays them out).
        group_size: ``G >= 2``.
        n: n-gram order.
        threshold: if set, count a pair as distinct iff its Jaccard similarity is below it.
    """
    P = _check_groups(len(texts), group_size)
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    grams = [ngram_set(t, n) for t in texts]
    out = np.zeros(len(texts), dtype=np.float64)
    for g in range(P):
        rows = range(g * group_size, (g + 1) * group_size)
        d = np.zeros((group_size, group_size))
        for a, i in enumerate(rows):
            for b in range(a + 1, group_size):
                dist = jaccard_distance(grams[i], grams[rows[b]])
                if threshold is not None:
                    dist = float(1.0 - dist < threshold)
                d[a, b] = d[b, a] = dist
        out[g * group_size : (g + 1) * group_size] = d.sum(axis=1) / (group_size - 1)
    return out


def darling_rewards(quality: np.ndarray, diversity: np.ndarray) -> np.ndarray:
    """``quality * diversity`` (DARLING's multiplicative fusion), ``(B,)``.

    The product rewards diversity only where quality is positive: use a quality reward that is
    non-negative (e.g. a shifted or sigmoid-transformed proxy); with a negative reward a more
    diverse response would be penalised more.
    """
    q = np.asarray(quality, dtype=np.float64)
    d = np.asarray(diversity, dtype=np.float64)
    if q.ndim != 1 or q.shape != d.shape:
        raise ValueError(f"quality and diversity must be equal (B,), got {q.shape}, {d.shape}")
    return q * d


class DiversityTransform:
    """Reward-transform hook: ``r * Div`` within each group of ``group_size`` consecutive rows.

    The rows of a group must share a prompt (checked). Diversity is measured on the response,
    i.e. the text after its prompt when the text starts with it. ``metrics`` holds
    ``diversity/group_mean`` (mean ``Div`` of the last batch).
    """

    def __init__(self, group_size: int, *, n: int = 2, threshold: float | None = None) -> None:
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 to measure diversity, got {group_size}")
        self.group_size, self.n, self.threshold = group_size, n, threshold
        self.metrics: dict[str, float] = {}

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        P = _check_groups(len(texts), self.group_size)
        G = self.group_size
        for g in range(P):
            if len(set(prompts[g * G : (g + 1) * G])) != 1:
                raise ValueError(
                    f"rows {g * G}..{(g + 1) * G - 1} do not share one prompt; DiversityTransform "
                    f"needs the {G} samples of each prompt in consecutive rows"
                )
        responses = [
            t[len(p) :] if p and t.startswith(p) else t for t, p in zip(texts, prompts, strict=True)
        ]
        div = diversity_scores(responses, G, n=self.n, threshold=self.threshold)
        self.metrics = {"diversity/group_mean": float(div.mean())}
        return darling_rewards(rewards, div)
