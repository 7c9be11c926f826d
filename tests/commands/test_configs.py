"""``proxygap configs``, ``proxygap show`` and ``--set``: every built-in listed with its first
sentence, a shown config that is valid YAML equal to the resolved config with each field's
description beside it, and overrides validated like the file (errors name the key)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from proxygap.cli import app
from proxygap.commands.configs import (
    apply_overrides,
    builtin_configs,
    header_sentence,
    load_study_config,
)
from proxygap.config import ConfigError, builtin_config_path, load_config

runner = CliRunner()


def test_header_sentence_skips_abbreviations() -> None:
    text = "# Study (Coste et al.\n# 2023). Second sentence.\nname: x\n# not the header\n"
    assert header_sentence(text) == "Study (Coste et al. 2023)."
    assert header_sentence("name: x\n") == ""


def test_configs_lists_every_builtin_one_line_each() -> None:
    result = runner.invoke(app, ["configs"])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(builtin_configs())
    demo = next(line for line in lines if line.startswith("demo "))
    assert demo.endswith("with 25% label noise (Coste et al. 2023).")


def test_show_prints_the_resolved_config_with_meanings() -> None:
    result = runner.invoke(app, ["show", "demo"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == load_config(builtin_config_path("demo")).model_dump(
        mode="json"
    )
    lines = result.output.splitlines()
    assert "  n_pairs: 9000  # training pairs (each proxy takes the first n_pairs of its own)" in (
        lines
    )
    assert any(x.startswith("    kl_controller: fixed  # fixed beta, or adaptive") for x in lines)
    # every field of the study's own sections carries its meaning
    body = [x for x in lines if x.strip() and not x.startswith("#")]
    described = [x for x in body if "  # " in x]
    assert len(described) >= 0.9 * len(body)


def test_overrides_set_paths_items_and_null_sections() -> None:
    base = {"a": {"b": 1}, "items": [{"x": 0}, {"x": 0}], "rl": None}
    out = apply_overrides(base, ["a.b=2.5", "items.*.x=true", "items.1.x=[1, 2]", "rl.proxy=rm"])
    assert out == {"a": {"b": 2.5}, "items": [{"x": True}, {"x": [1, 2]}], "rl": {"proxy": "rm"}}
    assert base["a"]["b"] == 1  # the input is not changed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed", "expected a dotted path and a value"),
        ("a..b=1", "has an empty part"),
        ("proxies.3.label_noise=0.1", "proxies is a list of 3 item(s); use an index 0..2"),
        ("seed.x=1", "seed is a value, not a section"),
        ("rl.settings.stepz=5", "rl.settings.stepz: unknown field"),
        ("proxies.*.label_noise=0.9", "proxies.0.label_noise: Input should be less than"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_study_config("demo", [override])
    assert message in str(err.value)


def test_set_on_run_is_validated_before_anything_is_written(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["run", "demo", "--runs-dir", str(tmp_path / "runs"), "--set", "bon.pool_size=1"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "bon.pool_size: Input should be greater than or equal to 2 (got 1)" in result.output
    assert "invalid config 'demo' with --set bon.pool_size=1" in result.output  # the name typed
    assert not (tmp_path / "runs").exists()


def test_show_with_set_and_a_missing_file() -> None:
    result = runner.invoke(app, ["show", "demo", "--set", "rl.settings.steps=7"])
    assert result.exit_code == 0 and "    steps: 7  # RL steps" in result.output
    result = runner.invoke(app, ["show", "nowhere.yaml"])
    assert result.exit_code == 2 and "config file 'nowhere.yaml' does not exist" in result.output
    result = runner.invoke(app, ["show", "nosuch"])
    assert result.exit_code == 2 and "no built-in config 'nosuch'" in result.output


def test_set_on_sweep_changes_the_base_of_every_cell(tmp_path: Path) -> None:
    from proxygap.sweep import load_sweep

    spec = tmp_path / "sw.yaml"
    spec.write_text("name: sw\nbase: demo\ngrid: {seed: [0, 1]}\n")
    _, cells = load_sweep(spec, ["bon.pool_size=256", "rl=null"])
    assert [c.config["bon"]["pool_size"] for c in cells] == [256, 256]
    assert all(c.config["rl"] is None for c in cells)
    result = runner.invoke(
        app, ["sweep", str(spec), "--runs-dir", str(tmp_path / "runs"), "--set", "bon.n_points=1"]
    )
    assert result.exit_code == 2 and "bon.n_points: Input should be greater than" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path: Path, monkeypatch) -> None:
    # `proxygap run demo --runs-dir .` leaves a folder `demo` here: the name still means the
    # shipped config (the override error proves it was read), not a missing file
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    result = runner.invoke(app, ["run", "demo", "--set", "bon.pool_size=1"])
    assert result.exit_code == 2 and "does not exist" not in result.output
    assert "bon.pool_size: Input should be greater than or equal to 2 (got 1)" in result.output
    # a folder that is no shipped config's name: the shipped names are listed
    (tmp_path / "mine").mkdir()
    result = runner.invoke(app, ["run", "mine"])
    assert result.exit_code == 2 and "no built-in config 'mine'; shipped configs:" in result.output


def test_show_reads_docstring_cross_references_as_plain_names() -> None:
    result = runner.invoke(app, ["show", "detect"])
    assert result.exit_code == 0
    assert "settings:  # Hyperparameters of `train_rl`," in result.output
    for role in (":func:", ":class:", ":mod:", ":data:", ":meth:"):
        assert role not in result.output, role
