"""Built-in tasks, looked up by name."""

from __future__ import annotations

from proxygap.tasks.base import Task


def _reviews() -> Task:
    from proxygap.tasks.reviews import TASK

    return TASK


TASKS = {"reviews": _reviews}


def get_task(name: str) -> Task:
    """The built-in task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {sorted(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "Task", "get_task"]
