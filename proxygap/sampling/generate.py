"""Batched ancestral sampling from a causal LM with a KV cache.

A lean decode loop over ``model(input_ids, past_key_values=...)``: left-padded prompts, one
forward pass per generated token, Gumbel-max sampling from a seeded generator, and early exit once
every row has produced ``eos``. It returns the response tokens with their log-probabilities under
the (temperature-1) model, which RL and KL estimates need and ``model.generate`` does not give
without extra passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Samples:
    """Responses sampled for a list of prompts (rows in prompt order, ``n`` per prompt).

    ``response_ids`` (B, T) is right-padded with ``pad_id``; ``mask`` (B, T) is 1 on response
    tokens including the closing eos; ``logprobs`` (B, T) are log pi(token) at temperature 1;
    ``finished`` (B,) tells which rows emitted eos within the budget.
    """

    prompt_index: torch.Tensor  # (B,) index into the prompt list
    prompt_ids: list[list[int]]
    response_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float
    logprobs: torch.Tensor  # (B, T) float
    finished: torch.Tensor  # (B,) bool

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1).long()

    def prompt_ids_rows(self) -> list[list[int]]:
        """The prompt ids of every row (B lists)."""
        return [self.prompt_ids[i] for i in self.prompt_index.tolist()]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            attn[i, width - len(r) :] = 1
    return ids, attn


@torch.inference_mode()
def _sample_batch(
    model: PreTrainedModel,
    rows: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    ids, attn = _left_pad(rows, pad_id)
    ids, attn = ids.to(device), attn.to(device)
    B = ids.shape[0]
    out_tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_logp = torch.zeros((B, max_new_tokens), device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)  # (B, P) position of each prompt token
    next_pos = pos[:, -1:] + 1  # (B, 1)
    cache = None
    inputs, positions = ids, pos
    T = 0
    for t in range(max_new_tokens):
        out = model(
            input_ids=inputs,
            attention_mask=attn,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1, :].float()  # (B, V)
        logp = torch.log_softmax(logits, dim=-1)
        scaled = logp if temperature == 1.0 else torch.log_softmax(logits / temperature, dim=-1)
        u = torch.rand(scaled.shape, generator=generator, device="cpu").to(device)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        token = torch.argmax(scaled + gumbel, dim=-1)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out_tokens[:, t] = token
        out_logp[:, t] = torch.where(done, 0.0, logp.gather(1, token[:, None]).squeeze(1))
        done |= token == eos_id
        T = t + 1
        if bool(done.all()):
            break
        inputs, positions = token[:, None], next_pos
        next_pos = next_pos + 1
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
    tokens, logps = out_tokens[:, :T], out_logp[:, :T]
    # mask: tokens up to and including the first eos (everything for unfinished rows)
    is_eos = tokens == eos_id
    after_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    mask = (~after_eos).float()
    return tokens.cpu(), mask.cpu(), (logps * mask).cpu(), done.cpu()


def sample(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    *,
    n_per_prompt: int = 1,
    max_new_tokens: int,
    temperature: float = 1.0,
    eos_id: int,
    pad_id: int,
    batch_size: int = 512,
    seed: int = 0,
    progress: str | None = None,
) -> Samples:
    """Sample ``n_per_prompt`` responses for every prompt (rows grouped by prompt).

    Args:
        prompt_ids: token ids of each prompt (any lengths; left-padded internally).
        temperature: sampling temperature (> 0); log-probs are reported at temperature 1.
        seed: seeds one CPU generator; the same seed, model and batch size give the same samples.
        progress: a description for a progress bar, or None for none.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompt_ids:
        raise ValueError("no prompts to sample from")
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(len(prompt_ids)).repeat_interleave(n_per_prompt)
    rows = [prompt_ids[i] for i in index.tolist()]
    parts = []
    starts = range(0, len(rows), batch_size)
    for s in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        parts.append(
            _sample_batch(
                model,
                rows[s : s + batch_size],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                eos_id=eos_id,
                pad_id=pad_id,
                generator=gen,
            )
        )
    width = max(p[0].shape[1] for p in parts)

    def cat(k: int, fill: float) -> torch.Tensor:
        return torch.cat(
            [torch.nn.functional.pad(p[k], (0, width - p[k].shape[1]), value=fill) for p in parts]
        )

    return Samples(
        prompt_index=index,
        prompt_ids=[list(p) for p in prompt_ids],
        response_ids=cat(0, pad_id).long(),
        mask=cat(1, 0.0),
        logprobs=cat(2, 0.0),
        finished=torch.cat([p[3] for p in parts]),
    )


def decode_responses(samples: Samples, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Response texts without special tokens (eos and padding dropped)."""
    ids = [
        row[: int(n)].tolist()
        for row, n in zip(samples.response_ids, samples.lengths, strict=True)
    ]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
