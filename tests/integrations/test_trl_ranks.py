"""``ProxygapCallback`` with several processes, simulated: each process's row is gathered and
merged (``gather_objects`` replaced by a stand-in that returns a second process's row); the
real two-process run of the gathering is ``test_trl_ddp.py``."""

from __future__ import annotations

import numpy as np
import pytest

from proxygap.integrations import trl_callback
from proxygap.integrations.trl_callback import ProxygapCallback, merge_rows
from proxygap.integrations.trl_rewards import Scored


def test_merge_rows_by_hand():
    rows = [
        {"reward/proxy": 1.0, "kl/clamped": 1.0, "signal/proxy_gold_spearman": 0.5},
        {"reward/proxy": 3.0, "kl/clamped": 2.0},
    ]
    merged = merge_rows(rows)
    # means over the processes that have a key; clamped counts add up
    assert merged == {"reward/proxy": 2.0, "kl/clamped": 3.0, "signal/proxy_gold_spearman": 0.5}


def test_every_process_gets_the_merged_row_and_the_same_alarm(monkeypatch):
    other = {"reward/proxy": 3.0, "length/mean": 4.0, "signal/proxy_std": 0.0}
    seen: list[dict] = []

    def gather(row):
        seen.append(dict(row))
        return [row, other]

    monkeypatch.setattr(trl_callback, "gather_objects", gather)

    class Alarm:
        def update(self, row):
            return {"monitor/alarm": float(row["reward/proxy"] > 1.5)}

    cb = ProxygapCallback(monitor=Alarm(), kl=False, history=False)
    item = Scored("rm", "proxy", np.array([1.0, 1.0]), ["a b", "c d"])
    row = cb._row([item], step=5)
    assert row["reward/proxy"] == pytest.approx(2.0)  # (1 + 3) / 2
    assert row["length/mean"] == pytest.approx(3.0)  # (2 words + 4) / 2
    assert row["step"] == 5.0
    assert cb.monitor.update(row)["monitor/alarm"] == 1.0  # this process alone: 1.0, no alarm
    # a process that scored nothing this step still takes part in the gathering
    row = cb._row([], step=6)
    assert seen[-1] == {} and row == {**other, "step": 6.0}
