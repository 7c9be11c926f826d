"""A sweep's RL and direct-alignment runs aggregated over seeds (:mod:`proxygap.report.sweep`).

Every finished cell of a setting (the cells that differ only in a seed) ran the same RL runs
(``rl/<run>/history.json``, one per KL coefficient) and DAA runs (``daa/<loss>-<beta>/
result.json``) on the same evaluation schedule. For each run and setting:

- per seed, from its evaluation rows: the gold peak (highest ``reward/gold``) and ``d`` there,
  the final gold and ``d``, and whether it turned down (the drop from the peak to the end exceeds
  twice ``sqrt(se_peak^2 + se_end^2)``, as for one run, Gao et al. 2023);
- over seeds: the mean of each quantity with a Student-t 95% interval
  (:func:`proxygap.analysis.seeds.t_interval`) and the count of seeds that turned down;
- the mean curve: at each evaluation (the same step in every seed) the mean ``d`` and the mean
  gold with its pointwise t band, plotted per setting (RL and DAA side by side).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proxygap.analysis.seeds import Interval, t_band, t_interval  # noqa: E402
from proxygap.store.atomic import atomic_write  # noqa: E402

__all__ = [
    "QUANTITIES",
    "StageAggregate",
    "aggregate_stage",
    "plot_stages",
    "read_stage_histories",
    "run_quantities",
]

QUANTITIES = ("gold_peak", "d_peak", "gold_end", "d_end")


def read_stage_histories(run_dir: Path) -> dict[str, list[dict[str, float]]]:
    """The evaluation rows of every RL and DAA run of one cell, keyed ``RL <run>`` and
    ``DAA <loss>-<beta>`` (RL runs first, each kind in name order)."""
    out: dict[str, list[dict[str, float]]] = {}
    for path in sorted((run_dir / "rl").glob("*/history.json")):
        out[f"RL {path.parent.name}"] = json.loads(path.read_text(encoding="utf-8"))
    for path in sorted((run_dir / "daa").glob("*/result.json")):
        out[f"DAA {path.parent.name}"] = json.loads(path.read_text(encoding="utf-8"))["history"]
    return out


def run_quantities(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """One seed's quantities (see the module docstring) from its evaluation rows."""
    gold = np.array([float(h["reward/gold"]) for h in history])
    se = np.array([float(h.get("reward/gold_se", 0.0)) for h in history])
    d = np.array([float(h["d"]) for h in history])
    k = int(np.argmax(gold))
    drop, drop_se = gold[k] - gold[-1], math.hypot(se[k], se[-1])
    return {
        "gold_peak": float(gold[k]),
        "d_peak": float(d[k]),
        "gold_end": float(gold[-1]),
        "d_end": float(d[-1]),
        "turned_down": float(drop > 2 * drop_se and drop > 0),
    }


@dataclass(frozen=True)
class StageAggregate:
    """One RL or DAA run of one setting over its seeds: intervals, turn-downs, mean curve."""

    n_seeds: int
    metrics: dict[str, Interval]
    n_turned_down: int
    d: np.ndarray  # (T,) mean d at each evaluation
    mean: np.ndarray  # (T,) mean gold
    lo: np.ndarray  # (T,) pointwise t band
    hi: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_seeds": self.n_seeds,
            "n_turned_down": self.n_turned_down,
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
            "curve": {"d": self.d.tolist(), "gold": self.mean.tolist(),
                      "lo": self.lo.tolist(), "hi": self.hi.tolist()},
        }  # fmt: skip


def aggregate_stage(histories: Sequence[Sequence[Mapping[str, float]]]) -> StageAggregate:
    """Aggregate one run's histories, one per seed (cut to the shortest: a run stopped by the
    monitor has fewer evaluations)."""
    runs = [run_quantities(h) for h in histories]
    T = min(len(h) for h in histories)
    gold = np.array([[float(r["reward/gold"]) for r in h[:T]] for h in histories])  # (S, T)
    d = np.array([[float(r["d"]) for r in h[:T]] for h in histories])  # (S, T)
    mean, lo, hi = t_band(gold)
    return StageAggregate(
        n_seeds=len(runs),
        metrics={q: t_interval([r[q] for r in runs]) for q in QUANTITIES},
        n_turned_down=int(sum(r["turned_down"] for r in runs)),
        d=d.mean(axis=0),
        mean=mean,
        lo=lo,
        hi=hi,
    )


def plot_stages(stages: Mapping[str, StageAggregate], path: Path, *, title: str) -> None:
    """Mean gold against mean d per run (RL left, DAA right), with 95% t bands over seeds."""
    kinds = [k for k in ("RL", "DAA") if any(n.startswith(k + " ") for n in stages)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds, strict=True):
        runs = [(n, s) for n, s in stages.items() if n.startswith(kind + " ")]
        for i, (name, s) in enumerate(runs):
            col = colors[i % len(colors)]
            label = f"{name.removeprefix(kind + ' ')} (mean of {s.n_seeds})"
            ax.plot(s.d, s.mean, "o-", ms=3, lw=1.2, color=col, label=label)
            if np.isfinite(s.lo).all():
                ax.fill_between(s.d, s.lo, s.hi, color=col, alpha=0.15)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("mean d = sqrt(KL to the initial policy)")
        ax.set_ylabel("gold − initial policy (SD units)")
        ax.set_title(f"{kind}: {title}\nmean over seeds, 95% t band (pointwise)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
