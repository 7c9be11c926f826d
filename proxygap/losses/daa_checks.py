"""Input checks and batch metrics shared by the losses of :mod:`proxygap.losses.daa`.

Every loss there validates its ``(B,)`` inputs and hyperparameters with these functions (so the
error messages are the same for every variant) and reports its batch means through
:func:`batch_metrics` (so the metric names are the same for every variant).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_pairs(**tensors: Tensor) -> None:
    """All arguments must be 1-D tensors of one shape ``(B,)`` with ``B >= 1``."""
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape "
                f"{tuple(first.shape)}; all inputs must be (B,) with the same B"
            )
    if first.numel() == 0:
        raise ValueError("empty batch: the inputs have B = 0 preference pairs")


def check_logps(**tensors: Tensor) -> None:
    """Same-shape ``(B,)`` checks plus a floating dtype (log-probabilities are real numbers)."""
    check_pairs(**tensors)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor of log-probs, got {t.dtype}")


def check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def logratios(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> tuple[Tensor, Tensor]:
    """Validated ``log pi(y) - log pi_ref(y)`` for the chosen and the rejected responses."""
    check_logps(
        policy_chosen_logps=policy_chosen,
        policy_rejected_logps=policy_rejected,
        ref_chosen_logps=ref_chosen,
        ref_rejected_logps=ref_rejected,
    )
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


def n_tokens(name: str, lengths: Tensor, like: Tensor) -> Tensor:
    """Response lengths (token counts) as ``like.dtype``; every length must be > 0."""
    if bool((lengths <= 0).any()):
        raise ValueError(f"{name} must be > 0 (number of response tokens), got {lengths.tolist()}")
    return lengths.to(like.dtype)


def batch_metrics(
    losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor
) -> dict[str, float]:
    """Batch means as Python floats (one device sync for all of them)."""
    with torch.no_grad():
        values = torch.stack(
            [
                losses.mean(),
                chosen_rewards.mean(),
                rejected_rewards.mean(),
                (chosen_rewards - rejected_rewards).mean(),
                (chosen_rewards > rejected_rewards).to(losses.dtype).mean(),
            ]
        ).tolist()
    names = ("daa/loss", "daa/chosen_reward", "daa/rejected_reward", "daa/margin", "daa/accuracy")
    return dict(zip(names, values, strict=True))
