"""Quark's data and update (Lu et al. 2022; docs/methods.md §4): response tokens of pooled texts,
log-probs conditioned on a control token, and the optimiser step on the Quark loss.

Used by :func:`proxygap.optimize.quark.train_quark`; the step is the shared
:func:`~proxygap.optimize.loop.optimiser_step` with Quark's loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor
from transformers import PreTrainedModel

from proxygap.mitigations.quark import QuarkExample, quark_loss
from proxygap.models.logprobs import build_inputs
from proxygap.optimize.loop import optimiser_step
from proxygap.optimize.rollout import autocast, pack
from proxygap.sampling.generate import condition_prompts
from proxygap.schema import NonNegFloat, PosInt, Strict

__all__ = ["QuarkSettings", "conditioned_logps", "encode_responses", "quark_update"]


class QuarkSettings(Strict):
    """Quark's own hyperparameters; the rest (steps, sampling budget, optimiser, evaluation)
    come from the :class:`~proxygap.optimize.rl.RLConfig` shared with the RL arms.

    Defaults follow Lu et al. 2022 and their code: ``K = 5`` quantiles and ``beta = 0.05``
    (toxicity and sentiment). Deviations: no entropy bonus by default (the reference code's
    default coefficient is 0.06), one update per step (the reference takes 500 updates between
    explorations).
    """

    k: int = Field(5, ge=2, description="reward quantiles = control tokens (Lu et al. 2022)")
    kl_coef: NonNegFloat = Field(default=0.05, description="beta of KL(pi || pi0)")
    entropy_coef: NonNegFloat = Field(default=0.0, description="weight of the entropy bonus")
    updates_per_step: PosInt = Field(default=1, description="updates between explorations")
    batch_size: PosInt | None = Field(
        default=None, description="pool examples per update; None: the RL batch size"
    )


def encode_responses(
    tokenizer: Any, responses: Sequence[str], *, max_new_tokens: int
) -> list[tuple[int, ...]]:
    """Token ids of response texts as :func:`~proxygap.sampling.generate.sample` would have
    produced them: at most ``max_new_tokens`` tokens, with eos appended when the text is
    shorter than the budget (a sample that stopped early ended with eos). Exact for texts that
    ``decode_responses`` made when the tokenizer round-trips them and the response held no
    special token but its closing eos (decoding drops them)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    out = []
    for x in ids:
        x = list(x)[:max_new_tokens]
        out.append(tuple(x + [eos] if len(x) < max_new_tokens else x))
    return out


def conditioned_logps(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Tensor,
    mask: Tensor,
    *,
    pad_id: int,
    vocab_size: int,
) -> Tensor:
    """``log_softmax(logits[..., :vocab_size])`` at the positions that predict each response
    token, ``(B, T, vocab_size)`` in float32 or wider (with gradient unless under ``no_grad``).

    Args:
        prompt_ids: the rows' prompts (any lengths >= 1; left-padded here).
        response_ids: ``(B, T)`` response tokens, right-padded.
        mask: ``(B, T)`` nonzero on response tokens.
    """
    device = next(model.parameters()).device
    ids, attn, pos, P = build_inputs(prompt_ids, response_ids, mask, pad_id)
    logits = model(
        input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device)
    ).logits  # (B, P + T, V)
    T = response_ids.shape[1]
    if vocab_size > logits.shape[-1]:
        raise ValueError(f"vocab_size {vocab_size} exceeds the model's {logits.shape[-1]} logits")
    logits = logits[:, P - 1 : P - 1 + T, :vocab_size]  # (B, T, V0)
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)


def _batch(
    examples: list[QuarkExample], control_ids: list[int], *, bos: int | None, pad: int
) -> tuple[list[list[int]], list[list[int]], Tensor, Tensor]:
    """Policy prompts ``[bos, control of the bucket] + x``, ref prompts ``[bos] + x``,
    right-padded responses ``(B, T)`` and their mask."""
    plain = [[int(t) for t in e.prompt] for e in examples]  # pooled prompts are token ids
    conditioned = [
        condition_prompts([p], [control_ids[e.bucket]], bos)[0]
        for p, e in zip(plain, examples, strict=True)
    ]
    T = max(len(e.response) for e in examples)
    response_ids = torch.full((len(examples), T), pad, dtype=torch.long)
    mask = torch.zeros((len(examples), T))
    for i, e in enumerate(examples):
        response_ids[i, : len(e.response)] = torch.tensor(e.response, dtype=torch.long)
        mask[i, : len(e.response)] = 1.0
    return conditioned, plain, response_ids, mask


def quark_update(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    examples: list[QuarkExample],
    *,
    control_ids: list[int],
    vocab_size: int,
    cfg: Any,
    quark: QuarkSettings,
    tokenizer: Any,
) -> dict[str, float]:
    """One optimiser step (:func:`~proxygap.optimize.loop.optimiser_step`, as the RL update) on
    the Quark loss. ``cfg`` is the run's :class:`~proxygap.optimize.rl.RLConfig`; the step is on
    the token mean of :func:`quark_loss` over ``examples``, in forward passes of at most
    ``cfg.minibatch_size`` rows and ``cfg.forward_tokens`` padded tokens, each contributing its
    tokens' sum over the batch's token count (the gradient of the whole batch in one pass).
    Raises NonFiniteError on a non-finite loss or gradient norm."""
    pad = tokenizer.pad_token_id
    conditioned, plain, response_ids, mask = _batch(
        examples, control_ids, bos=tokenizer.bos_token_id, pad=pad
    )
    device = next(policy.parameters()).device
    lengths = torch.tensor([len(p) for p in conditioned]) + mask.sum(dim=1).long()
    n_tokens = int(mask.sum())
    sums: dict[str, float] = defaultdict(float)

    def pass_loss(idx: Tensor) -> tuple[Tensor, float]:
        T = int(mask[idx].sum(dim=1).max())
        ids, m = response_ids[idx, :T], mask[idx, :T]
        rows = idx.tolist()
        with autocast(cfg.bf16, device):
            logps = conditioned_logps(
                policy, [conditioned[i] for i in rows], ids, m, pad_id=pad, vocab_size=vocab_size
            )
            with torch.no_grad():
                ref_logps = conditioned_logps(
                    ref, [plain[i] for i in rows], ids, m, pad_id=pad, vocab_size=vocab_size
                )
        losses, metrics = quark_loss(
            logps,
            ref_logps.to(logps.dtype),
            ids.to(device),
            m.to(device),
            beta=quark.kl_coef,
            entropy_coef=quark.entropy_coef,
        )
        share = int(m.sum()) / n_tokens
        loss = losses.sum() / n_tokens  # this pass's part of the batch's token mean
        sums["train/loss"] += loss.item()
        for k, v in metrics.items():
            sums[k] += v * share
        return loss, 1.0

    passes = pack(
        lengths,
        torch.arange(len(examples)),
        max_rows=cfg.minibatch_size or len(examples),
        max_tokens=cfg.forward_tokens,
    )
    params = list(policy.parameters())
    norm = optimiser_step(optimizer, params, passes, pass_loss, max_grad_norm=cfg.max_grad_norm)
    return dict(sums) | {"train/grad_norm": norm}
