"""Study stage: a labelled corpus of runs that overoptimize and runs that do not, and the
gold-free monitor proved on it (:mod:`proxygap.monitor`).

Every family of ``detect.families`` runs with every seed (stage ``detect:<family>:<seed>``):
a fresh copy of the base policy optimised with :func:`proxygap.optimize.rl.train_rl` against
the family's reward (a ``daa`` family: with :func:`proxygap.optimize.daa.train_daa` on
preference pairs, watched with the family's proxy), evaluated at regular points on held-out
prompts against gold (the ground truth) and with the gold-free signals the monitor reads
(``signal/*``: the policy's entropy, the proxy's spread, the disagreement of ``monitor_proxy``'s
members, the outlier rate of the samples in its first member's hidden space and the share of
samples the initial policy finds unlikely, relative to the initial policy's). The runs go to
``runtime.workers`` forked processes, or run as Ray tasks (``runtime.backend: ray``,
:mod:`proxygap.study.remote`). The analysis
(:func:`proxygap.study.detect_analysis.analyse_corpus`) then fits and judges the detectors on
the held-out splits and writes ``detect/summary.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from proxygap.config.detect import DetectConfig, DetectFamily
from proxygap.data.preferences import Pairs, relabel
from proxygap.mitigations.registry import make_transform
from proxygap.optimize.daa import daa_evaluator, train_daa
from proxygap.optimize.evaluate import ScoreFn
from proxygap.optimize.loop import LoopResult
from proxygap.optimize.rl import rl_evaluator, train_rl
from proxygap.optimize.rl_hooks import RLHooks
from proxygap.rewards.proxy import aggregate_members
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json, atomic_write_text
from proxygap.study.context import StudyContext, reference_texts
from proxygap.study.detect_analysis import analyse_corpus
from proxygap.study.remote import remote_call
from proxygap.study.results import DetectResult
from proxygap.study.scoring import proxy_scorer
from proxygap.study.workers import Job, ray_runtime, run_jobs

__all__ = ["run_remote_job", "stage_detect"]


def _text_noise(texts: list[str]) -> np.ndarray:
    """A standard normal per text, fixed by the text's hash (the same text, the same noise)."""
    return np.array(
        [
            np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8])).normal()
            for t in texts
        ]
    )


def reward_of(ctx: StudyContext, family: DetectFamily) -> ScoreFn:
    """The reward a family's runs optimise (see :class:`~proxygap.config.detect.DetectFamily`)."""
    base: ScoreFn
    if family.reward in ("gold", "gold_noisy"):
        noise = family.noise if family.reward == "gold_noisy" else 0.0

        def base(texts: list[str]) -> np.ndarray:
            gold = np.asarray(ctx.gold_fn(texts), dtype=np.float64) / ctx.gold_scale
            return gold + noise * _text_noise(texts) if noise else gold

    else:
        scorer = proxy_scorer(ctx, family.reward)
        method = family.aggregation
        if method is None:
            base = scorer.reward
        else:

            def base(texts: list[str]) -> np.ndarray:
                return aggregate_members(scorer.centred(texts), method, lam=scorer.uwo_lambda)

    if not family.bonus:
        return base
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, family.bonus_words)) + r")\b")
    spread = float(np.std(base(reference_texts(ctx)))) or 1.0
    bonus = family.bonus * spread

    def with_bonus(texts: list[str]) -> np.ndarray:
        counts = np.array([len(pattern.findall(t)) for t in texts], dtype=np.float64)
        return base(texts) + bonus * counts

    return with_bonus


def _folder(ctx: StudyContext, family: str, seed: int) -> Path:
    return ctx.run.dir / "detect" / family / f"seed-{seed}"


def _run(
    ctx: StudyContext, cfg: DetectConfig, family: DetectFamily, seed: int, train: Pairs
) -> None:
    """Train one run of the corpus and write its history and step metrics."""
    if family.daa is not None:
        _run_daa(ctx, cfg, family, seed, train)
        return
    settings = cfg.run_settings(family, seed)
    monitor = proxy_scorer(ctx, cfg.monitor_proxy)
    reward_fn = reward_of(ctx, family)
    hooks = None
    if family.transform is not None:
        params = {k: v for k, v in family.transform.items() if k != "method"}
        hooks = RLHooks(transform=make_transform(family.transform["method"], **params))
    evaluator = rl_evaluator(
        ctx.policy, ctx.tokenizer, task=ctx.task, proxy=reward_fn, cfg=settings,
        gold_scale=ctx.gold_scale, seed=study_seed(ctx.cfg.seed, "detect_eval"),
        members=monitor.standardised if monitor.n_members > 1 else None, embed=monitor.embed,
        gold_budget_prompts=cfg.forecast_prompts,
    )  # fmt: skip
    torch.manual_seed(settings.seed)
    policy = copy.deepcopy(ctx.policy).train()
    prompts = ctx.task.prompts(4096, seed=study_seed(ctx.cfg.seed, "detect_train_prompts"))
    result = train_rl(
        policy, ctx.policy, ctx.tokenizer, cfg=settings, train_prompts=prompts,
        join=ctx.task.join, reward_fn=reward_fn, evaluator=evaluator, hooks=hooks,
        log=lambda *_: None,
    )  # fmt: skip
    _write(ctx, family, seed, result)


def _run_daa(
    ctx: StudyContext, cfg: DetectConfig, family: DetectFamily, seed: int, train: Pairs
) -> None:
    """One direct-alignment run of the corpus (:class:`~proxygap.config.detect.DetectDAA`),
    evaluated on the RL runs' prompts with the same signals."""
    spec = family.daa
    assert spec is not None
    settings = cfg.daa_settings(family, seed)
    n = min(spec.n_pairs, len(train))
    pairs = relabel(
        train.subset(np.arange(n)),
        noise=spec.label_noise,
        seed=study_seed(ctx.cfg.seed, "detect_daa_labels", seed),
    )
    held = ctx.heldout.subset(np.arange(min(spec.heldout_pairs, len(ctx.heldout))))
    monitor = proxy_scorer(ctx, cfg.monitor_proxy)
    evaluator = daa_evaluator(
        ctx.policy, ctx.tokenizer, task=ctx.task, proxy=proxy_scorer(ctx, family.reward).reward,
        cfg=settings, gold_scale=ctx.gold_scale, seed=study_seed(ctx.cfg.seed, "detect_eval"),
        members=monitor.standardised if monitor.n_members > 1 else None, embed=monitor.embed,
        gold_budget_prompts=cfg.forecast_prompts,
    )  # fmt: skip
    ref = copy.deepcopy(ctx.policy).eval().requires_grad_(False)
    torch.manual_seed(seed)
    policy = copy.deepcopy(ctx.policy).train().requires_grad_(True)
    result = train_daa(
        policy, ref, ctx.tokenizer, pairs, held, cfg=settings, evaluator=evaluator,
        log=lambda *_: None,
    )  # fmt: skip
    _write(ctx, family, seed, result)


def run_remote_job(ctx: StudyContext, train: Pairs, family: str, seed: int) -> None:
    """One run of the corpus as a Ray task runs it (:mod:`proxygap.study.remote`)."""
    cfg = ctx.cfg.detect
    found = [f for f in cfg.families if f.name == family] if cfg is not None else []
    if cfg is None or not found:
        raise ValueError(f"the study {ctx.cfg.name!r} has no detection family {family!r}")
    _run(ctx, cfg, found[0], seed, train)


def _write(ctx: StudyContext, family: DetectFamily, seed: int, result: LoopResult) -> None:
    folder = _folder(ctx, family.name, seed)
    atomic_write_json(folder / "history.json", result.history)
    lines = "".join(json.dumps(row) + "\n" for row in result.steps)
    atomic_write_text(folder / "steps.jsonl", lines)


def stage_detect(ctx: StudyContext, train: Pairs) -> DetectResult | None:
    """Build (or read back) the corpus, then fit and judge the detectors on it."""
    cfg = ctx.cfg.detect
    if cfg is None:
        return None
    for name in {cfg.monitor_proxy} | {f.reward for f in cfg.families}:
        if name not in ("gold", "gold_noisy"):
            proxy_scorer(ctx, name)  # load every proxy before forking
    runs = [(f, s) for f in cfg.families for s in cfg.seeds]
    todo = [(f, s) for f, s in runs if not ctx.run.done(f"detect:{f.name}:{s}")]

    def job(family: DetectFamily, seed: int) -> Job:
        return Job(
            f"detect {family.name}, seed {seed}",
            lambda: _run(ctx, cfg, family, seed, train),
            remote_call(run_remote_job, family.name, seed),
        )

    def finished(i: int) -> None:
        family, seed = todo[i]
        ctx.run.mark_done(f"detect:{family.name}:{seed}", {"family": family.name, "seed": seed})

    run_jobs(
        [job(f, s) for f, s in todo],
        workers=ctx.cfg.runtime.workers,
        finished=finished,
        log=ctx.log,
        ray=ray_runtime(ctx),
    )
    histories = {
        (f.name, s): json.loads((_folder(ctx, f.name, s) / "history.json").read_text())
        for f, s in runs
    }
    summary, detector = analyse_corpus(cfg, histories)
    atomic_write_json(ctx.run.path("detect", "summary.json"), summary)
    if detector is not None:
        detector.save(ctx.run.path("detect", "detector.json"))
    return DetectResult(histories=histories, summary=summary)
