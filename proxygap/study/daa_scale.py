"""Study stage: direct alignment over a beta grid at several base-policy sizes (Rafailov et al.
2024: DAA overoptimization across KL budgets and model scales; docs/methods.md §5).

Every ``(size, loss, beta, seed)`` is one run (stage ``daa_scale:<size>:<loss>-<beta>:<seed>``):
a fresh copy of that size's base policy, trained with :func:`proxygap.optimize.daa.train_daa` on
the study's first ``n_pairs`` gold-labelled training pairs against itself as the reference, and
evaluated on held-out prompts against itself (gold relative to its own samples, in the study's
gold units; ``d`` from it). The runs go to ``runtime.workers`` forked processes (or Ray tasks:
``runtime.backend``). Each size's
initial policy is evaluated once (``daa_scale/<size>/init.json``): it is the ``d = 0`` point of
every curve of that size.

Per size and loss the final checkpoints of every beta and seed make the gold-vs-``d`` curve
(:func:`summarise_curve`); its peak is located with an interval
(:func:`proxygap.analysis.hump.locate_peak`), also per seed, and the fall past it is split into
gradual decline and collapse (responses that never end, ``length/unfinished``;
:func:`~proxygap.analysis.hump.split_decline`).
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.analysis.hump import locate_peak, split_decline
from proxygap.config.daa_scale import DAAScaleConfig
from proxygap.data.preferences import Pairs
from proxygap.models.loading import check_vocab_match, load_policy
from proxygap.optimize.daa import DAAConfig, daa_evaluator, prepare_pairs, train_daa
from proxygap.optimize.daa_pairs import PairTokens
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json
from proxygap.study.context import StudyContext, check_measurements
from proxygap.study.remote import remote_call, shared
from proxygap.study.results import DAAScaleResult, ScaleCurve
from proxygap.study.watch import watchers
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["remote_run", "stage_daa_scale", "summarise_curve"]

Run = tuple[str, str, float, int]  # size, loss, beta, seed


def _name(run: Run) -> str:
    size, loss, beta, seed = run
    return f"daa_scale:{size}:{loss}-{beta:g}:{seed}"


def _folder(ctx: StudyContext, run: Run) -> Path:
    size, loss, beta, seed = run
    return ctx.run.dir / "daa_scale" / size / f"{loss}-{beta:g}" / f"seed-{seed}"


def summarise_curve(
    betas: list[float],
    finals: list[list[dict[str, float]]],
    init: dict[str, float],
    *,
    threshold: float,
    seeds: list[int] | None = None,
    seed: int = 0,
) -> ScaleCurve:
    """One loss at one size: ``finals[s][j]`` is the final evaluation row of the ``s``-th seed
    (``seeds[s]``, default ``s``) at ``betas[j]``; ``init`` the initial policy's row.

    Every run's final checkpoint is a point of the curve, sorted by ``d`` after the initial
    policy's point, which is ``d = 0`` by definition (its measured ``d`` against itself is
    round-off, and a run's ``d`` is clipped at 0 when its k1 estimate is negative). Seeds are
    not averaged at a beta: two seeds of one beta can end far apart (one collapsed, one not), and
    their mean would be a policy that does not exist. Each seed's peak is also located on its
    own points."""
    ids = list(range(len(finals))) if seeds is None else list(seeds)
    if not finals or len(ids) != len(finals) or any(len(f) != len(betas) for f in finals):
        raise ValueError("finals must hold one row per beta for every seed")
    points = sorted(
        ((rows[j]["d"], s, j) for s, rows in enumerate(finals) for j in range(len(betas))),
        key=lambda t: t[0],
    )
    rows = [init] + [finals[s][j] for _, s, j in points]

    def col(key: str) -> list[float]:
        return [float(r[key]) for r in rows]

    d, gold = [0.0, *col("d")[1:]], col("reward/gold")
    se, collapse = [0.0, *col("reward/gold_se")[1:]], col("length/unfinished")
    peak = locate_peak(d, gold, se, seed=seed)
    per_seed = []
    for s in range(len(finals)):
        mine = [0] + [i + 1 for i, (_, s2, _) in enumerate(points) if s2 == s]
        per_seed.append(
            locate_peak([d[i] for i in mine], [gold[i] for i in mine], [se[i] for i in mine],
                        n_boot=1, seed=seed).d_peak
        )  # fmt: skip
    return ScaleCurve(
        betas=[float(betas[j]) for _, _, j in points],
        seeds=[ids[s] for _, s, _ in points],
        d=d,
        gold_se=se,
        gold=gold,
        collapse=collapse,
        length=col("length/mean"),
        peak=peak,
        decline=split_decline(d, gold, se, collapse, threshold=threshold),
        seed_peaks=per_seed,
    )


def _run(
    ctx: StudyContext,
    spec: DAAScaleConfig,
    run: Run,
    start: PreTrainedModel,
    prepared: tuple[PairTokens, PairTokens],
    evaluator: PolicyEvaluator,
) -> None:
    """Train and evaluate one run; write its result."""
    size, loss, beta, seed = run
    cfg = DAAConfig.model_validate(
        {**spec.settings.model_dump(), "loss": loss, "beta": beta, "seed": seed}
    )
    torch.manual_seed(seed)
    policy = copy.deepcopy(start).requires_grad_(True)
    name = f"daa_scale/{size}/{loss}-{beta:g}/seed-{seed}"
    result = train_daa(
        policy,
        start,
        ctx.tokenizer,
        *prepared,
        cfg=cfg,
        evaluator=evaluator,
        log=lambda *_: None,
        watch=watchers(ctx, run=name, config=cfg.model_dump(mode="json")),
    )
    check_measurements(result.history, _name(run))
    atomic_write_json(
        _folder(ctx, run) / "result.json", {"history": result.history, "examples": result.examples}
    )


def _job(
    ctx: StudyContext,
    spec: DAAScaleConfig,
    run: Run,
    start: PreTrainedModel,
    prepared: Callable[[], tuple[PairTokens, PairTokens]],
    evaluator: PolicyEvaluator,
) -> Job:
    size, loss, beta, seed = run
    return Job(
        f"DAA {size} {loss} beta {beta:g} seed {seed}",
        lambda: _run(ctx, spec, run, start, prepared(), evaluator),
        remote_call(remote_run, size, loss, beta, seed),
    )


def _start(ctx: StudyContext, size: str) -> PreTrainedModel:
    """The base policy of ``size``, frozen."""
    folder = ctx.task.policy_sizes[size]
    start = load_policy(folder)
    start = start.to(ctx.device)  # type: ignore[arg-type]  # wrapped .to: see models.loading
    start.eval().requires_grad_(False)
    check_vocab_match(start, ctx.tokenizer, f"policy size {size!r} ({folder})")
    return start


def _evaluator(ctx: StudyContext, spec: DAAScaleConfig, start: PreTrainedModel) -> PolicyEvaluator:
    """The evaluator of the runs that start from ``start``."""
    return daa_evaluator(
        start, ctx.tokenizer, task=ctx.task, proxy=None, cfg=spec.settings,
        gold_scale=ctx.gold_scale, seed=study_seed(ctx.cfg.seed, "policy_eval"),
    )  # fmt: skip


def _prepared(
    ctx: StudyContext, spec: DAAScaleConfig, start: PreTrainedModel, train: Pairs
) -> tuple[PairTokens, PairTokens]:
    """The training and held-out pairs with ``start``'s reference log-probs."""
    pairs = train.subset(np.arange(spec.n_pairs or len(train)))
    return prepare_pairs(start, ctx.tokenizer, pairs), prepare_pairs(
        start, ctx.tokenizer, ctx.heldout
    )


def remote_run(
    ctx: StudyContext, train: Pairs, size: str, loss: str, beta: float, seed: int
) -> None:
    """One run as a Ray task runs it (:mod:`proxygap.study.remote`); a worker process prepares
    each size once (its policy, evaluator and reference log-probs)."""
    spec = ctx.cfg.daa_scale
    assert spec is not None

    def prepare() -> tuple[PreTrainedModel, PolicyEvaluator, tuple[PairTokens, PairTokens]]:
        start = _start(ctx, size)
        return start, _evaluator(ctx, spec, start), _prepared(ctx, spec, start, train)

    start, evaluator, prepared = shared(ctx, f"daa_scale:{size}", prepare)
    _run(ctx, spec, (size, loss, beta, seed), start, prepared, evaluator)


def stage_daa_scale(ctx: StudyContext, train: Pairs) -> DAAScaleResult | None:
    """Run (or read back) every run of the ``daa_scale`` section and summarise the curves;
    None if the study has none."""
    spec = ctx.cfg.daa_scale
    if spec is None:
        return None
    runs: list[Run] = [
        (size, loss, beta, seed)
        for size in spec.sizes
        for loss, grid in spec.betas.items()
        for beta in grid
        for seed in spec.seeds
    ]
    todo = [r for r in runs if not ctx.run.done(_name(r))]
    params: dict[str, int] = {}
    inits: dict[str, dict[str, float]] = {}
    jobs: list[Job] = []
    job_runs: list[Run] = []
    ray = ray_runtime(ctx)
    for size in spec.sizes:
        start = _start(ctx, size)
        params[size] = sum(p.numel() for p in start.parameters())
        init_file = ctx.run.path("daa_scale", size, "init.json")
        mine = [r for r in todo if r[0] == size]
        if not mine and init_file.exists():
            inits[size] = json.loads(init_file.read_text())
            continue
        ctx.log(f"DAA scale: preparing size {size} ({params[size]:,} parameters)")
        evaluator = _evaluator(ctx, spec, start)
        inits[size] = evaluator(start)[0]
        atomic_write_json(init_file, inits[size])
        if not mine:
            continue
        prepared = functools.cache(functools.partial(_prepared, ctx, spec, start, train))
        if ray is None:  # once here, before the workers fork; Ray tasks prepare their own
            prepared()
        jobs += [_job(ctx, spec, r, start, prepared, evaluator) for r in mine]
        job_runs += mine

    def finished(i: int) -> None:
        size, loss, beta, seed = job_runs[i]
        info = {"size": size, "loss": loss, "beta": beta, "seed": seed}
        ctx.run.mark_done(_name(job_runs[i]), info)

    run_jobs(jobs, workers=ctx.cfg.runtime.workers, finished=finished, log=ctx.log, ray=ray)
    histories = {
        r: json.loads((_folder(ctx, r) / "result.json").read_text())["history"] for r in runs
    }
    curves = {
        size: {
            loss: summarise_curve(
                grid,
                [[histories[(size, loss, b, s)][-1] for b in grid] for s in spec.seeds],
                inits[size],
                threshold=spec.collapse_threshold,
                seeds=spec.seeds,
                seed=ctx.cfg.seed,
            )
            for loss, grid in spec.betas.items()
        }
        for size in spec.sizes
    }
    result = DAAScaleResult(params=params, init=inits, histories=histories, curves=curves)
    atomic_write_json(
        ctx.run.path("daa_scale", "summary.json"),
        {
            size: {
                "parameters": params[size],
                **{loss: c.summary() for loss, c in by_loss.items()},
            }
            for size, by_loss in curves.items()
        },
    )
    return result
