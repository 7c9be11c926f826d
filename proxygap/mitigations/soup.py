"""Weight averaging ("model soups") for a soup KL reference (SALSA; docs/methods.md §4).

SALSA replaces the KL reference ``pi_ref = pi0`` by the weight-space average of two models
fine-tuned independently from the same base (e.g. two SFT runs with different seeds or data
orders); the policy then starts from, and is regularised towards, the soup. :func:`weight_average`
builds it; pass the result as ``ref`` (and a copy as ``policy``) to the RL recipe, or as the
reference model of a DAA loss.

Averaging only makes sense between models that share an architecture and (for a useful soup) a
common pre-trained ancestor; the function checks the former and cannot check the latter.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def _check_weights(weights: Sequence[float] | None, k: int) -> list[float]:
    if weights is None:
        return [1.0 / k] * k
    w = [float(x) for x in weights]
    if len(w) != k:
        raise ValueError(f"{len(w)} weights for {k} models")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {w}")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1, got {w} (sum {sum(w)})")
    return w


def weight_average(models: Sequence[M], weights: Sequence[float] | None = None) -> M:
    """A new model whose floating parameters and buffers are ``sum_i w_i * theta_i``.

    The average is taken in float64 and cast back to each tensor's dtype. Non-floating tensors
    (integer or boolean buffers) must be equal across models and are copied. Tied weights stay
    tied (the result is a deep copy of ``models[0]`` with its state replaced). The inputs are not
    modified.

    Args:
        models: ``k >= 1`` models of one class with identical state-dict keys and shapes.
        weights: ``k`` non-negative weights summing to 1; uniform if None.

    Raises:
        ValueError: no models, different classes, keys, shapes or dtypes, unequal non-floating
            buffers, or bad weights; the message names the first offending tensor.
    """
    if not models:
        raise ValueError("weight_average needs at least one model")
    w = _check_weights(weights, len(models))
    first = models[0]
    for i, m in enumerate(models[1:], start=1):
        if type(m) is not type(first):
            raise ValueError(
                f"model {i} is a {type(m).__name__}, model 0 a {type(first).__name__}; "
                "a soup needs one architecture"
            )
    states = [m.state_dict() for m in models]
    keys = list(states[0])
    for i, s in enumerate(states[1:], start=1):
        if list(s) != keys:
            missing, extra = sorted(set(keys) - set(s)), sorted(set(s) - set(keys))
            raise ValueError(
                f"model {i} has different tensors from model 0 (missing {missing[:3]}, "
                f"extra {extra[:3]}); a soup needs one architecture"
            )
    averaged: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [s[key] for s in states]
        t0 = tensors[0]
        for i, t in enumerate(tensors[1:], start=1):
            if t.shape != t0.shape or t.dtype != t0.dtype:
                raise ValueError(
                    f"tensor {key!r}: model {i} has {tuple(t.shape)} {t.dtype}, model 0 has "
                    f"{tuple(t0.shape)} {t0.dtype}"
                )
        if t0.is_floating_point():
            acc = torch.zeros(t0.shape, dtype=torch.float64, device=t0.device)
            for wi, t in zip(w, tensors, strict=True):
                acc.add_(t.detach().to(device=t0.device, dtype=torch.float64), alpha=wi)
            averaged[key] = acc.to(t0.dtype)
        else:
            for i, t in enumerate(tensors[1:], start=1):
                if not torch.equal(t.to(t0.device), t0):
                    raise ValueError(
                        f"non-floating tensor {key!r} differs between model 0 and model {i}; "
                        "it cannot be averaged"
                    )
            averaged[key] = t0.clone()
    soup = copy.deepcopy(first)
    soup.load_state_dict(averaged)
    return soup
