"""The report summary's line for the detection study (proxygap/report/summary.py)."""

from __future__ import annotations

from proxygap.report.summary import _detect_line


def test_detect_line_compares_the_monitor_with_the_best_baseline():
    row = {"alarm_before_drop": 0.25, "false_alarm_rate": 0.1}
    row |= {"n_overoptimizing": 8, "n_benign": 10}
    summary = {
        "detectors": {
            "proxygap": row | {"auroc": 0.91},
            "cusum_slope": row | {"auroc": 0.6},
            "variance_collapse": row | {"auroc": 0.7, "alarm_before_drop": None},
        }
    }
    line = _detect_line(summary)
    assert "AUROC 0.91 against 0.70 for the best reward-only baseline" in line
    assert "in 25% of 8 overoptimizing runs" in line and "in 10% of 10 benign runs" in line
    assert "checkpoint" not in line  # a summary from before the kept checkpoint was scored
    summary["detectors"]["proxygap"] |= {"kept_gold_loss": 0.214, "end_gold_loss": 1.5}
    line = _detect_line(summary)
    assert line.endswith(
        "holds gold a median 0.21 SD below the peak, against 1.50 for the last one."
    )
