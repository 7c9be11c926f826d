"""Benchmark: all-n best-of-n estimator against an exact per-n loop with Python binomials.

Run ``python benchmarks/bench_bon.py`` (or import and call :func:`main`). For P prompts with a pool
of N samples each, it times :func:`proxygap.estimators.bon.best_of_n` for every n = 1..N, and a
baseline that, for each n, computes the weights ``C(i-1, n-1) / C(N, n)`` with ``math.comb`` (exact
Python integers, one correctly rounded division to float) and takes their dot product with each
prompt's pool sorted by the selection score.

The baseline over all N = 10,000 values of n would take hours (mid-range n need thousands of
10^3-digit binomials each), so it is timed on the evenly strided subset n = 1, 1 + s, 1 + 2s, ...
and its full cost is estimated as ``measured_time * N / len(subset)``, which is ``measured * s``
when s divides N: the subset samples the cost-versus-n curve evenly. Both methods must agree on
the strided n's.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from proxygap.estimators.bon import best_of_n


def exact_per_n(select: np.ndarray, values: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """Equation (1) of ``proxygap.estimators.bon`` one n at a time with exact binomials.

    Args:
        select: (P, N) selection scores, no ties.
        values: (P, N) values to report.
        ns: the n values, each in [1, N].

    Returns:
        (P, len(ns)) float64 estimates.
    """
    P, N = select.shape
    order = np.argsort(select, axis=1, kind="stable")
    v_sorted = np.take_along_axis(values, order, axis=1).T  # (N, P), ascending by select
    out = np.empty((P, len(ns)))
    for j, n in enumerate(ns):
        den = math.comb(N, n)
        w = np.array([math.comb(i - 1, n - 1) / den for i in range(n, N + 1)])  # ranks n..N
        out[:, j] = w @ v_sorted[n - 1 :]
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print a table, and return its numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000, help="pool size N per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="number of prompts P")
    parser.add_argument("--stride", type=int, default=500, help="baseline runs n = 1, 1+s, ...")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    N, P, stride = args.samples, args.prompts, args.stride

    gen = torch.Generator().manual_seed(args.seed)
    select = torch.randn(P, N, generator=gen, dtype=torch.float64)  # proxy, continuous: no ties
    values = select + torch.randn(P, N, generator=gen, dtype=torch.float64)  # gold = proxy + noise

    best_of_n(select[:, :100], values[:, :100])  # warm-up
    t0 = time.perf_counter()
    ours = best_of_n(select, values)  # all n = 1..N
    t_ours = time.perf_counter() - t0

    ns_sub = list(range(1, N + 1, stride))
    t0 = time.perf_counter()
    base = exact_per_n(select.numpy(), values.numpy(), ns_sub)
    t_base = time.perf_counter() - t0
    t_base_full = t_base * N / len(ns_sub)

    ours_sub = ours.per_prompt[:, [n - 1 for n in ns_sub]].numpy()  # (P, len(ns_sub))
    max_abs = float(np.abs(ours_sub - base).max())
    max_rel = float((np.abs(ours_sub - base) / np.maximum(np.abs(base), 1e-300)).max())

    table = Table(title=f"best-of-n, P = {P} prompts x N = {N} samples, torch {torch.__version__}")
    table.add_column("method")
    table.add_column("n values", justify="right")
    table.add_column("time (s)", justify="right")
    table.add_row("proxygap best_of_n (all n, one sort + chunked matmul)", f"{N}", f"{t_ours:.2f}")
    table.add_row("exact per-n loop, math.comb (measured)", f"{len(ns_sub)}", f"{t_base:.2f}")
    table.add_row(
        f"exact per-n loop, math.comb (estimated, x{N / len(ns_sub):g})",
        f"{N}",
        f"{t_base_full:.0f}",
    )
    console = Console()
    console.print(table)
    console.print(
        f"The baseline ran on every {stride}th n (n = 1, {1 + stride}, ..., {ns_sub[-1]}); "
        f"its cost for all {N} n is estimated as measured x N / {len(ns_sub)} = measured x "
        f"{N / len(ns_sub):g}, since the strided n's sample the cost-versus-n curve evenly."
    )
    console.print(
        f"speedup (estimated baseline, all n / proxygap, all n): {t_base_full / t_ours:,.0f}x"
    )
    console.print(
        f"agreement on the {len(ns_sub)} strided n x {P} prompts: max abs diff {max_abs:.2e}, "
        f"max rel diff {max_rel:.2e}"
    )
    return {
        "ours_s": t_ours,
        "baseline_measured_s": t_base,
        "baseline_estimated_full_s": t_base_full,
        "speedup": t_base_full / t_ours,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
    }


if __name__ == "__main__":
    main()
