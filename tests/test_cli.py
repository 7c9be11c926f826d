"""The command line (errors reach the user as messages, not tracebacks) and the task build."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from proxygap import __version__
from proxygap.cli import app
from proxygap.tasks.reviews.build import BaseModelSpec, build

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.strip() == __version__


def test_bad_config_exits_2_with_the_field_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nproxies:\n  - {name: rm, label_noise: 0.9}\n")
    result = runner.invoke(app, ["run", str(bad), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "proxies.0.label_noise" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing written for a config that cannot run


def test_unknown_builtin_config_lists_the_shipped_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "nosuch", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no built-in config 'nosuch'" in result.output and "demo" in result.output


def test_missing_policy_path_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\ntask: {{policy: {tmp_path / 'nowhere'}}}\nproxies: [{{name: rm}}]\n")
    result = runner.invoke(app, ["run", str(cfg), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "policy path" in result.output and "is not a directory" in result.output
    assert not (tmp_path / "runs").exists()


def test_task_build_is_bit_for_bit_reproducible(tmp_path: Path) -> None:
    spec = BaseModelSpec(n_embd=32, n_layer=1, n_head=2, n_sentences=640, warmup_steps=2)
    a = build(tmp_path / "a", spec)
    b = build(tmp_path / "b", spec)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    c = build(tmp_path / "c", BaseModelSpec(**{**spec.__dict__, "seed": 1}))
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_task_build_requires_an_output_folder() -> None:
    # no default: a bare `task build` must not overwrite the installed package's assets
    result = runner.invoke(app, ["task", "build"])
    assert result.exit_code == 2 and "Missing option '--out'" in result.output
