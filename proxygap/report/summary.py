"""The report's opening summary: one line per finding, each with its numbers.

Best-of-n (per proxy) and RL (per KL coefficient): the gold peak and the end of the curve with
their standard errors and whether the drop from one to the other exceeds two standard errors
(Gao et al. 2023's overoptimization, docs/methods.md §6); for each penalised RL run whether it
beats the unpenalised run at the same KL or only stops earlier on its frontier. Direct
alignment: per loss, whether gold across the betas is hump-shaped (Rafailov et al. 2024).
Mitigations: the baseline's and the best arm's end gold with their intervals over seeds, and
the arms that turned down in no seed. The sections below hold the tables these lines come from.
"""

from __future__ import annotations

import math

from proxygap.report.daa_scale_section import daa_scale_lines
from proxygap.report.fdiv_claims import fdiv_lines
from proxygap.report.format import fmt
from proxygap.report.rl_section import frontier_verdict
from proxygap.report.scaling_section import scaling_lines
from proxygap.study.results import MitigationResult, ProxyResult, RLRunResult, StudyResult

__all__ = ["summary_lines"]


def _se_ratio(drop: float, se: float) -> str:
    return fmt(drop / se, 1) if se > 0 else "∞"


def _signed(x: float, se: float | None = None) -> str:
    """``+0.12`` (``± 0.03``): gold and proxy are differences from a start, so signed."""
    text = "nan" if x != x else f"{x:+.2f}".replace("-", "−")
    return text if se is None else f"{text} ± {fmt(se, 2)}"


def _verdict(turns_down: bool, drop: float, se: float) -> str:
    if turns_down:
        return f"**overoptimized**: it falls {_se_ratio(drop, se)} SE below its peak"
    return f"no significant drop ({_se_ratio(drop, se)} SE)" if drop > 0 else "no drop"


def _bon_line(r: ProxyResult) -> str:
    c, t = r.curve, r.curve.turn
    peak, end = t.peak_index, len(c.ns) - 1
    head = f"Best-of-n with `{r.config.name}` (held-out accuracy {fmt(r.heldout_accuracy)}): "
    at_end = f"{_signed(t.gold_end, float(c.gold_se[end]))} SD at n = {int(c.ns[end])}"
    if peak == 0:
        return head + f"gold never rises above n = 1 and is {at_end}: the proxy misleads at once."
    if peak == end:
        return head + f"gold still rises at the largest n, {at_end}."
    return (
        head + f"gold peaks at {_signed(t.gold_peak, float(c.gold_se[peak]))} SD at n = "
        f"{int(c.ns[peak])} and is {at_end}: {_verdict(t.turns_down, t.drop, t.drop_se)}."
    )


def _rl_line(r: RLRunResult) -> str:
    a, last = r.analysis, r.history[-1]
    t = a.turn
    head = f"RL with KL coefficient {r.kl_coef:g}: "
    end = (
        f"{_signed(last['reward/gold'], last['reward/gold_se'])} SD at step {int(last['step'])} "
        f"(KL {fmt(last['kl/k1'], 2)} nats, proxy {_signed(last.get('reward/proxy', math.nan))})"
    )
    if a.peak_step == 0:
        return head + f"gold never rises above the initial policy's and ends at {end}."
    if a.peak_step == int(last["step"]):
        return head + f"gold still rises at the last step, {end}."
    parts = f", proxy and gold part at step {a.divergence_step}" if a.divergence_step else ""
    return (
        head + f"gold peaks at {_signed(a.peak_gold, a.peak_gold_se)} at step {a.peak_step} "
        f"(KL {fmt(a.peak_kl, 2)} nats) and ends at {end}: "
        f"{_verdict(t.turns_down, t.drop, t.drop_se)}{parts}."
    )


def _mitigation_lines(m: MitigationResult) -> list[str]:
    if not m.summary:
        return []
    arms = {a.name: a for a in m.config.rl}
    end = {n: s["gold_end"] for n, s in m.summary.items()}
    best = max(end, key=lambda n: end[n]["mean"])
    base = next((n for n, a in arms.items() if a.aggregation == "single" and not a.transforms
                 and a.post_step is None and a.kl_coef == 0 and not a.components
                 and a.quark is None and a.reference == "base"), None)  # fmt: skip
    seeds = len(m.config.seeds)

    def ci(q: dict[str, float]) -> str:
        return f"{fmt(q['mean'], 2)} [{fmt(q['lo'], 2)}, {fmt(q['hi'], 2)}]"

    lines = []
    if base is not None:
        down = round(m.summary[base]["turned_down"]["mean"] * seeds)
        lines.append(
            f"Mitigations, RL: the unmitigated baseline `{base}` ends at gold {ci(end[base])} SD "
            f"(95% interval over {seeds} seeds) and turns down in {down}/{seeds} seeds."
        )
    never = [n for n, s in m.summary.items() if s["turned_down"]["mean"] == 0]
    lines.append(
        f"Mitigations, RL: the highest end gold is `{best}`'s, {ci(end[best])}; "
        + (f"no seed turns down for {', '.join(f'`{n}`' for n in never)}." if never else
           "every arm turns down in some seed.")
    )  # fmt: skip
    return lines


def summary_lines(study: StudyResult) -> list[str]:
    """One line per finding of ``study``, most general first."""
    lines = [_bon_line(r) for r in study.proxies]
    lines += [_rl_line(r) for r in study.rl_runs]
    base = next((r for r in study.rl_runs if r.kl_coef == 0), None)
    if base is not None:
        lines += [
            f"RL, KL penalty: {frontier_verdict(r, base)}" for r in study.rl_runs if r.kl_coef > 0
        ]
    if study.daa is not None:
        for loss, h in study.daa.hump.items():
            n = sum(1 for lo, _, _ in study.daa.runs if lo == loss)
            if n < 3:
                lines.append(
                    f"Direct alignment ({loss}): {n} beta(s), too few to test gold across betas "
                    "for a hump (the checkpoints are in the section below)."
                )
                continue
            shape = "**hump-shaped**" if h.turns_down else "not significantly hump-shaped"
            lines.append(
                f"Direct alignment ({loss}): gold across the betas' final checkpoints is {shape} "
                f"(best {_signed(h.gold_peak)} SD at d = {fmt(h.d_peak, 2)}, the furthest beta "
                f"{_signed(h.gold_end)}; drop {fmt(h.drop, 2)} ± {fmt(h.drop_se, 2)})."
            )
    if study.mitigations is not None:
        lines += _mitigation_lines(study.mitigations)
    if study.detect is not None:
        lines.append(_detect_line(study.detect.summary))
    if study.daa_scale is not None:
        lines += daa_scale_lines(study.daa_scale)
    if study.fdiv is not None:
        lines += fdiv_lines(study.fdiv.summary)
    if study.scaling is not None:
        lines += scaling_lines(study.scaling.summary)
    return lines or ["No stage produced a result to summarise."]


def _detect_line(summary: dict) -> str:
    """The monitor against the best reward-only baseline on the held-out seeds."""
    dets = summary["detectors"]
    ours = dets["proxygap"]
    if not ours.get("fitted", True):
        return "Monitor: not fitted (the detection corpus's training runs hold a single label)."
    base = max((v for k, v in dets.items() if k != "proxygap"), key=lambda v: v["auroc"] or 0)

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.0f}%"

    line = (
        f"Monitor on held-out runs: AUROC {fmt(ours['auroc'], 2)} against "
        f"{fmt(base['auroc'], 2)} for the best reward-only baseline; alarms before gold's drop in "
        f"{pct(ours['alarm_before_drop'])} of {ours['n_overoptimizing']} overoptimizing runs, "
        f"false alarms in {pct(ours['false_alarm_rate'])} of {ours['n_benign']} benign runs."
    )
    if ours.get("kept_gold_loss") is not None:  # absent in older runs
        line += (
            f" The checkpoint before its alarm holds gold a median {fmt(ours['kept_gold_loss'], 2)}"
            f" SD below the peak, against {fmt(ours['end_gold_loss'], 2)} for the last one."
        )
    return line
