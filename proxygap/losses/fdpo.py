"""f-DPO losses: DPO with an f-divergence constraint in place of the reverse KL
(Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
Divergence Constraints"; docs/methods.md §7).

For a convex ``f`` with ``f(1) = 0``, the optimal policy of the ``D_f``-constrained reward
objective satisfies ``r(x, y) = beta f'(pi(y|x) / pi_ref(y|x)) + const(x)`` (their Theorem 1), so
the Bradley-Terry likelihood of a preference pair gives the loss

    L = -log sigma(beta * (f'(u_w) - f'(u_l))),   u = pi(y|x) / pi_ref(y|x),

with the link ``f'`` of the chosen divergence:

- reverse KL, ``f(u) = u log u``: ``f'(u) = log u + 1`` (DPO exactly; the ``+1`` cancels);
- forward KL, ``f(u) = -log u``: ``f'(u) = -1/u``;
- Jensen-Shannon, ``f(u) = u log u - (u + 1) log((u + 1)/2)``: ``f'(u) = log(2u / (1 + u))``;
- alpha-divergence, ``f(u) = (u^(1-alpha) - (1-alpha) u - alpha) / (alpha (alpha - 1))``:
  ``f'(u) = (1 - u^(-alpha)) / alpha`` for ``alpha`` in ``(0, 1)`` (forward KL as
  ``alpha -> 1``, reverse KL as ``alpha -> 0``).

Every link is computed from the log-ratio ``l = log u`` without forming ``u``: ``-1/u =
-exp(-l)``, ``log(2u/(1+u)) = log 2 + l - softplus(l)``, ``u^(-alpha) = exp(-alpha l)``, so
log-ratios of +-50 give finite losses and gradients in float32.

Inputs, returns and metric names are those of :mod:`proxygap.losses.daa` (the functions are
registered in its ``DAA_LOSSES``); the implicit rewards are ``beta * f'(u)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from proxygap.losses.daa_checks import batch_metrics, check_positive, logratios

LossOutput = tuple[Tensor, dict[str, float]]

_LOG2 = math.log(2.0)


def reverse_kl_link(logratio: Tensor) -> Tensor:
    """``f'(u) = log u + 1`` for ``f(u) = u log u`` (reverse KL), as a function of ``l = log u``.

    The constant ``+1`` is dropped: only differences of links enter the loss, and without it the
    loss is bit-for-bit DPO's.
    """
    return logratio


def forward_kl_link(logratio: Tensor) -> Tensor:
    """``f'(u) = -1/u = -exp(-l)`` for ``f(u) = -log u`` (forward KL)."""
    return -torch.exp(-logratio)


def js_link(logratio: Tensor) -> Tensor:
    """``f'(u) = log(2u / (1 + u)) = log 2 + l - softplus(l)`` (Jensen-Shannon)."""
    return _LOG2 + logratio - F.softplus(logratio)


def alpha_link(logratio: Tensor, alpha: float) -> Tensor:
    """``f'(u) = (1 - u^(-alpha)) / alpha = -expm1(-alpha l) / alpha`` (alpha-divergence)."""
    return -torch.expm1(-alpha * logratio) / alpha


def _fdpo(
    link: Callable[[Tensor], Tensor],
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> LossOutput:
    chosen_logratios, rejected_logratios = logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,), (B,)
    check_positive("beta", beta)
    chosen_rewards = beta * link(chosen_logratios)  # (B,)
    rejected_rewards = beta * link(rejected_logratios)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, batch_metrics(losses, chosen_rewards, rejected_rewards)


def fdpo_reverse_kl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """f-DPO with the reverse KL, ``-log sigma(beta (l_w - l_l))``: equal to
    :func:`proxygap.losses.daa.dpo_loss` (Wang et al. 2023, §4). Arguments as ``dpo_loss``."""
    return _fdpo(
        reverse_kl_link,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
    )


def fdpo_forward_kl_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """f-DPO with the forward KL, ``-log sigma(beta (exp(-l_l) - exp(-l_w)))`` (Wang et al.
    2023). Arguments as :func:`proxygap.losses.daa.dpo_loss`."""
    return _fdpo(
        forward_kl_link,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
    )


def fdpo_js_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """f-DPO with the Jensen-Shannon divergence, link ``log(2u / (1 + u))`` (Wang et al. 2023).
    Arguments as :func:`proxygap.losses.daa.dpo_loss`."""
    return _fdpo(
        js_link,
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
    )


def fdpo_alpha_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.5,
) -> LossOutput:
    """f-DPO with the alpha-divergence, link ``(1 - u^(-alpha)) / alpha`` (Wang et al. 2023).

    Args:
        alpha: in ``(0, 1)``; default 0.5 (the middle of the range the paper sweeps).
        others: as :func:`proxygap.losses.daa.dpo_loss`.
    """
    check_positive("alpha", alpha)
    if alpha >= 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return _fdpo(
        lambda lr: alpha_link(lr, alpha),
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta,
    )


FDPO_LOSSES: dict[str, Callable[..., LossOutput]] = {
    "fdpo_rkl": fdpo_reverse_kl_loss,
    "fdpo_fkl": fdpo_forward_kl_loss,
    "fdpo_js": fdpo_js_loss,
    "fdpo_alpha": fdpo_alpha_loss,
}
"""f-DPO losses by config name; all take the four reference-based inputs of DPO."""
