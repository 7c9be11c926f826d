"""A beta sweep of the direct-alignment recipe: the KL budget against gold (Rafailov et al. 2024).

Rafailov et al. 2024 ("Scaling Laws for Reward Model Overoptimization in Direct Alignment
Algorithms") sweep ``beta`` to sweep the KL budget and plot gold quality against ``d = sqrt(KL)``
for the final checkpoints of every ``beta``: the curve is hump-shaped for DPO, IPO and SLiC.
:func:`summarise_sweep` takes the runs of :func:`proxygap.optimize.daa.train_daa`, one per
``(loss, beta)`` from the same initial policy, and summarises each loss with

- both Gao et al. 2023 laws, ``d (alpha - beta d)`` (best-of-n form) and ``d (alpha - beta log d)``
  (RL form), fitted to gold vs ``d`` over every checkpoint with ``d > 0``; neither is assumed to
  be the right one for DAAs, so both are reported with their R^2;
- the hump test (:func:`proxygap.analysis.laws.overoptimization`) on the final checkpoints across
  betas, sorted by ``d``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxygap.analysis.laws import LawFit, Overoptimization, fit_bon_law, fit_rl_law
from proxygap.analysis.laws import overoptimization as hump_test
from proxygap.optimize.loop import LoopResult


@dataclass
class DAASweep:
    """All runs of a beta sweep and, per loss, the law fits and the hump test.

    ``fits[loss]`` holds ``{"bon": LawFit, "rl": LawFit}`` (Gao et al. 2023) fitted to gold vs
    ``d`` over every checkpoint with ``d > 0`` of every beta, weighted by ``1 / gold_se^2``.
    ``hump[loss]`` applies :func:`overoptimization` to the final checkpoints across betas sorted
    by ``d``, the across-KL-budget curve of Rafailov et al. 2024.
    """

    runs: list[tuple[str, float, LoopResult]]
    fits: dict[str, dict[str, LawFit | None]]
    hump: dict[str, Overoptimization]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per (loss, beta, checkpoint)."""
        return [{"loss": loss, "beta": beta, **h} for loss, beta, r in self.runs for h in r.history]


def _fit_or_none(
    fit: Callable[..., LawFit], d: list[float], g: list[float], se: list[float]
) -> LawFit | None:
    """The fit, weighted by ``1 / se^2`` when every ``se > 0``; None with fewer than 2 points."""
    try:
        return fit(d, g, se if all(s > 0 for s in se) else None)
    except ValueError:  # fewer than 2 distinct points
        return None


def summarise_sweep(runs: list[tuple[str, float, LoopResult]]) -> DAASweep:
    """Per loss: both Gao et al. laws fitted to every checkpoint with ``d > 0``, and the hump
    test across the final checkpoints of its betas (Rafailov et al. 2024)."""
    fits: dict[str, dict[str, LawFit | None]] = {}
    hump: dict[str, Overoptimization] = {}
    for loss in dict.fromkeys(lo for lo, _, _ in runs):
        points = [h for lo, _, r in runs if lo == loss for h in r.history if h["d"] > 0]
        d, g, se = ([p[k] for p in points] for k in ("d", "reward/gold", "reward/gold_se"))
        fits[loss] = {
            "bon": _fit_or_none(fit_bon_law, d, g, se),
            "rl": _fit_or_none(fit_rl_law, d, g, se),
        }
        finals = sorted((r.history[-1] for lo, _, r in runs if lo == loss), key=lambda h: h["d"])
        hump[loss] = hump_test(
            [h["d"] for h in finals],
            [h["reward/gold"] for h in finals],
            [h["reward/gold_se"] for h in finals],
        )
    return DAASweep(runs, fits, hump)
