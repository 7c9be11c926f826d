"""The numbers of the mitigation table: per-run quantities and 95% intervals.

Every quantity is computed per unit (an RL run of one seed, or the best-of-n pool of one seed)
and then summarised by its mean and a Student-t interval ``mean ± t_{0.975, n-1} * s /
sqrt(n)`` (``s`` the sample standard deviation, ``ddof = 1``), as the table of a benchmark over
seeds is in CleanRL. Quantities (gold and proxy as described in :mod:`proxygap.study.mitigations`):

- ``gold_peak``: the highest gold over the evaluation points (RL) or over n (best-of-n);
- ``gold_end``: gold at the last evaluation (RL) or at n = N (best-of-n);
- ``d_peak``: ``d = sqrt(KL)`` at the gold peak;
- ``drop``: ``gold_peak - gold_end`` (overoptimization: > 0 past the peak);
- ``gap_end``: proxy minus gold at the end (both in base-sample SD units);
- ``std_growth``: ensemble member standard deviation at the end over its value at the start;
- ``turned_down``: 1 if the drop exceeds twice its standard error (RL: ``sqrt(se_peak^2 +
  se_end^2)`` from the evaluator, the report's turn-down test; best-of-n: the standard error
  over prompts of the per-prompt drop), else 0; its mean is the fraction of seeds that
  overoptimize. The peak is the largest of noisy values, so ``drop`` itself is biased upwards
  and is not a test.

Units are seeds for both: an RL run, or a best-of-n pool
(:func:`proxygap.study.mitigation_bon.bon_seed_quantities`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import t as student_t

QUANTITIES = (
    "gold_peak", "gold_end", "d_peak", "drop", "gap_end", "std_growth", "turned_down",
)  # fmt: skip


def t_interval(x: Sequence[float] | np.ndarray, level: float = 0.95) -> dict[str, float]:
    """``{mean, lo, hi, n}``: the Student-t interval of the mean of ``x`` (nan bounds for
    ``n < 2``)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"need a non-empty 1-d sample, got shape {a.shape}")
    mean = float(a.mean())
    if a.size < 2:
        return {"mean": mean, "lo": float("nan"), "hi": float("nan"), "n": 1}
    half = float(student_t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": int(a.size)}


def _col(history: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    return np.array([float(row[key]) for row in history])


def rl_run_quantities(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The table's quantities for one RL run, from its evaluation rows in step order."""
    if not history:
        raise ValueError("the history is empty")
    gold, d = _col(history, "reward/gold"), _col(history, "d")
    proxy, std = _col(history, "reward/proxy"), _col(history, "ensemble/std")
    se = np.nan_to_num(_col(history, "reward/gold_se"))
    k = int(np.argmax(gold))
    drop = float(gold[k] - gold[-1])
    return {
        "gold_peak": float(gold[k]),
        "gold_end": float(gold[-1]),
        "d_peak": float(d[k]),
        "drop": drop,
        "gap_end": float(proxy[-1] - gold[-1]),
        "std_growth": float(std[-1] / std[0]) if std[0] > 0 else float("nan"),
        "turned_down": float(drop > 2 * float(np.hypot(se[k], se[-1]))),
    }


def summarise_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and 95% t-interval of every quantity over ``runs`` (one dict per seed)."""
    return {q: t_interval([r[q] for r in runs]) for q in QUANTITIES}


def proxy_points(runs: Sequence[Sequence[Mapping[str, float]]], names: Sequence[str]) -> np.ndarray:
    """Constrained RLHF's proxy points (Moskovitz et al. 2023): the value of every component
    ``component/<name>`` at the gold peak of each run (its evaluation with the highest gold),
    averaged over ``runs`` (the seeds of an unconstrained arm); ``(C,)``."""
    if not runs:
        raise ValueError("no runs to take proxy points from")
    values = []
    for history in runs:
        k = int(np.argmax(_col(history, "reward/gold")))
        missing = [n for n in names if f"component/{n}" not in history[k]]
        if missing:
            raise ValueError(f"the runs do not record components {missing}")
        values.append([float(history[k][f"component/{n}"]) for n in names])
    return np.asarray(values).mean(axis=0)
