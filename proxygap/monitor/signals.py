"""Gold-free signals of overoptimization, computed from what a practitioner has at an evaluation
point: policy samples, their proxy (and ensemble member) scores, the reward model's hidden states
and the policy's own log-probabilities (docs/methods.md §9).

Sample-level functions (``(n,)`` or ``(n, K)`` arrays in, one number out):

- :func:`mc_entropy`: per-token entropy of the policy estimated from its own samples,
  ``-sum log pi(y_t) / tokens``; it falls as the policy collapses onto a few outputs (the
  sample-based counterpart of Shi et al. 2024's top-k entropy);
- :func:`ensemble_disagreement`: mean over samples of the standard deviation across reward-model
  members, each standardised on initial-policy samples (Coste et al. 2023; Eisenstein et al. 2023:
  members disagree off the training distribution);
- :func:`outlier_rate`: the share of policy samples whose Mahalanobis distance in the reward
  model's final hidden layer exceeds the ``q``-quantile of the initial policy's samples (InfoRM's
  outlier proportion, Miao et al. 2024: hacked samples sit apart from the SFT distribution);
- :func:`topk_signals`: the policy's top-k probability mass and top-k entropy at its own
  sampled positions, token means (Shi et al. 2024's likelihood over-optimisation indicators;
  the sampler records them, :func:`proxygap.sampling.generate.topk_stats`);
- :func:`token_nll` and :func:`unlikely_rate`: the share of policy samples that the initial
  policy itself finds less likely, per token, than the ``q``-quantile of its own samples: the
  outlier rate read in the initial policy's likelihood instead of the reward model's latent
  space (a sample the reference would almost never write, such as a broken sentence the proxy
  still scores well).

Run-level features (:func:`features`) compare an evaluation row with the run's first row, so that
every feature is 0 at the start and grows as the policy drifts:

- ``d``: growth of ``sqrt(KL)`` to the initial policy since the first row (Gao et al. 2023's
  axis; the first row's ``d`` is 0 for RL, small for a conditioned or late-evaluated policy);
- ``proxy_gain``: proxy gain in units of the proxy's spread over initial-policy samples;
- ``proxy_per_d``: ``proxy_gain / d``, the proxy bought per unit of ``d``; its decline marks the
  bend of the Gao law on the proxy;
- ``length_drift``: ``|log(length / length_0)|``;
- ``distinct2_drop``: fall of the distinct-bigram ratio;
- ``entropy_drop``: fall of :func:`mc_entropy`;
- ``ensemble_growth``: ``log`` of the disagreement's ratio to its initial value (0 without an
  ensemble);
- ``outlier_excess``: :func:`outlier_rate` above its initial value (0 without hidden states);
- ``unlikely_excess``: :func:`unlikely_rate` above its initial value (0 when not measured).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FEATURES",
    "UNLIKELY_QUANTILE",
    "TOPK",
    "OutlierReference",
    "ensemble_disagreement",
    "features",
    "mahalanobis",
    "mc_entropy",
    "outlier_rate",
    "token_nll",
    "topk_signals",
    "unlikely_cutoff",
    "unlikely_rate",
]

FEATURES = (
    "d",
    "proxy_gain",
    "proxy_per_d",
    "length_drift",
    "distinct2_drop",
    "entropy_drop",
    "ensemble_growth",
    "outlier_excess",
    "unlikely_excess",
)
"""The monitor's features, in the order the detector's weights use."""

UNLIKELY_QUANTILE = 0.99
"""``signal/unlikely_rate`` counts samples less likely under the initial policy than this
quantile of its own samples (about 1% of them at the start; :func:`unlikely_rate`)."""


TOPK = 10
"""``signal/topk_mass`` and ``signal/topk_entropy`` read the policy's 10 most likely next
tokens (:func:`topk_signals`)."""


def topk_signals(stats: Tensor, mask: Tensor) -> tuple[float, float]:
    """Token means of the top-k mass and the top-k entropy, from the sampler's ``(B, T, 2)``
    ``topk_stats`` and the ``(B, T)`` response mask; NaN for an all-masked batch."""
    if stats.dim() != 3 or stats.shape[-1] != 2 or stats.shape[:2] != mask.shape:
        raise ValueError(
            f"stats must be (B, T, 2) for a (B, T) mask, got {tuple(stats.shape)} and "
            f"{tuple(mask.shape)}"
        )
    m = mask.to(torch.float64)
    n = float(m.sum())
    if n == 0:
        return math.nan, math.nan
    total = (stats.to(torch.float64) * m[..., None]).sum(dim=(0, 1)) / n
    return float(total[0]), float(total[1])


def mc_entropy(logprobs: Tensor, mask: Tensor) -> float:
    """Per-token entropy estimate ``-sum(logprobs * mask) / sum(mask)`` in nats.

    Args:
        logprobs: ``(B, T)`` log-probabilities of the sampled tokens under the sampling policy.
        mask: ``(B, T)`` 1 on response tokens.
    """
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} differ")
    n = float(mask.sum())
    if n == 0:
        raise ValueError("no response tokens to estimate the entropy from")
    return float(-(logprobs.double() * mask.double()).sum() / n)


def ensemble_disagreement(members: np.ndarray) -> float:
    """Mean over samples of the population standard deviation across members, ``(n, K)`` in."""
    x = np.asarray(members, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"members must be (n, K) with K >= 2, got {x.shape}")
    return float(x.std(axis=1).mean())


def mahalanobis(x: np.ndarray, ref: np.ndarray, *, shrinkage: float = 0.1) -> np.ndarray:
    """Mahalanobis distance of every row of ``x`` ``(n, H)`` to the distribution of ``ref``
    ``(m, H)``: mean and covariance of ``ref``, the covariance shrunk towards its diagonal mean
    (``(1 - s) C + s tr(C)/H I``) so that it is invertible with ``m < H``."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if x.ndim != 2 or ref.ndim != 2 or x.shape[1] != ref.shape[1] or len(ref) < 2:
        raise ValueError(f"need x (n, H) and ref (m >= 2, H), got {x.shape} and {ref.shape}")
    if not 0 < shrinkage <= 1:
        raise ValueError(f"shrinkage must lie in (0, 1], got {shrinkage}")
    mu = ref.mean(axis=0)
    cov = np.cov(ref, rowvar=False).reshape(ref.shape[1], ref.shape[1])
    scale = np.trace(cov) / cov.shape[0] or 1.0
    cov = (1 - shrinkage) * cov + shrinkage * scale * np.eye(cov.shape[0])
    diff = x - mu
    return np.sqrt(np.einsum("nh,nh->n", diff, np.linalg.solve(cov, diff.T).T))


class OutlierReference:
    """The initial distribution :func:`outlier_rate` compares with, fitted once per run.

    ``ref`` ``(m, H)``: hidden states of initial-policy samples; its even rows give the mean and
    the shrunk covariance (as :func:`mahalanobis`; kept as a Cholesky factor), its odd rows the
    ``quantile`` of their distances, the cutoff. :meth:`rate` then costs one triangular solve
    per evaluation instead of a covariance, a factorisation and the calibration distances.
    """

    def __init__(self, ref: np.ndarray, *, quantile: float = 0.95, shrinkage: float = 0.1) -> None:
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
        if not 0 < shrinkage <= 1:
            raise ValueError(f"shrinkage must lie in (0, 1], got {shrinkage}")
        ref = np.asarray(ref, dtype=np.float64)
        if ref.ndim != 2 or len(ref) < 4:
            raise ValueError(
                f"need at least 4 reference rows (2 to fit, 2 to calibrate), got {ref.shape}"
            )
        fit, calibrate = torch.from_numpy(ref[0::2]), ref[1::2]
        self.mean = fit.mean(dim=0)  # (H,)
        cov = torch.cov(fit.T).reshape(ref.shape[1], ref.shape[1])
        scale = float(torch.trace(cov)) / cov.shape[0] or 1.0
        cov = (1 - shrinkage) * cov + shrinkage * scale * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.chol = torch.linalg.cholesky(cov)  # (H, H) lower, cov = L L^T
        self.cutoff = float(np.quantile(self.distance(calibrate), quantile))

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(n,)`` of the rows of ``x`` ``(n, H)``: ``|L^-1 (x - mu)|``.

        The linear algebra runs in torch, on torch's threads: numpy's BLAS would start a pool
        of its own threads, whose busy-waiting after each call showed as CPU time the run
        spent on nothing (``benchmarks/bench_monitor.py``)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.mean):
            raise ValueError(f"need x (n, {len(self.mean)}), got {x.shape}")
        diff = (torch.from_numpy(x) - self.mean).T  # (H, n)
        z = torch.linalg.solve_triangular(self.chol, diff, upper=False)
        return torch.sqrt((z * z).sum(dim=0)).numpy()

    def rate(self, x: np.ndarray) -> float:
        """Share of the rows of ``x`` beyond the cutoff."""
        return float((self.distance(x) > self.cutoff).mean())


def outlier_rate(
    x: np.ndarray, ref: np.ndarray, *, quantile: float = 0.95, shrinkage: float = 0.1
) -> float:
    """Share of rows of ``x`` farther (Mahalanobis, :func:`mahalanobis`) from the initial
    distribution than the ``quantile`` of fresh initial samples: ``ref``'s even rows give the
    mean and covariance, its odd rows (unseen by them) the cutoff, so that ``x`` drawn like
    ``ref`` exceeds it with probability ``1 - quantile`` (an in-sample cutoff would be biased
    low in high dimension and flag fresh in-distribution samples); more when the policy's
    samples leave the initial distribution. Equal to ``OutlierReference(ref).rate(x)``, which a
    loop fits once per run."""
    return OutlierReference(ref, quantile=quantile, shrinkage=shrinkage).rate(x)


def token_nll(logprobs: Tensor, mask: Tensor) -> np.ndarray:
    """Per-sample negative log-likelihood per response token, ``(B,)`` on the CPU from ``(B, T)``
    log-probabilities of the sampled tokens (under any model, on any device) and the response
    mask; NaN for a sample without response tokens (a completion a trainer masked out), which
    :func:`unlikely_cutoff` and :func:`unlikely_rate` leave out."""
    if not isinstance(logprobs, Tensor) or not isinstance(mask, Tensor):
        raise TypeError("token_nll takes torch tensors (logprobs and mask, both (B, T))")
    if logprobs.ndim != 2 or logprobs.shape != mask.shape:
        raise ValueError(
            f"need logprobs and mask of one (B, T) shape, got {tuple(logprobs.shape)} and "
            f"{tuple(mask.shape)}"
        )
    lp = logprobs.detach().double()
    m = mask.detach().to(lp.device).double()
    total = -torch.where(m > 0, lp, torch.zeros_like(lp)).sum(dim=-1)  # padding may hold -inf
    tokens = m.sum(dim=-1)
    nll = torch.where(tokens > 0, total / tokens.clamp(min=1.0), torch.full_like(total, math.nan))
    return nll.cpu().numpy()


def unlikely_cutoff(nll: np.ndarray, quantile: float = UNLIKELY_QUANTILE) -> float:
    """The ``quantile`` of the initial policy's own per-token NLLs ``(n,)`` (:func:`token_nll`;
    NaN rows, and infinite ones, which no finite cutoff can sit among, left out), the cutoff of
    :func:`unlikely_rate`.

    Raises:
        ValueError: not an ``(n,)`` array, a quantile outside (0, 1), or no finite NLL.
    """
    x = np.asarray(nll, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"need an (n,) array of NLLs, got shape {x.shape}")
    if not 0 < quantile < 1:
        raise ValueError(f"the unlikely-sample quantile must lie in (0, 1), got {quantile}")
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise ValueError("no finite NLL to take the unlikely-sample cutoff from")
    return float(np.quantile(x, quantile))


def unlikely_rate(nll: np.ndarray, cutoff: float) -> float:
    """Share of samples whose per-token NLL under the initial policy (:func:`token_nll`; NaN
    rows left out, an infinite NLL counted as past any cutoff) exceeds ``cutoff``
    (:func:`unlikely_cutoff`, fixed once per run): about ``1 - q`` for samples drawn like the
    initial policy's (the initial samples themselves give the share of them past their own
    quantile, one sample when there are fewer than ``1 / (1 - q)``), more as the policy writes
    what the initial policy would not.

    Raises:
        ValueError: not an ``(n,)`` array, no NLL (all NaN or empty), or a cutoff that is not a
            finite number.
    """
    x = np.asarray(nll, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"need an (n,) array of NLLs, got shape {x.shape}")
    x = x[~np.isnan(x)]
    if len(x) == 0:
        raise ValueError("no NLL to count unlikely samples in (all NaN or empty)")
    try:
        c = float(cutoff)
    except (TypeError, ValueError):
        c = math.nan
    if not math.isfinite(c):
        raise ValueError(f"the unlikely-sample cutoff must be a finite number, got {cutoff!r}")
    return float((x > c).mean())


def _log_ratio(row: Mapping[str, float], first: Mapping[str, float], key: str) -> float:
    """``log(row[key] / first[key])``; 0 when either is missing or not positive."""
    now, then = row.get(key), first.get(key)
    if now is None or then is None or not now > 0 or not then > 0:
        return 0.0
    return math.log(now / then)


def features(row: Mapping[str, float], first: Mapping[str, float]) -> dict[str, float]:
    """The monitor's features (:data:`FEATURES`) of an evaluation ``row`` relative to the run's
    ``first`` row (both with the evaluator's keys, ``signal/*`` included when measured). Every
    feature is 0 on the first row; missing signals count as 0."""

    def drop(key: str) -> float:  # first minus now; 0 when the signal is not measured
        if key not in row or key not in first:
            return 0.0
        return float(first[key]) - float(row[key])

    d = max(float(row.get("d", 0.0)), 0.0) - max(float(first.get("d", 0.0)), 0.0)
    spread = float(first.get("signal/proxy_std", 0.0)) or 1.0
    gain = (0.0 - drop("reward/proxy")) / spread
    return {
        "d": d,
        "proxy_gain": gain,
        "proxy_per_d": gain / d if d > 1e-6 else 0.0,
        "length_drift": abs(_log_ratio(row, first, "length/mean")),
        "distinct2_drop": drop("diversity/distinct2"),
        "entropy_drop": drop("signal/entropy"),
        "ensemble_growth": _log_ratio(row, first, "signal/ensemble_std"),
        "outlier_excess": 0.0 - drop("signal/outlier_rate"),  # 0.0 - x: no -0.0 in logs
        "unlikely_excess": 0.0 - drop("signal/unlikely_rate"),
    }
