"""The synthetic-gold study (Gao et al. 2023), stage by stage, resumable.

Stages, each written atomically into the run folder and skipped when already done:

1. ``preferences`` — two base-policy samples for each of ``n_pairs + n_heldout`` prompts, scored
   by gold, stored as ``preferences.jsonl`` (chosen = gold's pick, gold scores as extra fields).
2. ``proxy:<name>`` — each proxy relabels its share of the pairs (its own label mode, noise and
   seed), trains ``ensemble`` members with the Bradley-Terry loss, and is evaluated on the
   held-out pairs (pairwise accuracy against gold) and on base-policy samples (rank correlation).
3. ``pool`` — ``pool_size`` samples for each of ``n_prompts`` fresh prompts.
4. ``scores`` — gold and every proxy member on the pool and on the held-out base samples.
5. ``bon`` — best-of-n curves, law fits and turn-down tests; then the report.

Normalisation (Gao et al. §2): proxy members are centred and gold is scaled to unit standard
deviation on base-policy samples (the held-out pair responses, at the preference temperature).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.config import ProxyConfig, StudyConfig
from proxygap.data.preferences import Pairs, label_pairs, read_jsonl, relabel, write_jsonl
from proxygap.models.loading import (
    check_vocab_match,
    load_policy,
    load_reward_model,
    load_tokenizer,
)
from proxygap.optimize.bon import BonCurve, bon_curve, log_spaced_ns, pick_examples
from proxygap.rewards.ensemble import aggregate, ensemble_std
from proxygap.rewards.reward_model import (
    RewardTrainConfig,
    n_parameters,
    new_reward_model,
    pairwise_accuracy,
    score_texts,
    train_reward_model,
)
from proxygap.sampling.generate import decode_responses, sample
from proxygap.store.atomic import atomic_write, atomic_write_json, atomic_write_text
from proxygap.store.run import RunFolder
from proxygap.tasks import Task, get_task


@dataclass
class Env:
    """What every stage needs: the task, its models and the run folder."""

    cfg: StudyConfig
    run: RunFolder
    task: Task
    tokenizer: Tokenizer
    policy: PreTrainedModel
    gold_fn: Any
    log: Any = print
    timings: dict[str, float] = field(default_factory=dict)


def setup(cfg: StudyConfig, runs_root: Path, *, restart: bool = False, log: Any = print) -> Env:
    """Open (or resume) the run folder and load the task's models."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    task = get_task(cfg.task.name)
    trust = cfg.task.trust_remote_code
    policy_path = cfg.task.policy or task.policy_path
    tok_path = cfg.task.tokenizer or (cfg.task.policy or task.tokenizer_path)
    policy = load_policy(policy_path, trust_remote_code=trust).to(cfg.runtime.device)
    tokenizer = load_tokenizer(tok_path, trust_remote_code=trust)
    check_vocab_match(policy, tokenizer, f"policy {str(policy_path)!r}")
    if cfg.task.gold is None:
        gold_fn = task.gold
    else:
        gold_model = load_reward_model(cfg.task.gold, trust_remote_code=trust)
        gold_tok = load_tokenizer(cfg.task.gold, trust_remote_code=trust)

        def gold_fn(texts: list[str]) -> np.ndarray:
            return score_texts(gold_model, gold_tok, texts, batch_size=cfg.runtime.score_batch_size)

    # the folder is opened only once every model loaded: a bad path leaves nothing behind
    run = RunFolder(runs_root, cfg, restart=restart)
    return Env(cfg, run, task, tokenizer, policy, gold_fn, log)


def _encode_prompts(tokenizer: Tokenizer, prompts: list[str]) -> list[list[int]]:
    bos = tokenizer.bos_token_id
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [([bos] if bos is not None else []) + list(x) for x in ids]


def sample_responses(
    env: Env, prompts: list[str], *, n: int, temperature: float, max_new: int | None, seed: int,
    desc: str,
) -> list[str]:
    """``n`` responses per prompt (grouped by prompt) from the base policy, as texts."""
    s = sample(
        env.policy,
        _encode_prompts(env.tokenizer, prompts),
        n_per_prompt=n,
        max_new_tokens=max_new or env.task.max_new_tokens,
        temperature=temperature,
        eos_id=env.tokenizer.eos_token_id,
        pad_id=env.tokenizer.pad_token_id,
        batch_size=env.cfg.runtime.sample_batch_size,
        seed=seed,
        progress=desc,
    )
    return decode_responses(s, env.tokenizer)


# ---------------------------------------------------------------- stage 1: preferences
def stage_preferences(env: Env) -> tuple[Pairs, Pairs]:
    """Training and held-out pairs (clean gold labels; proxies relabel their share)."""
    cfg, run = env.cfg, env.run
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
        # identical responses make no pair (gold cannot prefer either): sample spares, drop them
        prompts = env.task.prompts(int(need * 1.05) + 64, seed=cfg.seed * 1000 + 1)
        responses = sample_responses(
            env, prompts, n=2, temperature=cfg.preferences.temperature,
            max_new=cfg.preferences.max_new_tokens, seed=cfg.seed * 1000 + 2,
            desc="sample preference pairs",
        )
        keep = [i for i in range(len(prompts)) if responses[2 * i] != responses[2 * i + 1]]
        if len(keep) < need:
            raise RuntimeError(
                f"only {len(keep)} of {len(prompts)} sampled pairs differ; need {need}: the base "
                "policy is too deterministic at this temperature"
            )
        keep = keep[:need]
        prompts = [prompts[i] for i in keep]
        a = [responses[2 * i] for i in keep]
        b = [responses[2 * i + 1] for i in keep]
        gold_a = env.gold_fn(env.task.join(prompts, a))
        gold_b = env.gold_fn(env.task.join(prompts, b))
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
def proxy_members(env: Env, proxy: ProxyConfig) -> list[PreTrainedModel]:
    """Load the trained members of ``proxy`` from the run folder."""
    if proxy.path:
        return [load_reward_model(proxy.path, trust_remote_code=env.cfg.task.trust_remote_code)]
    return [
        load_reward_model(env.run.dir / "proxies" / proxy.name / f"member-{k}")
        for k in range(proxy.ensemble)
    ]


def _save_model(model: PreTrainedModel, tokenizer: Tokenizer, folder: Path) -> None:
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


def stage_proxy(env: Env, proxy: ProxyConfig, train: Pairs) -> None:
    stage = f"proxy:{proxy.name}"
    if proxy.path or env.run.done(stage):
        return
    n = proxy.n_pairs or len(train)
    share = relabel(
        train.subset(np.arange(n)),
        mode=proxy.labels,
        temperature=proxy.bt_temperature,
        noise=proxy.label_noise,
        seed=proxy.seed + 7 * env.cfg.seed,
    )
    chosen = env.task.join(share.prompt, share.chosen)
    rejected = env.task.join(share.prompt, share.rejected)
    info: dict[str, Any] = {"members": []}
    for k in range(proxy.ensemble):
        seed = 1000 * proxy.seed + k
        model = new_reward_model(
            env.tokenizer, n_embd=proxy.n_embd, n_layer=proxy.n_layer, n_head=proxy.n_head,
            n_positions=int(env.policy.config.n_positions), seed=seed,
        )
        hist = train_reward_model(
            model, env.tokenizer, chosen, rejected,
            cfg=RewardTrainConfig(
                epochs=proxy.epochs, lr=proxy.lr, batch_size=proxy.batch_size, seed=seed
            ),
            progress=f"train proxy {proxy.name} [{k + 1}/{proxy.ensemble}]",
        )
        _save_model(model, env.tokenizer, env.run.path("proxies", proxy.name, f"member-{k}"))
        info["members"].append(
            {"seed": seed, "seconds": hist.seconds, "final_loss": float(np.mean(hist.loss[-20:]))}
        )
    info["n_params"] = n_parameters(model)
    env.run.mark_done(stage, info)


# ---------------------------------------------------------------- stage 3-4: pool and scores
def stage_pool(env: Env) -> tuple[list[str], list[str]]:
    """Prompts and the (n_prompts * pool_size) pool responses, grouped by prompt."""
    bon = env.cfg.bon
    assert bon is not None
    path = env.run.path("pool.jsonl")
    prompts = env.task.prompts(bon.n_prompts, seed=env.cfg.seed * 1000 + 3)
    if env.run.done("pool"):
        with path.open(encoding="utf-8") as fh:
            responses = [json.loads(line)["response"] for line in fh]
        return prompts, responses
    t0 = time.perf_counter()
    responses = sample_responses(
        env, prompts, n=bon.pool_size, temperature=bon.temperature, max_new=bon.max_new_tokens,
        seed=env.cfg.seed * 1000 + 4, desc="sample best-of-n pool",
    )
    lines = [
        json.dumps({"prompt_index": i // bon.pool_size, "response": r})
        for i, r in enumerate(responses)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    env.run.mark_done("pool", {"seconds": time.perf_counter() - t0})
    return prompts, responses


def stage_scores(
    env: Env, prompts: list[str], responses: list[str], held: Pairs
) -> dict[str, np.ndarray]:
    """Raw scores: ``gold`` (P, N), ``ref_gold`` (M,), and per proxy ``<name>`` (P, N, K) and
    ``ref:<name>`` (M, K) on the M base-policy reference samples."""
    path = env.run.path("scores.npz")
    if env.run.done("scores"):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    bon = env.cfg.bon
    assert bon is not None
    P, N = bon.n_prompts, bon.pool_size
    pool_prompts = [prompts[i // N] for i in range(P * N)]
    pool_texts = env.task.join(pool_prompts, responses)
    ref_texts = env.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
    out: dict[str, np.ndarray] = {
        "gold": env.gold_fn(pool_texts).reshape(P, N),
        "ref_gold": np.concatenate([held.gold_chosen, held.gold_rejected]),
    }
    for proxy in env.cfg.proxies:
        pool_k, ref_k = [], []
        for k, model in enumerate(proxy_members(env, proxy)):
            tok = env.tokenizer if not proxy.path else load_tokenizer(proxy.path)
            desc = f"score pool with {proxy.name} [{k + 1}]"
            pool_k.append(
                score_texts(model, tok, pool_texts, batch_size=env.cfg.runtime.score_batch_size,
                            progress=desc)
            )
            ref_k.append(score_texts(model, tok, ref_texts, batch_size=env.cfg.runtime.score_batch_size))
        out[proxy.name] = np.stack(pool_k, axis=-1).reshape(P, N, -1)
        out[f"ref:{proxy.name}"] = np.stack(ref_k, axis=-1)
    atomic_write(path, lambda p: np.savez(p.open("wb"), **out))
    env.run.mark_done("scores")
    return out


# ---------------------------------------------------------------- stage 5: analysis
@dataclass
class ProxyResult:
    config: ProxyConfig
    curve: BonCurve
    heldout_accuracy: float
    spearman: float
    n_params: int | None
    train_seconds: float | None
    ensemble_std_growth: float | None = None
    wellformed_top: float | None = None  # well-formed fraction of the n = N picks


def normalised(scores: dict[str, np.ndarray], proxy: ProxyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated proxy scores on the pool (P, N) and on reference samples (M,), members centred
    on the reference samples before aggregation."""
    pool, ref = scores[proxy.name], scores[f"ref:{proxy.name}"]
    centre = ref.mean(axis=0)  # (K,)
    pool_c, ref_c = pool - centre, ref - centre
    kw = {"lam": proxy.uwo_lambda} if proxy.aggregation == "uwo" else {}
    P, N, K = pool_c.shape
    agg_pool = aggregate(torch.from_numpy(pool_c.reshape(P * N, K)), proxy.aggregation, **kw)
    agg_ref = aggregate(torch.from_numpy(ref_c), proxy.aggregation, **kw)
    return agg_pool.numpy().reshape(P, N), agg_ref.numpy()


def analyse(
    env: Env, scores: dict[str, np.ndarray], held: Pairs, pool_texts: list[str]
) -> list[ProxyResult]:
    bon = env.cfg.bon
    assert bon is not None
    gold_scale = float(scores["ref_gold"].std()) or 1.0
    gold = scores["gold"] / gold_scale
    ns = log_spaced_ns(bon.pool_size, bon.n_points)
    results = []
    M = len(held)
    for proxy in env.cfg.proxies:
        select, ref = normalised(scores, proxy)
        curve = bon_curve(proxy.name, select, gold, ns=ns)
        acc = pairwise_accuracy(
            ref[:M], ref[M:], np.asarray(held.gold_chosen), np.asarray(held.gold_rejected)
        )
        rho = float(spearmanr(ref, scores["ref_gold"]).statistic)
        info = env.run.stage_info(f"proxy:{proxy.name}")
        growth = None
        if scores[proxy.name].shape[-1] > 1:
            member = torch.from_numpy(scores[proxy.name].reshape(-1, scores[proxy.name].shape[-1]))
            std = ensemble_std(member).numpy().reshape(select.shape)
            top = np.take_along_axis(std, np.argmax(select, axis=1)[:, None], axis=1)
            growth = float(top.mean() / std.mean())
        wf_top = None
        if env.task.wellformed is not None:
            N = select.shape[1]
            top_idx = np.arange(select.shape[0]) * N + np.argmax(select, axis=1)
            wf_top = float(env.task.wellformed([pool_texts[i] for i in top_idx]).mean())
        results.append(
            ProxyResult(
                config=proxy,
                curve=curve,
                heldout_accuracy=acc,
                spearman=rho,
                n_params=info.get("n_params"),
                train_seconds=sum(m["seconds"] for m in info.get("members", [])) or None,
                ensemble_std_growth=growth,
                wellformed_top=wf_top,
            )
        )
    return results


def write_results(env: Env, results: list[ProxyResult], gold_scale: float) -> None:
    rows = [row for r in results for row in r.curve.rows()]
    header = list(rows[0])
    csv = [",".join(header)] + [",".join(str(row[h]) for h in header) for row in rows]
    atomic_write_text(env.run.path("bon_curves.csv"), "\n".join(csv) + "\n")
    summary = {
        "gold_scale": gold_scale,
        "proxies": [
            {
                "name": r.config.name,
                "n_pairs": r.config.n_pairs or env.cfg.preferences.n_pairs,
                "label_noise": r.config.label_noise,
                "labels": r.config.labels,
                "ensemble": r.config.ensemble,
                "aggregation": r.config.aggregation,
                "n_params": r.n_params,
                "train_seconds": r.train_seconds,
                "heldout_accuracy": r.heldout_accuracy,
                "spearman_gold": r.spearman,
                "fit": r.curve.fit.as_dict(),
                "turn_down": {
                    "peak_n": int(r.curve.ns[r.curve.turn.peak_index]),
                    "d_peak": r.curve.turn.d_peak,
                    "gold_peak": r.curve.turn.gold_peak,
                    "gold_end": r.curve.turn.gold_end,
                    "drop": r.curve.turn.drop,
                    "drop_se": r.curve.turn.drop_se,
                    "significant": bool(r.curve.turn.turns_down),
                },
                "ensemble_std_growth": r.ensemble_std_growth,
                "wellformed_top": r.wellformed_top,
            }
            for r in results
        ],
    }
    atomic_write_json(env.run.path("summary.json"), summary)
    with env.run.path("metrics.jsonl").open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({f"bon/{k}" if k not in ("name", "n") else k: v
                                 for k, v in row.items()}) + "\n")


def examples(
    env: Env, scores: dict[str, np.ndarray], prompts: list[str], responses: list[str]
) -> list[dict[str, Any]]:
    """Best-of-n picks at several n for every proxy, with their proxy and gold scores."""
    bon = env.cfg.bon
    assert bon is not None
    N = bon.pool_size
    out = []
    for proxy in env.cfg.proxies:
        select, _ = normalised(scores, proxy)
        picks = pick_examples(select, ns=bon.examples_at, per_n=bon.examples_per_n, seed=env.cfg.seed)
        for n, pairs in picks.items():
            for p, i in pairs:
                out.append(
                    {
                        "proxy": proxy.name,
                        "n": n,
                        "prompt": prompts[p],
                        "response": responses[p * N + i],
                        "proxy_score": float(select[p, i]),
                        "gold": float(scores["gold"][p, i]),
                    }
                )
    return out


def run_study(
    cfg: StudyConfig, runs_root: Path | str = "runs", *, restart: bool = False, log: Any = print
) -> Path:
    """Run (or resume) a whole study; return the run folder."""
    from proxygap.report.render import write_report

    t_start = time.perf_counter()
    env = setup(cfg, Path(runs_root), restart=restart, log=log)
    if env.run.resumed:
        log(f"resuming {env.run.dir}")
    train, held = stage_preferences(env)
    for proxy in cfg.proxies:
        stage_proxy(env, proxy, train)
    results: list[ProxyResult] = []
    picks: list[dict[str, Any]] = []
    gold_scale = 1.0
    if cfg.bon is not None:
        prompts, responses = stage_pool(env)
        scores = stage_scores(env, prompts, responses, held)
        gold_scale = float(scores["ref_gold"].std()) or 1.0
        N = cfg.bon.pool_size
        pool_texts = env.task.join([prompts[i // N] for i in range(len(responses))], responses)
        results = analyse(env, scores, held, pool_texts)
        picks = examples(env, scores, prompts, responses)
        write_results(env, results, gold_scale)
        atomic_write_json(env.run.path("samples.json"), picks)
        if env.task.wellformed is not None:
            ref_texts = env.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
            env.timings["wellformed_base"] = float(env.task.wellformed(ref_texts).mean())
            env.timings["wellformed_pool"] = float(env.task.wellformed(pool_texts).mean())
    env.timings["wall_seconds"] = time.perf_counter() - t_start
    write_report(env.run, cfg, results, picks, gold_scale=gold_scale, extra=env.timings)
    return env.run.dir
