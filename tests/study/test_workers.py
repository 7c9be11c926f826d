"""How a study's independent runs are handed out (:func:`proxygap.study.workers.run_jobs`): every
finished run is reported as it ends, and after a failure nothing new starts, the runs under way
finish and the error names the failed run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from proxygap.study.workers import Job, run_jobs


def _touch(path: Path, delay: float = 0.0) -> None:
    time.sleep(delay)
    path.write_text("ran")


def _fail(marker: Path) -> None:
    marker.write_text("failing")
    raise ValueError("this run diverged")


def _after(marker: Path, path: Path) -> None:
    """Finish a second after ``marker`` appears (or after 10 s): once the failure beside this
    run has been seen."""
    for _ in range(100):
        if marker.exists():
            break
        time.sleep(0.1)
    _touch(path, delay=1.0)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_stops_new_runs_and_keeps_the_finished_ones(tmp_path: Path, workers: int) -> None:
    if workers > 1 and not sys.platform.startswith("linux"):
        pytest.skip("worker processes are forked (Linux)")
    # run 0 is still under way when run 1 fails (on two workers); runs 2-4 must never start
    out, marker = tmp_path / "out", tmp_path / "failing"
    out.mkdir()
    first = (lambda: _after(marker, out / "0")) if workers > 1 else (lambda: _touch(out / "0"))
    jobs = [Job("run 0", first), Job("run 1", lambda: _fail(marker))]
    jobs += [Job(f"run {i}", lambda i=i: _touch(out / str(i))) for i in (2, 3, 4)]
    finished: list[int] = []
    said: list[str] = []
    # in this process the run's own error comes through; from a worker, one naming the run
    raised = (ValueError, "^this run diverged$") if workers == 1 else (
        RuntimeError, r"^run 1 failed: this run diverged \(1 failed run")  # fmt: skip
    with pytest.raises(raised[0], match=raised[1]):
        run_jobs(jobs, workers=workers, finished=finished.append, log=said.append)
    assert finished == [0]
    assert sorted(p.name for p in out.iterdir()) == ["0"]
    if workers == 2:
        assert said[0] == "5 runs on 2 worker processes"
        assert "run 1 failed: this run diverged" in said and "run 0: done" in said


def test_all_runs_finish_in_any_order_and_each_is_reported_once(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("worker processes are forked (Linux)")
    delays = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    jobs = [
        Job(f"run {i}", lambda i=i, d=d: _touch(tmp_path / str(i), d)) for i, d in enumerate(delays)
    ]
    finished: list[int] = []
    run_jobs(jobs, workers=2, finished=finished.append, log=lambda *_: None)
    assert sorted(finished) == list(range(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(i) for i in range(6)]


def test_pairs_are_jobs_too(tmp_path: Path) -> None:
    finished: list[int] = []
    run_jobs([("only", lambda: _touch(tmp_path / "a"))], workers=3, finished=finished.append,
             log=lambda *_: None)  # fmt: skip
    assert finished == [0] and (tmp_path / "a").read_text() == "ran"
