"""Study stage: how overoptimization scales with the proxy's size (section ``scaling``).

Every proxy of the study is a model size. For every seed of ``scaling.seeds`` a best-of-n pool
of its own is sampled (stage ``scaling:pool:<seed>``); then every (size, data size, seed) cell
trains one reward model on the first ``n`` pairs of that seed's shuffle of the training pairs,
with that seed's label noise and initialisation, and scores the seed's pool, the base-policy
reference samples and the held-out pairs (stage ``scaling:<size>:<n>:<seed>``). Pools and cells
run on ``runtime.workers`` forked processes (or Ray tasks: ``runtime.backend``), largest models
first. The analysis
(:mod:`proxygap.study.scaling_analysis`) fits the best-of-n law per cell and per size with
bootstrap intervals over prompts, the trends against log parameters, and writes
``scaling/summary.json``. With ``scaling.rl`` set, RL runs against some of the trained proxies
(:mod:`proxygap.study.scaling_rl`) follow the cells and are summarised under ``rl``.
"""

from __future__ import annotations

import json
import time

import numpy as np

from proxygap.config import ProxyConfig
from proxygap.config.scaling import ScalingConfig
from proxygap.data.preferences import Pairs
from proxygap.models.loading import load_reward_model
from proxygap.rewards.reward_model import n_parameters, new_reward_model, score_texts
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_npz
from proxygap.study.context import StudyContext, reference_texts, sample_responses
from proxygap.study.data import train_members
from proxygap.study.remote import remote_call
from proxygap.study.results import ScalingResult
from proxygap.study.scaling_analysis import analyse_scaling, cell_dir, pool_path
from proxygap.study.scaling_rl import scaling_rl
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["remote_cell", "remote_pool", "stage_scaling"]


def _pool(ctx: StudyContext, cfg: ScalingConfig, seed: int) -> None:
    bon = cfg.bon
    prompts = ctx.task.prompts(
        bon.n_prompts, seed=study_seed(ctx.cfg.seed, "scaling_prompts", seed), heldout=True
    )
    responses = sample_responses(
        ctx, prompts, n=bon.pool_size, temperature=bon.temperature, max_new=bon.max_new_tokens,
        seed=study_seed(ctx.cfg.seed, "scaling_pool", seed), desc=None,
    )  # fmt: skip
    texts = ctx.task.join([prompts[i // bon.pool_size] for i in range(len(responses))], responses)
    gold = np.asarray(ctx.gold_fn(texts), dtype=np.float64)
    atomic_write_json(
        pool_path(ctx, seed), {"prompts": prompts, "texts": texts, "gold": gold.tolist()}
    )


def _cell(ctx: StudyContext, proxy: ProxyConfig, n: int, seed: int, train: Pairs) -> None:
    """Train one cell's reward model and score what the analysis needs."""
    t0 = time.perf_counter()
    folder = cell_dir(ctx, proxy.name, n, seed)
    order = np.random.default_rng(study_seed(ctx.cfg.seed, "scaling_data", seed))
    share = train.subset(order.permutation(len(train)))  # train_members takes the first n
    cell = proxy.model_copy(update={"n_pairs": n, "seed": seed})
    info = train_members(ctx, cell, share, seeds=[seed], folder=folder)
    model = load_reward_model(folder / "member-0")
    batch = ctx.cfg.runtime.score_batch_size
    pool = json.loads(pool_path(ctx, seed).read_text(encoding="utf-8"))
    scores = {
        "pool": score_texts(model, ctx.tokenizer, pool["texts"], batch_size=batch),
        "ref": score_texts(model, ctx.tokenizer, reference_texts(ctx), batch_size=batch),
    }
    if not ctx.reference_is_heldout:
        held = ctx.heldout
        texts = ctx.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
        scores["held"] = score_texts(model, ctx.tokenizer, texts, batch_size=batch)
    atomic_write_npz(folder / "scores.npz", scores)
    info["seconds"] = time.perf_counter() - t0
    atomic_write_json(folder / "info.json", info)


def remote_pool(ctx: StudyContext, train: Pairs, seed: int) -> None:
    """One pool as a Ray task runs it (:mod:`proxygap.study.remote`)."""
    assert ctx.cfg.scaling is not None
    _pool(ctx, ctx.cfg.scaling, seed)


def remote_cell(ctx: StudyContext, train: Pairs, proxy: str, n: int, seed: int) -> None:
    """One cell as a Ray task runs it (:mod:`proxygap.study.remote`)."""
    _cell(ctx, next(p for p in ctx.cfg.proxies if p.name == proxy), n, seed, train)


def _n_params(ctx: StudyContext, proxy: ProxyConfig) -> int:
    model = new_reward_model(
        ctx.tokenizer, n_embd=proxy.n_embd, n_layer=proxy.n_layer, n_head=proxy.n_head,
        n_positions=int(ctx.policy.config.n_positions),
    )  # fmt: skip
    return n_parameters(model)


def stage_scaling(ctx: StudyContext, train: Pairs) -> ScalingResult | None:
    """Sample the pools, train and score every cell, then analyse them."""
    cfg = ctx.cfg.scaling
    if cfg is None:
        return None
    t0 = time.perf_counter()
    workers = ctx.cfg.runtime.workers
    pools = [s for s in cfg.seeds if not ctx.run.done(f"scaling:pool:{s}")]

    def pool_job(s: int) -> Job:
        return Job(
            f"scaling pool, seed {s}", lambda: _pool(ctx, cfg, s), remote_call(remote_pool, s)
        )

    run_jobs(
        [pool_job(s) for s in pools],
        workers=workers,
        finished=lambda i: ctx.run.mark_done(f"scaling:pool:{pools[i]}"),
        log=ctx.log,
        ray=ray_runtime(ctx),
    )
    params = {p.name: _n_params(ctx, p) for p in ctx.cfg.proxies}
    cells = [(p, n, s) for p in ctx.cfg.proxies for n in cfg.n_pairs for s in cfg.seeds]
    todo = [c for c in cells if not ctx.run.done(_stage(*c))]
    todo.sort(key=lambda c: -params[c[0].name] * c[1])  # the longest first: fewer idle workers

    def cell_job(p: ProxyConfig, n: int, s: int) -> Job:
        return Job(
            f"scaling {p.name}, {n} pairs, seed {s}",
            lambda: _cell(ctx, p, n, s, train),
            remote_call(remote_cell, p.name, n, s),
        )

    def finished(i: int) -> None:
        p, n, s = todo[i]
        info = json.loads((cell_dir(ctx, p.name, n, s) / "info.json").read_text())
        ctx.run.mark_done(_stage(p, n, s), info)

    run_jobs(
        [cell_job(p, n, s) for p, n, s in todo],
        workers=workers,
        finished=finished,
        log=ctx.log,
        ray=ray_runtime(ctx),
    )
    summary = analyse_scaling(ctx, cfg, params)
    summary["rl"] = scaling_rl(ctx, cfg, params)
    summary["seconds"] = time.perf_counter() - t0
    summary["workers"] = workers
    atomic_write_json(ctx.run.path("scaling", "summary.json"), summary)
    return ScalingResult(summary=summary)


def _stage(proxy: ProxyConfig, n: int, seed: int) -> str:
    return f"scaling:{proxy.name}:{n}:{seed}"
