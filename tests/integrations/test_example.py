"""``examples/trl_grpo_monitor.py`` end to end for two GRPO steps with a tiny proxy: the gold
curve it prints comes from the trainer's log, the run folder reads back the same rows, and
gold (weight 0) never enters TRL's trained reward."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from proxygap.runs import load_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_grpo_monitor.py"


def test_example_runs_and_logs_gold(tmp_path):
    spec = importlib.util.spec_from_file_location("trl_grpo_monitor", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "run"
    result = example.main(
        ["--out", str(out), "--steps", "2", "--pairs", "32", "--members", "2",
         "--reference-prompts", "4", "--prompts", "2", "--group", "2", "--logging-steps", "1"]
    )  # fmt: skip
    rows = result["rows"]
    assert [r["step"] for r in rows] == [1.0, 2.0]
    for r in rows:
        assert {"reward/proxy", "reward/gold", "d", "kl/k3", "signal/ensemble_std"} <= set(r)
        # gold has weight 0: TRL's trained reward is the ensemble alone
        assert r["trl/reward"] == pytest.approx(r["reward/proxy_raw"], abs=1e-5)
    assert rows[0]["reward/gold"] == 0.0 and rows[0]["d"] == 0.0  # the initial policy's batch
    assert result["kl"] == "measured"
    assert load_run(out).trl == rows  # the same rows from the log folder
    assert load_run(out).proxies == {}  # members live in out/proxies/member-k: not a study
    summary = json.loads((out / "proxygap" / "summary.json").read_text())
    assert summary["gold_peak"]["step"] in (1.0, 2.0)
    assert len(summary["members"]) == 2
