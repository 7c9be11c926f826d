"""The rewards of the mitigation study and what its evaluator records.

Units. Every ensemble member is standardised on base-policy samples (the held-out pair
responses): its mean there is subtracted and it is divided by its standard deviation there, so
members trained to different scales weigh alike in an aggregation (a member with a compressed
scale would otherwise be the minimum of WCO on most high-scoring texts). Standardising changes
no member's own ranking. A reported proxy is divided by its standard deviation on the same
samples, so ``proxy - gold`` compares like with like (gold is scaled the same way). Component
proxies (constrained RLHF) are standardised one by one, and their composite is their sum.
Members are scored through the study's one proxy path (:func:`proxygap.study.scoring.proxy_scorer`;
:meth:`proxygap.rewards.proxy.ProxyScorer.standardised`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from proxygap.config import MitigationRunConfig
from proxygap.rewards.proxy import ProxyScorer, aggregate_members
from proxygap.study.context import StudyContext
from proxygap.study.scoring import proxy_scorer

__all__ = ["ComponentScorer", "EvalProbe"]


class ComponentScorer:
    """Standardised component proxies ``texts -> (B, C)``: each proxy's standardised members
    averaged, then standardised again on base-policy samples (a no-op for one member)."""

    def __init__(self, ctx: StudyContext, names: Sequence[str]) -> None:
        self.names = list(names)
        self.scorers = [proxy_scorer(ctx, n) for n in self.names]
        means = [s.standardised_reference.mean(axis=1) for s in self.scorers]
        ref = np.stack(means, axis=1)  # (M, C)
        self.scale = ref.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.ref = ref / self.scale
        self._last: tuple[tuple[str, ...], np.ndarray] | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        # a constrained arm's reward and its constraint read the same rollout: score it once
        key = tuple(texts)
        if self._last is not None and self._last[0] == key:
            return self._last[1].copy()
        cols = [s.standardised(texts).mean(axis=1) for s in self.scorers]
        out = np.stack(cols, axis=1) / self.scale
        self._last = (key, out)
        return out


class EvalProbe:
    """The evaluator's proxy for one arm, ``texts -> (B,)``: the untransformed reward the arm
    optimises (member, aggregation, or component sum) over its standard deviation on
    base-policy samples. Every call appends to ``rows`` the mean over the texts of the
    population std across the ensemble's K standardised members (``ensemble/std``) and, for
    arms with components, each component's mean (``component/<name>``, standardised units);
    :meth:`join`, a watcher of the run, puts them into its evaluation rows."""

    def __init__(
        self,
        members: ProxyScorer,
        arm: MitigationRunConfig,
        *,
        member: int,
        components: ComponentScorer | None = None,
    ) -> None:
        if arm.components and components is None:
            raise ValueError(f"arm {arm.name!r} needs its component scorer")
        self.members, self.components, self.arm, self.member = members, components, arm, member
        ref_comps = components.ref if arm.components and components is not None else None
        self.scale = float(self._reward(members.standardised_reference, ref_comps).std()) or 1.0
        self.rows: list[dict[str, float]] = []
        self._joined = 0

    def _reward(self, cols: np.ndarray, comps: np.ndarray | None) -> np.ndarray:
        if self.arm.components:
            assert comps is not None
            return comps.sum(axis=1)
        return aggregate_members(
            cols, self.arm.aggregation, member=self.member, lam=self.arm.uwo_lambda
        )

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        cols = self.members.standardised(texts)  # (B, K)
        row = {"ensemble/std": float(cols.std(axis=1).mean())}
        comps = None
        if self.arm.components:
            assert self.components is not None
            comps = self.components(texts)  # (B, C)
            means = comps.mean(axis=0)
            names = self.components.names
            row |= {f"component/{n}": float(v) for n, v in zip(names, means, strict=True)}
        self.rows.append(row)
        return self._reward(cols, comps) / self.scale

    def join(self, row: dict[str, float], result: object = None) -> None:
        """An evaluation watcher: adds to ``row`` what this evaluation's call recorded (the
        newest of ``rows``; the first, the initial policy's samples, joins no row). The rows of
        a run resumed from a checkpoint hold theirs already."""
        if len(self.rows) != self._joined + 2:
            raise RuntimeError(
                f"{len(self.rows) - 1 - self._joined} probe measurements for one evaluation"
            )
        self._joined += 1
        row.update(self.rows[-1])
