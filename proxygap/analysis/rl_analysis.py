"""Summaries of one RL run's history (docs/methods.md §6): the fitted law, the gold peak and
where proxy and gold diverge.

Input is :attr:`proxygap.optimize.loop.LoopResult.history`: one row per evaluation point with
``step``, ``d``, ``kl/k1``, ``reward/gold``, ``reward/gold_se`` and ``reward/proxy``. Gao et
al. 2023 plot RL curves against ``d = sqrt(KL)``; the points are put in order of ``d`` (stable,
so ties keep their step order) before the turn-down and divergence tests of
:mod:`proxygap.analysis.laws`, which need ``d`` ascending. Along one run ``d`` mostly grows with
the step, so this changes little.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from proxygap.analysis.laws import (
    LawFit,
    Overoptimization,
    divergence_point,
    fit_rl_law,
    overoptimization,
)


@dataclass(frozen=True)
class RLAnalysis:
    """What one run reports.

    Attributes:
        fit: ``R(d) = d (alpha - beta log d)`` fitted to gold (Gao et al. 2023), or None with
            fewer than 2 distinct ``d > 0``.
        turn: peak and drop of gold against its standard errors, over points ordered by ``d``.
        peak_step, peak_kl, peak_d, peak_gold, peak_gold_se: the evaluation point with the
            highest gold.
        divergence_step, divergence_d: first point past the gold peak where gold has fallen by
            more than 2 standard errors while the proxy is above its value at the peak; None if
            there is none.
    """

    fit: LawFit | None
    turn: Overoptimization
    peak_step: int
    peak_kl: float
    peak_d: float
    peak_gold: float
    peak_gold_se: float
    divergence_step: int | None
    divergence_d: float | None

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values (for JSON)."""
        out = asdict(self)
        out["fit"] = None if self.fit is None else self.fit.as_dict()
        out["turn"] = asdict(self.turn) | {"turns_down": self.turn.turns_down}
        return out


def _column(history: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    missing = [i for i, row in enumerate(history) if key not in row]
    if missing:
        raise ValueError(f"history rows {missing[:5]} have no {key!r}")
    return np.array([float(row[key]) for row in history])


def analyse_rl(
    history: Sequence[Mapping[str, float]], *, weighted: bool = False, max_d: float | None = None
) -> RLAnalysis:
    """Fit, gold peak and proxy-gold divergence of one RL run.

    Args:
        history: evaluation rows (see the module docstring), at least one.
        weighted: weight the fit by ``1 / gold_se^2``. Off by default: the evaluator pairs each
            policy sample with an initial-policy sample drawn with the same random numbers, so
            near ``d = 0`` the samples coincide and the standard error shrinks towards 0, which
            would give the first points nearly all the weight.
        max_d: fit the law only to points with ``d <= max_d`` (e.g. to leave out a collapse of
            the policy, where the text stops being language and the law no longer applies); the
            peak and divergence use every point.
    """
    if not history:
        raise ValueError("the history is empty")
    step, d = _column(history, "step"), _column(history, "d")
    gold, se = _column(history, "reward/gold"), _column(history, "reward/gold_se")
    proxy, kl = _column(history, "reward/proxy"), _column(history, "kl/k1")
    se = np.nan_to_num(se, nan=0.0)
    order = np.argsort(d, kind="stable")
    step, d, gold, se, proxy, kl = (x[order] for x in (step, d, gold, se, proxy, kl))

    keep = d > 0
    if max_d is not None:
        keep &= d <= max_d
    if weighted:
        keep &= se > 0
    fit = None
    if np.unique(d[keep]).size >= 2:
        fit = fit_rl_law(d[keep], gold[keep], se[keep] if weighted else None)
    turn = overoptimization(d, gold, se)
    k = turn.peak_index
    j = divergence_point(d, proxy, gold, se)
    return RLAnalysis(
        fit=fit,
        turn=turn,
        peak_step=int(step[k]),
        peak_kl=float(kl[k]),
        peak_d=float(d[k]),
        peak_gold=float(gold[k]),
        peak_gold_se=float(se[k]),
        divergence_step=None if j is None else int(step[j]),
        divergence_d=None if j is None else float(d[j]),
    )
