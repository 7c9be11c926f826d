"""Reward-model ensembles as a reward function for RL (Coste et al. 2023; METHODS.md §4).

The aggregations themselves (mean, WCO, UWO) live in :mod:`proxygap.rewards.ensemble`; this
module turns ``K`` member scorers into the ``reward_fn`` the RL recipe calls, with the members
centred on base-policy samples first (each member's mean over ``pi0`` samples subtracted, as the
best-of-n study does) and the disagreement between members kept as a metric. For best-of-n,
aggregate the ``(P, N, K)`` member scores of the pool directly
(:func:`proxygap.study.bon.normalised`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from proxygap.rewards.ensemble import AGGREGATIONS, aggregate, ensemble_std

ScoreFn = Callable[[Sequence[str]], np.ndarray]


class EnsembleReward:
    """``texts -> (B,)``: the aggregation of ``K`` centred member rewards.

    Args:
        members: ``K >= 1`` scorers ``texts -> (B,)`` (e.g. ``score_texts`` of each member).
        centre: ``(K,)`` each member's mean on base-policy samples, subtracted before
            aggregating (zeros if None: members already centred).
        method: ``"mean"``, ``"wco"`` or ``"uwo"``.
        lam: UWO's variance weight (only with ``method="uwo"``; 0.5 in Coste et al.'s best-of-n,
            about 0.1 in their PPO runs).

    After every call ``metrics`` holds ``ensemble/std`` (mean over the batch of the population
    standard deviation across members) and ``ensemble/member_mean`` (mean centred reward).
    """

    def __init__(
        self,
        members: Sequence[ScoreFn],
        *,
        centre: Sequence[float] | np.ndarray | None = None,
        method: str = "mean",
        lam: float | None = None,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if method not in AGGREGATIONS:
            raise ValueError(
                f"unknown ensemble aggregation {method!r}; allowed: {sorted(AGGREGATIONS)}"
            )
        if lam is not None and method != "uwo":
            raise ValueError(f"lam applies to method 'uwo' only, got method {method!r}")
        self.members = list(members)
        K = len(self.members)
        self.centre = np.zeros(K) if centre is None else np.asarray(centre, dtype=np.float64)
        if self.centre.shape != (K,):
            raise ValueError(f"centre must have shape ({K},), got {self.centre.shape}")
        self.method = method
        self.kwargs = {"lam": lam} if lam is not None else {}
        self.metrics: dict[str, float] = {}

    def member_scores(self, texts: Sequence[str]) -> np.ndarray:
        """``(B, K)`` centred member rewards."""
        cols = [np.asarray(m(texts), dtype=np.float64) for m in self.members]
        return np.stack(cols, axis=1) - self.centre

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        scores = torch.from_numpy(self.member_scores(texts))  # (B, K)
        self.metrics = {
            "ensemble/std": float(ensemble_std(scores).mean()),
            "ensemble/member_mean": float(scores.mean()),
        }
        return aggregate(scores, self.method, **self.kwargs).numpy()
