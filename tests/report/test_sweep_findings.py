"""The share of seeds on which each sweep finding holds, from hand-made summaries."""

from __future__ import annotations

from typing import Any

import pytest

from proxygap.report.sweep_findings import (
    bon_findings,
    seed_rows,
    share_of_seeds,
    stage_findings,
)


def _proxy(name: str, pairs: int, acc: float, peak: float, drop: float, se: float) -> dict:
    return {
        "name": name,
        "n_pairs": pairs,
        "heldout_accuracy": acc,
        "turn_down": {
            "gold_peak": peak, "peak_n": 16, "drop": drop, "drop_se": se,
            "significant": drop > 2 * se,
        },
    }  # fmt: skip


def _seed(*proxies: dict) -> dict[str, Any]:
    return {"proxies": list(proxies)}


# Five seeds, two proxies (1k and 9k pairs). Drops / SE:
#   seed:      0     1     2     3     4
#   rm-1k:   3.0   1.0   0.5   2.5   (no summary)
#   rm-9k:   0.5   2.1   1.9   0.0
# some proxy turns down on seeds 0, 1, 3 -> 3 of the 4 judged seeds (seed 4 is not judged).
SUMMARIES = [
    _seed(_proxy("rm-1k", 1000, 0.60, 1.0, 0.3, 0.1), _proxy("rm-9k", 9000, 0.80, 1.5, 0.05, 0.1)),
    _seed(_proxy("rm-1k", 1000, 0.62, 1.2, 0.1, 0.1), _proxy("rm-9k", 9000, 0.81, 1.1, 0.21, 0.1)),
    _seed(_proxy("rm-1k", 1000, 0.70, 1.3, 0.05, 0.1), _proxy("rm-9k", 9000, 0.65, 1.6, 0.19, 0.1)),
    _seed(_proxy("rm-1k", 1000, 0.55, 0.9, 0.25, 0.1), _proxy("rm-9k", 9000, 0.79, 1.4, 0.0, 0.0)),
    None,
]


def test_share_of_seeds_counts_judged_seeds_only() -> None:
    assert share_of_seeds([True, False, True, None]) == (2, 3)
    assert share_of_seeds([None, None]) == (0, 0)
    assert share_of_seeds([]) == (0, 0)


def test_bon_findings_on_hand_made_numbers() -> None:
    found = {f.text: f for f in bon_findings(SUMMARIES)}
    some = found["best-of-n: some proxy's gold turns down (drop > 2 SE)"]
    assert some.holds == [True, True, False, True, None] and some.share == (3, 4)
    assert found["best-of-n: rm-1k turns down (drop > 2 SE)"].share == (2, 4)  # seeds 0, 3
    assert found["best-of-n: rm-9k turns down (drop > 2 SE)"].share == (1, 4)  # seed 1
    # 9k peaks highest on seeds 0, 2, 3 (1.5 > 1.0, 1.6 > 1.3, 1.4 > 0.9), not on seed 1
    most = found["best-of-n: the proxy with the most pairs peaks highest"]
    assert most.holds == [True, False, True, True, None]
    # accuracy rises with pairs except on seed 2 (0.65 < 0.70)
    assert found["held-out accuracy rises with the proxy's pairs"].share == (3, 4)
    assert some.as_dict()["seeds_holding"] == 3 and some.as_dict()["seeds"] == 4


def test_seed_rows_give_drop_in_standard_errors() -> None:
    rows = seed_rows([0, 3], [SUMMARIES[0], SUMMARIES[3]])
    assert [r[:2] for r in rows] == [[0, "rm-1k"], [0, "rm-9k"], [3, "rm-1k"], [3, "rm-9k"]]
    assert rows[0][4] == pytest.approx(3.0) and rows[0][5] is True  # 0.3 / 0.1
    assert rows[3][4] == 0.0 and rows[3][5] is False  # peak at the end: no drop, no SE


def test_stage_findings_and_unjudged_settings() -> None:
    (f,) = stage_findings({"RL kl-0": [True, None, False]})
    assert f.text == "RL kl-0 turns down (drop > 2 SE)" and f.share == (1, 2)
    assert bon_findings([None, None]) == []
    # equal pair counts: which proxy has "the most pairs" is not defined, nor a rise
    same = [_seed(_proxy("a", 10, 0.5, 1.0, 0.0, 0.1), _proxy("b", 10, 0.6, 1.1, 0.0, 0.1))]
    texts = [f.text for f in bon_findings(same)]
    assert not any("most pairs" in t or "rises" in t for t in texts)
