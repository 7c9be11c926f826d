"""The mitigation study: interval maths on hand-derived numbers, config errors that name the
field, claims computed from numbers, and a tiny study end to end whose table is recomputed from
the saved histories."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from proxygap.config import ConfigError, MitigationRunConfig, parse_config
from proxygap.report.mitigation_claims import bon_claim, frontier_gain, variance_claim
from proxygap.study import run_study
from proxygap.study.mitigation_stats import (
    QUANTITIES,
    bon_summary,
    rl_run_quantities,
    t_interval,
)
from proxygap.study.mitigations import aggregate_members

# t quantile 0.975 with 2 degrees of freedom, 4.3027 in tables; exactly
# sqrt(2) * 0.95 / sqrt(1 - 0.95^2) since the t_2 CDF is 1/2 + x / (2 sqrt(2 + x^2)))
T2 = math.sqrt(2) * 0.95 / math.sqrt(1 - 0.95**2)

SMALL_RM = {"n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 1}
TINY = {
    "name": "tinymit",
    "seed": 3,
    "preferences": {"n_pairs": 400, "n_heldout": 100},
    "proxies": [{"name": "ens", **SMALL_RM, "ensemble": 3, "label_noise": 0.25}],
    "bon": {"n_prompts": 6, "pool_size": 32, "n_points": 8, "examples_at": [1, 32]},
    "mitigations": {
        "proxy": "ens",
        "seeds": [0, 1, 2],
        "bon": ["mean", "wco", "uwo"],
        "reference_samples": 2,
        "rl": [
            {"name": "single"},
            {"name": "uwo", "aggregation": "uwo", "kl_coef": 0.01},
            {"name": "par", "transforms": [{"method": "par", "params": {"m": 1}}]},
            {
                "name": "elastic",
                "post_step": {"method": "elastic_reset", "params": {"every": 2, "eta": 0.5}},
            },
        ],
        "settings": {
            "steps": 4,
            "prompts_per_step": 4,
            "group_size": 2,
            "eval_every": 2,
            "eval_prompts": 4,
            "eval_samples_per_prompt": 2,
            "lr": 1e-3,
        },
    },
    "runtime": {"threads": 1},
}


# ---------------------------------------------------------------- interval maths
def test_t_interval_on_hand_derived_numbers() -> None:
    # x = 1, 2, 3: mean 2, s = 1, half-width t_{0.975,2} * 1 / sqrt(3)
    ci = t_interval([1.0, 2.0, 3.0])
    assert abs(T2 - 4.3027) < 1e-4  # the tabulated value
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["hi"] - ci["mean"] == pytest.approx(T2 / math.sqrt(3), rel=1e-12)
    assert ci["mean"] - ci["lo"] == pytest.approx(T2 / math.sqrt(3), rel=1e-12)
    one = t_interval([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["lo"]) and math.isnan(one["hi"])
    with pytest.raises(ValueError, match="non-empty"):
        t_interval([])


def _row(step: float, gold: float, d: float, proxy: float, std: float, se: float = 0.1) -> dict:
    return {
        "step": step, "reward/gold": gold, "reward/gold_se": se, "d": d, "reward/proxy": proxy,
        "ensemble/std": std,
    }  # fmt: skip


def test_run_quantities_by_hand() -> None:
    h = [
        _row(0, 0.0, 0.0, 0.0, 0.5, se=0.0),
        _row(10, 0.4, 0.5, 0.6, 0.6),
        _row(20, -0.2, 1.5, 1.3, 1.5),
    ]
    q = rl_run_quantities(h)
    assert q["gold_peak"] == 0.4 and q["d_peak"] == 0.5 and q["gold_end"] == -0.2
    assert q["drop"] == pytest.approx(0.6)
    assert q["gap_end"] == pytest.approx(1.3 - (-0.2))
    assert q["std_growth"] == pytest.approx(1.5 / 0.5)
    assert q["turned_down"] == 1.0  # 0.6 > 2 * hypot(0.1, 0.1) = 0.283
    h[-1]["reward/gold"] = 0.3  # drop 0.1 < 0.283
    assert rl_run_quantities(h)["turned_down"] == 0.0
    assert set(q) == set(QUANTITIES)


def test_bon_summary_by_hand() -> None:
    # 3 prompts, n in (1, 2, 4) with d = (0, 0.5, 1); gold rises then falls on every prompt
    gold = np.array([[1.0, 2.0, 1.5], [0.0, 1.2, 0.4], [2.0, 2.9, 2.6]])
    proxy = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 3.0]])
    std = np.array([[1.0, 1.5, 2.0], [2.0, 2.0, 2.0], [1.0, 1.0, 4.0]])
    per = np.stack([gold, proxy, std], axis=-1)
    s = bon_summary(per, np.array([0.0, 0.5, 1.0]), n_boot=200)
    # relative to n = 1, peak at n = 2 (mean gains 1.0, 1.2, 0.9 -> 1.033)
    assert s["gold_peak"]["mean"] == pytest.approx((1.0 + 1.2 + 0.9) / 3)
    assert s["gold_end"]["mean"] == pytest.approx((0.5 + 0.4 + 0.6) / 3)
    assert s["d_peak"]["mean"] == 0.5 and s["d_peak"]["lo"] == s["d_peak"]["hi"] == 0.5
    drops = np.array([0.5, 0.8, 0.3])
    assert s["drop"]["mean"] == pytest.approx(drops.mean())
    assert s["drop"]["hi"] - s["drop"]["mean"] == pytest.approx(
        T2 * drops.std(ddof=1) / math.sqrt(3)
    )
    assert s["gap_end"]["mean"] == pytest.approx(((2 - 0.5) + (2 - 0.4) + (3 - 0.6)) / 3)
    assert s["std_growth"]["mean"] == pytest.approx((2.0 + 1.0 + 4.0) / 3)
    assert s["turned_down"]["mean"] == 1.0  # mean drop 0.53 > 2 * SE 0.29


def test_aggregate_members() -> None:
    x = np.array([[1.0, 3.0, 2.0], [0.0, -2.0, 2.0]])  # (B=2, K=3)
    assert aggregate_members(x, "single", member=1, lam=0.0).tolist() == [3.0, -2.0]
    assert aggregate_members(x, "wco", member=0, lam=0.0).tolist() == [1.0, -2.0]
    mean = aggregate_members(x, "mean", member=0, lam=0.0)
    np.testing.assert_allclose(aggregate_members(x, "uwo", member=0, lam=0.0), mean)
    # row 0: mean 2, population variance 2/3; UWO lambda 0.5 -> 2 - 1/3
    assert aggregate_members(x, "uwo", member=0, lam=0.5)[0] == pytest.approx(2 - 1 / 3)


# ---------------------------------------------------------------- claims from numbers
def _s(growth: float) -> dict:
    return {"std_growth": {"mean": growth, "lo": growth - 0.1, "hi": growth + 0.1, "n": 3}}


def test_variance_claim_follows_the_numbers() -> None:
    arms = [
        MitigationRunConfig(name="m", aggregation="mean"),
        MitigationRunConfig(name="u", aggregation="uwo"),
    ]
    assert "**reproduced**" in variance_claim(arms, {"m": _s(3.0), "u": _s(1.1)})
    assert "**not reproduced**" in variance_claim(arms, {"m": _s(1.2), "u": _s(1.9)})
    assert "Not tested" in variance_claim(arms[:1], {"m": _s(3.0)})


def _bon(end: float, down: bool) -> dict:
    q = {"mean": end, "lo": end - 0.1, "hi": end + 0.1, "n": 8}
    return {"gold_end": q, "gold_peak": q, "turned_down": {"mean": float(down), "n": 1}}


def test_bon_claim_follows_the_numbers() -> None:
    # WCO 0.9 vs single 0.5: +80%; reproduced only when the single member turns down
    text = bon_claim({"single": _bon(0.5, True), "wco": _bon(0.9, False)})
    assert "**reproduced**" in text and "80% relative" in text
    assert "**partly reproduced**" in bon_claim(
        {"single": _bon(0.5, False), "wco": _bon(0.9, False)}
    )
    assert "**not reproduced**" in bon_claim({"single": _bon(0.5, True), "wco": _bon(0.4, True)})


def test_frontier_gain_by_hand() -> None:
    base = [[{"d": 0.0, "reward/gold": 0.0}, {"d": 1.0, "reward/gold": 0.5}]] * 3
    # the arm's best point is at d = 0.8 with gold 0.3, 0.4, 0.5; the base reached 0 by d = 0.8
    arm = [[{"d": 0.0, "reward/gold": 0.0}, {"d": 0.8, "reward/gold": g}] for g in (0.3, 0.4, 0.5)]
    g = frontier_gain(arm, base)
    assert g["mean"] == pytest.approx(0.4)
    assert g["hi"] - g["mean"] == pytest.approx(T2 * 0.1 / math.sqrt(3))


# ---------------------------------------------------------------- config validation
def _bad(update: dict) -> str:
    data = copy.deepcopy(TINY)
    data["mitigations"].update(update)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


def test_config_errors_name_the_field() -> None:
    assert "mitigations.proxy 'nope'" in _bad({"proxy": "nope"})
    assert "mitigations.seeds" in _bad({"seeds": [0, 1]})
    assert "mitigations.member" in _bad({"member": 3})
    msg = _bad({"rl": [{"name": "x", "transforms": [{"method": "quark"}]}]})
    assert "mitigations.rl.0" in msg and "transforms.0.method" in msg and "'lsc'" in msg
    msg = _bad({"rl": [{"name": "x", "transforms": [{"method": "lsc", "params": {"z": 1}}]}]})
    assert "transforms.0.params" in msg and "['z']" in msg
    msg = _bad({"rl": [{"name": "x", "post_step": {"method": "elastic_reset"}}]})
    assert "post_step.params" in msg and "every" in msg
    assert "mitigations.rl.0.aggregation" in _bad({"rl": [{"name": "x", "aggregation": "max"}]})
    data = copy.deepcopy(TINY)
    data["proxies"][0]["ensemble"] = 1
    with pytest.raises(ConfigError, match="needs ensemble >= 2"):
        parse_config(data)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return run_study(parse_config(TINY), root, log=lambda *_: None)


def test_outputs_exist(tiny_run: Path) -> None:
    for arm in ("single", "uwo", "par", "elastic"):
        for seed in (0, 1, 2):
            h = json.loads((tiny_run / "mitigations" / arm / f"seed-{seed}" / "history.json")
                           .read_text())  # fmt: skip
            assert [r["step"] for r in h] == [0, 2, 4]
            assert all(r["ensemble/std"] > 0 for r in h)
    for name in ("mitigation_bon.png", "mitigation_rl.png", "mitigation_std.png"):
        assert (tiny_run / "plots" / name).is_file()
    md = (tiny_run / "report.md").read_text()
    assert "## Mitigations compared" in md and "## Published claims, checked here" in md
    # five claims: four with their arms in this config, the variance one without a mean arm
    assert md.count("Verdict: **") == 4 and md.count("Not tested") == 1
    stages = json.loads((tiny_run / "stages.json").read_text())
    assert "mitigation:elastic:2" in stages


def test_summary_equals_recomputation_from_histories(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "mitigations" / "summary.json").read_text())
    for arm in ("single", "uwo", "par", "elastic"):
        peaks, ends, gaps, growth = [], [], [], []
        for seed in (0, 1, 2):
            h = json.loads((tiny_run / "mitigations" / arm / f"seed-{seed}" / "history.json")
                           .read_text())  # fmt: skip
            best = 0
            for i, r in enumerate(h):  # naive loop: the first maximum of gold
                if r["reward/gold"] > h[best]["reward/gold"]:
                    best = i
            peaks.append(h[best]["reward/gold"])
            ends.append(h[-1]["reward/gold"])
            gaps.append(h[-1]["reward/proxy"] - h[-1]["reward/gold"])
            growth.append(h[-1]["ensemble/std"] / h[0]["ensemble/std"])
        for key, xs in (("gold_peak", peaks), ("gold_end", ends), ("gap_end", gaps),
                        ("std_growth", growth)):  # fmt: skip
            got = summary["rl"][arm][key]
            m = sum(xs) / 3
            s = math.sqrt(sum((x - m) ** 2 for x in xs) / 2)
            assert got["mean"] == pytest.approx(m, abs=1e-12), (arm, key)
            assert got["hi"] == pytest.approx(m + T2 * s / math.sqrt(3), abs=1e-9), (arm, key)


def test_bon_mean_variant_matches_the_study_curve(tiny_run: Path) -> None:
    """The study's own best-of-n of proxy `ens` (mean aggregation) is the `mean` variant."""
    summary = json.loads((tiny_run / "mitigations" / "summary.json").read_text())
    with (tiny_run / "bon_curves.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["name"] == "ens"]
    gold = [float(r["gold"]) for r in rows]
    assert summary["bon"]["mean"]["gold_end"]["mean"] == pytest.approx(gold[-1], abs=1e-9)
    assert summary["bon"]["mean"]["gold_peak"]["mean"] == pytest.approx(max(gold), abs=1e-9)
    assert set(summary["bon"]) == {"single", "mean", "wco", "uwo"}


def test_resume_reads_back_every_run(tiny_run: Path) -> None:
    """A second invocation finds every ``mitigation:<arm>:<seed>`` stage done and trains
    nothing: the histories on disk are unchanged byte for byte."""
    files = sorted((tiny_run / "mitigations").glob("*/seed-*/history.json"))
    assert len(files) == 12
    before = [f.read_bytes() for f in files]
    lines: list[str] = []
    run_study(parse_config(TINY), tiny_run.parent, log=lambda *a: lines.append(" ".join(a)))
    assert not any(line.startswith("RL (") for line in lines)
    assert [f.read_bytes() for f in files] == before
