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

A hook whose effect depends on earlier steps says so by having ``state_dict`` and
``load_state_dict`` (:class:`~proxygap.optimize.loop.Stateful`); a checkpoint keeps its state
and a resumed run gives it back (:meth:`RLHooks.state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxygap.mitigations.hooks import (
    PostStepHook,
    RewardTransform,
    identity_transform,
    no_post_step,
)
from proxygap.optimize.loop import Stateful

__all__ = ["PostStepHook", "RLHooks", "RewardTransform", "identity_transform", "no_post_step"]


@dataclass
class RLHooks:
    """Mitigations plug in here; the defaults change nothing."""

    transform: RewardTransform = identity_transform
    post_step: PostStepHook = no_post_step

    def _stateful(self) -> dict[str, Stateful]:
        hooks = {"transform": self.transform, "post_step": self.post_step}
        return {name: h for name, h in hooks.items() if isinstance(h, Stateful)}

    def state_dict(self) -> dict[str, Any]:
        """The memory of the hooks that keep one (:class:`~proxygap.optimize.loop.Stateful`:
        Elastic Reset's EMA, a constraint's Lagrange multipliers), for a checkpoint."""
        return {name: h.state_dict() for name, h in self._stateful().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Give each stateful hook back what :meth:`state_dict` saved of it."""
        hooks = self._stateful()
        if set(state) != set(hooks):
            raise ValueError(
                f"the checkpoint holds the state of the hooks {sorted(state)}, this run's "
                f"stateful hooks are {sorted(hooks)}"
            )
        for name, h in hooks.items():
            h.load_state_dict(dict(state[name]))
