"""Study stages 3-5: the best-of-n pool, its scores, curves, fits and examples."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from proxygap.config import ProxyConfig
from proxygap.errors import NonFiniteError
from proxygap.optimize.bon import bon_curve, log_spaced_ns, pick_examples
from proxygap.rewards.ensemble import ensemble_std
from proxygap.rewards.proxy import aggregate_members
from proxygap.rewards.reward_model import pairwise_accuracy
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_npz, atomic_write_text
from proxygap.study.context import StudyContext, sample_responses
from proxygap.study.results import ProxyResult
from proxygap.study.scoring import proxy_scorer

BOOTSTRAP_RESAMPLES = 1000
"""Prompt resamples behind the best-of-n intervals (docs/methods.md §1, "Intervals")."""


# ---------------------------------------------------------------- stage 3-4: pool and scores
def stage_pool(ctx: StudyContext) -> tuple[list[str], list[str]]:
    """Prompts and the (n_prompts * pool_size) pool responses, grouped by prompt."""
    bon = ctx.cfg.bon
    assert bon is not None
    path = ctx.run.path("pool.jsonl")
    prompts = ctx.task.prompts(
        bon.n_prompts, seed=study_seed(ctx.cfg.seed, "bon_prompts"), heldout=True
    )
    if ctx.run.done("pool"):
        with path.open(encoding="utf-8") as fh:
            responses = [json.loads(line)["response"] for line in fh]
        return prompts, responses
    t0 = time.perf_counter()
    responses = sample_responses(
        ctx,
        prompts,
        n=bon.pool_size,
        temperature=bon.temperature,
        max_new=bon.max_new_tokens,
        seed=study_seed(ctx.cfg.seed, "bon_pool"),
        desc="sample best-of-n pool",
    )
    lines = [
        json.dumps({"prompt_index": i // bon.pool_size, "response": r})
        for i, r in enumerate(responses)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    ctx.run.mark_done("pool", {"seconds": time.perf_counter() - t0})
    return prompts, responses


def stage_scores(
    ctx: StudyContext, prompts: list[str], responses: list[str]
) -> dict[str, np.ndarray]:
    """Raw scores: ``gold`` (P, N), ``ref_gold`` (M,), and per proxy ``<name>`` (P, N, K) and
    ``ref:<name>`` (M, K) on the M base-policy reference samples, and ``held:<name>`` (2H, K) on
    the H held-out pairs' chosen then rejected texts when those are not the reference samples
    (a preference file)."""
    path = ctx.run.path("scores.npz")
    if ctx.run.done("scores"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    bon = ctx.cfg.bon
    assert bon is not None
    held = ctx.heldout
    P, N = bon.n_prompts, bon.pool_size
    pool_prompts = [prompts[i // N] for i in range(P * N)]
    pool_texts = ctx.task.join(pool_prompts, responses)
    out: dict[str, np.ndarray] = {
        "gold": ctx.gold_fn(pool_texts).reshape(P, N),
        "ref_gold": ctx.reference_gold,
    }
    held_texts = ctx.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
    for proxy in ctx.cfg.proxies:
        scorer = proxy_scorer(ctx, proxy.name)
        pool = scorer.raw(pool_texts, progress=f"score pool with {proxy.name}")
        out[proxy.name] = pool.reshape(P, N, -1)
        out[f"ref:{proxy.name}"] = scorer.reference
        if not ctx.reference_is_heldout:
            out[f"held:{proxy.name}"] = scorer.raw(held_texts)
    for key, value in out.items():
        bad = ~np.isfinite(value)
        if bad.any():
            raise NonFiniteError(
                f"stage 'scores': {int(bad.sum())} non-finite value(s) in {key!r} scores "
                f"(first at flat index {int(np.flatnonzero(bad)[0])}); nothing was written for "
                "this stage, earlier stages are kept"
            )
    atomic_write_npz(path, out)
    ctx.run.mark_done("scores")
    return out


# ---------------------------------------------------------------- stage 5: analysis
def normalised(scores: dict[str, np.ndarray], proxy: ProxyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated proxy scores on the pool (P, N) and on reference samples (M,), members centred
    on the reference samples before aggregation."""
    pool, ref = scores[proxy.name], scores[f"ref:{proxy.name}"]
    centre = ref.mean(axis=0)  # (K,), as ProxyScorer.centre
    pool_c, ref_c = pool - centre, ref - centre
    agg, lam = proxy.aggregation, proxy.uwo_lambda
    return aggregate_members(pool_c, agg, lam=lam), aggregate_members(ref_c, agg, lam=lam)


def analyse(
    ctx: StudyContext, scores: dict[str, np.ndarray], pool_texts: list[str]
) -> list[ProxyResult]:
    bon = ctx.cfg.bon
    assert bon is not None
    held = ctx.heldout
    gold = scores["gold"] / ctx.gold_scale
    ns = log_spaced_ns(bon.pool_size, bon.n_points)
    results = []
    M = len(held)
    for proxy in ctx.cfg.proxies:
        select, ref = normalised(scores, proxy)
        # one bootstrap seed: every proxy sees the same prompt resamples
        boot_seed = study_seed(ctx.cfg.seed, "bon_bootstrap")
        curve = bon_curve(
            proxy.name, select, gold, ns=ns, n_boot=BOOTSTRAP_RESAMPLES, seed=boot_seed
        )
        pairs = ref  # the held-out pairs' texts, when they are the reference samples
        if f"held:{proxy.name}" in scores:
            centred = scores[f"held:{proxy.name}"] - scores[f"ref:{proxy.name}"].mean(axis=0)
            pairs = aggregate_members(centred, proxy.aggregation, lam=proxy.uwo_lambda)
        acc = pairwise_accuracy(
            pairs[:M], pairs[M:], np.asarray(held.gold_chosen), np.asarray(held.gold_rejected)
        )
        rho = float(spearmanr(ref, scores["ref_gold"]).statistic)
        info = ctx.run.stage_info(f"proxy:{proxy.name}")
        growth = None
        if scores[proxy.name].shape[-1] > 1:
            member = torch.from_numpy(scores[proxy.name].reshape(-1, scores[proxy.name].shape[-1]))
            std = ensemble_std(member).numpy().reshape(select.shape)
            top = np.take_along_axis(std, np.argmax(select, axis=1)[:, None], axis=1)
            growth = float(top.mean() / std.mean())
        wf_top = None
        if ctx.task.wellformed is not None:
            N = select.shape[1]
            top_idx = np.arange(select.shape[0]) * N + np.argmax(select, axis=1)
            wf_top = float(ctx.task.wellformed([pool_texts[i] for i in top_idx]).mean())
        results.append(
            ProxyResult(
                config=proxy,
                curve=curve,
                heldout_accuracy=acc,
                spearman=rho,
                n_params=info.get("n_params"),
                train_seconds=sum(m["seconds"] for m in info.get("members", [])) or None,
                ensemble_std_growth=growth,
                wellformed_top=wf_top,
            )
        )
    return results


def write_results(ctx: StudyContext, results: list[ProxyResult]) -> None:
    rows = [row for r in results for row in r.curve.rows()]
    header = list(rows[0])
    csv = [",".join(header)] + [",".join(str(row[h]) for h in header) for row in rows]
    atomic_write_text(ctx.run.path("bon_curves.csv"), "\n".join(csv) + "\n")
    summary = {
        "gold_scale": ctx.gold_scale,
        "proxies": [
            {
                "name": r.config.name,
                "n_pairs": r.config.n_pairs or ctx.cfg.preferences.n_pairs,
                "label_noise": r.config.label_noise,
                "labels": r.config.labels,
                "ensemble": r.config.ensemble,
                "aggregation": r.config.aggregation,
                "n_params": r.n_params,
                "heldout_accuracy": r.heldout_accuracy,
                "spearman_gold": r.spearman,
                "fit": r.curve.fit.as_dict(),
                "turn_down": {
                    "peak_n": int(r.curve.ns[r.curve.turn.peak_index]),
                    "d_peak": r.curve.turn.d_peak,
                    "gold_peak": r.curve.turn.gold_peak,
                    "gold_end": r.curve.turn.gold_end,
                    "drop": r.curve.turn.drop,
                    "drop_se": r.curve.turn.drop_se,
                    "significant": bool(r.curve.turn.turns_down),
                },
                "ensemble_std_growth": r.ensemble_std_growth,
                "wellformed_top": r.wellformed_top,
            }
            | _intervals(r)
            for r in results
        ],
    }
    atomic_write_json(ctx.run.path("summary.json"), summary)
    with ctx.run.path("metrics.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(
                json.dumps({f"bon/{k}" if k not in ("name", "n") else k: v for k, v in row.items()})
                + "\n"
            )


def _intervals(r: ProxyResult) -> dict[str, Any]:
    """The bootstrap intervals of the law and of the observed peak, and whether the law
    misplaces the peak (the observed peak's d outside the law peak's interval)."""
    boot = r.curve.boot
    if boot is None:
        return {}
    return {
        "fit_bootstrap": boot.as_dict(),
        "law_misplaces_peak": boot.law_misplaces_peak(r.curve.turn.d_peak),
    }


def examples(
    ctx: StudyContext, scores: dict[str, np.ndarray], prompts: list[str], responses: list[str]
) -> list[dict[str, Any]]:
    """Best-of-n picks at several n for every proxy, with their proxy and gold scores."""
    bon = ctx.cfg.bon
    assert bon is not None
    N = bon.pool_size
    out = []
    for proxy in ctx.cfg.proxies:
        select, _ = normalised(scores, proxy)
        picks = pick_examples(
            select, ns=bon.examples_at, per_n=bon.examples_per_n, seed=ctx.cfg.seed
        )
        for n, pairs in picks.items():
            for p, i in pairs:
                out.append(
                    {
                        "proxy": proxy.name,
                        "n": n,
                        "prompt": prompts[p],
                        "response": responses[p * N + i],
                        "proxy_score": float(select[p, i]),
                        "gold": float(scores["gold"][p, i]),
                    }
                )
    return out
