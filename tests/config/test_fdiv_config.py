"""The fdiv section of a study config (proxygap/config/fdiv.py): errors name the field and the
value, and every arm's and row's settings come out as the study runs them."""

from __future__ import annotations

import copy

import pytest

from proxygap.config import ConfigError, builtin_config_path, load_config, parse_config

BASE = {"proxies": [{"name": "rm"}], "fdiv": {"proxy": "rm"}}


def _error(fdiv: dict) -> str:
    data = copy.deepcopy(BASE)
    data["fdiv"].update(fdiv)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


@pytest.mark.parametrize(
    ("fdiv", "names"),
    [
        ({"proxy": "nope"}, ["fdiv.proxy", "'nope'", "['rm']"]),
        ({"seeds": [0]}, ["fdiv.seeds", "at least 2"]),
        ({"seeds": [1, 1, 2]}, ["seeds must be distinct", "'1'"]),
        ({"rl": {"divergences": ["hellinger"]}}, ["fdiv.rl.divergences", "hellinger"]),
        ({"rl": {"divergences": ["js", "js"]}}, ["divergences must be distinct"]),
        ({"rl": {"beta": 0}}, ["fdiv.rl.beta"]),
        ({"rl": {"settings": {"group_size": 1}}}, ["fdiv.rl", "group_size"]),
        ({"rl": {"settings": {"kl_mode": "loss"}}}, ["fdiv.rl", "kl_mode"]),
        ({"daa": {"losses": ["dpo", "kto2"]}}, ["fdiv.daa.losses", "kto2", "fdpo_js"]),
        ({"daa": {"alpha": 1.0}}, ["fdiv.daa.alpha"]),
        ({"daa": {"n_pairs": 10**9}}, ["fdiv.daa.n_pairs", "preferences.n_pairs"]),
        ({"rl": None, "daa": None}, ["fdiv needs rl or daa"]),
    ],
)
def test_errors_name_the_field(fdiv: dict, names: list[str]) -> None:
    msg = _error(fdiv)
    for n in names:
        assert n in msg, msg


def test_arms_and_rows_take_their_settings_from_the_section() -> None:
    data = copy.deepcopy(BASE)
    data["fdiv"] |= {
        "rl": {"beta": 0.3, "settings": {"algo": "rloo", "steps": 7, "seed": 99}},
        "daa": {"beta": 0.2, "alpha": 0.25, "settings": {"lr": 1e-3}},
    }
    f = parse_config(data).fdiv
    assert f is not None and f.rl is not None and f.daa is not None
    arm = f.rl.arm("tv", 5)
    assert (arm.algo, arm.divergence, arm.kl_coef, arm.seed, arm.steps) == ("fdpg", "tv", 0.3, 5, 7)
    row = f.daa.row("fdpo_alpha", 2)
    assert (row.loss, row.beta, row.alpha, row.seed, row.lr) == ("fdpo_alpha", 0.2, 0.25, 2, 1e-3)
    assert f.daa.row("fdpo_js", 2).alpha is None  # alpha reaches only the alpha loss


def test_builtin_config_is_valid_and_meets_the_issue() -> None:
    cfg = load_config(builtin_config_path("fdiv"))
    f = cfg.fdiv
    assert f is not None and f.rl is not None and f.daa is not None
    assert len(f.seeds) >= 3
    assert {"reverse_kl", "forward_kl", "js"} <= set(f.rl.divergences)
    assert f.daa.losses[0] == "dpo" and {"fdpo_fkl", "fdpo_js", "fdpo_alpha"} <= set(f.daa.losses)
    assert f.proxy in [p.name for p in cfg.proxies]
