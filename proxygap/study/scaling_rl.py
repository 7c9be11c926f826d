"""Study stage: online RL against some of the scaling study's proxies (``scaling.rl``).

For every size of ``scaling.rl.sizes`` and seed of ``scaling.rl.seeds`` one run (stage
``scaling:rl:<size>:<seed>``, folder ``scaling/rl/<size>/seed-<seed>/``) optimises a fresh copy
of the base policy with :func:`proxygap.study.rl.train_from_base` against the reward model
that size trained for best-of-n on ``scaling.rl.n_pairs`` pairs with that seed (read from its
cell, not retrained). The reward is the proxy standardised on the base-policy reference
samples (centred and divided by its standard deviation there), so proxies whose scores spread
differently move the policy with the same step size; the evaluation reports it in the same
units, next to gold in its SD units. All sizes of one seed share the training prompts, the
held-out evaluation prompts and the RL seed. Runs go to ``runtime.workers`` forked processes
(or Ray tasks: ``runtime.backend``), largest proxy first; a run killed midway continues from
its newest checkpoint.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import numpy as np

from proxygap.analysis.scaling_rl import rl_scaling
from proxygap.config.scaling import ScalingConfig, ScalingRLConfig
from proxygap.data.preferences import Pairs
from proxygap.models.loading import load_reward_model
from proxygap.rewards.proxy import ProxyScorer
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_text
from proxygap.study.context import StudyContext, reference_texts
from proxygap.study.remote import remote_call
from proxygap.study.rl import train_from_base
from proxygap.study.scaling_analysis import cell_dir
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["remote_run", "scaling_rl"]


def _n_pairs(cfg: ScalingConfig, rl: ScalingRLConfig) -> int:
    return rl.n_pairs if rl.n_pairs is not None else max(cfg.n_pairs)


def _run(ctx: StudyContext, rl: ScalingRLConfig, size: str, n: int, seed: int) -> None:
    folder = ctx.run.dir / "scaling" / "rl" / size / f"seed-{seed}"
    model = load_reward_model(cell_dir(ctx, size, n, seed) / "member-0")
    proxy = ProxyScorer(
        f"{size}-n{n}-s{seed}", [model], ctx.tokenizer, reference_texts(ctx),
        batch_size=ctx.cfg.runtime.score_batch_size,
    )  # fmt: skip
    scale = float(proxy.scale[0])

    def reward(texts: list[str]) -> np.ndarray:
        return proxy.reward(texts) / scale

    cfg = rl.settings.model_copy(update={"seed": study_seed(ctx.cfg.seed, "scaling_rl", seed)})
    prompts = ctx.task.prompts(4096, seed=study_seed(ctx.cfg.seed, "scaling_rl_prompts", seed))
    result = train_from_base(
        ctx, cfg, reward_fn=reward, eval_proxy=reward, prompts=prompts,
        eval_seed=study_seed(ctx.cfg.seed, "scaling_rl_eval", seed), proxy=proxy,
        run=f"scaling/rl/{size}/seed-{seed}", checkpoint_dir=folder / "checkpoints",
    )  # fmt: skip
    atomic_write_json(folder / "history.json", result.history)
    atomic_write_json(folder / "examples.json", result.examples)
    atomic_write_text(folder / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in result.steps))
    atomic_write_json(folder / "info.json", {"proxy_scale": scale, "rl_seed": cfg.seed})


def remote_run(ctx: StudyContext, train: Pairs, size: str, seed: int) -> None:
    """One RL run as a Ray task runs it (:mod:`proxygap.study.remote`)."""
    cfg = ctx.cfg.scaling
    assert cfg is not None and cfg.rl is not None
    _run(ctx, cfg.rl, size, _n_pairs(cfg, cfg.rl), seed)


def scaling_rl(
    ctx: StudyContext, cfg: ScalingConfig, params: dict[str, int]
) -> dict[str, Any] | None:
    """Run the runs not yet done, then summarise all of them (``None`` without ``cfg.rl``)."""
    rl = cfg.rl
    if rl is None:
        return None
    n = _n_pairs(cfg, rl)
    folder = ctx.run.dir / "scaling" / "rl"
    runs = [(size, s) for size in rl.sizes for s in rl.seeds]
    todo = [r for r in runs if not ctx.run.done(_stage(*r))]
    todo.sort(key=lambda r: -params[r[0]])  # the largest proxies first

    def job(size: str, s: int) -> Job:
        return Job(
            f"scaling RL against {size} ({n} pairs), seed {s}",
            lambda: _run(ctx, rl, size, n, s),
            remote_call(remote_run, size, s),
        )

    def finished(i: int) -> None:
        size, s = todo[i]
        shutil.rmtree(folder / size / f"seed-{s}" / "checkpoints", ignore_errors=True)
        ctx.run.mark_done(_stage(size, s), {"n_pairs": n})

    run_jobs(
        [job(size, s) for size, s in todo],
        workers=ctx.cfg.runtime.workers,
        finished=finished,
        log=ctx.log,
        ray=ray_runtime(ctx),
    )
    histories = {
        size: [
            json.loads((folder / size / f"seed-{s}" / "history.json").read_text(encoding="utf-8"))
            for s in rl.seeds
        ]
        for size in rl.sizes
    }
    out = rl_scaling(histories, {s: params[s] for s in rl.sizes}, level=cfg.level)
    settings = rl.settings
    return out | {
        "n_pairs": n,
        "seeds": rl.seeds,
        "settings": {
            "algo": settings.algo, "steps": settings.steps, "kl_coef": settings.kl_coef,
            "batch_size": settings.batch_size, "lr": settings.lr,
            "eval_every": settings.eval_every, "eval_prompts": settings.eval_prompts,
        },
    }  # fmt: skip


def _stage(size: str, seed: int) -> str:
    return f"scaling:rl:{size}:{seed}"
