"""The learning side of PPO, GRPO and RLOO: the critic and the clipped update.

Used by :mod:`proxygap.optimize.rl`. :func:`update` runs ``epochs`` passes over a
:class:`~proxygap.optimize.rollout.Rollout` in optimiser steps of ``micro * accum`` rows,
each accumulated over forward passes of at most ``micro`` rows
(:func:`~proxygap.optimize.loop.optimiser_step`). Every pass's loss is weighted
by its share of the optimiser step's response tokens (``token_mean``) or sequences
(``seq_mean``), so the accumulated gradient equals that of the whole step's batch in one pass
(TRL's invariance tests: batch 8x1 equals batch 1x8 with accumulation).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AutoModelForTokenClassification, PreTrainedModel

from proxygap.losses.ppo import kl_loss_term, ppo_policy_loss, ppo_value_loss
from proxygap.models.logprobs import build_inputs
from proxygap.optimize.loop import optimiser_step
from proxygap.optimize.rollout import Rollout, autocast, logprobs_of, pack, packed


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


# ---------------------------------------------------------------- the update
@dataclass(frozen=True)
class UpdateSettings:
    """Hyperparameters of :func:`update` (a view of the recipe's config).

    An optimiser step takes ``micro * accum`` rows; its forward passes take at most ``micro``
    rows and ``forward_tokens`` padded tokens each (see :func:`~proxygap.optimize.rollout.
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
    logp = logprobs_of(policy, batch, pad_id=s.pad_id, bf16=s.bf16)
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
        with autocast(s.bf16, device):
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
    ``train/optimizer_steps``. Raises NonFiniteError on a NaN or inf loss or gradient norm."""
    steps = list(optimiser_steps(len(rollout), rows=s.micro * s.accum, epochs=s.epochs, gen=gen))
    old_all = None
    if len(steps) > 1:  # off-policy after the first step: freeze log pi_old now
        old_all = packed_logprobs(policy, rollout, s)
    params = [p for p in policy.parameters() if p.requires_grad]
    if critic is not None:
        params += [p for p in critic.parameters() if p.requires_grad]
    lengths = rollout.lengths
    sums: dict[str, float] = defaultdict(float)
    norms = []
    for rows in steps:
        whole = rollout.rows(rows)

        def pass_loss(idx: Tensor, whole: Rollout = whole) -> tuple[Tensor, float]:
            batch = rollout.rows(idx)
            old = None if old_all is None else old_all[idx, : batch.mask.shape[1]]
            loss, metrics = micro_loss(policy, critic, batch, old, kl_beta=kl_beta, s=s)
            share = _share(batch, whole, s.aggregation)
            for k, v in metrics.items():
                sums[k] += v * share / len(steps)
            sums["train/loss"] += loss.item() * share / len(steps)
            return loss, share

        passes = pack(lengths, rows, max_rows=s.micro, max_tokens=s.forward_tokens)
        norms.append(
            optimiser_step(optimizer, params, passes, pass_loss, max_grad_norm=s.max_grad_norm)
        )
    return dict(sums) | {
        "train/grad_norm": sum(norms) / len(norms),
        "train/optimizer_steps": float(len(steps)),
    }


def packed_logprobs(model: PreTrainedModel, rollout: Rollout, s: UpdateSettings) -> Tensor:
    """``log pi(y_t | ...)`` of every row of ``rollout`` under ``model`` (no gradient), in
    packed forward passes, ``(B, T)`` on the CPU."""
    return packed(
        lambda b: logprobs_of(model, b, pad_id=s.pad_id, bf16=s.bf16),
        rollout,
        max_rows=s.micro,
        max_tokens=s.forward_tokens,
    )


def packed_values(critic: PreTrainedModel, rollout: Rollout, s: UpdateSettings) -> Tensor:
    """The critic's values of every row of ``rollout`` (no gradient), ``(B, T)`` on the CPU."""
    return packed(
        lambda b: critic_values(critic, b, pad_id=s.pad_id),
        rollout,
        max_rows=s.micro,
        max_tokens=s.forward_tokens,
    )
