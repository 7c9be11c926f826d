"""Direct alignment recipe: train a policy on preference pairs with a DAA loss and measure it.

One step in the shared loop (:func:`proxygap.optimize.loop.run_loop`; docs/methods.md §5): tokenize
the pairs once, compute and cache the reference log-probabilities once
(:mod:`proxygap.optimize.daa_pairs`), then per optimizer step take the policy log-probs of the
chosen and the rejected responses in one forward pass, the loss from
:data:`proxygap.losses.daa.DAA_LOSSES`, backward, clip, step. Rafailov et al. 2024 ("Scaling
Laws for Reward Model Overoptimization in Direct Alignment Algorithms") find that gold quality
often peaks before one epoch ends, so the policy is evaluated at fractions of the first epoch
(``eval_at``), after each further epoch and at the last step.
:func:`proxygap.optimize.daa_sweep.summarise_sweep` fits the Gao et al. 2023 laws to gold vs
``d`` over the runs of several ``beta`` (the KL budget) per loss.

Each history entry holds ``step`` (optimizer steps done), ``samples_seen`` (pairs), ``epoch``
(fractional, pairs seen over the data size), ``time/wall`` (since the start of training,
evaluations included), ``time/eval`` (of this evaluation), ``time/step`` (mean seconds of the
optimizer steps since the previous entry) and these metrics:

- from :class:`proxygap.optimize.evaluate.PolicyEvaluator` on fresh samples for held-out
  prompts: ``reward/gold`` (+ ``_se``), ``reward/proxy`` (+ ``_se``, when the evaluator has a
  proxy), ``winrate/gold_vs_init``, ``kl/k1``, ``kl/k2``, ``kl/k3``, ``d``, ``length/mean``,
  ``diversity/*``; see that module.
- ``likelihood/topk_entropy``, ``likelihood/topk_mass``: Shi et al. 2024 indicators on
  ``likelihood_samples_per_prompt`` of the policy's own samples per evaluation prompt, see
  :mod:`proxygap.analysis.likelihood`.
- on held-out pairs: ``daa/heldout_chosen_logp``, ``daa/heldout_rejected_logp`` (mean summed
  response log-probabilities under the policy), ``daa/heldout_loss``, ``daa/heldout_margin``
  (mean implicit-reward margin, ``beta * h`` for reference-based losses) and
  ``daa/heldout_accuracy`` (fraction of pairs whose chosen implicit reward is larger, i.e. that
  agree with the gold label).
- ``train/loss``, ``train/margin``, ``train/accuracy``, ``train/grad_norm`` (before clipping),
  ``train/lr``: means over the optimizer steps since the previous evaluation (absent at step 0).

A NaN or inf loss or gradient norm stops the run with :class:`~proxygap.errors.NonFiniteError`
naming the step. Given a checkpoint folder, the run saves its policy, optimiser, scheduler and
record (:mod:`proxygap.optimize.checkpoint`) and a rerun with ``resume`` continues from the newest
one, with the numbers of an uninterrupted run (the data order is a function of the seed and the
steps done).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.analysis.likelihood import DEFAULT_K, likelihood_indicators
from proxygap.data.preferences import Pairs
from proxygap.losses.daa import DAA_LOSSES, PairBatchLogps, compute_daa_loss
from proxygap.models.logprobs import build_inputs
from proxygap.optimize.checkpoint import checkpoint_writer, resume_training
from proxygap.optimize.daa_pairs import PairTokens, pair_logps, prepare_pairs
from proxygap.optimize.evaluate import PolicyEvaluator, ScoreFn
from proxygap.optimize.loop import LoopResult, Schedule, Watchers, optimiser_step, run_loop
from proxygap.optimize.rollout import autocast
from proxygap.sampling.generate import sample
from proxygap.schema import PosFloat, PosInt, Strict
from proxygap.tasks.base import Task

_LOSS_HYPER = ("label_smoothing", "gamma", "eta", "alpha")


class DAAConfig(Strict):
    """One direct-alignment run. ``label_smoothing`` (cDPO), ``gamma`` (SimPO), ``eta`` (RPO) and
    ``alpha`` (f-DPO alpha-divergence) may be set only for a loss that takes them; unset ones keep
    the loss function's default.

    Deviations from the papers, for a small policy on CPU: AdamW instead of RMSprop (Rafailov et
    al. 2023), a learning rate of 3e-4 instead of ~1e-6 (chosen on the built-in task, where 1e-4
    barely leaves the initial policy within an epoch and 1e-3 degenerates at every beta), and no
    dropout (the policy is trained in eval mode, as TRL does by default).
    """

    loss: str = Field(
        default="dpo", description="the DAA loss by registry name (dpo, ipo, slic, ...)"
    )
    beta: PosFloat = Field(default=0.1, description="the loss's beta (the KL budget)")
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)] | None = Field(
        default=None, description="cDPO label smoothing; None: the loss's default"
    )
    gamma: Annotated[float, Field(ge=0.0)] | None = Field(
        default=None, description="SimPO margin; None: the loss's default"
    )
    eta: Annotated[float, Field(ge=0.0)] | None = Field(
        default=None, description="RPO weight of the NLL term; None: the loss's default"
    )
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] | None = Field(
        default=None, description="f-DPO alpha-divergence alpha; None: the loss's default"
    )
    lr: PosFloat = Field(
        default=3e-4,
        description=(
            "AdamW learning rate (suits the built-in 0.6M-parameter policy; large models need "
            "~1e-6)"
        ),
    )
    batch_size: PosInt = Field(default=32, description="pairs per micro-batch")
    grad_accum: PosInt = Field(default=1, description="micro-batches per optimiser step")
    epochs: PosFloat = Field(default=1.0, description="passes over the pairs")
    warmup: Annotated[int, Field(ge=0)] = Field(
        default=0, description="optimiser steps of linear warm-up, then constant"
    )
    max_grad_norm: PosFloat | None = Field(
        default=10.0, description="gradient norm clip; None: no clipping"
    )
    eval_at: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.125, 0.25, 0.5, 0.75, 1.0],
        description="evaluation points as fractions of the first epoch",
    )
    eval_prompts: PosInt = Field(default=64, description="held-out prompts per evaluation")
    eval_samples_per_prompt: PosInt = Field(default=4, description="samples per held-out prompt")
    topk: PosInt = Field(
        default=DEFAULT_K, description="k of the likelihood indicators (Shi et al. 2024)"
    )
    likelihood_samples_per_prompt: PosInt = Field(
        default=1, description="own samples per evaluation prompt for the indicators"
    )
    bf16: bool = Field(
        default=False, description="autocast the training forward passes to bfloat16"
    )
    seed: int = Field(default=0, description="seed of data order and sampling")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        if v not in DAA_LOSSES:
            raise ValueError(f"unknown DAA loss {v!r}; allowed: {sorted(DAA_LOSSES)}")
        return v

    @field_validator("eval_at")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        return sorted(set(v))

    @model_validator(mode="after")
    def _hyper_fit_loss(self) -> DAAConfig:
        accepted = DAA_LOSSES[self.loss].hyperparameters()
        for name in _LOSS_HYPER:
            if getattr(self, name) is not None and name not in accepted:
                raise ValueError(f"{name} is not a hyperparameter of loss {self.loss!r}")
            if accepted.get(name) is inspect.Parameter.empty and getattr(self, name) is None:
                raise ValueError(f"loss {self.loss!r} requires {name}")
        return self

    def loss_hyper(self) -> dict[str, float]:
        """Keyword arguments for :func:`compute_daa_loss`: ``beta`` and the set hyperparameters."""
        hyper = {"beta": self.beta}
        hyper.update({k: getattr(self, k) for k in _LOSS_HYPER if getattr(self, k) is not None})
        return hyper


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class DAAPlan:
    """Optimizer steps of a run and the steps after which it is evaluated."""

    pairs_per_step: int
    steps_per_epoch: float
    total_steps: int
    eval_steps: list[int]


def plan_schedule(n_pairs: int, cfg: DAAConfig) -> DAAPlan:
    """Steps for ``cfg.epochs`` over ``n_pairs``; evaluation after ``round(f * steps_per_epoch)``
    steps for each ``f`` in ``eval_at`` (first epoch), after each further full epoch and at the last
    step. Points that round to the same step are evaluated once."""
    if n_pairs < 1:
        raise ValueError("no training pairs")
    per_step = cfg.batch_size * cfg.grad_accum
    spe = n_pairs / per_step
    total = max(1, math.ceil(cfg.epochs * spe - 1e-9))
    points = [math.floor(f * spe + 0.5) for f in cfg.eval_at]
    points += [math.floor(e * spe + 0.5) for e in range(2, math.floor(cfg.epochs) + 1)]
    return DAAPlan(per_step, spe, total, sorted({p for p in points if p <= total} | {total}))


def _index_stream(n: int, seed: int) -> Iterator[int]:
    """Pair indices, one seeded permutation per epoch, without end."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).tolist()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def heldout_metrics(
    policy: PreTrainedModel,
    held: PairTokens,
    *,
    cfg: DAAConfig,
    pad_id: int,
    batch_size: int = 256,
) -> dict[str, float]:
    """``daa/heldout_*``: policy log-probs, loss, margin and accuracy on held-out pairs."""
    parts = [
        pair_logps(policy, held, range(s, min(s + batch_size, len(held))), pad_id=pad_id)
        for s in range(0, len(held), batch_size)
    ]
    batch = PairBatchLogps(
        *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(PairBatchLogps))
    )
    _, m = compute_daa_loss(cfg.loss, batch, **cfg.loss_hyper())
    return {
        "daa/heldout_chosen_logp": float(batch.policy_chosen.mean()),
        "daa/heldout_rejected_logp": float(batch.policy_rejected.mean()),
        "daa/heldout_loss": m["daa/loss"],
        "daa/heldout_margin": m["daa/margin"],
        "daa/heldout_accuracy": m["daa/accuracy"],
    }


@torch.no_grad()
def sample_likelihood(
    policy: PreTrainedModel, evaluator: PolicyEvaluator, *, k: int, n_per_prompt: int = 1
) -> dict[str, float]:
    """``likelihood/*`` (Shi et al. 2024) on ``n_per_prompt`` fresh samples of the policy for each
    of the evaluator's prompts, drawn with its seed, length and temperature (with the evaluator's
    ``n_per_prompt`` these are the very samples it scores; fewer cost less)."""
    ev, tok = evaluator, evaluator.tokenizer
    s = sample(
        policy,
        ev.prompt_ids,
        n_per_prompt=n_per_prompt,
        max_new_tokens=ev.max_new_tokens,
        temperature=ev.temperature,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        batch_size=ev.batch_size,
        seed=ev.seed,
    )
    device = next(policy.parameters()).device
    ids, attn, pos, P = build_inputs(s.prompt_ids_rows(), s.response_ids, s.mask, tok.pad_token_id)
    T = s.response_ids.shape[1]
    logits = policy(
        input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device)
    ).logits[:, P - 1 : P - 1 + T]  # (B, T, V)
    return likelihood_indicators(logits, s.mask.to(device), k=k)


def _summary(h: dict[str, float]) -> str:
    return (
        f"step {int(h['step'])} epoch {h['epoch']:.3f}: d {h['d']:.3f} gold {h['reward/gold']:+.3f}"
        f"±{h['reward/gold_se']:.3f} win {h['winrate/gold_vs_init']:.3f} "
        f"heldout acc {h['daa/heldout_accuracy']:.3f}"
    )


def daa_evaluator(
    ref: PreTrainedModel,
    tokenizer: Tokenizer,
    *,
    task: Task,
    proxy: ScoreFn | None,
    cfg: DAAConfig,
    gold_scale: float = 1.0,
    seed: int = 0,
    members: ScoreFn | None = None,
    embed: ScoreFn | None = None,
    gold_budget_prompts: int | None = None,
) -> PolicyEvaluator:
    """A :class:`PolicyEvaluator` on ``cfg.eval_prompts`` prompts of ``task`` (drawn with
    ``seed``; not the training prompts' seed), ``cfg.eval_samples_per_prompt`` samples each at
    temperature 1, against samples of ``ref``; ``members``, ``embed``: the monitor's signals;
    ``gold_budget_prompts``: gold on the first prompts' samples only (``reward/gold_budget``)."""
    return PolicyEvaluator.for_task(
        ref, tokenizer, task, proxy=proxy, n_prompts=cfg.eval_prompts,
        n_per_prompt=cfg.eval_samples_per_prompt, gold_scale=gold_scale, seed=seed,
        members=members, embed=embed, gold_budget_prompts=gold_budget_prompts,
    )  # fmt: skip


# --------------------------------------------------------------------------- the recipe


def train_daa(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: Tokenizer,
    pairs_train: Pairs | PairTokens,
    pairs_heldout: Pairs | PairTokens,
    *,
    cfg: DAAConfig,
    evaluator: PolicyEvaluator,
    log: Callable[[str], None] = print,
    watch: Watchers | None = None,
    checkpoint_dir: Path | str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    keep_checkpoints: int | None = None,
) -> LoopResult:
    """Train ``policy`` in place with the DAA loss ``cfg.loss`` against the reference ``ref``
    (Rafailov et al. 2023; Azar et al. 2023; Zhao et al. 2023; Meng et al. 2024; Pang et al. 2024)
    and evaluate it at the points of :func:`plan_schedule` (Rafailov et al. 2024).

    ``pairs_*`` may be :class:`PairTokens` to reuse cached reference log-probs across runs;
    ``watch`` adds evaluation and step hooks (a monitor, a tracker) and a progress bar.
    The same ``cfg.seed``, data and models give the same history (timings aside).

    With ``checkpoint_dir``, a checkpoint is written every ``checkpoint_every`` optimiser steps
    (0: before each evaluation), keeping the newest ``keep_checkpoints`` (None: all); with
    ``resume`` the run continues from the newest complete one there, if any.

    Raises:
        NonFiniteError: a loss or gradient norm was NaN or inf; names the step and holds the
            history so far.
    """
    pad = tokenizer.pad_token_id
    ref.eval()
    train = prepare_pairs(ref, tokenizer, pairs_train)
    held = prepare_pairs(ref, tokenizer, pairs_heldout)
    plan = plan_schedule(len(train), cfg)
    device = next(policy.parameters()).device
    policy.eval()  # no dropout in the policy's log-probs
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (cfg.warmup + 1)))
    stream = _index_stream(len(train), cfg.seed)
    hyper = cfg.loss_hyper()
    result = LoopResult(config=cfg.model_dump(mode="json"))
    saved = resume_training(
        checkpoint_dir if resume else None, policy=policy, critic=None, optimizer=opt,
        scheduler=sched, config=result.config, log=log,
    )  # fmt: skip
    for _ in range(int(saved["step"]) * plan.pairs_per_step if saved else 0):
        next(stream)  # the pairs already drawn

    def daa_step(step: int) -> dict[str, float]:
        sums = dict.fromkeys(("loss", "margin", "accuracy"), 0.0)

        def micro_batch(_: int) -> tuple[Tensor, float]:
            idx = [next(stream) for _ in range(cfg.batch_size)]
            with autocast(cfg.bf16, device):
                batch = pair_logps(policy, train, idx, pad_id=pad)
            losses, metrics = compute_daa_loss(cfg.loss, batch, **hyper)  # (B,)
            for k in sums:
                sums[k] += metrics[f"daa/{k}"] / cfg.grad_accum
            return losses.mean() / cfg.grad_accum, 1.0

        lr_now = float(sched.get_last_lr()[0])
        norm = optimiser_step(
            opt,
            list(policy.parameters()),
            range(cfg.grad_accum),
            micro_batch,
            max_grad_norm=cfg.max_grad_norm,
        )
        sched.step()
        return {f"train/{k}": v for k, v in sums.items()} | {
            "train/grad_norm": norm,
            "train/lr": lr_now,
        }

    def evaluate(step: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        metrics, examples = evaluator(policy)
        metrics |= heldout_metrics(policy, held, cfg=cfg, pad_id=pad)
        metrics |= sample_likelihood(
            policy, evaluator, k=cfg.topk, n_per_prompt=cfg.likelihood_samples_per_prompt
        )
        return {"epoch": step * plan.pairs_per_step / len(train), **metrics}, examples

    return run_loop(
        schedule=Schedule.at(
            plan.eval_steps, total=plan.total_steps, samples_per_step=plan.pairs_per_step
        ),
        train_step=daa_step,
        evaluate=evaluate,
        result=result,
        log=lambda line: log(f"[{cfg.loss} beta={cfg.beta:g}] " + line),
        describe=_summary,
        checkpoint=checkpoint_writer(
            checkpoint_dir,
            policy=policy,
            critic=None,
            tokenizer=tokenizer,
            optimizer=opt,
            scheduler=sched,
            config=result.config,
            keep=keep_checkpoints,
        ),
        checkpoint_every=checkpoint_every,
        watch=watch,
        resume=saved["loop"] if saved else None,
    )
