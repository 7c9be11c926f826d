"""Online RL against a proxy reward, tracked against gold: PPO, GRPO and RLOO (docs/methods.md
§2-3).

One step (:func:`train_rl`'s ``rl_step``) reads top to bottom, CleanRL style; the shared loop
(:func:`proxygap.optimize.loop.run_loop`) evaluates, records and checkpoints around it. Every
step:

1. **sample** ``group_size`` responses for each of ``prompts_per_step`` training prompts from the
   current policy (:func:`proxygap.sampling.generate.sample`, seeded per step);
2. **score** them with ``reward_fn`` (the proxy, centred on the initial policy), passed through
   the ``transform`` hook (identity unless a mitigation plugs in);
3. **reference log-probs** (no gradient) and the per-token log ratio to ``pi_ref``;
4. **advantages**: the KL penalty ``-beta * k(log_ratio_t)`` joins the per-token reward when
   ``kl_mode = "reward"`` (Ziegler et al. 2019), then the algorithm's estimator: GAE with a
   separate critic (PPO, Schulman et al. 2017), group-normalised (GRPO, Shao et al. 2024) or
   leave-one-out (RLOO, Ahmadian et al. 2024); or f-DPG (Go et al. 2023, methods §7), whose
   target ``pi_ref exp(score/beta)`` holds the KL, so nothing joins the per-token reward;
5. **update**: clipped surrogate over shuffled minibatches with gradient accumulation,
   ``+ beta * k3`` in the loss when ``kl_mode = "loss"`` (GRPO), clipped value loss (PPO),
   gradient clipping, learning-rate schedule;
6. **KL controller** update with the rollout's measured KL (fixed or adaptive, Ziegler et al.);
7. the ``post_step`` hook (e.g. Elastic Reset), the step's metrics, and a checkpoint every
   ``checkpoint_every`` steps (0: before each evaluation), which a rerun with ``resume`` continues
   from, ending with the numbers of an uninterrupted run;
8. every ``eval_every`` steps (step 0 and the last step included) a :class:`PolicyEvaluator`
   samples fresh responses on held-out prompts and the point is logged.

Metrics of one history row (one evaluation point)
-------------------------------------------------
From the evaluator, on held-out prompts, relative to the initial policy (docs/methods.md §6):
``reward/proxy`` and ``reward/gold`` (mean difference from the initial policy's samples, gold in
units of its standard deviation on initial samples) with ``*_se`` standard errors,
``reward/gold_raw`` (unnormalised gold mean), ``winrate/gold_vs_init``, ``kl/k1``, ``kl/k2``,
``kl/k3`` (mean sequence KL to the initial policy, nats), ``kl/k1_se``, ``kl/clamped``
(response tokens clamped in k3), ``d = sqrt(max(kl/k1, 0))``, ``length/mean`` (tokens incl.
eos), ``diversity/distinct1``, ``diversity/distinct2``.

From the recipe: ``step`` (RL steps done), ``samples_seen`` (responses trained on),
``time/wall`` (seconds since the start, evaluation included), ``time/eval`` (seconds of this
evaluation).

Training metrics, means over the steps since the previous evaluation point (absent at step 0):

- ``train/reward_raw``: ``reward_fn`` on the rollout; ``train/reward_mean``, ``train/reward_std``:
  the same after the transform hook (what is optimised, before the KL penalty);
  ``train/return_mean``: that minus ``beta * sum_t k_t`` (equal to it with the KL in the loss);
- ``train/length`` (response tokens), ``train/finished`` (fraction ending with eos);
- ``train/kl_k1``, ``train/kl_k2``, ``train/kl_k3``, ``train/kl_clamped``: sequence KL of the
  rollout to the KL reference ``ref``; ``kl/beta``: the coefficient used this step;
- ``kl/loss_term``, ``kl/loss_clamped``: the per-token KL term of the loss (before ``beta``);
- ``policy/clipfrac``, ``policy/approx_kl`` (k3 of ``KL(pi_old || pi)``), ``policy/ratio_mean``;
- ``value/loss``, ``value/mse``, ``value/clipfrac`` (PPO only);
- ``fdpg/ess``, ``fdpg/log_z``, ``fdpg/pseudo_reward``, ``fdpg/log_ratio`` (f-DPG only): the
  importance weights' effective sample size and the partition-function estimate, see
  :func:`proxygap.optimize.rollout.fdpg`;
- ``train/loss``, ``train/grad_norm`` (before clipping), ``train/optimizer_steps``, ``train/lr``;
- ``time/sample``, ``time/score``, ``time/ref``, ``time/update``, ``time/step``: seconds per step;
- whatever the ``post_step`` hook returns (namespaced by the hook).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.estimators.kl import sequence_kl
from proxygap.models.schedule import lr_factor
from proxygap.optimize.checkpoint import checkpoint_writer, resume_training
from proxygap.optimize.evaluate import PolicyEvaluator, ScoreFn
from proxygap.optimize.kl_control import KLController, make_kl_controller
from proxygap.optimize.loop import (
    LoopResult,
    Schedule,
    Stateful,
    Watchers,
    checked_rewards,
    describe_row,
    run_loop,
)
from proxygap.optimize.ppo_update import (
    UpdateSettings,
    new_critic,
    packed_logprobs,
    packed_values,
    update,
)
from proxygap.optimize.rl_config import RLConfig
from proxygap.optimize.rl_hooks import RLHooks
from proxygap.optimize.rollout import ADVANTAGES, PromptStream, Rollout, per_token_kl, token_rewards
from proxygap.sampling.generate import decode_responses, encode_prompts, sample
from proxygap.seeds import step_seed

__all__ = ["RLConfig", "rl_evaluator", "train_rl"]


def rl_evaluator(
    ref: PreTrainedModel,
    tokenizer: Any,
    *,
    task: Any,
    proxy: ScoreFn | None,
    cfg: RLConfig,
    gold_scale: float = 1.0,
    seed: int = 0,
    members: ScoreFn | None = None,
    embed: ScoreFn | None = None,
    gold_budget_prompts: int | None = None,
) -> PolicyEvaluator:
    """A :class:`PolicyEvaluator` on ``cfg.eval_prompts`` held-out prompts of ``task`` (drawn
    with ``seed``; use a seed the training prompts do not), ``cfg.eval_samples_per_prompt``
    samples each, at the training temperature and length; ``members`` and ``embed`` add the
    monitor's ensemble and latent signals, ``gold_budget_prompts`` gold on the first prompts'
    samples only (``reward/gold_budget``)."""
    return PolicyEvaluator.for_task(
        ref,
        tokenizer,
        task,
        proxy=proxy,
        n_prompts=cfg.eval_prompts,
        n_per_prompt=cfg.eval_samples_per_prompt,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        gold_scale=gold_scale,
        seed=seed,
        members=members,
        embed=embed,
        gold_budget_prompts=gold_budget_prompts,
    )


def _kl_controller(cfg: RLConfig) -> KLController:
    if cfg.kl_controller == "fixed":
        return make_kl_controller("fixed", beta=cfg.kl_coef)
    return make_kl_controller(
        "adaptive", init_beta=cfg.kl_coef, target=cfg.kl_target, horizon=cfg.kl_horizon
    )


# ---------------------------------------------------------------- the recipe
def train_rl(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: Any,
    *,
    cfg: RLConfig,
    train_prompts: Sequence[str],
    join: Callable[[Sequence[str], Sequence[str]], list[str]],
    reward_fn: ScoreFn,
    evaluator: PolicyEvaluator,
    hooks: RLHooks | None = None,
    log: Callable[[str], Any] = print,
    checkpoint_dir: Path | str | None = None,
    watch: Watchers | None = None,
    resume: bool = False,
    keep_checkpoints: int | None = None,
) -> LoopResult:
    """Optimise ``policy`` in place against ``reward_fn`` for ``cfg.steps`` steps.

    Args:
        policy: the causal LM being trained (a copy of ``ref`` at the start, usually).
        ref: the frozen KL reference ``pi_ref`` (usually the initial policy).
        tokenizer: with ``bos``/``eos``/``pad`` ids; prompts are ``[bos] + tokens``.
        train_prompts: prompt texts, walked in seeded shuffled passes.
        join: ``(prompts, responses) -> texts`` as ``reward_fn`` reads them.
        reward_fn: ``texts -> (B,)`` proxy rewards (centred on the initial policy).
        evaluator: measures the policy on held-out prompts every ``cfg.eval_every`` steps.
        hooks: reward transform and post-step hook (no-ops by default).
        log: called with one line per evaluation point.
        checkpoint_dir: where :func:`~proxygap.optimize.checkpoint.save_checkpoint` writes every
            ``cfg.checkpoint_every`` steps, or before each evaluation when that is 0 (None:
            nothing is written).
        watch: evaluation and step hooks (a monitor, a tracker) and a progress bar.
        resume: continue from the newest complete checkpoint in ``checkpoint_dir`` (its policy,
            critic, optimiser, scheduler, KL controller, prompt position, the memory of the
            ``hooks`` that keep one, the record and the watchers' memory), if there is one.
        keep_checkpoints: how many of the newest checkpoints to keep (None: all).

    Raises:
        CheckpointError: ``resume`` found a checkpoint of other settings.
    Raises:
        NonFiniteError: a reward, loss or gradient norm was NaN or inf; names the step and holds
            the history so far.
    """
    if policy is ref:
        raise ValueError("policy and ref must be different models (train a copy of ref)")
    hooks = hooks or RLHooks()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    max_new = cfg.max_new_tokens or evaluator.max_new_tokens
    torch.manual_seed(cfg.seed)
    policy.eval()  # no dropout: the sampler's and the learner's log-probs must agree
    ref.eval()
    critic = new_critic(policy) if cfg.algo == "ppo" else None
    params = [{"params": list(policy.parameters())}]
    if critic is not None:
        params.append({"params": list(critic.parameters())})
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, kind=cfg.lr_schedule, warmup=cfg.warmup_steps, total=cfg.steps),
    )
    controller = _kl_controller(cfg)
    # KL in the reward or in the loss: beta goes to one of the two, 0 to the other
    reward_beta, loss_beta = (1.0, 0.0) if cfg.kl_mode == "reward" else (0.0, 1.0)
    if cfg.algo == "fdpg":  # beta is the target's temperature, inside the advantages
        reward_beta = 0.0
    advantage_fn = ADVANTAGES[cfg.algo]
    settings = UpdateSettings(
        micro=cfg.minibatch_size or cfg.batch_size,
        accum=cfg.grad_accum,
        epochs=cfg.ppo_epochs,
        clip=cfg.clip,
        value_clip=cfg.value_clip,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        aggregation=cfg.loss_aggregation,
        kl_estimator=cfg.estimator,
        pad_id=pad,
        bf16=cfg.bf16,
        forward_tokens=cfg.forward_tokens,
    )
    stream = PromptStream(train_prompts, batch=cfg.prompts_per_step, seed=cfg.seed)
    result = LoopResult(config=cfg.model_dump(mode="json"))
    own: dict[str, Stateful] = {"kl_controller": controller, "prompts": stream, "hooks": hooks}
    saved = resume_training(
        checkpoint_dir if resume else None, policy=policy, critic=critic, optimizer=optimizer,
        scheduler=scheduler, config=result.config, log=log, own=own,
    )  # fmt: skip

    def rl_step(step: int) -> dict[str, float]:
        t_step = time.perf_counter()
        # ---- 1. sample
        prompts = stream.next()
        s = sample(
            policy,
            encode_prompts(tokenizer, prompts),
            n_per_prompt=cfg.group_size,
            max_new_tokens=max_new,
            temperature=cfg.temperature,
            eos_id=eos,
            pad_id=pad,
            batch_size=cfg.sample_batch_size,
            seed=step_seed(cfg.seed, step, "sample"),
        )
        mask, response_ids = s.mask.clone(), s.response_ids.clone()  # plain tensors, not inference
        rows = [prompts[i] for i in s.prompt_index.tolist()]
        t_sample = time.perf_counter()

        # ---- 2. score (proxy, then the transform hook)
        texts = join(rows, decode_responses(s, tokenizer))
        raw = reward_fn(texts)
        reward = checked_rewards(raw, hooks.transform(raw, texts, rows), n=len(rows))
        score = torch.from_numpy(reward).float()
        t_score = time.perf_counter()

        # ---- 3. reference log-probs and per-token KL
        batch = Rollout(s.prompt_ids_rows(), response_ids, mask, s.logprobs.clone())
        batch.ref_logprobs = packed_logprobs(ref, batch, settings)
        log_ratio = batch.logprobs - batch.ref_logprobs  # (B, T)
        _, kl_metrics = sequence_kl(log_ratio, mask)
        kl_tok, _ = per_token_kl(log_ratio, mask, estimator=cfg.estimator)
        beta = controller.beta
        t_ref = time.perf_counter()

        # ---- 4. per-token rewards and advantages
        rewards_t = token_rewards(score, kl_tok, mask, beta=reward_beta * beta)  # (B, T)
        if critic is not None:
            batch.values = packed_values(critic, batch, settings)
        batch.advantages, batch.returns, adv_metrics = advantage_fn(
            rewards_t,
            batch.values,
            mask,
            group_size=cfg.group_size,
            gamma=cfg.gamma,
            lam=cfg.lam,
            score=score,
            logprobs=batch.logprobs,
            ref_logprobs=batch.ref_logprobs,
            beta=beta,
            divergence=cfg.divergence,
        )

        # ---- 5. update
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, "minibatch_order"))
        train_metrics = update(
            policy, critic, optimizer, batch, kl_beta=loss_beta * beta, s=settings, gen=gen
        )
        lr_now = float(scheduler.get_last_lr()[0])
        scheduler.step()
        t_update = time.perf_counter()

        # ---- 6. KL controller and post-step hook
        controller.update(kl_metrics[f"kl/{cfg.estimator}"], n_steps=len(batch))
        hook_metrics = hooks.post_step(policy=policy, ref=ref, optimizer=optimizer, step=step + 1)

        # ---- 7. the step's metrics
        return {
            "train/reward_raw": float(np.mean(raw)),
            "train/reward_mean": float(reward.mean()),
            "train/reward_std": float(reward.std()),
            "train/return_mean": float(rewards_t.sum(dim=1).mean()),
            "train/length": float(mask.sum(dim=1).mean()),
            "train/finished": float(s.finished.float().mean()),
            **{f"train/kl_{k.removeprefix('kl/')}": v for k, v in kl_metrics.items()},
            "kl/beta": beta,
            "train/lr": lr_now,
            **train_metrics,
            **adv_metrics,
            **(hook_metrics or {}),
            "time/sample": t_sample - t_step,
            "time/score": t_score - t_sample,
            "time/ref": t_ref - t_score,
            "time/update": t_update - t_ref,
        }

    return run_loop(
        schedule=Schedule.every(cfg.eval_every, total=cfg.steps, samples_per_step=cfg.batch_size),
        train_step=rl_step,
        evaluate=lambda step: evaluator(policy),
        result=result,
        log=log,
        describe=lambda row: describe_row(row) + f"  beta {controller.beta:.4f}",
        checkpoint=checkpoint_writer(
            checkpoint_dir,
            policy=policy,
            critic=critic,
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
