"""The experience side of online RL: prompts, rollouts, per-token KL rewards and advantages.

What the RL step (:mod:`proxygap.optimize.rl`) reads, in the order it reads it:

- :class:`PromptStream` walks through the training prompts in seeded shuffled epochs;
- :func:`token_rewards` puts the KL penalty in the per-token reward (Ziegler et al. 2019);
- :data:`ADVANTAGES` maps an algorithm name to its advantage estimator: GAE with a learned value
  (PPO, Schulman et al. 2017), group-normalised (GRPO, Shao et al. 2024) or leave-one-out
  (RLOO, Ahmadian et al. 2024), or f-DPG towards the KL-regularised target (Go et al. 2023);
- :class:`Rollout` holds one batch of experience, every tensor ``(B, T)`` or ``(B,)`` with the
  ``G`` samples of a prompt in consecutive rows; :func:`pack` cuts its rows into forward passes
  of similar length and :func:`packed` runs a model over them (reference log-probs, values).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel

from proxygap.estimators.advantages import (
    gae,
    grpo_advantages,
    kl_penalised_token_rewards,
    rloo_advantages,
)
from proxygap.estimators.fdpg import fdpg_advantages
from proxygap.losses.ppo import KL_ESTIMATORS
from proxygap.models.logprobs import response_logprobs


class PromptStream:
    """Batches of ``batch`` prompts from seeded shuffled passes over ``prompts``.

    Pass ``e`` is the permutation drawn by ``numpy.random.default_rng([seed, e])``, so the
    stream is a function of ``(seed, position)`` alone and a resumed run can continue it by
    setting :attr:`position` (the number of prompts handed out so far).
    """

    def __init__(self, prompts: Sequence[str], *, batch: int, seed: int) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if len(prompts) < batch:
            raise ValueError(f"{len(prompts)} training prompts; need at least {batch} per step")
        self.prompts = list(prompts)
        self.batch = batch
        self.seed = seed
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """The position, all a resumed run needs to continue the stream."""
        return {"position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.position = int(state["position"])

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next(self) -> list[str]:
        """The next ``batch`` prompts (a batch never straddles two passes)."""
        per_pass = len(self.prompts) // self.batch
        epoch, k = divmod(self.position // self.batch, per_pass)
        idx = self._order(epoch)[k * self.batch : (k + 1) * self.batch]
        self.position += self.batch
        return [self.prompts[i] for i in idx]


def per_token_kl(log_ratio: Tensor, mask: Tensor, *, estimator: str) -> tuple[Tensor, int]:
    """``k(log_ratio_t)`` on response tokens and 0 elsewhere, with the number of k3-clamped
    tokens.

    Args:
        log_ratio: ``(B, T)`` log ratio ``log pi - log pi_ref`` of the sampled tokens.
        mask: ``(B, T)`` response mask.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (Schulman 2020; see
            :mod:`proxygap.estimators.kl`).
    """
    keep = mask.bool()
    zeros = torch.zeros_like(log_ratio)
    kl, n_clamped = KL_ESTIMATORS[estimator](torch.where(keep, log_ratio, zeros))
    return torch.where(keep, kl, torch.zeros_like(kl)), n_clamped


def token_rewards(score: Tensor, kl: Tensor, mask: Tensor, *, beta: float) -> Tensor:
    """Per-token rewards ``-beta * k_t`` plus the sequence score on the last response token
    (Ziegler et al. 2019, eq. 2), ``(B, T)``. With ``k = k1`` this is exactly
    :func:`~proxygap.estimators.advantages.kl_penalised_token_rewards`; ``beta = 0`` leaves the
    score alone (KL in the loss, or no penalty). Row sums are the sequence rewards
    ``r(x, y) - beta * sum_t k_t`` that GRPO and RLOO normalise."""
    return kl_penalised_token_rewards(score, kl, mask, beta=beta)


AdvantageFn = Callable[..., tuple[Tensor, Tensor | None, dict[str, float]]]


def _broadcast(seq_adv: Tensor, mask: Tensor) -> Tensor:
    return seq_adv[:, None] * mask  # (B, T)


def grpo(
    rewards: Tensor, values: Tensor | None, mask: Tensor, *, group_size: int, **_: float
) -> tuple[Tensor, None, dict[str, float]]:
    """GRPO outcome advantages (Shao et al. 2024, §4.1.2): the sequence reward normalised within
    its group, ``(r_i - mean_G) / (std_G + eps)``, given to every token. No value function."""
    return _broadcast(grpo_advantages(rewards.sum(dim=1), group_size), mask), None, {}


def rloo(
    rewards: Tensor, values: Tensor | None, mask: Tensor, *, group_size: int, **_: float
) -> tuple[Tensor, None, dict[str, float]]:
    """RLOO advantages (Ahmadian et al. 2024, eq. 5): the sequence reward minus the mean of the
    other ``G - 1`` samples of the same prompt, given to every token. No value function."""
    return _broadcast(rloo_advantages(rewards.sum(dim=1), group_size), mask), None, {}


def ppo_gae(
    rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    *,
    gamma: float,
    lam: float,
    **_: float,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """PPO advantages (Schulman et al. 2017; Ziegler et al. 2019): GAE(gamma, lambda) over the
    per-token rewards with the critic's values, then whitened over the batch's response tokens
    (mean 0, variance 1, as in OpenAI's lm-human-preferences). Returns ``(advantages, returns)``
    with the un-whitened lambda-returns as value targets."""
    if values is None:
        raise ValueError("PPO advantages need the critic's values")
    adv, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    keep = mask.bool()
    mean = adv[keep].mean()
    std = adv[keep].std() if int(keep.sum()) > 1 else adv.new_tensor(1.0)
    adv = torch.where(keep, (adv - mean) / (std + 1e-8), torch.zeros_like(adv))
    return adv, returns, {}


def fdpg(
    rewards: Tensor,
    values: Tensor | None,
    mask: Tensor,
    *,
    group_size: int,
    score: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    beta: float,
    divergence: str,
    **_: float,
) -> tuple[Tensor, None, dict[str, float]]:
    """f-DPG advantages (Go et al. 2023; docs/methods.md §7): ``-f'(pi/p)`` for the target
    ``p ∝ pi0 exp(score/beta)`` from the sequence log-probs (``(B, T)`` token log-probs summed
    over the mask), ``Z`` estimated per prompt from its ``G`` samples, centred per group, times
    ``beta`` and given to every token. The factor ``beta`` puts them in reward units: for the
    reverse KL they are ``score - beta log(pi/pi0)`` minus its group mean, the KL-penalised
    reward of RLHF. The KL enters only through the target (``rewards`` is not read).

    Metrics (means over the batch's prompts): ``fdpg/ess``, the effective sample size
    ``1 / sum_i w_i^2`` of the self-normalised importance weights ``w_i ∝ p(y_i)/pi(y_i)`` of a
    prompt's ``G`` samples as a fraction of ``G`` (1: the policy is the target; ``1/G``: one
    sample holds all the weight); ``fdpg/log_z``, the estimate of ``log Z(x)`` of this step
    (``Z(x)`` is a property of ``pi0`` and the reward, not of the policy, so a drift across steps
    shows estimation bias, which grows as ``fdpg/ess`` falls); ``fdpg/pseudo_reward`` and
    ``fdpg/log_ratio`` (mean ``log(pi/p)``: a Monte Carlo estimate of ``KL(pi || p)``)."""
    adv, metrics = fdpg_advantages(
        (logprobs * mask).sum(dim=1),
        (ref_logprobs * mask).sum(dim=1),
        score,
        beta=beta,
        divergence=divergence,
        group_size=group_size,
    )
    return _broadcast(beta * adv, mask), None, metrics


ADVANTAGES: dict[str, AdvantageFn] = {"ppo": ppo_gae, "grpo": grpo, "rloo": rloo, "fdpg": fdpg}
"""Advantage estimator by algorithm name: ``(token_rewards, values, mask, *, group_size, gamma,
lam, score, logprobs, ref_logprobs, beta, divergence) -> (advantages (B, T), returns (B, T) or
None, metrics)``; each reads the keywords it needs; the metrics join the step's row."""


@dataclass
class Rollout:
    """One batch of experience (``B = prompts_per_step * group_size`` rows).

    ``prompt_ids`` are the rows' prompt ids; ``response_ids``, ``mask`` (1 on response tokens
    including eos, from column 0), ``logprobs`` (under the sampling policy, temperature 1) are
    ``(B, T)``; ``ref_logprobs`` and ``advantages`` ``(B, T)`` are filled in by the recipe,
    ``values`` and ``returns`` ``(B, T)`` for PPO only.
    """

    prompt_ids: list[list[int]]
    response_ids: Tensor
    mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor | None = None
    advantages: Tensor | None = None
    values: Tensor | None = None
    returns: Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> Tensor:
        """``(B,)`` prompt plus response tokens of every row."""
        prompt = torch.tensor([len(p) for p in self.prompt_ids])
        return prompt + self.mask.sum(dim=1).long()

    def rows(self, idx: Tensor) -> Rollout:
        """The rows ``idx``, trimmed to their longest response (less padding per forward)."""
        T = int(self.mask[idx].sum(dim=1).max().item())

        def cut(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[idx, :T]

        return Rollout(
            prompt_ids=[self.prompt_ids[k] for k in idx.tolist()],
            response_ids=self.response_ids[idx, :T],
            mask=self.mask[idx, :T],
            logprobs=self.logprobs[idx, :T],
            ref_logprobs=cut(self.ref_logprobs),
            advantages=cut(self.advantages),
            values=cut(self.values),
            returns=cut(self.returns),
        )


def pack(lengths: Tensor, idx: Tensor, *, max_rows: int, max_tokens: int) -> list[Tensor]:
    """Split rows ``idx`` into forward passes of similar length: sorted longest first, each pass
    takes at most ``max_rows`` rows and ``max_tokens`` padded tokens (rows x its longest row),
    and at least one row. Responses that ended early then cost little padding.

    Args:
        lengths: ``(B,)`` tokens per row (prompt plus response).
        idx: ``(n,)`` the rows to split.
    """
    order = idx[torch.argsort(lengths[idx], descending=True, stable=True)]
    passes, start = [], 0
    while start < len(order):
        width = max(1, int(lengths[order[start]]))
        n = max(1, min(max_rows, max_tokens // width))
        passes.append(order[start : start + n])
        start += n
    return passes


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def logprobs_of(model: PreTrainedModel, batch: Rollout, *, pad_id: int, bf16: bool) -> Tensor:
    """log pi(y_t | x, y_<t) of the batch's response tokens, ``(B, T)``, 0 off the mask (float32
    or the model's wider dtype); with gradient unless called under ``no_grad``; bf16 autocast
    if ``bf16``."""
    device = next(model.parameters()).device
    with autocast(bf16, device):
        return response_logprobs(
            model, batch.prompt_ids, batch.response_ids, batch.mask, pad_id=pad_id
        )


@torch.no_grad()
def packed(
    fn: Callable[[Rollout], Tensor], rollout: Rollout, *, max_rows: int, max_tokens: int
) -> Tensor:
    """``fn`` applied to length-sorted forward passes over the rollout (:func:`pack`, no
    gradient), put back in row order: ``(B, T)`` on the CPU, 0 beyond each pass's longest
    response."""
    idx = torch.arange(len(rollout))
    passes = pack(rollout.lengths, idx, max_rows=max_rows, max_tokens=max_tokens)
    parts = [(rows, fn(rollout.rows(rows)).cpu()) for rows in passes]
    out = torch.zeros(rollout.mask.shape, dtype=parts[0][1].dtype)
    for rows, part in parts:
        out[rows, : part.shape[1]] = part
    return out
