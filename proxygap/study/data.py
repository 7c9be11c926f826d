"""Study stages 1-2: gold-labelled preference pairs and proxy reward models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.config import ProxyConfig
from proxygap.data.preferences import Pairs, label_pairs, read_jsonl, relabel, write_jsonl
from proxygap.errors import NonFiniteError
from proxygap.rewards.reward_model import (
    RewardTrainConfig,
    n_parameters,
    new_reward_model,
    train_reward_model,
)
from proxygap.seeds import study_seed
from proxygap.study.context import StudyContext, sample_responses


# ---------------------------------------------------------------- stage 1: preferences
def stage_preferences(ctx: StudyContext) -> tuple[Pairs, Pairs]:
    """Training and held-out pairs (clean gold labels; proxies relabel their share)."""
    cfg, run = ctx.cfg, ctx.run
    path = run.path("preferences.jsonl")
    n_train, n_held = cfg.preferences.n_pairs, cfg.preferences.n_heldout
    if cfg.preferences.file:
        pairs = read_jsonl(cfg.preferences.file, duplicates="warn")
        if len(pairs) < n_train + n_held:
            raise ValueError(
                f"preference file {cfg.preferences.file!r} has {len(pairs)} pairs; the config "
                f"asks for n_pairs + n_heldout = {n_train + n_held}"
            )
    elif run.done("preferences"):
        pairs = read_jsonl(path, duplicates="keep")
    else:
        t0 = time.perf_counter()
        need = n_train + n_held
        # sample spare prompts: a few pairs are dropped below
        prompts = ctx.task.prompts(
            int(need * 1.05) + 64, seed=study_seed(cfg.seed, "preference_prompts")
        )
        responses = sample_responses(
            ctx,
            prompts,
            n=2,
            temperature=cfg.preferences.temperature,
            max_new=cfg.preferences.max_new_tokens,
            seed=study_seed(cfg.seed, "preference_samples"),
            desc="sample preference pairs",
        )
        # identical or empty responses make no usable pair: gold cannot prefer either, and a
        # preference file may not hold empty texts
        keep = [
            i
            for i in range(len(prompts))
            if responses[2 * i] != responses[2 * i + 1]
            and responses[2 * i].strip()
            and responses[2 * i + 1].strip()
        ]
        if len(keep) < need:
            raise RuntimeError(
                f"only {len(keep)} of {len(prompts)} sampled pairs differ; need {need}: the base "
                "policy is too deterministic at this temperature"
            )
        keep = keep[:need]
        prompts = [prompts[i] for i in keep]
        a = [responses[2 * i] for i in keep]
        b = [responses[2 * i + 1] for i in keep]
        gold_a = ctx.gold_fn(ctx.task.join(prompts, a))
        gold_b = ctx.gold_fn(ctx.task.join(prompts, b))
        for side, gold in (("a", gold_a), ("b", gold_b)):
            bad = ~np.isfinite(gold)
            if bad.any():
                raise NonFiniteError(
                    f"stage 'preferences': {int(bad.sum())} non-finite gold score(s) for "
                    f"response {side} (first: pair {int(np.flatnonzero(bad)[0])}); nothing was "
                    "written for this stage"
                )
        pairs = label_pairs(prompts, a, b, gold_a, gold_b, seed=cfg.seed)
        write_jsonl(pairs, path)
        run.mark_done("preferences", {"seconds": time.perf_counter() - t0})
    if pairs.gold_chosen is None:
        raise ValueError(
            "the preference file has no gold_chosen/gold_rejected fields: held-out accuracy "
            "against gold needs them"
        )
    train = pairs.subset(np.arange(n_train))
    held = pairs.subset(np.arange(n_train, n_train + n_held))
    return train, held


# ---------------------------------------------------------------- stage 2: proxies
def save_model(model: PreTrainedModel, tokenizer: Tokenizer, folder: Path) -> None:
    """Save a model folder atomically: write beside it, then rename."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)


def stage_proxy(ctx: StudyContext, proxy: ProxyConfig, train: Pairs) -> None:
    stage = f"proxy:{proxy.name}"
    if proxy.path or ctx.run.done(stage):
        return
    n = proxy.n_pairs or len(train)
    share = train.subset(np.arange(n))
    label: dict[str, Any] = {
        "mode": proxy.labels,
        "temperature": proxy.bt_temperature,
        "noise": proxy.label_noise,
        "seed": proxy.seed + 7 * ctx.cfg.seed,
    }
    if proxy.target == "gold":
        share = relabel(share, **label)
    else:  # one component of gold labels the pairs (constrained RLHF's component proxies)
        score = ctx.task.components[proxy.target]
        a, b = share.chosen, share.rejected
        share = label_pairs(
            share.prompt,
            a,
            b,
            score(ctx.task.join(share.prompt, a)),
            score(ctx.task.join(share.prompt, b)),
            **label,
        )
    chosen = ctx.task.join(share.prompt, share.chosen)
    rejected = ctx.task.join(share.prompt, share.rejected)
    info: dict[str, Any] = {"members": []}
    for k in range(proxy.ensemble):
        seed = 1000 * proxy.seed + k
        model = new_reward_model(
            ctx.tokenizer,
            n_embd=proxy.n_embd,
            n_layer=proxy.n_layer,
            n_head=proxy.n_head,
            n_positions=int(ctx.policy.config.n_positions),
            seed=seed,
        )
        hist = train_reward_model(
            model,
            ctx.tokenizer,
            chosen,
            rejected,
            cfg=RewardTrainConfig(
                epochs=proxy.epochs, lr=proxy.lr, batch_size=proxy.batch_size, seed=seed
            ),
            progress=f"train proxy {proxy.name} [{k + 1}/{proxy.ensemble}]",
        )
        save_model(model, ctx.tokenizer, ctx.run.path("proxies", proxy.name, f"member-{k}"))
        info["members"].append(
            {"seed": seed, "seconds": hist.seconds, "final_loss": float(np.mean(hist.loss[-20:]))}
        )
    info["n_params"] = n_parameters(model)
    ctx.run.mark_done(stage, info)
