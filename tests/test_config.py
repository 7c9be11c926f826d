"""Tests for proxygap.config (typed study configs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxygap.config import (
    ConfigError,
    ProxyConfig,
    StudyConfig,
    builtin_config_path,
    dump_config,
    load_config,
    parse_config,
)


def minimal(**top: Any) -> dict[str, Any]:
    """The smallest valid config dict, with top-level fields replaced by ``top``."""
    data: dict[str, Any] = {"proxies": [{"name": "rm"}]}
    data.update(top)
    return data


def config_error(data: Any) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    return str(err.value)


# ---------------------------------------------------------------- valid configs


def test_demo_config_loads_and_compares_data_amounts() -> None:
    path = builtin_config_path("demo")
    assert path.name == "demo.yaml" and path.is_file()
    cfg = load_config(path)
    assert cfg.name == "demo" and cfg.task.name == "reviews" and cfg.task.policy is None
    # the demo compares proxies trained on different amounts of the same preference data
    amounts = [p.n_pairs or cfg.preferences.n_pairs for p in cfg.proxies]
    assert len(amounts) >= 2 and len(set(amounts)) == len(amounts)
    assert max(amounts) <= cfg.preferences.n_pairs
    assert cfg.bon is not None and max(cfg.bon.examples_at) <= cfg.bon.pool_size
    # defaults filled in for what the file leaves out
    rm = cfg.proxies[0]
    assert (rm.labels, rm.ensemble, rm.aggregation) == ("deterministic", 1, "mean")
    assert (rm.n_embd, rm.n_head, rm.uwo_lambda) == (64, 2, 0.5)
    assert cfg.runtime.device == "cpu"


def test_minimal_config_takes_documented_defaults() -> None:
    cfg = parse_config(minimal())
    assert cfg.name == "demo"
    assert (cfg.preferences.n_pairs, cfg.preferences.n_heldout) == (24_000, 2_000)
    assert cfg.bon is not None and cfg.bon.pool_size == 1024 and cfg.bon.n_points == 41
    assert parse_config(minimal(bon=None)).bon is None


@pytest.mark.parametrize(
    "cfg",
    [
        minimal(),
        minimal(
            name="study_2.b",
            seed=17,
            bon=None,
            preferences={"n_pairs": 500, "max_new_tokens": 12},
            proxies=[
                {"name": "a", "n_pairs": 500, "labels": "bradley_terry", "bt_temperature": 0.5},
                {
                    "name": "b",
                    "ensemble": 4,
                    "aggregation": "uwo",
                    "uwo_lambda": 0.1,
                    "label_noise": 0.25,
                    "n_embd": 96,
                    "n_head": 3,
                },
            ],
            runtime={"threads": 2},
        ),
        minimal(
            task={"prompts": "p.txt", "policy": "lm", "gold": "my:score", "chat_template": True},
            preferences={"file": "pairs.jsonl"},
            runtime={"device": "cuda:1"},
        ),
    ],
)
def test_dump_config_round_trips(cfg: dict[str, Any]) -> None:
    parsed = parse_config(cfg)
    text = dump_config(parsed)
    again = parse_config(yaml.safe_load(text))
    assert again == parsed
    assert dump_config(again) == text
    # every default is written out
    dumped = yaml.safe_load(text)
    assert set(dumped) == set(StudyConfig.model_fields)
    assert set(dumped["proxies"][0]) == set(ProxyConfig.model_fields)


def test_demo_round_trips_through_a_file(tmp_path: Path) -> None:
    cfg = load_config(builtin_config_path("demo"))
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


# ---------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (minimal(colour="red"), "  colour: unknown field"),
        (minimal(proxies=[{"name": "rm", "colour": "red"}]), "  proxies.0.colour: unknown field"),
        (
            minimal(bon={"pool_size": "big"}),
            "  bon.pool_size: Input should be a valid integer, unable to parse string as an "
            "integer (got 'big')",
        ),
        (
            minimal(proxies=[{"name": "rm", "label_noise": 0.7}]),
            "  proxies.0.label_noise: Input should be less than or equal to 0.5 (got 0.7)",
        ),
        (
            minimal(bon={"pool_size": 1}),
            "  bon.pool_size: Input should be greater than or equal to 2 (got 1)",
        ),
        (
            minimal(preferences={"temperature": 0}),
            "  preferences.temperature: Input should be greater than 0 (got 0)",
        ),
        (
            minimal(proxies=[{"name": "rm", "labels": "random"}]),
            "  proxies.0.labels: Input should be 'deterministic' or 'bradley_terry' (got 'random')",
        ),
        (
            minimal(proxies=[{"name": "a"}, {"name": "b", "aggregation": "max"}]),
            "  proxies.1.aggregation: Input should be 'mean', 'wco' or 'uwo' (got 'max')",
        ),
        (
            minimal(proxies=[{"name": "rm"}, {"name": "x"}, {"name": "rm"}]),
            "proxy names must be unique; repeated: ['rm']",
        ),
        (
            minimal(proxies=[{"name": "rm", "n_embd": 65, "n_head": 2}]),
            "  proxies.0: n_embd (65) must be divisible by n_head (2)",
        ),
        (
            minimal(preferences={"n_pairs": 100}, proxies=[{"name": "rm", "n_pairs": 101}]),
            "proxy 'rm' asks for 101 pairs but preferences.n_pairs is 100",
        ),
        (minimal(name="../evil"), "  name: study name '../evil' must be 1-64 letters"),
        (minimal(name="a/b"), "  name: study name 'a/b' must be 1-64 letters"),
        (minimal(name="a..b"), "  name: study name 'a..b' must be 1-64 letters"),
        (minimal(name=""), "  name: study name '' must be 1-64 letters"),
        (minimal(name="x" * 65), "  name: study name 'xxxx"),
        (
            minimal(proxies=[{"name": "rm/../x"}]),
            "  proxies.0.name: proxy name 'rm/../x' must be 1-64 letters",
        ),
        ({"name": "x"}, "  proxies: Field required"),
        (minimal(proxies=[]), "  proxies: List should have at least 1 item"),
        (minimal(seed="zero"), "  seed: Input should be a valid integer"),
        (
            minimal(task={"name": "chess"}),
            "  task: name 'chess' is not a built-in task (built-in: ['reviews']); give prompts",
        ),
        (minimal(bon={"examples_at": [1, 0]}), "  bon.examples_at.1: Input should be greater"),
        ([1, 2], "expected a mapping at the top level"),
        (None, "expected a mapping at the top level"),
    ],
)
def test_bad_configs_name_the_field(data: Any, expected: str) -> None:
    message = config_error(data)
    assert message.startswith("invalid config <dict>")
    assert expected in message


def test_all_bad_fields_are_reported_at_once() -> None:
    message = config_error(
        minimal(colour=1, bon={"pool_size": 1}, proxies=[{"name": "rm", "lr": -1}])
    )
    assert "  colour: unknown field" in message
    assert "  bon.pool_size: Input should be greater than or equal to 2 (got 1)" in message
    assert "  proxies.0.lr: Input should be greater than 0 (got -1)" in message
    assert len(message.splitlines()) == 4  # header + three fields


def test_assignment_is_validated() -> None:
    cfg = parse_config(minimal())
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        cfg.name = "../evil"
    assert cfg.name == "demo"


def test_load_config_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert str(err.value) == f"config file {str(missing)!r} does not exist"

    broken = tmp_path / "broken.yaml"
    broken.write_text("proxies: [\n  {name: rm\n")
    with pytest.raises(ConfigError) as err:
        load_config(broken)
    assert str(err.value).startswith(f"config file {str(broken)!r} is not valid YAML:")

    listing = tmp_path / "list.yaml"
    listing.write_text("- name: rm\n- name: other\n")
    with pytest.raises(ConfigError) as err:
        load_config(listing)
    assert str(err.value) == f"invalid config {listing}: expected a mapping at the top level"

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(empty)

    bad_field = tmp_path / "bad.yaml"
    bad_field.write_text("proxies:\n  - {name: rm, label_noise: 0.7}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad_field)
    assert str(err.value) == (
        f"invalid config {bad_field}:\n"
        "  proxies.0.label_noise: Input should be less than or equal to 0.5 (got 0.7)"
    )


def test_unknown_builtin_config_lists_shipped_ones() -> None:
    with pytest.raises(ConfigError) as err:
        builtin_config_path("nope")
    message = str(err.value)
    assert message.startswith("no built-in config 'nope'; shipped configs: [")
    assert "'demo'" in message


@pytest.mark.parametrize("name", ["demo", "daa", "mitigations"])
def test_every_shipped_config_loads(name: str) -> None:
    cfg = load_config(builtin_config_path(name))
    assert cfg.name == name
