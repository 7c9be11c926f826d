"""Study stage 6: online RL against one proxy, over a sweep of KL coefficients.

Each KL coefficient is one run (stage ``rl:<name>``): a fresh copy of the base policy optimised
with :func:`proxygap.optimize.rl.train_rl` against the proxy (members centred on base-policy
samples, then aggregated as the proxy's config says), evaluated on held-out prompts against gold.
Gao et al. (2023, §3.2) report that a KL penalty does not move the gold-vs-KL frontier but acts
like early stopping; the report puts the runs on one plot to let the reader check.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.analysis.rl_analysis import RLAnalysis, analyse_rl
from proxygap.config import ProxyConfig, RLRunConfig
from proxygap.data.preferences import Pairs
from proxygap.optimize.evaluate import ScoreFn
from proxygap.optimize.rl import RLConfig, rl_evaluator, train_rl
from proxygap.optimize.rl_hooks import RLHooks
from proxygap.optimize.rl_record import RLResult
from proxygap.rewards.ensemble import aggregate
from proxygap.rewards.reward_model import score_texts
from proxygap.store.atomic import atomic_write_json, atomic_write_text
from proxygap.study.data import proxy_members
from proxygap.study.env import Env, reference_texts


def proxy_scorer(env: Env, proxy: ProxyConfig, held: Pairs) -> ScoreFn:
    """``texts -> (B,)`` proxy rewards: each member centred on base-policy samples, then
    aggregated (mean, WCO or UWO) as the proxy's config says."""
    members = proxy_members(env, proxy)
    bs = env.cfg.runtime.score_batch_size
    ref = reference_texts(env, held)
    centres = [float(score_texts(m, env.tokenizer, ref, batch_size=bs).mean()) for m in members]
    kw = {"lam": proxy.uwo_lambda} if proxy.aggregation == "uwo" else {}

    def score(texts: list[str]) -> np.ndarray:
        cols = [
            score_texts(m, env.tokenizer, texts, batch_size=bs) - c
            for m, c in zip(members, centres, strict=True)
        ]
        return aggregate(torch.from_numpy(np.stack(cols, axis=1)), proxy.aggregation, **kw).numpy()

    return score


@dataclass
class RLRunResult:
    name: str
    kl_coef: float
    history: list[dict[str, float]]
    examples: list[dict[str, Any]]
    analysis: RLAnalysis


def train_from_base(
    env: Env,
    cfg: RLConfig,
    *,
    reward_fn: ScoreFn,
    eval_proxy: ScoreFn | None,
    prompts: list[str],
    gold_scale: float,
    eval_seed: int,
    hooks: RLHooks | None = None,
    policy: PreTrainedModel | None = None,
) -> RLResult:
    """One RL run from a fresh copy of the base policy (or ``policy``, such a copy made by the
    caller), with the base policy as KL reference, evaluated on held-out prompts."""
    torch.manual_seed(cfg.seed)
    policy = policy if policy is not None else copy.deepcopy(env.policy).train()
    evaluator = rl_evaluator(
        env.policy, env.tokenizer, task=env.task, proxy=eval_proxy, cfg=cfg,
        gold_scale=gold_scale, seed=eval_seed,
    )  # fmt: skip
    return train_rl(
        policy,
        env.policy,
        env.tokenizer,
        cfg=cfg,
        train_prompts=prompts,
        join=env.task.join,
        reward_fn=reward_fn,
        evaluator=evaluator,
        hooks=hooks,
        log=lambda *_: None,
    )


def _run_name(kl_coef: float) -> str:
    return f"kl-{kl_coef:g}"


def stage_rl(env: Env, held: Pairs, gold_scale: float) -> list[RLRunResult]:
    """Run (or read back) every RL run of the study's KL sweep."""
    rl: RLRunConfig | None = env.cfg.rl
    if rl is None:
        return []
    proxy = next(p for p in env.cfg.proxies if p.name == rl.proxy)
    reward_fn = proxy_scorer(env, proxy, held)
    out = []
    for kl_coef in rl.kl_coefs:
        name = _run_name(kl_coef)
        folder = env.run.dir / "rl" / name
        stage = f"rl:{name}"
        if env.run.done(stage):
            history = json.loads((folder / "history.json").read_text())
            examples = json.loads((folder / "examples.json").read_text())
        else:
            cfg = rl.settings.model_copy(update={"kl_coef": kl_coef})
            prompts = env.task.prompts(4096, seed=env.cfg.seed * 1000 + 6)
            env.log(f"RL ({cfg.algo}) against {proxy.name}, kl_coef {kl_coef:g}")
            result = train_from_base(
                env, cfg, reward_fn=reward_fn, eval_proxy=reward_fn, prompts=prompts,
                gold_scale=gold_scale, eval_seed=env.cfg.seed * 1000 + 5,
            )  # fmt: skip
            history, examples = result.history, result.examples
            atomic_write_json(folder / "history.json", history)
            atomic_write_json(folder / "examples.json", examples)
            lines = "".join(json.dumps(row) + "\n" for row in result.steps)
            atomic_write_text(folder / "steps.jsonl", lines)
            env.run.mark_done(stage, {"kl_coef": kl_coef})
        out.append(RLRunResult(name, kl_coef, history, examples, analyse_rl(history)))
    atomic_write_json(
        env.run.path("rl", "summary.json"),
        [{"name": r.name, "kl_coef": r.kl_coef} | r.analysis.as_dict() for r in out],
    )
    return out
