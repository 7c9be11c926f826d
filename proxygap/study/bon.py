"""Study stages 3-5: the best-of-n pool, its scores, curves, fits and examples."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from proxygap.config import ProxyConfig
from proxygap.data.preferences import Pairs
from proxygap.models.loading import (
    load_tokenizer,
)
from proxygap.optimize.bon import BonCurve, bon_curve, log_spaced_ns, pick_examples
from proxygap.rewards.ensemble import aggregate, ensemble_std
from proxygap.rewards.reward_model import (
    pairwise_accuracy,
    score_texts,
)
from proxygap.store.atomic import atomic_write, atomic_write_json, atomic_write_text
from proxygap.study.data import proxy_members
from proxygap.study.env import Env, NonFiniteError, reference_texts, sample_responses


# ---------------------------------------------------------------- stage 3-4: pool and scores
def stage_pool(env: Env) -> tuple[list[str], list[str]]:
    """Prompts and the (n_prompts * pool_size) pool responses, grouped by prompt."""
    bon = env.cfg.bon
    assert bon is not None
    path = env.run.path("pool.jsonl")
    prompts = env.task.prompts(bon.n_prompts, seed=env.cfg.seed * 1000 + 3)
    if env.run.done("pool"):
        with path.open(encoding="utf-8") as fh:
            responses = [json.loads(line)["response"] for line in fh]
        return prompts, responses
    t0 = time.perf_counter()
    responses = sample_responses(
        env,
        prompts,
        n=bon.pool_size,
        temperature=bon.temperature,
        max_new=bon.max_new_tokens,
        seed=env.cfg.seed * 1000 + 4,
        desc="sample best-of-n pool",
    )
    lines = [
        json.dumps({"prompt_index": i // bon.pool_size, "response": r})
        for i, r in enumerate(responses)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    env.run.mark_done("pool", {"seconds": time.perf_counter() - t0})
    return prompts, responses


def stage_scores(
    env: Env, prompts: list[str], responses: list[str], held: Pairs
) -> dict[str, np.ndarray]:
    """Raw scores: ``gold`` (P, N), ``ref_gold`` (M,), and per proxy ``<name>`` (P, N, K) and
    ``ref:<name>`` (M, K) on the M base-policy reference samples."""
    path = env.run.path("scores.npz")
    if env.run.done("scores"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    bon = env.cfg.bon
    assert bon is not None
    P, N = bon.n_prompts, bon.pool_size
    pool_prompts = [prompts[i // N] for i in range(P * N)]
    pool_texts = env.task.join(pool_prompts, responses)
    ref_texts = reference_texts(env, held)
    out: dict[str, np.ndarray] = {
        "gold": env.gold_fn(pool_texts).reshape(P, N),
        "ref_gold": np.concatenate([held.gold_chosen, held.gold_rejected]),
    }
    for proxy in env.cfg.proxies:
        pool_k, ref_k = [], []
        for k, model in enumerate(proxy_members(env, proxy)):
            tok = env.tokenizer if not proxy.path else load_tokenizer(proxy.path)
            desc = f"score pool with {proxy.name} [{k + 1}]"
            pool_k.append(
                score_texts(
                    model,
                    tok,
                    pool_texts,
                    batch_size=env.cfg.runtime.score_batch_size,
                    progress=desc,
                )
            )
            ref_k.append(
                score_texts(model, tok, ref_texts, batch_size=env.cfg.runtime.score_batch_size)
            )
        out[proxy.name] = np.stack(pool_k, axis=-1).reshape(P, N, -1)
        out[f"ref:{proxy.name}"] = np.stack(ref_k, axis=-1)
    for key, value in out.items():
        bad = ~np.isfinite(value)
        if bad.any():
            raise NonFiniteError(
                f"stage 'scores': {int(bad.sum())} non-finite value(s) in {key!r} scores "
                f"(first at flat index {int(np.flatnonzero(bad)[0])}); nothing was written for "
                "this stage, earlier stages are kept"
            )
    atomic_write(path, lambda p: np.savez(p.open("wb"), **out))
    env.run.mark_done("scores")
    return out


# ---------------------------------------------------------------- stage 5: analysis
@dataclass
class ProxyResult:
    config: ProxyConfig
    curve: BonCurve
    heldout_accuracy: float
    spearman: float
    n_params: int | None
    train_seconds: float | None
    ensemble_std_growth: float | None = None
    wellformed_top: float | None = None  # well-formed fraction of the n = N picks


def normalised(scores: dict[str, np.ndarray], proxy: ProxyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated proxy scores on the pool (P, N) and on reference samples (M,), members centred
    on the reference samples before aggregation."""
    pool, ref = scores[proxy.name], scores[f"ref:{proxy.name}"]
    centre = ref.mean(axis=0)  # (K,)
    pool_c, ref_c = pool - centre, ref - centre
    kw = {"lam": proxy.uwo_lambda} if proxy.aggregation == "uwo" else {}
    P, N, K = pool_c.shape
    agg_pool = aggregate(torch.from_numpy(pool_c.reshape(P * N, K)), proxy.aggregation, **kw)
    agg_ref = aggregate(torch.from_numpy(ref_c), proxy.aggregation, **kw)
    return agg_pool.numpy().reshape(P, N), agg_ref.numpy()


def analyse(
    env: Env, scores: dict[str, np.ndarray], held: Pairs, pool_texts: list[str]
) -> list[ProxyResult]:
    bon = env.cfg.bon
    assert bon is not None
    gold_scale = float(scores["ref_gold"].std()) or 1.0
    gold = scores["gold"] / gold_scale
    ns = log_spaced_ns(bon.pool_size, bon.n_points)
    results = []
    M = len(held)
    for proxy in env.cfg.proxies:
        select, ref = normalised(scores, proxy)
        curve = bon_curve(proxy.name, select, gold, ns=ns)
        acc = pairwise_accuracy(
            ref[:M], ref[M:], np.asarray(held.gold_chosen), np.asarray(held.gold_rejected)
        )
        rho = float(spearmanr(ref, scores["ref_gold"]).statistic)
        info = env.run.stage_info(f"proxy:{proxy.name}")
        growth = None
        if scores[proxy.name].shape[-1] > 1:
            member = torch.from_numpy(scores[proxy.name].reshape(-1, scores[proxy.name].shape[-1]))
            std = ensemble_std(member).numpy().reshape(select.shape)
            top = np.take_along_axis(std, np.argmax(select, axis=1)[:, None], axis=1)
            growth = float(top.mean() / std.mean())
        wf_top = None
        if env.task.wellformed is not None:
            N = select.shape[1]
            top_idx = np.arange(select.shape[0]) * N + np.argmax(select, axis=1)
            wf_top = float(env.task.wellformed([pool_texts[i] for i in top_idx]).mean())
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


def write_results(env: Env, results: list[ProxyResult], gold_scale: float) -> None:
    rows = [row for r in results for row in r.curve.rows()]
    header = list(rows[0])
    csv = [",".join(header)] + [",".join(str(row[h]) for h in header) for row in rows]
    atomic_write_text(env.run.path("bon_curves.csv"), "\n".join(csv) + "\n")
    summary = {
        "gold_scale": gold_scale,
        "proxies": [
            {
                "name": r.config.name,
                "n_pairs": r.config.n_pairs or env.cfg.preferences.n_pairs,
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
            for r in results
        ],
    }
    atomic_write_json(env.run.path("summary.json"), summary)
    with env.run.path("metrics.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(
                json.dumps({f"bon/{k}" if k not in ("name", "n") else k: v for k, v in row.items()})
                + "\n"
            )


def examples(
    env: Env, scores: dict[str, np.ndarray], prompts: list[str], responses: list[str]
) -> list[dict[str, Any]]:
    """Best-of-n picks at several n for every proxy, with their proxy and gold scores."""
    bon = env.cfg.bon
    assert bon is not None
    N = bon.pool_size
    out = []
    for proxy in env.cfg.proxies:
        select, _ = normalised(scores, proxy)
        picks = pick_examples(
            select, ns=bon.examples_at, per_n=bon.examples_per_n, seed=env.cfg.seed
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
