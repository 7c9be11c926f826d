"""The learning side of online RL: critic, optimiser, schedule, the clipped update, checkpoints.

Used by :mod:`proxygap.optimize.rl`. :func:`update` runs ``epochs`` passes over a
:class:`~proxygap.optimize.rl_rollout.Rollout` in optimiser steps of ``micro * accum`` rows,
each accumulated over forward passes of at most ``micro`` rows. Every pass's loss is weighted
by its share of the optimiser step's response tokens (``token_mean``) or sequences
(``seq_mean``), so the accumulated gradient equals that of the whole step's batch in one pass
(TRL's invariance tests: batch 8x1 equals batch 1x8 with accumulation).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModelForTokenClassification, PreTrainedModel

from proxygap.losses.ppo import kl_loss_term, ppo_policy_loss, ppo_value_loss
from proxygap.models.logprobs import build_inputs, response_logprobs
from proxygap.optimize.rl_rollout import Rollout, pack


# ---------------------------------------------------------------- critic
def new_critic(policy: PreTrainedModel) -> PreTrainedModel:
    """A value model for PPO: a copy of the policy's transformer trunk with a scalar head per
    token (``AutoModelForTokenClassification``, ``num_labels=1``), the head initialised to 0 so
    that every value starts at 0. Separate from the policy (no shared trunk), in eval mode
    (dropout off), on the policy's device and dtype."""
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    critic = AutoModelForTokenClassification.from_config(config)
    critic.base_model.load_state_dict(policy.base_model.state_dict())
    prefix = critic.base_model_prefix + "."
    with torch.no_grad():
        for name, p in critic.named_parameters():
            if not name.startswith(prefix):
                p.zero_()
    p0 = next(policy.parameters())
    return critic.to(device=p0.device, dtype=p0.dtype).eval()


def critic_values(critic: PreTrainedModel, batch: Rollout, *, pad_id: int) -> Tensor:
    """``V(s_t)`` for every response position, ``(B, T)``, 0 outside the mask: the critic's
    output at the position that predicts token ``t`` (the state before it is emitted)."""
    device = next(critic.parameters()).device
    ids, attn, pos, P = build_inputs(batch.prompt_ids, batch.response_ids, batch.mask, pad_id)
    out = critic(
        input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device)
    ).logits  # (B, P + T, 1)
    T = batch.response_ids.shape[1]
    values = out[:, P - 1 : P - 1 + T, 0]
    return values.to(torch.promote_types(values.dtype, torch.float32)) * batch.mask.to(device)


# ---------------------------------------------------------------- optimiser and schedule
# ---------------------------------------------------------------- the update
@dataclass(frozen=True)
class UpdateSettings:
    """Hyperparameters of :func:`update` (a view of the recipe's config).

    An optimiser step takes ``micro * accum`` rows; its forward passes take at most ``micro``
    rows and ``forward_tokens`` padded tokens each (see :func:`~proxygap.optimize.rl_rollout.
    pack`), which changes speed and memory, not the update.
    """

    micro: int
    accum: int
    epochs: int
    clip: float
    value_clip: float
    vf_coef: float
    max_grad_norm: float | None
    aggregation: str
    kl_estimator: str
    pad_id: int
    bf16: bool
    forward_tokens: int


def optimiser_steps(B: int, *, rows: int, epochs: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Row indices of every optimiser step: ``epochs`` shuffled passes over ``B`` rows, cut into
    steps of ``rows`` rows."""
    if B % rows:
        raise ValueError(f"batch {B} is not a multiple of the rows per optimiser step {rows}")
    for _ in range(epochs):
        order = torch.randperm(B, generator=gen)
        yield from order.split(rows)


def _share(batch: Rollout, total: Rollout, aggregation: str) -> float:
    """Weight of a forward pass in its optimiser step (see the module docstring): its response
    tokens (``token_mean``) or non-empty sequences (``seq_mean``) over the step's, as an exact
    ratio of integer counts."""
    if aggregation == "token_mean":
        part, whole = int(batch.mask.bool().sum()), int(total.mask.bool().sum())
    else:
        part = int(batch.mask.bool().any(dim=1).sum())
        whole = int(total.mask.bool().any(dim=1).sum())
    return part / max(whole, 1)


def _autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def logprobs_of(model: PreTrainedModel, batch: Rollout, *, s: UpdateSettings) -> Tensor:
    """log pi(y_t | x, y_<t) of the batch's response tokens, ``(B, T)``, 0 off the mask (float32
    or the model's wider dtype); with gradient unless called under ``no_grad``; bf16 autocast
    if ``s.bf16``."""
    device = next(model.parameters()).device
    with _autocast(s.bf16, device):
        return response_logprobs(
            model, batch.prompt_ids, batch.response_ids, batch.mask, pad_id=s.pad_id
        )


@torch.no_grad()
def packed(fn: Callable[[Rollout], Tensor], rollout: Rollout, *, s: UpdateSettings) -> Tensor:
    """``fn`` applied to length-sorted forward passes over the rollout (no gradient), put back
    in row order: ``(B, T)`` on the CPU, 0 beyond each pass's longest response."""
    parts = [
        (idx, fn(rollout.rows(idx)).cpu())
        for idx in pack(
            rollout.lengths,
            torch.arange(len(rollout)),
            max_rows=s.micro,
            max_tokens=s.forward_tokens,
        )
    ]
    out = torch.zeros(rollout.mask.shape, dtype=parts[0][1].dtype)
    for idx, part in parts:
        out[idx, : part.shape[1]] = part
    return out


def micro_loss(
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    batch: Rollout,
    old_logprobs: Tensor | None,
    *,
    kl_beta: float,
    s: UpdateSettings,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of one forward pass: clipped surrogate (Schulman et al. 2017, eq. 7)
    ``+ kl_beta * mean k(lr)`` (GRPO's KL term, Shao et al. 2024, eq. 4; ``kl_beta = 0`` when
    the penalty is in the reward) ``+ vf_coef *`` clipped value loss (PPO only).

    ``old_logprobs`` None means the batch is on-policy (one optimiser step per rollout): the
    ratio is then ``exp(logp - logp.detach())``, 1 in value with the policy gradient (as TRL
    does when it takes one step per generation).
    """
    assert batch.advantages is not None and batch.ref_logprobs is not None
    device = next(policy.parameters()).device
    mask = batch.mask.to(device)
    logp = logprobs_of(policy, batch, s=s)
    old = logp.detach() if old_logprobs is None else old_logprobs.to(device)
    loss, metrics = ppo_policy_loss(
        logp, old, batch.advantages.to(device), mask, clip=s.clip, aggregation=s.aggregation
    )
    kl_term, kl_metrics = kl_loss_term(
        logp,
        batch.ref_logprobs.to(device),
        mask,
        estimator=s.kl_estimator,
        aggregation=s.aggregation,
    )
    loss = loss + kl_beta * kl_term
    metrics |= kl_metrics
    if critic is not None:
        assert batch.values is not None and batch.returns is not None
        with _autocast(s.bf16, device):
            values = critic_values(critic, batch, pad_id=s.pad_id)
        v_loss, v_metrics = ppo_value_loss(
            values,
            batch.values.to(device),
            batch.returns.to(device),
            mask,
            clip=s.value_clip,
            aggregation=s.aggregation,
        )
        loss = loss + s.vf_coef * v_loss
        metrics |= v_metrics | {"value/loss": v_loss.item()}
    return loss, metrics


class NonFiniteLoss(FloatingPointError):
    """A loss or gradient norm was NaN or inf."""


def update(
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    *,
    kl_beta: float,
    s: UpdateSettings,
    gen: torch.Generator,
) -> dict[str, float]:
    """One PPO-style update on ``rollout``; returns metrics averaged over forward passes
    (weighted by their share) and optimiser steps, plus ``train/grad_norm`` (mean over
    optimiser steps, before clipping, policy and critic together) and
    ``train/optimizer_steps``."""
    steps = list(optimiser_steps(len(rollout), rows=s.micro * s.accum, epochs=s.epochs, gen=gen))
    old_all = None
    if len(steps) > 1:  # off-policy after the first step: freeze log pi_old now
        old_all = packed(lambda b: logprobs_of(policy, b, s=s), rollout, s=s)
    params = [p for p in policy.parameters() if p.requires_grad]
    if critic is not None:
        params += [p for p in critic.parameters() if p.requires_grad]
    lengths = rollout.lengths
    sums: dict[str, float] = defaultdict(float)
    norms = []
    for rows in steps:
        whole = rollout.rows(rows)
        optimizer.zero_grad(set_to_none=True)
        for idx in pack(lengths, rows, max_rows=s.micro, max_tokens=s.forward_tokens):
            batch = rollout.rows(idx)
            old = None if old_all is None else old_all[idx, : batch.mask.shape[1]]
            loss, metrics = micro_loss(policy, critic, batch, old, kl_beta=kl_beta, s=s)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss is {loss.item()}")
            share = _share(batch, whole, s.aggregation)
            (loss * share).backward()
            for k, v in metrics.items():
                sums[k] += v * share / len(steps)
            sums["train/loss"] += loss.item() * share / len(steps)
        limit = s.max_grad_norm if s.max_grad_norm is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, limit)
        if not torch.isfinite(norm):
            raise NonFiniteLoss(f"gradient norm is {norm.item()}")
        norms.append(norm.item())
        optimizer.step()
    return dict(sums) | {
        "train/grad_norm": sum(norms) / len(norms),
        "train/optimizer_steps": float(len(steps)),
    }


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(
    folder: Path | str,
    *,
    step: int,
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    tokenizer: Any,
    state: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write ``folder/step-{step:06d}`` atomically: into a temporary folder beside it, renamed
    when complete. Holds ``policy/`` (and ``critic/``) as safetensors model folders, the
    tokenizer, ``trainer_state.pt`` (``state``: optimiser, scheduler, KL controller, prompt
    position, history so far, ...; loadable with ``torch.load(..., weights_only=True)``) and
    ``rl_config.json``. Sampling and shuffling seeds derive from ``(seed, step)``, so a run
    resumed from this state can continue exactly.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        if critic is not None:
            critic.save_pretrained(tmp / "critic", safe_serialization=True)
        torch.save({"step": step, **state}, tmp / "trainer_state.pt")
        (tmp / "rl_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
