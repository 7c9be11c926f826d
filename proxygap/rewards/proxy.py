"""A trained proxy reward model scoring texts: its ensemble members, normalised on base-policy
samples.

The members score a fixed set of reference texts (base-policy samples) once; their mean there
is each member's ``centre`` and their standard deviation its ``scale`` (Gao et al. 2023, §2:
proxies are centred on base-policy samples). Three uses share this one path:

- best-of-n stores the raw scores of a pool and of the reference texts (``raw``,
  ``reference``) and normalises them when it analyses them;
- RL and the DAA evaluator optimise or track :meth:`ProxyScorer.reward`, the members centred,
  then aggregated as the proxy's config says (mean, WCO or UWO; Coste et al. 2023);
- the mitigation study reads every member standardised (centred and divided by its scale) so
  members trained to different scales weigh alike (:meth:`ProxyScorer.standardised`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.errors import NonFiniteError
from proxygap.rewards.ensemble import aggregate
from proxygap.rewards.reward_model import score_and_embed_texts, score_texts

__all__ = ["ProxyScorer", "aggregate_members"]


def aggregate_members(
    members: np.ndarray, method: str, *, lam: float = 0.5, member: int | None = None
) -> np.ndarray:
    """``(..., K)`` member scores -> ``(...)``: member ``member`` alone for ``"single"``,
    else the ensemble aggregation (UWO with ``lam``)."""
    if method == "single":
        if member is None:
            raise ValueError("aggregation 'single' needs the member to read")
        return members[..., member]
    shape = members.shape[:-1]
    flat = torch.from_numpy(np.ascontiguousarray(members.reshape(-1, members.shape[-1])))
    kw = {"lam": lam} if method == "uwo" else {}
    return aggregate(flat, method, **kw).numpy().reshape(shape)


class ProxyScorer:
    """The ``K`` members of one proxy scoring texts ``(B, K)``, with their statistics on the
    reference texts: ``reference`` (raw scores, ``(M, K)``), ``centre`` and ``scale`` (``(K,)``;
    a member constant on the references has scale 1).

    State: the scorer remembers its last pass over all members (the texts, their raw scores
    and, when the pass was made by :meth:`embed`, the first member's hidden states from the same
    forward pass), so that an evaluation point that asks for the embedding, then the reward and
    the standardised members of the same texts runs each member once. The members are frozen:
    changing their weights after construction would make the remembered pass stale.
    """

    def __init__(
        self,
        name: str,
        models: Sequence[PreTrainedModel],
        tokenizer: Tokenizer,
        reference: Sequence[str],
        *,
        aggregation: str = "mean",
        uwo_lambda: float = 0.5,
        batch_size: int = 1024,
    ) -> None:
        if not models:
            raise ValueError(f"proxy {name!r} has no members")
        self.name, self.models, self.tokenizer = name, list(models), tokenizer
        self.aggregation, self.uwo_lambda, self.batch_size = aggregation, uwo_lambda, batch_size
        self._last: tuple[tuple[str, ...], np.ndarray, np.ndarray | None] | None = None
        self.reference = self.raw(reference)
        _check_members(name, self.reference, reference)
        self.centre = self.reference.mean(axis=0)
        scale = self.reference.std(axis=0)
        scale[scale == 0] = 1.0
        self.scale = scale
        self.standardised_reference = (self.reference - self.centre) / self.scale
        """The reference texts' standardised scores, ``(M, K)``."""

    @property
    def n_members(self) -> int:
        return len(self.models)

    def raw(
        self,
        texts: Sequence[str],
        members: Sequence[int] | None = None,
        *,
        progress: str | None = None,
    ) -> np.ndarray:
        """Raw scores ``(B, K)`` (or of ``members`` only), float64; ``progress`` labels a
        progress bar per member."""
        if members is None and progress is None:
            return self._pass(texts, hidden=False)[0].copy()
        idx = range(len(self.models)) if members is None else members
        cols = [
            score_texts(
                self.models[k],
                self.tokenizer,
                list(texts),
                batch_size=self.batch_size,
                progress=None if progress is None else f"{progress} [{k + 1}]",
            )
            for k in idx
        ]
        return np.stack(cols, axis=1).astype(np.float64)

    def _pass(self, texts: Sequence[str], *, hidden: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Every member's raw scores ``(B, K)`` and, with ``hidden``, the first member's hidden
        states ``(B, H)`` taken in its scoring pass; the last pass is remembered."""
        key = tuple(texts)
        if self._last is not None and self._last[0] == key:
            _, scores, states = self._last
            if hidden and states is None:  # scored already: run the first member alone again
                states = score_and_embed_texts(
                    self.models[0], self.tokenizer, key, batch_size=self.batch_size
                )[1]
                self._last = (key, scores, states)
            return scores, states
        states = None
        cols = []
        for k, model in enumerate(self.models):
            if k == 0 and hidden:
                col, states = score_and_embed_texts(
                    model, self.tokenizer, key, batch_size=self.batch_size
                )
            else:
                col = score_texts(model, self.tokenizer, key, batch_size=self.batch_size)
            cols.append(col)
        scores = np.stack(cols, axis=1).astype(np.float64)
        self._last = (key, scores, states)
        return scores, states

    def centred(self, texts: Sequence[str]) -> np.ndarray:
        """Every member minus its centre, ``(B, K)``."""
        return self.raw(texts) - self.centre

    def standardised(self, texts: Sequence[str]) -> np.ndarray:
        """Every member centred and divided by its scale, ``(B, K)``."""
        return (self.raw(texts) - self.centre) / self.scale

    def member(self, k: int, texts: Sequence[str]) -> np.ndarray:
        """Member ``k`` alone, standardised, ``(B,)`` (scores one model only)."""
        return (self.raw(texts, [k])[:, 0] - self.centre[k]) / self.scale[k]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The first member's final hidden state at each text's last token, ``(B, H)``, taken
        in the pass that scores ``texts`` with every member (those scores are remembered: a
        following :meth:`reward`, :meth:`raw` or :meth:`standardised` of the same texts runs no
        model)."""
        states = self._pass(texts, hidden=True)[1]
        assert states is not None
        return states.copy()

    def reward(self, texts: Sequence[str]) -> np.ndarray:
        """The proxy's reward ``(B,)``: the members centred, then aggregated as configured."""
        return aggregate_members(self.centred(texts), self.aggregation, lam=self.uwo_lambda)


def _check_members(name: str, scores: np.ndarray, texts: Sequence[str]) -> None:
    """A :class:`~proxygap.errors.NonFiniteError` naming the first member of proxy ``name`` that
    scores a reference text NaN or inf (its aggregation would carry the NaN into every reward
    and pick), with how many and the first such text."""
    bad = ~np.isfinite(scores)  # (M, K)
    for k in np.flatnonzero(bad.any(axis=0)):
        first = texts[int(np.flatnonzero(bad[:, k])[0])]
        raise NonFiniteError(
            f"proxy {name!r}: member {k} scores {int(bad[:, k].sum())} of {len(bad)} base-policy "
            f"reference texts NaN or inf (first: {first[:60]!r}); that member cannot be used: "
            "replace or retrain it"
        )
