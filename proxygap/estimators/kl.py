"""Per-token and per-sequence KL estimators.

Schulman (2020), "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.

For tokens ``a_t`` sampled from ``pi`` let ``lr_t = log pi(a_t|s_t) - log pi_ref(a_t|s_t)``. Then
``KL(pi || pi_ref) = E_pi[lr]`` and three single-sample estimators are

- ``k1 = lr``                      unbiased, high variance, negative for some samples;
- ``k2 = lr^2 / 2``                biased (exact to second order), low variance, ``>= 0``;
- ``k3 = exp(-lr) - 1 + lr``       unbiased (``E_pi[exp(-lr)] = 1``), low variance, ``>= 0``.

The sequence KL is the sum over response tokens (docs/methods.md §2). Log all three, optimize
with one.

Shapes: ``B`` sequences, ``T`` token positions. Masks are float or bool tensors ``(B, T)`` whose
nonzero entries mark response tokens; positions outside the mask may hold anything (even NaN) and
never affect a result.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from proxygap.estimators.masks import response_mask

K3_CLAMP = 20.0
"""Default bound on ``-lr`` inside ``exp`` for k3: ``exp(20) ~ 4.9e8`` is finite in bf16/fp32."""


def log_ratio(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token log ratio ``lr = logp - ref_logp``.

    Args:
        logp: ``(B, T)`` log-probabilities of the sampled tokens under the policy ``pi``.
        ref_logp: ``(B, T)`` log-probabilities of the same tokens under ``pi_ref``.

    Returns:
        ``(B, T)`` log ratio; its expectation under ``pi`` is ``KL(pi || pi_ref)`` per token.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} "
            f"and {tuple(ref_logp.shape)}"
        )
    return logp - ref_logp


def kl_k1(lr: Tensor) -> Tensor:
    """k1 estimator ``lr`` (Schulman 2020), elementwise; unbiased, can be negative per token."""
    return lr


def kl_k2(lr: Tensor) -> Tensor:
    """k2 estimator ``lr^2 / 2`` (Schulman 2020), elementwise; biased, non-negative."""
    return 0.5 * lr.square()


def kl_k3(lr: Tensor, *, clamp: float = K3_CLAMP) -> tuple[Tensor, int]:
    """k3 estimator ``exp(-lr) - 1 + lr`` (Schulman 2020), elementwise, never inf/NaN.

    ``exp(-lr)`` overflows to ``inf`` when the policy puts far less mass on a sampled token than the
    reference (``lr`` very negative); an unguarded k3 then yields ``inf`` losses and NaN gradients,
    a known bug class in RLHF libraries (TRL, OpenRLHF, verl). Here ``lr`` is clamped from below at
    ``-clamp`` *before* the formula, so the result is k3 of the clamped ratio: finite, ``>= 0``,
    monotone in ``lr``, and with zero gradient for clamped elements. ``expm1`` keeps precision
    for small ``|lr|``. The number of clamped elements is returned so it can be logged.

    Args:
        lr: log ratio of any shape, usually ``(B, T)``; floating dtype.
        clamp: positive bound on ``-lr``; ``exp(clamp)`` must be finite in ``lr.dtype``
            (float16 needs ``clamp <= 11``).

    Returns:
        ``(k3, n_clamped)``: ``k3`` with the shape of ``lr``, and the number of elements with
        ``lr < -clamp``. Mask ``lr`` (e.g. set padding to 0) first if padding must not count.
    """
    if not lr.is_floating_point():
        raise ValueError(f"lr must be a floating tensor, got {lr.dtype}")
    if not clamp > 0:
        raise ValueError(f"clamp must be > 0, got {clamp}")
    if clamp >= math.log(torch.finfo(lr.dtype).max):
        raise ValueError(f"clamp={clamp} overflows exp() in {lr.dtype}; use a smaller clamp")
    n_clamped = int((lr < -clamp).sum().item())
    x = -lr.clamp(min=-clamp)  # x = -lr <= clamp
    return (torch.expm1(x) - x).clamp_min(0.0), n_clamped


class SequenceKL(NamedTuple):
    """Per-sequence KL estimates, each ``(B,)``: sums of k1, k2, k3 over response tokens."""

    k1: Tensor
    k2: Tensor
    k3: Tensor


def sequence_kl(
    lr: Tensor, mask: Tensor, *, clamp: float = K3_CLAMP
) -> tuple[SequenceKL, dict[str, float]]:
    """Sequence KL ``sum_t mask_t * k(lr_t)`` for k1, k2 and k3 at once (docs/methods.md §2).

    Args:
        lr: ``(B, T)`` per-token log ratio ``log pi - log pi_ref`` of tokens sampled from ``pi``.
        mask: ``(B, T)`` float or bool; nonzero for response tokens. Padding is ignored even if
            ``lr`` is NaN there.
        clamp: bound passed to :func:`kl_k3`.

    Returns:
        ``(SequenceKL(k1, k2, k3), metrics)`` with ``(B,)`` sums, and detached metrics
        ``kl/k1``, ``kl/k2``, ``kl/k3`` (means over the batch of the sequence sums) and
        ``kl/clamped`` (total number of response tokens clamped in k3, over the whole batch).
    """
    keep = response_mask(mask, lr, name="lr")
    lr = torch.where(keep, lr, torch.zeros_like(lr))  # padding -> 0, contributes 0 to all
    k3, n_clamped = kl_k3(lr, clamp=clamp)
    out = SequenceKL(k1=kl_k1(lr).sum(-1), k2=kl_k2(lr).sum(-1), k3=k3.sum(-1))
    metrics = {f"kl/{name}": v.detach().mean().item() for name, v in out._asdict().items()}
    metrics["kl/clamped"] = float(n_clamped)
    return out, metrics
