"""Quark as a training loop (Lu et al. 2022, "Quark: Controllable Text Generation with Reinforced
Unlearning"; METHODS.md §4), on the same footing as the RL arms of :mod:`proxygap.optimize.rl`.

One linear loop (:func:`train_quark`). Before it, ``K`` control tokens are appended to the
policy's vocabulary (embedding rows ``V0 .. V0+K-1``, the tokenizer is left alone) and the data
pool is filled with samples of the initial policy. Every step:

1. **sample** ``group_size`` responses for each of ``prompts_per_step`` training prompts (the
   same :class:`~proxygap.optimize.rl_rollout.PromptStream` and per-step seeds as
   :func:`~proxygap.optimize.rl.train_rl`) from the policy conditioned on the best control
   token, ``[bos, V0+K-1] + x``; control tokens are never sampled (``vocab_size=V0``);
2. **score** them with ``reward_fn``, add them to the :class:`~proxygap.mitigations.quark.
   QuarkPool` and re-bucket the whole pool into ``K`` reward quantiles;
3. **update**: ``updates_per_step`` AdamW steps, each on ``batch_size`` examples drawn uniformly
   from the pool, minimising the token mean of :func:`~proxygap.mitigations.quark.quark_loss`:
   ``-log pi(y_t | [bos, V0+b] + x, y_<t) + beta * KL_t(pi || pi0) - entropy_coef * H_t`` with
   ``b`` the example's bucket, ``pi`` normalised over the original ``V0`` tokens and ``pi0``
   (``ref``) on the plain ``[bos] + x``; the KL is exact over the vocabulary; gradient clipping;
4. every ``eval_every`` steps (step 0 and the last step included) the :class:`~proxygap.
   optimize.evaluate.PolicyEvaluator` measures the policy conditioned on the best token, with
   its KL to ``pi0`` on the plain prompts.

The trained policy is used as Quark prescribes: condition on ``[bos, V0+K-1] + prompt`` and
sample from its first ``V0`` logits (``RLResult.config`` holds ``quark_control_ids`` and
``quark_vocab_size``).

What is kept from the reference implementation (github.com/GXimingLu/Quark): quantiles over the
whole pool re-computed after every addition; a pool that grows without bound; the pool seeded
with initial-policy samples; the per-token loss (LM loss, exact ``KL(pi || pi0)`` against the
initial policy on the prompt without control token, optional entropy bonus), averaged over all
response tokens of the batch; defaults ``K = 5`` and ``beta = 0.05``. What differs:

- exploration every step (``prompts_per_step x group_size`` fresh samples, the RL arms' budget)
  rather than a pass over the whole training set every 500 updates, so Quark and the RL arms
  see the same number of policy samples per step (``samples_seen`` counts them; the initial
  pool is extra, ``pi0`` samples that the caller usually has already);
- control tokens are embedding rows appended to the policy rather than tokenizer entries, and
  sit right after bos; as in the reference they are drawn from a normal with the embeddings'
  per-dimension mean and standard deviation (seeded by the run's seed);
- no minimum response length (the reference bans eos for the first 3 tokens);
- the LM loss and entropy are over the original vocabulary (the reference normalises them over
  the control tokens too and only its KL over the original vocabulary), which makes sampling
  with ``vocab_size=V0`` the distribution that is trained;
- responses keep their eos token (the reference trains on decoded texts, without eos);
- the entropy coefficient defaults to 0 (the reference code's default is 0.06) and the KL
  coefficient is fixed (the reference also offers an adaptive controller).

Metrics of one history row
--------------------------
Exactly the keys of :mod:`proxygap.optimize.rl` from the evaluator (``reward/*``, ``kl/*``,
``d``, ...) with ``step``, ``samples_seen``, ``time/wall``, ``time/eval``; the step-0 row
measures the untrained policy conditioned on the best token (its KL to ``pi0`` is small, not
0). Training means over the steps since the previous row (absent at step 0):

- ``quark/nll``, ``quark/kl``, ``quark/entropy``: per-token means over the update batches (see
  :func:`~proxygap.mitigations.quark.quark_loss`); ``train/loss``: their token-mean loss;
- ``quark/pool_size``, ``quark/reward_bucket{i}``: pool size and mean reward of each bucket
  after the step's samples were added;
- ``train/reward_raw``: mean ``reward_fn`` of the step's samples; ``train/length`` (response
  tokens), ``train/finished`` (fraction ending with eos);
- ``train/grad_norm`` (before clipping), ``train/optimizer_steps``, ``train/lr``;
- ``time/step``, ``time/sample``, ``time/score``, ``time/update``: seconds per step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import Field
from torch import Tensor
from transformers import PreTrainedModel

from proxygap.mitigations.quark import QuarkExample, QuarkPool, quark_loss
from proxygap.models.logprobs import build_inputs
from proxygap.optimize.evaluate import PolicyEvaluator, ScoreFn
from proxygap.optimize.rl import RLConfig, _seed
from proxygap.optimize.rl_record import NonFiniteError, RLResult, checked_rewards, record_evaluation
from proxygap.optimize.rl_rollout import PromptStream, pack
from proxygap.optimize.rl_update import NonFiniteLoss
from proxygap.optimize.schedule import lr_factor
from proxygap.sampling.generate import (
    Samples,
    condition_prompts,
    decode_responses,
    encode_prompts,
    sample,
)
from proxygap.schema import PosInt, Strict

__all__ = ["QuarkSettings", "conditioned_logps", "encode_responses", "train_quark"]

NonNegFloat = Annotated[float, Field(ge=0)]


class QuarkSettings(Strict):
    """Quark's own hyperparameters; the rest (steps, sampling budget, optimiser, evaluation)
    come from the :class:`~proxygap.optimize.rl.RLConfig` shared with the RL arms.

    Defaults follow Lu et al. 2022 and their code: ``K = 5`` quantiles and ``beta = 0.05``
    (toxicity and sentiment). Deviations: no entropy bonus by default (the reference code's
    default coefficient is 0.06), one update per step (the reference takes 500 updates between
    explorations).
    """

    k: int = Field(5, ge=2)  # reward quantiles = control tokens
    kl_coef: NonNegFloat = 0.05  # beta of KL(pi || pi0)
    entropy_coef: NonNegFloat = 0.0
    updates_per_step: PosInt = 1
    batch_size: PosInt | None = None  # pool examples per update; None: the RL batch size


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
    plain = [list(e.prompt) for e in examples]
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


def _autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _update(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    examples: list[QuarkExample],
    *,
    control_ids: list[int],
    vocab_size: int,
    cfg: RLConfig,
    quark: QuarkSettings,
    tokenizer: Any,
) -> dict[str, float]:
    """One optimiser step on the token mean of :func:`quark_loss` over ``examples``, in forward
    passes of at most ``cfg.minibatch_size`` rows and ``cfg.forward_tokens`` padded tokens,
    each weighted by its share of the batch's response tokens (the gradient of the whole batch
    in one pass). Raises NonFiniteLoss on a non-finite loss or gradient norm."""
    pad = tokenizer.pad_token_id
    conditioned, plain, response_ids, mask = _batch(
        examples, control_ids, bos=tokenizer.bos_token_id, pad=pad
    )
    device = next(policy.parameters()).device
    lengths = torch.tensor([len(p) for p in conditioned]) + mask.sum(dim=1).long()
    n_tokens = int(mask.sum())
    sums: dict[str, float] = defaultdict(float)
    optimizer.zero_grad(set_to_none=True)
    for idx in pack(
        lengths,
        torch.arange(len(examples)),
        max_rows=cfg.minibatch_size or len(examples),
        max_tokens=cfg.forward_tokens,
    ):
        T = int(mask[idx].sum(dim=1).max())
        ids, m = response_ids[idx, :T], mask[idx, :T]
        rows = idx.tolist()
        with _autocast(cfg.bf16, device):
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
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss.item()}")
        loss.backward()
        sums["train/loss"] += loss.item()
        for k, v in metrics.items():
            sums[k] += v * share
    limit = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
    norm = torch.nn.utils.clip_grad_norm_(list(policy.parameters()), limit)
    if not torch.isfinite(norm):
        raise NonFiniteLoss(f"gradient norm is {norm.item()}")
    optimizer.step()
    return dict(sums) | {"train/grad_norm": norm.item()}


# ---------------------------------------------------------------- the recipe
def train_quark(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: Any,
    *,
    cfg: RLConfig,
    quark: QuarkSettings,
    train_prompts: Sequence[str],
    join: Callable[[Sequence[str], Sequence[str]], list[str]],
    reward_fn: ScoreFn,
    evaluator: PolicyEvaluator,
    initial: tuple[Sequence[str], Sequence[str], np.ndarray] | None = None,
    log: Callable[[str], Any] = print,
) -> RLResult:
    """Train ``policy`` in place with Quark against ``reward_fn`` for ``cfg.steps`` steps.

    From ``cfg``: ``steps``, ``prompts_per_step``, ``group_size``, ``lr``, ``adam_betas``,
    ``adam_eps``, ``weight_decay``, ``lr_schedule``, ``warmup_steps`` (per step),
    ``max_grad_norm``, ``temperature``, ``max_new_tokens`` (None: the evaluator's),
    ``eval_every``, ``sample_batch_size``, ``minibatch_size`` and ``forward_tokens`` (forward
    passes only, not the update), ``bf16``, ``seed``; the RL-only fields are ignored.

    Args:
        policy: the causal LM being trained (a copy of ``ref``); ``quark.k`` embedding rows are
            appended to it (``resize_token_embeddings``), control token ``i`` has id
            ``V0 + i`` with ``V0`` its rows before, ``V0 + k - 1`` the best.
        ref: the frozen initial policy ``pi0`` (the KL reference), ``V0`` output rows.
        tokenizer: with ``bos``/``eos``/``pad`` ids; prompts are ``[bos] + tokens``.
        train_prompts: prompt texts, walked in seeded shuffled passes.
        join: ``(prompts, responses) -> texts`` as ``reward_fn`` reads them.
        reward_fn: ``texts -> (B,)`` proxy rewards.
        evaluator: measures the policy (conditioned on the best token) every ``cfg.eval_every``
            steps.
        initial: ``(prompts, response texts, rewards)`` of initial-policy samples to seed the
            pool (responses re-encoded with :func:`encode_responses`); None: one step's worth
            of samples from ``ref`` (``prompts_per_step x group_size``).
        log: called with one line per evaluation point.

    Returns:
        An :class:`~proxygap.optimize.rl_record.RLResult` whose ``config`` holds ``cfg``,
        ``quark`` (the settings), ``quark_control_ids`` and ``quark_vocab_size`` (``V0``).

    Raises:
        NonFiniteError: a reward, loss or gradient norm was NaN or inf; names the step and holds
            the history so far.
    """
    if policy is ref:
        raise ValueError("policy and ref must be different models (train a copy of ref)")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    max_new = cfg.max_new_tokens or evaluator.max_new_tokens
    B = cfg.batch_size
    n_initial = B if initial is None else len(initial[0])
    batch_size = quark.batch_size or B
    if batch_size > n_initial + B:
        raise ValueError(
            f"quark.batch_size {batch_size} exceeds the pool at the first update: "
            f"{n_initial} initial + {B} samples"
        )
    V0 = policy.get_output_embeddings().weight.shape[0]
    V_ref = ref.get_output_embeddings().weight.shape[0]
    if V_ref != V0:
        raise ValueError(
            f"policy has {V0} output rows and ref {V_ref}: pass an untrained copy of ref (was "
            "the policy already given control tokens?)"
        )
    policy.resize_token_embeddings(V0 + quark.k, mean_resizing=False)
    with torch.no_grad():  # as the reference: a normal with the embeddings' mean and std
        emb = policy.get_input_embeddings().weight  # (V0 + k, C)
        old = emb[:V0].float()
        gen = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn((quark.k, emb.shape[1]), generator=gen).to(emb.device)
        emb[V0:] = (old.mean(dim=0) + old.std(dim=0) * noise).to(emb.dtype)
    control = [V0 + i for i in range(quark.k)]
    best = control[-1]
    policy.eval()  # no dropout: the sampler's and the learner's distributions must agree
    ref.eval()
    optimizer = torch.optim.AdamW(
        policy.parameters(),
        lr=cfg.lr,
        betas=cfg.adam_betas,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, kind=cfg.lr_schedule, warmup=cfg.warmup_steps, total=cfg.steps),
    )
    stream = PromptStream(train_prompts, batch=cfg.prompts_per_step, seed=cfg.seed)
    result = RLResult(
        config=cfg.model_dump(mode="json")
        | {
            "quark": quark.model_dump(mode="json"),
            "quark_control_ids": control,
            "quark_vocab_size": V0,
        }
    )

    def draw(model: PreTrainedModel, prompt_ids: list[list[int]], seed: int) -> Samples:
        return sample(
            model,
            prompt_ids,
            n_per_prompt=cfg.group_size,
            max_new_tokens=max_new,
            temperature=cfg.temperature,
            eos_id=eos,
            pad_id=pad,
            batch_size=cfg.sample_batch_size,
            seed=seed,
            vocab_size=V0,  # control tokens are never sampled
        )

    def responses_of(s: Samples) -> list[tuple[int, ...]]:
        return [tuple(x[: int(n)].tolist()) for x, n in zip(s.response_ids, s.lengths, strict=True)]

    # ---- the initial pool: samples of pi0
    pool = QuarkPool(quark.k, seed=_seed(cfg.seed, 0, 3))
    if initial is None:
        prompts = PromptStream(train_prompts, batch=cfg.prompts_per_step, seed=_seed(cfg.seed))
        prompts0 = prompts.next()
        plain = encode_prompts(tokenizer, prompts0)
        s = draw(ref, plain, _seed(cfg.seed, 0, 0))
        index = s.prompt_index.tolist()
        raw = reward_fn(join([prompts0[i] for i in index], decode_responses(s, tokenizer)))
        r0 = checked_rewards(raw, raw, n=len(index), step=0, result=result)
        pool.add([tuple(plain[i]) for i in index], responses_of(s), r0)
    else:
        prompts0, responses0, rewards0 = initial
        pool.add(
            [tuple(p) for p in encode_prompts(tokenizer, prompts0)],
            encode_responses(tokenizer, responses0, max_new_tokens=max_new),
            rewards0,
        )

    window: list[dict[str, float]] = []
    t_start = time.perf_counter()
    for step in range(cfg.steps + 1):
        # ---- evaluate (step 0, every eval_every, and the last step)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record_evaluation(
                result, evaluator, policy, step=step, batch_size=B, window=window,
                t_start=t_start, log=log, note=f"pool {len(pool)}", prefix=[best], vocab_size=V0,
            )  # fmt: skip
            window = []
        if step == cfg.steps:
            break
        t_step = time.perf_counter()

        # ---- 1. sample, conditioned on the best token
        prompts = stream.next()
        plain = encode_prompts(tokenizer, prompts)
        s = draw(policy, condition_prompts(plain, [best], bos), _seed(cfg.seed, step, 1))
        index = s.prompt_index.tolist()
        t_sample = time.perf_counter()

        # ---- 2. score, add to the pool, re-bucket
        raw = reward_fn(join([prompts[i] for i in index], decode_responses(s, tokenizer)))
        reward = checked_rewards(raw, raw, n=len(index), step=step, result=result)
        pool.add([tuple(plain[i]) for i in index], responses_of(s), reward)
        t_score = time.perf_counter()

        # ---- 3. update on uniform batches from the pool
        sums: dict[str, float] = defaultdict(float)
        for _ in range(quark.updates_per_step):
            try:
                metrics = _update(
                    policy,
                    ref,
                    optimizer,
                    pool.sample(batch_size),
                    control_ids=control,
                    vocab_size=V0,
                    cfg=cfg,
                    quark=quark,
                    tokenizer=tokenizer,
                )
            except NonFiniteLoss as err:
                raise NonFiniteError(str(err), step=step, result=result) from err
            for k, v in metrics.items():
                sums[k] += v / quark.updates_per_step
        lr_now = scheduler.get_last_lr()[0]
        scheduler.step()
        t_update = time.perf_counter()

        # ---- 4. log this step
        row = {
            "train/reward_raw": float(np.mean(reward)),
            "train/length": float(s.mask.sum(dim=1).mean()),
            "train/finished": float(s.finished.float().mean()),
            **dict(sums),
            "train/optimizer_steps": float(quark.updates_per_step),
            "train/lr": lr_now,
            **pool.metrics(),
            "time/step": time.perf_counter() - t_step,
            "time/sample": t_sample - t_step,
            "time/score": t_score - t_sample,
            "time/update": t_update - t_score,
        }
        result.steps.append({"step": float(step + 1), **row})
        window.append(row)
    return result
