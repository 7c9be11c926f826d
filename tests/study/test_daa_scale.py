"""The DAA scale study: curves from hand-made evaluation rows, the verdict on hand-made peaks,
and a tiny study end to end (every run written, curves equal to the runs' numbers, the report's
section, a resumed run identical)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from proxygap.analysis.hump import Peak
from proxygap.cli import run_and_report
from proxygap.config import ConfigError, parse_config
from proxygap.report.daa_scale_section import scale_verdict
from proxygap.study.daa_scale import summarise_curve

TINY = {
    "name": "daa-scale-tiny",
    "seed": 0,
    "task": {"name": "reviews", "max_new_tokens": 12},
    "preferences": {"n_pairs": 64, "n_heldout": 16},
    "proxies": [{"name": "rm", "n_pairs": 32, "epochs": 1, "n_embd": 16, "n_head": 2,
                 "n_layer": 1}],
    "bon": None,
    "monitor": {"enabled": False},
    "daa_scale": {
        "sizes": ["tiny", "small"],
        "betas": {"dpo": [0.1, 1.0], "ipo": [0.1, 1.0]},
        "seeds": [0, 1],
        "settings": {"lr": 3.0e-3, "batch_size": 32, "eval_at": [1.0], "eval_prompts": 3,
                     "eval_samples_per_prompt": 2},
    },
    "runtime": {"threads": 1, "workers": 2},
}  # fmt: skip


def _row(d: float, gold: float, *, se: float = 0.1, unfinished: float = 0.0) -> dict[str, float]:
    return {
        "d": d, "reward/gold": gold, "reward/gold_se": se, "length/unfinished": unfinished,
        "length/mean": 5.0,
    }  # fmt: skip


INIT = _row(0.0, 0.0, se=0.0)


def test_curve_from_hand_made_rows() -> None:
    # betas 0.1 and 1.0, seeds 7 and 8. Every final checkpoint is a point, sorted by d (ties in
    # input order): beta 1 seed 7 (d 1, gold 0.5), beta 1 seed 8 (1, 0.7), beta 0.1 seed 7
    # (2, 0.2), beta 0.1 seed 8 (4, 0.0, all responses never end). The highest point is
    # (1, 0.7); its left neighbour has the same d, so no parabola: the peak is d = 1. Past it,
    # d = 2 still ends and d = 4 has collapsed: gradual decline 0.7 - 0.2 = 0.5 (SE
    # hypot(0.1, 0.1)), collapse from d = 4.
    finals = [
        [_row(2.0, 0.2), _row(1.0, 0.5)],
        [_row(4.0, 0.0, unfinished=1.0), _row(1.0, 0.7)],
    ]
    c = summarise_curve([0.1, 1.0], finals, INIT, threshold=0.5, seeds=[7, 8])
    assert c.betas == [1.0, 1.0, 0.1, 0.1] and c.seeds == [7, 8, 7, 8]
    assert c.d == [0.0, 1.0, 1.0, 2.0, 4.0]
    assert c.gold == [0.0, 0.5, 0.7, 0.2, 0.0]
    assert c.gold_se == [0.0, 0.1, 0.1, 0.1, 0.1]
    assert c.collapse == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert c.peak.index == 2 and c.peak.d_peak == 1.0
    assert c.decline.onset == 4 and c.decline.onset_d == 4.0 and c.decline.collapsed == 1
    assert c.decline.gradual == pytest.approx(0.5, abs=1e-12)
    assert c.decline.gradual_se == pytest.approx(math.hypot(0.1, 0.1), abs=1e-12)
    # per seed: seed 7 has (0, 0), (1, 0.5), (2, 0.2): y = a x^2 + b x with a + b = 0.5,
    # 4a + 2b = 0.2 -> a = -0.4, b = 0.9, vertex 1.125 (within half the gap, 0.5, of d = 1);
    # seed 8 has (0, 0), (1, 0.7), (4, 0): a + b = 0.7, 16a + 4b = 0 -> a = -0.7/3, b = 2.8/3,
    # vertex 2.0, held to 1 + 0.5 = 1.5 (half the nearer gap)
    assert c.seed_peaks == pytest.approx([1.125, 1.5], abs=1e-12)
    with pytest.raises(ValueError):
        summarise_curve([0.1, 1.0], [[_row(1.0, 0.1)]], INIT, threshold=0.5)
    # the initial point is d = 0 even when its measured d (round-off) exceeds a run's d of 0
    # (a negative k1 estimate is clipped)
    rounded = summarise_curve([0.1, 1.0], [[_row(0.0, 0.1), _row(1.0, 0.3)]],
                              {**INIT, "d": 3e-4}, threshold=0.5)  # fmt: skip
    assert rounded.d == [0.0, 0.0, 1.0] and rounded.peak.index == 2


def _peak(d: float, lo: float, hi: float, gold: float = 0.5, falls: bool = True) -> Peak:
    return Peak(
        index=2, d_peak=d, d_lo=lo, d_hi=hi, gold_peak=gold, rise=gold, rise_se=0.05,
        fall=1.0 if falls else 0.0, fall_se=0.1,
    )  # fmt: skip


def test_verdict_on_hand_made_peaks() -> None:
    earlier = [("tiny", 30_000, _peak(0.5, 0.4, 0.6, 0.2)), ("base", 600_000, _peak(2, 1.5, 2.5))]
    label, text = scale_verdict("dpo", earlier)
    assert label == "yes" and "Smaller policies peak earlier" in text
    assert "peak's gold grows with size too" in text
    overlap = [("tiny", 30_000, _peak(0.5, 0.2, 1.8)), ("base", 600_000, _peak(1, 0.9, 2.5))]
    assert scale_verdict("dpo", overlap)[0] == "direction only"
    flat = [("tiny", 30_000, _peak(0.0, 0.0, 0.3, 0.0)), ("base", 600_000, _peak(2, 1.5, 2.5))]
    label, text = scale_verdict("dpo", flat)
    assert label == "yes" and "never rises more than 2 SE above the initial policy for tiny" in text
    # three sizes, d not growing at the middle step: no
    mixed = [("tiny", 3, _peak(1, 0.9, 1.1)), ("small", 10, _peak(0.5, 0.4, 0.6)),
             ("base", 60, _peak(2, 1.9, 2.1))]  # fmt: skip
    assert scale_verdict("ipo", mixed)[0] == "no"
    rising = [("tiny", 3, _peak(1, 0.9, 1.1)), ("base", 60, _peak(2, 1.9, 2.1, falls=False))]
    label, text = scale_verdict("ipo", rising)
    assert label == "undetermined" and "base" in text
    # sizes are ordered by parameters, not by the order given
    assert scale_verdict("dpo", earlier[::-1])[0] == "yes"


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    return run_and_report(parse_config(TINY), root, log=lambda *_: None)


def _final(run: Path, size: str, loss: str, beta: float, seed: int) -> dict[str, float]:
    path = run / "daa_scale" / size / f"{loss}-{beta:g}" / f"seed-{seed}" / "result.json"
    return json.loads(path.read_text())["history"][-1]


def test_curves_are_the_runs_final_checkpoints(scale_run: Path) -> None:
    summary = json.loads((scale_run / "daa_scale" / "summary.json").read_text())
    assert summary["tiny"]["parameters"] == 30_208
    assert summary["small"]["parameters"] == 109_568
    for size in ("tiny", "small"):
        init = json.loads((scale_run / "daa_scale" / size / "init.json").read_text())
        # the initial policy against itself on its own samples: gold relative to the very same
        # samples is 0; k1 is round-off between sampled and recomputed log-probs (~1e-7) and d
        # its square root
        assert init["d"] < 1e-3 and init["reward/gold"] == 0.0
        for loss in ("dpo", "ipo"):
            c = summary[size][loss]
            assert len(c["d"]) == 1 + 2 * 2 and c["d"][0] == 0.0
            assert sorted(zip(c["betas"], c["seeds"], strict=True)) == [
                (0.1, 0), (0.1, 1), (1.0, 0), (1.0, 1)
            ]  # fmt: skip
            for j, (beta, seed) in enumerate(zip(c["betas"], c["seeds"], strict=True), start=1):
                row = _final(scale_run, size, loss, beta, seed)
                assert c["d"][j] == row["d"] and c["gold"][j] == row["reward/gold"]
                assert c["collapse"][j] == row["length/unfinished"]
            assert c["d"][1:] == sorted(c["d"][1:])
            assert c["peak"]["gold_peak"] == max(c["gold"])


def test_report_has_the_section_and_the_verdict(scale_run: Path) -> None:
    md = (scale_run / "report.md").read_text()
    assert "Direct alignment across policy sizes" in md
    assert "Do smaller policies overoptimize earlier?" in md and "DPO:" in md and "IPO:" in md
    assert (scale_run / "plots" / "daa_scale.png").stat().st_size > 0


def test_a_resumed_run_reads_everything_back(scale_run: Path) -> None:
    before = (scale_run / "daa_scale" / "summary.json").read_bytes()
    again = run_and_report(parse_config(TINY), scale_run.parent, log=lambda *_: None)
    assert (again / "daa_scale" / "summary.json").read_bytes() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sizes": ["huge"]}, "daa_scale.sizes ['huge'] are not base-policy sizes"),
        ({"betas": {"dpo": [0.1]}}, "a beta grid needs >= 2 distinct betas"),
        ({"betas": {"nope": [0.1, 1]}}, "unknown DAA loss"),
        ({"seeds": [0, 0]}, "repeated entries"),
        ({"n_pairs": 10_000}, "daa_scale.n_pairs"),
    ],
)
def test_bad_sections_name_the_field(change: dict, message: str) -> None:
    bad = {**TINY, "daa_scale": {**TINY["daa_scale"], **change}}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(bad)


def test_the_shipped_study_traces_the_hump_at_three_sizes() -> None:
    from proxygap.config import builtin_config_path, load_config
    from proxygap.tasks.reviews.build import POLICY_SIZES

    spec = load_config(builtin_config_path("daa_scale")).daa_scale
    assert spec is not None and len(spec.sizes) >= 3
    assert all(len(grid) >= 6 for grid in spec.betas.values())
    n = [POLICY_SIZES[s].spec.n_embd ** 2 * POLICY_SIZES[s].spec.n_layer for s in spec.sizes]
    assert max(n) / min(n) >= 10  # the blocks' 12 h^2 per layer dominate the count
