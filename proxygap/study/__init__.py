"""The synthetic-gold study (Gao et al. 2023), stage by stage, resumable.

Stages, each written atomically into the run folder and skipped when already done:

1. ``preferences`` — two base-policy samples for each of ``n_pairs + n_heldout`` prompts, scored
   by gold, stored as ``preferences.jsonl`` (chosen = gold's pick, gold scores as extra fields).
2. ``proxy:<name>`` — each proxy relabels its share of the pairs (its own label mode, noise and
   seed), trains ``ensemble`` members with the Bradley-Terry loss, and is evaluated on the
   held-out pairs (pairwise accuracy against gold) and on base-policy samples (rank correlation).
3. ``pool`` — ``pool_size`` samples for each of ``n_prompts`` fresh prompts.
4. ``scores`` — gold and every proxy member on the pool and on the held-out base samples.
5. ``bon`` — best-of-n curves, law fits and turn-down tests; then the report.

Normalisation (Gao et al. §2): proxy members are centred and gold is scaled to unit standard
deviation on base-policy samples (the held-out pair responses, at the preference temperature).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from proxygap.config import StudyConfig
from proxygap.store.atomic import atomic_write_json
from proxygap.study.bon import (
    ProxyResult,
    analyse,
    examples,
    normalised,
    stage_pool,
    stage_scores,
    write_results,
)
from proxygap.study.daa import stage_daa
from proxygap.study.data import stage_preferences, stage_proxy
from proxygap.study.env import Env, NonFiniteError, reference_texts, setup
from proxygap.study.mitigations import stage_mitigations
from proxygap.study.rl import stage_rl

__all__ = ["Env", "NonFiniteError", "ProxyResult", "normalised", "run_study"]


def run_study(
    cfg: StudyConfig, runs_root: Path | str = "runs", *, restart: bool = False, log: Any = print
) -> Path:
    """Run (or resume) a whole study; return the run folder."""
    from proxygap.report.render import write_report

    t_start = time.perf_counter()
    env = setup(cfg, Path(runs_root), restart=restart, log=log)
    if env.run.resumed:
        log(f"resuming {env.run.dir}")
    train, held = stage_preferences(env)
    for proxy in cfg.proxies:
        stage_proxy(env, proxy, train)
    results: list[ProxyResult] = []
    picks: list[dict[str, Any]] = []
    ref_gold = np.concatenate([held.gold_chosen, held.gold_rejected])
    gold_scale = float(ref_gold.std()) or 1.0
    if cfg.bon is not None:
        prompts, responses = stage_pool(env)
        scores = stage_scores(env, prompts, responses, held)
        N = cfg.bon.pool_size
        pool_texts = env.task.join([prompts[i // N] for i in range(len(responses))], responses)
        results = analyse(env, scores, held, pool_texts)
        picks = examples(env, scores, prompts, responses)
        write_results(env, results, gold_scale)
        atomic_write_json(env.run.path("samples.json"), picks)
        if env.task.wellformed is not None:
            env.timings["wellformed_base"] = float(
                env.task.wellformed(reference_texts(env, held)).mean()
            )
            env.timings["wellformed_pool"] = float(env.task.wellformed(pool_texts).mean())
    rl_runs = stage_rl(env, held, gold_scale)
    mitigations = stage_mitigations(env, train, held, gold_scale)
    daa = stage_daa(env, train, held, gold_scale)
    env.timings["wall_seconds"] = time.perf_counter() - t_start
    write_report(
        env.run,
        cfg,
        results,
        picks,
        gold_scale=gold_scale,
        extra=env.timings,
        rl_runs=rl_runs,
        daa=daa,
        mitigations=mitigations,
    )
    return env.run.dir
