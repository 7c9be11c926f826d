"""The numbers of the f-divergence comparison: per-run quantities, their intervals over seeds,
paired differences from the baseline arm, and gold at a common ``d``.

Units are seeds: every arm (a divergence in RL, a loss in direct alignment) runs once per seed,
every quantity is computed per run from its evaluation rows (step order), and summarised by its
mean and a Student-t 95% interval over seeds (:func:`proxygap.study.mitigation_stats.t_interval`).
Arms share their seeds, their training prompts (or pairs) and their evaluation prompts, so the
comparison with the baseline arm (the first divergence or loss) is paired: the interval of the
per-seed differences ``arm - baseline``, which removes what the seed shares between arms.

Quantities (gold in base-sample SD units relative to the base policy, docs/methods.md §6):

- ``gold_peak``, ``d_peak``: the highest gold over the evaluation points and ``d`` there;
- ``gold_end``, ``d_end``: gold and ``d = sqrt(KL)`` at the last evaluation;
- ``distinct1_end``, ``distinct2_end``: distinct-n of the last evaluation's samples (Li et al.
  2016): unique n-grams over all n-grams, pooled over prompts;
- ``gold_at_d``: gold where the run's path first reaches the common ``d`` (linear between the
  two evaluation points around it): the arms compared at equal drift, so a difference here is a
  moved frontier, not an earlier or later stop. The common ``d`` is the smallest over all runs
  of the largest ``d`` each run reached (:func:`common_d`), so every run reaches it and every
  seed has a value (a mean over arms of final ``d`` would leave the runs that end below it, and
  with them the paired interval, undefined);
- ``ess_end`` (RL): ``fdpg/ess`` of the training steps before the last evaluation;
- ``heldout_accuracy_end`` (DAA): the final policy's implicit-reward accuracy on held-out pairs;
- ``heldout_ece_end`` (DAA): the expected calibration error of the final policy's implicit-reward
  preference probabilities ``sigma(margin)`` on the held-out pairs
  (:func:`proxygap.analysis.calibration.preference_ece`; lower is better calibrated).

Evaluation points of one run share their prompts (common random numbers), so the points of one
curve are correlated; intervals over seeds treat each run as one unit and are unaffected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from proxygap.study.mitigation_stats import t_interval

__all__ = ["QUANTITIES", "common_d", "gold_at", "run_quantities", "summarise_arms"]

History = Sequence[Mapping[str, float]]

QUANTITIES = (
    "gold_peak", "d_peak", "gold_end", "d_end", "distinct1_end", "distinct2_end", "gold_at_d",
    "ess_end", "heldout_accuracy_end", "heldout_ece_end",
)  # fmt: skip


def _col(history: History, key: str) -> np.ndarray:
    return np.array([float(row.get(key, math.nan)) for row in history])


def gold_at(history: History, d_star: float) -> float:
    """Gold where ``d`` first reaches ``d_star`` along the run (linear between the evaluation
    points on either side; the first point's gold if it already does); nan if it never does."""
    d, gold = _col(history, "d"), _col(history, "reward/gold")
    hit = np.flatnonzero(d >= d_star)
    if hit.size == 0:
        return math.nan
    k = int(hit[0])
    if k == 0 or d[k] == d[k - 1]:
        return float(gold[k])
    w = (d_star - d[k - 1]) / (d[k] - d[k - 1])
    return float(gold[k - 1] + w * (gold[k] - gold[k - 1]))


def run_quantities(history: History, *, d_star: float = math.nan) -> dict[str, float]:
    """:data:`QUANTITIES` of one run from its evaluation rows (absent metrics give nan)."""
    if not history:
        raise ValueError("the history is empty")
    gold, d = _col(history, "reward/gold"), _col(history, "d")
    k = int(np.nanargmax(gold))
    last = history[-1]
    return {
        "gold_peak": float(gold[k]),
        "d_peak": float(d[k]),
        "gold_end": float(gold[-1]),
        "d_end": float(d[-1]),
        "distinct1_end": float(last.get("diversity/distinct1", math.nan)),
        "distinct2_end": float(last.get("diversity/distinct2", math.nan)),
        "gold_at_d": gold_at(history, d_star) if math.isfinite(d_star) else math.nan,
        "ess_end": float(last.get("fdpg/ess", math.nan)),
        "heldout_accuracy_end": float(last.get("daa/heldout_accuracy", math.nan)),
        "heldout_ece_end": float(last.get("daa/heldout_ece", math.nan)),
    }


def common_d(histories: Mapping[str, Sequence[History]]) -> float:
    """The common ``d`` every run reaches: the smallest over all runs of all arms of the largest
    ``d`` along the run (``d`` need not grow monotonically, and :func:`gold_at` takes the first
    point at or past it, so each run has a gold there); nan if no run has a finite ``d``."""
    tops = []
    for runs in histories.values():
        for h in runs:
            d = _col(h, "d")
            d = d[np.isfinite(d)]
            if d.size:
                tops.append(float(d.max()))
    return min(tops) if tops else math.nan


def _interval(values: Sequence[float]) -> dict[str, float]:
    x = [v for v in values if math.isfinite(v)]
    if not x:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    return t_interval(x)


def summarise_arms(histories: Mapping[str, Sequence[History]]) -> dict[str, Any]:
    """Per arm (first = baseline): every quantity per seed (``runs``), its interval over seeds
    (``summary``) and the interval of the per-seed differences from the baseline (``paired``;
    the baseline's own are 0). Histories of one arm are in seed order, the same for every arm."""
    if not histories:
        raise ValueError("no arms to summarise")
    d_star = common_d(histories)
    runs = {arm: [run_quantities(h, d_star=d_star) for h in hs] for arm, hs in histories.items()}
    baseline = next(iter(runs))
    summary = {
        arm: {q: _interval([r[q] for r in rs]) for q in QUANTITIES} for arm, rs in runs.items()
    }
    paired: dict[str, dict[str, dict[str, float]]] = {}
    for arm, rs in runs.items():
        base = runs[baseline]
        if len(rs) != len(base):
            raise ValueError(f"arm {arm!r} has {len(rs)} seeds, the baseline {len(base)}")
        paired[arm] = {
            q: _interval([a[q] - b[q] for a, b in zip(rs, base, strict=True)]) for q in QUANTITIES
        }
    return {
        "baseline": baseline,
        "d_common": d_star,
        "runs": runs,
        "summary": summary,
        "paired": paired,
    }
