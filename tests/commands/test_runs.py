"""``proxygap report``, ``runs`` and ``compare`` on run folders of the hand-made study (see
``tests/report/conftest.py``), and their errors (exit 2, the problem named, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from proxygap.cli import app
from proxygap.commands.runs import key_numbers
from proxygap.report.saved import load_result
from proxygap.report.sweep import write_sweep_outputs

runner = CliRunner()


def test_report_renders_again_without_running(study_runs: Any, tmp_path: Path) -> None:
    root, _ = study_runs
    moved = tmp_path / "moved"  # a run folder copied elsewhere renders from its own results
    shutil.copytree(root / "a", moved)
    (moved / "report.html").unlink()
    result = runner.invoke(app, ["report", str(moved)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(moved / "report.html")
    html = (moved / "report.html").read_text()
    assert "Re-rendered from <code>results.json</code>" in html and "this invocation" not in html
    assert "(KL 4.00 nats, proxy +1.60)" in html  # the summary, from the saved result


def test_runs_lists_key_numbers(study_runs: Any) -> None:
    root, _ = study_runs
    result = runner.invoke(app, ["runs", "--runs-dir", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    # run a: RL beta 0 peaks at +0.50 (step 2) and ends at -0.60, a drop of 15.6 SE (the summary
    # test derives it); run b is the same shifted by +0.25
    assert "RL β=0 +0.50@step 2->-0.60 (drop 15.6 SE, overoptimized)" in lines[0]
    assert "RL β=0 +0.75@step 2->-0.35 (drop 15.6 SE, overoptimized)" in lines[1]
    assert "RL β=0.1 +0.45@step 2->+0.45 (peak at the end)" in lines[0]
    assert "DAA hump: dpo yes" in lines[0] and lines[0].split()[1] == "finished"
    assert key_numbers(load_result(root / "a")) in lines[0]


def test_runs_marks_unfinished_and_old_runs(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("name: half\n")
    (tmp_path / "half" / "stages.json").write_text(json.dumps({"preferences": {}}))
    (tmp_path / "not-a-run").mkdir()
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.split()[:2] == ["half", "unfinished"]
    assert "1 stage(s) done" in result.output and "not-a-run" not in result.output
    result = runner.invoke(app, ["report", "half", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and "has no results.json" in result.output
    assert "not finished (1 stage(s) done)" in result.output


def test_compare_plots_several_runs(study_runs: Any, tmp_path: Path) -> None:
    root, _ = study_runs
    out = tmp_path / "ab.png"
    result = runner.invoke(app, ["compare", "a", "b", "--runs-dir", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_and_report_refuse_bad_input(study_runs: Any, tmp_path: Path) -> None:
    root, _ = study_runs
    cases = [
        (["compare", "a"], "compare needs at least two runs, got 1"),
        (["compare", "a", "b", "--out", str(tmp_path / "x.txt")], "give a name ending in .png"),
        (["compare", "a", "nosuch"], "no run folder 'nosuch'"),
        (["report", "nosuch"], "no run folder 'nosuch'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [*args, "--runs-dir", str(root)])
        assert result.exit_code == 2, args
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.txt").exists()
    # an absolute path names one place to look, once
    gone = str(tmp_path / "gone")
    result = runner.invoke(app, ["report", gone, "--runs-dir", str(root)])
    assert result.exit_code == 2 and "looked for a config.yaml" in result.output
    assert "and in" not in " ".join(result.output.split())
    result = runner.invoke(app, ["runs", "--runs-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_report_renders_a_sweep_again(tmp_path: Path, study_runs: Any) -> None:
    """A sweep of two seeds of the RL-and-DAA study (no best-of-n files), moved after it ran."""
    root, _ = study_runs
    sweep = tmp_path / "sw"
    records = []
    for seed, name in enumerate(("a", "b")):
        cell = sweep / "cells" / name
        shutil.copytree(root / name, cell)
        result = load_result(cell)
        for r in result.rl_runs:
            (cell / "rl" / r.name).mkdir(parents=True)
            (cell / "rl" / r.name / "history.json").write_text(json.dumps(r.history))
        records.append({"index": seed, "name": name, "values": {"seed": seed},
                        "run_dir": str(cell), "ok": True})  # fmt: skip
    spec = {"name": "sw", "base": "demo", "grid": {"seed": [0, 1]}}
    write_sweep_outputs(sweep, spec, records, backend="sequential")
    saved = json.loads((sweep / "sweep.json").read_text())
    for r in saved["cells"]:  # as if the sweep folder had moved since
        r["run_dir"] = str(tmp_path / "elsewhere" / r["name"])
    (sweep / "sweep.json").write_text(json.dumps(saved))
    (sweep / "report.md").unlink()
    result = runner.invoke(app, ["report", str(sweep)])
    assert result.exit_code == 0, result.output
    md = (sweep / "report.md").read_text()
    # RL beta 0: gold peaks +0.50 and +0.75 over the two seeds: mean 0.625; t_{0.975,1} = 12.706,
    # s = 0.1768, half width 12.706 * 0.1768 / sqrt(2) = 1.588
    assert "| RL kl-0 | 2 | 0.625 [-0.963, 2.213] | 1.000 [1.000, 1.000] |" in md
    assert "| 2/2 |" in md  # both seeds turn down
    runs = json.loads((sweep / "sweep.json").read_text())["groups"][0]["runs"]
    assert set(runs) == {"RL kl-0", "RL kl-0.1"} and runs["RL kl-0"]["n_turned_down"] == 2
    assert (sweep / "plots" / "group-0-runs.png").is_file()
