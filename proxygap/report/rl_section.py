"""The RL section of the study report: the KL sweep against one proxy, with best-of-n beside."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxygap.optimize.bon import BonCurve
from proxygap.report.document import Details, Document, Heading, Image, Paragraph, Table
from proxygap.report.format import fmt
from proxygap.report.plots import plot_rl

if TYPE_CHECKING:
    from proxygap.config import StudyConfig
    from proxygap.study.results import RLRunResult


def _table(runs: list[RLRunResult]) -> Table:
    header = [
        "β (KL coef.)", "α", "β_law", "R²", "law peak d*", "gold peak (step, KL)",
        "gold at peak ± SE", "final gold ± SE", "final KL", "final proxy", "drop / SE",
        "diverges at step", "overoptimized?",
    ]  # fmt: skip
    rows = []
    for r in runs:
        a, last = r.analysis, r.history[-1]
        t = a.turn
        ratio = t.drop / t.drop_se if t.drop_se > 0 else float("nan")
        fit = a.fit
        rows.append(
            [
                f"{r.kl_coef:g}",
                fmt(fit.alpha if fit else None),
                fmt(fit.beta if fit else None),
                fmt(fit.r2 if fit else None),
                fmt(fit.d_peak if fit else None, 2),
                f"{a.peak_step} ({fmt(a.peak_kl, 2)} nats)",
                f"{fmt(a.peak_gold)} ± {fmt(a.peak_gold_se)}",
                f"{fmt(last['reward/gold'])} ± {fmt(last['reward/gold_se'])}",
                fmt(last["kl/k1"], 2),
                fmt(last.get("reward/proxy")),
                fmt(ratio, 1),
                str(a.divergence_step) if a.divergence_step is not None else "–",
                "**yes**" if t.turns_down else "no",
            ]
        )
    return Table(header, rows, caption="RL runs: gold in SD units relative to the initial policy")


def _reading(runs: list[RLRunResult]) -> Paragraph:
    """An honest reading of the sweep: does a larger KL penalty reach higher gold at the same
    KL (a better frontier), or only stop earlier on the same frontier?"""
    hacked = [r for r in runs if r.analysis.turn.turns_down]
    parts = []
    if hacked:
        parts.append(
            "Gold peaks and then falls by more than 2 SE for "
            + ", ".join(f"β = {r.kl_coef:g} (peak at step {r.analysis.peak_step})" for r in hacked)
            + ", while the proxy keeps rising: the policy exploits the proxy."
        )
    else:
        parts.append("No run's gold falls significantly below its peak within its steps.")
    by_beta = sorted(runs, key=lambda r: r.kl_coef)
    finals = ", ".join(
        f"β = {r.kl_coef:g}: KL {fmt(r.history[-1]['kl/k1'], 2)}, peak gold "
        f"{fmt(r.analysis.peak_gold, 2)} at d = {fmt(r.analysis.peak_d, 2)}"
        for r in by_beta
    )
    parts.append(f"Larger penalties end at smaller KL ({finals}).")
    base = next((r for r in by_beta if r.kl_coef == 0), None)
    if base is not None:
        parts += [frontier_verdict(r, base) for r in by_beta if r.kl_coef > 0]
    return Paragraph("**Reading.** " + " ".join(parts))


def frontier_verdict(run: RLRunResult, base: RLRunResult) -> str:
    """Does ``run`` (a KL penalty) beat the unpenalised ``base`` at the same KL budget?

    The frontier of ``base`` at distance d is the best gold it reached at any point with
    ``d' <= d``; the penalised run's best point is compared with it, against the standard error
    of the difference (Gao et al. 2023 found the penalty only stops earlier on the frontier).
    """
    best = max(run.history, key=lambda h: h["reward/gold"])
    reach = [h for h in base.history if h["d"] <= best["d"]]
    if not reach:
        return f"β = {run.kl_coef:g}: no unpenalised point at d ≤ {fmt(best['d'], 2)} to compare."
    ref = max(reach, key=lambda h: h["reward/gold"])
    diff = best["reward/gold"] - ref["reward/gold"]
    se = (best["reward/gold_se"] ** 2 + ref["reward/gold_se"] ** 2) ** 0.5
    where = (
        f"at d ≤ {fmt(best['d'], 2)} (gold {fmt(best['reward/gold'], 2)} vs "
        f"{fmt(ref['reward/gold'], 2)}, difference {fmt(diff / se if se else 0.0, 1)} SE)"
    )
    if diff > 2 * se:
        return (
            f"β = {run.kl_coef:g} beats the unpenalised run's frontier {where}: here the "
            "penalty moves the frontier."
        )
    return (
        f"β = {run.kl_coef:g} stays on the unpenalised run's frontier {where}: here the "
        "penalty acts like early stopping."
    )


def rl_section(
    doc: Document,
    run_dir: Path,
    cfg: StudyConfig,
    runs: list[RLRunResult],
    bon: BonCurve | None,
) -> None:
    """Add the RL section (table, reading, plot, examples) to ``doc``."""
    assert cfg.rl is not None
    s = cfg.rl.settings
    plot_rl(runs, bon, run_dir / "plots" / "rl_gold_proxy.png", proxy=cfg.rl.proxy)
    doc.add(Heading("Online RL"))
    doc.add(
        Paragraph(
            f"{s.algo.upper()} against `{cfg.rl.proxy}`: {s.steps} steps of {s.prompts_per_step} "
            f"prompts × {s.group_size} samples, lr {s.lr:g}, KL penalty in the "
            f"{s.kl_mode} ({s.kl_controller}), evaluated every {s.eval_every} steps on "
            f"{s.eval_prompts} held-out prompts × {s.eval_samples_per_prompt} samples. KL is the "
            "sampled k1 estimate to the initial policy; best-of-n (dotted) is measured from its "
            "own sampler (the pool temperature), so its d axis is comparable only in shape."
        )
    )
    doc.add(_table(runs), _reading(runs))
    doc.add(Image("plots/rl_gold_proxy.png", "RL gold and proxy against d, best-of-n dotted."))
    rows: list[list[str]] = []
    for r in runs:
        peak = r.analysis.peak_step
        last = r.history[-1]["step"]
        for ex in r.examples:
            if ex.get("step") in (0, peak, last):
                rows.append(
                    [
                        f"{r.kl_coef:g}",
                        str(ex["step"]),
                        f"{ex['prompt']} ‖ {ex['response']}",
                        fmt(ex.get("proxy"), 2),
                        fmt(ex["gold"], 2),
                    ]
                )
    table = Table(["β", "step", "prompt ‖ response", "proxy", "gold (raw)"], rows)
    what = "Samples at the start, at the gold peak and at the end of each run"
    doc.add(Details(f"{what} ({len(rows)} rows)", [table]))


__all__: list[Any] = ["frontier_verdict", "rl_section"]
