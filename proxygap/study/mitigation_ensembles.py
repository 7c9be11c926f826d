"""The mitigation study's ensembles: one fresh draw per study seed (docs/methods.md §4).

Coste et al. (2023) compare ensembles against single reward models trained with other seeds; a
conclusion drawn from one ensemble rests on that one draw of its members. With
``mitigations.ensembles: per_seed`` every seed ``s`` of the study trains its own ``K`` members of
the ensemble proxy (stage ``proxy:<name>:seed-<s>``, folder ``proxies/<name>/seed-<s>/``): the
same pairs, labels and label noise as the proxy, new initialisation and data order, with
training seeds from the named stream ``mitigation_members`` (:func:`member_seeds`). Seeds then
vary both the reward models and the sampling, so intervals over seeds cover both. With
``fixed`` every seed uses the proxy's one trained ensemble. The ensembles of different seeds are
trained on ``runtime.workers`` processes, one seed per job.
"""

from __future__ import annotations

from typing import Any

from proxygap.data.preferences import Pairs
from proxygap.models.loading import load_reward_model
from proxygap.rewards.proxy import ProxyScorer
from proxygap.seeds import mix, study_seed
from proxygap.study.context import StudyContext, reference_texts
from proxygap.study.data import train_members
from proxygap.study.remote import remote_call
from proxygap.study.scoring import proxy_config, proxy_scorer
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["member_seeds", "remote_ensemble", "stage_ensembles"]


def member_seeds(study: int, seed: int, k: int) -> list[int]:
    """Training seeds of the ``k`` members drawn for mitigation seed ``seed`` of a study seeded
    ``study``: 32-bit words of ``SeedSequence([study_seed(study, "mitigation_members"), seed,
    j])`` for ``j < k`` (distinct across seeds and members, fixed for a given config)."""
    base = study_seed(study, "mitigation_members")
    return [mix(base, seed, j) for j in range(k)]


def _stage(name: str, seed: int) -> str:
    return f"proxy:{name}:seed-{seed}"


def _scorer(ctx: StudyContext, name: str, seed: int) -> ProxyScorer:
    key = f"{name}@seed-{seed}"
    if key not in ctx.proxies:
        proxy = proxy_config(ctx, name)
        folder = ctx.run.dir / "proxies" / name / f"seed-{seed}"
        members = [load_reward_model(folder / f"member-{k}") for k in range(proxy.ensemble)]
        ctx.proxies[key] = ProxyScorer(
            name,
            members,
            ctx.tokenizer,
            reference_texts(ctx),
            aggregation=proxy.aggregation,
            uwo_lambda=proxy.uwo_lambda,
            batch_size=ctx.cfg.runtime.score_batch_size,
        )
    return ctx.proxies[key]


def _train(ctx: StudyContext, train: Pairs, seed: int) -> dict[str, Any]:
    """Train the members of seed ``seed``'s ensemble into its folder."""
    m = ctx.cfg.mitigations
    assert m is not None
    proxy = proxy_config(ctx, m.proxy)
    return train_members(
        ctx,
        proxy,
        train,
        seeds=member_seeds(ctx.cfg.seed, seed, proxy.ensemble),
        folder=ctx.run.path("proxies", proxy.name, f"seed-{seed}"),
    )


def remote_ensemble(ctx: StudyContext, train: Pairs, seed: int) -> None:
    """One seed's ensemble as a Ray task trains it (:mod:`proxygap.study.remote`)."""
    _train(ctx, train, seed)


def stage_ensembles(ctx: StudyContext, train: Pairs) -> dict[int, ProxyScorer]:
    """The ensemble of every mitigation seed, trained where not done yet; seed -> scorer."""
    m = ctx.cfg.mitigations
    assert m is not None
    if m.ensembles == "fixed":
        scorer = proxy_scorer(ctx, m.proxy)
        return {seed: scorer for seed in m.seeds}
    proxy = proxy_config(ctx, m.proxy)
    todo = [s for s in m.seeds if not ctx.run.done(_stage(proxy.name, s))]
    infos: dict[int, Any] = {}

    def job(seed: int) -> Job:
        def train_one() -> None:
            infos[seed] = _train(ctx, train, seed)

        label = f"train the ensemble {proxy.name} of seed {seed}"
        return Job(label, train_one, remote_call(remote_ensemble, seed))

    def finished(i: int) -> None:
        seed = todo[i]
        info = infos.get(seed, {})  # filled when the job ran in this process
        seeds = member_seeds(ctx.cfg.seed, seed, proxy.ensemble)
        ctx.run.mark_done(_stage(proxy.name, seed), {"member_seeds": seeds} | info)

    run_jobs(
        [job(s) for s in todo],
        workers=ctx.cfg.runtime.workers,
        finished=finished,
        log=ctx.log,
        ray=ray_runtime(ctx),
    )
    return {seed: _scorer(ctx, proxy.name, seed) for seed in m.seeds}
