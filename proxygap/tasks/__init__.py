"""Tasks: the built-in ones, looked up by name, and tasks made from a user's files
(:mod:`proxygap.tasks.files`); :func:`resolve_task` builds the task a config describes, with
its models and gold replaced as the config says."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from proxygap.tasks.base import GoldFn, Joined, Task

__all__ = ["TASKS", "Joined", "Task", "get_task", "resolve_task"]


def _reviews() -> Task:
    from proxygap.tasks.reviews import TASK

    return TASK


TASKS = {"reviews": _reviews}


def get_task(name: str) -> Task:
    """The built-in task called ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks: {sorted(TASKS)}")
    return TASKS[name]()


def resolve_task(
    *,
    name: str,
    device: torch.device,
    prompts: str | None = None,
    policy: str | None = None,
    policy_size: str | None = None,
    tokenizer: str | None = None,
    gold: str | None = None,
    chat_template: bool = False,
    separator: str = " ",
    max_new_tokens: int | None = None,
    heldout_prompts: float = 0.2,
    seed: int = 0,
    score_batch_size: int = 1024,
    trust_remote_code: bool = False,
    search: Sequence[Path] = (),
) -> Task:
    """The task a config describes: the built-in task ``name`` (with ``policy``, ``tokenizer``
    and ``gold`` replacing its own where given) or, with ``prompts``, a task from files.

    ``policy_size`` picks one of the built-in task's base-policy sizes (its folder holds the
    tokenizer too). ``gold`` is a sequence-classification folder or ``module:function``
    (imported here, with ``search`` folders on the import path). The returned task's ``gold``
    is the one that rules everywhere: pairs, best-of-n, policy evaluators.
    """
    from proxygap.tasks.gold import function_gold, is_function_spec, model_gold

    def make_gold(raw: Mapping[str, str], sep: str) -> GoldFn:
        assert gold is not None
        if is_function_spec(gold):
            return function_gold(gold, raw_prompts=raw, separator=sep, search=search)
        return model_gold(
            gold, device=device, batch_size=score_batch_size, trust_remote_code=trust_remote_code
        )

    if prompts is not None:
        from proxygap.tasks.files import file_task

        assert policy is not None and gold is not None  # the config guarantees them
        return file_task(
            name=name,
            prompts=prompts,
            policy=policy,
            gold=make_gold,
            tokenizer=tokenizer,
            chat_template=chat_template,
            separator=separator,
            max_new_tokens=max_new_tokens or 64,
            heldout_prompts=heldout_prompts,
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
    task = get_task(name)
    changes: dict[str, object] = {}
    if policy_size is not None:
        if policy_size not in task.policy_sizes:
            raise ValueError(
                f"task {name!r} has no policy size {policy_size!r}; sizes: "
                f"{sorted(task.policy_sizes)}"
            )
        folder = task.policy_sizes[policy_size]
        changes["policy_path"] = changes["tokenizer_path"] = folder
        changes["description"] = f"{task.description} Base policy: size {policy_size}."
    if policy is not None:
        changes["policy_path"] = Path(policy)
        changes["tokenizer_path"] = Path(tokenizer or policy)
    elif tokenizer is not None:
        changes["tokenizer_path"] = Path(tokenizer)
    if gold is not None:
        # the task's gold components are parts of its own gold, not of this one
        changes |= {"gold": make_gold({}, task.separator), "components": {}}
        changes["description"] = (
            f"{changes.get('description', task.description)} Gold replaced by {gold}."
        )
    if max_new_tokens is not None:
        changes["max_new_tokens"] = max_new_tokens
    return dataclasses.replace(task, **changes) if changes else task  # type: ignore[arg-type]
