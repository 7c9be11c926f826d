"""The config sections that name a study's inputs: the task (built-in, or made from the user's
files) and where the study runs (device, threads, batch sizes), and the checks across sections
that concern them.

Paths are checked when the study starts (:func:`proxygap.study.context.setup`), before a run
folder is made; here the fields are checked for what the config alone tells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from proxygap.models.device import DEVICE_PATTERN
from proxygap.schema import PosInt, Strict, safe_name

__all__ = ["RuntimeConfig", "TaskConfig", "check_inputs"]


class TaskConfig(Strict):
    """Which task, and which models replace its own (Hugging Face folders).

    Without ``prompts``: the built-in task ``name``, optionally with another ``policy``
    (``tokenizer``) and ``gold``. With ``prompts``: a task of the user's own, named ``name``
    (default ``custom``), which needs ``policy`` and ``gold``.
    """

    name: str = Field(
        default="reviews",
        description=(
            "built-in task (its prompts, gold, tokenizer and base policy), or the name of a task "
            "of your own (with prompts; default custom)"
        ),
    )
    prompts: str | None = Field(
        default=None,
        description=(
            'prompt file for a task of your own: .jsonl of {"prompt": ...} or text, one prompt '
            "a line"
        ),
    )
    heldout_prompts: Annotated[float, Field(gt=0)] = Field(
        default=0.2,
        description=(
            "prompts held out for evaluation (best-of-n, policy evaluators): a share (< 1) or a "
            "number; split by the study seed, recorded in task.json"
        ),
    )
    policy: str | None = Field(
        default=None,
        description=(
            "causal LM folder (Hugging Face format) used as the base policy; None: the task's "
            "built-in base policy"
        ),
    )
    policy_size: str | None = Field(
        default=None,
        description=(
            "a built-in task's base policy of another size (reviews: tiny, small, base); "
            "None: its default policy"
        ),
    )
    tokenizer: str | None = Field(
        default=None,
        description="tokenizer folder; None: the policy's folder, else the task's tokenizer",
    )
    gold: str | None = Field(
        default=None,
        description=(
            "sequence-classification model folder, or module:function called as "
            "f(prompts, responses) -> list of floats; None: the task's gold function"
        ),
    )
    chat_template: bool = Field(
        default=False,
        description="wrap each prompt in the tokenizer's chat template (a task of your own)",
    )
    separator: str = Field(
        default=" ", description="between prompt and response (without a chat template)"
    )
    max_new_tokens: PosInt | None = Field(
        default=None, description="response length in tokens; None: the task's (your own: 64)"
    )
    trust_remote_code: bool = Field(
        default=False,
        description=(
            "allow model folders to run their own code on load (off: safetensors and "
            "transformers' classes only)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("prompts") and "name" not in data:
            return {**data, "name": "custom"}
        return data

    @model_validator(mode="after")
    def _kind(self) -> TaskConfig:
        from proxygap.tasks import TASKS, get_task

        safe_name(self.name, "task name")
        if self.policy_size is not None:
            if self.prompts is not None or self.policy is not None:
                raise ValueError(
                    "policy_size picks one of a built-in task's base policies; it cannot be "
                    "combined with policy or prompts"
                )
            sizes = sorted(get_task(self.name).policy_sizes) if self.name in TASKS else []
            if self.policy_size not in sizes:
                raise ValueError(
                    f"policy_size {self.policy_size!r} is not a base-policy size of task "
                    f"{self.name!r} (sizes: {sizes})"
                )
        if self.prompts is None:
            if self.name not in TASKS:
                raise ValueError(
                    f"name {self.name!r} is not a built-in task (built-in: {sorted(TASKS)}); "
                    "give prompts (a prompt file) for a task of your own"
                )
            if self.chat_template:
                raise ValueError(
                    "chat_template applies to a task of your own (task.prompts); the built-in "
                    "tasks have no chat format"
                )
            return self
        missing = [k for k in ("policy", "gold") if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"a task from a prompt file (task.prompts) needs {' and '.join(missing)}: the "
                "policy a causal LM folder, the gold a sequence-classification folder or "
                "module:function"
            )
        if self.name in TASKS:
            raise ValueError(
                f"task name {self.name!r} is a built-in task's; a task from a prompt file needs "
                "a name of its own (or none: custom)"
            )
        return self


class RuntimeConfig(Strict):
    """Where and how the study runs. ``threads``, ``workers``, ``backend`` and ``address`` change
    no result (a run folder resumes when they change); ``device`` is checked against this machine
    before anything is written."""

    device: str = Field(default="cpu", description="auto | cpu | cuda | cuda:N")
    threads: PosInt | None = Field(default=None, description="torch threads; None: its default")
    sample_batch_size: PosInt = 1024
    score_batch_size: PosInt = 2048
    workers: PosInt = Field(
        default=1,
        description="independent runs at a time (mitigation arms x seeds, corpus runs): forked "
        "processes (Linux), or Ray tasks with backend: ray where a stage supports it",
    )
    backend: Literal["processes", "ray"] = Field(
        default="processes",
        description="where independent runs go: forked processes, or Ray tasks on a local Ray "
        "or the cluster at `address` (CPU; optional extra: pip install 'proxygap[ray]'): the "
        "runs of the detection, mitigation (ensembles and arms), f-divergence, scaling and DAA "
        "scale studies",
    )
    address: str | None = Field(
        default=None,
        description="the Ray cluster of backend: ray (every node needs proxygap, the inputs "
        "and the runs folder at the same paths); None: a local Ray",
    )
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=list,
        description="trackers every RL, Quark and DAA run logs to, with the metric names of its "
        "history.json and steps.jsonl (optional extras: pip install 'proxygap[tensorboard]')",
    )

    @field_validator("report_to")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        from proxygap.store.trackers import TrackerError, check_trackers

        try:
            check_trackers(v)
        except TrackerError as err:
            raise ValueError(str(err)) from None
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _workers(self) -> RuntimeConfig:
        if not DEVICE_PATTERN.match(self.device):
            raise ValueError(
                f"device {self.device!r} is not a device: use auto, cpu, cuda or cuda:N"
            )
        if self.address is not None and self.backend != "ray":
            raise ValueError(f"address {self.address!r} is for backend: ray (backend is processes)")
        if self.address is not None and not self.address.strip():
            raise ValueError("address must name a Ray cluster (omit it for a local Ray)")
        if self.backend == "ray" and self.device != "cpu":
            raise ValueError(
                f"backend: ray runs on CPUs: use device: cpu (got {self.device!r}), or "
                "backend: processes"
            )
        # worker processes are forked: torch's thread pools and CUDA do not survive a fork
        forked = self.backend == "processes" and self.workers > 1
        if forked and (self.threads != 1 or self.device != "cpu"):
            raise ValueError(
                f"workers: {self.workers} needs threads: 1 and device: cpu (got threads: "
                f"{self.threads}, device: {self.device!r}); forked processes cannot share "
                "torch thread pools or a GPU"
            )
        return self


def check_inputs(preference_file: str | None, proxies: Sequence[Any]) -> None:
    """Checks across sections about the inputs (raise ValueError naming the fields)."""
    if preference_file is not None:
        bt = [p.name for p in proxies if p.labels == "bradley_terry"]
        if bt:
            raise ValueError(
                f"proxies {bt} draw Bradley-Terry labels from gold scores, but the pairs of "
                f"preferences.file {preference_file!r} keep the file's own labels: use "
                "labels: deterministic (label_noise still flips them)"
            )
