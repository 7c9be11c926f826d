"""Study stage 8: mitigations of overoptimization compared on equal footing (METHODS.md §4).

One ensemble proxy of the study (Coste et al. 2023: 5 members differing by seed, 25% label
noise) supplies the rewards; the baseline is a single member (``member``), unmitigated.

- **Best-of-n** (:mod:`proxygap.study.mitigation_bon`): for every seed a fresh pool; the single
  member and each ensemble aggregation select from it. Intervals are over seeds.
- **Arms** (:mod:`proxygap.study.mitigation_arms`): every arm of ``rl`` (reward, transforms,
  post-step hook, KL coefficient and reference, constraint, or Quark) is trained with every
  seed on the same prompts and settings, one resumable stage ``mitigation:<name>:<seed>`` each,
  writing ``mitigations/<name>/seed-<s>/history.json``. Intervals are over seeds. Arms with a
  constraint run after the arm their proxy points come from. With ``runtime.workers > 1`` the
  runs go to that many forked processes (Linux); each run seeds itself, so the results do not
  depend on the number of workers.

Units. Gold is in units of its standard deviation over base-policy samples (the held-out pair
responses), relative to the base policy (RL) or to n = 1 (best-of-n). The proxy reported is the
untransformed reward each arm optimises in units of its own standard deviation over those
samples, so ``proxy - gold`` (the proxy-gold gap) compares like with like. ``ensemble/std`` is
the mean over samples of the population standard deviation of the K members (each
standardised on base-policy samples, :mod:`proxygap.study.mitigation_scoring`), measured
for every arm on the evaluator's samples; its growth is the ratio of its value at the last
evaluation to its value at step 0 (Coste et al. Fig. 7: it grows several-fold under mean
optimisation and stays nearly flat under UWO).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from proxygap.config import MitigationRunConfig, MitigationStudyConfig
from proxygap.data.preferences import Pairs
from proxygap.store.atomic import atomic_write_json
from proxygap.study.env import Env, sample_responses
from proxygap.study.mitigation_arms import ArmContext, References, needs_references, run_arm
from proxygap.study.mitigation_bon import BonVariant, stage_mitigation_bon
from proxygap.study.mitigation_scoring import MemberScorer
from proxygap.study.mitigation_stats import (
    QUANTITIES,
    proxy_points,
    rl_run_quantities,
    summarise_runs,
)
from proxygap.study.sft import stage_sft

__all__ = ["MitigationResult", "stage_mitigations"]

Task = tuple[MitigationRunConfig, int, np.ndarray | None]  # arm, seed, proxy points


@dataclass
class MitigationResult:
    config: MitigationStudyConfig
    bon: list[BonVariant] = field(default_factory=list)
    histories: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    points: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> component -> point


def _references(env: Env, members: MemberScorer, prompts: list[str]) -> References:
    """``reference_samples`` initial-policy samples of every distinct training prompt, scored
    by every member."""
    m = env.cfg.mitigations
    assert m is not None
    unique = list(dict.fromkeys(prompts))
    M = m.reference_samples
    responses = sample_responses(
        env,
        unique,
        n=M,
        temperature=m.settings.temperature,
        max_new=m.settings.max_new_tokens,
        seed=env.cfg.seed * 1000 + 9,
        desc=None,
    )
    texts = env.task.join([unique[i // M] for i in range(len(responses))], responses)
    return References(unique, responses, texts, members(texts).reshape(len(unique), M, -1))


# ---------------------------------------------------------------- running the arms
_CONTEXT: ArmContext | None = None  # what a forked worker inherits


def _work(arm: MitigationRunConfig, seed: int, points: np.ndarray | None) -> list[dict[str, Any]]:
    assert _CONTEXT is not None  # the config allows workers > 1 only with threads: 1
    return run_arm(_CONTEXT, arm, seed, points=points)


def _stage(arm: MitigationRunConfig, seed: int) -> str:
    return f"mitigation:{arm.name}:{seed}"


def _run(ctx: ArmContext, tasks: list[Task]) -> None:
    """Run the tasks (none of them done yet), marking each stage done as it finishes."""
    global _CONTEXT
    env = ctx.env
    workers = min(env.cfg.runtime.workers, len(tasks))

    def finished(arm: MitigationRunConfig, seed: int) -> None:
        env.run.mark_done(_stage(arm, seed), {"mitigation": arm.name, "seed": seed})

    if workers <= 1 or not sys.platform.startswith("linux"):
        if workers > 1:
            env.log("runtime.workers > 1 needs Linux (fork); running the arms one at a time")
        for arm, seed, points in tasks:
            env.log(f"mitigation {arm.name}, seed {seed}")
            run_arm(ctx, arm, seed, points=points)
            finished(arm, seed)
        return
    env.log(f"{len(tasks)} mitigation runs on {workers} worker processes")
    _CONTEXT = ctx
    errors: list[tuple[str, BaseException]] = []
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        futures = {pool.submit(_work, *t): t for t in tasks}
        for fut in as_completed(futures):
            arm, seed, _ = futures[fut]
            if fut.cancelled():
                continue
            err = fut.exception()
            if err is None:
                finished(arm, seed)
                env.log(f"mitigation {arm.name}, seed {seed}: done")
                continue
            errors.append((f"mitigation {arm.name}, seed {seed}", err))
            env.log(f"mitigation {arm.name}, seed {seed} failed: {err}")
            for f in futures:  # start nothing new; the runs under way finish and are kept
                f.cancel()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _CONTEXT = None
    if errors:
        where, err = errors[0]
        raise RuntimeError(
            f"{where} failed: {err} ({len(errors)} failed run(s); the finished runs are kept "
            "and a new invocation resumes from them)"
        ) from err


def _histories(env: Env, arm: MitigationRunConfig, seeds: list[int]) -> list[list[dict]]:
    folder = env.run.dir / "mitigations" / arm.name
    return [json.loads((folder / f"seed-{s}" / "history.json").read_text()) for s in seeds]


def stage_mitigations(
    env: Env, train: Pairs, held: Pairs, gold_scale: float
) -> MitigationResult | None:
    """Best-of-n variants and every (arm, seed) run; writes ``mitigations/summary.json``."""
    m = env.cfg.mitigations
    if m is None:
        return None
    out = MitigationResult(m)
    members = MemberScorer(env, held, m.proxy)
    out.bon = stage_mitigation_bon(env, members, m, gold_scale=gold_scale)
    if m.rl:
        policies = {"base": env.policy}
        if env.cfg.sft is not None:
            policies |= stage_sft(env, train, env.cfg.sft)
        s = m.settings
        prompts = env.task.prompts(s.steps * s.prompts_per_step, seed=env.cfg.seed * 1000 + 8)
        ctx = ArmContext(env, members, gold_scale, prompts, policies, held=held)
        todo = [(a, seed) for a in m.rl for seed in m.seeds if not env.run.done(_stage(a, seed))]
        if any(needs_references(a) for a, _ in todo):
            ctx.refs = _references(env, members, prompts)
        # constrained arms need the proxy points of an arm of the first wave
        for wave in ([a for a in m.rl if a.constraint is None], [a for a in m.rl if a.constraint]):
            tasks: list[Task] = []
            for arm in wave:
                points = None
                if arm.constraint is not None:
                    source = out.histories[arm.constraint.points_from]
                    values = proxy_points(source, arm.components)
                    out.points[arm.name] = dict(zip(arm.components, values.tolist(), strict=True))
                    points = values
                tasks += [(arm, seed, points) for a, seed in todo if a is arm]
            if tasks:
                _run(ctx, tasks)
            for arm in wave:
                out.histories[arm.name] = _histories(env, arm, m.seeds)
        for arm in m.rl:
            runs = [rl_run_quantities(h) for h in out.histories[arm.name]]
            out.summary[arm.name] = summarise_runs(runs)
    atomic_write_json(
        env.run.path("mitigations", "summary.json"),
        {
            "quantities": list(QUANTITIES),
            "bon": {v.name: v.summary for v in out.bon},
            "bon_runs": {v.name: v.runs for v in out.bon},
            "rl": out.summary,
            "proxy_points": out.points,
            "seeds": m.seeds,
        },
    )
    return out
