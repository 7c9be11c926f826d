"""The synthetic-gold study (Gao et al. 2023), stage by stage, resumable.

Stages, each written atomically into the run folder and skipped when already done:

1. ``preferences`` — two base-policy samples for each of ``n_pairs + n_heldout`` prompts, scored
   by gold, stored as ``preferences.jsonl`` (chosen = gold's pick, gold scores as extra fields).
2. ``proxy:<name>`` — each proxy relabels its share of the pairs (its own label mode, noise and
   seed), trains ``ensemble`` members with the Bradley-Terry loss, and is evaluated on the
   held-out pairs (pairwise accuracy against gold) and on base-policy samples (rank correlation).
3. ``pool`` — ``pool_size`` samples for each of ``n_prompts`` fresh prompts.
4. ``scores`` — gold and every proxy member on the pool and on the held-out base samples.
5. ``bon`` — best-of-n curves, law fits and turn-down tests.
6. ``rl:<run>``, ``mitigation*``, ``daa:<run>`` — online RL over KL coefficients
   (:mod:`proxygap.study.rl`), the mitigation study (:mod:`proxygap.study.mitigations`) and
   direct alignment (:mod:`proxygap.study.daa`), when the config asks for them.
7. ``fdiv:*`` — f-DPG arms and f-DPO rows over seeds (:mod:`proxygap.study.fdiv`).

:func:`run_study` returns a :class:`~proxygap.study.results.StudyResult`; the report is written
from it by :func:`proxygap.report.render.write_report`.

Normalisation (Gao et al. §2): proxy members are centred and gold is scaled to unit standard
deviation on base-policy samples (the held-out pair responses, at the preference temperature).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from proxygap.config import StudyConfig
from proxygap.store.atomic import atomic_write_json
from proxygap.study.bon import (
    analyse,
    examples,
    normalised,
    stage_pool,
    stage_scores,
    write_results,
)
from proxygap.study.context import StudyContext, reference_texts, setup
from proxygap.study.daa import stage_daa
from proxygap.study.daa_scale import stage_daa_scale
from proxygap.study.data import describe_data, stage_preferences, stage_proxy
from proxygap.study.detect import stage_detect
from proxygap.study.fdiv import stage_fdiv
from proxygap.study.mitigations import stage_mitigations
from proxygap.study.results import ProxyResult, StudyResult
from proxygap.study.rl import stage_rl
from proxygap.study.scaling import stage_scaling

__all__ = ["ProxyResult", "StudyContext", "StudyResult", "normalised", "run_study"]


def run_study(
    cfg: StudyConfig, runs_root: Path | str = "runs", *, restart: bool = False, log: Any = print
) -> StudyResult:
    """Run (or resume) every stage of a study; return what they found (the report is
    :func:`proxygap.report.render.write_report`)."""
    t_start = time.perf_counter()
    ctx = setup(cfg, Path(runs_root), restart=restart, log=log)
    try:
        return _stages(ctx, t_start)
    finally:
        ctx.run.close()  # the run folder's lock


def _stages(ctx: StudyContext, t_start: float) -> StudyResult:
    cfg, log = ctx.cfg, ctx.log
    if ctx.run.resumed:
        log(f"resuming {ctx.run.dir}")
    train, _ = stage_preferences(ctx)
    if cfg.scaling is None:  # a scaling study trains its proxies per cell (stage_scaling)
        for proxy in cfg.proxies:
            stage_proxy(ctx, proxy, train)
    out = StudyResult(cfg, ctx.run.dir, ctx.gold_scale, timings=ctx.timings)
    out.data = describe_data(ctx)
    if cfg.bon is not None:
        prompts, responses = stage_pool(ctx)
        scores = stage_scores(ctx, prompts, responses)
        N = cfg.bon.pool_size
        pool_texts = ctx.task.join([prompts[i // N] for i in range(len(responses))], responses)
        out.proxies = analyse(ctx, scores, pool_texts)
        out.picks = examples(ctx, scores, prompts, responses)
        write_results(ctx, out.proxies)
        atomic_write_json(ctx.run.path("samples.json"), out.picks)
        if ctx.task.wellformed is not None:
            ctx.timings["wellformed_base"] = float(ctx.task.wellformed(reference_texts(ctx)).mean())
            ctx.timings["wellformed_pool"] = float(ctx.task.wellformed(pool_texts).mean())
    out.rl_runs = stage_rl(ctx)
    out.mitigations = stage_mitigations(ctx, train)
    out.daa = stage_daa(ctx, train)
    out.detect = stage_detect(ctx, train)
    out.fdiv = stage_fdiv(ctx, train)
    out.daa_scale = stage_daa_scale(ctx, train)
    out.scaling = stage_scaling(ctx, train)
    ctx.timings["wall_seconds"] = time.perf_counter() - t_start
    return out
