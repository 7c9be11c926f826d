"""The f-divergence study end to end on a tiny config (seconds): every arm and row runs for
every seed on two worker processes, the summary is recomputed here from the saved histories,
the report carries the section and its verdicts, and a second invocation reads everything back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from proxygap.cli import run_and_report
from proxygap.config import parse_config

SMALL_RM = {"n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 1}
TINY = {
    "name": "tinyfdiv",
    "seed": 1,
    "preferences": {"n_pairs": 96, "n_heldout": 16},
    "proxies": [{"name": "rm", **SMALL_RM}],
    "bon": None,
    "fdiv": {
        "proxy": "rm",
        "seeds": [0, 1],
        "rl": {
            "divergences": ["reverse_kl", "js"],
            "beta": 0.5,
            "settings": {
                "steps": 2, "prompts_per_step": 2, "group_size": 2, "eval_every": 1,
                "eval_prompts": 2, "eval_samples_per_prompt": 2, "lr": 1e-3,
            },
        },
        "daa": {
            "losses": ["dpo", "fdpo_alpha"],
            "alpha": 0.3,
            "n_pairs": 32,
            "settings": {
                "batch_size": 16, "eval_at": [0, 1], "eval_prompts": 2,
                "eval_samples_per_prompt": 2, "lr": 1e-3,
            },
        },
    },
    "runtime": {"threads": 1, "workers": 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = parse_config(TINY)
    return cfg, run_and_report(cfg, root, log=lambda *_: None), root


def test_every_run_and_the_summary_from_the_histories(run) -> None:
    _, folder, _ = run
    summary = json.loads((folder / "fdiv" / "summary.json").read_text())
    for kind, arms in (("rl", ["reverse_kl", "js"]), ("daa", ["dpo", "fdpo_alpha"])):
        part = summary[kind]
        assert part["baseline"] == arms[0]
        assert sorted(part["summary"]) == sorted(arms)  # the JSON file sorts its keys
        for arm in arms:
            hs = [
                json.loads(
                    (folder / "fdiv" / kind / arm / f"seed-{s}" / "history.json").read_text()
                )
                for s in (0, 1)
            ]
            assert hs[0][-1]["step"] == 2  # RL: 2 steps; DAA: 32 pairs / 16 per step
            ends = [h[-1]["reward/gold"] for h in hs]
            div = [h[-1]["diversity/distinct2"] for h in hs]
            got = part["summary"][arm]
            assert got["gold_end"]["mean"] == pytest.approx(np.mean(ends), abs=1e-12)
            assert got["distinct2_end"]["mean"] == pytest.approx(np.mean(div), abs=1e-12)
            # two seeds: mean ± t_{0.975,1} s / sqrt(2), t_{0.975,1} = 12.706
            half = 12.7062 * np.std(ends, ddof=1) / math.sqrt(2)
            assert got["gold_end"]["hi"] - got["gold_end"]["mean"] == pytest.approx(half, rel=1e-4)
            base = [
                json.loads(
                    (folder / "fdiv" / kind / arms[0] / f"seed-{s}" / "history.json").read_text()
                )[-1]["reward/gold"]
                for s in (0, 1)
            ]
            want = np.mean(np.array(ends) - np.array(base))
            assert part["paired"][arm]["gold_end"]["mean"] == pytest.approx(want, abs=1e-12)
    rl_rows = json.loads((folder / "fdiv" / "rl" / "js" / "seed-0" / "history.json").read_text())
    assert 0.0 < rl_rows[-1]["fdpg/ess"] <= 1.0 and math.isfinite(rl_rows[-1]["fdpg/log_z"])
    daa_rows = json.loads(
        (folder / "fdiv" / "daa" / "fdpo_alpha" / "seed-1" / "history.json").read_text()
    )
    assert 0.0 <= daa_rows[-1]["daa/heldout_accuracy"] <= 1.0
    # the final policy's held-out ECE is in its last row and the summary
    assert 0.0 <= daa_rows[-1]["daa/heldout_ece"] <= 1.0
    assert "daa/heldout_ece" not in daa_rows[0]
    ece = summary["daa"]["runs"]["fdpo_alpha"][1]["heldout_ece_end"]
    assert ece == daa_rows[-1]["daa/heldout_ece"]
    # the gold-free monitor watched every RL and DAA run (it is on by default)
    for row in (rl_rows[-1], daa_rows[-1]):
        assert row["monitor/alarm"] in (0.0, 1.0) and 0.0 <= row["monitor/score"] <= 1.0
    # every run reaches the common d, so gold there has an interval over both seeds
    for kind in ("rl", "daa"):
        for arm, s in summary[kind]["summary"].items():
            assert s["gold_at_d"]["n"] == 2, (kind, arm)


def test_seeds_differ_and_arms_share_the_start(run) -> None:
    _, folder, _ = run

    def rows(arm: str, s: int) -> list[dict]:
        return json.loads((folder / "fdiv" / "rl" / arm / f"seed-{s}" / "history.json").read_text())

    # step 0 is the base policy on the same prompts: identical for every arm and seed
    assert rows("js", 0)[0]["reward/gold"] == rows("reverse_kl", 1)[0]["reward/gold"]
    assert rows("js", 0)[-1]["reward/gold"] != rows("js", 1)[-1]["reward/gold"]


def test_report_and_resume(run) -> None:
    cfg, folder, root = run
    text = (folder / "report.md").read_text()
    assert "## f-divergences" in text and "plots/fdiv_frontier.png" in text
    assert "Wang et al. 2023 (f-DPO): f-DPO alpha trades some reward for diversity" in text
    assert "JS gives the best trade-off" in text
    assert (folder / "plots" / "fdiv_frontier.png").stat().st_size > 1000
    before = (folder / "fdiv" / "summary.json").read_text()
    calls: list[str] = []
    run_and_report(cfg, root, log=calls.append)
    assert not any("runs on" in str(c) or "f-divergence comparison" in str(c) for c in calls)
    assert (folder / "fdiv" / "summary.json").read_text() == before
