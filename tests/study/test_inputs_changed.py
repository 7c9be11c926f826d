"""Rerunning a study after its inputs changed: an edited preference file or model folder is
named and the run folder kept; a change of threads resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

from proxygap.cli import app


def _run(cfg: dict[str, Any], tmp: Path) -> tuple[int, str]:
    (tmp / "study.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(
        app, ["run", str(tmp / "study.yaml"), "--runs-dir", str(tmp / "runs")]
    )
    return result.exit_code, result.output


def _error(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("error: "))


def test_edited_inputs_are_named_and_threads_resume(
    own_files: dict[str, Path], own_study: Any, tmp_path: Path
) -> None:
    files = dict(own_files)
    for name in ("pairs.jsonl", "policy"):
        copy = tmp_path / name
        if own_files[name].is_dir():
            shutil.copytree(own_files[name], copy)
        else:
            shutil.copy(own_files[name], copy)
        files[name] = copy
    cfg = own_study(files, rl=None, daa=None)
    code, output = _run(cfg, tmp_path)
    assert code == 0, output
    run = tmp_path / "runs" / "own"
    kept = {p: (run / p).read_bytes() for p in ("stages.json", "summary.json", "pool.jsonl")}
    stamp = (run / "pool.jsonl").stat().st_mtime_ns

    # other thread counts compute the same numbers: the run resumes
    cfg["runtime"]["threads"] = 2
    code, output = _run(cfg, tmp_path)
    assert code == 0 and "resuming" in output, output
    assert (run / "pool.jsonl").stat().st_mtime_ns == stamp
    assert {p: (run / p).read_bytes() for p in kept} == kept

    # one pair edited in place
    lines = files["pairs.jsonl"].read_text().splitlines()
    row = json.loads(lines[70])
    row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    lines[70] = json.dumps(row)
    files["pairs.jsonl"].write_text("\n".join(lines) + "\n")
    code, output = _run(cfg, tmp_path)
    assert code == 2 and "Traceback" not in output
    assert _error(output).startswith(
        f"error: run folder {str(run)!r} was made from other inputs: preferences.file "
        f"{str(files['pairs.jsonl'])!r} changed since"
    )
    assert {p: (run / p).read_bytes() for p in kept} == kept

    # a file inside the policy folder, with the pair file restored
    lines[70] = json.dumps({**row, "chosen": row["rejected"], "rejected": row["chosen"]})
    files["pairs.jsonl"].write_text("\n".join(lines) + "\n")
    config = files["policy"] / "generation_config.json"
    config.write_text(config.read_text().replace("{", '{\n  "note": "edited",', 1))
    code, output = _run(cfg, tmp_path)
    assert code == 2
    assert f"task.policy {str(files['policy'])!r} (generation_config.json) changed" in _error(
        output
    )
    assert {p: (run / p).read_bytes() for p in kept} == kept
