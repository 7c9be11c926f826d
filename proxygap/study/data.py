"""Study stages 1-2: gold-labelled preference pairs and proxy reward models."""

from __future__ import annotations

import json
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
from proxygap.store.atomic import atomic_write_text
from proxygap.study.context import SetupError, StudyContext, sample_responses


# ---------------------------------------------------------------- stage 1: preferences
def stage_preferences(ctx: StudyContext) -> tuple[Pairs, Pairs]:
    """Training and held-out pairs; fixes the held-out pairs, the base-policy reference samples
    and the gold scale on ``ctx`` (:meth:`StudyContext.use_heldout`).

    Sampled pairs carry clean gold labels (proxies relabel their share). A preference file's
    pairs keep the file's labels; gold scores its held-out pairs (held-out accuracy) and fresh
    base-policy samples (the reference and gold's scale, Gao et al. §2).
    """
    if ctx.file_pairs is not None:
        return _file_pairs(ctx, ctx.file_pairs)
    cfg, run = ctx.cfg, ctx.run
    path = run.path("preferences.jsonl")
    n_train, n_held = cfg.preferences.n_pairs, cfg.preferences.n_heldout
    if run.done("preferences"):
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
            raise SetupError(
                f"only {len(keep)} of {len(prompts)} sampled pairs differ; need {need}: the base "
                "policy is too deterministic at this temperature (preferences.temperature "
                f"{cfg.preferences.temperature:g})"
            )
        keep = keep[:need]
        prompts = [prompts[i] for i in keep]
        a = [responses[2 * i] for i in keep]
        b = [responses[2 * i + 1] for i in keep]
        gold_a = _gold(ctx, prompts, a, "response a")
        gold_b = _gold(ctx, prompts, b, "response b")
        pairs = label_pairs(prompts, a, b, gold_a, gold_b, seed=cfg.seed)
        write_jsonl(pairs, path)
        run.mark_done("preferences", {"seconds": time.perf_counter() - t0})
    train = pairs.subset(np.arange(n_train))
    held = pairs.subset(np.arange(n_train, n_train + n_held))
    ctx.use_heldout(held)
    return train, held


def _gold(ctx: StudyContext, prompts: list[str], responses: list[str], what: str) -> np.ndarray:
    """Gold of each (prompt, response); a :class:`NonFiniteError` naming the stage."""
    gold = np.asarray(ctx.gold_fn(ctx.task.join(prompts, responses)), dtype=np.float64)
    bad = ~np.isfinite(gold)
    if bad.any():
        raise NonFiniteError(
            f"stage 'preferences': {int(bad.sum())} non-finite gold score(s) for {what} "
            f"(first: pair {int(np.flatnonzero(bad)[0])}); nothing was written for this stage"
        )
    return gold


def _order_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pairs whose score differences ``a`` and ``b`` have the same sign (ties: 1/2)."""
    sa, sb = np.sign(a), np.sign(b)
    return float(np.mean(np.where((sa == 0) | (sb == 0), 0.5, sa == sb)))


def _file_pairs(ctx: StudyContext, pairs: Pairs) -> tuple[Pairs, Pairs]:
    cfg, run = ctx.cfg, ctx.run
    n_train, n_held = cfg.preferences.n_pairs, cfg.preferences.n_heldout
    bare = Pairs(pairs.prompt, pairs.chosen, pairs.rejected)  # the file's labels, as given
    train = bare.subset(np.arange(n_train))
    held_path, ref_path = run.path("heldout.jsonl"), run.path("reference.jsonl")
    if run.done("preferences"):
        held = read_jsonl(held_path, duplicates="keep")
        rows = [json.loads(line) for line in ref_path.read_text(encoding="utf-8").splitlines()]
    else:
        t0 = time.perf_counter()
        h = bare.subset(np.arange(n_train, n_train + n_held))
        gold_c = _gold(ctx, h.prompt, h.chosen, "held-out chosen")
        gold_r = _gold(ctx, h.prompt, h.rejected, "held-out rejected")
        held = Pairs(h.prompt, h.chosen, h.rejected, gold_c, gold_r)
        info: dict[str, Any] = {"source": str(cfg.preferences.file)}
        info["gold_prefers_chosen"] = _order_agreement(gold_c - gold_r, np.ones(n_held))
        if pairs.gold_chosen is not None and pairs.gold_rejected is not None:
            idx = np.arange(n_train, n_train + n_held)
            file_diff = pairs.gold_chosen[idx] - pairs.gold_rejected[idx]
            info["file_gold_agreement"] = _order_agreement(file_diff, gold_c - gold_r)
            ctx.log(
                f"{cfg.preferences.file}: its gold_chosen/gold_rejected fields are not used; the "
                f"configured gold rules (it orders {100 * info['file_gold_agreement']:.0f}% of "
                f"the {n_held} held-out pairs as the file's gold fields do)"
            )
        prompts = ctx.task.prompts(n_held, seed=study_seed(cfg.seed, "preference_prompts"))
        responses = sample_responses(
            ctx,
            prompts,
            n=2,
            temperature=cfg.preferences.temperature,
            max_new=cfg.preferences.max_new_tokens,
            seed=study_seed(cfg.seed, "preference_samples"),
            desc="sample base-policy reference",
        )
        prompts2 = [p for p in prompts for _ in range(2)]
        gold = _gold(ctx, prompts2, responses, "the base-policy reference samples")
        rows = [
            {"prompt": p, "response": r, "gold": float(g)}
            for p, r, g in zip(prompts2, responses, gold, strict=True)
        ]
        write_jsonl(held, held_path)
        atomic_write_text(ref_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        run.mark_done("preferences", info | {"seconds": time.perf_counter() - t0})
    texts = ctx.task.join([r["prompt"] for r in rows], [r["response"] for r in rows])
    ctx.use_heldout(held, (texts, np.array([r["gold"] for r in rows], dtype=np.float64)))
    return train, held


def describe_data(ctx: StudyContext) -> str:
    """How this study's task, gold and pairs were set up, in words (the report's setup)."""
    cfg, pref = ctx.cfg, ctx.cfg.preferences
    t = cfg.task
    gold = f"`{t.gold}`" if t.gold else f"the built-in gold of `{ctx.task.name}`"
    prompts = "built-in prompts"
    if "n_prompts" in ctx.task.record:
        r = ctx.task.record
        prompts = f"{r['n_prompts']} prompts from `{t.prompts}`, {r['heldout_prompts']} held out"
    head = f"Task `{ctx.task.name}` ({prompts}; policy: `{t.policy or 'built-in'}`; gold: {gold}). "
    if pref.file is None:
        return head + (
            f"Gold plays the human: it labels {pref.n_pairs} training pairs of base-policy "
            f"samples (temperature {pref.temperature}) plus {pref.n_heldout} held-out pairs; each "
            "proxy takes its share, relabelled with its own label mode and noise rate, and is "
            "trained with the Bradley-Terry loss."
        )
    info = ctx.run.stage_info("preferences")
    agree = info.get("gold_prefers_chosen")
    text = head + (
        f"The pairs come from `{pref.file}` with the file's own labels: the first {pref.n_pairs} "
        "train the proxies (each flips its share at its own noise rate; Bradley-Terry loss), "
        f"the next {pref.n_heldout} are held out. Gold scores the held-out pairs for held-out "
        "accuracy"
        + (
            f" (it prefers the file's chosen response in {100 * agree:.0f}% of them)"
            if agree is not None
            else ""
        )
        + f" and {2 * pref.n_heldout} base-policy samples (temperature {pref.temperature}), "
        "whose standard deviation is gold's unit."
    )
    if "file_gold_agreement" in info:
        text += (
            " The file's own gold fields are not used: the configured gold rules (they order "
            f"{100 * info['file_gold_agreement']:.0f}% of the held-out pairs alike)."
        )
    return text


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
    seeds = [1000 * proxy.seed + k for k in range(proxy.ensemble)]
    info = train_members(ctx, proxy, train, seeds=seeds, folder=ctx.run.path("proxies", proxy.name))
    ctx.run.mark_done(stage, info)


def train_members(
    ctx: StudyContext, proxy: ProxyConfig, train: Pairs, *, seeds: list[int], folder: Path
) -> dict[str, Any]:
    """Train one member of ``proxy`` per seed (initialisation and data order) on its share of
    ``train``, labelled with its own mode, noise and label seed, into ``folder/member-<k>``;
    return the stage's info (the mitigation study draws its per-seed ensembles here too)."""
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
    folder.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"members": []}
    for k, seed in enumerate(seeds):
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
            progress=f"train proxy {proxy.name} [{k + 1}/{len(seeds)}]",
        )
        save_model(model, ctx.tokenizer, folder / f"member-{k}")
        info["members"].append(
            {"seed": seed, "seconds": hist.seconds, "final_loss": float(np.mean(hist.loss[-20:]))}
        )
    info["n_params"] = n_parameters(model)
    return info
