"""Benchmark: what the gold-free monitor costs an RL run, as a ratio against the same run
without it.

Run ``python benchmarks/bench_monitor.py``. Two RL runs (RLOO) on the ``reviews`` task's base
policy with identical settings and seeds, one after the other in this process, repeated
``--repeats`` times alternately after one discarded warm-up run:

- **without**: the evaluator measures proxy, gold, KL, length and diversity every
  ``--eval-every`` steps (what every run measures anyway; the entropy and the unlikely-sample
  share come with them, from log-probs the KL needs anyway);
- **with**: the same, plus the monitor's signals (a 3-member reward-model ensemble's disagreement
  and the first member's hidden states for the outlier rate, the entropy of the policy's own
  samples) and the :class:`~proxygap.monitor.detector.Monitor` updating its score and alarm.

The reward models are untrained 0.1 M-parameter GPT-2 classifiers (``new_reward_model``): the
cost does not depend on their weights. Reported: the median wall time of each run over the
repeats, and the monitor's overhead as a share of an RL step, ``(with - without) / without``,
both in wall time and in the process's CPU time (``time.process_time``; with one thread, the
compute this run did, less disturbed than wall time by other processes on a shared machine).

On a busy machine the difference of two whole runs is noisier than the monitor's cost, so the
cost is also measured where it arises: at an evaluation point, the CPU time spent in the
reward-model calls (proxy, members, embedding) and the monitor's update, with the monitor's
signals and without (two evaluators on the same policies, alternated ``--point-repeats`` times
over two policies so that no pass is remembered from the previous call); the difference is what
the monitor adds per point (the rest of an evaluation, sampling, KL and gold, is the same in
both). With the one-time set-up (the initial samples' hidden states), it is reported as a share
of the CPU time of the run without the monitor: ``(evaluations x extra per point + set-up) / run``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from proxygap.models.loading import load_policy, load_tokenizer  # noqa: E402
from proxygap.monitor.detector import Monitor  # noqa: E402
from proxygap.optimize.loop import Watchers  # noqa: E402
from proxygap.optimize.rl import RLConfig, rl_evaluator, train_rl  # noqa: E402
from proxygap.rewards.proxy import ProxyScorer  # noqa: E402
from proxygap.rewards.reward_model import new_reward_model  # noqa: E402
from proxygap.tasks import get_task  # noqa: E402


def run(args: argparse.Namespace, *, monitored: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one RL run (evaluations included), with or without the
    monitor."""
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    ref = load_policy(task.policy_path)
    members = [new_reward_model(tok, n_embd=64, n_layer=2, n_head=4, seed=k) for k in range(3)]
    prompts = task.prompts(64, seed=1)
    reference = task.join(prompts, ["i loved the plot ."] * len(prompts))
    scorer = ProxyScorer("ens", members, tok, reference)
    cfg = RLConfig(
        steps=args.steps, prompts_per_step=args.prompts, group_size=args.group,
        eval_every=args.eval_every, eval_prompts=args.eval_prompts, seed=0,
    )  # fmt: skip
    t0, c0 = time.perf_counter(), time.process_time()
    evaluator = rl_evaluator(
        ref, tok, task=task, proxy=scorer.reward, cfg=cfg, seed=5,
        members=scorer.standardised if monitored else None,
        embed=scorer.embed if monitored else None,
    )  # fmt: skip
    train_rl(
        copy.deepcopy(ref), ref, tok, cfg=cfg, train_prompts=task.prompts(512, seed=2),
        join=task.join, reward_fn=scorer.reward, evaluator=evaluator, log=lambda *_: None,
        watch=Watchers(on_evaluate=[Monitor()] if monitored else []),
    )  # fmt: skip
    return time.perf_counter() - t0, time.process_time() - c0


class Clock:
    """Accumulates the CPU seconds spent inside the functions it wraps."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            c0 = time.process_time()
            try:
                return fn(*args)
            finally:
                self.seconds += time.process_time() - c0

        return timed


def point_costs(args: argparse.Namespace) -> tuple[float, float]:
    """CPU seconds the monitor adds per evaluation point (median) and once per run (set-up)."""
    task = get_task("reviews")
    tok = load_tokenizer(task.tokenizer_path)
    ref = load_policy(task.policy_path)
    members = [new_reward_model(tok, n_embd=64, n_layer=2, n_head=4, seed=k) for k in range(3)]
    prompts = task.prompts(64, seed=1)
    reference = task.join(prompts, ["i loved the plot ."] * len(prompts))
    cfg = RLConfig(eval_prompts=args.eval_prompts, seed=0)
    policies = []
    for k in range(2):  # two policies away from the initial one
        policy = copy.deepcopy(ref)
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for w in policy.parameters():
                w.add_(0.02 * torch.randn(w.shape, generator=gen))
        policies.append(policy)
    clocks, evaluators, setup = {}, {}, {}
    for monitored in (False, True):
        scorer = ProxyScorer("ens", members, tok, reference)  # its own remembered pass
        clock = clocks[monitored] = Clock()
        evaluators[monitored] = rl_evaluator(
            ref, tok, task=task, proxy=clock.wrap(scorer.reward), cfg=cfg, seed=5,
            members=clock.wrap(scorer.standardised) if monitored else None,
            embed=clock.wrap(scorer.embed) if monitored else None,
        )  # fmt: skip
        setup[monitored] = clock.seconds
    monitor = Monitor()
    update = clocks[True].wrap(monitor.update)
    point: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.point_repeats):
        for policy in policies:
            for monitored in (False, True):
                before = clocks[monitored].seconds
                row, _ = evaluators[monitored](policy)
                if monitored:
                    row.update(update(row))
                point[monitored].append(clocks[monitored].seconds - before)
    per_point = float(np.median(point[True]) - np.median(point[False]))
    return per_point, setup[True] - setup[False]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--point-repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    run(args, monitored=True)  # warm-up: imports, allocator, first-call costs
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for label, monitored in (("without", False), ("with", True)):
            wall, cpu = run(args, monitored=monitored)
            times.setdefault((label, "wall"), []).append(wall)
            times.setdefault((label, "cpu"), []).append(cpu)
    med = {k: float(np.median(v)) for k, v in times.items()}
    table = Table(title=f"monitor overhead: RLOO, {args.steps} steps, eval every {args.eval_every}")
    for col in ("run", "median wall s", "median CPU s", "CPU per step s"):
        table.add_column(col)
    for name, label in (("without monitor", "without"), ("with monitor", "with")):
        wall, cpu = med[(label, "wall")], med[(label, "cpu")]
        table.add_row(name, f"{wall:.2f}", f"{cpu:.2f}", f"{cpu / args.steps:.3f}")
    Console().print(table)
    for clock in ("wall", "cpu"):
        over = 100 * (med[("with", clock)] - med[("without", clock)]) / med[("without", clock)]
        Console().print(f"overhead ({clock} time): {over:+.1f}% of an RL step")
    per_point, setup = point_costs(args)
    n_points = args.steps // args.eval_every + 1  # step 0 included
    share = 100 * (n_points * per_point + setup) / med[("without", "cpu")]
    Console().print(
        f"monitor CPU per evaluation point: {per_point * 1e3:+.1f} ms, "
        f"set-up {setup * 1e3:+.1f} ms;"
        f" {n_points} points: {share:+.1f}% of the run's CPU time without the monitor"
    )


if __name__ == "__main__":
    main()
