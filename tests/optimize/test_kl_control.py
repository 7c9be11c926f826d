"""Tests for proxygap.optimize.kl_control (Ziegler et al. 2019 KL controllers)."""

import math

import pytest

from proxygap.optimize.kl_control import (
    AdaptiveKLController,
    FixedKLController,
    make_kl_controller,
)


def test_adaptive_update_by_hand():
    # kl 9, target 6: 9/6 - 1 = 0.5, clipped to 0.2; beta = 0.1 * (1 + 0.2 * 256/10000)
    #   = 0.1 * 1.00512 = 0.100512
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.100512, rel=1e-12)
    assert ctl.beta == pytest.approx(0.100512, rel=1e-12)
    # inside the clip range: kl 6.6 -> e = 6.6/6 - 1 = 0.1; beta = 0.1 * (1 + 0.1 * 0.0256)
    #   = 0.1 * 1.00256 = 0.100256
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    assert ctl.update(6.6, 256) == pytest.approx(0.100256, rel=1e-12)
    # below target: kl 1 -> 1/6 - 1 = -0.8333, clipped to -0.2; beta = 0.1 * (1 - 0.00512)
    #   = 0.099488
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    assert ctl.update(1.0, 256) == pytest.approx(0.099488, rel=1e-12)


def test_adaptive_error_is_clipped_at_plus_minus_0_2():
    far_above = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=100)
    just_above = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=100)
    # kl/target - 1 = 999 and 0.2 give the same step: 1 + 0.2 * 10/100 = 1.02
    assert far_above.update(1000.0, 10) == just_above.update(1.2, 10) == pytest.approx(1.02)
    below = AdaptiveKLController(init_beta=1.0, target=1.0, horizon=100)
    # kl = 0: 0/1 - 1 = -1, clipped to -0.2: 1 - 0.2 * 10/100 = 0.98
    assert below.update(0.0, 10) == pytest.approx(0.98)


def test_adaptive_fixed_points_and_composition():
    ctl = AdaptiveKLController(init_beta=0.05, target=4.0, horizon=1000)
    assert ctl.update(4.0, 64) == 0.05  # kl on target: e = 0
    assert ctl.update(8.0, 0) == 0.05  # no samples: no change
    # two updates multiply: 0.05 * (1 + 0.2 * 0.064) * (1 - 0.1 * 0.064)
    ctl.update(8.0, 64)
    ctl.update(3.6, 64)  # 3.6/4 - 1 = -0.1
    assert ctl.beta == pytest.approx(0.05 * 1.0128 * 0.9936, rel=1e-12)


def test_fixed_controller_never_changes():
    ctl = FixedKLController(0.02)
    for kl in (0.0, 5.0, 1e6):
        assert ctl.update(kl, 512) == 0.02
    assert ctl.beta == 0.02


def test_state_dict_round_trip():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    for kl in (9.0, 7.0, 2.0):
        ctl.update(kl, 256)
    state = ctl.state_dict()
    assert state == {"beta": ctl.beta}
    resumed = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    resumed.load_state_dict(state)
    for kl in (12.0, 5.5):
        assert resumed.update(kl, 128) == ctl.update(kl, 128)
    fixed = FixedKLController(0.3)
    fixed.load_state_dict({"beta": 0.7})
    assert fixed.beta == 0.7 and fixed.state_dict() == {"beta": 0.7}
    with pytest.raises(ValueError, match="'beta'"):
        resumed.load_state_dict({"kl_coef": 0.1})


def test_registry_and_validation():
    ctl = make_kl_controller("adaptive", init_beta=0.1, target=6.0, horizon=10000)
    assert isinstance(ctl, AdaptiveKLController) and ctl.beta == 0.1
    assert isinstance(make_kl_controller("fixed", beta=0.05), FixedKLController)
    with pytest.raises(ValueError, match=r"allowed: \['adaptive', 'fixed'\]"):
        make_kl_controller("pid", beta=0.1)
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(init_beta=0.1, target=0.0, horizon=10000)
    with pytest.raises(ValueError, match="beta"):
        FixedKLController(-0.1)
    with pytest.raises(ValueError, match="kl must be finite"):
        AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000).update(math.nan, 10)
    with pytest.raises(ValueError, match="n_steps"):
        # 1 - 0.2 * 60000/10000 < 0 would flip the sign of beta
        AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000).update(0.0, 60000)
