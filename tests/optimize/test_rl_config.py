"""RL hyperparameters (proxygap/optimize/rl_config.py): errors name the field, the KL estimator
resolves from the mode."""

from __future__ import annotations

import pytest

from proxygap.optimize.rl import RLConfig


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"algo": "a2c"}, "algo"),
        ({"kl_mode": "both"}, "kl_mode"),
        ({"clip": 1.5}, "clip"),
        ({"algo": "rloo", "group_size": 1}, "group_size"),
        ({"minibatch_size": 5}, "minibatch_size"),
        ({"kl_controller": "adaptive"}, "kl_coef"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"stepz": 3}, "stepz"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        RLConfig(**kw)


def test_config_resolves_the_kl_estimator():
    assert RLConfig().estimator == "k1"
    assert RLConfig(kl_mode="loss").estimator == "k3"
    assert RLConfig(kl_mode="loss", kl_estimator="k2").estimator == "k2"
