"""Supervised fine-tuning on demonstrations: the language-model loss on response tokens.

Used to make the SFT variants a soup reference is built from (SALSA, Chegini et al. 2024;
docs/methods.md §4): two copies of the base policy are fine-tuned independently (other data, other
seed) and averaged in weight space by :func:`proxygap.mitigations.soup.weight_average`.

The loss is the token mean over a batch of ``-log pi(y_t | x, y_<t)`` on response tokens only
(the prompt conditions, it is not learned), with AdamW, linear warm-up then cosine decay, and
gradient clipping, as in common SFT recipes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from proxygap.errors import NonFiniteError
from proxygap.models.logprobs import response_logprobs
from proxygap.models.schedule import lr_factor
from proxygap.optimize.loop import optimiser_step
from proxygap.sampling.generate import encode_prompts


@dataclass
class SFTHistory:
    loss: list[float] = field(default_factory=list)  # token-mean NLL of every step


def encode_demonstrations(
    tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Prompt ids (``[bos] + prompt``, as the samplers encode them), right-padded response ids
    ``(B, T)`` closed by eos, and their mask ``(B, T)``."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(
            f"need equally many prompts and responses (> 0), got {len(prompts)} and "
            f"{len(responses)}"
        )
    prompt_ids = encode_prompts(tokenizer, prompts)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [
        list(r) + [eos] for r in tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    ]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1.0
    return prompt_ids, ids, mask


def fine_tune(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    epochs: float = 1.0,
    lr: float = 1e-4,
    batch_size: int = 32,
    warmup_fraction: float = 0.05,
    max_grad_norm: float = 1.0,
    seed: int = 0,
) -> SFTHistory:
    """Fine-tune ``model`` in place on (prompt, response) demonstrations; returns the loss of
    every step. Batches are drawn from a seeded permutation per epoch; the model is left in
    eval mode."""
    if epochs <= 0 or lr <= 0 or batch_size < 1:
        raise ValueError(
            f"epochs and lr must be > 0 and batch_size >= 1, got {epochs}, {lr}, {batch_size}"
        )
    prompt_ids, ids, mask = encode_demonstrations(tokenizer, prompts, responses)
    n = len(prompt_ids)
    per_epoch = math.ceil(n / batch_size)
    n_steps = max(1, round(epochs * per_epoch))
    warmup = max(1, round(warmup_fraction * n_steps))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, kind="cosine", warmup=warmup, total=n_steps)
    )
    history = SFTHistory()
    params = list(model.parameters())

    def batch_loss(idx: Tensor) -> tuple[Tensor, float]:
        m = mask[idx]
        width = int(m.sum(dim=1).max())
        lp = response_logprobs(
            model,
            [prompt_ids[i] for i in idx.tolist()],
            ids[idx, :width],
            m[:, :width],
            pad_id=tokenizer.pad_token_id,
        )  # (b, T)
        loss = -lp.sum() / m.sum()
        history.loss.append(loss.item())
        return loss, 1.0

    model.eval()  # no dropout: the tiny policies are trained without it
    order = torch.empty(0, dtype=torch.long)
    for step in range(n_steps):
        if step % per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        k = step % per_epoch
        idx = order[k * batch_size : (k + 1) * batch_size]
        try:
            optimiser_step(opt, params, [idx], batch_loss, max_grad_norm=max_grad_norm)
        except NonFiniteError as err:
            raise NonFiniteError(f"SFT: {err.message}", step=step) from err
        sched.step()
    return history
