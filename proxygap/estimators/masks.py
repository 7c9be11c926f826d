"""Response masks as every per-token estimator and loss reads them."""

from __future__ import annotations

from torch import Tensor

__all__ = ["response_mask"]


def response_mask(mask: Tensor, like: Tensor, *, name: str) -> Tensor:
    """``mask`` as bool after checking it is ``(B, T)`` like ``like`` (named ``name`` in the
    error)."""
    if like.dim() != 2 or mask.shape != like.shape:
        raise ValueError(
            f"expected {name} and mask of the same shape (B, T), got {tuple(like.shape)} "
            f"and {tuple(mask.shape)}"
        )
    return mask.bool()
