"""The DAA scale section of the study report: gold against ``d`` over the beta grid at each
policy size, the peak's ``d`` with its interval, collapse apart from gradual decline, and whether
smaller policies overoptimize earlier (Rafailov et al. 2024; docs/methods.md §5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from proxygap.analysis.hump import Peak  # noqa: E402
from proxygap.report.document import Details, Document, Heading, Image, Paragraph, Table  # noqa: E402
from proxygap.report.format import fmt  # noqa: E402
from proxygap.store.atomic import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from proxygap.config.daa_scale import DAAScaleConfig
    from proxygap.study.results import DAAScaleResult

__all__ = ["daa_scale_lines", "daa_scale_section", "plot_daa_scale", "scale_verdict"]


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def scale_verdict(loss: str, peaks: list[tuple[str, int, Peak]]) -> tuple[str, str]:
    """Whether smaller policies overoptimize earlier for ``loss``, from the peaks of the sizes
    (``(size, parameters, peak)``): a label and a sentence.

    Earlier means a peak at smaller ``d``. ``yes``: the peak's ``d`` grows with size at every
    step and the smallest size's interval lies below the largest's; ``direction only``: it grows
    at every step but those intervals overlap; ``no``: it does not grow at every step;
    ``undetermined``: a size's gold does not turn down within its grid (its peak is a lower bound
    at the grid's end), or fewer than two sizes. Lower gold at the peak is reported beside it.
    """
    ordered = sorted(peaks, key=lambda x: x[1])
    if len(ordered) < 2:
        return "undetermined", f"{loss.upper()}: one size only."
    parts = "; ".join(
        f"{size} ({_params(n)}) peak d {fmt(p.d_peak, 2)} [{fmt(p.d_lo, 2)}, {fmt(p.d_hi, 2)}], "
        f"gold {fmt(p.gold_peak, 2)}"
        for size, n, p in ordered
    )
    flat = [size for size, _, p in ordered if not p.rises]
    if flat:  # the peak is at (or indistinguishable from) the initial policy
        parts += (
            f" (gold never rises more than 2 SE above the initial policy for {', '.join(flat)})"
        )
    open_ended = [size for size, _, p in ordered if not p.falls]
    if open_ended:
        return "undetermined", (
            f"{loss.upper()}: {parts}. Gold does not fall significantly past the peak for "
            f"{', '.join(open_ended)} within the β grid, so where it turns is not measured."
        )
    d = [p.d_peak for _, _, p in ordered]
    g = [p.gold_peak for _, _, p in ordered]
    gold_note = (
        "and the peak's gold grows with size too"
        if all(a < b for a, b in zip(g, g[1:], strict=False))
        else "but the peak's gold does not grow with size at every step"
    )
    if all(a < b for a, b in zip(d, d[1:], strict=False)):
        first, last = ordered[0][2], ordered[-1][2]
        if first.d_hi < last.d_lo:
            return "yes", (
                f"{loss.upper()}: {parts}. Smaller policies peak earlier (the smallest's interval "
                f"lies below the largest's), {gold_note}."
            )
        return "direction only", (
            f"{loss.upper()}: {parts}. The peak's d grows with size, but the smallest and "
            f"largest sizes' intervals overlap, so the ordering is not established; {gold_note}."
        )
    return "no", (
        f"{loss.upper()}: {parts}. The peak's d does not grow with size at every step: smaller "
        f"policies do not overoptimize earlier here; {gold_note}."
    )


def plot_daa_scale(result: DAAScaleResult, path: Path) -> None:
    """One panel per loss: gold (±2 SE) against d over the beta grid, one line per size, the
    peak starred with its interval as a horizontal bar, collapsed points (most responses never
    end) drawn as crosses."""
    sizes = list(result.curves)
    losses = list(result.curves[sizes[0]])
    fig, axes = plt.subplots(1, len(losses), figsize=(5.6 * len(losses), 4.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, loss in zip(axes[0], losses, strict=True):
        for i, size in enumerate(sizes):
            c, col = result.curves[size][loss], colors[i % len(colors)]
            label = f"{size} ({_params(result.params[size])})"
            ax.errorbar(c.d, c.gold, yerr=[2 * s for s in c.gold_se], fmt="o-", ms=3, lw=0.6,
                        color=col, label=label, elinewidth=0.7)  # fmt: skip
            bad = [j for j, x in enumerate(c.collapse) if x >= 0.5]
            ax.plot([c.d[j] for j in bad], [c.gold[j] for j in bad], "x", ms=9, color=col)
            p = c.peak
            ax.plot([p.d_peak], [p.gold_peak], "*", ms=13, color=col, mec="k")
            ax.plot([p.d_lo, p.d_hi], [p.gold_peak, p.gold_peak], "-", lw=3, color=col, alpha=0.5)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("symlog", linthresh=1.0)  # collapsed runs reach d ~ 10
        top = ax.get_xlim()[1]
        ticks = [t for t in (0, 0.25, 0.5, 0.75, 1, 2, 4, 8, 16) if t <= top]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlabel("d = sqrt(KL) of final checkpoints (linear below 1, log above)")
        ax.set_ylabel("gold − initial policy (SD units)")
        ax.set_title(f"{loss.upper()} over β by policy size (★ peak, × collapsed)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    atomic_write(path, lambda q: fig.savefig(q, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _table(result: DAAScaleResult) -> Table:
    header = [
        "size", "params", "loss", "peak d [95% interval]", "seed peaks d", "gold at peak",
        "hump?", "gradual decline ± SE", "collapse from d", "never-ending at largest d",
    ]  # fmt: skip
    rows = []
    for size, by_loss in result.curves.items():
        for loss, c in by_loss.items():
            p, dec = c.peak, c.decline
            rows.append(
                [
                    size,
                    _params(result.params[size]),
                    loss,
                    f"{fmt(p.d_peak, 2)} [{fmt(p.d_lo, 2)}, {fmt(p.d_hi, 2)}]",
                    ", ".join(fmt(x, 2) for x in c.seed_peaks),
                    f"{fmt(p.gold_peak, 2)} ± {fmt(c.gold_se[p.index], 2)}",
                    "**yes**" if p.hump else ("no turn-down" if not p.falls else "no rise"),
                    f"{fmt(dec.gradual, 2)} ± {fmt(dec.gradual_se, 2)}",
                    fmt(dec.onset_d, 2) if dec.onset_d is not None else "–",
                    f"{100 * c.collapse[-1]:.0f}%",
                ]
            )
    return Table(header, rows, caption="Per size and loss (gold in SD units of base samples)")


def _points(result: DAAScaleResult) -> Table:
    rows = []
    for size, by_loss in result.curves.items():
        for loss, c in by_loss.items():
            for j in range(len(c.d)):
                rows.append(
                    [
                        size,
                        loss,
                        "initial" if j == 0 else f"{c.betas[j - 1]:g} (seed {c.seeds[j - 1]})",
                        fmt(c.d[j], 2),
                        f"{fmt(c.gold[j], 2)} ± {fmt(c.gold_se[j], 2)}",
                        f"{100 * c.collapse[j]:.0f}%",
                        fmt(c.length[j], 1),
                    ]
                )
    header = ["size", "loss", "β (seed)", "d", "gold ± SE", "never-ending", "length"]
    return Table(header, rows, caption="Every point of every curve (final checkpoints)")


def daa_scale_section(
    doc: Document, run_dir: Path, spec: DAAScaleConfig, result: DAAScaleResult
) -> None:
    """Add the section: setup, the per-size table, the plot, the verdict, every point."""
    s = spec.settings
    plot_daa_scale(result, run_dir / "plots" / "daa_scale.png")
    doc.add(Heading("Direct alignment across policy sizes"))
    sizes = ", ".join(f"{k} ({_params(v)})" for k, v in result.params.items())
    seeds = f"{len(spec.seeds)} seeds" if len(spec.seeds) > 1 else "one seed"
    doc.add(
        Paragraph(
            f"Base policies of {sizes}, each its own reference, trained with "
            f"{', '.join(x.upper() for x in spec.betas)} over β grids "
            + "; ".join(f"{k}: {', '.join(f'{b:g}' for b in v)}" for k, v in spec.betas.items())
            + f" on the same gold-labelled pairs (lr {s.lr:g}, batch {s.batch_size}, "
            f"{s.epochs:g} epoch(s)), {seeds}, evaluated at the end on {s.eval_prompts} held-out "
            f"prompts × {s.eval_samples_per_prompt} samples against the size's own initial "
            "policy. The peak is the vertex of the parabola through the highest point and its "
            "neighbours (moved at most half the gap to the nearer one); its interval is a "
            "parametric bootstrap of the points' standard errors, so it holds evaluation noise; "
            + (
                "every seed's final checkpoint is a point of its own (seeds are not averaged: at "
                "one β one seed may collapse and the other not), and each seed's own peak is "
                "listed beside it"
                if len(spec.seeds) > 1
                else "one seed: training noise is not measured"
            )
            + ". A point has collapsed when at least "
            f"{100 * spec.collapse_threshold:.0f}% of its responses never end (they fill the "
            "token budget without an end token); the gradual decline is the drop from the peak "
            "to the last point before the collapse."
        )
    )
    doc.add(_table(result))
    doc.add(Image("plots/daa_scale.png", "Gold against d over the β grid, by policy size."))
    losses = list(next(iter(result.curves.values())))
    lines = [
        scale_verdict(
            loss, [(size, result.params[size], c[loss].peak) for size, c in result.curves.items()]
        )
        for loss in losses
    ]
    doc.add(
        Paragraph("**Do smaller policies overoptimize earlier?** " + " ".join(t for _, t in lines))
    )
    table = _points(result)
    doc.add(Details(f"Every point ({len(table.rows)} rows)", [table]))


def daa_scale_lines(result: DAAScaleResult) -> list[str]:
    """The report summary's lines: per loss, whether smaller policies overoptimize earlier."""
    lines = []
    for loss in next(iter(result.curves.values())):
        peaks = [(size, result.params[size], c[loss].peak) for size, c in result.curves.items()]
        label, _ = scale_verdict(loss, peaks)
        ordered = sorted(peaks, key=lambda x: x[1])
        where = ", ".join(f"{size} {fmt(p.d_peak, 2)}" for size, _, p in ordered)
        lines.append(
            f"Direct alignment across policy sizes ({loss}): smaller policies overoptimize "
            f"earlier? **{label}** (peak d by size: {where})."
        )
    return lines
