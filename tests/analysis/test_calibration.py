"""Expected calibration error of preference probabilities (proxygap/analysis/calibration.py)
against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from proxygap.analysis.calibration import preference_ece


def test_by_hand_five_bins() -> None:
    # confidences 0.93, 0.85, 0.75 (p = 0.25: wrong), 0.55, 0.5 (a tie: half right), 0.62 in
    # bins [.5,.6) [.6,.7) [.7,.8) [.8,.9) [.9,1]: bin 0 holds 0.55 and 0.5 (acc 0.75, conf
    # 0.525, gap 0.225, two pairs), the others one pair each with gaps 0.38, 0.75, 0.15, 0.07:
    # ECE = (2 * 0.225 + 0.38 + 0.75 + 0.15 + 0.07) / 6 = 0.3
    p = [0.93, 0.85, 0.25, 0.55, 0.5, 0.62]
    assert preference_ece(p, n_bins=5) == pytest.approx(0.3, abs=1e-12)
    # one bin: |mean correct - mean confidence| = |(4 + 0.5)/6 - 4.2/6| = 0.05
    assert preference_ece(p, n_bins=1) == pytest.approx(0.05, abs=1e-12)


def test_calibrated_and_uninformative() -> None:
    # 7 of 10 pairs at p = 0.7 (right), 3 at p = 0.3 (wrong): confidence 0.7, accuracy 0.7
    assert preference_ece([0.7] * 7 + [0.3] * 3) == pytest.approx(0.0, abs=1e-12)
    # p = 1/2 everywhere: every pair half right at confidence 1/2
    assert preference_ece(np.full(8, 0.5)) == 0.0
    # certain and always right, certain and always wrong
    assert preference_ece([1.0, 1.0]) == 0.0
    assert preference_ece([0.0, 0.0]) == pytest.approx(1.0)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="no probabilities"):
        preference_ece([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preference_ece([0.5, 1.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preference_ece([0.5, float("nan")])
    with pytest.raises(ValueError, match="n_bins"):
        preference_ece([0.5], n_bins=0)
