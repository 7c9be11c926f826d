"""Runs that survive: kill -9 mid-stage and resume, unusable run folders, non-finite scores."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from proxygap.cli import app
from proxygap.config import parse_config
from proxygap.data.preferences import read_jsonl
from proxygap.errors import NonFiniteError
from proxygap.models.loading import load_tokenizer
from proxygap.rewards.reward_model import new_reward_model
from proxygap.store.run import RunFolderError
from proxygap.study import run_study
from proxygap.tasks import TASKS, get_task

# one two-member proxy: member 1 trains for about a second after member 0 is saved
KILLED: dict[str, Any] = {
    "name": "killed",
    "seed": 5,
    "preferences": {"n_pairs": 300, "n_heldout": 80},
    "proxies": [
        {"name": "ens", "n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 4, "ensemble": 2}
    ],
    "bon": {"n_prompts": 8, "pool_size": 32, "n_points": 8, "examples_at": [1, 8, 32]},
    "runtime": {"threads": 1},
}
SAME_BYTES = (
    "preferences.jsonl", "pool.jsonl", "bon_curves.csv", "samples.json",
    "proxies/ens/member-0/model.safetensors", "proxies/ens/member-1/model.safetensors",
)  # fmt: skip


def _stages(run: Path) -> dict[str, Any]:
    p = run / "stages.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _command(cfg: Path, runs: Path) -> list[str]:
    return [sys.executable, "-m", "proxygap.cli", "run", str(cfg), "--runs-dir", str(runs)]


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log: Path) -> None:
    """Poll every 5 ms; SIGKILL the process as soon as ``ready()`` holds."""
    deadline = time.monotonic() + 180
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point:\n"
                        + log.read_text()[-3000:])  # fmt: skip
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.fixture(scope="module")
def killed_twice(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`proxygap run` killed with SIGKILL twice, each time mid-stage, then resumed to the end.

    1. killed as soon as the ``preferences`` stage is recorded (inside proxy training);
    2. resumed with the same command, killed once proxy member 0 is being saved or saved but
       the proxy stage is not recorded (saving member 0 or training member 1);
    3. resumed with the same command to the end.
    The uninterrupted reference runs the same command in another folder, alongside.
    Returns what each kill left, the final run folder and the reference's.
    """
    tmp = tmp_path_factory.mktemp("killed")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(KILLED))
    cmd, log = _command(tmp / "tiny.yaml", tmp / "runs"), tmp / "run.log"
    reference = _start(_command(tmp / "tiny.yaml", tmp / "reference"), tmp / "reference.log")
    run = tmp / "runs" / "killed"
    seen: dict[str, Any] = {"run": run, "reference": tmp / "reference" / "killed"}
    member0 = run / "proxies" / "ens" / "member-0"

    def member0_written() -> bool:
        return member0.exists() or member0.with_name("member-0.tmp").exists()

    def mid_proxy() -> bool:
        return member0_written() and "proxy:ens" not in _stages(run)

    try:
        _kill_when(_start(cmd, log), lambda: "preferences" in _stages(run), log)
        seen["first"] = {"stages": set(_stages(run)), "summary": (run / "summary.json").exists(),
                         "pairs": (run / "preferences.jsonl").read_bytes()}  # fmt: skip
        _kill_when(_start(cmd, log), mid_proxy, log)
        seen["second"] = {"stages": set(_stages(run)), "member0": member0_written()}
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)  # fmt: skip
        seen["rc"], seen["output"] = done.returncode, log.read_text() + done.stdout.decode()
        assert reference.wait(timeout=300) == 0, (tmp / "reference.log").read_text()[-3000:]
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    return seen


def test_first_kill_lands_inside_proxy_training(killed_twice: dict[str, Any]) -> None:
    first, reference = killed_twice["first"], killed_twice["reference"]
    assert first["stages"] == {"preferences"} and not first["summary"]
    assert first["pairs"] == (reference / "preferences.jsonl").read_bytes()  # kept intact


def test_second_kill_lands_inside_proxy_training(killed_twice: dict[str, Any]) -> None:
    second = killed_twice["second"]
    assert second["stages"] == {"preferences"}  # proxy:ens was cut before it was recorded
    assert second["member0"]  # ... with member 0 (or its temporary folder) already on disk


def test_resumed_run_is_identical_to_an_uninterrupted_one(killed_twice: dict[str, Any]) -> None:
    run, reference = killed_twice["run"], killed_twice["reference"]
    assert killed_twice["rc"] == 0, killed_twice["output"][-3000:]
    assert killed_twice["output"].count("resuming") == 2
    for name in SAME_BYTES:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    assert (run / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()
    with np.load(run / "scores.npz") as a, np.load(reference / "scores.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_summary_json_is_byte_identical_after_resume(killed_twice: dict[str, Any]) -> None:
    run, reference = killed_twice["run"], killed_twice["reference"]
    assert (run / "summary.json").read_bytes() == (reference / "summary.json").read_bytes()


# ---------------------------------------------------------------- unusable run folders
def test_runs_folder_that_is_a_file_exits_2_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(KILLED))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be\n")
    result = CliRunner().invoke(app, ["run", str(cfg), "--runs-dir", str(blocker)])
    assert result.exit_code == 2
    assert "cannot write the run folder" in result.output and str(blocker) in result.output
    assert "Traceback" not in result.output
    assert blocker.read_text() == "a file where the runs folder should be\n"


def test_unwritable_runs_folder_is_a_run_folder_error(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    root.chmod(0o500)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("this user can write a 0o500 folder (root): permissions cannot be tested")
        with pytest.raises(RunFolderError, match="cannot write the run folder") as err:
            run_study(parse_config(KILLED), root, log=lambda *_: None)
        assert str(root) in str(err.value)
        assert list(root.iterdir()) == []
    finally:
        root.chmod(0o700)


# ---------------------------------------------------------------- non-finite scores
P, N = 4, 16  # the pool of SMALL: P * N = 64 texts per gold call, unlike the 140 pair texts


@pytest.fixture(scope="module")
def fixed_proxies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two untrained reward-model folders (used as ``path:`` proxies): finite, and NaN."""
    tmp = tmp_path_factory.mktemp("proxies")
    tok = load_tokenizer(get_task("reviews").tokenizer_path)
    out = {}
    for name in ("finite", "nan"):
        model = new_reward_model(tok, n_embd=32, n_layer=1, n_head=2, n_positions=64, seed=0)
        if name == "nan":
            with torch.no_grad():
                model.score.weight.fill_(float("nan"))
        model.save_pretrained(tmp / name, safe_serialization=True)
        tok.save_pretrained(tmp / name)
        out[name] = tmp / name
    return out


def _small(proxy: Path) -> Any:
    return parse_config(
        {
            "name": "bad",
            "seed": 2,
            "preferences": {"n_pairs": 100, "n_heldout": 40},
            "proxies": [{"name": "fixed", "path": str(proxy)}],
            "bon": {"n_prompts": P, "pool_size": N, "n_points": 4, "examples_at": [1, N]},
            "runtime": {"threads": 1},
        }
    )


def _patch_gold(monkeypatch: pytest.MonkeyPatch, bad: float, *, on_pool: bool) -> None:
    """Make the reviews task's gold return ``bad`` for one text, on the pool or on the pairs."""
    task = get_task("reviews")

    def gold(texts: list[str]) -> np.ndarray:
        g = np.array(task.gold(texts), dtype=np.float64)
        if len(texts) == (P * N if on_pool else 140):  # not the 32 texts of the gold probe
            g[3] = bad
        return g

    monkeypatch.setitem(TASKS, "reviews", lambda: dataclasses.replace(task, gold=gold))


def _earlier_stages_intact(run: Path, stages: set[str]) -> None:
    assert set(_stages(run)) == stages
    assert len(read_jsonl(run / "preferences.jsonl", duplicates="keep")) == 140
    assert not (run / "scores.npz").exists() and not (run / "summary.json").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gold_on_the_pool_stops_at_the_scores_stage(
    bad: float, fixed_proxies: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_gold(monkeypatch, bad, on_pool=True)
    with pytest.raises(NonFiniteError, match=r"stage 'scores': 1 non-finite value\(s\) in 'gold'"):
        run_study(_small(fixed_proxies["finite"]), tmp_path, log=lambda *_: None)
    _earlier_stages_intact(tmp_path / "bad", {"preferences", "pool"})


def test_nan_proxy_scores_stop_at_the_scores_stage(
    fixed_proxies: dict[str, Path], tmp_path: Path
) -> None:
    # the scorer is built in the scores stage and refuses the member on the reference texts
    with pytest.raises(NonFiniteError, match=r"^proxy 'fixed': member 0 scores 80 of 80 base-"):
        run_study(_small(fixed_proxies["nan"]), tmp_path, log=lambda *_: None)
    _earlier_stages_intact(tmp_path / "bad", {"preferences", "pool"})


def test_nan_gold_on_the_preference_pairs_stops_at_the_preferences_stage(
    fixed_proxies: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_gold(monkeypatch, float("nan"), on_pool=False)
    with pytest.raises(NonFiniteError, match="stage 'preferences'"):
        run_study(_small(fixed_proxies["finite"]), tmp_path, log=lambda *_: None)
    assert _stages(tmp_path / "bad") == {}
    assert not (tmp_path / "bad" / "preferences.jsonl").exists()
