"""The detection section of the study report: the monitor against reward-only baselines on
held-out runs, the peak forecast, and a few held-out runs with the monitor's score over gold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proxygap.monitor.benchmark import label_points  # noqa: E402
from proxygap.monitor.detector import Detector  # noqa: E402
from proxygap.monitor.signals import FEATURES, features  # noqa: E402
from proxygap.report.document import Document, Heading, Image, Paragraph, Table  # noqa: E402
from proxygap.report.format import fmt  # noqa: E402
from proxygap.store.atomic import atomic_write  # noqa: E402

if TYPE_CHECKING:
    from proxygap.study.results import DetectResult

_NAMES = {
    "proxygap": "proxygap monitor",
    "variance_collapse": "reward variance collapse",
    "cusum_slope": "CUSUM on the reward slope",
    "length_drift": "length drift",
}


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.0f}%"


def _row(name: str, s: dict[str, Any]) -> list[str]:
    return [
        _NAMES.get(name, name),
        fmt(s.get("auroc")),
        _pct(s.get("alarm_before_drop")),
        fmt(s.get("median_lead_steps"), 0),
        _false_alarms(s),
        f"{s['n_overoptimizing']} / {s['n_benign']}",
    ]


def _dips(s: dict[str, Any]) -> str:
    """A caption's note on the benign runs whose gold fell below its start and recovered."""
    k = s.get("n_benign_dipped")
    if not k:
        return ""
    return (f" {k} of the {s['n_benign']} benign runs fell more than one SE below their start "
            "mid-run and recovered to a new peak by the end.")  # fmt: skip


def _false_alarms(s: dict[str, Any]) -> str:
    """The false-alarm share, and how many of those runs' gold fell below its start mid-run."""
    share, dipped = _pct(s.get("false_alarm_rate")), s.get("false_alarms_dipped")
    return f"{share} ({dipped} where gold fell below its start)" if dipped else share


HEADER = ["detector", "AUROC", "alarm before drop", "median lead (steps)", "false alarms",
          "runs (overopt. / benign)"]  # fmt: skip


def _plot(result: DetectResult, detector: Detector, path: Path, test_seeds: list[int]) -> None:
    """Gold and the monitor's score along held-out runs: one panel per family (first test
    seed), the drop and the first alarm marked."""
    keys = [k for k in result.histories if k[1] == test_seeds[0]]
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        h = result.histories[key]
        steps = [r["step"] for r in h]
        gold = [r["reward/gold"] for r in h]
        x = np.array([[features(r, h[0])[f] for f in FEATURES] for r in h])
        score = detector.probability(x)
        ax.plot(steps, gold, "o-", ms=3, color="C0", label="gold")
        twin = ax.twinx()
        twin.plot(steps, score, "-", color="C3", lw=1.2, label="monitor score")
        twin.axhline(detector.threshold, color="C3", ls=":", lw=0.8)
        twin.set_ylim(0, 1)
        lab = label_points(h)
        if lab.drop is not None:
            ax.axvline(steps[lab.drop], color="k", ls="--", lw=0.8)
        alarms = np.flatnonzero(score >= detector.threshold)
        if len(alarms):
            ax.plot(steps[alarms[0]], gold[alarms[0]], "X", ms=10, color="C3", mec="k")
        ax.set_title(f"{key[0]} (seed {key[1]})", fontsize=9)
        ax.tick_params(labelsize=7)
        twin.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(
        "Held-out runs: gold (blue, left axis) and the monitor's score (red, right; dotted: "
        "threshold); dashed: gold's drop; X: first alarm",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def detect_section(doc: Document, run_dir: Path, result: DetectResult, cfg: Any) -> None:
    """Append the detection section (its plot goes to ``plots/detect_runs.png``)."""
    s = result.summary
    corpus, fc = s["corpus"], s["forecast"]
    doc.add(Heading("Overoptimization monitor"))
    doc.add(
        Paragraph(
            f"A corpus of {corpus['runs']} runs ({len(corpus['families'])} configuration "
            f"families x {len(cfg.seeds)} seeds), {corpus['overoptimizing']} of which "
            "overoptimize: gold falls more than one standard error below its peak. The monitor "
            "reads no gold: the proxy, its spread, KL, length, distinct bigrams, the policy's "
            "entropy, the disagreement of a reward-model ensemble, the outlier rate of the "
            "samples in a reward model's hidden space and the share of samples the initial "
            "policy finds unlikely. Its weights and every detector's "
            "threshold are fitted on the training seeds "
            f"({', '.join(map(str, corpus.get('train_seeds', [])))}); the tables score the "
            "test seeds, never used to choose a setting, and the validation seeds, used to."
        )
    )
    seeds = ", ".join(map(str, corpus["test_seeds"]))
    _tables(doc, s["detectors"], f"Test seeds {seeds} (scored once)", corpus["test_families"])
    _forecast(doc, fc, "test")
    val = s.get("validation")
    if val:
        seeds = ", ".join(map(str, corpus["validation_seeds"]))
        title = f"Validation seeds {seeds} (used while choosing settings)"
        _tables(doc, val["detectors"], title, corpus["test_families"])
        _forecast(doc, val["forecast"], "validation")
    saved = run_dir / "detect" / "detector.json"
    if not saved.is_file():  # the training runs held a single label: no detector was fitted
        doc.add(Paragraph("No detector was fitted: the training runs hold a single label."))
        return
    detector = Detector.load(saved)
    _plot(result, detector, run_dir / "plots" / "detect_runs.png", list(corpus["test_seeds"]))
    doc.add(Image("plots/detect_runs.png", "Held-out runs with the monitor's score."))


def _tables(doc: Document, detectors: dict[str, Any], title: str, families: list[str]) -> None:
    """The by-seed table and, with held-out families, the by-family table of one split."""
    dets = {k: v for k, v in detectors.items() if v.get("fitted", True)}
    first: dict[str, Any] = next(iter(dets.values()), {})
    doc.add(Table(HEADER, [_row(n, v) for n, v in dets.items()],
                  caption=f"{title}.{_dips(first)}"))  # fmt: skip
    if families:
        doc.add(
            Table(HEADER, [_row(n, v["by_family"]) for n, v in dets.items()
                           if v.get("by_family", {}).get("fitted", True)],
                  caption=f"{title}, families held out: " + ", ".join(families) + "."
                  + _dips(first.get("by_family", {}))),
        )  # fmt: skip
    _operating_points(doc, dets, title)
    _kept(doc, dets, title)
    if families:
        held = {n: v["by_family"] for n, v in dets.items() if "by_family" in v}
        _kept(doc, held, f"{title}, families held out")


def _kept(doc: Document, detectors: dict[str, Any], title: str) -> None:
    """What keeping the checkpoint of the point before the first alarm saves, against keeping
    the last point (absent in older runs)."""
    rows = {n: v for n, v in detectors.items() if v.get("kept_fallen") is not None}
    if not rows:
        return
    body = [
        [_NAMES.get(n, n), _pct(v["kept_fallen"]), fmt(v["kept_gold_loss"]),
         fmt(v["benign_gold_loss"])]
        for n, v in rows.items()
    ]  # fmt: skip
    end = next(iter(rows.values()))
    body.append(
        ["none (the last point)", _pct(end["end_fallen"]), fmt(end["end_gold_loss"]), fmt(0.0)]
    )
    header = ["checkpoint kept before the first alarm", "past the peak (overopt. runs)",
              "median gold below the peak", "median gold given up (benign runs)"]  # fmt: skip
    saving = rows.get("proxygap", {}).get("kept_saving")
    said = ""
    if saving:
        said = (f" Keeping the monitor's checkpoint instead of the last one saves a mean "
                f"{fmt(saving['mean'])} of gold per overoptimizing run ({_pct(saving['level'])} "
                f"interval {fmt(saving['lo'])} to {fmt(saving['hi'])}, a bootstrap over the "
                f"{saving['n_families']} families and their {saving['n_runs']} runs).")  # fmt: skip
    doc.add(
        Table(header, body, caption=f"{title}: what the alarm saves a user who keeps the "
              "checkpoint of the evaluation point before it (gold in units of its SD over "
              f"base-policy samples).{said}")
    )  # fmt: skip


def _operating_points(doc: Document, detectors: dict[str, Any], title: str) -> None:
    """Alarm before drop against false alarms, the threshold chosen on the training runs for
    each false-alarm budget (absent in older runs)."""
    rows = {n: v["operating_points"] for n, v in detectors.items() if "operating_points" in v}
    if not rows:
        return
    budgets = [p["false_alarm_budget"] for p in next(iter(rows.values()))]
    header = ["detector"] + [f"budget {_pct(b)}: before drop / false alarms" for b in budgets]
    body = [
        [_NAMES.get(n, n)]
        + [f"{_pct(p['alarm_before_drop'])} / {_pct(p['false_alarm_rate'])}" for p in points]
        for n, points in rows.items()
    ]
    doc.add(
        Table(header, body, caption=f"{title}: earlier alarms cost false ones. Each column's "
              "threshold allows that share of false alarms on the training runs.")
    )  # fmt: skip


def _forecast(doc: Document, fc: dict[str, Any], split: str) -> None:
    doc.add(
        Paragraph(
            f"**Forecast of the gold peak** ({split} seeds) from the gold budget on the "
            f"evaluator's samples at the points seen up to the monitor's first alarm "
            f"({fc['n_runs']} overoptimizing runs): median relative error of the peak's d "
            f"{fmt(fc['peak_d_rel_error'], 2)}{_coverage(fc)}, against "
            f"{fmt(fc['gao_extrapolation_rel_error'], 2)} for Gao et al.'s RL law extrapolated "
            f"from the same points (which does not turn at all in "
            f"{_pct(fc.get('share_gao_no_turn'))} of them){_bon(fc)}."
            + _before_peak(fc.get("before_peak"))
        )
    )


def _bon(fc: dict[str, Any]) -> str:
    """The clause on Gao et al.'s best-of-n law fitted to the same points (absent in older
    runs)."""
    if "share_gao_bon_no_turn" not in fc:
        return ""
    return (
        f" and {fmt(fc['gao_bon_extrapolation_rel_error'], 2)} for their best-of-n law (no turn "
        f"in {_pct(fc['share_gao_bon_no_turn'])})"
    )


def _coverage(fc: dict[str, Any]) -> str:
    """How often the bootstrap and, where calibrated, the conformal interval hold the peak."""
    level = int(100 * fc.get("level", 0.8))
    text = f" ({level}% bootstrap interval coverage {_pct(fc['interval_coverage'])}"
    if fc.get("conformal_coverage") is None:  # older runs: no conformal interval
        return text + ")"
    radius = fc.get("conformal_radius")
    factor = "unbounded" if radius is None else f"forecast ×/÷ {math.exp(radius):.2f}"
    return text + (
        f"; conformal interval calibrated on the training seeds' runs, {factor}: coverage "
        f"{_pct(fc['conformal_coverage'])})"
    )


def _before_peak(bp: dict[str, Any] | None) -> str:
    """The sentence on the forecast made one point before the peak (absent in older runs)."""
    if not bp or not bp.get("n_runs"):
        return ""
    return (
        f" Made one point before the peak ({bp['n_runs']} runs; the peak not yet seen): median "
        f"relative error {fmt(bp['peak_d_rel_error'], 2)}{_coverage(bp)}, against "
        f"{fmt(bp['gao_extrapolation_rel_error'], 2)} for Gao et al.'s RL law{_bon(bp)}."
    )
