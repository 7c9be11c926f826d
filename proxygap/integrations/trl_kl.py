"""KL to the reference of every training batch of a TRL trainer, from the log-probs the trainer
computes anyway where it can (docs/methods.md §2: Schulman's k1, k2 and a k3 whose ``exp`` is
clamped).

Two sources, in order:

1. the loss (GRPO with ``beta > 0``): each micro-batch reaching ``compute_loss`` carries the
   reference's per-token log-probs (``ref_per_token_logps``), and the loss computes the policy's
   (``_get_per_token_logps_and_entropies``), which are the sampling policy's when TRL kept no
   ``old_per_token_logps`` (one iteration per generation: TRL's own condition for dropping
   them); the probe reads both, with no extra forward pass;
2. the generated batch (RLOO, or GRPO with ``beta = 0`` and a ``ref_model`` given to the probe):
   the reference's log-probs from the trainer's ``ref_model`` (or the given one) and the
   policy's from TRL's ``old``/``sampling`` log-probs or one forward pass without gradients,
   every ``every``-th batch.

With the KL, measured batches give the monitor ``signal/unlikely_rate``: the share of their
completions whose per-token NLL under the reference exceeds the 99% quantile of the first
``UNLIKELY_CALIBRATION`` completions this process measured, the policy's start
(:func:`proxygap.monitor.signals.unlikely_rate`); batches before that calibrate it and report
none (the monitor takes each signal's first value as its baseline). Completions a trainer masked
out entirely are left out. Each process calibrates on its own completions, and a fresh training
(step 0) starts a fresh calibration; a run resumed from a checkpoint keeps the cutoff the
checkpoint holds (:meth:`KLProbe.state_dict`; one written without it calibrates on the policy it
resumes with, as the monitor then takes its baseline there).

Without a reference (GRPO's default ``beta = 0`` and no ``ref_model``) there is no KL, and
:attr:`KLProbe.status` says so. The probe wraps those methods on the one trainer instance.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from proxygap.estimators.kl import K3_CLAMP, sequence_kl
from proxygap.monitor.signals import token_nll, unlikely_cutoff, unlikely_rate

__all__ = ["UNLIKELY_CALIBRATION", "KLProbe", "kl_metrics"]

UNLIKELY_CALIBRATION = 128
"""Completions the probe collects before it fixes the unlikely-sample cutoff (a 0.99-quantile of
fewer would be little more than their maximum)."""

logger = logging.getLogger(__name__)


def kl_metrics(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, clamp: float = K3_CLAMP
) -> dict[str, float]:
    """``kl/k1``, ``kl/k2``, ``kl/k3`` (means over the batch of the sequence sums; k3 with the
    log ratio clamped at ``-clamp``), ``kl/clamped`` and ``signal/entropy`` (``-sum log pi /
    tokens``, the policy's Monte-Carlo entropy per token) from ``(B, T)`` log-probs of the
    sampled tokens under the policy and the reference and the response mask."""
    mask = mask.float()
    _, metrics = sequence_kl(logp.float() - ref_logp.float(), mask, clamp=clamp)
    tokens = float(mask.sum())
    if tokens > 0:
        nll = -torch.where(mask > 0, logp.float(), torch.zeros_like(logp, dtype=torch.float32))
        metrics["signal/entropy"] = float(nll.sum()) / tokens
    return metrics


class KLProbe:
    """Collects :func:`kl_metrics` of the training batches of one trainer (module docstring).

    Args:
        every: measure every ``every``-th generated batch when forward passes are needed.
        ref_model: the reference when the trainer has none.
    """

    def __init__(self, *, every: int = 1, ref_model: torch.nn.Module | None = None) -> None:
        if every < 1:
            raise ValueError(f"kl_every must be >= 1, got {every}")
        self.every, self.ref_model = every, ref_model
        self.status = "no batch seen yet"
        self.trainer: Any = None
        self._pending: list[tuple[int, dict[str, float]]] = []  # (sequences, metrics)
        self._capture: list[torch.Tensor] | None = None
        self._generations = 0
        self._warned: set[str] = set()
        self.unlikely_cutoff: float | None = None
        self._calibration: list[np.ndarray] = []

    def attach(self, trainer: Any) -> None:
        """Wrap the trainer's loss and generation methods (those it has) to measure KL."""
        self.trainer = trainer
        per_token = getattr(trainer, "_get_per_token_logps_and_entropies", None)
        generate = getattr(trainer, "_generate_and_score_completions", None)
        if per_token is None or generate is None:
            self.status = f"no KL: {type(trainer).__name__} exposes no per-token log-probs"
            return
        compute_loss = trainer.compute_loss

        def capture(*args: Any, **kwargs: Any) -> Any:
            out = per_token(*args, **kwargs)
            if self._capture is not None:
                self._capture.append(out[0].detach())
            return out

        def compute_loss_measured(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            armed = model.training and "ref_per_token_logps" in inputs
            self._capture = [] if armed else None
            try:
                return compute_loss(model, inputs, *args, **kwargs)
            finally:
                captured, self._capture = self._capture, None
                if captured:
                    logp = inputs.get("old_per_token_logps", captured[0])
                    self._add(logp, inputs["ref_per_token_logps"], inputs["completion_mask"])

        def generate_measured(*args: Any, **kwargs: Any) -> Any:
            out = generate(*args, **kwargs)
            if trainer.model.training and "ref_per_token_logps" not in out:
                self._generations += 1
                if (self._generations - 1) % self.every == 0:
                    self._measure(out)
            return out

        trainer._get_per_token_logps_and_entropies = capture
        trainer.compute_loss = compute_loss_measured
        trainer._generate_and_score_completions = generate_measured
        if self.ref_model is not None:
            self.ref_model.to(trainer.accelerator.device).eval()

    def _add(self, logp: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> None:
        metrics = kl_metrics(logp, ref, mask)
        nll = token_nll(ref, mask)  # the reference's per-token NLL of each completion
        nll = nll[~np.isnan(nll)]  # completions masked out entirely
        if self.unlikely_cutoff is None and len(nll):
            self._calibration.append(nll)
            pool = np.concatenate(self._calibration)
            if len(pool) >= UNLIKELY_CALIBRATION and np.isfinite(pool).any():
                self.unlikely_cutoff = unlikely_cutoff(pool)
                self._calibration = []
                metrics["signal/unlikely_rate"] = unlikely_rate(pool, self.unlikely_cutoff)
        elif len(nll):
            assert self.unlikely_cutoff is not None
            metrics["signal/unlikely_rate"] = unlikely_rate(nll, self.unlikely_cutoff)
        self._pending.append((int(mask.shape[0]), metrics))
        self.status = "measured"

    def _measure(self, out: dict[str, Any]) -> None:
        """KL of a generated batch by forward passes (source 2 of the module docstring)."""
        trainer = self.trainer
        ref_model = self.ref_model or getattr(trainer, "ref_model", None)
        if ref_model is None:
            self.status = (
                "no KL: the trainer computes no reference log-probs (beta = 0) and has no "
                "ref_model; set beta > 0 or pass ProxygapCallback(ref_model=...)"
            )
            self._warn_once(self.status)
            return
        mask = out["completion_mask"]
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attn = torch.cat([out["prompt_mask"], mask], dim=1)
        width = out["completion_ids"].shape[1]

        def logps(model: Any) -> torch.Tensor:
            with torch.no_grad():
                lp, _, _ = trainer._get_per_token_logps_and_entropies(
                    model, ids, attn, width, batch_size=ids.shape[0]
                )
            return lp

        logp = out.get("old_per_token_logps")
        if logp is None:
            logp = out.get("sampling_per_token_logps")
        if logp is None:
            logp = logps(trainer.model)
        self._add(logp, logps(ref_model), mask)

    def restart(self) -> None:
        """Forget the unlikely-sample cutoff: a new training calibrates it afresh."""
        self.unlikely_cutoff, self._calibration = None, []

    def state_dict(self) -> dict[str, Any]:
        """The unlikely-sample cutoff, or the NLLs gathered towards it, for a checkpoint."""
        pool = np.concatenate(self._calibration) if self._calibration else np.zeros(0)
        return {"unlikely_cutoff": self.unlikely_cutoff, "calibration": pool.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict` (a resumed training keeps the
        initial policy's cutoff instead of calibrating on the resumed policy)."""
        cutoff = state.get("unlikely_cutoff")
        self.unlikely_cutoff = None if cutoff is None else float(cutoff)
        pool = np.asarray(state.get("calibration", []), dtype=np.float64)
        self._calibration = [pool] if len(pool) and cutoff is None else []

    def pop(self) -> dict[str, float]:
        """The batches' KL since the last call: sequence-weighted means (``kl/clamped``: the
        total), or ``{}``."""
        pending, self._pending = self._pending, []
        out: dict[str, float] = {}
        for key in set().union(*(m for _, m in pending)):
            vals = [(n, m[key]) for n, m in pending if key in m]
            if key == "kl/clamped":
                out[key] = float(sum(v for _, v in vals))
            else:
                out[key] = sum(n * v for n, v in vals) / sum(n for n, _ in vals)
        return out

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("proxygap: %s", message)
