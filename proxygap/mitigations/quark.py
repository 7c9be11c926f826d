"""Quark: quantised reward conditioning (Lu et al. 2022, "Quark: Controllable Text Generation with
Reinforced Unlearning"; docs/methods.md §4).

Quark alternates (i) sampling from the current policy conditioned on the best reward token,
(ii) sorting the whole data pool into ``K`` reward quantiles, each named by a control token
prepended to the prompt, and (iii) training with the language-model loss of each sample
conditioned on its quantile token plus a per-token KL penalty to the initial policy. At test
time generation is conditioned on the best token. The pieces here:

- :func:`quantile_tokens`: the quantile bucket of every sample (0 worst .. K-1 best);
- :func:`quantile_token_strings`: the control tokens ``<rq0>..<rq{K-1}>`` (add them to the
  tokenizer as special tokens and resize the policy's embeddings before training; the training
  loop :func:`proxygap.optimize.quark.train_quark` leaves the tokenizer alone and appends ``K``
  embedding rows instead);
- :class:`QuarkPool`: the growing data pool, re-bucketed after every addition;
- :func:`quark_loss`: the per-token training loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

TOKEN_FORMAT = "<rq{}>"
Text = str | tuple[int, ...]
"""A prompt or response in the pool: its text or its token ids."""


def quantile_token_strings(k: int) -> list[str]:
    """``["<rq0>", ..., "<rq{k-1}>"]``; ``<rq{k-1}>`` marks the best quantile."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [TOKEN_FORMAT.format(i) for i in range(k)]


def quantile_tokens(rewards: np.ndarray, k: int) -> np.ndarray:
    """Reward-quantile bucket of every sample, ``(N,)`` int64 in ``0..k-1`` (``k-1`` best).

    With samples sorted by reward, the sample at position ``p`` (0-based, ascending) goes to
    bucket ``floor(k * p / N)``: equal-sized buckets when ``k`` divides ``N``, sizes differing
    by at most one otherwise. Tie rule: tied samples all take the position of the first of
    them, ``p = #{j : r_j < r_i}``, so ties share one bucket, the lowest their block reaches
    (a tie is never promoted). Quark's reference code sorts with arbitrary order among ties
    and puts the remainder in the worst bucket; the buckets otherwise agree.

    Args:
        rewards: ``(N,)`` finite rewards, ``N >= 1``.
        k: number of quantiles, ``>= 1``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"rewards must have shape (N>=1,), got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    below = np.searchsorted(np.sort(r), r, side="left")  # (N,) #{j: r_j < r_i}
    return (k * below) // r.size


@dataclass(frozen=True)
class QuarkExample:
    """One training example: ``token`` is the quantile token to prepend to ``prompt``."""

    token: str
    prompt: Text
    response: Text
    reward: float
    bucket: int


class QuarkPool:
    """The Quark data pool: every sample ever added, re-bucketed over the whole pool on each
    :meth:`add` (as in the reference implementation, the pool grows without bound). Prompts
    and responses are held as given: texts, or token-id tuples.

    Args:
        k: number of quantiles (Quark uses 5 for toxicity and sentiment).
        seed: seeds :meth:`sample`.
    """

    def __init__(self, k: int, *, seed: int = 0) -> None:
        self.tokens = quantile_token_strings(k)
        self.k = k
        self.prompts: list[Text] = []
        self.responses: list[Text] = []
        self.rewards = np.empty(0, dtype=np.float64)
        self.buckets = np.empty(0, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def best_token(self) -> str:
        """The token to condition on when generating (``<rq{k-1}>``)."""
        return self.tokens[-1]

    def add(
        self,
        prompts: Sequence[Text],
        responses: Sequence[Text],
        rewards: np.ndarray | Sequence[float],
    ) -> None:
        """Add samples and re-bucket the whole pool with :func:`quantile_tokens`."""
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        if not len(prompts) == len(responses) == r.size:
            raise ValueError(
                f"got {len(prompts)} prompts, {len(responses)} responses and {r.size} rewards"
            )
        self.prompts += list(prompts)
        self.responses += list(responses)
        self.rewards = np.concatenate([self.rewards, r])
        self.buckets = quantile_tokens(self.rewards, self.k)

    def state_dict(self) -> dict[str, Any]:
        """The pool's samples, rewards (float64) and the state of :meth:`sample`'s generator,
        for a checkpoint (loadable with ``torch.load(..., weights_only=True)``)."""
        return {
            "prompts": list(self.prompts),
            "responses": list(self.responses),
            "rewards": torch.from_numpy(self.rewards.copy()),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what a :meth:`state_dict` held; the buckets are computed again."""
        self.prompts, self.responses = list(state["prompts"]), list(state["responses"])
        self.rewards = state["rewards"].numpy().astype(np.float64)
        if not len(self.prompts) == len(self.responses) == self.rewards.size:
            raise ValueError("the saved pool has unequal numbers of prompts, responses, rewards")
        self.buckets = (
            quantile_tokens(self.rewards, self.k) if self.rewards.size else self.buckets[:0]
        )
        self.rng.bit_generator.state = state["rng"]

    def example(self, i: int) -> QuarkExample:
        b = int(self.buckets[i])
        return QuarkExample(
            self.tokens[b], self.prompts[i], self.responses[i], float(self.rewards[i]), b
        )

    def sample(self, batch_size: int) -> list[QuarkExample]:
        """``batch_size`` distinct examples drawn uniformly from the pool."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size must lie in [1, {len(self)}], got {batch_size}")
        idx = self.rng.choice(len(self), size=batch_size, replace=False)
        return [self.example(int(i)) for i in idx]

    def metrics(self) -> dict[str, float]:
        """``quark/pool_size`` and ``quark/reward_bucket{i}`` (mean reward of each bucket)."""
        out = {"quark/pool_size": float(len(self))}
        for b in range(self.k):
            sel = self.buckets == b
            if sel.any():
                out[f"quark/reward_bucket{b}"] = float(self.rewards[sel].mean())
        return out


def quark_loss(
    logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    mask: Tensor,
    *,
    beta: float,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token Quark loss ``-log pi(y_t | rq, x, y_<t) + beta * KL_t - entropy_coef * H_t``.

    ``KL_t = sum_v pi(v) (log pi(v) - log pi0(v))`` is the exact KL over the vocabulary between
    the policy conditioned on the quantile token and the initial policy on the plain prompt,
    in the direction of Quark's reference code (``KL(pi || pi0)``); ``H_t`` is the policy's
    entropy (the reference code's entropy bonus; off unless ``entropy_coef > 0``).

    Args:
        logps: ``(B, T, V)`` finite policy log-softmax at the positions that predict the response
            tokens, conditioned on ``[quantile token] + prompt``.
        ref_logps: ``(B, T, V)`` the same for the initial policy on the prompt alone (no token).
        labels: ``(B, T)`` response token ids.
        mask: ``(B, T)`` nonzero on response tokens.
        beta: KL coefficient (>= 0).
        entropy_coef: entropy bonus coefficient (>= 0).

    Returns:
        ``(losses, metrics)``: ``losses`` ``(B, T)``, 0 outside ``mask``, never reduced (Quark
        averages over all response tokens: ``losses.sum() / mask.sum()``); metrics
        ``quark/nll``, ``quark/kl``, ``quark/entropy``: means over response tokens.
    """
    if logps.ndim != 3 or ref_logps.shape != logps.shape:
        raise ValueError(
            f"logps and ref_logps must be equal (B, T, V), got {tuple(logps.shape)} and "
            f"{tuple(ref_logps.shape)}"
        )
    if labels.shape != logps.shape[:2] or mask.shape != labels.shape:
        raise ValueError(
            f"labels and mask must have shape {tuple(logps.shape[:2])}, got "
            f"{tuple(labels.shape)} and {tuple(mask.shape)}"
        )
    if beta < 0 or entropy_coef < 0:
        raise ValueError(f"beta and entropy_coef must be >= 0, got {beta}, {entropy_coef}")
    keep = mask.bool()
    # padding may hold anything (even NaN): replace it before any arithmetic
    logps = torch.where(keep[..., None], logps, torch.zeros_like(logps))
    ref_logps = torch.where(keep[..., None], ref_logps, torch.zeros_like(ref_logps))
    nll = -logps.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    p = logps.exp()
    kl = (p * (logps - ref_logps)).sum(-1)  # (B, T)
    entropy = -(p * logps).sum(-1)  # (B, T)
    per_token = nll + beta * kl - entropy_coef * entropy
    losses = torch.where(keep, per_token, torch.zeros_like(per_token))
    n = keep.sum().clamp(min=1)
    with torch.no_grad():
        metrics = {
            f"quark/{k}": float(torch.where(keep, v, torch.zeros_like(v)).sum() / n)
            for k, v in (("nll", nll), ("kl", kl), ("entropy", entropy))
        }
    return losses, metrics
