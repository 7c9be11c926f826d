"""Best-of-n in the mitigation study: one fresh pool per seed, every selection rule.

For every seed of the study (stage ``mitigation-bon:<seed>``) the base policy draws
``pool_size`` samples for each of the same ``n_prompts`` prompts (its own sampling seed), and
gold and every member of that seed's ensemble score them (``mitigations/bon/seed-<s>.npz``:
``gold`` ``(P, N)`` raw, ``members`` ``(P, N, K)`` standardised on base-policy samples). Every
member alone (``member-<k>``) and each aggregation then select from the same pool, so the rules
are compared on common random numbers. ``single`` is the average single member, as Coste et
al. (2023) compare ensembles against single reward models: per seed, each quantity is the mean
of the members' (:func:`average_member`; its ``turned_down`` is the share of members that turn
down). With per-seed ensembles (:mod:`proxygap.study.mitigation_ensembles`) the seeds vary the
reward models and the sampling; the intervals are over seeds.

Why an aggregation can fail to help is read from the pools (:func:`member_diagnostics`): the
members' ceilings (each member's gold peak), how correlated their errors against gold are, and
which member WCO's pick follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from proxygap.analysis.laws import fit_bon_law, overoptimization
from proxygap.config import MitigationBonConfig, MitigationStudyConfig
from proxygap.errors import NonFiniteError
from proxygap.estimators.bon import best_of_n, kl_bon
from proxygap.optimize.bon import BonCurve, log_spaced_ns
from proxygap.rewards.proxy import ProxyScorer, aggregate_members
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_npz
from proxygap.study.context import StudyContext, sample_responses
from proxygap.study.mitigation_stats import summarise_runs
from proxygap.study.results import BonVariant

__all__ = [
    "average_member",
    "bon_seed_quantities",
    "member_diagnostics",
    "stage_mitigation_bon",
]


def bon_seed_quantities(per_prompt: np.ndarray, d: np.ndarray) -> dict[str, float]:
    """The table's quantities for one seed's pool (see :mod:`proxygap.study.mitigation_stats`).

    Args:
        per_prompt: ``(P, J, 3)`` expected gold (SD units), proxy (SD units) and member std of
            the pick at each of ``J`` values of n (the first n = 1), per prompt.
        d: ``(J,)`` ``sqrt(KL_bon(n))``.

    The curve is the mean over prompts relative to n = 1; the peak is its argmax. ``turned_down``
    is 1 if the drop exceeds twice the standard error over prompts of the per-prompt drop.
    """
    if per_prompt.ndim != 3 or per_prompt.shape[2] != 3 or per_prompt.shape[1] != len(d):
        raise ValueError(f"per_prompt must be (P, J={len(d)}, 3), got {per_prompt.shape}")
    rel = per_prompt[..., :2] - per_prompt[:, :1, :2]  # (P, J, 2) relative to n = 1
    gold, proxy = rel[..., 0], rel[..., 1]
    std = per_prompt[..., 2].mean(axis=0)  # (J,)
    curve = gold.mean(axis=0)
    k = int(np.argmax(curve))
    drop = gold[:, k] - gold[:, -1]  # (P,)
    P = gold.shape[0]
    drop_se = float(drop.std(ddof=1) / np.sqrt(P)) if P > 1 else 0.0
    return {
        "gold_peak": float(curve[k]),
        "gold_end": float(curve[-1]),
        "d_peak": float(d[k]),
        "drop": float(drop.mean()),
        "gap_end": float(proxy[:, -1].mean() - curve[-1]),
        "std_growth": float(std[-1] / std[0]) if std[0] > 0 else float("nan"),
        "turned_down": float(drop.mean() > 2 * drop_se),
    }


def _pool(
    ctx: StudyContext, scorer: ProxyScorer, b: MitigationBonConfig, seed: int
) -> dict[str, Any]:
    path = ctx.run.path("mitigations", "bon", f"seed-{seed}.npz")
    stage = f"mitigation-bon:{seed}"
    if ctx.run.done(stage):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    prompts = ctx.task.prompts(
        b.n_prompts, seed=study_seed(ctx.cfg.seed, "mitigation_bon_prompts"), heldout=True
    )
    N = b.pool_size
    responses = sample_responses(
        ctx,
        prompts,
        n=N,
        temperature=b.temperature,
        max_new=b.max_new_tokens,
        seed=study_seed(ctx.cfg.seed, "mitigation_bon_pool", index=seed),
        desc=f"sample best-of-n pool (seed {seed})",
    )
    texts = ctx.task.join([prompts[i // N] for i in range(len(responses))], responses)
    gold = np.asarray(ctx.gold_fn(texts), dtype=np.float64).reshape(len(prompts), N)
    if not np.isfinite(gold).all():
        raise NonFiniteError(f"stage {stage!r}: non-finite gold scores on the pool")
    out = {"gold": gold, "members": scorer.standardised(texts).reshape(len(prompts), N, -1)}
    atomic_write_npz(path, out)
    ctx.run.mark_done(stage, {"seed": seed})
    return out


def average_member(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The average single member on one seed: the mean over members (``runs``, one dict of
    :func:`bon_seed_quantities` per member) of every quantity; ``turned_down`` becomes the share
    of members that turn down."""
    if not runs:
        raise ValueError("no member runs to average")
    return {q: float(np.mean([r[q] for r in runs])) for q in runs[0]}


def member_diagnostics(gold: np.ndarray, members: np.ndarray, wco: np.ndarray) -> dict[str, Any]:
    """Why ensembling can fail to help, from one seed's pool.

    Args:
        gold: ``(P, N)`` gold in SD units.
        members: ``(P, N, K)`` member scores standardised on base-policy samples.
        wco: ``(P, N)`` the WCO selection score (the members' minimum).

    Returns ``error_corr``: the mean over member pairs of the Pearson correlation, over the pool,
    of their errors ``member_k - gold`` (1: the members err alike, and no aggregation of them can
    undo the error); ``wco_same_pick``: per member, the share of prompts whose n = N pick under
    WCO is that member's own pick; ``wco_argmin``: per member, the share of prompts on which that
    member is the minimum at WCO's pick (the member WCO follows).
    """
    P, N, K = members.shape
    err = (members - gold[..., None]).reshape(-1, K)  # (P * N, K)
    corr = np.corrcoef(err, rowvar=False) if K > 1 else np.ones((1, 1))
    off = corr[~np.eye(K, dtype=bool)]
    pick = np.argmax(wco, axis=1)  # (P,)
    own = np.argmax(members, axis=1)  # (P, K)
    at_pick = members[np.arange(P), pick]  # (P, K)
    lowest = np.argmin(at_pick, axis=1)  # (P,)
    return {
        "error_corr": float(off.mean()) if off.size else 1.0,
        "wco_same_pick": [float((own[:, k] == pick).mean()) for k in range(K)],
        "wco_argmin": [float((lowest == k).mean()) for k in range(K)],
    }


def curve_from_per_prompt(name: str, per_prompt: np.ndarray, ns: np.ndarray) -> BonCurve:
    """A best-of-n curve from per-prompt expected gold and selection score ``(P, J, 2)`` at
    ``ns`` (the first n = 1), as :func:`proxygap.optimize.bon.bon_curve` builds it from a pool:
    means over prompts relative to n = 1, standard errors over prompts, law fit and turn-down."""
    rel = per_prompt - per_prompt[:, :1, :]
    P = rel.shape[0]
    mean = rel.mean(axis=0)
    se = rel.std(axis=0, ddof=1) / np.sqrt(P) if P > 1 else np.zeros_like(mean)
    kl = kl_bon(torch.from_numpy(ns)).numpy()
    d = np.sqrt(kl)
    fit_se = np.maximum(se[:, 0], se[1:, 0].min() if len(ns) > 1 else 1.0)
    return BonCurve(
        name=name, ns=ns, kl=kl, d=d, gold=mean[:, 0], gold_se=se[:, 0], proxy=mean[:, 1],
        proxy_se=se[:, 1], fit=fit_bon_law(d, mean[:, 0], fit_se if P > 1 else None),
        turn=overoptimization(d, mean[:, 0], se[:, 0]),
    )  # fmt: skip


def _select(scorer: ProxyScorer, method: str, lam: float) -> tuple[Any, float]:
    """``members (..., K) -> (...)`` for a rule (``member-<k>`` or an aggregation) and its SD on
    base-policy samples (the selection score is reported in those units)."""
    if method.startswith("member-"):
        k = int(method.removeprefix("member-"))

        def fn(members: np.ndarray) -> np.ndarray:
            return aggregate_members(members, "single", member=k)
    else:

        def fn(members: np.ndarray) -> np.ndarray:
            return aggregate_members(members, method, lam=lam)

    return fn, float(fn(scorer.standardised_reference).std()) or 1.0


def stage_mitigation_bon(
    ctx: StudyContext, ensembles: Mapping[int, ProxyScorer], m: MitigationStudyConfig
) -> tuple[list[BonVariant], list[dict[str, Any]]]:
    """Every selection rule on every seed's pool (scored by that seed's ensemble): the average
    single member (``single``), each aggregation, each member; quantities per seed and
    summaries over seeds; and :func:`member_diagnostics` per seed."""
    b = m.bon
    if b is None:
        return [], []
    pools = [_pool(ctx, ensembles[seed], b, seed) for seed in m.seeds]
    golds = [p["gold"] / ctx.gold_scale for p in pools]  # (P, N) each, SD units
    stds = [p["members"].std(axis=-1) for p in pools]  # (P, N) population std across members
    K = pools[0]["members"].shape[-1]
    ns = log_spaced_ns(b.pool_size, b.n_points)
    ns = ns if ns[0] == 1 else np.concatenate([[1], ns])
    d = np.sqrt(kl_bon(torch.from_numpy(ns)).numpy())
    per_prompt: dict[str, list[np.ndarray]] = {}  # rule -> per seed (P, J, 3)
    runs: dict[str, list[dict[str, float]]] = {}
    members = [f"member-{k}" for k in range(K)]
    for method in [*b.methods, *members]:
        for seed, pool, gold, std in zip(m.seeds, pools, golds, stds, strict=True):
            fn, scale = _select(ensembles[seed], method, b.uwo_lambda)
            score = fn(pool["members"]) / scale  # (P, N)
            values = np.stack([gold, score, std], axis=-1)
            res = best_of_n(torch.from_numpy(score), torch.from_numpy(values), torch.from_numpy(ns))
            per_prompt.setdefault(method, []).append(res.per_prompt.numpy())
            runs.setdefault(method, []).append(bon_seed_quantities(per_prompt[method][-1], d))
    S = len(m.seeds)
    runs["single"] = [average_member([runs[k][i] for k in members]) for i in range(S)]
    per_prompt["single"] = [np.mean([per_prompt[k][i] for k in members], axis=0) for i in range(S)]
    out = []
    for method in ["single", *b.methods, *members]:
        curve = curve_from_per_prompt(method, np.concatenate(per_prompt[method])[..., :2], ns)
        out.append(BonVariant(method, curve, runs[method], summarise_runs(runs[method])))
    diagnostics = []
    for seed, pool, gold in zip(m.seeds, pools, golds, strict=True):
        wco = aggregate_members(pool["members"], "wco")
        diag = member_diagnostics(gold, pool["members"], wco)
        diag["ceilings"] = [runs[k][m.seeds.index(seed)]["gold_peak"] for k in members]
        diagnostics.append({"seed": seed, **diag})
    return out, diagnostics
