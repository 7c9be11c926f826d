"""The hook types a mitigation implements: reward transforms and post-step hooks.

A training loop calls them (:class:`proxygap.optimize.rl_hooks.RLHooks`); they live here, below
the optimisers, so that a mitigation names its type without importing a trainer.

- ``transform(rewards, texts, prompts) -> rewards``: reshapes the proxy score of every response
  before it is optimised: ensembles (Coste et al. 2023), the log-sigmoid centred transform
  (Wang et al. 2024), Preference As Reward (Fu et al. 2025), length penalties, clipping;
- ``post_step(policy=, ref=, optimizer=, step=) -> metrics | None``: runs after every update with
  the live objects: Elastic Reset (Noukhovitch et al. 2023) resets ``policy`` to its EMA, a
  moving reference updates ``ref``. Returned metrics are logged with the step's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from transformers import PreTrainedModel

__all__ = ["PostStepHook", "RewardTransform", "identity_transform", "no_post_step"]


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
