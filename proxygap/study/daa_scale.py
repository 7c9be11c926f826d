"""Study stage: direct alignment over a beta grid at several base-policy sizes (Rafailov et al.
2024: DAA overoptimization across KL budgets and model scales; docs/methods.md §5).

Every ``(size, loss, beta, seed)`` is one run (stage ``daa_scale:<size>:<loss>-<beta>:<seed>``):
a fresh copy of that size's base policy, trained with :func:`proxygap.optimize.daa.train_daa` on
the study's first ``n_pairs`` gold-labelled training pairs against itself as the reference, and
evaluated on held-out prompts against itself (gold relative to its own samples, in the study's
gold units; ``d`` from it). The runs go to ``runtime.workers`` forked processes. Each size's
initial policy is evaluated once (``daa_scale/<size>/init.json``): it is the ``d = 0`` point of
every curve of that size.

Per size and loss the final checkpoints of the beta grid, averaged over seeds
(:func:`proxygap.analysis.hump.combine_seeds`), make the gold-vs-``d`` curve; its peak is located
with an interval (:func:`~proxygap.analysis.hump.locate_peak`), also per seed, and the fall past
it is split into gradual decline and collapse (responses that never end,
``length/unfinished``; :func:`~proxygap.analysis.hump.split_decline`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.analysis.hump import combine_seeds, locate_peak, split_decline
from proxygap.config.daa_scale import DAAScaleConfig
from proxygap.data.preferences import Pairs
from proxygap.models.loading import check_vocab_match, load_policy
from proxygap.optimize.daa import DAAConfig, daa_evaluator, prepare_pairs, train_daa
from proxygap.optimize.daa_pairs import PairTokens
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json
from proxygap.study.context import StudyContext, check_measurements
from proxygap.study.results import DAAScaleResult, ScaleCurve
from proxygap.study.watch import watchers
from proxygap.study.workers import run_jobs

__all__ = ["stage_daa_scale", "summarise_curve"]

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
    seed: int = 0,
) -> ScaleCurve:
    """One loss at one size: ``finals[s][j]`` is the final evaluation row of seed ``s`` at
    ``betas[j]``; ``init`` the initial policy's row (the ``d = 0`` point). The curve is the seed
    mean at each beta, sorted by ``d``, after the initial point; each seed's peak is located on
    its own curve."""
    S = len(finals)
    if S == 0 or any(len(f) != len(betas) for f in finals):
        raise ValueError("finals must hold one row per beta for every seed")

    def grid(key: str) -> np.ndarray:  # (S, J)
        return np.array([[row[key] for row in rows] for rows in finals], dtype=np.float64)

    d, d_se = combine_seeds(grid("d"), np.zeros((S, len(betas))))
    gold, gold_se = combine_seeds(grid("reward/gold"), grid("reward/gold_se"))
    collapse = grid("length/unfinished").mean(axis=0)
    order = np.argsort(d, kind="stable")
    # the initial policy is the d = 0 point by definition (its measured d against itself is
    # round-off, and a run's d is clipped at 0 when its k1 estimate is negative)
    c_d = np.concatenate([[0.0], d[order]])
    c_gold = np.concatenate([[init["reward/gold"]], gold[order]])
    c_se = np.concatenate([[0.0], gold_se[order]])  # gold is relative to these very samples
    c_dse = np.concatenate([[0.0], d_se[order]])
    c_collapse = np.concatenate([[init["length/unfinished"]], collapse[order]])
    peak = locate_peak(c_d, c_gold, c_se, d_se=c_dse, seed=seed)
    per_seed = []
    for s in range(S):
        o = np.argsort(grid("d")[s], kind="stable")
        ds = np.concatenate([[0.0], grid("d")[s][o]])
        gs = np.concatenate([[init["reward/gold"]], grid("reward/gold")[s][o]])
        ses = np.concatenate([[0.0], grid("reward/gold_se")[s][o]])
        per_seed.append(locate_peak(ds, gs, ses, n_boot=1, seed=seed).d_peak)
    return ScaleCurve(
        betas=[float(betas[i]) for i in order],
        d=c_d.tolist(),
        d_se=c_dse.tolist(),
        gold=c_gold.tolist(),
        gold_se=c_se.tolist(),
        collapse=c_collapse.tolist(),
        length=[init["length/mean"], *grid("length/mean").mean(axis=0)[order].tolist()],
        peak=peak,
        decline=split_decline(c_d, c_gold, c_se, c_collapse, threshold=threshold),
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
    prepared: tuple[PairTokens, PairTokens],
    evaluator: PolicyEvaluator,
) -> Callable[[], None]:
    return lambda: _run(ctx, spec, run, start, prepared, evaluator)


def stage_daa_scale(ctx: StudyContext, train: Pairs) -> DAAScaleResult | None:
    """Run (or read back) every run of the ``daa_scale`` section and summarise the curves;
    None if the study has none."""
    spec = ctx.cfg.daa_scale
    if spec is None:
        return None
    pairs = train.subset(np.arange(spec.n_pairs or len(train)))
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
    jobs: list[tuple[str, Callable[[], None]]] = []
    job_runs: list[Run] = []
    for size in spec.sizes:
        folder = ctx.task.policy_sizes[size]
        start = load_policy(folder)
        start = start.to(ctx.device)  # type: ignore[arg-type]  # wrapped .to: see models.loading
        start.eval().requires_grad_(False)
        check_vocab_match(start, ctx.tokenizer, f"policy size {size!r} ({folder})")
        params[size] = sum(p.numel() for p in start.parameters())
        init_file = ctx.run.path("daa_scale", size, "init.json")
        mine = [r for r in todo if r[0] == size]
        if not mine and init_file.exists():
            inits[size] = json.loads(init_file.read_text())
            continue
        ctx.log(f"DAA scale: preparing size {size} ({params[size]:,} parameters)")
        evaluator = daa_evaluator(
            start, ctx.tokenizer, task=ctx.task, proxy=None, cfg=spec.settings,
            gold_scale=ctx.gold_scale, seed=study_seed(ctx.cfg.seed, "policy_eval"),
        )  # fmt: skip
        inits[size] = evaluator(start)[0]
        atomic_write_json(init_file, inits[size])
        if not mine:
            continue
        prepared = (
            prepare_pairs(start, ctx.tokenizer, pairs),
            prepare_pairs(start, ctx.tokenizer, ctx.heldout),
        )
        for r in mine:
            jobs.append(
                (
                    f"DAA {r[0]} {r[1]} beta {r[2]:g} seed {r[3]}",
                    _job(ctx, spec, r, start, prepared, evaluator),
                )
            )
            job_runs.append(r)

    def finished(i: int) -> None:
        size, loss, beta, seed = job_runs[i]
        info = {"size": size, "loss": loss, "beta": beta, "seed": seed}
        ctx.run.mark_done(_name(job_runs[i]), info)

    run_jobs(jobs, workers=ctx.cfg.runtime.workers, finished=finished, log=ctx.log)
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
