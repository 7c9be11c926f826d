"""Likelihood over-optimisation indicators on a policy's next-token distributions.

Shi et al. 2024 ("Understanding Likelihood Over-optimisation in Direct Alignment Algorithms")
observe that a better likelihood of preferred responses does not mean better generations, and
propose two indicators, computed on the policy's own outputs, whose decline signals that output
diversity is being over-optimised: decreasing entropy over the top-k tokens and diminishing top-k
probability mass (docs/methods.md §5). Per position, with logits ``z`` (length ``V``),
``p = softmax(z)`` and ``S_k`` the ``k`` most probable tokens:

- top-k probability mass ``M_k = sum_{i in S_k} p_i`` in ``(0, 1]``: 1 when the policy puts all
  its mass on ``k`` tokens, ``k / V`` for a uniform distribution; it falls as mass leaks into the
  long tail;
- top-k entropy ``H_k = -sum_{i in S_k} q_i log q_i`` with ``q_i = p_i / M_k``, the entropy of the
  top-k distribution renormalised to sum to 1, in ``[0, log k]`` nats (``log k`` for uniform); it
  falls as the policy becomes sure of one token among its top ``k``.

Renormalising makes ``H_k`` depend only on the top-k logits: ``q = softmax(z[S_k])``.

Metrics returned by :func:`likelihood_indicators` (means over the response tokens in ``mask``):

- ``likelihood/topk_entropy``: mean ``H_k`` in nats.
- ``likelihood/topk_mass``: mean ``M_k``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from proxygap.losses.sequence import masked_mean

DEFAULT_K = 10
"""Number of top tokens in both indicators."""


def _check(logits: Tensor, k: int) -> None:
    if logits.ndim < 1 or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a floating tensor (..., V), got {logits.dtype} {tuple(logits.shape)}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"k must be an int in [1, V = {logits.shape[-1]}], got {k!r}")


def topk_mass(logits: Tensor, *, k: int = DEFAULT_K) -> Tensor:
    """Probability mass of the ``k`` most probable tokens, ``sum_{i in S_k} softmax(z)_i``
    (Shi et al. 2024).

    Args:
        logits: ``(..., V)`` unnormalised next-token scores; half precision is upcast to float32.
        k: number of top tokens, ``1 <= k <= V``.

    Returns:
        ``(...)`` masses in ``(0, 1]``.
    """
    _check(logits, k)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    top = z.topk(k, dim=-1).values  # (..., k)
    return (torch.logsumexp(top, dim=-1) - torch.logsumexp(z, dim=-1)).exp()


def topk_entropy(logits: Tensor, *, k: int = DEFAULT_K) -> Tensor:
    """Entropy (nats) of the renormalised top-k distribution ``q = softmax(z[S_k])``
    (Shi et al. 2024).

    Args:
        logits: ``(..., V)`` unnormalised next-token scores; half precision is upcast to float32.
        k: number of top tokens, ``1 <= k <= V``.

    Returns:
        ``(...)`` entropies in ``[0, log k]``.
    """
    _check(logits, k)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    log_q = torch.log_softmax(z.topk(k, dim=-1).values, dim=-1)  # (..., k)
    return -(log_q.exp() * log_q).sum(dim=-1)


def likelihood_indicators(logits: Tensor, mask: Tensor, *, k: int = DEFAULT_K) -> dict[str, float]:
    """Mean top-k entropy and top-k mass over the masked positions (Shi et al. 2024).

    Args:
        logits: ``(B, T, V)``; ``logits[b, t]`` is the distribution the policy sampled token
            ``t`` of response ``b`` from (caller shifts, as in :mod:`proxygap.losses.sequence`).
        mask: ``(B, T)``; nonzero marks response tokens. An empty mask gives 0 for both.
        k: number of top tokens.

    Returns:
        ``{"likelihood/topk_entropy": ..., "likelihood/topk_mass": ...}`` as Python floats.
    """
    if logits.ndim != 3 or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits (B, T, V) and mask (B, T), got {tuple(logits.shape)} and "
            f"{tuple(mask.shape)}"
        )
    with torch.no_grad():
        entropy = masked_mean(topk_entropy(logits, k=k), mask)
        mass = masked_mean(topk_mass(logits, k=k), mask)
    return {"likelihood/topk_entropy": float(entropy), "likelihood/topk_mass": float(mass)}
