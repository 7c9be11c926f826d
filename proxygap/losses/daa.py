"""Direct alignment algorithm (DAA) losses on sequence log-probabilities (docs/methods.md §5).

Each variant is one pure function of ``(B,)`` tensors that returns ``(losses, metrics)``:
``losses`` is ``(B,)``, one loss per preference pair, never reduced (the caller takes the mean it
wants); ``metrics`` is a dict of detached Python floats (batch means). Hyperparameters are
keyword-only. All log-probabilities are sums over the response tokens, e.g. from
:func:`proxygap.losses.sequence.sequence_logprobs`; ``y_w`` is the chosen, ``y_l`` the rejected
response. The log-ratio difference

    h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]

is the argument of every reference-based loss.

Metrics (same names for every variant, so runs with different losses compare directly):

- ``daa/loss``: mean loss over the batch.
- ``daa/chosen_reward``, ``daa/rejected_reward``: mean implicit reward of the chosen / rejected
  responses, ``beta * (log pi(y) - log pi_ref(y))`` for the reference-based losses (as in TRL's
  ``rewards/chosen``), ``beta * log pi(y) / |y|`` for SimPO (Meng et al. 2024).
- ``daa/margin``: mean of chosen minus rejected reward (``beta * h`` for reference-based losses).
- ``daa/accuracy``: fraction of pairs whose chosen reward is strictly larger.
- ``daa/nll`` (RPO only): mean per-token NLL of the chosen response.

A recipe picks a variant by name from :data:`DAA_LOSSES` through :func:`compute_daa_loss`, which
takes the batch as a :class:`PairBatchLogps` and validates the hyperparameter names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from proxygap.losses.daa_checks import (
    batch_metrics,
    check_logps,
    check_nonnegative,
    check_pairs,
    check_positive,
    logratios,
    n_tokens,
)
from proxygap.losses.fdpo import FDPO_LOSSES
from proxygap.schema import check_keywords, keyword_parameters

LossOutput = tuple[Tensor, dict[str, float]]


# --------------------------------------------------------------------------- losses


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """DPO loss ``-log sigma(beta h)`` (Rafailov et al. 2023, eq. 7), optionally label-smoothed.

    With ``label_smoothing = eps > 0`` this is conservative DPO (cDPO, Mitchell 2023, "A note on
    DPO with noisy preferences"), the expected DPO loss when each label is flipped with
    probability ``eps``: ``(1 - eps) * (-log sigma(beta h)) + eps * (-log sigma(-beta h))``.
    ``eps = 0`` is plain DPO. Computed with ``F.logsigmoid`` (no overflow for large ``|beta h|``).

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` ``log pi(y_w|x)``, ``log pi(y_l|x)``,
            summed over response tokens.
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` the same under ``pi_ref`` (no gradient is
            needed; detach them or compute them under ``torch.no_grad``).
        beta: KL-regularisation strength, ``> 0``. Default 0.1, the value used for most of
            Rafailov et al.'s experiments.
        label_smoothing: assumed label-flip probability ``eps`` in ``[0, 0.5)``.

    Returns:
        ``(losses (B,), metrics)``; see the module docstring for the metric names.
    """
    chosen_logratios, rejected_logratios = logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,), (B,)
    check_positive("beta", beta)
    check_nonnegative("label_smoothing", label_smoothing)
    if label_smoothing >= 0.5:
        raise ValueError(
            f"label_smoothing must be in [0, 0.5) (a flip probability; at 0.5 the labels carry no "
            f"information), got {label_smoothing!r}"
        )
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)  beta * h
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits)
    if label_smoothing > 0:
        losses = losses - label_smoothing * F.logsigmoid(-logits)
    return losses, batch_metrics(losses, beta * chosen_logratios, beta * rejected_logratios)


def cdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float,
) -> LossOutput:
    """Conservative DPO (Mitchell 2023): :func:`dpo_loss` with a required ``label_smoothing``.

    ``(1 - eps) * (-log sigma(beta h)) + eps * (-log sigma(-beta h))``. The note fixes no default
    ``eps``; set it to the label-noise rate you assume (e.g. 0.25 for Coste et al.'s noise level).
    Arguments and returns as :func:`dpo_loss`.
    """
    return dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        label_smoothing=label_smoothing,
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """IPO loss ``(h - 1/(2 beta))^2`` (Azar et al. 2023, "A General Theoretical Paradigm to
    Understand Learning from Human Preferences", eq. 17 with ``tau = beta``).

    The loss regresses ``h`` onto the target margin ``1/(2 beta)`` and is 0 exactly there; unlike
    DPO it does not push ``h`` to infinity on deterministic preferences.

    ``h`` is built from the log-probabilities as given (docs/methods.md §5: sums over response
    tokens).
    TRL (``DPOTrainer`` with ``loss_type="ipo"``, checked in TRL 1.16) instead divides each
    log-ratio by its response length before taking the difference, i.e. uses per-token averages;
    to reproduce that, pass ``logps / lengths`` for all four inputs. The two forms differ whenever
    responses are longer than one token, and ``beta`` has a different scale in each.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)``
            as in :func:`dpo_loss`.
        beta: regularisation strength ``tau``, ``> 0``; the target margin is ``1/(2 beta)``.
            Default 0.1 (TRL's default; the paper sweeps tau).

    Returns:
        ``(losses (B,), metrics)``; rewards are ``beta * log-ratio`` as for DPO.
    """
    chosen_logratios, rejected_logratios = logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,), (B,)
    check_positive("beta", beta)
    h = chosen_logratios - rejected_logratios  # (B,)
    losses = (h - 1.0 / (2.0 * beta)).square()
    return losses, batch_metrics(losses, beta * chosen_logratios, beta * rejected_logratios)


def slic_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> LossOutput:
    """SLiC hinge loss ``max(0, 1 - beta h)`` (Zhao et al. 2023, "SLiC-HF", calibration loss).

    SLiC-HF writes ``max(0, delta - log pi(y_w) + log pi(y_l))`` with margin ``delta`` and no
    reference; the DAA form used here (as in Rafailov et al. 2024 and TRL's ``loss_type="hinge"``)
    takes the reference log-ratio difference ``h`` and margin ``1/beta`` (``beta`` times the hinge).
    The loss and its gradient are exactly 0 once ``beta h >= 1``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)``
            as in :func:`dpo_loss`.
        beta: ``> 0``; inverse margin. Default 0.1 (TRL's default).

    Returns:
        ``(losses (B,), metrics)``; rewards are ``beta * log-ratio`` as for DPO.
    """
    chosen_logratios, rejected_logratios = logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,), (B,)
    check_positive("beta", beta)
    losses = torch.relu(1.0 - beta * (chosen_logratios - rejected_logratios))
    return losses, batch_metrics(losses, beta * chosen_logratios, beta * rejected_logratios)


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> LossOutput:
    """SimPO loss ``-log sigma(beta (log pi(y_w)/|y_w| - log pi(y_l)/|y_l|) - gamma)``
    (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward").

    Reference-free and length-normalised: the implicit reward is the average per-token
    log-probability scaled by ``beta``, and ``gamma`` is a target reward margin. Scaling a
    response's length while keeping its per-token log-probability leaves the loss unchanged.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(B,)`` summed log-probabilities of the
            chosen / rejected responses under the policy.
        chosen_lengths, rejected_lengths: ``(B,)`` number of response tokens (``> 0``), integer or
            float tensors.
        beta: reward scale, ``> 0``. Default 2.0 with ``gamma = 1.0`` (``gamma/beta = 0.5``), the
            paper's Llama-3-8B-Base setting; it tunes both per model.
        gamma: target reward margin, ``>= 0``.

    Returns:
        ``(losses (B,), metrics)``; rewards are ``beta * log pi(y) / |y|``.
    """
    check_logps(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps
    )
    check_pairs(
        policy_chosen_logps=policy_chosen_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    check_positive("beta", beta)
    check_nonnegative("gamma", gamma)
    chosen_rewards = (
        beta * policy_chosen_logps / n_tokens("chosen_lengths", chosen_lengths, policy_chosen_logps)
    )  # (B,)
    rejected_rewards = (
        beta
        * policy_rejected_logps
        / n_tokens("rejected_lengths", rejected_lengths, policy_rejected_logps)
    )  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, batch_metrics(losses, chosen_rewards, rejected_rewards)


def rpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_nll: Tensor,
    chosen_lengths: Tensor,
    *,
    beta: float = 0.1,
    eta: float = 1.0,
) -> LossOutput:
    """RPO loss: DPO plus a length-normalised NLL on the chosen response,
    ``-log sigma(beta h) + eta * NLL(y_w) / |y_w|`` (Pang et al. 2024, "Iterative Reasoning
    Preference Optimization", there with weight ``alpha``).

    ``chosen_nll`` is a separate input so the SFT term may cover other tokens than ``h`` (Pang
    et al. include the chain of thought); usually it is ``-policy_chosen_logps``. ``eta = 0`` is
    exactly :func:`dpo_loss`. TRL expresses RPO as ``loss_type=["sigmoid", "sft"]`` with
    ``loss_weights=[1, eta]``; its SFT term averages over all chosen tokens of the batch rather
    than per sequence, which agrees with this function only for batches of one pair or equal
    chosen lengths.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``(B,)``
            as in :func:`dpo_loss`.
        chosen_nll: ``(B,)`` summed negative log-likelihood of the chosen response under the policy.
        chosen_lengths: ``(B,)`` number of tokens the NLL is summed over (``> 0``).
        beta: DPO ``beta``, ``> 0``. Default 0.1.
        eta: weight of the NLL term, ``>= 0``. Default 1.0, the paper's ``alpha = 1``.

    Returns:
        ``(losses (B,), metrics)``; DPO rewards plus ``daa/nll``, the mean per-token chosen NLL.
    """
    check_pairs(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_nll=chosen_nll,
        chosen_lengths=chosen_lengths,
    )
    check_logps(chosen_nll=chosen_nll)
    check_nonnegative("eta", eta)
    dpo_losses, metrics = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta
    )
    nll = chosen_nll / n_tokens("chosen_lengths", chosen_lengths, chosen_nll)  # (B,)
    losses = dpo_losses + eta * nll if eta > 0 else dpo_losses
    with torch.no_grad():
        metrics["daa/loss"] = losses.mean().item()
        metrics["daa/nll"] = nll.mean().item()
    return losses, metrics


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PairBatchLogps:
    """Everything a DAA loss may need for a batch of ``B`` preference pairs; each field ``(B,)``.

    Attributes:
        policy_chosen, policy_rejected: summed response log-probabilities under the policy.
        ref_chosen, ref_rejected: the same under the reference; ``None`` for reference-free
            losses (SimPO).
        chosen_len, rejected_len: number of response tokens; needed by SimPO (both) and RPO
            (chosen).
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None

    def require(self, *fields: str, loss: str) -> tuple[Tensor, ...]:
        """The named fields, or a ValueError naming the first missing one."""
        values = tuple(getattr(self, f) for f in fields)
        for field, value in zip(fields, values, strict=True):
            if value is None:
                raise ValueError(f"loss {loss!r} needs PairBatchLogps.{field}, got None")
        return values


_REFERENCE_BASED = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


@dataclass(frozen=True)
class DAALoss:
    """A registered DAA loss: the pure function and how to read its inputs from a batch."""

    name: str
    fn: Callable[..., LossOutput]
    inputs: Callable[[PairBatchLogps], tuple[Tensor, ...]]

    def hyperparameters(self) -> dict[str, Any]:
        """Keyword-only hyperparameters and their defaults (``inspect.Parameter.empty`` if
        required)."""
        return keyword_parameters(self.fn, keyword_only=True)

    def __call__(self, logps: PairBatchLogps, **hyper: float) -> LossOutput:
        check_keywords(
            dict(sorted(self.hyperparameters().items())),
            hyper,
            unknown=f"unknown hyperparameter(s) {{names}} for loss {self.name!r}; "
            "allowed: {allowed}",
            missing=f"loss {self.name!r} requires hyperparameter(s) {{names}}",
        )
        return self.fn(*self.inputs(logps), **hyper)


def _reference_inputs(loss: str) -> Callable[[PairBatchLogps], tuple[Tensor, ...]]:
    return lambda b: b.require(*_REFERENCE_BASED, loss=loss)


def _rpo_inputs(logps: PairBatchLogps) -> tuple[Tensor, ...]:
    pc, pr, rc, rr, chosen_len = logps.require(*_REFERENCE_BASED, "chosen_len", loss="rpo")
    return pc, pr, rc, rr, -pc, chosen_len


DAA_LOSSES: dict[str, DAALoss] = {
    "dpo": DAALoss("dpo", dpo_loss, lambda b: b.require(*_REFERENCE_BASED, loss="dpo")),
    "cdpo": DAALoss("cdpo", cdpo_loss, lambda b: b.require(*_REFERENCE_BASED, loss="cdpo")),
    "ipo": DAALoss("ipo", ipo_loss, lambda b: b.require(*_REFERENCE_BASED, loss="ipo")),
    "slic": DAALoss("slic", slic_loss, lambda b: b.require(*_REFERENCE_BASED, loss="slic")),
    "simpo": DAALoss(
        "simpo",
        simpo_loss,
        lambda b: b.require(
            "policy_chosen", "policy_rejected", "chosen_len", "rejected_len", loss="simpo"
        ),
    ),
    "rpo": DAALoss("rpo", rpo_loss, _rpo_inputs),
    **{n: DAALoss(n, f, _reference_inputs(n)) for n, f in FDPO_LOSSES.items()},
}
"""DAA losses by config name. RPO's NLL is ``-policy_chosen`` over ``chosen_len``; f-DPO: fdpo.py"""


def get_daa_loss(name: str) -> DAALoss:
    """The registered loss ``name``, or a ValueError listing the allowed names."""
    if name not in DAA_LOSSES:
        raise ValueError(f"unknown DAA loss {name!r}; allowed: {sorted(DAA_LOSSES)}")
    return DAA_LOSSES[name]


def compute_daa_loss(name: str, logps: PairBatchLogps, **hyper: float) -> LossOutput:
    """Per-pair losses ``(B,)`` and metrics of the DAA loss ``name`` (a key of ``DAA_LOSSES``).

    ``hyper`` are the keyword-only hyperparameters of the underlying function (e.g. ``beta``,
    ``label_smoothing``, ``gamma``, ``eta``); an unknown name or hyperparameter raises a ValueError
    that lists the allowed ones.
    """
    return get_daa_loss(name)(logps, **hyper)
