"""Elastic Reset (Noukhovitch et al. 2023, "Language Model Alignment with Elastic Reset").

Keep an exponential moving average of the online weights; every ``R`` steps set the online
model to the EMA, then the EMA to the initial weights (docs/methods.md §4):

    after every update t:   theta_ema <- eta * theta_ema + (1 - eta) * theta
    if t % R == 0:          theta     <- theta_ema        (first)
                            theta_ema <- theta_0          (then)

So after ``k`` updates since the last reset (or the start), with ``theta_1..theta_k`` the
weights after each update, ``theta_ema = eta^k theta_0 + (1 - eta) sum_t eta^(k-t) theta_t``.
The parameters are overwritten in place, so the optimizer keeps its state (Adam moments, step
counts) and its references to the same parameter objects; a PPO critic, a separate module, is
not touched. The paper's default decay is ``eta = 0.995``; ``R`` is task-specific and has no
default.

:class:`ElasticReset` implements :class:`proxygap.mitigations.hooks.PostStepHook`; its EMA and
reset count are its ``state_dict`` (a checkpoint keeps them). Metrics it returns every step:

- ``elastic/reset``: 1.0 on a reset step, else 0.0;
- ``elastic/ema_distance``: L2 norm of ``theta - theta_ema`` over all parameters, after the EMA
  update and before any reset;
- ``elastic/init_distance``: L2 norm of ``theta - theta_0`` after the hook (a drift measure in
  weight space).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def _ema_dtype(dtype: torch.dtype) -> torch.dtype:
    # half-precision weights average poorly at eta = 0.995; keep the EMA in float32 at least
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class ElasticReset:
    """Post-step hook for Elastic Reset.

    Args:
        policy: the online model at its initial weights ``theta_0`` (construct the hook before
            the first update). Its floating parameters are copied twice (``theta_0`` and the
            EMA), on their own devices.
        eta: EMA decay in ``(0, 1]``; 0.995 as in the paper.
        every: ``R >= 1``; resets happen when ``step % R == 0`` (``step`` counts updates done,
            as the RL recipe passes it).
    """

    def __init__(self, policy: nn.Module, *, eta: float = 0.995, every: int) -> None:
        if not 0.0 < eta <= 1.0:
            raise ValueError(f"eta must lie in (0, 1], got {eta}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.eta = eta
        self.every = every
        self.theta0 = {
            name: p.detach().clone().to(_ema_dtype(p.dtype))
            for name, p in policy.named_parameters()
            if p.is_floating_point()
        }
        if not self.theta0:
            raise ValueError("policy has no floating-point parameters")
        self.ema = {name: t.clone() for name, t in self.theta0.items()}
        self.resets = 0

    def state_dict(self) -> dict[str, Any]:
        """What changes between updates (the EMA and the reset count), for a checkpoint;
        ``theta_0`` is not in it: a resumed run builds the hook from the initial model again."""
        return {
            "ema": {n: t.detach().cpu().clone() for n, t in self.ema.items()},
            "resets": self.resets,
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back the EMA and reset count a :meth:`state_dict` held (in place, on the EMA's
        own devices and dtypes)."""
        ema = state["ema"]
        if ema.keys() != self.ema.keys():
            raise ValueError(
                "the saved EMA is of another model than the one the hook was built for"
            )
        for name, t in self.ema.items():
            t.copy_(ema[name])
        self.resets = int(state["resets"])

    def _params(self, policy: nn.Module) -> dict[str, nn.Parameter]:
        params = {n: p for n, p in policy.named_parameters() if n in self.theta0}
        if params.keys() != self.theta0.keys():
            missing = sorted(self.theta0.keys() - params.keys())
            raise ValueError(
                f"policy does not match the model the hook was built for: {missing[:3]}"
            )
        for name, p in params.items():
            if p.shape != self.theta0[name].shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(p.shape)}, the hook was built for "
                    f"{tuple(self.theta0[name].shape)}"
                )
        return params

    @torch.no_grad()
    def __call__(
        self,
        *,
        policy: nn.Module,
        ref: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        step: int,
    ) -> dict[str, float]:
        """EMA update after update ``step``; on a reset step, ``theta <- theta_ema`` then
        ``theta_ema <- theta_0``. ``ref`` and ``optimizer`` are left untouched."""
        params = self._params(policy)
        ema_sq = 0.0
        for name, p in params.items():
            ema = self.ema[name]
            ema.mul_(self.eta).add_(p.detach().to(ema.dtype), alpha=1.0 - self.eta)
            ema_sq += float((p.detach().to(ema.dtype) - ema).square().sum())
        reset = step % self.every == 0
        if reset:
            for name, p in params.items():
                p.copy_(self.ema[name])  # theta <- theta_ema (first)
                self.ema[name].copy_(self.theta0[name])  # theta_ema <- theta_0 (then)
            self.resets += 1
        init_sq = sum(
            float((p.detach().to(self.theta0[n].dtype) - self.theta0[n]).square().sum())
            for n, p in params.items()
        )
        return {
            "elastic/reset": float(reset),
            "elastic/ema_distance": math.sqrt(ema_sq),
            "elastic/init_distance": math.sqrt(init_sq),
        }
