"""The gold-vs-d hump: peak location with its interval, the collapse share, gradual decline
apart from collapse, and seed averaging, on hand-made curves and samples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.analysis.hump import collapse_share, locate_peak, split_decline

# ---------------------------------------------------------------- locate_peak


def test_parabola_vertex_is_recovered_exactly() -> None:
    # gold = 2 - (d - 1.3)^2 at d = 0, 0.5, 1, 1.5, 2, 3: values 0.31, 1.36, 1.91, 1.96, 1.51,
    # -0.89; the highest point is d = 1.5 and the parabola through d = 1, 1.5, 2 is the curve
    # itself, so its vertex is the true peak 1.3 (not a grid point).
    d = np.array([0, 0.5, 1, 1.5, 2, 3])
    gold = 2 - (d - 1.3) ** 2
    p = locate_peak(d, gold, np.zeros(6))
    assert p.index == 3
    assert p.d_peak == pytest.approx(1.3, abs=1e-12)
    assert p.d_lo == pytest.approx(1.3, abs=1e-12) and p.d_hi == pytest.approx(1.3, abs=1e-12)
    assert p.gold_peak == pytest.approx(1.96, abs=1e-12)
    assert p.rise == pytest.approx(1.96 - 0.31, abs=1e-12)
    assert p.fall == pytest.approx(1.96 + 0.89, abs=1e-12)
    assert p.rises and p.falls and p.hump


def test_vertex_next_to_a_cliff_stays_near_the_highest_point() -> None:
    # measured points of a policy that collapses past its peak: the parabola through
    # (0.61, 0.21), (0.68, 0.27), (9.92, -3.87) has its vertex at 3.73, deep in the collapse; the
    # estimate moves at most half the nearer gap, (0.68 - 0.61) / 2 = 0.035, from 0.68.
    p = locate_peak([0.0, 0.61, 0.68, 9.92], [0.0, 0.21, 0.27, -3.87], np.zeros(4))
    assert p.index == 2 and p.d_peak == pytest.approx(0.715, abs=1e-12)


def test_vertex_with_uneven_spacing() -> None:
    # gold = -(d - 0.7)^2 at d = 0, 0.2, 0.6, 1.5: -0.49, -0.25, -0.01, -0.64; the highest point
    # is 0.6, its neighbours 0.2 and 1.5 are unevenly spaced; the vertex is still exactly 0.7.
    d = np.array([0, 0.2, 0.6, 1.5])
    p = locate_peak(d, -((d - 0.7) ** 2), np.zeros(4))
    assert p.index == 2 and p.d_peak == pytest.approx(0.7, abs=1e-12)


def test_peak_at_an_end_is_the_observed_point() -> None:
    d = np.array([0.0, 0.4, 0.9, 2.0])
    rising = locate_peak(d, [0.0, 0.2, 0.3, 0.35], [0.0, 0.01, 0.01, 0.01])
    assert rising.index == 3 and rising.d_peak == 2.0
    assert rising.fall == 0 and not rising.falls and not rising.hump and rising.rises
    falling = locate_peak(d, [0.0, -0.2, -0.5, -2.0], [0.0, 0.01, 0.01, 0.01])
    assert falling.index == 0 and falling.d_peak == 0.0
    assert falling.rise == 0 and not falling.rises and falling.falls and not falling.hump


def test_flags_use_two_standard_errors() -> None:
    # peak 0.5 at index 2; first point 0.3 with se 0.1 each side: rise 0.2, SE hypot(.1,.1) =
    # 0.1414, 0.2 < 2 * 0.1414: no significant rise; last point -0.1: fall 0.6 > 0.283.
    p = locate_peak([0, 1, 2, 3], [0.3, 0.4, 0.5, -0.1], [0.1] * 4)
    assert p.rise_se == pytest.approx(math.hypot(0.1, 0.1))
    assert not p.rises and p.falls and not p.hump


def test_interval_contains_the_estimate_and_widens_with_noise() -> None:
    d = np.array([0, 0.5, 1, 1.5, 2, 3])
    gold = 2 - (d - 1.3) ** 2
    narrow = locate_peak(d, gold, np.full(6, 0.01))
    wide = locate_peak(d, gold, np.full(6, 0.2))
    for p in (narrow, wide):
        assert p.d_lo <= p.d_peak <= p.d_hi
    assert wide.d_hi - wide.d_lo > 3 * (narrow.d_hi - narrow.d_lo)
    # the same seed gives the same interval
    assert locate_peak(d, gold, np.full(6, 0.2)) == wide


def test_interval_covers_the_true_peak_on_noisy_curves() -> None:
    # 300 noisy draws of the parabola above (se 0.15 at every point but the exact first one):
    # the 95% interval should hold 1.3 about 95% of the time (measured: 0.95); a bootstrap around a
    # noisy argmax is not exact, so the bound is 0.85.
    rng = np.random.default_rng(7)
    d = np.array([0, 0.5, 1, 1.5, 2, 3])
    se = np.array([0, 0.15, 0.15, 0.15, 0.15, 0.15])
    truth = 2 - (d - 1.3) ** 2
    hits = 0
    for i in range(300):
        p = locate_peak(d, truth + se * rng.standard_normal(6), se, n_boot=1000, seed=i)
        hits += p.d_lo <= 1.3 <= p.d_hi
    assert hits / 300 >= 0.85


def test_d_noise_widens_the_interval() -> None:
    d = np.array([0, 0.5, 1, 1.5, 2, 3])
    gold = 2 - (d - 1.3) ** 2
    fixed = locate_peak(d, gold, np.full(6, 0.05))
    moving = locate_peak(d, gold, np.full(6, 0.05), d_se=np.full(6, 0.2))
    assert moving.d_hi - moving.d_lo > fixed.d_hi - fixed.d_lo


@pytest.mark.parametrize(
    ("d", "gold", "se", "match"),
    [
        ([0, 2, 1], [0, 1, 2], [0, 0, 0], "sorted"),
        ([0, 1], [0, 1, 2], [0, 0, 0], "one length"),
        ([0, 1], [0, 1], [0, -1], ">= 0"),
        ([], [], [], "empty"),
        ([0, 1], [0, float("nan")], [0, 0], "finite"),
    ],
)
def test_bad_curves_are_refused(d: list, gold: list, se: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        locate_peak(d, gold, se)


# ---------------------------------------------------------------- collapse_share


def test_collapse_share_on_hand_made_samples() -> None:
    eos = 2
    ids = np.array(
        [
            [5, 6, 2, 0],  # 3 tokens, ended with eos
            [5, 6, 7, 8],  # fills the budget of 4 without eos: collapsed
            [5, 6, 7, 2],  # ends with eos exactly at the budget: ended
            [5, 0, 0, 0],  # 1 token and no eos, but not at the budget: not counted
        ]
    )
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert collapse_share(ids, mask, eos_id=eos, max_new_tokens=4) == 0.25
    # with a budget of 5 no response reaches it
    assert collapse_share(ids, mask, eos_id=eos, max_new_tokens=5) == 0.0
    # every row collapsed: 3 of 3
    full = np.array([[5, 6], [7, 7], [8, 5]])
    assert collapse_share(full, np.ones_like(full), eos_id=eos, max_new_tokens=2) == 1.0


def test_collapse_share_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="exceed"):
        collapse_share(np.ones((2, 5)), np.ones((2, 5)), eos_id=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="no responses"):
        collapse_share(np.ones((0, 4)), np.ones((0, 4)), eos_id=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="alike"):
        collapse_share(np.ones((2, 4)), np.ones((2, 3)), eos_id=2, max_new_tokens=4)


# ---------------------------------------------------------------- split_decline


def test_gradual_decline_then_collapse() -> None:
    # peak 0.5 at d = 1; d = 2 still ends (10% never-ending): gradual drop 0.5 - 0.2 = 0.3 with
    # SE hypot(0.05, 0.05); d = 4 has 90% never-ending: the collapse starts there.
    out = split_decline(
        [0, 0.5, 1, 2, 4], [0, 0.3, 0.5, 0.2, -3], [0, 0.05, 0.05, 0.05, 0.1],
        [0, 0, 0, 0.1, 0.9],
    )  # fmt: skip
    assert out.onset == 4 and out.onset_d == 4 and out.collapsed == 1
    assert out.gradual == pytest.approx(0.3, abs=1e-12)
    assert out.gradual_se == pytest.approx(math.hypot(0.05, 0.05), abs=1e-12)
    assert out.gradual_significant


def test_collapse_right_after_the_peak_has_no_gradual_decline() -> None:
    out = split_decline([0, 1, 2, 3], [0, 0.4, -2, -3], [0, 0.1, 0.1, 0.1], [0, 0.2, 0.6, 1.0])
    assert out.onset == 2 and out.collapsed == 2
    assert out.gradual == 0 and out.gradual_se == 0 and not out.gradual_significant


def test_no_collapse_and_collapse_before_the_peak() -> None:
    # never-ending responses before the peak do not count as the fall's collapse
    out = split_decline([0, 1, 2], [0, 0.4, 0.1], [0, 0.1, 0.1], [0.7, 0.0, 0.3])
    assert out.onset is None and out.onset_d is None and out.collapsed == 0
    assert out.gradual == pytest.approx(0.3, abs=1e-12)
