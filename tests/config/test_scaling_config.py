"""The scaling section: the shipped config spans >= 30x in parameters over >= 2 data sizes and
>= 3 seeds; a config that cannot run as a scaling study is refused with the field named."""

from __future__ import annotations

from typing import Any

import pytest

from proxygap.config import ConfigError, builtin_config_path, load_config, parse_config
from proxygap.models.loading import load_tokenizer
from proxygap.rewards.reward_model import n_parameters, new_reward_model
from proxygap.tasks import get_task


def scaling(**top: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "preferences": {"n_pairs": 400},
        "proxies": [
            {"name": "a", "n_embd": 8, "n_layer": 1, "n_head": 1},
            {"name": "b", "n_embd": 16, "n_layer": 2, "n_head": 2},
        ],
        "bon": None,
        "scaling": {"n_pairs": [400, 100]},
    }
    data.update(top)
    return data


def test_shipped_scaling_config_spans_the_sizes() -> None:
    cfg = load_config(builtin_config_path("scaling"))
    assert cfg.scaling is not None and cfg.bon is None
    assert len(cfg.scaling.n_pairs) >= 2 and len(cfg.scaling.seeds) >= 3
    tok = load_tokenizer(get_task("reviews").tokenizer_path)
    params = [
        n_parameters(new_reward_model(tok, n_embd=p.n_embd, n_layer=p.n_layer, n_head=p.n_head))
        for p in cfg.proxies
    ]
    assert max(params) / min(params) >= 30
    assert len({p.n_layer for p in cfg.proxies}) > 1 and len({p.n_embd for p in cfg.proxies}) > 1


def test_a_minimal_scaling_config_sorts_its_sizes() -> None:
    cfg = parse_config(scaling())
    assert cfg.scaling is not None and cfg.scaling.n_pairs == [100, 400]
    assert cfg.scaling.seeds == [0, 1, 2] and cfg.scaling.n_boot == 1000


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (scaling(bon={}), "set ['bon'] to null"),
        (scaling(rl={"proxy": "a"}), "set ['rl'] to null"),
        (
            scaling(proxies=[{"name": "a", "ensemble": 2}, {"name": "b", "n_embd": 32}]),
            "proxy 'a' is a model size trained on every scaling.n_pairs (one member, gold "
            "labels); it cannot set ensemble: 2",
        ),
        (
            scaling(proxies=[{"name": "a"}, {"name": "b", "n_pairs": 10, "n_embd": 32}]),
            "it cannot set n_pairs: 10",
        ),
        (scaling(proxies=[{"name": "a"}, {"name": "b"}]), "at least two distinct model sizes"),
        (
            scaling(scaling={"n_pairs": [100, 800]}),
            "scaling.n_pairs [100, 800] exceeds preferences.n_pairs (400)",
        ),
        (scaling(scaling={"n_pairs": [100, 100]}), "scaling.n_pairs: values must be distinct"),
        (scaling(scaling={"n_pairs": [100], "seeds": [0]}), "scaling.seeds: List should have"),
        (scaling(scaling={"n_pairs": [100], "n_boot": 10}), "scaling.n_boot: Input should be"),
    ],
)
def test_bad_scaling_configs_name_the_field(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)
