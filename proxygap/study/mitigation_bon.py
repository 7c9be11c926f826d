"""Best-of-n in the mitigation study: one fresh pool per seed, every selection rule.

For every seed of the study (stage ``mitigation-bon:<seed>``) the base policy draws
``pool_size`` samples for each of the same ``n_prompts`` prompts (its own sampling seed), and
gold and every member of the ensemble proxy score them (``mitigations/bon/seed-<s>.npz``:
``gold`` ``(P, N)`` raw, ``members`` ``(P, N, K)`` standardised on base-policy samples). The single
member and each aggregation then select from the same pool, so the rules are compared on
common random numbers; the seeds give the intervals (a fresh pool is what another run of
best-of-n would draw). Coste et al. (2023) vary the reward models' training seed instead; here
the ensemble is fixed and the sampling varies, as in the RL arms.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from proxygap.config import MitigationBonConfig, MitigationStudyConfig
from proxygap.errors import NonFiniteError
from proxygap.estimators.bon import best_of_n, kl_bon
from proxygap.optimize.bon import bon_curve, log_spaced_ns
from proxygap.rewards.proxy import ProxyScorer, aggregate_members
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_npz
from proxygap.study.context import StudyContext, sample_responses
from proxygap.study.mitigation_stats import summarise_runs
from proxygap.study.results import BonVariant

__all__ = ["bon_seed_quantities", "stage_mitigation_bon"]


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


def stage_mitigation_bon(
    ctx: StudyContext, scorer: ProxyScorer, m: MitigationStudyConfig
) -> list[BonVariant]:
    """Every selection rule on every seed's pool; quantities per seed, summaries over seeds."""
    b = m.bon
    if b is None:
        return []
    pools = [_pool(ctx, scorer, b, seed) for seed in m.seeds]
    golds = [p["gold"] / ctx.gold_scale for p in pools]  # (P, N) each, SD units
    stds = [p["members"].std(axis=-1) for p in pools]  # (P, N) population std across members
    ns = log_spaced_ns(b.pool_size, b.n_points)
    ns = ns if ns[0] == 1 else np.concatenate([[1], ns])
    d = np.sqrt(kl_bon(torch.from_numpy(ns)).numpy())
    out = []
    for method in ["single", *b.methods]:

        def select(members: np.ndarray, method: str = method) -> np.ndarray:
            return aggregate_members(members, method, member=m.member, lam=b.uwo_lambda)

        # SD on base-policy samples
        scale = float(select(scorer.standardised_reference).std()) or 1.0
        runs, selects = [], []
        for pool, gold, std in zip(pools, golds, stds, strict=True):
            score = select(pool["members"]) / scale  # (P, N)
            values = np.stack([gold, score, std], axis=-1)
            res = best_of_n(torch.from_numpy(score), torch.from_numpy(values), torch.from_numpy(ns))
            runs.append(bon_seed_quantities(res.per_prompt.numpy(), d))
            selects.append(score)
        curve = bon_curve(method, np.concatenate(selects), np.concatenate(golds), ns=ns)
        out.append(BonVariant(method, curve, runs, summarise_runs(runs)))
    return out
