"""A sweep's outputs: results aggregated over seeds, mean gold curves, and the report.

Written into the sweep folder: ``sweep.json`` (the spec, every cell with its status, and the
aggregates), ``aggregate.csv`` (one row per setting and proxy), ``plots/group-<k>.png`` (mean
best-of-n gold against ``d`` over seeds, with a pointwise 95% t band),
``plots/group-<k>-runs.png`` (the same for the RL and DAA runs the cells ran,
:mod:`proxygap.report.sweep_stages`), ``report.md`` and a self-contained ``report.html``. Under
every setting the report gives the best-of-n numbers seed by seed and the share of seeds on
which each finding holds (:mod:`proxygap.report.sweep_findings`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proxygap.analysis.seeds import (  # noqa: E402
    METRICS,
    Interval,
    ProxyAggregate,
    aggregate_proxy,
    group_cells,
    is_seed_path,
    t_band,
)
from proxygap.report.document import Document, Heading, Image, Paragraph, Table  # noqa: E402
from proxygap.report.sweep_findings import (  # noqa: E402
    Finding,
    bon_findings,
    seed_rows,
    stage_findings,
)
from proxygap.report.sweep_stages import (  # noqa: E402
    StageAggregate,
    aggregate_stage,
    plot_stages,
    read_stage_histories,
    run_quantities,
)
from proxygap.store.atomic import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402

LEVEL = 0.95
STAGE_LABELS = {
    "gold_peak": "gold at peak",
    "d_peak": "d at peak",
    "gold_end": "final gold",
    "d_end": "final d",
}
METRIC_LABELS = {
    "gold_peak": "gold at peak",
    "d_peak": "d at peak",
    "gold_end": "gold at n=N",
    "drop": "drop",
    "heldout_accuracy": "held-out acc",
    "alpha": "α",
    "beta": "β",
    "r2": "R²",
}


@dataclass(frozen=True)
class MeanCurve:
    """Gold against d for one proxy of one group: per-seed rows (S, T) and their t band."""

    ns: np.ndarray  # (T,)
    d: np.ndarray  # (T,)
    gold: np.ndarray  # (S, T)
    mean: np.ndarray  # (T,)
    lo: np.ndarray  # (T,)
    hi: np.ndarray  # (T,)


def read_curves(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``bon_curves.csv`` of one run: per proxy name, (n, d, gold) arrays sorted by n."""
    rows: dict[str, list[tuple[int, float, float]]] = {}
    with (run_dir / "bon_curves.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            rows.setdefault(r["name"], []).append((int(r["n"]), float(r["d"]), float(r["gold"])))
    out = {}
    for name, pts in rows.items():
        ns, d, gold = (np.array(col) for col in zip(*sorted(pts), strict=True))
        out[name] = (ns, d, gold)
    return out


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> MeanCurve:
    """Average per-seed curves over the n values they all share."""
    common = sorted(set.intersection(*(set(ns.tolist()) for ns, _, _ in curves)))
    picks = [np.isin(ns, common) for ns, _, _ in curves]
    gold = np.stack([g[pick] for (_, _, g), pick in zip(curves, picks, strict=True)])  # (S, T)
    d = curves[0][1][picks[0]]  # d is a function of n alone
    mean, lo, hi = t_band(gold, level=LEVEL)
    return MeanCurve(np.array(common), d, gold, mean, lo, hi)


def _label(values: dict[str, Any]) -> str:
    shown = {k: v for k, v in values.items() if not is_seed_path(k)}
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in shown.items()) or "all cells"


def plot_group(curves: dict[str, MeanCurve], path: Path, *, title: str) -> None:
    """Mean gold (relative to n = 1) against d per proxy, a 95% t band, faint per-seed lines."""
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, c) in enumerate(curves.items()):
        col = colors[i % len(colors)]
        for row in c.gold:
            ax.plot(c.d, row, "-", color=col, lw=0.6, alpha=0.35)
        ax.plot(c.d, c.mean, "o-", ms=3, color=col, label=f"{name} (mean of {len(c.gold)})")
        if np.isfinite(c.lo).all():
            ax.fill_between(c.d, c.lo, c.hi, color=col, alpha=0.18)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("d = sqrt(KL_bon)  [nats^1/2]")
    ax.set_ylabel("gold of the pick − pool mean")
    ax.set_title(f"{title}\nmean over seeds, 95% t band (pointwise); thin: seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


@dataclass
class Group:
    """One setting: its grid values, its cells and what aggregated from them."""

    key: int
    values: dict[str, Any]
    records: list[dict[str, Any]]
    proxies: dict[str, ProxyAggregate]
    curves: dict[str, MeanCurve]
    stages: dict[str, StageAggregate]  # RL and DAA runs, "RL kl-0", "DAA dpo-0.1"
    seeds: list[Any] = field(default_factory=list)  # the finished cells' seeds, in cell order
    seed_table: list[list[Any]] = field(default_factory=list)  # per seed and proxy
    findings: list[Finding] = field(default_factory=list)  # with their share of seeds


def build_groups(records: list[dict[str, Any]]) -> list[Group]:
    """Group cell records by setting and aggregate each proxy over the successful seeds."""
    groups = []
    for k, idx in enumerate(group_cells([r["values"] for r in records]).values()):
        recs = [records[i] for i in idx]
        by_proxy: dict[str, list[dict[str, Any]]] = {}
        curves: dict[str, list[Any]] = {}
        stages: dict[str, list[Any]] = {}
        seeds: list[Any] = []
        summaries: list[dict[str, Any] | None] = []
        turned: dict[str, list[bool | None]] = {}
        for r in recs:
            if not r["ok"]:
                continue
            run = Path(r["run_dir"])
            seeds.append(_seed(r["values"], r["index"]))
            summaries.append(None)
            if (run / "summary.json").is_file():  # best-of-n ran
                summary = json.loads((run / "summary.json").read_text())
                summaries[-1] = summary
                for p in summary["proxies"]:
                    by_proxy.setdefault(p["name"], []).append(p)
                for name, curve in read_curves(run).items():
                    curves.setdefault(name, []).append(curve)
            for name, history in read_stage_histories(run).items():
                stages.setdefault(name, []).append(history)
                flags = turned.setdefault(name, [None] * (len(seeds) - 1))
                flags.append(bool(run_quantities(history)["turned_down"]))
            for flags in turned.values():  # a run this cell lacks is not judged on it
                flags += [None] * (len(seeds) - len(flags))
        judged = [(s, x) for s, x in zip(seeds, summaries, strict=True) if x is not None]
        groups.append(
            Group(
                key=k,
                values=recs[0]["values"],
                records=recs,
                proxies={n: aggregate_proxy(s, level=LEVEL) for n, s in by_proxy.items()},
                curves={n: mean_curve(c) for n, c in curves.items()},
                stages={n: aggregate_stage(h) for n, h in stages.items()},
                seeds=seeds,
                seed_table=seed_rows([s for s, _ in judged], [x for _, x in judged]),
                findings=bon_findings(summaries) + stage_findings(turned),
            )
        )
    return groups


def _seed(values: dict[str, Any], index: int) -> Any:
    """The cell's seed value (its first seed grid path), else its index."""
    return next((v for k, v in values.items() if is_seed_path(k)), f"cell {index}")


def check_outputs(records: list[dict[str, Any]]) -> None:
    """Mark a cell failed when it ran but left no ``summary.json`` / ``bon_curves.csv``."""
    for r in records:
        run = Path(r["run_dir"])
        missing = [f for f in ("summary.json", "bon_curves.csv") if not (run / f).is_file()]
        if (run / "rl").is_dir() or (run / "daa").is_dir():
            missing = missing if (run / "summary.json").is_file() else []  # no best-of-n
        if r["ok"] and missing:
            r.update(ok=False, error=f"the run left no {' or '.join(missing)} in {run}")


def _csv(groups: list[Group], paths: list[str]) -> str:
    header = ["group", *paths, "proxy", "n_seeds", "n_significant", "significant_fraction"]
    header += [f"{m}_{s}" for m in METRICS for s in ("mean", "lo", "hi")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in groups:
        for name, agg in g.proxies.items():
            row: list[Any] = [g.key, *(json.dumps(g.values[p]) for p in paths), name]
            row += [agg.n_seeds, agg.n_significant, agg.significant_fraction]
            for m in METRICS:
                iv = agg.metrics[m]
                row += [iv.mean, iv.lo, iv.hi]
            w.writerow(row)
    return buf.getvalue()


def _ci(iv: Interval) -> str:
    if not math.isfinite(iv.mean):
        return "–"
    if not math.isfinite(iv.lo):
        return f"{iv.mean:.3f}"
    return f"{iv.mean:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]"


def _document(
    spec: dict[str, Any], groups: list[Group], records: list[dict[str, Any]], backend: str
) -> Document:
    doc = Document(f"Sweep {spec['name']}")
    ok = sum(r["ok"] for r in records)
    doc.add(
        Paragraph(
            f"Base config `{spec['base']}`; {len(records)} cells ({ok} finished, "
            f"{len(records) - ok} failed) on the `{backend}` backend. Each cell is a study run "
            "in `cells/<name>/`. Cells that differ only in a seed are grouped; every number below "
            f"is the mean over the group's finished seeds with a {LEVEL:.0%} Student-t "
            "confidence interval `mean ± t(S−1) · s / √S` in brackets (none with one seed)."
        ),
        Table(
            ["grid path", "values"],
            [[f"`{p}`", ", ".join(json.dumps(v) for v in vs)] for p, vs in spec["grid"].items()],
            caption="Grid",
        ),
        Paragraph(
            "Columns: **gold at peak** — the highest gold of the best-of-n curve (gold in units "
            "of its base-policy standard deviation, relative to n = 1); **d at peak** — "
            "`sqrt(KL_bon)` where it is reached; **gold at n=N** — gold at the largest n; "
            "**drop** — peak minus end; **held-out acc** — pairwise accuracy against gold; "
            "**α, β, R²** — the fit `R(d) = d(α − βd)`; **turned down** — the seeds whose drop "
            "exceeds two standard errors. Under each setting, the best-of-n numbers seed by "
            "seed and the share of seeds on which each finding holds."
        ),
    )
    failed = [r for r in records if not r["ok"]]
    if failed:
        doc.add(Heading("Failed cells"))
        doc.add(Table(["cell", "values", "error"], [
            [f"`{r['name']}`", _label(r["values"]) or "–", (r["error"] or "").splitlines()[0]]
            for r in failed
        ]))  # fmt: skip
    header = ["proxy", "seeds", *METRIC_LABELS.values(), "turned down"]
    for g in groups:
        doc.add(Heading(f"Setting {g.key}: {_label(g.values)}"))
        if not g.proxies and not g.stages:
            doc.add(Paragraph("No cell of this setting finished."))
            continue
        if g.proxies:
            rows = []
            for name, agg in g.proxies.items():
                cis = [_ci(agg.metrics[m]) for m in METRIC_LABELS]
                rows.append([name, str(agg.n_seeds), *cis, f"{agg.n_significant}/{agg.n_seeds}"])
            doc.add(Table(header, rows, caption="Best-of-n"))
            doc.add(Image(f"plots/group-{g.key}.png", f"Best-of-n gold against d, setting {g.key}"))
        if g.stages:
            rows = [
                [name, str(s.n_seeds), *(_ci(s.metrics[q]) for q in STAGE_LABELS),
                 f"{s.n_turned_down}/{s.n_seeds}"]
                for name, s in g.stages.items()
            ]  # fmt: skip
            caption = "RL and direct alignment (gold in SD units, relative to the start)"
            doc.add(
                Table(["run", "seeds", *STAGE_LABELS.values(), "turned down"], rows, caption),
                Image(f"plots/group-{g.key}-runs.png", f"RL and DAA gold, setting {g.key}"),
            )
        _seed_tables(doc, g)
    return doc


def _seed_tables(doc: Document, g: Group) -> None:
    """The setting's best-of-n numbers seed by seed, and the share of seeds per finding."""
    if g.seed_table:
        rows = [
            [str(seed), name, f"{peak:.2f} (n = {n})", f"{ratio:.1f}", "yes" if down else "no"]
            for seed, name, peak, n, ratio, down in g.seed_table
        ]
        doc.add(
            Table(
                ["seed", "proxy", "gold peak", "drop / SE", "turns down"],
                rows,
                caption="Best-of-n per seed: gold at the peak (SD units, relative to n = 1), the "
                "drop from the peak to n = N in standard errors; it turns down above 2",
            )
        )
    if g.findings:
        rows = []
        for f in g.findings:
            k, n = f.share
            rows.append([f.text, f"{k}/{n}", f"{k / n:.0%}" if n else "–"])
        doc.add(Table(["finding", "seeds holding", "share"], rows, caption="Share of seeds"))


def write_sweep_outputs(
    sweep_dir: Path, spec: dict[str, Any], records: list[dict[str, Any]], *, backend: str
) -> list[Group]:
    """Aggregate the finished cells and write every sweep output; return the groups."""
    check_outputs(records)
    groups = build_groups(records)
    for g in groups:
        if g.curves:
            plot_group(g.curves, sweep_dir / "plots" / f"group-{g.key}.png", title=_label(g.values))
        if g.stages:
            path = sweep_dir / "plots" / f"group-{g.key}-runs.png"
            plot_stages(g.stages, path, title=_label(g.values))
    paths = [p for p in spec["grid"] if not is_seed_path(p)]
    atomic_write_text(sweep_dir / "aggregate.csv", _csv(groups, paths))
    atomic_write_json(
        sweep_dir / "sweep.json",
        {
            "spec": spec,
            "backend": backend,
            "confidence_level": LEVEL,
            "cells": records,
            "failed": [r["name"] for r in records if not r["ok"]],
            "groups": [
                {
                    "group": g.key,
                    "values": {p: g.values[p] for p in paths},
                    "cells": [r["name"] for r in g.records],
                    "proxies": {n: a.as_dict() for n, a in g.proxies.items()},
                    "runs": {n: s.as_dict() for n, s in g.stages.items()},
                    "seeds": g.seeds,
                    "per_seed": [
                        dict(
                            zip(
                                (
                                    "seed",
                                    "proxy",
                                    "gold_peak",
                                    "peak_n",
                                    "drop_over_se",
                                    "turns_down",
                                ),
                                row,
                                strict=True,
                            )
                        )
                        for row in g.seed_table
                    ],  # fmt: skip
                    "findings": [f.as_dict() for f in g.findings],
                }
                for g in groups
            ],
        },
    )
    doc = _document(spec, groups, records, backend)
    atomic_write_text(sweep_dir / "report.md", doc.markdown())
    atomic_write_text(sweep_dir / "report.html", doc.html(sweep_dir))
    return groups


def rerender_sweep(sweep_dir: Path) -> list[Group]:
    """Aggregate and write a sweep's outputs again from its ``sweep.json`` and its cells' saved
    outputs (``proxygap report SWEEP``); nothing is rerun. Cells are looked up in
    ``sweep_dir/cells/`` when the folder has moved since the sweep ran."""
    saved = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    records = saved["cells"]
    for r in records:
        moved = sweep_dir / "cells" / r["name"]
        if not Path(r["run_dir"]).is_dir() and moved.is_dir():
            r["run_dir"] = str(moved)
    return write_sweep_outputs(sweep_dir, saved["spec"], records, backend=saved["backend"])
