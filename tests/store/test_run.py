"""Tests for proxygap.store.run (run folders)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxygap.config import StudyConfig, dump_config, parse_config
from proxygap.store.run import RunFolder, RunFolderError, config_digest, config_text


def minimal(**top: Any) -> dict[str, Any]:
    """The smallest valid config dict, with top-level fields replaced by ``top``."""
    data: dict[str, Any] = {"proxies": [{"name": "rm"}]}
    data.update(top)
    return data


def _data(cfg: StudyConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def _open(root: Path, cfg: StudyConfig, *, restart: bool = False) -> RunFolder:
    return RunFolder(root, cfg.name, _data(cfg), restart=restart)


def small_cfg(**top: Any) -> StudyConfig:
    return parse_config(minimal(name="run1", **top))


def test_run_folder_writes_config_digest_and_versions(tmp_path: Path) -> None:
    cfg = small_cfg()
    run = _open(tmp_path / "runs", cfg)
    assert run.dir == (tmp_path / "runs" / "run1").resolve()
    assert not run.resumed
    assert (run.dir / "config.yaml").read_text() == dump_config(cfg)
    assert parse_config(yaml.safe_load((run.dir / "config.yaml").read_text())) == cfg
    digest = config_digest(_data(cfg))
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert (run.dir / "config.digest").read_text() == digest + "\n"
    info = json.loads((run.dir / "versions.json").read_text())
    assert info["torch"] == importlib.metadata.version("torch")
    assert info["numpy"] == importlib.metadata.version("numpy")
    assert info["proxygap"] == "0.1.0"
    assert {"python", "platform", "git_revision", "torch_threads"} <= set(info)
    assert isinstance(info["torch_threads"], int) and info["torch_threads"] >= 1
    assert sorted(p.name for p in run.dir.iterdir()) == FRESH


FRESH = [".lock", "config.digest", "config.yaml", "inputs.json", "versions.json"]


def test_config_digest_tracks_content() -> None:
    assert config_digest(_data(small_cfg())) == config_digest(_data(small_cfg()))
    assert config_digest(_data(small_cfg())) != config_digest(_data(small_cfg(seed=1)))
    # a default written out explicitly is the same resolved config
    assert config_digest(_data(small_cfg())) == config_digest(_data(small_cfg(seed=0)))


def test_config_text_matches_the_config_dump_and_settings_without_effect_are_left_out() -> None:
    cfg = small_cfg(runtime={"workers": 3, "threads": 1})
    assert config_text(_data(cfg)) == dump_config(cfg)
    # workers and threads change how a run goes, not its numbers; the device index neither
    same = [small_cfg(), small_cfg(runtime={"threads": 2}), small_cfg(runtime={"workers": 1})]
    assert len({config_digest(_data(c)) for c in [cfg, *same]}) == 1
    data = _data(small_cfg())
    assert config_digest({**data, "report": {"anything": 1}}) == config_digest(data)
    cuda = [{**data, "runtime": {**data["runtime"], "device": d}} for d in ("cuda:0", "cuda:1")]
    assert config_digest(cuda[0]) == config_digest(cuda[1]) != config_digest(data)
    # the inputs' content hashes are part of the digest
    assert config_digest(data, {"task.policy": "a"}) != config_digest(data, {"task.policy": "b"})


def test_reopening_with_the_same_config_resumes(tmp_path: Path) -> None:
    cfg = small_cfg()
    run = _open(tmp_path, cfg)
    assert not run.done("pairs") and run.stage_info("pairs") == {}
    run.mark_done("pairs", {"n": 3, "file": "pairs.jsonl"})
    run.mark_done("proxies")
    out = run.path("proxies", "rm", "scores.txt")
    assert out == run.dir / "proxies" / "rm" / "scores.txt" and out.parent.is_dir()
    out.write_text("42\n")

    again = _open(tmp_path, small_cfg())
    assert again.resumed
    assert again.done("pairs") and again.done("proxies") and not again.done("bon")
    assert again.stage_info("pairs") == {"n": 3, "file": "pairs.jsonl"}
    assert again.stage_info("proxies") == {}
    assert (again.dir / "proxies" / "rm" / "scores.txt").read_text() == "42\n"


def test_a_different_config_is_refused_without_restart(tmp_path: Path) -> None:
    run = _open(tmp_path, small_cfg())
    run.mark_done("pairs")
    old, new = config_digest(_data(small_cfg())), config_digest(_data(small_cfg(seed=1)))
    with pytest.raises(RunFolderError) as err:
        _open(tmp_path, small_cfg(seed=1))
    message = str(err.value)
    assert "--restart" in message
    assert f"(digest {old}, now {new})" in message
    assert "was made by a different config" in message
    # nothing was touched
    assert _open(tmp_path, small_cfg()).done("pairs")
    assert (run.dir / "config.yaml").read_text() == dump_config(small_cfg())


def test_restart_deletes_and_recreates(tmp_path: Path) -> None:
    run = _open(tmp_path, small_cfg())
    run.mark_done("pairs")
    run.path("stale.txt").write_text("old")
    fresh = _open(tmp_path, small_cfg(seed=1), restart=True)
    assert not fresh.resumed and not fresh.done("pairs")
    assert not (fresh.dir / "stale.txt").exists()
    assert (fresh.dir / "config.yaml").read_text() == dump_config(small_cfg(seed=1))
    digest = config_digest(_data(small_cfg(seed=1)))
    assert (fresh.dir / "config.digest").read_text().strip() == digest
    # and the new config now resumes without restart
    fresh.mark_done("bon")
    assert _open(tmp_path, small_cfg(seed=1)).done("bon")


def test_restart_clears_a_folder_without_a_digest(tmp_path: Path) -> None:
    folder = tmp_path / "run1"
    folder.mkdir()
    (folder / "junk.txt").write_text("x")
    run = _open(tmp_path, small_cfg(), restart=True)
    assert sorted(p.name for p in run.dir.iterdir()) == FRESH


@pytest.mark.parametrize("name", ["../evil", "sub/../../evil", "..", ".", "", "/tmp/evil"])
def test_run_names_escaping_the_root_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    # bypass the config validator to test the run folder's own guard
    cfg = small_cfg().model_copy(update={"name": name})
    assert cfg.name == name
    with pytest.raises(RunFolderError) as err:
        _open(root, cfg)
    assert f"run name {name!r} escapes the runs folder {str(root)!r}" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert list(root.iterdir()) == []


def test_run_name_through_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "runs", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    cfg = StudyConfig.model_construct(**small_cfg().__dict__ | {"name": "link"})
    with pytest.raises(RunFolderError, match="escapes the runs folder"):
        _open(root, cfg)
    assert list(outside.iterdir()) == []
