"""Independent training runs of a study on forked worker processes or Ray tasks, each marked done
as it ends.

Every job seeds itself, so results do not depend on the number of workers or where they run.
With ``workers <= 1`` (or off Linux, where ``fork`` is missing) the jobs run one after another in
this process. With a :class:`RayRuntime` (``runtime.backend: ray``) and a
:class:`~proxygap.study.remote.RemoteCall` for every job, each job is a Ray task instead
(:mod:`proxygap.study.remote`) holding ``runtime.threads`` CPUs: on a local Ray of ``workers``
such tasks, or on the cluster at ``runtime.address``, ``workers`` of them at a time. A job that
fails stops new ones from starting; the runs under way finish and are kept (marked done), and the
error names the failed job, so a new invocation resumes from the finished ones.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from proxygap.errors import RAY_INSTALL
from proxygap.study.remote import RemoteCall, run_remote, task_threads

if TYPE_CHECKING:
    from proxygap.study.context import StudyContext

__all__ = ["Job", "RayRuntime", "ray_runtime", "run_jobs"]

"""How to install the optional Ray extra."""


class Job(NamedTuple):
    """One run: its label, the call that runs it here (or in a forked worker) and, to run it as
    a Ray task, the same run as a :class:`~proxygap.study.remote.RemoteCall`."""

    label: str
    fn: Callable[[], Any]
    remote: RemoteCall | None = None


@dataclass(frozen=True)
class RayRuntime:
    """Where a study's Ray tasks run and what they attach to: the resolved ``config``, the run
    ``folder``, the working folder ``search`` of the study (its relative input paths are
    relative to it), and the cluster's ``address`` (None: a local Ray)."""

    config: dict[str, Any]
    folder: str
    search: str
    address: str | None = None

    @property
    def threads(self) -> int:
        """The torch threads (and Ray CPUs) of one task: ``runtime.threads``, 1 when unset."""
        return task_threads(self.config)


def ray_runtime(ctx: StudyContext) -> RayRuntime | None:
    """The study's :class:`RayRuntime` when ``runtime.backend`` is ``ray``, else None."""
    rt = ctx.cfg.runtime
    if rt.backend != "ray":
        return None
    config = ctx.cfg.model_dump(mode="json")
    config["runtime"]["device"] = str(ctx.device)  # as resolved here
    return RayRuntime(config, str(ctx.run.dir), os.getcwd(), rt.address)


_JOBS: Sequence[Callable[[], Any]] = ()  # what a forked worker inherits


def _call(i: int) -> Any:
    return _JOBS[i]()


def run_jobs(
    jobs: Sequence[Job | tuple[str, Callable[[], Any]]],
    *,
    workers: int,
    finished: Callable[[int], None],
    log: Callable[[str], Any] = print,
    ray: RayRuntime | None = None,
) -> None:
    """Run ``jobs`` (:class:`Job`, or ``(label, fn)`` pairs), calling ``finished(i)`` in this
    process as job ``i`` ends: as Ray tasks when ``ray`` is given and every job has a remote
    call, else on forked processes. Raises RuntimeError naming the first failed job (after the
    others stop)."""
    global _JOBS
    all_jobs = [Job(*j) for j in jobs]
    if ray is not None and all_jobs and all(j.remote is not None for j in all_jobs):
        n = min(max(workers, 1), len(all_jobs))
        with ray_session(ray.address, n * ray.threads) as (module, where):
            log(f"{len(all_jobs)} runs as Ray tasks on {where}, {n} at a time")
            _drive(all_jobs, _RayPool(module, ray, n, all_jobs), finished, log)
        return
    workers = min(workers, len(all_jobs))
    if workers <= 1 or not sys.platform.startswith("linux"):
        if workers > 1:
            log("runtime.workers > 1 needs Linux (fork); running the jobs one at a time")
        for i, job in enumerate(all_jobs):
            log(job.label)
            job.fn()
            finished(i)
        return
    log(f"{len(all_jobs)} runs on {workers} worker processes")
    _JOBS = [j.fn for j in all_jobs]
    try:
        _drive(all_jobs, _ForkPool(workers), finished, log)
    finally:
        _JOBS = ()


class _ForkPool:
    """Forked worker processes running the jobs of :data:`_JOBS` by index."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))

    def submit(self, i: int) -> Future[Any]:
        return self.pool.submit(_call, i)

    def wait(self, running: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        return [(fut, fut.exception()) for fut in done]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"runtime.backend 'ray' needs Ray: {RAY_INSTALL}") from None
    return ray


@contextmanager
def ray_session(address: str | None, num_cpus: int) -> Iterator[tuple[Any, str]]:
    """The ``ray`` module, connected, and where to: the Ray this process already uses, else the
    cluster at ``address``, else a local Ray of ``num_cpus`` CPUs; a Ray it started is shut
    down after."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if not started:
        where = "the Ray this process is connected to"
    elif address:
        ray.init(address=address, log_to_driver=False)
        where = f"the Ray cluster at {address}"
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        where = "a local Ray"
    try:
        yield ray, where
    finally:
        if started:
            ray.shutdown()


class _RayPool:
    """Ray tasks running each job's remote call (:func:`proxygap.study.remote.run_remote`)."""

    def __init__(self, ray: Any, runtime: RayRuntime, workers: int, jobs: Sequence[Job]) -> None:
        self.ray, self.runtime, self.workers, self.jobs = ray, runtime, workers, list(jobs)
        self.task = ray.remote(num_cpus=runtime.threads, max_retries=0)(run_remote)

    def submit(self, i: int) -> Any:
        rt, call = self.runtime, self.jobs[i].remote
        return self.task.remote(rt.config, rt.folder, rt.search, call)

    def wait(self, running: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        ready, _ = self.ray.wait(list(running), num_returns=1)
        out: list[tuple[Any, BaseException | None]] = []
        for ref in ready:
            try:
                self.ray.get(ref)
                out.append((ref, None))
            except Exception as err:  # the task raised (its own error is the cause), or died
                cause = getattr(err, "cause", None)
                out.append((ref, cause if isinstance(cause, BaseException) else err))
        return out

    def close(self) -> None:
        """Nothing to close: the Ray session outlives the pool."""


def _drive(
    jobs: Sequence[Job],
    pool: _ForkPool | _RayPool,
    finished: Callable[[int], None],
    log: Callable[[str], Any],
) -> None:
    """Hand the jobs to ``pool``, at most ``pool.workers`` at a time; after a failure start
    nothing new, let the runs under way finish, then raise naming the first failure."""
    errors: list[tuple[str, BaseException]] = []
    todo = iter(range(len(jobs)))
    running: dict[Any, int] = {}

    def submit_next() -> None:
        i = next(todo, None)
        if i is not None:
            running[pool.submit(i)] = i

    try:
        for _ in range(pool.workers):
            submit_next()
        while running:
            for handle, err in pool.wait(list(running)):
                i = running.pop(handle)
                label = jobs[i].label
                if err is None:
                    finished(i)
                    log(f"{label}: done")
                else:
                    errors.append((label, err))
                    log(f"{label} failed: {err}")
                if not errors:  # after a failure start nothing new; the runs under way finish
                    submit_next()
    finally:
        pool.close()
    if errors:
        where, err = errors[0]
        raise RuntimeError(
            f"{where} failed: {err} ({len(errors)} failed run(s); the finished runs are kept "
            "and a new invocation resumes from them)"
        ) from err
