"""KL-coefficient controllers for KL-in-the-reward RL (docs/methods.md §3).

Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", §2.2: the coefficient
``beta`` of the per-token penalty ``-beta * lr_t`` is either fixed or adapted so that the observed
KL tracks a target. Each controller exposes ``beta``, ``update(kl, n_steps)`` (call once per batch
with the batch's mean sequence KL and the number of samples it covered) and
``state_dict()`` / ``load_state_dict()`` so that a resumed run continues with the same ``beta``.
Hyperparameters (``target``, ``horizon``) come from the config and are not part of the state.
"""

from __future__ import annotations

import math
from typing import Any, Protocol


class KLController(Protocol):
    """What an RL loop needs from a KL controller."""

    beta: float

    def update(self, kl: float, n_steps: int) -> float: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKLController:
    """Constant ``beta`` (Ziegler et al. 2019); ``update`` leaves it unchanged."""

    def __init__(self, beta: float) -> None:
        _check_beta(beta)
        self.beta = float(beta)

    def update(self, kl: float, n_steps: int) -> float:
        """Return ``beta`` unchanged (arguments are validated but unused)."""
        _check_update(kl, n_steps)
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = _beta_from_state(state)


class AdaptiveKLController:
    """Proportional controller of ``beta`` (Ziegler et al. 2019, §2.2):

    ``e = clip(kl / target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + e * n_steps / horizon)``.

    ``kl`` is the observed KL (nats, mean over the batch of sequence KL) and ``n_steps`` the
    number of samples since the last update. Ziegler et al. use ``horizon = 10000``; ``target`` is
    task-specific (e.g. 6 nats for their stylistic tasks).
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_beta: float, target: float, horizon: float) -> None:
        _check_beta(init_beta)
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target must be a finite KL > 0, got {target}")
        if not (math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be finite and > 0, got {horizon}")
        self.beta = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, kl: float, n_steps: int) -> float:
        """Apply one update and return the new ``beta``."""
        kl = _check_update(kl, n_steps)
        if n_steps * self.ERROR_CLIP >= self.horizon:
            raise ValueError(
                f"n_steps={n_steps} must be < horizon / {self.ERROR_CLIP} = "
                f"{self.horizon / self.ERROR_CLIP:g}, or beta could turn negative"
            )
        error = min(max(kl / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = _beta_from_state(state)


KL_CONTROLLERS: dict[str, type[FixedKLController] | type[AdaptiveKLController]] = {
    "fixed": FixedKLController,
    "adaptive": AdaptiveKLController,
}


def make_kl_controller(kind: str, **kwargs: Any) -> KLController:
    """Build the controller registered under ``kind`` in :data:`KL_CONTROLLERS`.

    ``make_kl_controller("adaptive", init_beta=0.1, target=6.0, horizon=10000)``.
    """
    if kind not in KL_CONTROLLERS:
        raise ValueError(f"unknown KL controller kind {kind!r}; allowed: {sorted(KL_CONTROLLERS)}")
    return KL_CONTROLLERS[kind](**kwargs)


def _check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")


def _check_update(kl: float, n_steps: int) -> float:
    kl = float(kl)
    if not math.isfinite(kl):
        raise ValueError(f"kl must be finite, got {kl}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    return kl


def _beta_from_state(state: dict[str, float]) -> float:
    if set(state) != {"beta"}:
        raise ValueError(
            f"KL controller state must have exactly the key 'beta', got {sorted(state)}"
        )
    beta = float(state["beta"])
    _check_beta(beta)
    return beta
