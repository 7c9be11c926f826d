"""The detection tables' notes on benign runs whose gold fell below its start
(proxygap/report/detect_section.py)."""

from __future__ import annotations

from proxygap.report.detect_section import _dips, _false_alarms


def test_false_alarms_name_those_in_runs_that_fell():
    assert _false_alarms({"false_alarm_rate": 0.25, "false_alarms_dipped": 0}) == "25%"
    assert _false_alarms({"false_alarm_rate": 0.25}) == "25%"  # a summary without the count
    assert (
        _false_alarms({"false_alarm_rate": 0.25, "false_alarms_dipped": 2})
        == "25% (2 where gold fell below its start)"
    )
    assert _false_alarms({"false_alarm_rate": None}) == "–"


def test_the_caption_counts_the_benign_runs_that_fell_and_recovered():
    assert _dips({"n_benign": 33, "n_benign_dipped": 0}) == ""
    assert _dips({"n_benign": 33}) == ""
    note = _dips({"n_benign": 33, "n_benign_dipped": 7})
    assert note.startswith(" 7 of the 33 benign runs fell more than one SE below their start")
