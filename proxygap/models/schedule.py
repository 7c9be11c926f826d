"""Learning-rate schedules shared by every trainer (reward models, SFT, RL, DAA)."""

from __future__ import annotations

import math


def lr_factor(step: int, *, kind: str, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate before RL step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then constant or cosine decay to 0 at ``total`` (Loshchilov and
    Hutter 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown lr schedule {kind!r}; allowed: ['constant', 'cosine']")
