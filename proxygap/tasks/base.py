"""What a task provides: a base policy, a tokenizer, a gold reward and prompts.

Two implementations: the built-in tasks (:mod:`proxygap.tasks.reviews`) and a task made from a
user's files (:mod:`proxygap.tasks.files`); :func:`proxygap.tasks.resolve_task` builds either
from a config's fields, so nothing above this layer asks which one it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GoldFn = Callable[[Sequence[str]], np.ndarray]


class Joined(str):
    """A full text (prompt, separator, response) that remembers its two parts, so a gold
    function of ``(prompts, responses)`` can score texts made by :meth:`Task.join`."""

    prompt: str
    response: str

    def __new__(cls, text: str, prompt: str, response: str) -> Joined:
        obj = super().__new__(cls, text)
        obj.prompt, obj.response = prompt, response
        return obj

    def __reduce__(self) -> tuple[type[Joined], tuple[str, str, str]]:
        return Joined, (str(self), self.prompt, self.response)


def _same(prompt: str) -> str:
    return prompt


@dataclass(frozen=True)
class Task:
    """A task.

    ``gold`` maps full texts (prompt, separator, response) to gold rewards (float64 array);
    ``prompts(n, seed=..., heldout=False)`` gives ``n`` prompts drawn with ``seed``, from the
    held-out prompts when ``heldout`` (evaluation: best-of-n pools, policy evaluators) or the
    training ones; ``wellformed`` (optional) tells which full texts the task's grammar accepts;
    ``components`` (optional) names parts of gold, each a reward of its own (component proxies
    for constrained RLHF are trained on them); ``policy_path`` and ``tokenizer_path`` are
    Hugging Face folders loadable with ``from_pretrained``; ``policy_sizes`` (optional) names
    other base-policy folders of the task by size (``task.policy_size`` picks one, with its own
    tokenizer files); ``format_prompt`` turns a prompt as
    written (e.g. in a preference file) into what the policy reads (a chat template), and
    ``record`` is what the run folder keeps about the task (``task.json``).
    """

    name: str
    policy_path: Path
    tokenizer_path: Path
    gold: GoldFn
    prompts: Callable[..., list[str]]
    wellformed: Callable[[Sequence[str]], np.ndarray] | None = None  # (B,) bool, if defined
    components: Mapping[str, GoldFn] = field(default_factory=dict)
    separator: str = " "
    max_new_tokens: int = 40
    description: str = ""
    policy_sizes: Mapping[str, Path] = field(default_factory=dict)
    format_prompt: Callable[[str], str] = _same
    record: Mapping[str, Any] = field(default_factory=dict)

    def join(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        """Full texts as the reward models and gold read them (:class:`Joined`)."""
        return [
            Joined(f"{p}{self.separator}{r}" if p and r else f"{p}{r}", p, r)
            for p, r in zip(prompts, responses, strict=True)
        ]
