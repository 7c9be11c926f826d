"""Constrained RLHF with learned Lagrange multipliers (Moskovitz et al. 2023, "Confronting Reward
Model Overoptimization with Constrained RLHF"; docs/methods.md §4).

``C`` component rewards ``r_1..r_C`` (e.g. a sentiment proxy and a well-formedness proxy) each
stay useful only up to a "proxy point" ``theta_i``, the component value at which gold peaks.
The policy optimises an objective subject to one constraint per component, through the
Lagrangian (the policy maximises it, the multipliers minimise it):

    L(pi, lam) = J_0(pi) + sum_i s_i * lam_i * (E_pi[r_i] - theta_i)

=================  ==========================  ======  ====================================
mode               constraint                  s_i     multiplier
=================  ==========================  ======  ====================================
``"equality"``     ``E[r_i] = theta_i``        ``+1``  ``lam_i = tanh(raw_i)`` in (-1, 1)
``"upper"``        ``E[r_i] <= theta_i``       ``-1``  ``lam_i = sigmoid(raw_i)`` in (0, 1)
``"lower"``        ``E[r_i] >= theta_i``       ``+1``  ``lam_i = sigmoid(raw_i)`` in (0, 1)
=================  ==========================  ======  ====================================

Inequality multipliers must be non-negative; the sigmoid keeps them so, and bounded like the
paper's tanh, so the mixed reward stays bounded (the authors' code offers the same sigmoid
parametrisation). The price of bounding: an upper-bound multiplier can remove at most a unit
weight from its component.

- The policy's reward (:meth:`LagrangeMultipliers.combine`) is the integrand of ``L`` without
  the constants: ``r_mix = r_0 + sum_i s_i lam_i r_i``, with ``r_0`` the objective's per-sample
  reward (zero if none: then only the recipe's KL penalty is the objective, i.e. the policy
  closest to ``pi0`` that meets the constraints).
- The multipliers (:meth:`LagrangeMultipliers.update`) descend ``L``: each raw parameter takes
  a plain step along the multiplier gradient ``dL/dlam_i = s_i (mean_i - theta_i)``,
  ``raw_i <- clip(raw_i - lr * s_i (mean_i - theta_i), -raw_limit, raw_limit)``. A component
  above its threshold therefore always loses weight in ``r_mix`` (more penalty), one below
  gains weight. The step is not multiplied by ``dlam/draw``: the direction is the same, but
  the chain-rule gradient vanishes once the tanh/sigmoid saturates (after one large
  violation the multiplier would stay stuck at +-1 for good), whereas this step recovers as
  soon as the violation changes sign; the clip bounds how long that takes. (The authors' code
  differentiates through the sigmoid, with SGD and momentum 0.9.)

:class:`ConstrainedTransform` wires this into the RL recipe as a reward transform; the
multipliers' raw parameters are its ``state_dict``, which a checkpoint keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from proxygap.mitigations.transforms import sigmoid

Mode = Literal["equality", "upper", "lower"]
_SIGN = {"equality": 1.0, "upper": -1.0, "lower": 1.0}


class LagrangeMultipliers:
    """One multiplier per component constraint, with raw parameters and a bounded map.

    Args:
        thresholds: ``(C,)`` proxy points ``theta_i``.
        lr: step size of :meth:`update` (> 0).
        mode: ``"equality"``, ``"upper"`` or ``"lower"`` (see the module docstring).
        init: initial multiplier values (scalar or ``(C,)``): in (-1, 1) for equality (default
            0), in (0, 1) for inequalities (default 0.5, i.e. ``raw = 0``).
        raw_limit: bound on ``|raw_i|`` (10: ``|tanh| <= 1 - 4e-9``, sigmoid in
            ``[4.5e-5, 1 - 4.5e-5]``).
    """

    def __init__(
        self,
        thresholds: Sequence[float] | np.ndarray,
        *,
        lr: float,
        mode: Mode = "equality",
        init: float | Sequence[float] | None = None,
        raw_limit: float = 10.0,
    ) -> None:
        if mode not in _SIGN:
            raise ValueError(f"unknown constraint mode {mode!r}; allowed: {sorted(_SIGN)}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if self.thresholds.size == 0:
            raise ValueError("need at least one threshold")
        self.lr, self.mode, self.sign = lr, mode, _SIGN[mode]
        C = self.thresholds.size
        default = 0.0 if mode == "equality" else 0.5
        lam0 = np.broadcast_to(np.asarray(default if init is None else init, float), (C,))
        low = -1.0 if mode == "equality" else 0.0
        if np.any(lam0 <= low) or np.any(lam0 >= 1.0):
            raise ValueError(f"init must lie in ({low}, 1) for mode {mode!r}, got {lam0}")
        if not raw_limit > 0:
            raise ValueError(f"raw_limit must be > 0, got {raw_limit}")
        self.raw_limit = raw_limit
        raw = np.arctanh(lam0) if mode == "equality" else np.log(lam0 / (1.0 - lam0))
        self.raw = np.clip(raw, -raw_limit, raw_limit)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What :meth:`update` changes (the raw parameters, float64), for a checkpoint."""
        return {"raw": torch.from_numpy(self.raw.copy())}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take back the raw parameters a :meth:`state_dict` held."""
        raw = state["raw"].numpy().astype(np.float64)
        if raw.shape != self.thresholds.shape:
            raise ValueError(
                f"saved multipliers have shape {raw.shape}, need {self.thresholds.shape}"
            )
        self.raw = raw

    @property
    def values(self) -> np.ndarray:
        """``(C,)`` the multipliers ``lam_i``."""
        return np.tanh(self.raw) if self.mode == "equality" else sigmoid(self.raw)

    def weights(self) -> np.ndarray:
        """``(C,)`` the weight ``s_i lam_i`` of each component in the mixed reward."""
        return self.sign * self.values

    def combine(self, components: np.ndarray, *, objective: np.ndarray | None = None) -> np.ndarray:
        """Mixed reward ``r_0 + sum_i s_i lam_i r_i`` for components ``(B, C)``; ``objective``
        ``(B,)`` is ``r_0`` (zero if None)."""
        comps = np.asarray(components, dtype=np.float64)
        if comps.ndim != 2 or comps.shape[1] != self.thresholds.size:
            raise ValueError(
                f"components must have shape (B, C={self.thresholds.size}), got {comps.shape}"
            )
        mixed = comps @ self.weights()
        if objective is not None:
            obj = np.asarray(objective, dtype=np.float64)
            if obj.shape != mixed.shape:
                raise ValueError(f"objective must have shape {mixed.shape}, got {obj.shape}")
            mixed = mixed + obj
        return mixed

    def gradient(self, component_means: np.ndarray) -> np.ndarray:
        """``dL/dlam_i = s_i (mean_i - theta_i)``, ``(C,)``."""
        means = np.asarray(component_means, dtype=np.float64).reshape(-1)
        if means.shape != self.thresholds.shape:
            raise ValueError(f"need {self.thresholds.size} component means, got {means.shape}")
        return self.sign * (means - self.thresholds)

    def update(self, component_means: np.ndarray) -> dict[str, float]:
        """One descent step on ``L`` given the batch means ``E[r_i]`` (see the module
        docstring); returns ``constraint/lambda_i`` and ``constraint/violation_i``
        (``mean_i - theta_i``) metrics."""
        means = np.asarray(component_means, dtype=np.float64).reshape(-1)
        step = self.raw - self.lr * self.gradient(means)
        self.raw = np.clip(step, -self.raw_limit, self.raw_limit)
        lam = self.values
        out = {f"constraint/lambda_{i}": float(v) for i, v in enumerate(lam)}
        out |= {
            f"constraint/violation_{i}": float(v) for i, v in enumerate(means - self.thresholds)
        }
        return out


class ConstrainedTransform:
    """Reward-transform hook: replaces the proxy by the Lagrangian mixed reward and updates the
    multipliers once per call (one RL step) with the batch means of the components.

    The batch's mixed reward uses the multipliers from before this batch's update (the usual
    alternating primal-dual step).

    Args:
        components: ``texts -> (B, C)`` component scores (e.g. the stacked outputs of ``C``
            proxies' ``score_texts``).
        multipliers: the :class:`LagrangeMultipliers` to use and update.
        objective: ``"none"`` (``r_0 = 0``), ``"reward"`` (``r_0`` = the incoming reward, e.g. a
            composite proxy) or ``"sum"`` (``r_0 = sum_i r_i``, Moskovitz et al.'s composite).
    """

    def __init__(
        self,
        components: Callable[[Sequence[str]], np.ndarray],
        multipliers: LagrangeMultipliers,
        *,
        objective: Literal["none", "reward", "sum"] = "none",
    ) -> None:
        if objective not in ("none", "reward", "sum"):
            raise ValueError(f"unknown objective {objective!r}; allowed: ['none', 'reward', 'sum']")
        self.components = components
        self.multipliers = multipliers
        self.objective = objective
        self.metrics: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        """The multipliers' state (they change every call), for a checkpoint."""
        return {"multipliers": self.multipliers.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.multipliers.load_state_dict(state["multipliers"])

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        comps = np.asarray(self.components(texts), dtype=np.float64)
        if comps.shape[:1] != (len(texts),):
            raise ValueError(f"components returned shape {comps.shape} for {len(texts)} texts")
        r0 = {
            "none": None,
            "reward": np.asarray(rewards, dtype=np.float64),
            "sum": comps.sum(axis=1) if comps.ndim == 2 else None,
        }[self.objective]
        mixed = self.multipliers.combine(comps, objective=r0)
        self.metrics = self.multipliers.update(comps.mean(axis=0))
        return mixed
