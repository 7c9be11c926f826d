"""Study stage 8: mitigations of overoptimization compared on equal footing (docs/methods.md §4).

One ensemble proxy of the study (Coste et al. 2023: 5 members differing by seed, 25% label
noise) supplies the rewards; with ``ensembles: per_seed`` every seed draws its own ensemble
(:mod:`proxygap.study.mitigation_ensembles`), so intervals over seeds cover the draw of the
reward models as well as the sampling. The baseline is a single member, unmitigated: in
best-of-n every member of each seed's ensemble and their average (Coste et al. compare against
single reward models of other seeds); in RL member ``member`` of each seed's ensemble, a fresh
draw per seed.

- **Best-of-n** (:mod:`proxygap.study.mitigation_bon`): for every seed a fresh pool; the single
  member and each ensemble aggregation select from it. Intervals are over seeds.
- **Arms** (:mod:`proxygap.study.mitigation_arms`): every arm of ``rl`` (reward, transforms,
  post-step hook, KL coefficient and reference, constraint, or Quark) is trained with every
  seed on the same prompts and settings, one resumable stage ``mitigation:<name>:<seed>`` each,
  writing ``mitigations/<name>/seed-<s>/history.json``; a run killed midway continues from its
  newest checkpoint (``seed-<s>/checkpoints/``, deleted once the stage is done). Intervals
  are over seeds. Arms with a constraint run after the arm their proxy points come from. With
  ``runtime.workers > 1`` the runs go to that many forked processes (Linux), or to Ray tasks
  with ``runtime.backend: ray`` (:func:`remote_arm`); each run seeds itself, so the results do
  not depend on the number of workers or where they run.

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
import shutil
from pathlib import Path

import numpy as np

from proxygap.config import MitigationRunConfig
from proxygap.data.preferences import Pairs
from proxygap.rewards.proxy import ProxyScorer
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json
from proxygap.study.context import StudyContext, sample_responses
from proxygap.study.mitigation_arms import ArmContext, References, needs_references, run_arm
from proxygap.study.mitigation_bon import stage_mitigation_bon
from proxygap.study.mitigation_ensembles import stage_ensembles
from proxygap.study.mitigation_stats import (
    QUANTITIES,
    proxy_points,
    rl_run_quantities,
    summarise_runs,
)
from proxygap.study.remote import remote_call, shared
from proxygap.study.results import MitigationResult
from proxygap.study.sft import stage_sft
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["remote_arm", "stage_mitigations"]

ArmRun = tuple[MitigationRunConfig, int, np.ndarray | None]  # arm, seed, proxy points


def _references(
    ctx: StudyContext, ensembles: dict[int, ProxyScorer], prompts: list[str]
) -> References:
    """``reference_samples`` initial-policy samples of every distinct training prompt, scored
    by every member of every seed's ensemble (standardised)."""
    m = ctx.cfg.mitigations
    assert m is not None
    unique = list(dict.fromkeys(prompts))
    M = m.reference_samples
    responses = sample_responses(
        ctx,
        unique,
        n=M,
        temperature=m.settings.temperature,
        max_new=m.settings.max_new_tokens,
        seed=study_seed(ctx.cfg.seed, "reference_samples"),
        desc=None,
    )
    texts = ctx.task.join([unique[i // M] for i in range(len(responses))], responses)
    scores = {
        seed: members.standardised(texts).reshape(len(unique), M, -1)
        for seed, members in ensembles.items()
    }
    return References(unique, responses, texts, scores)


# ---------------------------------------------------------------- running the arms
def _stage(arm: MitigationRunConfig, seed: int) -> str:
    return f"mitigation:{arm.name}:{seed}"


def _run(arms: ArmContext, runs: list[ArmRun]) -> None:
    """Run the runs (none of them done yet) on ``runtime.workers`` processes or Ray tasks,
    marking each stage done as it finishes (:func:`proxygap.study.workers.run_jobs`)."""
    ctx = arms.study

    def job(arm: MitigationRunConfig, seed: int, points: np.ndarray | None) -> Job:
        return Job(
            f"mitigation {arm.name}, seed {seed}",
            lambda: run_arm(arms, arm, seed, points=points),
            remote_call(remote_arm, arm.name, seed, None if points is None else points.tolist()),
        )

    def finished(i: int) -> None:
        arm, seed, _ = runs[i]
        ctx.run.mark_done(_stage(arm, seed), {"mitigation": arm.name, "seed": seed})
        shutil.rmtree(_folder(ctx, arm) / f"seed-{seed}" / "checkpoints", ignore_errors=True)

    run_jobs(
        [job(arm, seed, p) for arm, seed, p in runs],
        workers=ctx.cfg.runtime.workers,
        finished=finished,
        log=ctx.log,
        ray=ray_runtime(ctx),
    )


def _arm_context(ctx: StudyContext, train: Pairs, ensembles: dict[int, ProxyScorer]) -> ArmContext:
    """What the arms share, but the references: the start policies and the training prompts."""
    m = ctx.cfg.mitigations
    assert m is not None
    policies = {"base": ctx.policy}
    if ctx.cfg.sft is not None:
        policies |= stage_sft(ctx, train, ctx.cfg.sft)
    s = m.settings
    prompt_seed = study_seed(ctx.cfg.seed, "mitigation_train_prompts")
    prompts = ctx.task.prompts(s.steps * s.prompts_per_step, seed=prompt_seed)
    return ArmContext(ctx, ensembles, prompts, policies)


def remote_arm(
    ctx: StudyContext, train: Pairs, arm: str, seed: int, points: list[float] | None
) -> None:
    """One arm's run as a Ray task runs it (:mod:`proxygap.study.remote`): the arms' context
    (ensembles, start policies, prompts and, where an arm needs them, the references) is read
    back or rebuilt once per worker process."""
    m = ctx.cfg.mitigations
    assert m is not None
    arms = shared(
        ctx, "mitigations:arms", lambda: _arm_context(ctx, train, stage_ensembles(ctx, train))
    )
    spec = next(a for a in m.rl if a.name == arm)
    if needs_references(spec) and arms.refs is None:
        arms.refs = _references(ctx, arms.ensembles, arms.prompts)
    run_arm(arms, spec, seed, points=None if points is None else np.asarray(points))


def _folder(ctx: StudyContext, arm: MitigationRunConfig) -> Path:
    return ctx.run.dir / "mitigations" / arm.name


def _histories(ctx: StudyContext, arm: MitigationRunConfig, seeds: list[int]) -> list[list[dict]]:
    folder = _folder(ctx, arm)
    for s in seeds:  # a kill after a run's stage was marked done can leave its checkpoint
        shutil.rmtree(folder / f"seed-{s}" / "checkpoints", ignore_errors=True)
    return [json.loads((folder / f"seed-{s}" / "history.json").read_text()) for s in seeds]


def stage_mitigations(ctx: StudyContext, train: Pairs) -> MitigationResult | None:
    """Best-of-n variants and every (arm, seed) run; writes ``mitigations/summary.json``."""
    m = ctx.cfg.mitigations
    if m is None:
        return None
    out = MitigationResult(m)
    ensembles = stage_ensembles(ctx, train)
    out.bon, out.diagnostics = stage_mitigation_bon(ctx, ensembles, m)
    if m.rl:
        arms = _arm_context(ctx, train, ensembles)
        todo = [(a, seed) for a in m.rl for seed in m.seeds if not ctx.run.done(_stage(a, seed))]
        # Ray tasks build their own references (remote_arm)
        if ray_runtime(ctx) is None and any(needs_references(a) for a, _ in todo):
            arms.refs = _references(ctx, ensembles, arms.prompts)
        # constrained arms need the proxy points of an arm of the first wave
        for wave in ([a for a in m.rl if a.constraint is None], [a for a in m.rl if a.constraint]):
            pending: list[ArmRun] = []
            for arm in wave:
                points = None
                if arm.constraint is not None:
                    source = out.histories[arm.constraint.points_from]
                    values = proxy_points(source, arm.components)
                    out.points[arm.name] = dict(zip(arm.components, values.tolist(), strict=True))
                    points = values
                pending += [(arm, seed, points) for a, seed in todo if a is arm]
            if pending:
                _run(arms, pending)
            for arm in wave:
                out.histories[arm.name] = _histories(ctx, arm, m.seeds)
        for arm in m.rl:
            runs = [rl_run_quantities(h) for h in out.histories[arm.name]]
            out.summary[arm.name] = summarise_runs(runs)
    atomic_write_json(
        ctx.run.path("mitigations", "summary.json"),
        {
            "quantities": list(QUANTITIES),
            "bon": {v.name: v.summary for v in out.bon},
            "bon_runs": {v.name: v.runs for v in out.bon},
            "bon_diagnostics": out.diagnostics,
            "ensembles": m.ensembles,
            "rl": out.summary,
            "proxy_points": out.points,
            "seeds": m.seeds,
        },
    )
    return out
