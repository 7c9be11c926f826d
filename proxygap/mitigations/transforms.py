"""Reward transforms: reshape the proxy score of every response before it is optimised.

Pure functions on ``(B,)`` float64 arrays, and small hook classes that implement
:class:`proxygap.mitigations.hooks.RewardTransform` (``(rewards (B,), texts, prompts) ->
rewards (B,)``), so the RL recipe calls them without knowing which one it holds.

- :func:`lsc`: log-sigmoid centred on a per-prompt reference (Wang et al. 2024);
- :func:`par`: Preference As Reward, the mean sigmoid of the margin over reference responses
  (Fu et al. 2025);
- :func:`length_penalty`, :func:`clip_rewards`, :func:`whiten`: common baselines.

A monotone per-prompt transform (LSC and PAR of one reward model) does not change which sample
best-of-n picks, so with a single proxy these two only matter for RL. Per-prompt references are
the rewards of initial-policy samples of each prompt, the ``ref_rewards`` input the caller
supplies (:data:`proxygap.mitigations.registry.INPUTS`).

Hooks may expose ``metrics`` (a dict of floats about their last call);
:class:`ChainTransform` merges those of its members. A hook whose result depends on earlier
calls has ``state_dict``/``load_state_dict``, so a checkpoint keeps it (the Lagrange
multipliers of :mod:`proxygap.mitigations.constrained`); :class:`ChainTransform` passes those of
its members through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from proxygap.mitigations.hooks import RewardTransform

T = TypeVar("T")


# ---------------------------------------------------------------- pure functions
def _vector(x: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    out = np.asarray(x, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"{name} must have shape (B,), got {out.shape}")
    return out


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``log sigma(x) = -log(1 + exp(-x))``, finite for every finite ``x``."""
    return -np.logaddexp(0.0, -x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``sigma(x) = 1 / (1 + exp(-x))`` without overflow."""
    return np.exp(log_sigmoid(x))


def lsc(rewards: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Log-sigmoid centred transform (Wang et al. 2024, "Transforming and Combining Rewards for
    Aligning Large Language Models"; docs/methods.md §4): ``u = log sigma(r(x, y) - r_ref(x))``.

    ``u <= 0``; it saturates at 0 once a response beats the prompt's reference, so the policy
    gains little from pushing already-good prompts further and most from poorly-scoring ones.
    Summing ``u`` over several reward models gives ``log P(good on all)``.

    Args:
        rewards: ``(B,)`` proxy rewards ``r(x, y)``.
        reference: ``(B,)`` the reference ``r_ref(x)`` of each row's prompt, e.g. the 0.85
            quantile of the initial policy's rewards (:func:`reference_quantile`).

    Returns:
        ``(B,)`` transformed rewards, all ``<= 0``.
    """
    r, ref = _vector(rewards, "rewards"), _vector(reference, "reference")
    if r.shape != ref.shape:
        raise ValueError(f"rewards {r.shape} and reference {ref.shape} must have the same shape")
    return log_sigmoid(r - ref)


def reference_quantile(ref_rewards: np.ndarray, q: float = 0.85) -> np.ndarray:
    """Per-prompt reference ``r_ref(x)``: the ``q`` quantile of the rewards of ``M`` samples of the
    initial policy for that prompt (Wang et al. 2024 use the 85th percentile).

    Quantiles interpolate linearly between order statistics (numpy's default): with sorted
    values ``v_0 <= ... <= v_{M-1}`` the result is ``v_j + f (v_{j+1} - v_j)`` where
    ``j + f = q (M - 1)``.

    Args:
        ref_rewards: ``(P, M)`` rewards of ``M >= 1`` initial-policy samples for ``P`` prompts.
        q: quantile in ``[0, 1]``.

    Returns:
        ``(P,)`` references.
    """
    ref = np.asarray(ref_rewards, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] < 1:
        raise ValueError(f"ref_rewards must have shape (P, M>=1), got {ref.shape}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    return np.quantile(ref, q, axis=1)


def par(rewards: np.ndarray, ref_rewards: np.ndarray) -> np.ndarray:
    """Preference As Reward (Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in RLHF";
    docs/methods.md §4): ``r_par = (1/M) sum_m sigma(r(x, y) - r(x, y_ref_m))``.

    ``y_ref_m`` are ``M`` responses of the initial policy to the same prompt. The result lies in
    ``(0, 1)``, grows fastest near the references and flattens beyond them (the paper's three
    principles: bounded, fast initial growth then convergence, centred on a reference). With
    ``M = 1`` it is ``sigma(r - r_ref)``; the paper finds one reference suffices.

    Args:
        rewards: ``(B,)`` proxy rewards.
        ref_rewards: ``(B, M)`` proxy rewards of the ``M`` reference responses of each row's
            prompt.

    Returns:
        ``(B,)`` shaped rewards in ``(0, 1)`` (up to float rounding at extreme margins).
    """
    r = _vector(rewards, "rewards")
    ref = np.asarray(ref_rewards, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[0] != r.shape[0] or ref.shape[1] < 1:
        raise ValueError(f"ref_rewards must have shape (B={r.shape[0]}, M>=1), got {ref.shape}")
    return sigmoid(r[:, None] - ref).mean(axis=1)


def length_penalty(rewards: np.ndarray, lengths: np.ndarray, *, coef: float) -> np.ndarray:
    """``r - coef * length``: the common baseline against length exploitation (e.g. Singhal et
    al. 2023, "A Long Way to Go"). ``coef >= 0``; lengths in whatever unit the caller counts."""
    r, n = _vector(rewards, "rewards"), _vector(lengths, "lengths")
    if r.shape != n.shape:
        raise ValueError(f"rewards {r.shape} and lengths {n.shape} must have the same shape")
    if not coef >= 0:
        raise ValueError(f"coef must be >= 0, got {coef}")
    return r - coef * n


def clip_rewards(rewards: np.ndarray, *, low: float, high: float) -> np.ndarray:
    """Rewards clipped to ``[low, high]``."""
    if not low <= high:
        raise ValueError(f"need low <= high, got low={low}, high={high}")
    return np.clip(_vector(rewards, "rewards"), low, high)


def whiten(rewards: np.ndarray, *, eps: float = 1e-8) -> np.ndarray:
    """Batch whitening ``(r - mean) / sqrt(var + eps)`` with the population variance (as TRL's
    ``whiten``). A batch of one, or of equal rewards, becomes all zeros."""
    r = _vector(rewards, "rewards")
    if r.size == 0:
        raise ValueError("cannot whiten an empty batch")
    return (r - r.mean()) / np.sqrt(r.var() + eps)


def response_words(text: str, prompt: str) -> int:
    """Whitespace words of the response in ``text``: the text after ``prompt`` when the text
    starts with it (the recipe's ``join`` puts the prompt first), else the whole text."""
    if prompt and text.startswith(prompt):
        text = text[len(prompt) :]
    return len(text.split())


# ---------------------------------------------------------------- hooks
def _lookup(reference: Mapping[str, T], prompts: Sequence[str], what: str) -> list[T]:
    missing = [p for p in dict.fromkeys(prompts) if p not in reference]
    if missing:
        raise KeyError(
            f"no {what} for {len(missing)} prompt(s), e.g. {missing[0]!r} ({len(reference)} "
            "prompts have one); score initial-policy samples of every training prompt"
        )
    return [reference[p] for p in prompts]


class LSCTransform:
    """:func:`lsc` as a reward-transform hook; ``reference`` maps each prompt to ``r_ref(x)``."""

    def __init__(self, reference: Mapping[str, float]) -> None:
        self.reference = {p: float(v) for p, v in reference.items()}

    @classmethod
    def from_rewards(
        cls, ref_rewards: Mapping[str, np.ndarray], *, q: float = 0.85
    ) -> LSCTransform:
        """References as the ``q`` quantile of each prompt's initial-policy rewards."""
        prompts = list(ref_rewards)
        return cls(
            {
                p: float(
                    reference_quantile(np.asarray(ref_rewards[p], dtype=np.float64)[None], q)[0]
                )
                for p in prompts
            }
        )

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        ref = np.array(_lookup(self.reference, prompts, "LSC reference"), dtype=np.float64)
        return lsc(rewards, ref)


class PARTransform:
    """:func:`par` as a reward-transform hook; ``reference`` maps each prompt to the ``(M,)``
    proxy rewards of its reference responses (the same ``M`` for every prompt)."""

    def __init__(self, reference: Mapping[str, np.ndarray]) -> None:
        self.reference = {
            p: np.asarray(v, dtype=np.float64).reshape(-1) for p, v in reference.items()
        }
        sizes = {v.shape[0] for v in self.reference.values()}
        if len(sizes) > 1 or 0 in sizes:
            raise ValueError(
                f"every prompt needs the same number M >= 1 of references, got {sizes}"
            )

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        ref = np.stack(_lookup(self.reference, prompts, "PAR reference"))  # (B, M)
        return par(rewards, ref)


class ReferenceCapTransform:
    """``min(r(x, y), r_ref(x))``: each reward capped at its prompt's reference, the ``q``
    quantile of the initial policy's rewards for that prompt (:func:`reference_quantile`).

    The hard counterpart of :class:`LSCTransform` (Wang et al. 2024): ``log sigma(r - r_ref)``
    tends to ``min(r, r_ref) - r_ref`` as ``|r - r_ref|`` grows, so the cap keeps LSC's
    saturation at the reference and drops its smooth shape. An arm with it beside an LSC arm
    separates what bounding the reward at the reference does from what the log-sigmoid does;
    Fu et al. 2025 ("Reward Shaping to Mitigate Reward Hacking in RLHF") name a bounded RL
    reward their first principle against reward hacking. Below the reference the reward is
    unchanged, in the reward model's units; above it every response scores the same.

    Args:
        ref_rewards: each prompt's ``(M,)`` rewards of ``M >= 1`` initial-policy samples.
        q: quantile in ``[0, 1]`` (0.85 as LSC's default; 1 caps at the best reference).
    """

    def __init__(self, ref_rewards: Mapping[str, np.ndarray], *, q: float = 0.85) -> None:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must lie in [0, 1], got {q}")
        self.reference = {
            p: float(reference_quantile(np.asarray(v, dtype=np.float64)[None], q)[0])
            for p, v in ref_rewards.items()
        }

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        r = _vector(rewards, "rewards")
        cap = np.array(_lookup(self.reference, prompts, "reference cap"), dtype=np.float64)
        if r.shape != cap.shape:
            raise ValueError(f"rewards {r.shape} and prompts ({len(prompts)},) must match")
        return np.minimum(r, cap)


class LengthPenalty:
    """:func:`length_penalty` as a hook; ``length_fn(text, prompt)`` counts a response's length
    (default: whitespace words after the prompt, which are tokens for the word-level
    ``reviews`` task)."""

    def __init__(
        self, coef: float, *, length_fn: Callable[[str, str], float] = response_words
    ) -> None:
        if not coef >= 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        self.coef = coef
        self.length_fn = length_fn

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        lengths = np.array(
            [self.length_fn(t, p) for t, p in zip(texts, prompts, strict=True)], dtype=np.float64
        )
        return length_penalty(rewards, lengths, coef=self.coef)


class ClipTransform:
    """:func:`clip_rewards` as a hook."""

    def __init__(self, *, low: float, high: float) -> None:
        if not low <= high:
            raise ValueError(f"need low <= high, got low={low}, high={high}")
        self.low, self.high = low, high

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        return clip_rewards(rewards, low=self.low, high=self.high)


class WhitenTransform:
    """:func:`whiten` as a hook (statistics of the current batch)."""

    def __init__(self, *, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        return whiten(rewards, eps=self.eps)


def _keeps_state(hook: object) -> bool:
    return callable(getattr(hook, "state_dict", None)) and callable(
        getattr(hook, "load_state_dict", None)
    )


class ChainTransform:
    """Several transforms applied in order: ``t_k(... t_2(t_1(r)) ...)``. ``metrics`` merges the
    ``metrics`` of the members that have them (after the last call)."""

    def __init__(self, transforms: Sequence[RewardTransform]) -> None:
        if not transforms:
            raise ValueError("ChainTransform needs at least one transform")
        self.transforms = list(transforms)

    def __call__(
        self, rewards: np.ndarray, texts: Sequence[str], prompts: Sequence[str]
    ) -> np.ndarray:
        out = np.asarray(rewards, dtype=np.float64)
        for t in self.transforms:
            out = np.asarray(t(out, texts, prompts), dtype=np.float64)
        return out

    def _stateful(self) -> dict[str, Any]:
        return {str(i): t for i, t in enumerate(self.transforms) if _keeps_state(t)}

    def state_dict(self) -> dict[str, Any]:
        """The state of the members that keep one (``state_dict``), by position."""
        return {i: t.state_dict() for i, t in self._stateful().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for i, t in self._stateful().items():
            t.load_state_dict(state[i])

    @property
    def metrics(self) -> dict[str, float]:
        merged: dict[str, float] = {}
        for t in self.transforms:
            merged.update(getattr(t, "metrics", None) or {})
        return merged
