"""Study stage 8: mitigations of overoptimization compared on equal footing (METHODS.md §4).

One ensemble proxy of the study (Coste et al. 2023: 5 members differing by seed, 25% label
noise) supplies every reward. Its baseline is a single member (``member``), unmitigated.

- **Best-of-n**: the pool's member scores (``scores.npz``) select with the single member and
  with each ensemble aggregation of ``bon`` (mean, WCO, UWO with ``bon_uwo_lambda``, 0.5 in
  Coste et al.'s best-of-n). Intervals are over prompts.
- **RL**: every arm of ``rl`` (aggregation, reward transforms, post-step hook, KL coefficient) is
  trained with every seed of ``seeds`` on the same prompts and settings, one resumable stage
  ``mitigation:<name>:<seed>`` each, writing ``mitigations/<name>/seed-<s>/history.json``.
  Intervals are over seeds.

Units. Gold is in units of its standard deviation over base-policy samples (the held-out pair
responses), relative to the initial policy (RL) or to n = 1 (best-of-n). The proxy reported is
the untransformed reward each arm optimises (single member or aggregation, members centred on
the same base samples), in units of its own standard deviation over those samples, so
``proxy - gold`` (the proxy-gold gap) compares like with like. ``ensemble/std`` is the mean over
samples of the population standard deviation of the K centred members, measured for every arm
(the baseline included) on the evaluator's samples; its growth is the ratio of its value at the
last evaluation to its value at step 0 (Coste et al. Fig. 7: it grows several-fold under mean
optimisation and stays nearly flat under UWO).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from proxygap.config import MitigationRunConfig, MitigationStudyConfig
from proxygap.data.preferences import Pairs
from proxygap.estimators.bon import best_of_n
from proxygap.optimize.bon import BonCurve, bon_curve, log_spaced_ns
from proxygap.optimize.rl import RLHooks
from proxygap.optimize.rl_hooks import no_post_step
from proxygap.rewards.ensemble import aggregate
from proxygap.rewards.reward_model import score_texts
from proxygap.store.atomic import atomic_write_json
from proxygap.study.data import proxy_members
from proxygap.study.env import Env, reference_texts, sample_responses
from proxygap.study.mitigation_hooks import NEEDS_REFERENCES, build_post_step, build_transform
from proxygap.study.mitigation_stats import (
    QUANTITIES,
    bon_summary,
    rl_run_quantities,
    summarise_runs,
)
from proxygap.study.rl import train_from_base

__all__ = ["BonVariant", "MitigationResult", "aggregate_members", "stage_mitigations"]


def aggregate_members(members: np.ndarray, method: str, *, member: int, lam: float) -> np.ndarray:
    """``(..., K)`` centred member scores -> ``(...)``: member ``member`` alone for ``"single"``,
    else the ensemble aggregation (UWO with ``lam``)."""
    if method == "single":
        return members[..., member]
    shape = members.shape[:-1]
    flat = torch.from_numpy(np.ascontiguousarray(members.reshape(-1, members.shape[-1])))
    kw = {"lam": lam} if method == "uwo" else {}
    return aggregate(flat, method, **kw).numpy().reshape(shape)


@dataclass
class BonVariant:
    name: str
    curve: BonCurve
    summary: dict[str, dict[str, float]]


@dataclass
class MitigationResult:
    config: MitigationStudyConfig
    bon: list[BonVariant] = field(default_factory=list)
    histories: dict[str, list[list[dict[str, float]]]] = field(default_factory=dict)
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


# ---------------------------------------------------------------- best-of-n
def bon_variants(
    scores: dict[str, np.ndarray], m: MitigationStudyConfig, *, gold_scale: float, ns: np.ndarray
) -> list[BonVariant]:
    """Best-of-n with each selection variant, from the pool's member scores (P, N, K)."""
    pool, ref = scores[m.proxy], scores[f"ref:{m.proxy}"]
    centre = ref.mean(axis=0)  # (K,)
    pool_c, ref_c = pool - centre, ref - centre
    gold = scores["gold"] / gold_scale  # (P, N)
    std = pool_c.std(axis=-1)  # (P, N) population std across members
    out = []
    for method in ["single", *m.bon]:
        lam = m.bon_uwo_lambda
        select = aggregate_members(pool_c, method, member=m.member, lam=lam)
        scale = float(aggregate_members(ref_c, method, member=m.member, lam=lam).std()) or 1.0
        values = np.stack([gold, select / scale, std], axis=-1)  # (P, N, 3)
        curve = bon_curve(method, select, gold, ns=ns)
        res = best_of_n(
            torch.from_numpy(select), torch.from_numpy(values), torch.from_numpy(curve.ns)
        )
        summary = bon_summary(res.per_prompt.numpy(), curve.d)
        out.append(BonVariant(method, curve, summary))
    return out


# ---------------------------------------------------------------- RL
class MemberScorer:
    """Centred member scores ``texts -> (B, K)``, members centred on base-policy samples."""

    def __init__(self, env: Env, held: Pairs, proxy_name: str) -> None:
        proxy = next(p for p in env.cfg.proxies if p.name == proxy_name)
        self.models = proxy_members(env, proxy)
        self.env = env
        ref = self.raw(reference_texts(env, held))
        self.centre = ref.mean(axis=0)
        self.ref = ref - self.centre  # (M, K)

    def raw(self, texts: list[str], which: list[int] | None = None) -> np.ndarray:
        bs, tok = self.env.cfg.runtime.score_batch_size, self.env.tokenizer
        idx = range(len(self.models)) if which is None else which
        cols = [score_texts(self.models[k], tok, texts, batch_size=bs) for k in idx]
        return np.stack(cols, axis=1).astype(np.float64)

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.raw(texts) - self.centre


class EvalProxy:
    """``texts -> (B,)``: the arm's untransformed reward in units of its standard deviation on
    base-policy samples; every call appends ``ensemble/std`` (mean over the texts of the
    population std across the K centred members) to ``stds``."""

    def __init__(self, scorer: MemberScorer, method: str, *, member: int, lam: float) -> None:
        self.scorer, self.method, self.member, self.lam = scorer, method, member, lam
        self.scale = float(self._reward(scorer.ref).std()) or 1.0
        self.stds: list[float] = []

    def _reward(self, cols: np.ndarray) -> np.ndarray:
        return aggregate_members(cols, self.method, member=self.member, lam=self.lam)

    def __call__(self, texts: list[str]) -> np.ndarray:
        cols = self.scorer(list(texts))  # (B, K)
        self.stds.append(float(cols.std(axis=1).mean()))
        return self._reward(cols) / self.scale


def _train_reward(scorer: MemberScorer, arm: MitigationRunConfig, member: int) -> Any:
    if arm.aggregation == "single":
        c = scorer.centre[member]
        return lambda texts: scorer.raw(list(texts), [member])[:, 0] - c
    return lambda texts: aggregate_members(
        scorer(list(texts)), arm.aggregation, member=member, lam=arm.uwo_lambda
    )


def _references(
    env: Env, scorer: MemberScorer, prompts: list[str], m: MitigationStudyConfig
) -> tuple[list[str], np.ndarray]:
    """``reference_samples`` initial-policy samples of every distinct training prompt, scored
    by every member: the distinct prompts and their ``(P, M, K)`` centred scores."""
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
    return unique, scorer(texts).reshape(len(unique), M, -1)


def _run_arm(
    env: Env,
    arm: MitigationRunConfig,
    seed: int,
    *,
    scorer: MemberScorer,
    gold_scale: float,
    prompts: list[str],
    refs: tuple[list[str], np.ndarray] | None,
) -> list[dict[str, float]]:
    m = env.cfg.mitigations
    assert m is not None
    folder = env.run.dir / "mitigations" / arm.name / f"seed-{seed}"
    stage = f"mitigation:{arm.name}:{seed}"
    if env.run.done(stage):
        return json.loads((folder / "history.json").read_text())
    cfg = m.settings.model_copy(update={"kl_coef": arm.kl_coef, "seed": seed})
    policy = copy.deepcopy(env.policy).train()
    proxy = EvalProxy(scorer, arm.aggregation, member=m.member, lam=arm.uwo_lambda)
    ref_rewards = None
    if refs is not None and any(t.method in NEEDS_REFERENCES for t in arm.transforms):
        unique, member_scores = refs
        r = aggregate_members(member_scores, arm.aggregation, member=m.member, lam=arm.uwo_lambda)
        ref_rewards = {p: r[i] for i, p in enumerate(unique)}
    transform = build_transform(arm.transforms, ref_rewards=ref_rewards, group_size=cfg.group_size)
    post_step = build_post_step(arm.post_step, policy=policy) or no_post_step
    env.log(f"RL ({cfg.algo}) mitigation {arm.name}, seed {seed}")
    result = train_from_base(
        env,
        cfg,
        reward_fn=_train_reward(scorer, arm, m.member),
        eval_proxy=proxy,
        prompts=prompts,
        gold_scale=gold_scale,
        eval_seed=env.cfg.seed * 1000 + 7,
        hooks=RLHooks(transform=transform, post_step=post_step),
        policy=policy,
    )
    history = result.history
    stds = proxy.stds[1:]  # the first call scored the initial policy's samples
    if len(stds) != len(history):
        raise RuntimeError(f"{len(stds)} ensemble measurements for {len(history)} evaluations")
    for row, s in zip(history, stds, strict=True):
        row["ensemble/std"] = s
    atomic_write_json(folder / "history.json", history)
    atomic_write_json(folder / "examples.json", result.examples)
    env.run.mark_done(stage, {"mitigation": arm.name, "seed": seed})
    return history


def stage_mitigations(env: Env, held: Pairs, gold_scale: float) -> MitigationResult | None:
    """Best-of-n variants and every (arm, seed) RL run; writes ``mitigations/summary.json``."""
    m = env.cfg.mitigations
    if m is None:
        return None
    out = MitigationResult(m)
    bon = env.cfg.bon
    if bon is not None and env.run.path("scores.npz").is_file():
        with np.load(env.run.path("scores.npz")) as z:
            scores = {k: z[k] for k in z.files}
        ns = log_spaced_ns(bon.pool_size, bon.n_points)
        out.bon = bon_variants(scores, m, gold_scale=gold_scale, ns=ns)
    if m.rl:
        scorer = MemberScorer(env, held, m.proxy)
        s = m.settings
        prompts = env.task.prompts(s.steps * s.prompts_per_step, seed=env.cfg.seed * 1000 + 8)
        refs = None  # sampled once, only if a run that needs them is still to do
        for arm in m.rl:
            needs = any(t.method in NEEDS_REFERENCES for t in arm.transforms)
            out.histories[arm.name] = []
            for seed in m.seeds:
                if needs and refs is None and not env.run.done(f"mitigation:{arm.name}:{seed}"):
                    refs = _references(env, scorer, prompts, m)
                out.histories[arm.name].append(
                    _run_arm(
                        env,
                        arm,
                        seed,
                        scorer=scorer,
                        gold_scale=gold_scale,
                        prompts=prompts,
                        refs=refs,
                    )  # fmt: skip
                )
            runs = [rl_run_quantities(h) for h in out.histories[arm.name]]
            out.summary[arm.name] = summarise_runs(runs)
    atomic_write_json(
        env.run.path("mitigations", "summary.json"),
        {
            "quantities": list(QUANTITIES),
            "bon": {v.name: v.summary for v in out.bon},
            "rl": out.summary,
            "seeds": m.seeds,
        },
    )
    return out
