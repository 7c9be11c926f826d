"""Where mitigations plug into the RL recipe (:func:`proxygap.optimize.rl.train_rl`).

Three hooks, all no-ops by default, so the loop carries no mitigation flags:

- ``transform(rewards, texts, prompts) -> rewards``: reshapes the proxy score of every response
  before it is optimised: ensembles (Coste et al. 2023), the log-sigmoid centred transform
  (Wang et al. 2024), Preference As Reward (Fu et al. 2025), length penalties, clipping;
- ``post_step(policy=, ref=, optimizer=, step=) -> metrics | None``: runs after every update with
  the live objects: Elastic Reset (Noukhovitch et al. 2023) resets ``policy`` to its EMA, a
  moving reference updates ``ref``. Returned metrics are logged with the step's;
- ``on_evaluate(row, result)``: called with every evaluation row (a monitor watches here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from transformers import PreTrainedModel

from proxygap.optimize.loop import EvalHook


class RewardTransform(Protocol):
    """``(rewards (B,), texts, prompts) -> rewards (B,)``: reshapes the proxy before it is
    optimised (ensembles, LSC, PAR, length penalty, ...)."""

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray: ...


class PostStepHook(Protocol):
    """Called after every update with the live objects (e.g. Elastic Reset resets ``policy``);
    returns metrics to log (namespaced by the hook) or None."""

    def __call__(
        self,
        *,
        policy: PreTrainedModel,
        ref: PreTrainedModel,
        optimizer: torch.optim.Optimizer,
        step: int,
    ) -> dict[str, float] | None: ...


def identity_transform(
    rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
) -> np.ndarray:
    return rewards


def no_post_step(**_: Any) -> None:
    return None


@dataclass
class RLHooks:
    """Mitigations plug in here; the defaults change nothing."""

    transform: RewardTransform = identity_transform
    post_step: PostStepHook = no_post_step
    on_evaluate: list[EvalHook] = field(default_factory=list)
