"""Quark as a training loop (Lu et al. 2022, "Quark: Controllable Text Generation with Reinforced
Unlearning"; docs/methods.md §4), on the same footing as the RL arms of :mod:`proxygap.optimize.rl`.

One step (:func:`train_quark`'s ``quark_step``) in the shared loop
(:func:`proxygap.optimize.loop.run_loop`). Before it, ``K`` control tokens are appended to the
policy's vocabulary (embedding rows ``V0 .. V0+K-1``, the tokenizer is left alone) and the data
pool is filled with samples of the initial policy. Every step:

1. **sample** ``group_size`` responses for each of ``prompts_per_step`` training prompts (the
   same :class:`~proxygap.optimize.rollout.PromptStream` and per-step seeds as
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
sample from its first ``V0`` logits (``LoopResult.config`` holds ``quark_control_ids`` and
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
- ``time/sample``, ``time/score``, ``time/update``, ``time/step``: seconds per step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.errors import NonFiniteError
from proxygap.mitigations.quark import QuarkPool
from proxygap.models.schedule import lr_factor
from proxygap.optimize.checkpoint import checkpoint_writer, resume_training
from proxygap.optimize.evaluate import PolicyEvaluator, ScoreFn
from proxygap.optimize.loop import (
    LoopResult,
    Schedule,
    Stateful,
    Watchers,
    checked_rewards,
    describe_row,
    run_loop,
)
from proxygap.optimize.quark_update import QuarkSettings, encode_responses, quark_update
from proxygap.optimize.rl import RLConfig
from proxygap.optimize.rollout import PromptStream
from proxygap.sampling.generate import (
    Samples,
    condition_prompts,
    decode_responses,
    encode_prompts,
    sample,
)
from proxygap.seeds import mix, step_seed

__all__ = ["QuarkSettings", "train_quark"]


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
    watch: Watchers | None = None,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    keep_checkpoints: int | None = None,
) -> LoopResult:
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
        watch: evaluation and step hooks (a monitor, a tracker) and a progress bar.
        checkpoint_dir, resume, keep_checkpoints: as for :func:`~proxygap.optimize.rl.train_rl`
            (a checkpoint every ``cfg.checkpoint_every`` steps, or before each evaluation);
            a checkpoint also keeps the data pool (samples, rewards, its sampler's state), and
            a resumed run takes it back instead of filling the pool with initial samples.

    Returns:
        A :class:`~proxygap.optimize.loop.LoopResult` whose ``config`` holds ``cfg``,
        ``quark`` (the settings), ``quark_control_ids`` and ``quark_vocab_size`` (``V0``).

    Raises:
        CheckpointError: ``resume`` found a checkpoint of other settings.
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
        assert isinstance(emb, torch.Tensor)
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
    result = LoopResult(
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

    pool = QuarkPool(quark.k, seed=step_seed(cfg.seed, 0, "pool"))

    def fill_pool() -> None:  # the initial pool: samples of pi0
        if initial is None:  # one step's worth of pi0 samples, from prompts of their own stream
            prompts = PromptStream(train_prompts, batch=cfg.prompts_per_step, seed=mix(cfg.seed))
            prompts0 = prompts.next()
            plain = encode_prompts(tokenizer, prompts0)
            s = draw(ref, plain, step_seed(cfg.seed, 0, "initial_samples"))
            index = s.prompt_index.tolist()
            raw = reward_fn(join([prompts0[i] for i in index], decode_responses(s, tokenizer)))
            try:
                r0 = checked_rewards(raw, raw, n=len(index))
            except NonFiniteError as err:
                raise NonFiniteError(err.message, step=0, result=result) from err
            pool.add([tuple(plain[i]) for i in index], responses_of(s), r0)
            return
        given_prompts, responses0, rewards0 = initial
        pool.add(
            [tuple(p) for p in encode_prompts(tokenizer, list(given_prompts))],
            encode_responses(tokenizer, responses0, max_new_tokens=max_new),
            rewards0,
        )

    own: dict[str, Stateful] = {"prompts": stream, "pool": pool}  # checkpointed
    saved = resume_training(
        checkpoint_dir if resume else None, policy=policy, critic=None, optimizer=optimizer,
        scheduler=scheduler, config=result.config, log=log, own=own,
    )  # fmt: skip
    if saved is None:  # a resumed run has its pool back
        fill_pool()

    def quark_step(step: int) -> dict[str, float]:
        t_step = time.perf_counter()
        # ---- 1. sample, conditioned on the best token
        prompts = stream.next()
        plain = encode_prompts(tokenizer, prompts)
        s = draw(policy, condition_prompts(plain, [best], bos), step_seed(cfg.seed, step, "sample"))
        index = s.prompt_index.tolist()
        t_sample = time.perf_counter()

        # ---- 2. score, add to the pool, re-bucket
        raw = reward_fn(join([prompts[i] for i in index], decode_responses(s, tokenizer)))
        reward = checked_rewards(raw, raw, n=len(index))
        pool.add([tuple(plain[i]) for i in index], responses_of(s), reward)
        t_score = time.perf_counter()

        # ---- 3. update on uniform batches from the pool
        sums: dict[str, float] = defaultdict(float)
        for _ in range(quark.updates_per_step):
            metrics = quark_update(
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
            for k, v in metrics.items():
                sums[k] += v / quark.updates_per_step
        lr_now = float(scheduler.get_last_lr()[0])
        scheduler.step()
        t_update = time.perf_counter()

        # ---- 4. the step's metrics
        return {
            "train/reward_raw": float(np.mean(reward)),
            "train/length": float(s.mask.sum(dim=1).mean()),
            "train/finished": float(s.finished.float().mean()),
            **dict(sums),
            "train/optimizer_steps": float(quark.updates_per_step),
            "train/lr": lr_now,
            **pool.metrics(),
            "time/sample": t_sample - t_step,
            "time/score": t_score - t_sample,
            "time/update": t_update - t_score,
        }

    return run_loop(
        schedule=Schedule.every(cfg.eval_every, total=cfg.steps, samples_per_step=B),
        train_step=quark_step,
        evaluate=lambda step: evaluator(policy, prefix=[best], vocab_size=V0),
        result=result,
        log=log,
        describe=lambda row: describe_row(row) + f"  pool {len(pool)}",
        checkpoint=checkpoint_writer(
            checkpoint_dir,
            policy=policy,
            critic=None,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
            config=result.config,
            keep=keep_checkpoints,
            own=own,
        ),
        checkpoint_every=cfg.checkpoint_every,
        watch=watch,
        resume=saved["loop"] if saved else None,
    )
