"""The numbers of the mitigation table: per-run quantities and 95% intervals.

Every quantity is computed per unit (an RL run of one seed, or one best-of-n prompt) and then
summarised by its mean and a Student-t interval ``mean ± t_{0.975, n-1} * s / sqrt(n)`` (``s``
the sample standard deviation, ``ddof = 1``), as the table of a benchmark over seeds is in
CleanRL. Quantities (gold and proxy as described in :mod:`proxygap.study.mitigations`):

- ``gold_peak``: the highest gold over the evaluation points (RL) or over n (best-of-n);
- ``gold_end``: gold at the last evaluation (RL) or at n = N (best-of-n);
- ``d_peak``: ``d = sqrt(KL)`` at the gold peak;
- ``drop``: ``gold_peak - gold_end`` (overoptimization: > 0 past the peak);
- ``gap_end``: proxy minus gold at the end (both in base-sample SD units);
- ``std_growth``: ensemble member standard deviation at the end over its value at the start;
- ``turned_down``: 1 if the drop exceeds twice its standard error (RL: ``sqrt(se_peak^2 +
  se_end^2)`` from the evaluator, the report's turn-down test; best-of-n: the standard error
  over prompts of the per-prompt drop), else 0; its mean is the fraction of seeds (RL) that
  overoptimize. The peak is the largest of noisy values, so
  ``drop`` itself is biased upwards and is not a test.

For best-of-n the peak is the argmax of the mean curve over prompts, and each prompt
contributes its values at that n; ``d_peak`` is then one number, and its interval is a
percentile bootstrap over prompts (the argmax of resampled mean curves).
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


def bon_summary(
    per_prompt: np.ndarray, d: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Best-of-n quantities with intervals over prompts.

    Args:
        per_prompt: ``(P, J, 3)`` expected gold, proxy (SD units) and member std of the pick at
            each of ``J`` values of n (the first n = 1), per prompt.
        d: ``(J,)`` ``sqrt(KL_bon(n))``.
    """
    nan = float("nan")
    if per_prompt.ndim != 3 or per_prompt.shape[2] != 3 or per_prompt.shape[1] != len(d):
        raise ValueError(f"per_prompt must be (P, J={len(d)}, 3), got {per_prompt.shape}")
    gold = per_prompt[..., 0] - per_prompt[:, :1, 0]  # (P, J) relative to n = 1
    proxy = per_prompt[..., 1] - per_prompt[:, :1, 1]
    std = per_prompt[..., 2]
    k = int(np.argmax(gold.mean(axis=0)))
    P = gold.shape[0]
    drop = gold[:, k] - gold[:, -1]
    drop_se = float(drop.std(ddof=1) / np.sqrt(P)) if P > 1 else 0.0
    rng = np.random.default_rng(seed)
    boot = d[np.argmax(gold[rng.integers(0, P, size=(n_boot, P))].mean(axis=1), axis=1)]
    d_peak = {
        "mean": float(d[k]),
        "lo": float(np.quantile(boot, 0.025)),
        "hi": float(np.quantile(boot, 0.975)),
        "n": int(P),
    }
    return {
        "gold_peak": t_interval(gold[:, k]),
        "gold_end": t_interval(gold[:, -1]),
        "d_peak": d_peak,
        "drop": t_interval(drop),
        "gap_end": t_interval(proxy[:, -1] - gold[:, -1]),
        "std_growth": t_interval(std[:, -1] / std[:, 0]),
        "turned_down": {"mean": float(drop.mean() > 2 * drop_se), "lo": nan, "hi": nan, "n": 1},
    }
