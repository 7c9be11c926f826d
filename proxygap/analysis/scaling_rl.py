"""RL against proxies of several sizes, summarised per size and compared across sizes
(docs/methods.md §1, "Scaling with the proxy's size", and §6).

Input: per size (sorted by parameters) the evaluation histories of one RL run per seed (rows as
:func:`proxygap.analysis.rl_analysis.analyse_rl` reads them, ``reward/proxy`` standardised on
base-policy samples so that proxy and gold are both in SD units and start at 0). Per size:

- the gold peak's value and ``d`` (the evaluation point with the highest gold) with a Student-t
  interval over seeds, and on how many seeds gold turns down beyond 2 standard errors; a run
  whose gold still rises at its last point has its peak there, so value and ``d`` are then
  lower bounds;
- the proxy-gold gap at the last evaluation, ``proxy - gold``, with its t interval;
- Gao et al.'s RL law ``R(d) = d (alpha - beta log d)`` fitted to every seed's points together,
  with the law's peak ``d* = exp(alpha / beta - 1)`` where ``beta > 0`` (else no peak), and the
  per-seed ``alpha``, ``beta`` with t intervals.

Across sizes: Gao et al. 2023 (§3.2, fig. 3) find that bigger proxies peak later and higher.
Every seed's runs share their prompts and RL seed, so the comparison is paired: the
least-squares slope of the peak's ``d`` and value against ``log10(parameters)`` per seed, with a
t interval over seeds, judged by :func:`proxygap.analysis.scaling.direction`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from proxygap.analysis.laws import fit_rl_law
from proxygap.analysis.rl_analysis import analyse_rl
from proxygap.analysis.scaling import direction, trend
from proxygap.analysis.seeds import t_interval

__all__ = ["RL_DIRECTIONS", "rl_scaling", "rl_size_row"]

History = Sequence[Mapping[str, float]]

RL_DIRECTIONS: dict[str, tuple[int, str]] = {
    "peak_d": (1, "bigger proxies peak later in RL (gold peak's d)"),
    "peak_gold": (1, "bigger proxies peak higher in RL (gold at the peak)"),
}
"""Gao et al. 2023 (fig. 3 and §3.2): quantity -> (expected sign of the slope, claim)."""


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _iv(values: Sequence[float], level: float) -> dict[str, Any]:
    return t_interval(list(values), level=level).as_dict() | {"per_seed": list(values)}


def _last(history: History) -> Mapping[str, float]:
    return max(history, key=lambda row: row["step"])


def rl_size_row(histories: Sequence[History], *, level: float = 0.95) -> dict[str, Any]:
    """One size's summary over its seeds' runs (see the module docstring)."""
    if len(histories) < 1:
        raise ValueError("rl_size_row needs at least one run")
    runs = [analyse_rl(h) for h in histories]
    ends = [_last(h) for h in histories]
    d = np.concatenate([[float(r["d"]) for r in h] for h in histories])
    gold = np.concatenate([[float(r["reward/gold"]) for r in h] for h in histories])
    keep = d > 0
    pooled = None
    if np.unique(d[keep]).size >= 2:
        fit = fit_rl_law(d[keep], gold[keep])
        pooled = {
            "alpha": fit.alpha, "beta": fit.beta, "r2": fit.r2, "n_points": fit.n_points,
            "has_peak": fit.beta > 0, "d_peak": _finite(fit.d_peak),
            "r_peak": _finite(fit.r_peak),
        }  # fmt: skip
    fits = [r.fit for r in runs]
    return {
        "seeds": len(runs),
        "peak_gold": _iv([r.peak_gold for r in runs], level),
        "peak_d": _iv([r.peak_d for r in runs], level),
        "peak_step": [r.peak_step for r in runs],
        "turned_down": int(sum(r.turn.turns_down for r in runs)),
        "end_d": _iv([float(e["d"]) for e in ends], level),
        "end_gold": _iv([float(e["reward/gold"]) for e in ends], level),
        "end_proxy": _iv([float(e["reward/proxy"]) for e in ends], level),
        "end_gap": _iv([float(e["reward/proxy"]) - float(e["reward/gold"]) for e in ends], level),
        "law": pooled,
        "law_alpha": _iv([f.alpha if f else math.nan for f in fits], level),
        "law_beta": _iv([f.beta if f else math.nan for f in fits], level),
        "law_peaks": int(sum(f is not None and f.beta > 0 for f in fits)),
    }


def rl_scaling(
    runs: Mapping[str, Sequence[History]], n_params: Mapping[str, int], *, level: float = 0.95
) -> dict[str, Any]:
    """Per size rows and the trends across sizes of the peak's ``d`` and value.

    Args:
        runs: size -> its runs' histories, one per seed, the seeds in the same order for every
            size (the trends pair them).
        n_params: size -> parameter count.
    """
    sizes = sorted(runs, key=lambda s: n_params[s])
    n_seeds = {len(runs[s]) for s in sizes}
    if len(n_seeds) != 1:
        raise ValueError(f"every size needs the same seeds, got run counts {sorted(n_seeds)}")
    rows: list[dict[str, Any]] = [
        {"size": s, "n_params": n_params[s]} | rl_size_row(runs[s], level=level) for s in sizes
    ]
    out: dict[str, Any] = {"rows": rows, "trends": {}, "gao": {}, "claims": {}}
    if len(sizes) < 2:
        return out
    x = np.log10([n_params[s] for s in sizes])
    for name, (sign, claim) in RL_DIRECTIONS.items():
        values = np.array([r[name]["per_seed"] for r in rows]).T  # (S, K)
        t = trend(x, values, level=level)
        above = int(np.sum(values[:, -1] > values[:, 0]))  # seeds: largest size above smallest
        out["trends"][name] = t.as_dict() | {"largest_above_smallest": above}
        out["gao"][name] = direction(t.lo, t.hi, sign)
        out["claims"][name] = claim
    return out
