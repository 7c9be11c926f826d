"""The scaling study's analysis: law fits per cell and per size with bootstrap intervals over
prompts, trends against log parameters over seeds, and the comparison with Gao et al.'s
direction of change (docs/methods.md §1, "Scaling with the proxy's size").

Within a seed all cells share the pool, so one set of prompt resamples per seed serves every
cell of that seed: a size's pooled fit (the mean of its seeds' curves) and a trend's bootstrap
interval then see the same resampled prompts at every size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from proxygap.analysis.bootstrap import (
    LawReplicates,
    curve_fit_se,
    law_replicates,
    percentile_interval,
    prompt_weights,
    summarise,
)
from proxygap.analysis.laws import fit_bon_law
from proxygap.analysis.scaling import direction, trend
from proxygap.analysis.seeds import t_interval
from proxygap.config.scaling import ScalingConfig
from proxygap.optimize.bon import BonCurve, bon_curve, log_spaced_ns
from proxygap.rewards.reward_model import pairwise_accuracy
from proxygap.seeds import study_seed
from proxygap.study.context import StudyContext

if TYPE_CHECKING:
    from proxygap.config import ProxyConfig

__all__ = ["GAO_DIRECTIONS", "analyse_scaling", "cell_dir", "pool_path"]

GAO_DIRECTIONS: dict[str, tuple[str, int, str]] = {
    "alpha": ("alpha", 1, "α_bon rises with proxy size"),
    "beta": ("beta", -1, "β_bon falls with proxy size"),
    "d_peak": ("observed_d_peak", 1, "bigger proxies peak later (gold peak's d)"),
    "gold_peak": ("observed_gold_peak", 1, "bigger proxies peak higher (gold at the peak)"),
}
"""Gao et al. 2023 (fig. 3 and §3.2): quantity -> (replicate field, expected sign, claim)."""


def pool_path(ctx: StudyContext, seed: int) -> Path:
    """A seed's pool: ``{"prompts", "texts", "gold"}`` (texts grouped by prompt)."""
    return ctx.run.path("scaling", f"pool-seed-{seed}.json")


def cell_dir(ctx: StudyContext, size: str, n: int, seed: int) -> Path:
    """A cell's folder: ``member-0/`` (the reward model), ``scores.npz``, ``info.json``."""
    return ctx.run.dir / "scaling" / size / f"n{n}-seed-{seed}"


def _cell(
    ctx: StudyContext, proxy: ProxyConfig, n: int, seed: int, gold: np.ndarray, ns: np.ndarray
) -> tuple[BonCurve, float]:
    """One cell's curve (per-prompt curves kept) and held-out accuracy."""
    with np.load(cell_dir(ctx, proxy.name, n, seed) / "scores.npz") as z:
        scores = {k: z[k] for k in z.files}
    centre = scores["ref"].mean()
    select = (scores["pool"] - centre).reshape(gold.shape)
    curve = bon_curve(f"{proxy.name}-n{n}-s{seed}", select, gold, ns=ns, keep_per_prompt=True)
    held = ctx.heldout
    pairs = scores.get("held", scores["ref"])
    M = len(held)
    acc = pairwise_accuracy(
        pairs[:M], pairs[M:], np.asarray(held.gold_chosen), np.asarray(held.gold_rejected)
    )
    return curve, acc


def _interval(point: float, reps: np.ndarray, level: float) -> dict[str, float]:
    lo, hi = percentile_interval(reps, level)
    return {"value": point, "lo": lo, "hi": hi}


def _pooled(
    curves: list[BonCurve], weights: np.ndarray, level: float
) -> tuple[dict[str, Any], LawReplicates]:
    """One size's fit to the mean of its seeds' curves, with intervals from the replicates."""
    per = np.concatenate([c.per_prompt for c in curves if c.per_prompt is not None])
    S = len(curves)
    d = curves[0].d
    gold = np.mean([c.gold for c in curves], axis=0)
    se = curve_fit_se(np.sqrt(np.sum([c.gold_se**2 for c in curves], axis=0)) / S)
    fit = fit_bon_law(d, gold, se)
    reps = law_replicates("bon", d, per, weights, se=se)
    k = int(np.argmax(gold))
    row = {
        "alpha": _interval(fit.alpha, reps.alpha, level),
        "beta": _interval(fit.beta, reps.beta, level),
        "law_d_peak": _interval(fit.d_peak, reps.d_peak, level),
        "law_r_peak": _interval(fit.r_peak, reps.r_peak, level),
        "d_peak": _interval(float(d[k]), reps.observed_d_peak, level),
        "gold_peak": _interval(float(gold[k]), reps.observed_gold_peak, level),
        "r2": fit.r2,
    }
    return row, reps


def analyse_scaling(
    ctx: StudyContext, cfg: ScalingConfig, params: dict[str, int]
) -> dict[str, Any]:
    """Everything ``scaling/summary.json`` holds (see the module docstring)."""
    sizes = sorted(ctx.cfg.proxies, key=lambda p: params[p.name])
    x = np.log10([params[p.name] for p in sizes])
    ns = log_spaced_ns(cfg.bon.pool_size, cfg.bon.n_points)
    P, N = cfg.bon.n_prompts, cfg.bon.pool_size
    weights = {}  # seed -> (B, P): one set of prompt resamples per pool
    golds = {}
    for s in cfg.seeds:
        pool = json.loads(pool_path(ctx, s).read_text(encoding="utf-8"))
        golds[s] = np.asarray(pool["gold"]).reshape(P, N) / ctx.gold_scale
        rng = np.random.default_rng(study_seed(ctx.cfg.seed, "scaling_bootstrap", s))
        weights[s] = prompt_weights([P], cfg.n_boot, rng)
    pooled_w = np.concatenate([weights[s] / len(cfg.seeds) for s in cfg.seeds], axis=1)
    cells: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    trends: dict[str, dict[str, Any]] = {}
    gao: dict[str, dict[str, str]] = {}
    curves_out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for n in cfg.n_pairs:
        # (S, K) values and (B, S, K) replicates of every trended quantity
        vals: dict[str, np.ndarray] = {}
        reps: dict[str, np.ndarray] = {}
        fields = ["alpha", "beta", "d_peak", "observed_d_peak", "observed_gold_peak"]
        for f in fields:
            vals[f] = np.full((len(cfg.seeds), len(sizes)), np.nan)
            reps[f] = np.full((cfg.n_boot, len(cfg.seeds), len(sizes)), np.nan)
        acc = np.full((len(cfg.seeds), len(sizes)), np.nan)
        curves_out[str(n)] = {}
        for k, proxy in enumerate(sizes):
            per_seed = []
            for i, s in enumerate(cfg.seeds):
                curve, acc[i, k] = _cell(ctx, proxy, n, s, golds[s], ns)
                assert curve.per_prompt is not None
                fit_se = curve_fit_se(curve.gold_se)
                r = law_replicates("bon", curve.d, curve.per_prompt, weights[s], se=fit_se)
                boot = summarise(r, "bon", cfg.level)
                point = {
                    "alpha": curve.fit.alpha, "beta": curve.fit.beta, "d_peak": curve.fit.d_peak,
                    "observed_d_peak": curve.turn.d_peak,
                    "observed_gold_peak": curve.turn.gold_peak,
                }  # fmt: skip
                for f in fields:
                    vals[f][i, k] = point[f]
                    reps[f][:, i, k] = getattr(r, f)
                cells.append(
                    {
                        "size": proxy.name, "n_params": params[proxy.name], "n_pairs": n,
                        "seed": s, "heldout_accuracy": acc[i, k], "fit": curve.fit.as_dict(),
                        "bootstrap": boot.as_dict(),
                        "turns_down": bool(curve.turn.turns_down),
                        "observed_d_peak": curve.turn.d_peak,
                        "observed_gold_peak": curve.turn.gold_peak,
                        "law_misplaces_peak": boot.law_misplaces_peak(curve.turn.d_peak),
                    }
                )  # fmt: skip
                per_seed.append(curve)
            row, _ = _pooled(per_seed, pooled_w, cfg.level)
            seed_iv = {
                f: t_interval(vals[f][:, k].tolist(), level=cfg.level).as_dict()
                for f in ("alpha", "beta")
            }
            table.append(
                {
                    "n_pairs": n, "size": proxy.name, "n_params": params[proxy.name],
                    "n_embd": proxy.n_embd, "n_layer": proxy.n_layer,
                    "heldout_accuracy": t_interval(acc[:, k].tolist(), level=cfg.level).as_dict(),
                    "over_seeds": seed_iv,
                    "turned_down": int(sum(c.turn.turns_down for c in per_seed)),
                    "seeds": len(per_seed),
                    **row,
                }
            )  # fmt: skip
            curves_out[str(n)][proxy.name] = {
                "d": per_seed[0].d.tolist(),
                "gold": np.mean([c.gold for c in per_seed], axis=0).tolist(),
                "proxy": np.mean([c.proxy for c in per_seed], axis=0).tolist(),
            }
        tr = {
            name: trend(x, vals[f], replicates=reps[f], level=cfg.level)
            for name, (f, _, _) in GAO_DIRECTIONS.items()
        }
        tr["law_d_peak"] = trend(x, vals["d_peak"], replicates=reps["d_peak"], level=cfg.level)
        tr["heldout_accuracy"] = trend(x, acc, level=cfg.level)
        trends[str(n)] = {k: v.as_dict() for k, v in tr.items()}
        gao[str(n)] = {
            name: direction(tr[name].lo, tr[name].hi, sign)
            for name, (_, sign, _) in GAO_DIRECTIONS.items()
        }
    return {
        "sizes": [
            {
                "name": p.name,
                "n_embd": p.n_embd,
                "n_layer": p.n_layer,
                "n_head": p.n_head,
                "n_params": params[p.name],
            }
            for p in sizes
        ],  # fmt: skip
        "n_pairs": cfg.n_pairs,
        "seeds": cfg.seeds,
        "level": cfg.level,
        "n_boot": cfg.n_boot,
        "gold_scale": ctx.gold_scale,
        "params_span": params[sizes[-1].name] / params[sizes[0].name],
        "table": table,
        "trends": trends,
        "gao": gao,
        "claims": {k: v[2] for k, v in GAO_DIRECTIONS.items()},
        "cells": cells,
        "curves": curves_out,
    }
