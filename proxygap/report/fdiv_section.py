"""The report's f-divergence section: every RL arm (f-DPG) and DAA row (f-DPO) on the gold-vs-d
frontier with 95% intervals over seeds, a table of gold, ``d`` and diversity, paired
differences from the baseline arm, and a verdict on each published claim
(:mod:`proxygap.report.fdiv_claims`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from proxygap.report.document import Bullets, Document, Heading, Image, Paragraph, Table  # noqa: E402
from proxygap.report.fdiv_claims import NAMES, fdiv_verdicts  # noqa: E402
from proxygap.report.format import fmt  # noqa: E402
from proxygap.report.mitigation_plots import seed_band  # noqa: E402
from proxygap.store.atomic import atomic_write  # noqa: E402
from proxygap.study.results import FDivResult  # noqa: E402

__all__ = ["fdiv_section", "plot_fdiv"]

Histories = Mapping[str, Sequence[Sequence[Mapping[str, float]]]]

COLUMNS = {
    "gold_peak": "gold at peak", "d_peak": "d at peak", "gold_end": "gold at end",
    "d_end": "d at end", "gold_at_d": "gold at d*", "distinct1_end": "distinct-1",
    "distinct2_end": "distinct-2",
}  # fmt: skip


def plot_fdiv(
    panels: Mapping[str, Histories], path: Path, d_common: Mapping[str, float] | None = None
) -> None:
    """One panel per family (RL, DAA): gold against ``d``, each seed's run as a thin line and
    the mean over seeds at each evaluation as a bold one, one colour per arm; a dashed line at
    the panel's common ``d*`` (``d_common``, by panel title). A seed that runs far (a collapse)
    stretches ``d``: past ``d`` = 1 the axis is then logarithmic (symlog), so the runs near the
    start stay readable. Intervals are in the tables, not drawn: with three seeds and one
    collapse they would cover the panel."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False, layout="constrained"
    )
    for ax, (title, histories) in zip(axes.flat, panels.items(), strict=True):
        far = 0.0
        for i, (arm, runs) in enumerate(histories.items()):
            for run in runs:
                ds = [r["d"] for r in run]
                far = max(far, *ds)
                ax.plot(ds, [r["reward/gold"] for r in run], "-", lw=0.7, color=f"C{i}", alpha=0.35)
            dm, _, _ = seed_band(runs, "d")
            gm, _, _ = seed_band(runs, "reward/gold")
            ax.plot(dm, gm, "o-", ms=3, lw=1.8, color=f"C{i}", label=NAMES.get(arm, arm))
        if d_common and title in d_common:
            ax.axvline(d_common[title], color="grey", ls="--", lw=0.8, label="d*")
        if far > 3.0:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0.0)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("d = sqrt(KL to the base policy)")
        ax.set_ylabel("gold (SD units, vs base)")
        ax.legend(fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def _cell(iv: Mapping[str, float]) -> str:
    return f"{fmt(iv['mean'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def _table(part: Mapping[str, Any], extra: Mapping[str, str], caption: str) -> Table:
    cols = {**COLUMNS, **extra}
    rows = [
        [NAMES.get(arm, arm), *(_cell(s[q]) for q in cols)] for arm, s in part["summary"].items()
    ]
    return Table(["arm", *cols.values()], rows, caption=caption)


def _paired_table(part: Mapping[str, Any], caption: str) -> Table:
    qs = ("gold_end", "gold_at_d", "distinct2_end", "d_end")
    base = part["baseline"]
    rows = [
        [NAMES.get(arm, arm), *(_cell(p[q]) for q in qs)]
        for arm, p in part["paired"].items()
        if arm != base
    ]
    header = ["arm", *(f"Δ {COLUMNS[q]}" for q in qs)]
    return Table(header, rows, caption=caption + f" (minus {NAMES.get(base, base)}, per seed)")


def fdiv_section(doc: Document, run_dir: Path, result: FDivResult) -> None:
    """Append the section (plot, tables, verdicts) for ``result`` to ``doc``."""
    cfg, summary = result.config, result.summary
    panels: dict[str, Histories] = {}
    d_common: dict[str, float] = {}
    for part, histories, title in [
        ("rl", result.rl, f"RL (f-DPG, beta {cfg.rl.beta:g})" if cfg.rl else "RL"),
        ("daa", result.daa, f"DAA (f-DPO, beta {cfg.daa.beta:g})" if cfg.daa else "DAA"),
    ]:
        if histories:
            panels[title] = histories
            if summary.get(part, {}).get("d_common") is not None:
                d_common[title] = float(summary[part]["d_common"])
    doc.add(Heading("f-divergences"))
    doc.add(
        Paragraph(
            f"Every arm ran with seeds {cfg.seeds} on the same training prompts (RL) or pairs "
            "(DAA) and the same held-out evaluation prompts. RL arms minimise `D_f(π ‖ p)` "
            "towards `p ∝ π0 exp(r/β)` with the proxy as `r` (reverse KL is the KL-penalised "
            "RLHF objective); DAA rows use the f-DPO link of each divergence (DPO is reverse "
            "KL). Cells are means over seeds with 95% Student-t intervals over seeds. The "
            "points of one curve are evaluated on the same prompts, so they are correlated; "
            "the intervals treat each run as one unit. `d*` is the smallest over all runs of the "
            "largest `d` each reached, so every run has a gold there (RL: "
            + fmt(summary.get("rl", {}).get("d_common"))
            + "; DAA: "
            + fmt(summary.get("daa", {}).get("d_common"))
            + "): gold at `d*` compares the arms at equal drift, so a difference there moves "
            "the frontier rather than the stopping point."
        )
    )
    if panels:
        plot_fdiv(panels, run_dir / "plots" / "fdiv_frontier.png", d_common)
        doc.add(
            Image(
                "plots/fdiv_frontier.png",
                "Gold against d per divergence: each seed's run (thin) and the mean over seeds "
                "at each evaluation (bold); dashed: the common d*.",
            )
        )
    if "rl" in summary:
        doc.add(
            _table(summary["rl"], {"ess_end": "ESS (fraction of G)"}, "RL arms (f-DPG)"),
            _paired_table(summary["rl"], "RL arms, paired differences"),
        )
    if "daa" in summary:
        doc.add(
            _table(
                summary["daa"],
                {"heldout_accuracy_end": "held-out accuracy", "heldout_ece_end": "held-out ECE"},
                "DAA rows",
            ),
            _paired_table(summary["daa"], "DAA rows, paired differences"),
        )
    verdicts = fdiv_verdicts(summary)
    if verdicts:
        doc.add(Heading("Published claims", level=3))
        doc.add(
            Bullets([f"**{v.status}** — {v.source}: {v.claim}. {v.sentence}" for v in verdicts])
        )
