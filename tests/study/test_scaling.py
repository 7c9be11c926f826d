"""The scaling study end to end on tiny models: every cell trained and scored, the summary's
fits and trends recomputed from what the cells wrote, a resumed run identical."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxygap.analysis.bootstrap import curve_fit_se
from proxygap.analysis.laws import fit_bon_law
from proxygap.cli import run_and_report
from proxygap.config import parse_config
from proxygap.optimize.bon import bon_curve, log_spaced_ns

TINY = {
    "name": "scaling-tiny",
    "seed": 0,
    "task": {"name": "reviews"},
    "preferences": {"n_pairs": 120, "n_heldout": 30},
    "proxies": [
        {"name": "a", "n_embd": 8, "n_layer": 1, "n_head": 1, "epochs": 1, "label_noise": 0.25},
        {"name": "b", "n_embd": 16, "n_layer": 1, "n_head": 1, "epochs": 1, "label_noise": 0.25},
        {"name": "c", "n_embd": 16, "n_layer": 2, "n_head": 2, "epochs": 1, "label_noise": 0.25},
    ],
    "bon": None,
    "scaling": {
        "n_pairs": [60, 120], "seeds": [0, 1], "n_boot": 200,
        "bon": {"n_prompts": 6, "pool_size": 16, "n_points": 6},
    },
    "runtime": {"threads": 1, "workers": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def scaling_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("runs")
    run = run_and_report(parse_config(TINY), root, log=lambda *_: None)
    return run, json.loads((run / "scaling" / "summary.json").read_text())


def _curve(run: Path, size: str, n: int, seed: int, gold_scale: float) -> Any:
    pool = json.loads((run / "scaling" / f"pool-seed-{seed}.json").read_text())
    with np.load(run / "scaling" / size / f"n{n}-seed-{seed}" / "scores.npz") as z:
        select = (z["pool"] - z["ref"].mean()).reshape(6, 16)
    gold = np.asarray(pool["gold"]).reshape(6, 16) / gold_scale
    return bon_curve("x", select, gold, ns=log_spaced_ns(16, 6))


def test_every_cell_is_trained_scored_and_summarised(scaling_run: Any) -> None:
    run, s = scaling_run
    assert [z["name"] for z in s["sizes"]] == ["a", "b", "c"]  # by parameters
    params = [z["n_params"] for z in s["sizes"]]
    assert params == sorted(params) and s["params_span"] == params[-1] / params[0]
    assert len(s["cells"]) == 3 * 2 * 2 and len(s["table"]) == 3 * 2
    for size in "abc":
        for n in (60, 120):
            for seed in (0, 1):
                folder = run / "scaling" / size / f"n{n}-seed-{seed}"
                assert (folder / "member-0" / "model.safetensors").is_file()
                with np.load(folder / "scores.npz") as z:
                    assert z["pool"].shape == (6 * 16,) and z["ref"].shape == (60,)
    assert set(s["gao"]["60"]) == {"alpha", "beta", "d_peak", "gold_peak"}
    report = (run / "report.md").read_text()
    assert "## Reward-model scaling" in report and "**Against Gao et al.**" in report
    assert (run / "plots" / "scaling.png").is_file()
    summary = report.split("## Summary", 1)[1].split("\n## ", 1)[0]
    verdict = s["gao"]["60"]["gold_peak"]
    assert f"**{verdict}** at 60 pairs" in summary and "bigger proxies peak higher" in summary


def test_fits_and_trends_follow_from_the_written_scores(scaling_run: Any) -> None:
    run, s = scaling_run
    for cell in s["cells"]:
        c = _curve(run, cell["size"], cell["n_pairs"], cell["seed"], s["gold_scale"])
        assert cell["fit"]["alpha"] == pytest.approx(c.fit.alpha, abs=1e-12)
        assert cell["observed_gold_peak"] == pytest.approx(c.turn.gold_peak, abs=1e-12)
    # the per-seed slope of alpha against log10(params), by numpy's polyfit
    x = np.log10([z["n_params"] for z in s["sizes"]])
    for n in (60, 120):
        for i, seed in enumerate((0, 1)):
            alpha = [
                next(
                    c["fit"]["alpha"]
                    for c in s["cells"]
                    if (c["size"], c["n_pairs"], c["seed"]) == (z["name"], n, seed)
                )
                for z in s["sizes"]
            ]
            assert s["trends"][str(n)]["alpha"]["per_seed"][i] == pytest.approx(
                np.polyfit(x, alpha, 1)[0], abs=1e-10
            )
    # a size's pooled fit: the law fitted to the mean of its seeds' curves
    curves = [_curve(run, "b", 120, seed, s["gold_scale"]) for seed in (0, 1)]
    mean = (curves[0].gold + curves[1].gold) / 2
    se = curve_fit_se(np.hypot(curves[0].gold_se, curves[1].gold_se) / 2)
    row = next(r for r in s["table"] if (r["size"], r["n_pairs"]) == ("b", 120))
    assert row["alpha"]["value"] == pytest.approx(fit_bon_law(curves[0].d, mean, se).alpha)
    assert row["alpha"]["lo"] <= row["alpha"]["hi"]
    assert row["gold_peak"]["value"] == pytest.approx(mean.max())


def test_a_resumed_run_recomputes_the_same_summary(scaling_run: Any) -> None:
    run, s = scaling_run
    lines: list[str] = []
    run_and_report(parse_config(TINY), run.parent, log=lambda *a: lines.append(str(a)))
    again = json.loads((run / "scaling" / "summary.json").read_text())
    assert not any("worker processes" in line for line in lines)  # nothing was retrained
    for key in ("table", "trends", "gao", "cells"):
        assert json.dumps(again[key]) == json.dumps(s[key]), key
    assert math.isfinite(again["seconds"])
