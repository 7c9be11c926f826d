"""Input fingerprints in a run folder's digest, the folder's lock, file modes from the umask, and
the removal of temporary files an interrupted write left."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from proxygap.store import atomic, fingerprint
from proxygap.store.atomic import atomic_write_text, remove_stale_tmp
from proxygap.store.fingerprint import changed_files
from proxygap.store.lock import RunLock
from proxygap.store.run import RunFolder, RunFolderError

CONFIG: dict[str, Any] = {"name": "run", "seed": 0, "runtime": {"threads": 1, "workers": 1}}


def _inputs(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"n": 1}')
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    return {"task.policy": model, "preferences.file": tmp_path / "pairs.jsonl"}


def test_fingerprints_are_content_hashes(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    f = fingerprint.fingerprint(inputs["preferences.file"])
    data = inputs["preferences.file"].read_bytes()
    assert f["files"]["."][2] == hashlib.sha256(data).hexdigest()
    # a folder: the hash of its files' relative paths and hashes, in sorted order
    folder = fingerprint.fingerprint(inputs["task.policy"])
    expected = hashlib.sha256()
    for rel in ("config.json", "model.safetensors"):
        digest = hashlib.sha256((inputs["task.policy"] / rel).read_bytes()).hexdigest()
        expected.update(f"{rel}\0{digest}\n".encode())
    assert folder["sha256"] == expected.hexdigest()
    # the same bytes under another modification time: the same fingerprint
    os.utime(inputs["task.policy"] / "config.json", ns=(1, 1))
    assert fingerprint.fingerprint(inputs["task.policy"])["sha256"] == folder["sha256"]
    (inputs["task.policy"] / "model.safetensors").write_bytes(b"\x01" * 64)
    edited = fingerprint.fingerprint(inputs["task.policy"])
    assert changed_files(folder, edited) == ["model.safetensors"]


def test_unchanged_files_are_not_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _inputs(tmp_path)["task.policy"]
    first = fingerprint.fingerprint(path)
    calls: list[Path] = []
    real = fingerprint.hash_file
    monkeypatch.setattr(fingerprint, "hash_file", lambda p: calls.append(p) or real(p))
    assert fingerprint.fingerprint(path, first) == first and calls == []
    (path / "config.json").write_text('{"n": 2}')
    fingerprint.fingerprint(path, first)
    assert calls == [path / "config.json"]


def test_an_edited_input_is_named_and_nothing_is_touched(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    run = RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs)
    run.mark_done("preferences", {"n": 1})
    run.close()
    before = {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()}
    (inputs["task.policy"] / "model.safetensors").write_bytes(b"\x02" * 64)
    with pytest.raises(RunFolderError) as err:
        RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs)
    message = str(err.value)
    assert (
        f"task.policy {str(inputs['task.policy'])!r} (model.safetensors) changed since" in message
    )
    assert "preferences.file" not in message and "--restart" in message
    assert {p.name: p.read_bytes() for p in run.dir.iterdir() if p.is_file()} == before
    # restoring the input resumes; --restart starts over with the new one
    (inputs["task.policy"] / "model.safetensors").write_bytes(b"\x00" * 64)
    assert RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs).done("preferences")
    (inputs["preferences.file"]).write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(RunFolderError, match=r"preferences.file '.*pairs.jsonl' changed since"):
        RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs)
    fresh = RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs, restart=True)
    assert not fresh.done("preferences")


def test_settings_without_effect_on_results_resume(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, "run", CONFIG)
    run.mark_done("bon")
    other = {**CONFIG, "runtime": {"threads": 8, "workers": 3}, "report": {"plots": False}}
    again = RunFolder(tmp_path, "run", other)
    assert again.resumed and again.done("bon")
    with pytest.raises(RunFolderError, match="fields that differ: seed"):
        RunFolder(tmp_path, "run", {**CONFIG, "seed": 1})


def test_a_second_process_is_refused_while_the_lock_is_held(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, "run", CONFIG)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # another process: its own lock table
        os.close(read)
        RunLock._held.clear()
        try:
            RunFolder(tmp_path, "run", CONFIG)
            os.write(write, b"opened")
        except RunFolderError as err:
            os.write(write, str(err).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    os.close(read)
    assert message == (
        f"run folder {str(run.dir)!r} is in use by another run (process {os.getpid()}); wait "
        "for it to finish or stop it"
    )
    run.close()
    # released: the same folder opens again, also from another process
    pid = os.fork()
    if pid == 0:
        RunLock._held.clear()
        try:
            RunFolder(tmp_path, "run", CONFIG)
            os._exit(0)
        except RunFolderError:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporary_files_are_removed_on_resume(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, "run", CONFIG)
    target = run.path("rl", "kl-0", "history.json")
    names: list[str] = []

    def interrupted(p: Path) -> None:
        names.append(p.name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(target, interrupted)
    # what a killed process leaves: the temporary file of that name (a kill skips the cleanup)
    stale = target.parent / names[0]
    stale.write_text("half")
    assert names[0].startswith(".history.json.") and names[0].endswith(".tmp")
    (run.dir / ".keep.txt").write_text("not ours")  # only *.tmp files go
    run.close()
    again = RunFolder(tmp_path, "run", CONFIG)
    assert again.removed_tmp == [stale] and not stale.exists()
    assert (run.dir / ".keep.txt").exists() and remove_stale_tmp(run.dir) == []


def test_a_folder_without_a_finished_stage_is_taken_over(tmp_path: Path) -> None:
    """A run that stopped before finishing a stage (e.g. on a mistake in an input found
    mid-stage) left no result: the corrected inputs start it again without --restart."""
    inputs = _inputs(tmp_path)
    run = RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs)
    run.path("proxies", "rm", "member-0.tmp").write_text("partial")
    run.close()
    inputs["preferences.file"].write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    again = RunFolder(tmp_path / "runs", "run", {**CONFIG, "seed": 3}, inputs=inputs)
    assert not again.resumed and not (again.dir / "proxies").exists()
    again.mark_done("preferences")
    with pytest.raises(RunFolderError, match="fields that differ: seed"):
        RunFolder(tmp_path / "runs", "run", CONFIG, inputs=inputs)
