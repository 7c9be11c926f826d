"""The detection study end to end on a tiny corpus: every run written, labels and detectors
computed from the histories, held-out splits respected, a resumed run identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from proxygap.cli import run_and_report
from proxygap.config import ConfigError, parse_config
from proxygap.monitor.benchmark import label_points
from proxygap.monitor.detector import Detector
from proxygap.report.format import fmt

TINY = {
    "name": "detect-tiny",
    "seed": 0,
    "task": {"name": "reviews"},
    "preferences": {"n_pairs": 200, "n_heldout": 40},
    "proxies": [
        {"name": "rm", "n_pairs": 200, "epochs": 1},
        {"name": "ens", "n_pairs": 200, "ensemble": 2, "epochs": 1, "seed": 2},
    ],
    "bon": None,
    "detect": {
        "monitor_proxy": "ens",
        "forecast_prompts": 2,
        "seeds": [0, 1, 2],
        "test_seeds": [2],
        "test_families": ["gold"],
        "families": [
            {"name": "hot", "reward": "rm", "settings": {"lr": 3.0e-3}},
            {"name": "gold", "reward": "gold_noisy", "noise": 0.3},
            {"name": "dpo", "reward": "rm", "daa": {
                "n_pairs": 64, "eval_at": [0.0, 0.5, 1.0],
                "settings": {"loss": "dpo", "beta": 0.1, "batch_size": 16, "lr": 1.0e-3}}},
        ],
        "settings": {
            "steps": 6, "prompts_per_step": 4, "group_size": 2, "eval_every": 2,
            "eval_prompts": 6, "eval_samples_per_prompt": 2,
        },
    },
    "runtime": {"threads": 1},
}  # fmt: skip


def _history(run: Path, family: str, seed: int) -> list[dict[str, float]]:
    return json.loads((run / "detect" / family / f"seed-{seed}" / "history.json").read_text())


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return run_and_report(parse_config(TINY), root, log=lambda *_: None)


def test_every_run_has_its_history_with_the_monitor_signals(detect_run: Path) -> None:
    for family in ("hot", "gold"):
        for seed in (0, 1, 2):
            h = json.loads(
                (detect_run / "detect" / family / f"seed-{seed}" / "history.json").read_text()
            )
            assert [r["step"] for r in h] == [0, 2, 4, 6]
            for key in ("signal/entropy", "signal/proxy_std", "signal/ensemble_std", "d"):
                assert all(np.isfinite(r[key]) for r in h), key
            # the forecaster's budget: gold on the first 2 of the 6 prompts' samples
            assert all(np.isfinite(r["reward/gold_budget_se"]) for r in h)
            assert h[0]["reward/gold_budget"] == h[0]["reward/gold"] == 0.0
            if family == "hot":  # (the tiny gold runs do not move at all)
                assert any(r["reward/gold_budget"] != r["reward/gold"] for r in h[1:])
            # at step 0 the policy's samples are the initial policy's own (same seed): of the 12,
            # only the farthest lies beyond their 95% quantile (interpolated below the maximum)
            assert h[0]["signal/outlier_rate"] == pytest.approx(1 / 12)


def test_daa_runs_are_evaluated_like_the_rl_runs(detect_run: Path) -> None:
    histories = [_history(detect_run, "dpo", seed) for seed in (0, 1, 2)]
    for h in histories:
        # 64 pairs in micro-batches of 16: 4 optimiser steps, evaluated at 0, 1/2 and 1
        assert [r["step"] for r in h] == [0, 2, 4]
        for key in ("signal/entropy", "signal/proxy_std", "signal/ensemble_std",
                    "signal/outlier_rate", "reward/proxy", "reward/gold_budget", "d"):  # fmt: skip
            assert all(np.isfinite(r[key]) for r in h), key
        assert h[0]["d"] == pytest.approx(0.0, abs=1e-3) and h[-1]["d"] > 0.05
    # each seed flips other labels and orders the data otherwise: three different runs
    ends = {round(h[-1]["d"], 9) for h in histories}
    assert len(ends) == 3


def test_summary_counts_the_corpus_from_the_histories(detect_run: Path) -> None:
    summary = json.loads((detect_run / "detect" / "summary.json").read_text())
    assert summary["corpus"]["runs"] == 9
    over = 0
    for family in ("hot", "gold", "dpo"):
        for seed in (0, 1, 2):
            h = json.loads(
                (detect_run / "detect" / family / f"seed-{seed}" / "history.json").read_text()
            )
            over += label_points(h).drop is not None
    assert summary["corpus"]["overoptimizing"] == over
    assert summary["validation"] is None  # no validation seeds in this config
    assert set(summary["detectors"]) == {
        "proxygap",
        "variance_collapse",
        "cusum_slope",
        "length_drift",
    }
    for name, scores in summary["detectors"].items():
        # by seed: 3 test runs (seed 2 of every family); by family: the held-out family on
        # the test seed, 'gold' seed 2 (fitted on the others' seeds 0-1); the proxygap detector
        # is fitted only when its training runs hold both labels
        if scores.get("fitted", True):
            assert scores["n_overoptimizing"] + scores["n_benign"] == 3, name
        else:
            assert name == "proxygap" and summary["detector"] is None
        by_family = scores["by_family"]
        if by_family.get("fitted", True):
            assert by_family["n_overoptimizing"] + by_family["n_benign"] == 1, name
    if summary["detector"] is not None:
        saved = Detector.load(detect_run / "detect" / "detector.json")
        assert list(saved.weights) == summary["detector"]["weights"]
    else:
        assert not (detect_run / "detect" / "detector.json").exists()


def test_rerun_resumes_without_training_and_writes_the_same_summary(detect_run: Path) -> None:
    before = (detect_run / "detect" / "summary.json").read_bytes()
    again = run_and_report(parse_config(TINY), detect_run.parent, log=lambda *_: None)
    assert (again / "detect" / "summary.json").read_bytes() == before


def test_report_shows_what_the_kept_checkpoint_saves(detect_run: Path) -> None:
    summary = json.loads((detect_run / "detect" / "summary.json").read_text())
    report = (detect_run / "report.md").read_text()
    assert "checkpoint kept before the first alarm" in report
    names = {"proxygap": "proxygap monitor", "cusum_slope": "CUSUM on the reward slope"}
    end = summary["detectors"]["cusum_slope"]
    assert end["n_overoptimizing"] > 0  # else the table has nothing to show
    for name, shown in names.items():
        scores = summary["detectors"][name]
        if not scores.get("fitted", True):  # no proxygap detector without both labels
            continue
        # the last point of each run, what a user without a monitor keeps, is the same for all
        assert scores["end_fallen"] == end["end_fallen"], name
        kept, given_up = fmt(scores["kept_gold_loss"]), fmt(scores["benign_gold_loss"])
        row = f"| {shown} | {100 * scores['kept_fallen']:.0f}% | {kept} | {given_up} |"
        assert row in report, row
    assert f"| none (the last point) | {100 * end['end_fallen']:.0f}% | " in report
    saving = summary["detectors"]["proxygap"].get("kept_saving")
    if saving is not None:  # the proxygap detector was fitted
        assert f"saves a mean {fmt(saving['mean'])} of gold per overoptimizing run" in report
        assert saving["lo"] <= saving["mean"] <= saving["hi"]


GOLD = {"name": "gold", "reward": "gold"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"test_families": ["nope"]}, "unknown"),
        ({"test_seeds": [0, 1, 2]}, "at least one training seed"),
        ({"test_seeds": [2, 5]}, "must be in detect.seeds"),
        ({"validation_seeds": [1, 2]}, "both validation and test"),
        ({"monitor_proxy": "nope"}, "monitor_proxy"),
        ({"forecast_prompts": 99}, r"forecast_prompts \(99\) exceeds .*eval_prompts"),
        ({"families": [{"name": "a", "reward": "x"}, {"name": "gold", "reward": "rm"}]}, "rewards"),
        ({"families": [{"name": "a", "reward": "rm", "settings": {"lrr": 1}}, GOLD]}, "lrr"),
        ({"families": [{"name": "a", "reward": "rm", "bonus": 1.0}, GOLD]}, "bonus_words"),
        (
            {"families": [{"name": "a", "reward": "rm", "daa": {"settings": {"bta": 1}}}, GOLD]},
            r"daa.settings: unknown fields \['bta'\]",
        ),
        ({"families": [{"name": "a", "reward": "gold", "daa": {}}, GOLD]}, "a daa family"),
        (
            {"families": [{"name": "a", "reward": "rm", "daa": {"settings": {"seed": 3}}}, GOLD]},
            r"\['seed'\] are set by the corpus",
        ),
        (
            {"families": [{"name": "a", "reward": "rm", "aggregation": "mean", "daa": {}}, GOLD]},
            "without aggregation",
        ),
    ],
)
def test_bad_detect_sections_are_refused_naming_the_field(change, message) -> None:
    bad = json.loads(json.dumps(TINY))
    bad["detect"] |= change
    with pytest.raises(ConfigError, match=message):
        parse_config(bad)
