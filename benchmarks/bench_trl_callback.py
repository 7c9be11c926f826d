"""Benchmark: the cost of proxygap's TRL callback in a ``GRPOTrainer`` step, as a ratio against
the same step without it.

Run ``python benchmarks/bench_trl_callback.py`` (or import and call :func:`main`). Both arms
train the ``reviews`` task's base policy (0.6 M-parameter GPT-2, float32, CPU, ``--threads``
intra-op threads) with TRL's ``GRPOTrainer`` on the identical configuration: ``--prompts``
prompts x ``--group`` samples per step, at most ``--max-new-tokens`` new tokens, ``beta =
--beta`` (so the trainer computes reference log-probs and the callback measures KL), one
optimiser step per generation, a log row every step. The reward is a Python function of the
response text.

- ``without``: ``reward_funcs=reward``, no proxygap callback;
- ``with``: ``reward_funcs=monitor_reward(reward)`` and ``callbacks=[ProxygapCallback()]``
  (the monitor of :mod:`proxygap.monitor` when available): per step, batch signals, the
  policy's log-probs of the batch (one forward pass without gradients; GRPO with one iteration
  per generation keeps none), clamped k1/k2/k3, the monitor's update and the log merge.

The arms alternate (without, with, without, with, ...) ``--repeats`` times so that a slow phase
of a shared machine hits both; time per step is the median over all timed steps of an arm after
``--warmup`` warm-up steps per run. The ratio is with / without (1.10 = 10% slower). On a
shared machine the two arms' medians move by several percent from run to run, so the ``with``
arm also times proxygap's own work inside each step (the callback's step and log handlers, the
reward wrapper's recording, the KL from the loss's log-probs), a number that load on other cores
barely moves; its share of the ``with`` arm's step time is the overhead the ratio estimates.
"""

from __future__ import annotations

import argparse
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

from proxygap.integrations import trl_rewards  # noqa: E402
from proxygap.integrations.trl import ProxygapCallback, monitor_reward  # noqa: E402
from proxygap.integrations.trl_kl import KLProbe  # noqa: E402
from proxygap.models.loading import load_tokenizer  # noqa: E402
from proxygap.tasks import get_task  # noqa: E402


def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """The number of times "great" appears plus 0.1 per word (as ``bench_rl.py``)."""
    return [c.split().count("great") + 0.1 * len(c.split()) for c in completions]


class StepTimer:
    """A ``TrainerCallback`` that records when every optimiser step ends."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def __getattr__(self, name: str) -> Any:  # every other callback event: do nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_train_begin(self, *a: Any, **k: Any) -> None:
        self.ends.append(time.perf_counter())

    def on_step_end(self, *a: Any, **k: Any) -> None:
        self.ends.append(time.perf_counter())


SPENT = [0.0]  # seconds inside proxygap's own code, summed over the timed functions


def timed(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[0] += time.perf_counter() - start

    return wrapper


# what the callback adds to a step: its handlers, the reward wrapper's record, the KL metrics
ProxygapCallback.on_step_end = timed(ProxygapCallback.on_step_end)  # type: ignore[method-assign]
ProxygapCallback.on_log = timed(ProxygapCallback.on_log)  # type: ignore[method-assign]
ProxygapCallback._flush = timed(ProxygapCallback._flush)  # type: ignore[method-assign]
KLProbe._add = timed(KLProbe._add)  # type: ignore[method-assign]
KLProbe._measure = timed(KLProbe._measure)  # type: ignore[method-assign]
trl_rewards.record = timed(trl_rewards.record)


def run(with_callback: bool, args: argparse.Namespace, prompts: list[str]) -> np.ndarray:
    """Seconds of every timed step of one GRPO run."""
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    data = datasets.Dataset.from_dict({"prompt": [f"{tok.bos_token} {p}" for p in prompts]})
    timer = StepTimer()
    callbacks: list[Any] = [timer]
    if with_callback:
        callbacks.append(ProxygapCallback(history=False))
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, use_cpu=True, report_to="none", bf16=False, fp16=False,
            per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
            max_completion_length=args.max_new_tokens, max_steps=args.warmup + args.steps,
            learning_rate=5e-5, lr_scheduler_type="constant", beta=args.beta, temperature=1.0,
            top_k=0, top_p=1.0, num_iterations=1, logging_steps=1, save_strategy="no", seed=0,
            disable_tqdm=True, model_init_kwargs={"dtype": torch.float32},
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=str(task.policy_path),
            reward_funcs=monitor_reward(reward) if with_callback else reward,
            args=cfg, train_dataset=data, processing_class=tok, callbacks=callbacks,
        )  # fmt: skip
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        torch.set_num_threads(args.threads)
        trainer.train()
        if with_callback:
            logged = [r for r in trainer.state.log_history if "proxygap/kl/k3" in r]
            assert logged, "the callback logged no proxygap KL"
    return np.diff(timer.ends)[args.warmup :]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run both arms, print the table and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("proxygap").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    prompts = get_task("reviews").prompts(args.prompts * (args.warmup + args.steps), seed=0)
    times: dict[bool, list[np.ndarray]] = {False: [], True: []}
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        for arm in (False, True):
            times[arm].append(run(arm, args, prompts))
    without = float(np.median(np.concatenate(times[False])))
    with_cb = float(np.median(np.concatenate(times[True])))
    own = SPENT[0] / (args.repeats * (args.warmup + args.steps))  # per step, warm-up included
    results = {
        "time/step_without": without,
        "time/step_with": with_cb,
        "ratio/with_over_without": with_cb / without,
        "time/proxygap_per_step": own,
        "share/proxygap_of_step": own / with_cb,
    }
    print(
        f"GRPO step, {args.prompts} prompts x {args.group} samples, <= {args.max_new_tokens} "
        f"new tokens, beta {args.beta}, fp32, CPU, {args.threads} thread(s); median of "
        f"{args.repeats} x {args.steps} steps after {args.warmup} warm-up steps per run\n"
        f"  without proxygap: {without:.3f} s/step\n"
        f"  with ProxygapCallback + monitor_reward: {with_cb:.3f} s/step\n"
        f"  ratio with / without: {with_cb / without:.3f}\n"
        f"  proxygap's own time: {1e3 * own:.1f} ms/step = {100 * own / with_cb:.1f}% of a step"
        f"  (total {time.perf_counter() - t0:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()
