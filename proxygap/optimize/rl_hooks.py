"""Where mitigations plug into the RL recipe (:func:`proxygap.optimize.rl.train_rl`); the hook
types are in :mod:`proxygap.mitigations.hooks`.

Two hooks, both no-ops by default, so the loop carries no mitigation flags (what only watches a
run, a monitor or a tracker, is a :class:`~proxygap.optimize.loop.Watchers` instead):

- ``transform(rewards, texts, prompts) -> rewards``: reshapes the proxy score of every response
  before it is optimised: ensembles (Coste et al. 2023), the log-sigmoid centred transform
  (Wang et al. 2024), Preference As Reward (Fu et al. 2025), length penalties, clipping;
- ``post_step(policy=, ref=, optimizer=, step=) -> metrics | None``: runs after every update with
  the live objects: Elastic Reset (Noukhovitch et al. 2023) resets ``policy`` to its EMA, a
  moving reference updates ``ref``. Returned metrics are logged with the step's.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxygap.mitigations.hooks import (
    PostStepHook,
    RewardTransform,
    identity_transform,
    no_post_step,
)

__all__ = ["PostStepHook", "RLHooks", "RewardTransform", "identity_transform", "no_post_step"]


@dataclass
class RLHooks:
    """Mitigations plug in here; the defaults change nothing."""

    transform: RewardTransform = identity_transform
    post_step: PostStepHook = no_post_step
