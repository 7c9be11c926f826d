"""Train the built-in ``reviews`` policy with TRL's ``GRPOTrainer`` on CPU against a proxy
ensemble, with proxygap's callback logging gold (weight 0), disagreement, KL and the monitor.

    python examples/trl_grpo_monitor.py                       # trains a 3-member proxy first
    python examples/trl_grpo_monitor.py --run-folder runs/mitigations --proxy ensemble

Steps (docs/methods.md §1, §3, §4):

1. proxies: either the members of ``proxies/<--proxy>`` in a study's run folder, or a small
   ensemble trained here: two base-policy samples for each of ``--pairs`` prompts, labelled by
   the task's gold with ``--label-noise`` flips (Coste et al. 2023), one Bradley-Terry reward
   model per member on a bootstrap resample of the pairs;
2. rewards: the ensemble (``--aggregation``, members standardised on base-policy samples) with
   weight 1, gold in units of its SD on base-policy samples with weight 0 (logged, not trained
   on);
3. ``GRPOTrainer`` for ``--steps`` steps with ``ProxygapCallback`` (``beta`` > 0, so the
   trainer's reference log-probs give the KL), then the gold curve from the trainer's log.

Everything is written under ``--out``: ``proxies/member-<k>``, TRL's checkpoints and
``proxygap/history.jsonl`` (what ``proxygap.load_run`` reads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import proxygap as pg  # noqa: E402
from proxygap.integrations.trl import (  # noqa: E402
    ProxygapCallback,
    ensemble_reward,
    gold_reward,
    text_join,
)
from proxygap.sampling.generate import decode_responses, encode_prompts, sample  # noqa: E402


def base_samples(policy: Any, tok: Any, prompts: list[str], *, n: int, seed: int) -> list[str]:
    """``n`` base-policy responses per prompt (grouped by prompt)."""
    s = sample(
        policy, encode_prompts(tok, prompts), n_per_prompt=n, max_new_tokens=40,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=seed,
    )  # fmt: skip
    return decode_responses(s, tok)


def train_proxies(task: Any, policy: Any, tok: Any, args: argparse.Namespace) -> list[Path]:
    """A small ensemble on gold-labelled pairs with label noise; returns the member folders."""
    prompts = task.prompts(args.pairs, seed=args.seed + 101)
    responses = base_samples(policy, tok, prompts, n=2, seed=args.seed + 102)
    a = task.join(prompts, responses[0::2])
    b = task.join(prompts, responses[1::2])
    ga, gb = task.gold(a), task.gold(b)
    rng = np.random.default_rng(args.seed)
    a_wins = (ga > gb) | ((ga == gb) & (rng.random(len(a)) < 0.5))
    a_wins ^= rng.random(len(a)) < args.label_noise  # flipped labels
    chosen = [x if w else y for x, y, w in zip(a, b, a_wins, strict=True)]
    rejected = [y if w else x for x, y, w in zip(a, b, a_wins, strict=True)]
    paths = []
    for k in range(args.members):
        idx = rng.integers(0, len(chosen), len(chosen))  # bootstrap: members disagree
        model = pg.new_reward_model(tok, n_embd=32, n_layer=2, n_head=2, seed=args.seed + k)
        hist = pg.train_reward_model(
            model, tok, [chosen[i] for i in idx], [rejected[i] for i in idx],
            cfg=pg.RewardTrainConfig(epochs=2.0, lr=2e-3, batch_size=64, seed=args.seed + k),
        )  # fmt: skip
        path = args.out / "proxies" / f"member-{k}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
        print(f"proxy member {k}: final loss {np.mean(hist.loss[-5:]):.3f} ({hist.seconds:.1f} s)")
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/trl-grpo-monitor"))
    parser.add_argument("--run-folder", type=Path, help="take the proxy from this study run")
    parser.add_argument("--proxy", default=None, help="proxy name in --run-folder")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--label-noise", type=float, default=0.25)
    parser.add_argument("--reference-prompts", type=int, default=64, help="x 4 base samples")
    parser.add_argument("--aggregation", default="mean", choices=["mean", "wco", "uwo"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt")
    parser.add_argument("--beta", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--stop-on-alarm", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.manual_seed(args.seed)
    task = pg.get_task("reviews")
    tok = pg.load_tokenizer(task.tokenizer_path)
    policy = pg.load_policy(task.policy_path)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.run_folder is not None:
        found = pg.load_run(args.run_folder).proxies
        name = args.proxy or (next(iter(found)) if found else None)
        if name not in found:
            raise SystemExit(f"error: no proxy {name!r} in {args.run_folder}; has {sorted(found)}")
        members = found[name]
    else:
        members = train_proxies(task, policy, tok, args)

    # base-policy samples: the members' standardisation and gold's unit
    ref_prompts = task.prompts(args.reference_prompts, seed=args.seed + 103)
    reference = task.join(
        [p for p in ref_prompts for _ in range(4)],
        base_samples(policy, tok, ref_prompts, n=4, seed=args.seed + 104),
    )
    gold_scale = float(np.std(task.gold(reference))) or 1.0
    join = text_join(task.separator, strip_prefix=f"{tok.bos_token} ")
    proxy = ensemble_reward(members, aggregation=args.aggregation, reference=reference, join=join)
    gold = gold_reward(task.gold, join=join, scale=gold_scale)

    # TRL tokenizes prompts as given: "<bos> " + prompt gives the policy's [bos] + prompt ids
    train = task.prompts(args.prompts * args.steps, seed=args.seed + 105)
    data = datasets.Dataset.from_dict({"prompt": [f"{tok.bos_token} {p}" for p in train]})
    callback = ProxygapCallback(stop_on_alarm=args.stop_on_alarm)
    cfg = GRPOConfig(
        output_dir=str(args.out), use_cpu=True, report_to="none", seed=args.seed,
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        max_completion_length=task.max_new_tokens, max_steps=args.steps, beta=args.beta,
        learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=args.logging_steps,
        save_strategy="no", disable_tqdm=True, reward_weights=[1.0, 0.0], temperature=1.0,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=policy, reward_funcs=[proxy, gold], args=cfg, train_dataset=data,
        processing_class=tok, callbacks=[callback],
    )  # fmt: skip
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no raw log lines
    trainer.train()

    rows = pg.history_from_log(trainer.state.log_history)
    print(f"\n{'step':>5} {'d':>6} {'proxy':>7} {'gold':>7} {'monitor':>8}")
    for r in rows:
        print(
            f"{r['step']:5.0f} {r.get('d', float('nan')):6.2f} {r['reward/proxy']:7.3f} "
            f"{r['reward/gold']:7.3f} {r.get('monitor/score', float('nan')):8.3f}"
        )
    peak = max(rows, key=lambda r: r["reward/gold"]) if rows else {}
    result = {
        "rows": rows,
        "gold_peak": {k: peak.get(k) for k in ("step", "d", "reward/gold")},
        "gold_end": rows[-1]["reward/gold"] if rows else None,
        "alarm_step": callback.alarm_step,
        "kl": callback.kl_status,
        "members": [str(p) for p in members],
        "out": str(args.out),
    }
    print(
        f"\ngold peak {peak.get('reward/gold', float('nan')):+.3f} SD at step "
        f"{peak.get('step')} (d = {peak.get('d', float('nan')):.2f}); at the end "
        f"{result['gold_end']:+.3f}; monitor alarm: "
        f"{'step ' + str(callback.alarm_step) if callback.alarm_step else 'none'}\n"
        f"log: {args.out / 'proxygap' / 'history.jsonl'} (report: proxygap report {args.out})"
    )
    (args.out / "proxygap" / "summary.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2) + "\n"
    )
    return result


if __name__ == "__main__":
    main()
