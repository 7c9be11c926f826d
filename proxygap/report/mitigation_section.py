"""The mitigation section of the study report: best-of-n selection variants and RL arms against
the single-reward-model baseline, with 95% intervals, plots and a verdict on every published
claim of docs/methods.md §4 (Coste et al. 2023; Noukhovitch et al. 2023; Wang et al. 2024; Fu et al.
2025; Lu et al. 2022; Chegini et al. 2024; Moskovitz et al. 2023), computed from this run's
numbers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from proxygap.config import MitigationRunConfig
from proxygap.report.document import Document, Heading, Image, Paragraph, Table
from proxygap.report.format import fmt
from proxygap.report.mitigation_claims import (
    constrained_claim,
    frontier_claim,
    is_baseline,
    overoptimizes,
    quark_claim,
    salsa_claim,
    transform_claim,
)
from proxygap.report.mitigation_coste import bon_claim, ppo_claim, variance_claim
from proxygap.report.mitigation_plots import plot_mitigation_rl, plot_mitigation_std
from proxygap.report.plots import plot_bon

if TYPE_CHECKING:
    from proxygap.config import StudyConfig
    from proxygap.study.results import MitigationResult

COLUMNS = ["gold_peak", "d_peak", "gold_end", "drop", "gap_end", "std_growth"]
HEADER = [
    "gold at peak", "d at peak", "gold at end", "drop (peak − end)", "proxy − gold at end",
    "ensemble std growth",
]  # fmt: skip


def ci(q: Mapping[str, float], digits: int = 2) -> str:
    """``mean [lo, hi]``, or just the mean when there is no interval."""
    if q["lo"] != q["lo"]:
        return fmt(q["mean"], digits)
    return f"{fmt(q['mean'], digits)} [{fmt(q['lo'], digits)}, {fmt(q['hi'], digits)}]"


def describe(arm: MitigationRunConfig, member: int) -> str:
    """A short description of an arm."""
    if arm.components:
        reward = "sum of " + " + ".join(arm.components)
    elif arm.aggregation == "single":
        reward = f"member {member}"
    else:
        reward = f"ensemble {arm.aggregation}" + (
            f" (λ {arm.uwo_lambda:g})" if arm.aggregation == "uwo" else ""
        )
    parts = [reward]
    if arm.quark is not None:
        q = arm.quark
        parts.append(f"Quark ({q.k} quantiles, KL {q.kl_coef:g})")
    if arm.constraint is not None:
        c = arm.constraint
        parts.append(f"{c.mode} constraints at the proxy points of {c.points_from}")
    if arm.reference != "base":
        ref = {"sft": "start and reference: SFT variant", "soup": "SALSA soup"}
        parts.append(ref[arm.reference])
    parts += [t.method + (f" {dict(t.params)}" if t.params else "") for t in arm.transforms]
    if arm.post_step is not None:
        parts.append(f"{arm.post_step.method} {dict(arm.post_step.params)}")
    if arm.kl_coef:
        parts.append(f"KL {arm.kl_coef:g}")
    return ", ".join(parts)


def _row(summary: Mapping[str, Mapping[str, float]]) -> list[str]:
    td = summary["turned_down"]
    over = (
        f"{int(round(td['mean'] * td['n']))}/{td['n']}"
        if td["n"] > 1
        else ("**yes**" if td["mean"] > 0.5 else "no")
    )
    cells = [ci(summary[q]) for q in COLUMNS]
    return cells + [f"**{over}**" if overoptimizes(summary) else over]


def _members_table(diagnostics: list[dict]) -> Table:
    """Per seed: each member's best-of-n ceiling, their error correlation, whom WCO follows."""
    rows = []
    for d in diagnostics:
        ceilings = d["ceilings"]
        follow = max(range(len(d["wco_argmin"])), key=lambda k: d["wco_argmin"][k])
        rows.append(
            [
                str(d["seed"]),
                ", ".join(fmt(c, 2) for c in ceilings),
                f"member {min(range(len(ceilings)), key=lambda k: ceilings[k])}",
                fmt(d["error_corr"], 2),
                f"member {follow} ({fmt(100 * d['wco_argmin'][follow], 0)}%)",
                f"{fmt(100 * max(d['wco_same_pick']), 0)}%",
            ]
        )
    return Table(
        ["seed", "members' gold peaks", "lowest ceiling", "error correlation",
         "WCO's minimum at its pick", "WCO pick = a member's pick"],
        rows,
        caption="Best-of-n members per seed: each member's gold peak (its ceiling); the mean "
        "correlation over member pairs of their errors (member − gold, over the pool); the "
        "member that is the minimum at WCO's n = N pick on most prompts; the largest share of "
        "prompts on which WCO picks what one member picks alone",
    )  # fmt: skip


def mitigation_section(
    doc: Document, run_dir: Path, cfg: StudyConfig, result: MitigationResult
) -> None:
    """Add the mitigation section (tables, plots, claims) to ``doc``."""
    m = result.config
    s = m.settings
    doc.add(Heading("Mitigations compared"))
    draw = (
        "every seed trains its own ensemble (new member seeds, the same pairs and labels), so "
        "the intervals cover the draw of the reward models as well as the sampling"
        if m.ensembles == "per_seed"
        else "one ensemble serves every seed, so the intervals cover the sampling only"
    )
    doc.add(
        Paragraph(
            f"Every reward comes from the ensemble proxy `{m.proxy}`: {draw}. The unmitigated "
            "baseline is a single member: in best-of-n every member alone (`member-<k>`) and "
            "their average (`single`: each quantity averaged over the members of a seed's "
            "ensemble, its turn-down the share of members that turn down), as Coste et al. "
            f"compare ensembles against single reward models; in RL member {m.member} of each "
            "seed's ensemble. Gold and proxy are in units of their standard "
            "deviation over base-policy samples (proxy: the untransformed reward each arm "
            "optimises), relative to the initial policy (RL) or n = 1 (best-of-n). Intervals "
            "are 95% Student-t intervals of the mean over the seeds "
            f"{m.seeds} (best-of-n: a fresh pool per seed; RL: one run per seed). Ensemble std "
            "growth: the members' standard deviation on the chosen samples at the end over its "
            "value at the start (best-of-n: n = N over n = 1)."
        )
    )
    if result.bon and m.bon is not None:
        curves = [v.curve for v in result.bon if not v.name.startswith("member-")]
        plot_bon(curves, run_dir / "plots" / "mitigation_bon.png", title="best-of-n selection")
        rows = [[v.name, *_row(v.summary)] for v in result.bon]
        doc.add(
            Table(
                ["selection", *HEADER, "turns down?"],
                rows,
                caption=f"Best-of-n with the members of `{m.proxy}` (UWO λ "
                f"{m.bon.uwo_lambda:g}), {m.bon.n_prompts} prompts × {m.bon.pool_size} samples "
                "per seed; mean [95% interval over seeds]",
            ),
            Image("plots/mitigation_bon.png", "Best-of-n gold and proxy by selection rule."),
        )
        if result.diagnostics:
            doc.add(_members_table(result.diagnostics))
    if result.histories:
        base = next((a.name for a in m.rl if is_baseline(a)), None)
        plot_mitigation_rl(result.histories, base, run_dir / "plots" / "mitigation_rl.png")
        plot_mitigation_std(result.histories, run_dir / "plots" / "mitigation_std.png")
        rows = [[a.name, describe(a, m.member), *_row(result.summary[a.name])] for a in m.rl]
        doc.add(
            Paragraph(
                f"RL: {s.algo.upper()}, {s.steps} steps of {s.prompts_per_step} prompts × "
                f"{s.group_size} samples, lr {s.lr:g}, evaluated every {s.eval_every} steps on "
                f"{s.eval_prompts} held-out prompts × {s.eval_samples_per_prompt} samples (the "
                "same prompts and samplers for every arm); LSC, PAR and Quark's initial pool use "
                f"{m.reference_samples} initial-policy samples per training prompt. Gold and d "
                "are measured against the base policy for every arm, so arms that start from an "
                "SFT variant or the soup show their start at step 0."
            ),
            Table(
                ["arm", "what", *HEADER, "seeds turning down"],
                rows,
                caption="RL arms: mean [95% interval over seeds]",
            ),
            Image("plots/mitigation_rl.png", "Gold against d per arm (baseline in grey)."),
            Image("plots/mitigation_std.png", "Ensemble disagreement along training."),
        )
    doc.add(Heading("Published claims, checked here"))
    bon = {v.name: v.summary for v in result.bon}
    runs = {v.name: v.runs for v in result.bon}
    claims = [bon_claim(bon, runs, result.diagnostics)] if bon else []
    if result.histories:
        claims += [
            ppo_claim(m.rl, result.summary, result.histories),
            variance_claim(m.rl, result.summary, result.histories),
            frontier_claim(m.rl, result.summary, result.histories),
            transform_claim(m.rl, result.summary, result.histories),
            quark_claim(m.rl, result.summary, result.histories),
            salsa_claim(m.rl, result.summary, result.histories),
            constrained_claim(m.rl, result.summary, result.histories, result.points),
        ]
    doc.add(*[Paragraph(c) for c in claims])
    if result.points:
        rows = [
            [arm, *(f"{n} {fmt(v, 3)}" for n, v in pts.items())]
            for arm, pts in result.points.items()
        ]
        width = max(len(r) for r in rows)
        doc.add(
            Table(
                ["arm", *[f"proxy point {i + 1}" for i in range(width - 1)]],
                [r + [""] * (width - len(r)) for r in rows],
                caption="Proxy points: each component (standardised) at the gold peak of the "
                "unconstrained arm, mean over its seeds",
            )
        )
    doc.add(
        Paragraph(
            "Files: `mitigations/<arm>/seed-<s>/history.json` (evaluation rows with "
            "`ensemble/std`, `component/*` and the trainer's metrics), `examples.json`, "
            "`mitigations/bon/seed-<s>.npz` (the best-of-n pools' gold and member scores) and "
            "`mitigations/summary.json` (every number of the tables)."
        )
    )
