"""Faults of the disk mid-run (proxygap/store/faults.py): which errors count, the stage a path
belongs to, and the message; a diverged training step named by its stage."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from proxygap.errors import NonFiniteError
from proxygap.store.faults import WriteFault, stage_faults, stage_of, write_fault


def _os_error(code: int, path: Path | None = None) -> OSError:
    if path is None:
        return OSError(code, os.strerror(code))
    return OSError(code, os.strerror(code), str(path))


@pytest.mark.parametrize(
    ("rel", "stage"),
    [
        ("rl/kl-0/history.json", "rl:kl-0"),
        ("rl/kl-0/checkpoints/step-000002/policy/model.safetensors", "rl:kl-0"),
        ("proxies/rm/member-1/model.safetensors", "proxy:rm"),
        ("daa/dpo-0.1", "daa:dpo-0.1"),
        ("pool.jsonl", "pool"),
        ("rl/summary.json", "rl"),
    ],
)
def test_a_path_names_the_stage_it_belongs_to(tmp_path: Path, rel: str, stage: str) -> None:
    assert stage_of(tmp_path / rel, tmp_path) == stage


def test_a_full_disk_names_stage_path_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "proxies" / "rm" / "member-0" / "model.safetensors"
    fault = write_fault(_os_error(errno.ENOSPC, path), run_dir=tmp_path)
    assert isinstance(fault, WriteFault) and fault.stage == "proxy:rm"
    assert str(fault) == (
        f"stage 'proxy:rm' could not write {str(path)!r}: the disk is full (ENOSPC). Finished "
        "stages are kept; free some space and run the same command again to resume"
    )


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_an_unwritable_folder_says_to_make_it_writable(tmp_path: Path, code: int) -> None:
    fault = write_fault(_os_error(code, tmp_path / "x" / "y" / "z.json"), run_dir=tmp_path)
    assert fault is not None and fault.stage == "x:y"
    assert f"({errno.errorcode[code]})" in str(fault) and "make the run folder writable" in str(
        fault
    )


def test_writers_that_do_not_raise_oserror_are_recognised_by_their_message(tmp_path: Path) -> None:
    """safetensors reports a full disk as its own error type with the OS message inside."""
    err = RuntimeError("Error while serializing: IoError(Os { code: 28, ... }) (os error 28)")
    fault = write_fault(err, run_dir=tmp_path, stage="rl:kl-0")
    assert fault is not None and fault.errno == errno.ENOSPC
    assert str(fault).startswith(f"stage 'rl:kl-0' could not write in {str(tmp_path)!r}: the disk")


@pytest.mark.parametrize(
    "err",
    [_os_error(errno.ENOENT, Path("/nowhere")), ValueError("bad value"), KeyError("k")],
)
def test_other_errors_are_not_faults_of_the_disk(tmp_path: Path, err: BaseException) -> None:
    assert write_fault(err, run_dir=tmp_path) is None
    with pytest.raises(type(err)), stage_faults("rl:kl-0", tmp_path):
        raise err


def test_stage_faults_names_the_stage_of_a_fault_and_of_a_diverged_step(tmp_path: Path) -> None:
    match = r"^stage 'daa:dpo-0\.1' could not write '/elsewhere"
    with pytest.raises(WriteFault, match=match), stage_faults("daa:dpo-0.1", tmp_path):
        raise _os_error(errno.ENOSPC, Path("/elsewhere/result.json"))
    with pytest.raises(NonFiniteError) as info, stage_faults("daa:dpo-0.1", tmp_path):
        raise NonFiniteError("loss is nan", step=1)
    assert str(info.value) == (
        "stage 'daa:dpo-0.1': step 1: loss is nan: the run diverged (lower the learning rate); "
        "its result was not written"
    )
    named = pytest.raises(NonFiniteError, match="^stage 'scores': 1 non-finite")  # as it was
    with named, stage_faults("rl:kl-0", tmp_path):
        raise NonFiniteError("stage 'scores': 1 non-finite value(s) in 'gold'")
