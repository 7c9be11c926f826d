"""Independent training runs of a study on forked worker processes, each marked done as it ends.

Every job seeds itself, so results do not depend on the number of workers. With ``workers <= 1``
(or off Linux, where ``fork`` is missing) the jobs run one after another in this process. A job
that fails stops new ones from starting; the runs under way finish and are kept (marked done),
and the error names the failed job, so a new invocation resumes from the finished ones.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

__all__ = ["run_jobs"]

_JOBS: Sequence[Callable[[], Any]] = ()  # what a forked worker inherits


def _call(i: int) -> Any:
    return _JOBS[i]()


def run_jobs(
    jobs: Sequence[tuple[str, Callable[[], Any]]],
    *,
    workers: int,
    finished: Callable[[int], None],
    log: Callable[[str], Any] = print,
) -> None:
    """Run ``jobs`` (``(label, fn)`` pairs), calling ``finished(i)`` in this process as job
    ``i`` ends. Raises RuntimeError naming the first failed job (after the others stop)."""
    global _JOBS
    workers = min(workers, len(jobs))
    if workers <= 1 or not sys.platform.startswith("linux"):
        if workers > 1:
            log("runtime.workers > 1 needs Linux (fork); running the jobs one at a time")
        for i, (label, fn) in enumerate(jobs):
            log(label)
            fn()
            finished(i)
        return
    log(f"{len(jobs)} runs on {workers} worker processes")
    _JOBS = [fn for _, fn in jobs]
    errors: list[tuple[str, BaseException]] = []
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    todo = iter(range(len(jobs)))
    running: dict[Future[Any], int] = {}

    def submit_next() -> None:  # at most `workers` jobs are ever handed to the pool
        i = next(todo, None)
        if i is not None:
            running[pool.submit(_call, i)] = i

    try:
        for _ in range(workers):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i = running.pop(fut)
                label, err = jobs[i][0], fut.exception()
                if err is None:
                    finished(i)
                    log(f"{label}: done")
                else:
                    errors.append((label, err))
                    log(f"{label} failed: {err}")
                if not errors:  # after a failure start nothing new; the runs under way finish
                    submit_next()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _JOBS = ()
    if errors:
        where, err = errors[0]
        raise RuntimeError(
            f"{where} failed: {err} ({len(errors)} failed run(s); the finished runs are kept "
            "and a new invocation resumes from them)"
        ) from err
