"""The f-divergence comparison's numbers (proxygap/study/fdiv_stats.py) on hand-made histories.

Two arms, three seeds. The largest ``d`` of the six runs are 0.8, 0.6, 0.7 (arm a: the last
run turns back from 0.7 to 0.65) and 0.9, 0.7, 0.75 (arm b); their smallest, 0.6, is the
common ``d``. The old rule (smallest over arms of the mean final ``d``: a 0.683, b 0.783) put it
above run a/1, which never gets there: its gold at ``d*`` was nan and with it the paired
interval (one finite difference). Gold where each run first reaches 0.6, by hand (linear between
the two evaluation points around it):

- a/0: 0.4 → 0.8 with gold 0.2 → 0.3, halfway: 0.25;  a/1: reaches 0.6 exactly: 0.4;
- a/2: 0 → 0.7 with gold 0 → 0.3, 6/7 of the way: 0.3 * 6/7;
- b/0: 0.3 → 0.9 with 0.1 → 0.5, halfway: 0.3;  b/1: 0 → 0.6 with 0 → 0.2: 0.2;
- b/2: 0.2 → 0.75 with 0.1 → 0.0, 0.4/0.55 of the way: 0.1 - 0.1 * 0.4 / 0.55.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.study.fdiv_stats import common_d, gold_at, summarise_arms


def run(d: list[float], gold: list[float]) -> list[dict[str, float]]:
    return [{"d": x, "reward/gold": g} for x, g in zip(d, gold, strict=True)]


HISTORIES = {
    "a": [
        run([0.0, 0.4, 0.8], [0.0, 0.2, 0.3]),
        run([0.0, 0.5, 0.6], [0.0, 0.1, 0.4]),
        run([0.0, 0.7, 0.65], [0.0, 0.3, 0.2]),
    ],
    "b": [
        run([0.0, 0.3, 0.9], [0.0, 0.1, 0.5]),
        run([0.0, 0.6, 0.7], [0.0, 0.2, 0.2]),
        run([0.0, 0.2, 0.75], [0.0, 0.1, 0.0]),
    ],
}
GOLD_AT = {
    "a": [0.25, 0.4, 0.3 * 6 / 7],
    "b": [0.3, 0.2, 0.1 - 0.1 * 0.4 / 0.55],
}


def test_common_d_is_reached_by_every_run() -> None:
    assert common_d(HISTORIES) == 0.6
    # the old rule's value: arm a's mean final d, which run a/1 never reaches
    old = min(np.mean([h[-1]["d"] for h in runs]) for runs in HISTORIES.values())
    assert old == pytest.approx(0.68333, abs=1e-5)
    assert math.isnan(gold_at(HISTORIES["a"][1], old))


def test_gold_at_by_hand() -> None:
    for arm, runs in HISTORIES.items():
        got = [gold_at(h, 0.6) for h in runs]
        np.testing.assert_allclose(got, GOLD_AT[arm], rtol=0, atol=1e-12)
    assert gold_at(HISTORIES["a"][0], 0.0) == 0.0  # the first point already reaches it
    assert math.isnan(gold_at(HISTORIES["a"][0], 0.81))


def test_paired_interval_at_common_d_is_defined() -> None:
    s = summarise_arms(HISTORIES)
    assert s["d_common"] == 0.6
    diff = np.array(GOLD_AT["b"]) - np.array(GOLD_AT["a"])
    iv = s["paired"]["b"]["gold_at_d"]
    assert iv["n"] == 3 and iv["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    half = 4.302653 * diff.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert iv["hi"] - iv["mean"] == pytest.approx(half, rel=1e-5)
    assert iv["mean"] - iv["lo"] == pytest.approx(half, rel=1e-5)
    for arm in HISTORIES:
        assert s["summary"][arm]["gold_at_d"]["n"] == 3
        assert all(math.isfinite(r["gold_at_d"]) for r in s["runs"][arm])


def test_nan_d_rows_are_skipped() -> None:
    h = run([0.0, math.nan, 0.5], [0.0, 0.1, 0.2])
    assert common_d({"a": [h], "b": [run([0.0, 0.9], [0.0, 0.1])]}) == 0.5
    assert math.isnan(common_d({"a": [run([math.nan], [0.0])]}))
