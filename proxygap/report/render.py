"""The study report: ``report.md`` and a self-contained ``report.html`` in the run folder,
written from what the study returned (:class:`proxygap.study.results.StudyResult`)."""

from __future__ import annotations

import json

from proxygap.config import StudyConfig
from proxygap.report.bon_section import law_peak_blocks
from proxygap.report.daa_scale_section import daa_scale_section
from proxygap.report.daa_section import daa_section
from proxygap.report.detect_section import detect_section
from proxygap.report.document import Bullets, Details, Document, Heading, Image, Paragraph, Table
from proxygap.report.fdiv_section import fdiv_section
from proxygap.report.format import fmt
from proxygap.report.mitigation_section import mitigation_section
from proxygap.report.plots import plot_bon, plot_proxy_vs_gold
from proxygap.report.rl_section import rl_section
from proxygap.report.saved import RESULTS_FILE, save_result
from proxygap.report.scaling_section import scaling_section
from proxygap.report.summary import summary_lines
from proxygap.store.atomic import atomic_write_text
from proxygap.study.results import ProxyResult, StudyResult


def _setup_section(doc: Document, cfg: StudyConfig, gold_scale: float, data: str = "") -> None:
    bon = cfg.bon
    doc.add(Heading("Setup"))
    doc.add(
        Paragraph(
            data
            or f"Task `{cfg.task.name}` (policy: `{cfg.task.policy or 'built-in'}`, gold: "
            f"`{cfg.task.gold or 'built-in gold function'}`). Gold plays the human: it labels "
            f"{cfg.preferences.n_pairs} training pairs of base-policy samples (temperature "
            f"{cfg.preferences.temperature}) plus {cfg.preferences.n_heldout} held-out pairs; "
            "each proxy takes its share, relabelled with its own label mode and noise rate, and "
            "is trained with the Bradley-Terry loss."
        )
    )
    if bon is not None:
        doc.add(
            Paragraph(
                f"Best-of-n: a pool of {bon.pool_size} samples for each of {bon.n_prompts} "
                f"held-out prompts at temperature {bon.temperature}; for every n the exact "
                "unbiased estimator gives the expected gold and proxy score of the proxy's pick, "
                "and `KL_bon(n) = log n − (n−1)/n`. Gold is shown in units of its standard "
                f"deviation over base-policy samples ({fmt(gold_scale)} raw units), relative to "
                "n = 1; proxies are centred on base-policy samples. Standard errors are over "
                "prompts."
            )
        )
        if bon.temperature != cfg.preferences.temperature:
            doc.add(
                Paragraph(
                    f"**Why two temperatures.** The proxies learn from samples at temperature "
                    f"{cfg.preferences.temperature}; best-of-n searches a pool at "
                    f"{bon.temperature}. The hotter pool holds texts the proxies never saw "
                    "(ill-formed word lists, odd negations), as an RL policy drifting off the "
                    "SFT distribution does. Gao et al. optimise in-distribution with 100k pairs "
                    "and 6B-parameter models; at this tiny scale, and with clean labels, gold "
                    "only plateaus in-distribution. The shift (or label noise, as in Coste et al. "
                    "2023) is what makes the proxies' blind spots reachable by best-of-n."
                )
            )


def _proxy_table(results: list[ProxyResult], cfg: StudyConfig) -> Table:
    header = [
        "proxy", "params", "pairs", "labels", "noise", "ensemble", "held-out acc",
        "Spearman (gold)",
    ]  # fmt: skip
    rows = [
        [
            r.config.name,
            str(r.n_params) if r.n_params else "–",
            str(r.config.n_pairs or cfg.preferences.n_pairs),
            r.config.labels,
            fmt(r.config.label_noise, 2),
            f"{r.config.ensemble} ({r.config.aggregation})" if r.config.ensemble > 1 else "1",
            fmt(r.heldout_accuracy),
            fmt(r.spearman),
        ]
        for r in results
    ]
    return Table(header, rows, caption="Proxies: training data and agreement with gold")


def _curve_table(results: list[ProxyResult]) -> Table:
    header = [
        "proxy", "α", "β", "R²", "law peak d*", "observed peak n (d)", "gold at peak ± SE",
        "gold at n=N ± SE", "drop / SE", "overoptimized?",
    ]  # fmt: skip
    rows = []
    for r in results:
        c, t = r.curve, r.curve.turn
        ratio = t.drop / t.drop_se if t.drop_se > 0 else float("nan")
        verdict = (
            "**yes**: falls > 2 SE"
            if t.turns_down
            else ("peak then dip < 2 SE" if t.drop > 0 else "no (still rising)")
        )
        rows.append(
            [
                r.config.name,
                fmt(c.fit.alpha),
                fmt(c.fit.beta),
                fmt(c.fit.r2),
                fmt(c.fit.d_peak, 2),
                f"{int(c.ns[t.peak_index])} ({fmt(t.d_peak, 2)})",
                f"{fmt(t.gold_peak)} ± {fmt(float(c.gold_se[t.peak_index]))}",
                f"{fmt(t.gold_end)} ± {fmt(float(c.gold_se[-1]))}",
                fmt(ratio, 1),
                verdict,
            ]
        )
    return Table(header, rows, caption="Best-of-n curves (gold in SD units, relative to n = 1)")


def _reading(results: list[ProxyResult]) -> list[Paragraph]:
    out = []
    hacked = [r for r in results if r.curve.turn.turns_down]
    if hacked:
        names = ", ".join(f"`{r.config.name}`" for r in hacked)
        out.append(
            Paragraph(
                f"**Overoptimization.** For {names} the proxy keeps rising with n while gold "
                "peaks and then falls by more than two standard errors: past the peak, picking "
                "harder on the proxy picks worse texts."
            )
        )
    else:
        out.append(
            Paragraph(
                "**No significant turn-down.** No proxy's gold curve falls more than two "
                "standard errors below its peak within this pool size."
            )
        )
    by_data = sorted(results, key=lambda r: r.config.n_pairs or 10**12)
    if len(by_data) > 1:
        parts = [
            f"`{r.config.name}` peaks at n = {int(r.curve.ns[r.curve.turn.peak_index])} with "
            f"gold {fmt(r.curve.turn.gold_peak, 2)}"
            for r in by_data
        ]
        out.append(Paragraph("**Scale.** In order of training data: " + "; ".join(parts) + "."))
    out.append(
        Paragraph(
            "The law `d(α − βd)` fits rising and falling curves alike (high R² even with no "
            "turn-down), so R² alone does not show overoptimization: the turn-down column tests "
            "the drop from the observed peak to the largest n against the standard error of "
            "that difference. The observed peak is chosen from noisy points, so a "
            "2-SE test on a flat curve fires somewhat more often than 5% of the time."
        )
    )
    return out


def write_report(study: StudyResult, *, rerendered: bool = False) -> None:
    """Render plots, ``report.md`` and ``report.html`` into the study's run folder, and save
    the results they come from (``results.json``, unless ``rerendered``: then they were read
    from it, and the page says so)."""
    unsaved = ""
    if not rerendered:
        try:
            save_result(study)
        except (TypeError, ValueError) as err:  # a record the codec cannot write: keep the report
            unsaved = (
                f" `{RESULTS_FILE}` was not written ({err}): `proxygap report` cannot render it."
            )
    cfg, run_dir, results, picks = study.config, study.dir, study.proxies, study.picks
    extra, rl_runs, daa, mitigations = study.timings, study.rl_runs, study.daa, study.mitigations
    doc = Document(f"proxygap study: {cfg.name}")
    versions = json.loads((run_dir / "versions.json").read_text())
    doc.add(
        Paragraph(
            f"proxygap {versions.get('proxygap')}, torch {versions.get('torch')}, "
            f"transformers {versions.get('transformers')}; git {versions.get('git_revision')}; "
            f"wall time {fmt(extra.get('wall_seconds'), 1)} s (the invocation that computed "
            "these results; stages it resumed from an earlier one are read back, not rerun)."
            + (
                f" Re-rendered from `{RESULTS_FILE}` without rerunning anything."
                if rerendered
                else unsaved
            )
        ),
        Heading("Summary"),
        Bullets(summary_lines(study)),
    )
    _setup_section(doc, cfg, study.gold_scale, study.data)
    if results:
        curves = [r.curve for r in results]
        plot_bon(curves, run_dir / "plots" / "bon_gold_proxy.png")
        plot_proxy_vs_gold(curves, run_dir / "plots" / "bon_proxy_vs_gold.png")
        doc.add(Heading("Best-of-n"))
        doc.add(_proxy_table(results, cfg), _curve_table(results), *law_peak_blocks(results))
        doc.add(*_reading(results))
        doc.add(
            Image("plots/bon_gold_proxy.png", "Gold and proxy against d = sqrt(KL) for best-of-n."),
            Image("plots/bon_proxy_vs_gold.png", "Gold against proxy along best-of-n."),
        )
        if "wellformed_pool" in extra:
            tops = "; ".join(
                f"`{r.config.name}` {100 * r.wellformed_top:.0f}%"
                for r in results
                if r.wellformed_top is not None
            )
            doc.add(
                Paragraph(
                    f"**Well-formed texts.** Base-policy samples at the proxies' temperature: "
                    f"{100 * extra['wellformed_base']:.1f}%; the best-of-n pool: "
                    f"{100 * extra['wellformed_pool']:.1f}%; each proxy's pick at n = N: {tops}."
                )
            )
        doc.add(Heading("What the picks look like"))
        doc.add(
            Paragraph(
                "Best-of-n picks of each proxy at several n (random prompts and random "
                "n-subsets of the pool). Gold is in raw units of the task's gold reward."
            )
        )
        for r in results:
            rows = [
                [
                    str(p["n"]),
                    f"{p['prompt']} ‖ {p['response']}",
                    fmt(p["proxy_score"], 2),
                    fmt(p["gold"], 2),
                ]
                for p in picks
                if p["proxy"] == r.config.name
            ]
            ns = ", ".join(dict.fromkeys(row[0] for row in rows))
            doc.add(
                Details(
                    f"Picks of `{r.config.name}` at n = {ns} ({len(rows)} rows)",
                    [Table(["n", "prompt ‖ response", "proxy", "gold"], rows)],
                )
            )
    if rl_runs:
        bon = next((r.curve for r in results if cfg.rl and r.config.name == cfg.rl.proxy), None)
        rl_section(doc, run_dir, cfg, rl_runs, bon)
    if daa is not None:
        daa_section(doc, run_dir, cfg, daa, [r.curve for r in results], rl_runs)
    if mitigations is not None:
        mitigation_section(doc, run_dir, cfg, mitigations)
    if study.detect is not None and cfg.detect is not None:
        detect_section(doc, run_dir, study.detect, cfg.detect)
    if study.fdiv is not None:
        fdiv_section(doc, run_dir, study.fdiv)
    if study.scaling is not None:
        scaling_section(doc, run_dir, study.scaling.summary)
    if study.daa_scale is not None and cfg.daa_scale is not None:
        daa_scale_section(doc, run_dir, cfg.daa_scale, study.daa_scale)
    doc.add(Heading("Files"))
    doc.add(
        Paragraph(
            "`config.yaml` (resolved config), `versions.json`, `results.json` (what this report "
            "shows: `proxygap report` renders it again), `preferences.jsonl`, "
            "`proxies/<name>/member-<k>/` (Hugging Face folders), `pool.jsonl`, `scores.npz`, "
            "`bon_curves.csv`, `metrics.jsonl`, `summary.json`, `samples.json`, `plots/`, and "
            "for RL `rl/<run>/history.json` (one row per evaluation), `steps.jsonl` (training "
            "metrics of every step), `examples.json`, `policy-final/` and `policy-best/` (the "
            "policy at the end and at its best gold, `policy-best.json` says where), "
            "`rl/summary.json`; for direct alignment "
            "`daa/<loss>-<beta>/result.json` and `daa/summary.json`; for the monitor's corpus "
            "`detect/<family>/seed-<s>/history.json`, `detect/summary.json` and the fitted "
            "`detect/detector.json`; for the f-divergence comparison "
            "`fdiv/<rl|daa>/<arm>/seed-<s>/history.json` and `steps.jsonl`, and "
            "`fdiv/summary.json`."
        )
    )
    atomic_write_text(run_dir / "report.md", doc.markdown())
    atomic_write_text(run_dir / "report.html", doc.html(run_dir))
