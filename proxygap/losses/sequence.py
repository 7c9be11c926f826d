"""Token and sequence log-probabilities from logits, and masked reductions.

Shared by the direct-alignment losses (``losses/daa.py``) and the RL code: every quantity that
needs ``log pi(y_t | x, y_<t)`` goes through :func:`token_logprobs`.

Shift convention: ``logits[:, t]`` scores ``labels[:, t]``. Nothing here shifts. For a causal LM
whose forward pass returns ``out`` of shape ``(B, T, V)`` on ``input_ids`` ``(B, T)``, the caller
passes ``logits = out[:, :-1]``, ``labels = input_ids[:, 1:]`` and ``mask = response_mask[:, 1:]``
(the position that *predicts* a response token is the one before it).

Shapes: ``B`` sequences, ``T`` positions, ``V`` vocabulary. Masks are bool or numeric ``(B, T)``
tensors whose nonzero entries select positions; positions outside the mask may hold anything
(even NaN or a negative ignore index such as ``-100``) and never affect a result.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token log-probability ``log softmax(logits[b, t])[labels[b, t]]``.

    Equivalent to ``logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]`` but computed one
    sequence at a time as ``logit[label] - logsumexp(logit)``, so the peak extra memory is one
    ``(T, V)`` row instead of a second ``(B, T, V)`` tensor. float16/bfloat16 rows are upcast to
    float32 (the result is then float32); float32/float64 keep their dtype.

    Args:
        logits: ``(B, T, V)`` unnormalised scores; ``logits[:, t]`` predicts ``labels[:, t]`` (the
            caller shifts, see the module docstring).
        labels: ``(B, T)`` integer token ids in ``[0, V)``; negative entries (an ignore index such
            as ``-100``) are allowed and give ``0.0``.

    Returns:
        ``(B, T)`` log-probabilities (``<= 0``), differentiable w.r.t. ``logits``.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (B, T, V), got {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape (B, T) = {tuple(logits.shape[:2])} matching logits, "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of token ids, got {labels.dtype}")
    out_dtype = torch.float32 if logits.dtype in _HALF_DTYPES else logits.dtype
    if logits.shape[0] == 0:
        return logits.new_zeros(labels.shape, dtype=out_dtype)
    index = labels.clamp(min=0).unsqueeze(-1)  # (B, T, 1); ignore-index slots read token 0
    rows = []
    # One sequence at a time: (T, V) logits and (T, 1) index, so only one row is ever expanded.
    for row_logits, row_index in zip(logits, index, strict=True):
        row_logits = row_logits.to(out_dtype)
        picked = row_logits.gather(-1, row_index).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))  # (T,)
    return torch.stack(rows).masked_fill(labels < 0, 0.0)  # (B, T)


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``log pi(labels[b, t])`` over the positions selected by ``mask``.

    For a response ``y`` this is ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)``, the sequence
    log-probability every direct-alignment loss consumes (Rafailov et al. 2023). Padding
    and prompt positions are excluded by the mask, so the result does not depend on how the batch
    is padded (left, right, or how much).

    Args:
        logits: ``(B, T, V)``; ``logits[:, t]`` predicts ``labels[:, t]`` (caller shifts).
        labels: ``(B, T)`` token ids; values at unmasked positions are ignored.
        mask: ``(B, T)``; nonzero marks the response tokens to score.

    Returns:
        ``(B,)`` summed log-probabilities (``0.0`` for an empty mask).
    """
    if mask.shape != labels.shape:
        raise ValueError(
            f"mask must have the shape of labels {tuple(labels.shape)}, got {tuple(mask.shape)}"
        )
    per_token = token_logprobs(logits, labels)  # (B, T)
    return torch.where(mask.bool(), per_token, 0.0).sum(dim=-1)  # (B,)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is nonzero.

    ``sum(x * [mask != 0]) / count(mask != 0)`` along ``dim`` (all dimensions when ``None``).
    Entries outside the mask never contribute, even if they are NaN or inf. An empty mask (along
    ``dim``) gives ``0.0`` rather than NaN, so a fully padded row adds nothing to a batch average;
    check the count yourself if an empty selection is an error for your use.

    Args:
        x: floating tensor of any shape, e.g. ``(B, T)`` per-token values.
        mask: same shape as ``x``; nonzero selects an entry (weights are not supported).
        dim: dimension(s) to reduce; ``None`` reduces everything to a scalar.

    Returns:
        ``x`` reduced over ``dim``: a 0-d tensor for ``dim=None``, ``(B,)`` for ``dim=-1`` on
        ``(B, T)``.
    """
    if mask.shape != x.shape:
        raise ValueError(f"mask must have the shape of x {tuple(x.shape)}, got {tuple(mask.shape)}")
    selected = mask.bool()
    total = torch.where(selected, x, 0.0).sum(dim=dim)
    count = selected.sum(dim=dim).clamp(min=1)
    return total / count
