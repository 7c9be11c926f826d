"""Benchmark: proxygap's GRPO and RLOO steps against TRL's ``GRPOTrainer`` and ``RLOOTrainer``.

Run ``python benchmarks/bench_rl.py`` (or import and call :func:`main`). Four runs on the
identical configuration, one after the other in this process:

- the model: the ``reviews`` task's base policy (``proxygap/tasks/reviews/assets``, a 0.6 M
  parameter GPT-2), float32, CPU, ``--threads`` intra-op threads (default 1: on a shared 2-core
  machine OpenMP's spinning barriers make 2-thread runs of a tiny model erratic);
- every step: ``--prompts`` prompts x ``--group`` samples at temperature 1, untruncated (top-k
  0, top-p 1), at most ``--max-new-tokens`` tokens; one optimiser step over the whole batch
  (no gradient accumulation, no gradient checkpointing, one iteration per generation); Adam at
  lr 5e-5, constant; gradient clipping at 1;
- the reward: a Python function of the response text (the number of times "great" appears plus
  0.1 per word), the same for both;
- KL: ``beta = --beta``; GRPO puts ``beta * k3`` in the loss (both), RLOO puts
  ``-beta * sum_t lr_t`` (k1) in the sequence reward (both). The reference model is a frozen
  copy of the base policy in both;
- GRPO losses are token means over the batch (TRL's default ``loss_type="dapo"``, our
  ``token_mean``), rewards scaled by the group standard deviation (both).

Differences that remain: TRL's RLOO loss is per sequence (advantage times the sequence's
importance ratio, mean over sequences) and ours per token (token mean); with one iteration per
generation both gradients are ``sum_i A_i grad log pi(y_i)``, scaled by ``1 / B`` (TRL) or
``1 / tokens`` (ours), a factor Adam removes. TRL samples with ``model.generate``, we with
:func:`proxygap.sampling.generate.sample`. Lengths can drift apart as the policies learn, so
the table gives generated tokens per second as well as samples per second. No evaluation runs
during the timed steps. Time per step is the median over the steps after ``--warmup`` warm-up
steps; throughput is samples (responses) per second. Our steps are also split into sampling,
scoring, reference log-probs and the update (advantages, forward, backward, optimiser step).
Medians rather than means, so that a step slowed by another process on a shared machine does not
move the result.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from proxygap.models.loading import load_policy, load_tokenizer  # noqa: E402
from proxygap.optimize.evaluate import PolicyEvaluator  # noqa: E402
from proxygap.optimize.rl import RLConfig, train_rl  # noqa: E402
from proxygap.sampling.generate import encode_prompts  # noqa: E402
from proxygap.tasks import get_task  # noqa: E402


def word_reward(texts: Sequence[str]) -> np.ndarray:
    """Number of "great" in each text plus 0.1 per word."""
    return np.array([t.split().count("great") + 0.1 * len(t.split()) for t in texts])


def responses_only(prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    """The text the reward reads: the response alone, as TRL passes ``completions``."""
    return list(responses)


def run_ours(algo: str, args: argparse.Namespace, prompts: list[str]) -> dict[str, float]:
    """Mean seconds per step (after warm-up) and its parts, for our recipe."""
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    ref = load_policy(task.policy_path)
    policy = copy.deepcopy(ref)
    steps = args.warmup + args.steps
    cfg = RLConfig(
        algo=algo,
        steps=steps,
        prompts_per_step=args.prompts,
        group_size=args.group,
        lr=5e-5,
        kl_coef=args.beta,
        kl_mode="loss" if algo == "grpo" else "reward",
        max_new_tokens=args.max_new_tokens,
        eval_every=steps,
        seed=0,
    )
    # evaluation is outside the timed steps; keep it minimal
    evaluator = PolicyEvaluator(
        ref=ref,
        tokenizer=tok,
        join=responses_only,
        prompts=prompts[:1],
        prompt_ids=encode_prompts(tok, prompts[:1]),
        gold=word_reward,
        proxy=None,
        n_per_prompt=1,
        max_new_tokens=args.max_new_tokens,
    )
    res = train_rl(
        policy,
        ref,
        tok,
        cfg=cfg,
        train_prompts=prompts,
        join=responses_only,
        reward_fn=word_reward,
        evaluator=evaluator,
        log=lambda _: None,
    )
    timed = res.steps[args.warmup :]
    keys = ("time/step", "time/sample", "time/score", "time/ref", "time/update", "train/length")
    return {k: float(np.median([r[k] for r in timed])) for k in keys}


class StepTimer:
    """A ``TrainerCallback`` that records when every optimiser step ends and the logged
    completion lengths."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.lengths: list[float] = []

    def __getattr__(self, name: str) -> Any:  # every other callback event: do nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_train_begin(self, *a: Any, **k: Any) -> None:
        self.ends.append(time.perf_counter())

    def on_step_end(self, *a: Any, **k: Any) -> None:
        self.ends.append(time.perf_counter())

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **k: Any
    ) -> None:
        if logs and "completions/mean_length" in logs:
            self.lengths.append(float(logs["completions/mean_length"]))


def run_trl(algo: str, args: argparse.Namespace, prompts: list[str]) -> dict[str, float]:
    """Mean seconds per step (after warm-up) for TRL's trainer on the same configuration."""
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    steps = args.warmup + args.steps
    config_cls, trainer_cls = (
        (GRPOConfig, GRPOTrainer) if algo == "grpo" else (RLOOConfig, RLOOTrainer)
    )
    extra: dict[str, Any] = {}
    if algo == "grpo":
        extra = {"loss_type": "dapo", "scale_rewards": "group"}

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return word_reward(completions).tolist()

    # "<bos> " + prompt tokenizes to [bos] + prompt ids, as our recipe builds them
    data = datasets.Dataset.from_dict({"prompt": [f"{tok.bos_token} {p}" for p in prompts]})
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = config_cls(
            output_dir=out,
            use_cpu=True,
            report_to="none",
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=args.prompts * args.group,
            gradient_accumulation_steps=1,
            num_generations=args.group,
            max_completion_length=args.max_new_tokens,
            max_steps=steps,
            learning_rate=5e-5,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            beta=args.beta,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            num_iterations=1,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            dataloader_num_workers=0,
            disable_dropout=True,
            disable_tqdm=True,
            model_init_kwargs={"dtype": torch.float32},
            **extra,
        )
        trainer = trainer_cls(
            model=str(task.policy_path),
            reward_funcs=reward,
            args=cfg,
            train_dataset=data,
            processing_class=tok,
            callbacks=[timer],
        )
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # no log lines
        torch.set_num_threads(args.threads)
        trainer.train()
    step_times = np.diff(timer.ends)[args.warmup :]
    return {
        "time/step": float(np.median(step_times)),
        "train/length": float(np.median(timer.lengths[args.warmup :])),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the four benchmarks, print a table and the profile, and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    prompts = get_task("reviews").prompts(args.prompts * (args.warmup + args.steps), seed=0)
    B = args.prompts * args.group
    t0 = time.perf_counter()

    results: dict[str, float] = {}
    profiles: dict[str, dict[str, float]] = {}
    table = Table(
        title=f"RL step throughput: {args.prompts} prompts x {args.group} samples, "
        f"<= {args.max_new_tokens} new tokens, beta {args.beta}, fp32, CPU, "
        f"{args.threads} thread(s), median of {args.steps} steps after {args.warmup} warm-up"
    )
    columns = (
        "algorithm",
        "implementation",
        "s / step",
        "samples / s",
        "tokens / s",
        "mean length",
        "ours / TRL samples/s",
        "ours / TRL tokens/s",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in columns[:2] else "right")
    for algo in ("grpo", "rloo"):
        ours = run_ours(algo, args, prompts)
        trl = run_trl(algo, args, prompts)
        profiles[algo] = ours
        for name, r in (("ours", ours), ("trl", trl)):
            results[f"{algo}/{name}_samples_per_s"] = B / r["time/step"]
            results[f"{algo}/{name}_tokens_per_s"] = B * r["train/length"] / r["time/step"]
        ratio = results[f"{algo}/ours_samples_per_s"] / results[f"{algo}/trl_samples_per_s"]
        tok_ratio = results[f"{algo}/ours_tokens_per_s"] / results[f"{algo}/trl_tokens_per_s"]
        results[f"{algo}/ratio"], results[f"{algo}/token_ratio"] = ratio, tok_ratio
        for name, key, r in (("proxygap", "ours", ours), ("TRL 1.16", "trl", trl)):
            mine = key == "ours"
            table.add_row(
                algo.upper(),
                name,
                f"{r['time/step']:.3f}",
                f"{results[f'{algo}/{key}_samples_per_s']:,.0f}",
                f"{results[f'{algo}/{key}_tokens_per_s']:,.0f}",
                f"{r['train/length']:.1f}",
                f"{ratio:.2f}x" if mine else "",
                f"{tok_ratio:.2f}x" if mine else "",
            )

    console = Console(width=140)
    console.print(table)
    console.print("where our step time goes (median seconds per step, share of the step):")
    for algo, p in profiles.items():
        parts = ", ".join(
            f"{k.removeprefix('time/')} {p[k]:.3f} s ({p[k] / p['time/step']:.0%})"
            for k in ("time/sample", "time/score", "time/ref", "time/update")
        )
        console.print(f"  {algo.upper()}: {parts}")
    results["seconds"] = time.perf_counter() - t0
    console.print(f"total benchmark time {results['seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
