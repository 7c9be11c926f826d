"""Study stage: f-divergence alignment compared over seeds (docs/methods.md §7).

- **RL arms** (Go et al. 2023, f-DPG): for every divergence of ``fdiv.rl`` and every seed, a
  fresh copy of the base policy trained with ``algo: fdpg`` towards ``pi0 exp(r / beta)`` with
  the study proxy as ``r``, all arms with the same ``beta``, settings, training prompts (a
  seeded pass over them per seed) and evaluation prompts. Stage ``fdiv:rl:<div>:<seed>``, rows
  in ``fdiv/rl/<div>/seed-<s>/history.json`` (training rows in ``steps.jsonl``).
- **DAA rows** (Wang et al. 2023, f-DPO): for every loss of ``fdiv.daa`` and every seed, the
  base policy trained on the study's gold-labelled pairs (relabelled with ``label_noise``) with
  that loss at the same ``beta``; the seed sets the data order. Reference log-probs are computed
  once. Stage ``fdiv:daa:<loss>:<seed>``, rows in ``fdiv/daa/<loss>/seed-<s>/history.json``.

The reward is the proxy standardised on base-policy samples (SD units, as in the mitigation
study), so ``beta`` is a tilt per SD: if the reward were Gaussian under ``pi0`` the target
would lie ``1 / (2 beta^2)`` nats from it. Every run is evaluated by the same kind of evaluator
on the same held-out prompts (drawn with the study seed's ``fdiv_eval`` stream): gold (SD
units, relative to the base policy), the proxy, ``d`` and distinct-n. With ``runtime.workers >
1`` the runs go to forked worker processes, or to Ray tasks with ``runtime.backend: ray``
(:func:`proxygap.study.workers.run_jobs`); each run seeds itself, so results do not depend on
the number of workers or where they run. The numbers are
:func:`proxygap.study.fdiv_stats.summarise_arms`, written to ``fdiv/summary.json``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.analysis.calibration import preference_ece
from proxygap.config import FDivStudyConfig
from proxygap.data.preferences import Pairs, relabel
from proxygap.losses.daa import compute_daa_loss
from proxygap.optimize.daa import DAAConfig, daa_evaluator, prepare_pairs, train_daa
from proxygap.optimize.daa_pairs import PairTokens, pair_logps
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.optimize.loop import LoopResult
from proxygap.rewards.proxy import ProxyScorer, aggregate_members
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_text
from proxygap.study.context import StudyContext, check_measurements
from proxygap.study.fdiv_stats import summarise_arms
from proxygap.study.remote import remote_call, shared
from proxygap.study.results import FDivResult
from proxygap.study.rl import train_from_base
from proxygap.study.scoring import proxy_scorer
from proxygap.study.watch import watchers
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["remote_run", "stage_fdiv"]

FDivJob = tuple[str, str, Callable[[], Any]]  # stage, label, run
BT_LOSSES = frozenset({"dpo", "fdpo_rkl", "fdpo_fkl", "fdpo_js", "fdpo_alpha"})
"""The DAA losses that are ``-log sigma(margin)`` of their implicit rewards."""


def _folder(ctx: StudyContext, kind: str, arm: str, seed: int) -> Path:
    return ctx.run.dir / "fdiv" / kind / arm / f"seed-{seed}"


def _save(folder: Path, result: LoopResult, stage: str) -> None:
    check_measurements(result.history, stage)
    atomic_write_json(folder / "history.json", result.history)
    atomic_write_text(folder / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in result.steps))


def _standardised_reward(proxy: ProxyScorer) -> Callable[[Sequence[str]], np.ndarray]:
    """The proxy's members standardised on base-policy samples, then aggregated: a reward in
    SD units, so ``beta`` means the same for any proxy (a tilt ``exp(r / beta)`` per SD)."""
    return lambda texts: aggregate_members(
        proxy.standardised(texts), proxy.aggregation, lam=proxy.uwo_lambda
    )


def _rl_jobs(ctx: StudyContext, spec: FDivStudyConfig) -> list[FDivJob]:
    rl = spec.rl
    todo = [
        (div, seed)
        for div in (rl.divergences if rl is not None else [])
        for seed in spec.seeds
        if not ctx.run.done(f"fdiv:rl:{div}:{seed}")
    ]
    if rl is None or not todo:
        return []
    proxy = proxy_scorer(ctx, spec.proxy)
    reward = _standardised_reward(proxy)
    s = rl.settings
    prompts = ctx.task.prompts(
        s.steps * s.prompts_per_step, seed=study_seed(ctx.cfg.seed, "fdiv_train_prompts")
    )

    def job(div: str, seed: int) -> FDivJob:
        stage, name = f"fdiv:rl:{div}:{seed}", f"fdiv/rl/{div}/seed-{seed}"

        def go() -> None:
            result = train_from_base(
                ctx, rl.arm(div, seed), reward_fn=reward, eval_proxy=reward,
                prompts=prompts, eval_seed=study_seed(ctx.cfg.seed, "fdiv_eval"), proxy=proxy,
                run=name,
            )  # fmt: skip
            _save(_folder(ctx, "rl", div, seed), result, stage)

        return stage, f"f-DPG {div}, seed {seed}", go

    return [job(div, seed) for div, seed in todo]


def _daa_jobs(
    ctx: StudyContext, spec: FDivStudyConfig, train: Pairs, *, warm: bool
) -> list[FDivJob]:
    """The DAA rows not done yet; what they share (the reference policy, its log-probs on the
    pairs, the evaluator) is prepared on the first run, or here when ``warm`` (before the
    workers fork, so that they inherit it)."""
    daa = spec.daa
    todo = [
        (loss, seed)
        for loss in (daa.losses if daa is not None else [])
        for seed in spec.seeds
        if not ctx.run.done(f"fdiv:daa:{loss}:{seed}")
    ]
    if daa is None or not todo:
        return []
    n = daa.n_pairs or len(train)
    pairs = relabel(train.subset(np.arange(n)), noise=daa.label_noise, seed=ctx.cfg.seed + 11)

    @functools.cache
    def parts() -> tuple[PreTrainedModel, tuple[PairTokens, PairTokens], PolicyEvaluator]:
        ref = copy.deepcopy(ctx.policy).eval().requires_grad_(False)
        prepared = (
            prepare_pairs(ref, ctx.tokenizer, pairs),
            prepare_pairs(ref, ctx.tokenizer, ctx.heldout),
        )
        scorer = proxy_scorer(ctx, spec.proxy)
        evaluator = daa_evaluator(
            ctx.policy, ctx.tokenizer, task=ctx.task, proxy=_standardised_reward(scorer),
            cfg=daa.settings, gold_scale=ctx.gold_scale,
            seed=study_seed(ctx.cfg.seed, "fdiv_eval"),
            # the monitor's ensemble and latent signals, as in the RL arms
            members=scorer.standardised if scorer.n_members > 1 else None, embed=scorer.embed,
        )  # fmt: skip
        return ref, prepared, evaluator

    if warm:
        parts()

    def job(loss: str, seed: int) -> FDivJob:
        stage, cfg = f"fdiv:daa:{loss}:{seed}", daa.row(loss, seed)

        def go() -> None:
            ref, prepared, evaluator = parts()
            policy = copy.deepcopy(ctx.policy).requires_grad_(True)
            result = train_daa(
                policy, ref, ctx.tokenizer, *prepared, cfg=cfg, evaluator=evaluator,
                log=lambda *_: None,
                watch=watchers(
                    ctx, run=f"fdiv/daa/{loss}/seed-{seed}", config=cfg.model_dump(mode="json")
                ),
            )  # fmt: skip
            if result.history:  # the last row is the final policy's (eval_at ends at 1)
                ece = heldout_ece(policy, prepared[1], cfg, ctx.tokenizer.pad_token_id)
                result.history[-1]["daa/heldout_ece"] = ece
            _save(_folder(ctx, "daa", loss, seed), result, stage)

        return stage, f"f-DPO {loss}, seed {seed}", go

    return [job(loss, seed) for loss, seed in todo]


@torch.no_grad()
def heldout_ece(policy: PreTrainedModel, held: PairTokens, cfg: DAAConfig, pad_id: int) -> float:
    """ECE (:func:`proxygap.analysis.calibration.preference_ece`) of the implicit reward's
    preference probabilities ``sigma(margin)`` on the held-out pairs, for the losses of the
    form ``-log sigma(margin)`` (DPO without label smoothing and f-DPO: the probability is
    ``exp(-loss)``); nan for any other loss."""
    if cfg.loss not in BT_LOSSES or (cfg.label_smoothing or 0.0) > 0.0:
        return math.nan
    losses = [
        compute_daa_loss(
            cfg.loss,
            pair_logps(policy, held, range(s, min(s + 128, len(held))), pad_id=pad_id),
            **cfg.loss_hyper(),
        )[0]
        for s in range(0, len(held), 128)
    ]
    return preference_ece(torch.exp(-torch.cat(losses)).double().cpu().numpy())


def _histories(
    ctx: StudyContext, kind: str, arms: list[str], seeds: list[int]
) -> dict[str, list[list[dict[str, float]]]]:
    return {
        arm: [json.loads((_folder(ctx, kind, arm, s) / "history.json").read_text()) for s in seeds]
        for arm in arms
    }


def remote_run(ctx: StudyContext, train: Pairs, stage: str) -> None:
    """The run of stage ``stage`` (``fdiv:rl:...`` or ``fdiv:daa:...``) as a Ray task runs it
    (:mod:`proxygap.study.remote`): the runs of its kind are prepared once per worker process
    (the DAA rows' reference log-probs with them), then the one asked for runs."""
    spec = ctx.cfg.fdiv
    assert spec is not None
    kind = "rl" if stage.startswith("fdiv:rl:") else "daa"

    def prepare() -> dict[str, Callable[[], Any]]:
        jobs = _rl_jobs(ctx, spec) if kind == "rl" else _daa_jobs(ctx, spec, train, warm=False)
        return {name: fn for name, _, fn in jobs}

    runs = shared(ctx, f"fdiv:{kind}", prepare)
    if stage not in runs:  # prepared while this run was done (a study since started over)
        runs.update(prepare())
    if stage not in runs:
        raise ValueError(f"the study {ctx.cfg.name!r} has no f-divergence run {stage!r} to do")
    runs[stage]()


def stage_fdiv(ctx: StudyContext, train: Pairs) -> FDivResult | None:
    """Run (or read back) every RL arm and DAA row of ``fdiv`` for every seed; None if the
    study has no ``fdiv``."""
    spec = ctx.cfg.fdiv
    if spec is None:
        return None
    ray = ray_runtime(ctx)
    jobs = _rl_jobs(ctx, spec) + _daa_jobs(ctx, spec, train, warm=ray is None)
    if jobs:
        ctx.log(f"f-divergence comparison: {len(jobs)} runs")
        run_jobs(
            [Job(label, fn, remote_call(remote_run, stage)) for stage, label, fn in jobs],
            workers=ctx.cfg.runtime.workers,
            finished=lambda i: ctx.run.mark_done(jobs[i][0]),
            log=ctx.log,
            ray=ray,
        )
    out = FDivResult(spec)
    if spec.rl is not None:
        out.rl = _histories(ctx, "rl", list(spec.rl.divergences), spec.seeds)
        out.summary["rl"] = summarise_arms(out.rl)
    if spec.daa is not None:
        out.daa = _histories(ctx, "daa", list(spec.daa.losses), spec.seeds)
        out.summary["daa"] = summarise_arms(out.daa)
    atomic_write_json(ctx.run.path("fdiv", "summary.json"), out.summary | {"seeds": spec.seeds})
    return out
