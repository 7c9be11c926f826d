"""What a task provides: a base policy, a tokenizer, a gold reward and prompts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GoldFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Task:
    """A built-in task.

    ``gold`` maps full texts (prompt, separator, response) to gold rewards (float64 array);
    ``prompts(n, seed)`` gives held-out prompts; ``wellformed`` (optional) tells which full texts
    the task's grammar accepts; ``components`` (optional) names parts of gold, each a reward of
    its own (component proxies for constrained RLHF are trained on them); ``policy_path`` and
    ``tokenizer_path`` are Hugging Face folders loadable with ``from_pretrained``.
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

    def join(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        """Full texts as the reward models and gold read them."""
        return [
            f"{p}{self.separator}{r}" if p and r else f"{p}{r}"
            for p, r in zip(prompts, responses, strict=True)
        ]
