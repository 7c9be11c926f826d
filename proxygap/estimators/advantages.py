"""Advantage estimators and KL-penalised rewards for online RL against a proxy (docs/methods.md §3).

Token-level tensors are ``(B, T)``; sequence-level tensors are ``(B,)``. A mask is a float or
bool ``(B, T)`` tensor whose nonzero entries mark response tokens; in every row the response
tokens form one contiguous block (right padding, optionally left padding too). Positions outside
the mask may hold anything (even NaN) and never affect a result; outputs are 0 there.

Group-based estimators (GRPO, RLOO) expect ``B = prompts * G`` with the ``G`` samples of one prompt
in consecutive rows: ``rewards.view(prompts, G)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from proxygap.estimators.masks import response_mask


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation", eq. 16).

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, with
    ``V_{t+1} = 0`` and ``A_{t+1} = 0`` after the last response token (the episode ends there, so
    it bootstraps from 0). Returns are ``R_t = A_t + V_t`` (the lambda-return, the value target).
    Defaults follow the RLHF practice of Ziegler et al. 2019 / Stiennon et al. 2020 (``gamma = 1``,
    ``lam = 0.95``).

    Args:
        rewards: ``(B, T)`` per-token rewards, e.g. from :func:`kl_penalised_token_rewards`.
        values: ``(B, T)`` value estimates ``V(s_t)``; ignored outside the mask.
        mask: ``(B, T)`` response mask, one contiguous block of ones per row.
        gamma: discount in ``[0, 1]``.
        lam: GAE lambda in ``[0, 1]``.

    Returns:
        ``(advantages, returns)``, both ``(B, T)`` and 0 outside the mask.
    """
    keep = response_mask(mask, rewards, name="rewards")
    if values.shape != rewards.shape:
        raise ValueError(
            f"values must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(values.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    _check_contiguous(keep)
    zero = torch.zeros_like(rewards)
    rewards = torch.where(keep, rewards, zero)
    values = torch.where(keep, values, zero)
    cont = keep.to(rewards.dtype)  # 1 where token t is a response token
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])  # (B,) V_{t+1}
    next_adv = rewards.new_zeros(rewards.shape[0])  # (B,) A_{t+1}
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = (delta + gamma * lam * next_adv) * cont[:, t]  # 0 on padding, so A_{t+1} = 0
        advantages[:, t] = adv_t
        next_value, next_adv = values[:, t], adv_t
    returns = advantages + values
    return advantages, returns


def grpo_advantages(
    rewards: Tensor, group_size: int, *, eps: float = 1e-6, scale: bool = True
) -> Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, "outcome supervision" GRPO).

    ``A_i = (r_i - mean_G(r)) / (std_G(r) + eps)`` over the ``G`` samples of the same prompt.
    ``std_G`` is the *unbiased* sample standard deviation (divisor ``G - 1``), as in TRL's
    ``GRPOTrainer`` (``torch.std`` default); it needs ``G >= 2``. A group whose rewards are all
    equal gets advantages 0. ``scale=False`` drops the division and only centres on the group
    mean, as in Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") and DARLING.

    Args:
        rewards: ``(B,)`` sequence rewards, ``B = prompts * group_size``, groups consecutive.
        group_size: ``G``, samples per prompt.
        eps: added to the standard deviation (only with ``scale=True``).
        scale: divide by the group standard deviation.

    Returns:
        ``(B,)`` advantages.
    """
    groups = _grouped(rewards, group_size, min_size=2 if scale else 1)  # (P, G)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics", eq. 5;
    Kool et al. 2019).

    ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_G(r))``; they sum to 0 per group.

    Args:
        rewards: ``(B,)`` sequence rewards, ``B = prompts * group_size``, groups consecutive.
        group_size: ``G >= 2``, samples per prompt.

    Returns:
        ``(B,)`` advantages.
    """
    groups = _grouped(rewards, group_size, min_size=2)  # (P, G)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)  # (P, G)
    return (groups - baseline).reshape(-1)


def reinforce_baseline_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with a batch-mean baseline (Williams 1992): ``A_i = r_i - mean_batch(r)``.

    Args:
        rewards: ``(B,)`` sequence rewards.

    Returns:
        ``(B,)`` advantages.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    return rewards - rewards.mean()


def kl_penalised_token_rewards(score: Tensor, lr: Tensor, mask: Tensor, *, beta: float) -> Tensor:
    """PPO-style per-token reward with the KL penalty in the reward (Ziegler et al. 2019, eq. 2;
    Stiennon et al. 2020, eq. 1).

    ``r_t = -beta * lr_t`` on every response token, and the sequence score ``r(x, y)`` is added on
    the last response token, so that ``sum_t r_t = r(x, y) - beta * sum_t lr_t`` (k1 sequence KL).

    Args:
        score: ``(B,)`` proxy reward of each response.
        lr: ``(B, T)`` log ratio ``log pi - log pi_ref`` of the sampled tokens.
        mask: ``(B, T)`` response mask; every row needs at least one response token.
        beta: KL coefficient ``>= 0``.

    Returns:
        ``(B, T)`` per-token rewards, 0 outside the mask.
    """
    keep = response_mask(mask, lr, name="lr")
    if score.shape != lr.shape[:1]:
        raise ValueError(
            f"score must have shape (B,) = {tuple(lr.shape[:1])}, got {tuple(score.shape)}"
        )
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if not bool(keep.any(dim=1).all()):
        raise ValueError("every row of mask needs at least one response token to carry the score")
    positions = torch.arange(lr.shape[1], device=lr.device).expand_as(keep)
    last = torch.where(keep, positions, -1).amax(dim=1)  # (B,) index of the last response token
    rewards = torch.where(keep, -beta * lr, torch.zeros_like(lr))
    bonus = torch.zeros_like(rewards).scatter(1, last[:, None], score[:, None].to(rewards.dtype))
    return rewards + bonus


def _grouped(rewards: Tensor, group_size: int, *, min_size: int) -> Tensor:
    """Reshape ``(B,)`` rewards to ``(B // G, G)`` after validating the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < min_size:
        raise ValueError(f"group_size must be >= {min_size}, got {group_size}")
    if rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"batch size {rewards.shape[0]} is not a multiple of group_size {group_size}"
        )
    return rewards.view(-1, group_size)


def _check_contiguous(keep: Tensor) -> None:
    """Raise unless every row's response tokens form one contiguous block."""
    k = keep.to(torch.int8)
    starts = (k[:, :1] + (k[:, 1:] > k[:, :-1]).sum(dim=1, keepdim=True)).squeeze(1)  # 0 -> 1 steps
    if bool((starts > 1).any()):
        rows = torch.nonzero(starts > 1).flatten().tolist()
        raise ValueError(f"mask rows {rows} are not one contiguous block of response tokens")
