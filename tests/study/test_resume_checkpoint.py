"""A study killed with SIGKILL inside its RL run, then inside its DAA run, each time after the
run's first checkpoint, resumes each run from its newest checkpoint and ends with the files of a
study that was never killed. The step rows before the checkpoint are those the killed process
took (their wall-clock times are its own, which a retaken step could not reproduce): the
finished steps were not taken again."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from proxygap.cli import app
from proxygap.config import parse_config
from proxygap.study import daa as study_daa
from proxygap.study import rl as study_rl
from proxygap.study import run_study

CONFIG: dict[str, Any] = {
    "name": "ckpt",
    "seed": 3,
    "preferences": {"n_pairs": 100, "n_heldout": 40},
    "proxies": [{"name": "rm", "n_embd": 16, "n_head": 2, "n_layer": 1, "epochs": 1}],
    "bon": None,
    "rl": {"proxy": "rm", "kl_coefs": [0.0],
           "settings": {"steps": 6, "prompts_per_step": 2, "group_size": 2, "eval_every": 2,
                        "eval_prompts": 2, "eval_samples_per_prompt": 2, "lr": 0.01}},
    "daa": {"betas": {"dpo": [0.1]}, "n_pairs": 32,
            "settings": {"batch_size": 8, "eval_at": [0, 0.5, 1.0], "eval_prompts": 2,
                         "eval_samples_per_prompt": 2, "lr": 0.01}},
    "runtime": {"threads": 1},
}  # fmt: skip
RL_RUN, DAA_RUN = Path("rl", "kl-0"), Path("daa", "dpo-0.1")
TIME = "time/"


def _study(runs: Path, log: Path) -> None:
    """Run the study under ``runs``, its log lines appended to ``log``."""
    with log.open("a", encoding="utf-8") as fh:
        run_study(parse_config(CONFIG), runs, log=lambda *a: print(*a, file=fh, flush=True))


def _fork(runs: Path, log: Path) -> int:
    """The study in a forked child (the modules already imported: no start-up cost)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _study(runs, log)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _stages(run: Path) -> dict[str, Any]:
    p = run / "stages.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _newest(folder: Path) -> Path | None:
    found = sorted(folder.glob("step-[0-9]*"))
    return found[-1] if found else None


def _kill_when(pid: int, ready: Callable[[], bool], log: Path) -> None:
    """Poll every 5 ms; SIGKILL the child as soon as ``ready()`` holds."""
    deadline = time.monotonic() + 240
    while not ready():
        done, status = os.waitpid(pid, os.WNOHANG)
        if done or time.monotonic() > deadline:
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            pytest.fail(f"the run ended before the kill point:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -signal.SIGKILL


def _checkpointed_steps(run_dir: Path) -> tuple[int, list[dict[str, float]]]:
    """The newest checkpoint's step and its step rows (times included)."""
    newest = _newest(run_dir / "checkpoints")
    assert newest is not None
    state = torch.load(newest / "trainer_state.pt", weights_only=True)
    return int(state["step"]), state["loop"]["steps"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study killed in RL, resumed and killed in DAA, resumed to the end; the reference
    runs alongside in another child."""
    tmp = tmp_path_factory.mktemp("ckpt")
    log = tmp / "run.log"
    reference = _fork(tmp / "reference", tmp / "reference.log")
    run = tmp / "runs" / "ckpt"
    seen: dict[str, Any] = {"run": run, "reference": tmp / "reference" / "ckpt"}
    try:
        _kill_when(_fork(tmp / "runs", log),
                   lambda: _newest(run / RL_RUN / "checkpoints") is not None, log)  # fmt: skip
        seen["rl_stage_done"] = "rl:kl-0" in _stages(run)
        seen["rl"] = _checkpointed_steps(run / RL_RUN)
        _kill_when(_fork(tmp / "runs", log),
                   lambda: _newest(run / DAA_RUN / "checkpoints") is not None, log)  # fmt: skip
        seen["daa_stage_done"] = "daa:dpo-0.1" in _stages(run)
        seen["daa"] = _checkpointed_steps(run / DAA_RUN)
        _study(tmp / "runs", log)
        seen["output"] = log.read_text()
    finally:
        status = os.waitstatus_to_exitcode(os.waitpid(reference, 0)[1])
    assert status == 0, (tmp / "reference.log").read_text()[-3000:]
    return seen


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    rows = (
        [json.loads(x) for x in text.splitlines()] if path.suffix == ".jsonl" else json.loads(text)
    )
    return [{k: v for k, v in r.items() if not k.startswith(TIME)} for r in rows]


def test_each_kill_landed_after_a_checkpoint_and_before_its_run_ended(killed) -> None:
    assert not killed["rl_stage_done"] and not killed["daa_stage_done"]
    assert 2 <= killed["rl"][0] < 6 and 2 <= killed["daa"][0] < 4


def test_resumed_runs_start_at_their_checkpoints_without_retaking_steps(killed) -> None:
    rl_step, rl_rows = killed["rl"]
    daa_step, daa_rows = killed["daa"]
    assert f"RL kl-0 resumed at step {rl_step} from its checkpoint" in killed["output"]
    assert f"DAA dpo-0.1 resumed at step {daa_step} from its checkpoint" in killed["output"]
    steps = [
        json.loads(x) for x in (killed["run"] / RL_RUN / "steps.jsonl").read_text().splitlines()
    ]
    assert len(steps) == 6 and len(rl_rows) == rl_step
    # the first rows, timings included, are the killed process's own
    assert steps[:rl_step] == rl_rows
    assert len(daa_rows) == daa_step


def test_resumed_study_has_the_files_of_an_uninterrupted_one(killed) -> None:
    run, reference = killed["run"], killed["reference"]
    for name in ("history.json", "steps.jsonl"):
        assert _rows(run / RL_RUN / name) == _rows(reference / RL_RUN / name), name
    same_bytes = [RL_RUN / "examples.json", Path("rl", "summary.json"), Path("daa", "summary.json"),
                  RL_RUN / "policy-final" / "model.safetensors",
                  RL_RUN / "policy-best" / "model.safetensors"]  # fmt: skip
    for name in same_bytes:
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    result, ref_result = (
        json.loads((r / DAA_RUN / "result.json").read_text()) for r in (run, reference)
    )
    assert _strip(result["history"]) == _strip(ref_result["history"])
    assert result["examples"] == ref_result["examples"]
    # finished runs keep no checkpoint
    assert not (run / RL_RUN / "checkpoints").exists()
    assert not (run / DAA_RUN / "checkpoints").exists()


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith(TIME)} for r in rows]


# ---------------------------------------------------------------- faults of the disk mid-run
def _failing(real: Callable[..., None], name: str, code: int) -> Callable[..., None]:
    """``real`` (an atomic writer), except that writing a file called ``name`` fails with
    ``code``, as a full disk or a read-only file system makes it fail."""

    def write(path: Path, obj: Any) -> None:
        if Path(path).name == name:
            raise OSError(code, os.strerror(code), str(path))
        real(path, obj)

    return write


def test_a_full_disk_and_a_read_only_folder_mid_run_stop_with_exit_2_then_resume(
    killed: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RL's history cannot be written (ENOSPC), then DAA's result (EROFS): each stops the
    command with exit 2 and a message naming the stage and the file, no traceback. Stale
    temporary files of interrupted writes are planted; the rerun removes them, resumes both runs
    from their checkpoints and ends with the reference's numbers."""
    cfg, runs = tmp_path / "ckpt.yaml", tmp_path / "runs"
    cfg.write_text(yaml.safe_dump(CONFIG))
    run = runs / "ckpt"
    outputs = []
    for module, name, code in ((study_rl, "history.json", errno.ENOSPC),
                               (study_daa, "result.json", errno.EROFS)):  # fmt: skip
        with monkeypatch.context() as patch:
            patch.setattr(module, "atomic_write_json",
                          _failing(module.atomic_write_json, name, code))  # fmt: skip
            result = CliRunner().invoke(app, ["run", str(cfg), "--runs-dir", str(runs)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        outputs.append(next(x for x in result.output.splitlines() if x.startswith("error:")))
    rl_file, daa_file = run / RL_RUN / "history.json", run / DAA_RUN / "result.json"
    assert outputs == [
        f"error: stage 'rl:kl-0' could not write {str(rl_file)!r}: the disk is full (ENOSPC). "
        "Finished stages are kept; free some space and run the same command again to resume",
        f"error: stage 'daa:dpo-0.1' could not write {str(daa_file)!r}: the file system is "
        "read-only (EROFS). Finished stages are kept; make the run folder writable and run the "
        "same command again to resume",
    ]
    assert "rl:kl-0" in _stages(run) and "daa:dpo-0.1" not in _stages(run)
    stale = [
        run / RL_RUN / ".examples.json.0badc0de.tmp",
        run / RL_RUN / ".policy-best.x1y2.tmp" / "model.safetensors",
        run / DAA_RUN / "checkpoints" / ".step-000002.a1.tmp" / "trainer_state.pt",
    ]
    for p in stale:  # what kills during atomic writes leave
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    log = tmp_path / "rerun.log"
    _study(runs, log)
    assert "DAA dpo-0.1 resumed at step 4 from its checkpoint" in log.read_text()
    assert not [p for p in stale if p.exists()] and not list(run.rglob(".*.tmp"))
    reference = killed["reference"]
    assert _rows(rl_file) == _rows(reference / RL_RUN / "history.json")
    for name in (RL_RUN / "policy-best" / "model.safetensors", Path("daa", "summary.json")):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    result, ref_result = (json.loads((r / DAA_RUN / "result.json").read_text())
                          for r in (run, reference))  # fmt: skip
    assert _strip(result["history"]) == _strip(ref_result["history"])
