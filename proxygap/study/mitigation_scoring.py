"""The rewards of the mitigation study and what its evaluator records.

Units. Every ensemble member is standardised on base-policy samples (the held-out pair
responses): its mean there is subtracted and it is divided by its standard deviation there, so
members trained to different scales weigh alike in an aggregation (a member with a compressed
scale would otherwise be the minimum of WCO on most high-scoring texts). Standardising changes
no member's own ranking. A reported proxy is divided by its standard deviation on the same
samples, so ``proxy - gold`` compares like with like (gold is scaled the same way). Component
proxies (constrained RLHF) are standardised one by one, and their composite is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from proxygap.config import MitigationRunConfig
from proxygap.data.preferences import Pairs
from proxygap.rewards.ensemble import aggregate
from proxygap.rewards.reward_model import score_texts
from proxygap.study.data import proxy_members
from proxygap.study.env import Env, reference_texts

__all__ = ["ComponentScorer", "EvalProbe", "MemberScorer", "aggregate_members"]


def aggregate_members(members: np.ndarray, method: str, *, member: int, lam: float) -> np.ndarray:
    """``(..., K)`` member scores -> ``(...)``: member ``member`` alone for ``"single"``,
    else the ensemble aggregation (UWO with ``lam``)."""
    if method == "single":
        return members[..., member]
    shape = members.shape[:-1]
    flat = torch.from_numpy(np.ascontiguousarray(members.reshape(-1, members.shape[-1])))
    kw = {"lam": lam} if method == "uwo" else {}
    return aggregate(flat, method, **kw).numpy().reshape(shape)


class MemberScorer:
    """Standardised member scores ``texts -> (B, K)`` of one proxy (each member's mean and
    standard deviation on base-policy samples); ``ref`` holds those samples' scores ``(M, K)``."""

    def __init__(self, env: Env, held: Pairs, proxy_name: str) -> None:
        proxy = next(p for p in env.cfg.proxies if p.name == proxy_name)
        self.models = proxy_members(env, proxy)
        self.env = env
        ref = self.raw(reference_texts(env, held))
        self.centre = ref.mean(axis=0)
        self.scale = ref.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.ref = (ref - self.centre) / self.scale  # (M, K)

    def raw(self, texts: Sequence[str], which: list[int] | None = None) -> np.ndarray:
        bs, tok = self.env.cfg.runtime.score_batch_size, self.env.tokenizer
        idx = range(len(self.models)) if which is None else which
        cols = [score_texts(self.models[k], tok, list(texts), batch_size=bs) for k in idx]
        return np.stack(cols, axis=1).astype(np.float64)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return (self.raw(texts) - self.centre) / self.scale

    def member(self, k: int, texts: Sequence[str]) -> np.ndarray:
        """Member ``k`` alone, standardised, ``(B,)`` (scores one model only)."""
        return (self.raw(texts, [k])[:, 0] - self.centre[k]) / self.scale[k]


class ComponentScorer:
    """Standardised component proxies ``texts -> (B, C)``: each proxy's standardised members
    averaged, then standardised again on base-policy samples (a no-op for one member)."""

    def __init__(self, env: Env, held: Pairs, names: Sequence[str]) -> None:
        self.names = list(names)
        self.scorers = [MemberScorer(env, held, n) for n in self.names]
        ref = np.stack([s.ref.mean(axis=1) for s in self.scorers], axis=1)  # (M, C)
        self.scale = ref.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        self.ref = ref / self.scale
        self._last: tuple[tuple[str, ...], np.ndarray] | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        # a constrained arm's reward and its constraint read the same rollout: score it once
        key = tuple(texts)
        if self._last is not None and self._last[0] == key:
            return self._last[1].copy()
        cols = [s(texts).mean(axis=1) for s in self.scorers]
        out = np.stack(cols, axis=1) / self.scale
        self._last = (key, out)
        return out


class EvalProbe:
    """The evaluator's proxy for one arm, ``texts -> (B,)``: the untransformed reward the arm
    optimises (member, aggregation, or component sum) over its standard deviation on
    base-policy samples. Every call appends to ``rows`` the mean over the texts of the
    population std across the ensemble's K standardised members (``ensemble/std``) and, for
    arms with components, each component's mean (``component/<name>``, standardised units)."""

    def __init__(
        self,
        members: MemberScorer,
        arm: MitigationRunConfig,
        *,
        member: int,
        components: ComponentScorer | None = None,
    ) -> None:
        if arm.components and components is None:
            raise ValueError(f"arm {arm.name!r} needs its component scorer")
        self.members, self.components, self.arm, self.member = members, components, arm, member
        ref_comps = components.ref if arm.components and components is not None else None
        self.scale = float(self._reward(members.ref, ref_comps).std()) or 1.0
        self.rows: list[dict[str, float]] = []

    def _reward(self, cols: np.ndarray, comps: np.ndarray | None) -> np.ndarray:
        if self.arm.components:
            assert comps is not None
            return comps.sum(axis=1)
        return aggregate_members(
            cols, self.arm.aggregation, member=self.member, lam=self.arm.uwo_lambda
        )

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        cols = self.members(texts)  # (B, K)
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
