"""Plots of the mitigation study: gold against d per RL arm (seed mean with a 95% band over
seeds, the baseline in grey on every panel) and ensemble disagreement against the step."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import t as student_t  # noqa: E402

from proxygap.store.atomic import atomic_write  # noqa: E402

Histories = Mapping[str, Sequence[Sequence[Mapping[str, float]]]]


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def seed_band(
    runs: Sequence[Sequence[Mapping[str, float]]], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, lo, hi)`` of ``key`` over seeds at each evaluation point (95% t-band)."""
    x = np.array([[float(r[key]) for r in h] for h in runs])  # (S, E)
    mean = x.mean(axis=0)
    if x.shape[0] < 2:
        return mean, mean, mean
    half = student_t.ppf(0.975, x.shape[0] - 1) * x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])
    return mean, mean - half, mean + half


def plot_mitigation_rl(histories: Histories, baseline: str | None, path: Path) -> None:
    """One panel per arm: gold against d at each evaluation step (seed means), with the 95%
    interval of gold over seeds as error bars."""
    names = list(histories)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes.flat, names, strict=False):
        if baseline is not None and name != baseline:
            d, _, _ = seed_band(histories[baseline], "d")
            g, _, _ = seed_band(histories[baseline], "reward/gold")
            ax.plot(d, g, "-", color="grey", lw=1, label=baseline)
        d, _, _ = seed_band(histories[name], "d")
        g, lo, hi = seed_band(histories[name], "reward/gold")
        # d is not monotone along a run (e.g. after a reset): the band is drawn as error bars
        ax.errorbar(d, g, yerr=[g - lo, hi - g], fmt="o-", ms=2.5, lw=1, color="C0",
                    ecolor=(0.12, 0.47, 0.71, 0.35), label=name)  # fmt: skip
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("d = sqrt(KL)", fontsize=8)
        ax.set_ylabel("gold − initial (SD)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    _save(fig, path)


def plot_mitigation_std(histories: Histories, path: Path) -> None:
    """Ensemble member std (seed mean) against the step for every arm."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, runs) in enumerate(histories.items()):
        step, _, _ = seed_band(runs, "step")
        s, lo, hi = seed_band(runs, "ensemble/std")
        ax.plot(step, s, "-", color=f"C{i % 10}", label=name)
        ax.fill_between(step, lo, hi, color=f"C{i % 10}", alpha=0.1)
    ax.set_xlabel("RL step")
    ax.set_ylabel("member std (standardised members)")
    ax.set_title("Ensemble disagreement on the policy's samples (seed mean, 95% band)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
