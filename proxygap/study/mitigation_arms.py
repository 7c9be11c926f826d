"""One arm of the mitigation study, for one seed: its reward, hooks, start and trainer.

Every arm starts from a fresh copy of its start policy (the base policy, or an SFT variant or
their soup for ``reference: sft | soup``), trains on the same prompts with the same settings
(RL recipe, or Quark for ``quark`` arms) and is measured by the same evaluator, whose initial
policy is always the base policy: gold and ``d`` of every arm are relative to it, so arms that
start elsewhere show their start at step 0. What differs between arms is only what the arm's
config names:

- the reward: one member (the unmitigated baseline), an ensemble aggregation (Coste et al.
  2023), or the sum of standardised component proxies (constrained RLHF);
- reward transforms (LSC, PAR, length penalty, DARLING; :mod:`proxygap.study.mitigation_hooks`)
  and a post-step hook (Elastic Reset);
- a constraint (Moskovitz et al. 2023): Lagrange multipliers hold each component at its proxy
  point, the transform's multipliers and violations are logged as ``constraint/*``;
- the KL coefficient and reference (the start policy; SALSA's soup).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.config import MitigationRunConfig, MitigationStudyConfig
from proxygap.optimize.loop import LoopResult
from proxygap.optimize.quark import train_quark
from proxygap.optimize.rl import RLHooks, rl_evaluator, train_rl
from proxygap.rewards.proxy import ProxyScorer, aggregate_members
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_text
from proxygap.study.context import StudyContext
from proxygap.study.mitigation_hooks import build_hooks, hooks_need_references
from proxygap.study.mitigation_scoring import ComponentScorer, EvalProbe
from proxygap.study.watch import watchers

ScoreFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class References:
    """``reference_samples`` initial-policy samples of every distinct training prompt:
    ``prompts`` (P), ``responses`` (P * M, grouped by prompt), ``texts`` (joined) and, per
    seed, the standardised scores ``(P, M, K)`` of that seed's ensemble members."""

    prompts: list[str]
    responses: list[str]
    texts: list[str]
    members: dict[int, np.ndarray]


@dataclass
class ArmContext:
    """What every arm shares: the study, its scorers, prompts, references and start policies."""

    study: StudyContext
    ensembles: dict[int, ProxyScorer]  # seed -> its ensemble; arms read members standardised
    prompts: list[str]
    policies: dict[str, PreTrainedModel]  # "base", and "sft", "soup" when the study has them
    refs: References | None = None
    components: dict[tuple[str, ...], ComponentScorer] = field(default_factory=dict)

    @property
    def spec(self) -> MitigationStudyConfig:
        m = self.study.cfg.mitigations
        assert m is not None
        return m

    def component_scorer(self, arm: MitigationRunConfig) -> ComponentScorer | None:
        if not arm.components:
            return None
        key = tuple(arm.components)
        if key not in self.components:
            self.components[key] = ComponentScorer(self.study, arm.components)
        return self.components[key]


def train_reward(ctx: ArmContext, arm: MitigationRunConfig, seed: int) -> ScoreFn:
    """``texts -> (B,)`` the untransformed reward the arm optimises with seed ``seed``'s
    ensemble (members standardised)."""
    comps = ctx.component_scorer(arm)
    if comps is not None:
        return lambda texts: comps(texts).sum(axis=1)
    k, members = ctx.spec.member, ctx.ensembles[seed]
    if arm.aggregation == "single":
        return lambda texts: members.member(k, texts)
    return lambda texts: aggregate_members(
        members.standardised(texts), arm.aggregation, member=k, lam=arm.uwo_lambda
    )


def reference_rewards(ctx: ArmContext, arm: MitigationRunConfig, seed: int) -> np.ndarray:
    """The arm's reward (seed ``seed``'s ensemble) on the reference samples, ``(P, M)``."""
    refs = ctx.refs
    if refs is None:
        raise ValueError(f"arm {arm.name!r} needs the initial-policy reference samples")
    comps = ctx.component_scorer(arm)
    if comps is not None:
        return comps(refs.texts).sum(axis=1).reshape(len(refs.prompts), -1)
    return aggregate_members(
        refs.members[seed], arm.aggregation, member=ctx.spec.member, lam=arm.uwo_lambda
    )


def needs_references(arm: MitigationRunConfig) -> bool:
    return arm.quark is not None or hooks_need_references(arm)


def _hooks(
    ctx: ArmContext,
    arm: MitigationRunConfig,
    policy: PreTrainedModel,
    points: np.ndarray | None,
    group_size: int,
    seed: int,
) -> RLHooks:
    def ref_rewards() -> dict[str, np.ndarray]:
        r = reference_rewards(ctx, arm, seed)
        return {p: r[i] for i, p in enumerate(ctx.refs.prompts)}  # type: ignore[union-attr]

    # every input a registry row may declare (INPUTS); a hook gets those its row names
    return build_hooks(
        arm,
        {
            "ref_rewards": ref_rewards,
            "group_size": lambda: group_size,
            "policy": lambda: policy,
            "components": lambda: ctx.component_scorer(arm),
            "thresholds": lambda: points,
        },
    )


def run_arm(
    ctx: ArmContext, arm: MitigationRunConfig, seed: int, *, points: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Train one arm with one seed; write its ``steps.jsonl`` (the trainer's metrics of every
    step), ``examples.json`` and ``history.json`` (the caller marks the stage done, then deletes
    the run's ``checkpoints/``) and return the history. ``points``: the proxy points of a
    constrained arm. The run keeps its newest checkpoint (every ``checkpoint_every`` steps, or
    before each evaluation) in ``checkpoints/`` of its folder and, rerun after a kill,
    continues from it (trainer, hooks, pool, watchers) with the numbers of an uninterrupted
    run."""
    study, m = ctx.study, ctx.spec
    # validated again: e.g. an adaptive KL controller needs kl_coef > 0
    cfg = type(m.settings).model_validate(
        {**m.settings.model_dump(), "kl_coef": arm.kl_coef, "seed": seed}
    )
    start = ctx.policies[arm.reference]
    torch.manual_seed(seed)
    policy = copy.deepcopy(start).train()
    members = ctx.ensembles[seed]
    probe = EvalProbe(members, arm, member=m.member, components=ctx.component_scorer(arm))
    evaluator = rl_evaluator(
        study.policy, study.tokenizer, task=study.task, proxy=probe, cfg=cfg,
        gold_scale=study.gold_scale, seed=study_seed(study.cfg.seed, "policy_eval"),
        members=members.standardised if members.n_members > 1 else None, embed=members.embed,
    )  # fmt: skip
    reward_fn = train_reward(ctx, arm, seed)
    run = f"mitigations/{arm.name}/seed-{seed}"
    folder = study.run.dir / "mitigations" / arm.name / f"seed-{seed}"
    watch = watchers(study, run=run, config=cfg.model_dump(mode="json"))
    watch.on_evaluate.append(probe.join)  # last: the monitor and trackers see what they saw
    checkpoints = folder / "checkpoints"  # the newest only, continued from after a kill
    if arm.quark is not None:
        refs = ctx.refs
        assert refs is not None
        M = len(refs.responses) // len(refs.prompts)
        initial = (
            [refs.prompts[i // M] for i in range(len(refs.responses))],
            refs.responses,
            reference_rewards(ctx, arm, seed).reshape(-1),
        )
        result: LoopResult = train_quark(
            policy, start, study.tokenizer, cfg=cfg, quark=arm.quark, train_prompts=ctx.prompts,
            join=study.task.join, reward_fn=reward_fn, evaluator=evaluator, initial=initial,
            log=lambda *_: None, watch=watch, checkpoint_dir=checkpoints, resume=True,
            keep_checkpoints=1,
        )  # fmt: skip
    else:
        result = train_rl(
            policy, start, study.tokenizer, cfg=cfg, train_prompts=ctx.prompts,
            join=study.task.join, reward_fn=reward_fn, evaluator=evaluator,
            hooks=_hooks(ctx, arm, policy, points, cfg.group_size, seed), log=lambda *_: None,
            watch=watch, checkpoint_dir=checkpoints, resume=True, keep_checkpoints=1,
        )  # fmt: skip
    if result.resumed_at is not None:
        study.log(f"mitigation {arm.name}, seed {seed} resumed at step {result.resumed_at}")
    history = result.history
    atomic_write_text(folder / "steps.jsonl", "".join(json.dumps(r) + "\n" for r in result.steps))
    atomic_write_json(folder / "examples.json", result.examples)
    atomic_write_json(folder / "history.json", history)  # last: its presence means complete
    return history
