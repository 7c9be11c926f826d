"""Bradley-Terry loss for reward models trained on preference pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, *, margin: float = 0.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-pair loss ``-log sigma(r_w - r_l - margin)`` (Bradley & Terry 1952; Ouyang et al. 2022).

    Args:
        r_chosen, r_rejected: (B,) rewards of the preferred and the other response.
        margin: optional required margin (0 gives the plain Bradley-Terry likelihood).

    Returns:
        losses (B,) — not reduced — and metrics ``rm/accuracy`` (fraction with r_w > r_l) and
        ``rm/margin`` (mean r_w - r_l).
    """
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(
            f"r_chosen and r_rejected must be equal 1-D shapes, got "
            f"{tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    diff = r_chosen - r_rejected
    losses = -F.logsigmoid(diff - margin)
    with torch.no_grad():
        metrics = {
            "rm/accuracy": float((diff > 0).float().mean()) if diff.numel() else float("nan"),
            "rm/margin": float(diff.mean()) if diff.numel() else float("nan"),
        }
    return losses, metrics
