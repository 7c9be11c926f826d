"""Log-probabilities of responses under a causal LM, given their prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from proxygap.losses.sequence import token_logprobs


def build_inputs(
    prompt_ids: Sequence[Sequence[int]], response_ids: torch.Tensor, mask: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts followed by right-padded responses.

    Returns ids (B, P+T), attention mask (B, P+T), position ids (B, P+T) and P, the prompt
    width; ``logits[:, P-1 : P-1+T]`` then predict the T response tokens.
    """
    B, T = response_ids.shape
    if len(prompt_ids) != B:
        raise ValueError(f"{len(prompt_ids)} prompts for {B} responses")
    P = max(len(p) for p in prompt_ids)
    if P == 0:
        raise ValueError("every prompt needs at least one token (e.g. bos) to condition on")
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + T), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        if len(p):
            ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
            attn[i, P - len(p) : P] = 1
    ids[:, P:] = response_ids
    attn[:, P:] = (mask > 0).long()
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return ids, attn, pos, P


def response_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    pad_id: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """log pi(y_t | x, y_<t) for every response token, (B, T), 0 outside ``mask``.

    Gradients flow when called outside ``torch.no_grad``; ``batch_size`` splits the forward
    passes (use it under ``no_grad`` for large evaluation batches).
    """
    device = next(model.parameters()).device
    B = response_ids.shape[0]
    step = batch_size or B
    parts = []
    for s in range(0, B, step):
        ids, attn, pos, P = build_inputs(
            prompt_ids[s : s + step], response_ids[s : s + step], mask[s : s + step], pad_id
        )
        logits = model(
            input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device)
        ).logits
        T = response_ids.shape[1]
        lp = token_logprobs(logits[:, P - 1 : P - 1 + T], ids[:, P:].to(device))
        keep = mask[s : s + step].to(device) > 0
        parts.append(torch.where(keep, lp, torch.zeros_like(lp)))
    return torch.cat(parts)
