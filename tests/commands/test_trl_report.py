"""``proxygap report <TRL output folder>``: the gold/proxy-vs-d report from a trainer's
``trainer_state.json``, with numbers derived here by hand from the log the test writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proxygap.cli import app
from proxygap.report.trl_report import trl_numbers
from proxygap.runs import load_run

runner = CliRunner()

# five evaluation points: gold (as logged) rises to 2.0 at step 20 and falls to 0.4; the
# monitor alarms first at step 30
STEPS = [0, 10, 20, 30, 40]
GOLD = [1.0, 1.5, 2.0, 1.2, 0.4]
PROXY = [0.5, 1.0, 1.5, 2.0, 2.5]
D = [0.0, 0.5, 1.0, 1.5, 2.0]
ALARM = [0.0, 0.0, 0.0, 1.0, 1.0]


def _log() -> list[dict]:
    log: list[dict] = []
    for i, step in enumerate(STEPS):
        log.append({"loss": 0.7 - 0.01 * i, "step": step, "epoch": step / 40})  # TRL's row
        log.append(
            {
                "proxygap/reward/gold": GOLD[i], "proxygap/reward/gold_se": 0.1,
                "proxygap/reward/proxy": PROXY[i], "proxygap/kl/k1": D[i] ** 2,
                "proxygap/d": D[i], "proxygap/monitor/score": 0.2 * i,
                "proxygap/monitor/alarm": ALARM[i], "step": step,
            }
        )  # fmt: skip
    return log


def _folder(tmp_path: Path, log: list[dict]) -> Path:
    out = tmp_path / "dpo-run"
    out.mkdir()
    (out / "trainer_state.json").write_text(json.dumps({"global_step": 40, "log_history": log}))
    return out


def test_report_from_trainer_state(tmp_path: Path) -> None:
    out = _folder(tmp_path, _log())
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "report.html")
    md = (out / "report.md").read_text()
    # the peak: step 20, gold 2.0 - 1.0 (the first row) = +1.000, SE 0.1, d 1.0, logged 2.000
    assert "Gold peak **1.000 ± 0.100** at step **20** (d = 1.000; logged gold 2.000" in md
    # the end: 0.4 - 1.0 = -0.600, proxy 2.5 - 0.5 = 2.000
    assert "At the end (step 40, d = 2.000): gold -0.600, proxy 2.000" in md
    assert "gold turned down" in md
    # the first alarm: step 30, score 0.2 * 3, d 1.5, gold 1.2 - 1.0
    assert "step **30** (score 0.600, d = 1.500, gold 0.200)" in md
    assert "| 40 | 2.000 | 4.000 | 2.000 | -0.600 ± 0.100 | 0.400 | 0.800 | **yes** |" in md
    assert (out / "plots" / "trl_gold_proxy.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_numbers_equal_the_log(tmp_path: Path) -> None:
    run = load_run(_folder(tmp_path, _log()))
    assert run.trl_log is not None and run.trl_log.name == "trainer_state.json"
    numbers = trl_numbers(run.trl)
    assert numbers["peak"]["step"] == 20 and numbers["peak"]["gold_raw"] == 2.0
    assert numbers["alarm"]["step"] == 30 and numbers["end"]["gold"] == pytest.approx(-0.6)
    # the drop 1.6 against sqrt(0.1^2 + 0.1^2) = 0.1414: 11.3 SE
    assert round(numbers["drop_se"], 1) == 11.3 and numbers["turns_down"]


def test_report_of_a_log_without_proxygap_metrics_fails_cleanly(tmp_path: Path) -> None:
    out = _folder(tmp_path, [{"loss": 0.7, "step": 1}])
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2
    assert "holds no proxygap/* metrics" in result.output and "Traceback" not in result.output
    assert not (out / "report.html").exists()
