"""The report of a run trained in TRL (or any ``transformers`` trainer) with proxygap's callbacks:
gold and proxy against ``d`` as in the study's RL section (:func:`proxygap.report.plots.plot_rl`
and :func:`proxygap.analysis.rl_analysis.analyse_rl`), the gold peak, the monitor's first alarm
and every logged row, written as ``report.md`` and ``report.html``.

Input: the history rows of :func:`proxygap.runs.history_from_log` (``step``, ``d``,
``reward/proxy`` and ``reward/gold`` relative to the first row, ``*_raw`` the logged means,
``reward/gold_se``, ``kl/k1``, ``monitor/*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxygap.analysis.rl_analysis import RLAnalysis, analyse_rl
from proxygap.report.document import Bullets, Document, Heading, Image, Paragraph, Table
from proxygap.report.format import fmt
from proxygap.report.plots import plot_rl
from proxygap.store.atomic import atomic_write_text

__all__ = ["TRLRun", "trl_numbers", "write_trl_report"]

PLOT = "plots/trl_gold_proxy.png"


@dataclass
class TRLRun:
    """One logged run in the shape :func:`plot_rl` draws: rows, their analysis, a label."""

    history: list[dict[str, float]]
    analysis: RLAnalysis
    label: str
    kl_coef: float = math.nan


def _rows_for_analysis(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    """Rows with gold and ``d``; a missing ``reward/gold_se`` counts as 0, a missing proxy NaN."""
    out = []
    for r in rows:
        if "reward/gold" in r and "d" in r:
            se = r.get("reward/gold_se", math.nan)
            out.append(
                {
                    **r,
                    "reward/gold_se": 0.0 if math.isnan(se) else se,
                    "reward/proxy": r.get("reward/proxy", math.nan),
                    "kl/k1": r.get("kl/k1", r["d"] ** 2),
                }
            )
    return out


def trl_numbers(rows: list[dict[str, float]]) -> dict[str, Any]:
    """The report's key numbers: the gold peak (step, ``d``, gold relative to the first row and
    as logged, its SE), gold at the end, the drop in SEs and whether gold turned down (more
    than 2 SE below the peak), and the monitor's first alarm (step, ``d``, gold); None where the
    rows do not have them."""
    usable = _rows_for_analysis(rows)
    out: dict[str, Any] = {"rows": len(rows), "peak": None, "end": None, "alarm": None}
    if usable:
        a = analyse_rl(usable)
        peak = next(r for r in usable if int(r["step"]) == a.peak_step)
        t = a.turn
        out["peak"] = {
            "step": a.peak_step, "d": a.peak_d, "gold": a.peak_gold, "gold_se": a.peak_gold_se,
            "gold_raw": peak.get("reward/gold_raw"), "proxy": peak.get("reward/proxy"),
        }  # fmt: skip
        last = usable[-1]
        out["end"] = {
            "step": int(last["step"]), "d": last["d"], "gold": last["reward/gold"],
            "proxy": last.get("reward/proxy"),
        }  # fmt: skip
        out["drop_se"] = t.drop / t.drop_se if t.drop_se > 0 else math.nan
        out["turns_down"] = bool(t.turns_down)
        out["analysis"] = a
    alarm = next((r for r in rows if r.get("monitor/alarm", 0.0) >= 1.0), None)
    if alarm is not None:
        out["alarm"] = {
            "step": int(alarm["step"]), "d": alarm.get("d"), "gold": alarm.get("reward/gold"),
            "score": alarm.get("monitor/score"),
        }  # fmt: skip
    return out


def _table(rows: list[dict[str, float]]) -> Table:
    header = [
        "step", "d", "KL k1", "proxy", "gold ± SE", "gold (logged)", "monitor score", "alarm",
    ]  # fmt: skip
    body = [
        [
            str(int(r["step"])),
            fmt(r.get("d")),
            fmt(r.get("kl/k1")),
            fmt(r.get("reward/proxy")),
            f"{fmt(r.get('reward/gold'))} ± {fmt(r.get('reward/gold_se'))}",
            fmt(r.get("reward/gold_raw")),
            fmt(r.get("monitor/score")),
            "**yes**" if r.get("monitor/alarm", 0.0) >= 1.0 else "no",
        ]
        for r in rows
    ]
    return Table(header, body, caption="Every logged row; proxy and gold relative to the first")


def write_trl_report(
    rows: list[dict[str, float]], out_dir: Path, *, source: str, label: str = "TRL run"
) -> Path:
    """Render the report of ``rows`` (read from ``source``) into ``out_dir``; return the
    path of ``report.html``."""
    numbers = trl_numbers(rows)
    doc = Document(f"proxygap report: {label}")
    doc.add(
        Paragraph(
            f"Read from `{source}`: {len(rows)} rows with proxygap's metrics. Proxy and gold are "
            "differences from the first row (the initial policy's samples), in the units the "
            "run logged them in; `d = sqrt(KL)` is the square root of the k1 estimate of the "
            "KL to the reference; SE is the standard error of the gold mean logged with it."
        )
    )
    doc.add(Heading("Gold, proxy and the monitor"))
    peak, end, alarm = numbers["peak"], numbers["end"], numbers["alarm"]
    items = []
    if peak is not None:
        items.append(
            f"Gold peak **{fmt(peak['gold'])} ± {fmt(peak['gold_se'])}** at step "
            f"**{peak['step']}** (d = {fmt(peak['d'])}; logged gold {fmt(peak['gold_raw'])}; "
            f"proxy {fmt(peak['proxy'])})."
        )
        items.append(
            f"At the end (step {end['step']}, d = {fmt(end['d'])}): gold {fmt(end['gold'])}, "
            f"proxy {fmt(end['proxy'])}; the drop from the peak is {fmt(numbers['drop_se'], 1)} "
            f"SE: {'gold turned down' if numbers['turns_down'] else 'no significant turn-down'}."
        )
    else:
        items.append("No row holds both gold and d: no gold curve (log a gold reward and KL).")
    if alarm is not None:
        items.append(
            f"The monitor's first alarm: step **{alarm['step']}** (score {fmt(alarm['score'])}, "
            f"d = {fmt(alarm['d'])}, gold {fmt(alarm['gold'])})."
        )
    else:
        items.append("The monitor did not alarm.")
    doc.add(Bullets(items))
    if peak is not None:
        run = TRLRun(_rows_for_analysis(rows), numbers["analysis"], label=label)
        plot_rl([run], None, out_dir / PLOT, proxy="its proxy", what=label)
        doc.add(Image(PLOT, "Gold and proxy against d (X: the monitor's first alarm)."))
    doc.add(_table(rows))
    atomic_write_text(out_dir / "report.md", doc.markdown())
    atomic_write_text(out_dir / "report.html", doc.html(out_dir))
    return out_dir / "report.html"
