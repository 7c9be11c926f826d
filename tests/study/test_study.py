"""The best-of-n study end to end at a tiny budget: outputs, numbers, resume, determinism."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from proxygap.cli import run_and_report
from proxygap.config import ConfigError, parse_config
from proxygap.store.run import RunFolderError

TINY = {
    "name": "tiny",
    "seed": 3,
    "preferences": {"n_pairs": 600, "n_heldout": 200},
    "proxies": [
        {"name": "small", "n_pairs": 300, "n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 1},
        {
            "name": "ens",
            "n_embd": 32,
            "n_head": 2,
            "n_layer": 1,
            "epochs": 3,
            "ensemble": 2,
            "aggregation": "uwo",
        },
    ],
    "bon": {"n_prompts": 8, "pool_size": 64, "n_points": 12, "examples_at": [1, 8, 64]},
    "runtime": {"threads": 1},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return run_and_report(parse_config(TINY), root, log=lambda *_: None)


def _curves(run: Path) -> list[dict[str, str]]:
    with (run / "bon_curves.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_run_folder_has_every_output(tiny_run: Path) -> None:
    for name in (
        "config.yaml", "versions.json", "preferences.jsonl", "pool.jsonl", "scores.npz",
        "bon_curves.csv", "metrics.jsonl", "summary.json", "samples.json", "report.md",
        "report.html", "plots/bon_gold_proxy.png", "plots/bon_proxy_vs_gold.png",
        "proxies/small/member-0/model.safetensors", "proxies/ens/member-1/model.safetensors",
    ):  # fmt: skip
        assert (tiny_run / name).is_file(), name
    html = (tiny_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # plots embedded: one self-contained file
    md = (tiny_run / "report.md").read_text()
    assert "`small`" in md or "| small |" in md
    assert "| ens |" in md


def test_curves_follow_the_estimator_definitions(tiny_run: Path) -> None:
    rows = _curves(tiny_run)
    ns = sorted({int(r["n"]) for r in rows})
    assert ns[0] == 1 and ns[-1] == 64
    assert len(rows) == 2 * len(ns)
    for r in rows:
        n = int(r["n"])
        # KL_bon(n) = log n - (n-1)/n, d = sqrt(KL)
        assert float(r["kl"]) == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
        assert float(r["d"]) == pytest.approx(math.sqrt(float(r["kl"])), abs=1e-12)
        if n == 1:  # relative to the pool mean: exactly 0 with no spread
            assert float(r["gold"]) == 0.0 and float(r["gold_se"]) == 0.0
            assert float(r["proxy"]) == 0.0


def test_best_of_pool_equals_the_pool_argmax(tiny_run: Path) -> None:
    """At n = N the estimator must return the gold of each prompt's proxy argmax."""
    from proxygap.study.bon import normalised

    cfg = parse_config(TINY)
    with np.load(tiny_run / "scores.npz") as z:
        scores = {k: z[k] for k in z.files}
    summary = json.loads((tiny_run / "summary.json").read_text())
    scale = summary["gold_scale"]
    for proxy in cfg.proxies:
        select, _ = normalised(scores, proxy)
        gold = scores["gold"] / scale
        top = gold[np.arange(gold.shape[0]), np.argmax(select, axis=1)]
        # no ties in continuous proxy scores here, so this is exact
        expected = float((top - gold.mean(axis=1)).mean())
        row = [r for r in _curves(tiny_run) if r["name"] == proxy.name and r["n"] == "64"][0]
        assert float(row["gold"]) == pytest.approx(expected, abs=1e-9)


def test_summary_numbers_are_sane(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert [p["name"] for p in summary["proxies"]] == ["small", "ens"]
    for p in summary["proxies"]:
        assert 0.0 <= p["heldout_accuracy"] <= 1.0
        assert -1.0 <= p["spearman_gold"] <= 1.0
        assert p["fit"]["kind"] == "bon" and p["fit"]["r2"] <= 1.0
        assert 0.0 <= p["wellformed_top"] <= 1.0
    ens = summary["proxies"][1]
    # 600 clean pairs, 3 epochs: better than chance against gold on held-out pairs
    assert ens["heldout_accuracy"] > 0.6
    assert ens["ensemble_std_growth"] is not None and ens["ensemble_std_growth"] > 0


def test_resume_reuses_stages_and_reproduces(tiny_run: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in [tiny_run / "pool.jsonl", tiny_run / "scores.npz"]}
    summary = (tiny_run / "summary.json").read_text()
    run_and_report(parse_config(TINY), tiny_run.parent, log=lambda *_: None)
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after  # finished stages were read back, not recomputed
    assert (tiny_run / "summary.json").read_text() == summary


def test_same_seed_same_metrics_in_a_fresh_folder(tiny_run: Path, tmp_path: Path) -> None:
    cfg = parse_config({**TINY, "proxies": TINY["proxies"][:1]})
    a = run_and_report(cfg, tmp_path / "a", log=lambda *_: None)
    b = run_and_report(cfg, tmp_path / "b", log=lambda *_: None)
    assert (a / "bon_curves.csv").read_text() == (b / "bon_curves.csv").read_text()
    assert (a / "preferences.jsonl").read_text() == (b / "preferences.jsonl").read_text()


def test_changed_config_on_existing_folder_is_refused(tiny_run: Path) -> None:
    changed = parse_config({**TINY, "seed": 4})
    with pytest.raises(RunFolderError, match="different config"):
        run_and_report(changed, tiny_run.parent, log=lambda *_: None)
    assert (tiny_run / "summary.json").is_file()  # nothing was lost


TINY_RL_DAA = {
    "name": "tiny-rl-daa",
    "seed": 5,
    "preferences": {"n_pairs": 300, "n_heldout": 64},
    "proxies": [{"name": "rm", "n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 1}],
    "bon": None,
    "rl": {
        "proxy": "rm",
        "kl_coefs": [0.0, 0.5],
        "settings": {
            "steps": 4, "prompts_per_step": 4, "group_size": 2, "eval_every": 2,
            "eval_prompts": 4, "eval_samples_per_prompt": 2, "lr": 1e-3,
        },
    },
    "daa": {
        "betas": {"dpo": [0.1], "slic": [0.1]},
        "proxy": "rm",
        "settings": {"batch_size": 32, "eval_at": [0, 0.5, 1.0], "eval_prompts": 4,
                     "eval_samples_per_prompt": 2},
    },
    "runtime": {"threads": 1},
}  # fmt: skip


def test_rl_and_daa_stages_write_histories_and_report(tmp_path: Path) -> None:
    cfg = parse_config(TINY_RL_DAA)
    run = run_and_report(cfg, tmp_path, log=lambda *_: None)
    for kl in ("kl-0", "kl-0.5"):
        history = json.loads((run / "rl" / kl / "history.json").read_text())
        assert [h["step"] for h in history] == [0, 2, 4]
        first = history[0]
        # step 0 is the initial policy itself: no KL, no gold or proxy change
        assert first["kl/k1"] == pytest.approx(0.0, abs=1e-6)
        assert first["reward/gold"] == 0.0 and first["winrate/gold_vs_init"] == 0.5
    for name in ("dpo-0.1", "slic-0.1"):
        result = json.loads((run / "daa" / name / "result.json").read_text())
        # 300 pairs / batch 32: one epoch is 9.4 steps, run as 10; evaluations at step 0,
        # half an epoch (round(4.7) = 5), one epoch (round(9.4) = 9) and the last step
        assert [h["step"] for h in result["history"]] == [0, 5, 9, 10]
        assert all(math.isfinite(h["reward/gold"]) for h in result["history"])
    md = (run / "report.md").read_text()
    assert "## Online RL" in md and "## Direct alignment" in md and "## Best-of-n" not in md
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2  # the RL and the DAA plot
    stamp = (run / "rl" / "kl-0" / "history.json").stat().st_mtime_ns
    run_and_report(cfg, tmp_path, log=lambda *_: None)  # resume: every stage is read back
    assert (run / "rl" / "kl-0" / "history.json").stat().st_mtime_ns == stamp


def test_daa_from_the_soup_uses_it_as_start_and_reference(tmp_path: Path) -> None:
    """``daa.reference: soup``: the policy starts at the soup of the two SFT variants, which is
    also the loss's reference (held-out implicit-reward margin 0 at step 0), while gold and KL
    are measured against the base policy (d > 0 at step 0)."""
    data = {
        **TINY_RL_DAA,
        "name": "tiny-daa-soup",
        "rl": None,
        "sft": {"n_texts": 100, "batch_size": 16, "lr": 3e-3, "epochs": 2},
        "daa": {**TINY_RL_DAA["daa"], "betas": {"dpo": [0.1]}, "reference": "soup"},
    }
    run = run_and_report(parse_config(data), tmp_path, log=lambda *_: None)
    first = json.loads((run / "daa" / "dpo-0.1" / "result.json").read_text())["history"][0]
    assert first["daa/heldout_margin"] == pytest.approx(0.0, abs=1e-5)
    assert first["d"] > 0.05
    with pytest.raises(ConfigError, match="daa start from SFT variants: set sft"):
        parse_config({**data, "sft": None})
