"""Plots of proxy and gold against ``d = sqrt(KL)`` (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proxygap.optimize.bon import BonCurve  # noqa: E402
from proxygap.store.atomic import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_bon(curves: Sequence[BonCurve], path: Path, *, title: str = "best-of-n") -> None:
    """Two panels: gold (with ±2 SE bands, the fitted law dashed, the peak marked) and proxy,
    both relative to n = 1, against d; a top axis shows n."""
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(curves):
        col = colors[i % len(colors)]
        label = f"{c.name} (R²={c.fit.r2:.3f})"
        ax_g.plot(c.d, c.gold, "o-", ms=3, color=col, label=label)
        ax_g.fill_between(
            c.d, c.gold - 2 * c.gold_se, c.gold + 2 * c.gold_se, color=col, alpha=0.15
        )
        dd = np.linspace(0, c.d.max(), 200)
        ax_g.plot(dd, c.fit.predict(dd), "--", color=col, lw=1)
        k = c.turn.peak_index
        ax_g.plot([c.d[k]], [c.gold[k]], "*", ms=12, color=col, mec="k")
        ax_p.plot(c.d, c.proxy, "o-", ms=3, color=col, label=c.name)
    for ax, what in ((ax_g, "gold"), (ax_p, "proxy")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("d = sqrt(KL_bon)  [nats^1/2]")
        ax.set_ylabel(f"{what} of the pick − pool mean")
        ax.grid(alpha=0.3)
        if curves:
            _n_axis(ax, curves[0])
    ax_g.set_title(f"{title}: gold (±2 SE; dashed: d(α−βd) fit; ★ observed peak)", fontsize=10)
    ax_p.set_title(f"{title}: proxy being optimised", fontsize=10)
    ax_g.legend(fontsize=8)
    ax_p.legend(fontsize=8)
    _save(fig, path)


def _n_axis(ax: plt.Axes, curve: BonCurve) -> None:
    """A secondary x axis labelled with n at powers of two."""
    ns = [n for n in (1, 4, 16, 64, 256, 1024, 4096, 16384) if n <= curve.ns.max()]
    d_of = {int(n): float(d) for n, d in zip(curve.ns, curve.d, strict=True)}
    ticks = [(d_of[n], n) for n in ns if n in d_of]
    top = ax.twiny()
    top.set_xlim(ax.get_xlim())
    top.set_xticks([t for t, _ in ticks])
    top.set_xticklabels([str(n) for _, n in ticks], fontsize=8)
    top.set_xlabel("n", fontsize=8)


def plot_proxy_vs_gold(curves: Sequence[BonCurve], path: Path) -> None:
    """Gold against proxy along best-of-n (one line per proxy, n growing along it): where gold
    stops rising while the proxy still does, the proxy is being exploited.

    Gold is in units of its SD on base-policy samples and each proxy in its own (centred)
    units, so no diagonal: the axes are not comparable. Each point's gold carries a ±1 SE band
    (shaded, so the few large-n points with wide errors do not dominate), ★ marks the gold
    peak and a few points are labelled with their n."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(curves):
        col = colors[i % len(colors)]
        ax.plot(c.proxy, c.gold, "o-", ms=2.5, lw=1.2, color=col, label=c.name)
        ax.fill_between(c.proxy, c.gold - c.gold_se, c.gold + c.gold_se, color=col, alpha=0.15)
        k = c.turn.peak_index
        ax.plot([c.proxy[k]], [c.gold[k]], "*", ms=11, color=col, mec="k", zorder=3)
        for n in (4, 64, 1024, 16384):
            j = int(np.searchsorted(c.ns, n))
            if j < len(c.ns) and int(c.ns[j]) == n:
                ax.annotate(f"n={n}", (c.proxy[j], c.gold[j]), fontsize=7, color=col,
                            xytext=(3, -10), textcoords="offset points")  # fmt: skip
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("proxy of the pick − pool mean (each proxy's own units)")
    ax.set_ylabel("gold of the pick − pool mean (SD units)")
    ax.set_title("gold against proxy along best-of-n (±1 SE; ★ gold peak)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_rl(
    runs: Sequence, bon: BonCurve | None, path: Path, *, proxy: str, what: str = "RL"
) -> None:
    """RL runs (one per KL coefficient) as gold and proxy against d, with the best-of-n curve of
    the same proxy for comparison; the fitted ``d(α − β log d)`` law is dashed. A run with a
    ``label`` attribute is labelled by it; ``what`` names the optimiser in the titles."""
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(runs):
        col = colors[i % len(colors)]
        d = np.array([h["d"] for h in r.history])
        gold = np.array([h["reward/gold"] for h in r.history])
        se = np.nan_to_num(np.array([h["reward/gold_se"] for h in r.history]))
        proxy_v = np.array([h.get("reward/proxy", np.nan) for h in r.history])
        fit = r.analysis.fit
        name = getattr(r, "label", None) or f"RL β={r.kl_coef:g}"
        label = name + (f" (R²={fit.r2:.2f})" if fit is not None else "")
        ax_g.errorbar(d, gold, yerr=2 * se, fmt="o-", ms=3, lw=1, color=col, label=label,
                      elinewidth=0.7, ecolor=(*matplotlib.colors.to_rgb(col), 0.35))  # fmt: skip
        if fit is not None and d.max() > 0:
            dd = np.linspace(1e-3, d.max(), 200)
            ax_g.plot(dd, fit.predict(dd), "--", lw=1, color=col)
        ax_p.plot(d, proxy_v, "o-", ms=3, lw=1, color=col, label=name)
        alarms = [i for i, h in enumerate(r.history) if h.get("monitor/alarm") == 1.0]
        if alarms:  # the monitor's first alarm on the gold curve
            ax_g.plot(d[alarms[0]], gold[alarms[0]], "X", ms=11, color=col, mec="k")
    if bon is not None:
        ax_g.plot(bon.d, bon.gold, "k:", lw=1.5, label=f"best-of-n ({bon.name})")
        ax_p.plot(bon.d, bon.proxy, "k:", lw=1.5, label=f"best-of-n ({bon.name})")
    for ax, what in ((ax_g, "gold"), (ax_p, "proxy")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("d = sqrt(KL(π || π_init))  [nats^1/2]")
        ax.set_ylabel(f"{what} − initial policy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    marks = "±2 SE; dashed: d(α−β log d) fit; X: monitor's first alarm"
    ax_g.set_title(f"{what} against {proxy}: gold ({marks})", fontsize=10)
    ax_p.set_title(f"{what} against {proxy}: proxy", fontsize=10)
    _save(fig, path)


def plot_daa(sweep: Any, bon: Sequence[BonCurve], rl_runs: Sequence, path: Path) -> None:
    """Gold against d for every DAA loss (one panel per loss: each beta's checkpoints joined,
    final checkpoints starred), with RL runs and best-of-n curves of the same study overlaid."""
    losses = list(dict.fromkeys(lo for lo, _, _ in sweep.runs))
    fig, axes = plt.subplots(1, len(losses), figsize=(5.2 * len(losses), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, loss in zip(axes[0], losses, strict=True):
        runs = [(b, r) for lo, b, r in sweep.runs if lo == loss]
        for i, (beta, r) in enumerate(runs):
            d = np.array([h["d"] for h in r.history])
            g = np.array([h["reward/gold"] for h in r.history])
            se = np.nan_to_num(np.array([h["reward/gold_se"] for h in r.history]))
            col = colors[i % len(colors)]
            ax.errorbar(d, g, yerr=2 * se, fmt="o-", ms=3, lw=1, color=col, label=f"β={beta:g}",
                        elinewidth=0.7, ecolor=(*matplotlib.colors.to_rgb(col), 0.35))  # fmt: skip
            ax.plot(d[-1:], g[-1:], "*", ms=12, color=col, mec="k")
        for c in bon:
            ax.plot(c.d, c.gold, ":", color="grey", lw=1.2)
        if bon:
            ax.plot([], [], ":", color="grey", label="best-of-n")
        for r in rl_runs:
            rl_d = [h["d"] for h in r.history]
            ax.plot(rl_d, [h["reward/gold"] for h in r.history], "-.", color="k", lw=1)
        if rl_runs:
            ax.plot([], [], "-.", color="k", label="RL")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("symlog", linthresh=1.0)  # collapsed runs reach d ~ 10; keep d < 1 legible
        top = ax.get_xlim()[1]
        ticks = [t for t in (0, 0.25, 0.5, 1, 2, 4, 8, 16, 32) if t <= top]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("d = sqrt(KL(π || π_init))  (linear below 1, log above)")
        ax.set_ylabel("gold − initial policy")
        ax.set_title(f"{loss.upper()}: checkpoints inside epoch 1 (★ final)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)
