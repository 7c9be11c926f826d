"""PPO / GRPO policy-gradient losses (docs/methods.md §3).

Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate, eq. 7, and the
clipped value loss of the OpenAI baselines implementation); Shao et al. 2024, DeepSeekMath (GRPO's
KL term in the loss, eq. 4, which uses the k3 estimator).

Token tensors are ``(B, T)``. Masks are float or bool ``(B, T)`` tensors whose nonzero entries mark
response tokens; every input is replaced by 0 outside the mask *before* any arithmetic, so padding
may hold anything (even NaN or inf) without touching the loss or its gradient.

Aggregation (keyword ``aggregation``), chosen from :data:`AGGREGATIONS`:

- ``"token_mean"``: sum of per-token losses over all response tokens in the batch divided by their
  number (the token-level loss of DAPO, Yu et al. 2025; each token weighs the same, so longer
  responses weigh more).
- ``"seq_mean"``: mean over response tokens within each sequence, then mean over the sequences
  that have at least one response token (GRPO as written in Shao et al. 2024; each sequence
  weighs the same).

With no response token at all, both give a loss of 0 (and zero gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from proxygap.estimators.kl import kl_k1, kl_k2, kl_k3
from proxygap.estimators.masks import response_mask


def token_mean(x: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``x`` over the ``True`` entries of bool ``keep`` (both ``(B, T)``); 0 if none."""
    return torch.where(keep, x, torch.zeros_like(x)).sum() / keep.sum().clamp(min=1)


def seq_mean(x: Tensor, keep: Tensor) -> Tensor:
    """Per-sequence mean over ``keep``, then mean over non-empty sequences; 0 if none."""
    counts = keep.sum(dim=1)  # (B,)
    per_seq = torch.where(keep, x, torch.zeros_like(x)).sum(dim=1) / counts.clamp(min=1)  # (B,)
    return per_seq.sum() / (counts > 0).sum().clamp(min=1)


AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token_mean": token_mean,
    "seq_mean": seq_mean,
}


def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
    aggregation: str = "token_mean",
) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate policy loss (Schulman et al. 2017, eq. 7), to be minimised.

    Per token, with ``rho = exp(logp - old_logp)``:
    ``l_t = max(-A_t * rho_t, -A_t * clip(rho_t, 1 - clip, 1 + clip))``, aggregated over the mask
    (see the module docstring). A token whose clipped branch is active has zero gradient.

    Args:
        logp: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        old_logp: ``(B, T)`` the same under the policy that sampled them (treated as constant).
        advantages: ``(B, T)`` per-token advantages, or ``(B,)`` sequence advantages broadcast
            to every token (GRPO, RLOO).
        mask: ``(B, T)`` response mask.
        clip: ``epsilon`` in ``(0, 1)``; 0.2 as in the paper.
        aggregation: a key of :data:`AGGREGATIONS`.

    Returns:
        ``(loss, metrics)``: scalar loss, and detached metrics over response tokens:
        ``policy/clipfrac`` (fraction of tokens where the clipped branch is strictly larger, i.e.
        active), ``policy/approx_kl`` (k3 estimate ``rho - 1 - log rho`` of
        ``KL(pi_old || pi)``, as in CleanRL), ``policy/ratio_mean`` (mean ``rho``).
    """
    keep = response_mask(mask, logp, name="logp")
    _same_shape(logp, old_logp=old_logp)
    if advantages.shape == logp.shape[:1]:
        advantages = advantages[:, None].expand_as(logp)
    _same_shape(logp, advantages=advantages)
    if not 0.0 < clip < 1.0:
        raise ValueError(f"clip must lie in (0, 1), got {clip}")
    reduce = _aggregation(aggregation)

    lr = _masked(logp - old_logp.detach(), keep)  # (B, T) log rho, 0 on padding
    adv = _masked(advantages.detach(), keep)
    ratio = torch.exp(lr)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = reduce(torch.maximum(unclipped, clipped), keep)

    with torch.no_grad():
        approx_kl, _ = kl_k3(-lr)  # samples come from pi_old: log pi_old - log pi = -lr
        metrics = {
            "policy/clipfrac": token_mean((clipped > unclipped).to(lr.dtype), keep).item(),
            "policy/approx_kl": token_mean(approx_kl, keep).item(),
            "policy/ratio_mean": token_mean(ratio, keep).item(),
        }
    return loss, metrics


def ppo_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
    aggregation: str = "token_mean",
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss (PPO as implemented in OpenAI baselines; Ziegler et al. 2019).

    ``v_clip = old_v + clamp(v - old_v, -clip, clip)``;
    ``l_t = 0.5 * max((v_t - R_t)^2, (v_clip_t - R_t)^2)``, aggregated over the mask. Note that
    ``clip`` is an absolute bound on the change of the value, so it depends on the reward scale.

    Args:
        values: ``(B, T)`` current value predictions.
        old_values: ``(B, T)`` value predictions when the batch was sampled (constant).
        returns: ``(B, T)`` value targets, e.g. the returns of :func:`~proxygap.estimators.
            advantages.gae` (constant).
        mask: ``(B, T)`` response mask.
        clip: absolute clip range ``> 0``; 0.2 as in OpenAI baselines.
        aggregation: a key of :data:`AGGREGATIONS`.

    Returns:
        ``(loss, metrics)``: scalar loss, and detached metrics over response tokens:
        ``value/clipfrac`` (fraction where the clipped branch is strictly larger) and
        ``value/mse`` (mean ``(v - R)^2``, unclipped).
    """
    keep = response_mask(mask, values, name="values")
    _same_shape(values, old_values=old_values, returns=returns)
    if not clip > 0.0:
        raise ValueError(f"clip must be > 0, got {clip}")
    reduce = _aggregation(aggregation)

    v = _masked(values, keep)
    old = _masked(old_values.detach(), keep)
    target = _masked(returns.detach(), keep)
    v_clipped = old + (v - old).clamp(-clip, clip)
    err, err_clipped = (v - target).square(), (v_clipped - target).square()
    loss = reduce(0.5 * torch.maximum(err, err_clipped), keep)

    with torch.no_grad():
        metrics = {
            "value/clipfrac": token_mean((err_clipped > err).to(v.dtype), keep).item(),
            "value/mse": token_mean(err, keep).item(),
        }
    return loss, metrics


def _k1(lr: Tensor) -> tuple[Tensor, int]:
    return kl_k1(lr), 0


def _k2(lr: Tensor) -> tuple[Tensor, int]:
    return kl_k2(lr), 0


def _k3(lr: Tensor) -> tuple[Tensor, int]:
    return kl_k3(lr)


KL_ESTIMATORS: dict[str, Callable[[Tensor], tuple[Tensor, int]]] = {
    "k1": _k1,
    "k2": _k2,
    "k3": _k3,
}
"""Per-token KL estimators for the loss: ``lr -> (kl, n_clamped)``; see :mod:`proxygap.estimators.
kl`. Only k3 clamps (at the default bound); k1 and k2 report 0."""


def kl_loss_term(
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    *,
    estimator: str = "k3",
    aggregation: str = "token_mean",
) -> tuple[Tensor, dict[str, float]]:
    """KL-in-the-loss penalty ``mean_t k(lr_t)`` (GRPO, Shao et al. 2024, eq. 4 uses k3).

    The caller adds ``beta * term`` to the policy loss. The gradient flows through ``logp`` only;
    ``ref_logp`` is treated as constant. With k3, tokens where ``lr < -20`` are clamped and get
    zero gradient (see :func:`~proxygap.estimators.kl.kl_k3`); their count is reported.

    Differentiated this way, with tokens sampled from ``pi``, the estimators do not all give the
    gradient of ``KL(pi || pi_ref)``: ``E_pi[grad k2] = grad KL(pi || pi_ref)``,
    ``E_pi[grad k3] = grad KL(pi_ref || pi)`` and ``E_pi[grad k1] = E_pi[grad log pi] = 0``.
    GRPO uses k3.

    Args:
        logp: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        ref_logp: ``(B, T)`` the same under the reference policy.
        mask: ``(B, T)`` response mask.
        estimator: a key of :data:`KL_ESTIMATORS`.
        aggregation: a key of :data:`AGGREGATIONS`; the default is the per-token masked mean.

    Returns:
        ``(term, metrics)``: scalar term, and detached ``kl/loss_term`` (its value) and
        ``kl/loss_clamped`` (number of clamped response tokens).
    """
    keep = response_mask(mask, logp, name="logp")
    _same_shape(logp, ref_logp=ref_logp)
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed: {sorted(KL_ESTIMATORS)}")
    reduce = _aggregation(aggregation)
    lr = _masked(logp - ref_logp.detach(), keep)
    kl, n_clamped = KL_ESTIMATORS[estimator](lr)
    term = reduce(kl, keep)
    return term, {"kl/loss_term": term.detach().item(), "kl/loss_clamped": float(n_clamped)}


def _aggregation(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; allowed: {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[name]


def _masked(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` with every position outside ``keep`` set to 0 (no NaN leaks into the gradient)."""
    return torch.where(keep, x, torch.zeros_like(x))


def _same_shape(ref: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(f"{name} must have shape {tuple(ref.shape)}, got {tuple(t.shape)}")
