"""Study stage 6: online RL against one proxy, over a sweep of KL coefficients.

Each KL coefficient is one run (stage ``rl:<name>``): a fresh copy of the base policy optimised
with :func:`proxygap.optimize.rl.train_rl` against the proxy (members centred on base-policy
samples, then aggregated as the proxy's config says), evaluated on held-out prompts against gold.
Gao et al. (2023, §3.2) report that a KL penalty does not move the gold-vs-KL frontier but acts
like early stopping; the report puts the runs on one plot to let the reader check.

A run saves a checkpoint in ``rl/<name>/checkpoints/`` before each evaluation (every
``checkpoint_every`` steps when that is set), keeping only the newest; a rerun of a study killed
mid-run continues from it with the numbers of an uninterrupted run. The checkpoints are deleted
once the run's results are written (its final and best policies stay).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel

from proxygap.analysis.rl_analysis import analyse_rl
from proxygap.config import RLRunConfig
from proxygap.optimize.checkpoint import PolicyKeeper
from proxygap.optimize.evaluate import ScoreFn
from proxygap.optimize.loop import LoopResult
from proxygap.optimize.rl import RLConfig, rl_evaluator, train_rl
from proxygap.optimize.rl_hooks import RLHooks
from proxygap.rewards.proxy import ProxyScorer
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_text
from proxygap.store.faults import stage_faults
from proxygap.study.context import StudyContext
from proxygap.study.results import RLRunResult
from proxygap.study.scoring import proxy_scorer
from proxygap.study.watch import watchers


def train_from_base(
    ctx: StudyContext,
    cfg: RLConfig,
    *,
    reward_fn: ScoreFn,
    eval_proxy: ScoreFn | None,
    prompts: list[str],
    eval_seed: int,
    hooks: RLHooks | None = None,
    policy: PreTrainedModel | None = None,
    proxy: ProxyScorer | None = None,
    run: str | None = None,
    keep: PolicyKeeper | None = None,
    checkpoint_dir: Path | None = None,
) -> LoopResult:
    """One RL run from a fresh copy of the base policy (or ``policy``, such a copy made by the
    caller), with the base policy as KL reference, evaluated on held-out prompts; the monitor
    reads ``proxy``'s members and hidden states when given, and watches the run (named ``run``
    for the trackers and the progress bar; ``keep`` keeps its final and best policy). With
    ``checkpoint_dir`` the run keeps its newest checkpoint there and continues from it."""
    torch.manual_seed(cfg.seed)
    policy = policy if policy is not None else copy.deepcopy(ctx.policy).train()
    evaluator = rl_evaluator(
        ctx.policy, ctx.tokenizer, task=ctx.task, proxy=eval_proxy, cfg=cfg,
        gold_scale=ctx.gold_scale, seed=eval_seed,
        members=proxy.standardised if proxy is not None and proxy.n_members > 1 else None,
        embed=proxy.embed if proxy is not None else None,
    )  # fmt: skip
    return train_rl(
        policy,
        ctx.policy,
        ctx.tokenizer,
        cfg=cfg,
        train_prompts=prompts,
        join=ctx.task.join,
        reward_fn=reward_fn,
        evaluator=evaluator,
        hooks=hooks,
        log=lambda *_: None,
        watch=watchers(ctx, run=run, config=cfg.model_dump(mode="json"), keep=keep),
        checkpoint_dir=checkpoint_dir,
        resume=True,
        keep_checkpoints=1,
    )


def _run_name(kl_coef: float) -> str:
    return f"kl-{kl_coef:g}"


def stage_rl(ctx: StudyContext) -> list[RLRunResult]:
    """Run (or read back) every RL run of the study's KL sweep."""
    rl: RLRunConfig | None = ctx.cfg.rl
    if rl is None:
        return []
    proxy = proxy_scorer(ctx, rl.proxy)
    reward_fn = proxy.reward
    out = []
    for kl_coef in rl.kl_coefs:
        name = _run_name(kl_coef)
        folder = ctx.run.dir / "rl" / name
        stage = f"rl:{name}"
        if ctx.run.done(stage):
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # a kill after the record
            history = json.loads((folder / "history.json").read_text())
            examples = json.loads((folder / "examples.json").read_text())
        else:
            with stage_faults(stage, ctx.run.dir):
                cfg = rl.settings.model_copy(update={"kl_coef": kl_coef})
                prompts = ctx.task.prompts(4096, seed=study_seed(ctx.cfg.seed, "rl_train_prompts"))
                ctx.log(f"RL ({cfg.algo}) against {proxy.name}, kl_coef {kl_coef:g}")
                policy = copy.deepcopy(ctx.policy).train()
                result = train_from_base(
                    ctx, cfg, reward_fn=reward_fn, eval_proxy=reward_fn, prompts=prompts,
                    eval_seed=study_seed(ctx.cfg.seed, "rl_eval"), proxy=proxy, policy=policy,
                    run=f"rl/{name}", keep=PolicyKeeper(policy, ctx.tokenizer, folder),
                    checkpoint_dir=folder / "checkpoints",
                )  # fmt: skip
                if result.resumed_at is not None:
                    ctx.log(f"RL {name} resumed at step {result.resumed_at} from its checkpoint")
                history, examples = result.history, result.examples
                atomic_write_json(folder / "history.json", history)
                atomic_write_json(folder / "examples.json", examples)
                lines = "".join(json.dumps(row) + "\n" for row in result.steps)
                atomic_write_text(folder / "steps.jsonl", lines)
                ctx.run.mark_done(stage, {"kl_coef": kl_coef})
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        out.append(RLRunResult(name, kl_coef, history, examples, analyse_rl(history)))
    atomic_write_json(
        ctx.run.path("rl", "summary.json"),
        [{"name": r.name, "kl_coef": r.kl_coef} | r.analysis.as_dict() for r in out],
    )
    return out
