"""The detection corpus's runs as Ray tasks: the same runs as in one process, number for number;
the run folder a task attaches to is read, never locked or marked; a failed task is named; the
config refuses what Ray cannot do, and a study without Ray installed stops before writing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from proxygap.config import ConfigError, parse_config
from proxygap.store.run import RunFolder, RunFolderError
from proxygap.study import run_study
from proxygap.study.context import SetupError
from proxygap.study.detect import run_remote_job
from proxygap.study.remote import remote_call
from proxygap.study.workers import Job, RayRuntime, run_jobs

from .test_detect import TINY


def _tiny(**runtime: object) -> dict[str, object]:
    cfg = copy.deepcopy(TINY)
    cfg["detect"]["families"] = cfg["detect"]["families"][:2]  # type: ignore[index]
    cfg["runtime"] = {"threads": 1, **runtime}
    return cfg


def _untimed(rows: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def _outputs(run: Path) -> dict[str, list[dict[str, float]]]:
    """Every run's history and step metrics (without timings), by path in the run folder."""
    out = {}
    for family in ("hot", "gold"):
        for seed in (0, 1, 2):
            folder = run / "detect" / family / f"seed-{seed}"
            steps = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
            out[f"{family}/{seed}/history"] = _untimed(
                json.loads((folder / "history.json").read_text())
            )
            out[f"{family}/{seed}/steps"] = _untimed(steps)
    return out


def test_ray_tasks_give_the_runs_of_one_process(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    said: list[str] = []
    local = run_study(parse_config(_tiny()), tmp_path / "local", log=lambda *_: None).dir
    on_ray = run_study(
        parse_config(_tiny(workers=2, backend="ray")), tmp_path / "ray", log=said.append
    ).dir
    assert any("6 runs as Ray tasks on a local Ray, 2 at a time" in s for s in said)
    ref, got = _outputs(local), _outputs(on_ray)
    assert got.keys() == ref.keys()
    for name in ref:  # the same floats: the tasks load the same models and seed themselves
        assert got[name] == ref[name], name
    stages = json.loads((on_ray / "stages.json").read_text())
    assert {k for k in stages if k.startswith("detect:")} == {
        f"detect:{f}:{s}" for f in ("hot", "gold") for s in (0, 1, 2)
    }
    summary = json.loads((on_ray / "detect" / "summary.json").read_text())
    assert summary == json.loads((local / "detect" / "summary.json").read_text())

    # a failed task is named, no new one starts after it, and the run folder keeps what it had
    config = parse_config(_tiny(workers=2, backend="ray")).model_dump(mode="json")
    runtime = RayRuntime(config, str(on_ray), str(Path.cwd()))
    jobs = [
        Job(f"run {f} {s}", _never, remote_call(run_remote_job, f, s))
        for f, s in (("gold", 0), ("nope", 0), ("gold", 1))
    ]
    finished: list[int] = []
    with pytest.raises(RuntimeError, match="^run nope 0 failed: .*no detection family 'nope'"):
        run_jobs(jobs, workers=1, finished=finished.append, log=lambda *_: None, ray=runtime)
    assert finished == [0]  # one task at a time: 'gold 1' never started
    assert json.loads((on_ray / "stages.json").read_text()) == stages
    assert _outputs(on_ray) == got


def _never() -> None:
    raise AssertionError("a Ray job runs its remote call, not its local one")


def test_an_attached_folder_takes_no_lock_and_marks_nothing(tmp_path: Path) -> None:
    held = RunFolder(tmp_path, "study", {"name": "study"})
    try:
        worker = RunFolder.attach(held.dir)
        assert worker.dir == held.dir and worker.resumed
        with pytest.raises(RunFolderError, match="cannot mark stage 'x' done"):
            worker.mark_done("x")
        worker.close()  # nothing to release
        held.mark_done("x")  # the holder still can
        assert worker.done("x")
    finally:
        held.close()
    with pytest.raises(RunFolderError, match="is not a run folder"):
        RunFolder.attach(tmp_path / "elsewhere")


def test_a_remote_call_names_an_importable_function() -> None:
    call = remote_call(run_remote_job, "hot", 3)
    assert call.target == "proxygap.study.detect:run_remote_job" and call.args == ("hot", 3)
    with pytest.raises(ValueError, match="not a module-level function"):
        remote_call(lambda ctx, train: None)


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (
            {"address": "ray://head:10001"},
            r"address 'ray://head:10001' is for backend: ray \(backend is processes\)",
        ),
        ({"backend": "ray", "address": " "}, "address must name a Ray cluster"),
        ({"backend": "threads"}, "runtime.backend"),
        ({"backend": "ray", "device": "cuda"}, "backend: ray runs on CPUs: use device: cpu"),
    ],
)
def test_bad_runtime_sections_are_refused(runtime: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_tiny(**runtime))


def test_ray_tasks_may_hold_several_threads_where_forked_workers_may_not() -> None:
    cfg = parse_config(_tiny(backend="ray", workers=2, threads=2))
    assert RayRuntime(cfg.model_dump(mode="json"), "f", "s").threads == 2
    one = parse_config(_tiny(backend="ray")).model_dump(mode="json")
    one["runtime"]["threads"] = None
    assert RayRuntime(one, "f", "s").threads == 1
    with pytest.raises(ConfigError, match="workers: 2 needs threads: 1"):
        parse_config(_tiny(workers=2, threads=2))


def test_backend_ray_without_ray_stops_before_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    cfg = parse_config(_tiny(backend="ray"))  # a config names Ray where it is not installed
    with pytest.raises(SetupError, match=r"backend: ray needs Ray.*proxygap\[ray\]"):
        run_study(cfg, tmp_path / "runs", log=lambda *_: None)
    assert not (tmp_path / "runs").exists()
