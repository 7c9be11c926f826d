"""Aggregations of reward-model ensembles (Coste et al. 2023, "Reward Model Ensembles Help
Mitigate Overoptimization").

Every function takes member rewards ``(B, K)`` (K members, each already normalised on base-policy
samples) and returns ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _check(rewards: torch.Tensor) -> None:
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(f"ensemble rewards must have shape (B, K>=1), got {tuple(rewards.shape)}")


def ensemble_mean(rewards: torch.Tensor) -> torch.Tensor:
    """Mean optimisation: ``mean_k r_k``."""
    _check(rewards)
    return rewards.mean(dim=1)


def ensemble_wco(rewards: torch.Tensor) -> torch.Tensor:
    """Worst-case optimisation (WCO): ``min_k r_k``."""
    _check(rewards)
    return rewards.min(dim=1).values


def ensemble_uwo(rewards: torch.Tensor, *, lam: float = 0.5) -> torch.Tensor:
    """Uncertainty-weighted optimisation (UWO): ``mean_k r_k - lam * Var_k r_k``.

    Var is the population variance over members (ddof 0), as in Coste et al. (eq. 4); their
    best-of-n experiments use ``lam = 0.5``, PPO about 0.1.
    """
    _check(rewards)
    if lam < 0:
        raise ValueError(f"UWO lambda must be >= 0, got {lam}")
    return rewards.mean(dim=1) - lam * rewards.var(dim=1, unbiased=False)


def ensemble_std(rewards: torch.Tensor) -> torch.Tensor:
    """Disagreement between members: population standard deviation, (B,)."""
    _check(rewards)
    return rewards.std(dim=1, unbiased=False)


AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mean": ensemble_mean,
    "wco": ensemble_wco,
    "uwo": ensemble_uwo,
}


def aggregate(rewards: torch.Tensor, method: str = "mean", **kwargs: float) -> torch.Tensor:
    """Aggregate member rewards ``(B, K)`` with the method named ``method``."""
    if method not in AGGREGATIONS:
        raise ValueError(
            f"unknown ensemble aggregation {method!r}; allowed: {sorted(AGGREGATIONS)}"
        )
    return AGGREGATIONS[method](rewards, **kwargs)
