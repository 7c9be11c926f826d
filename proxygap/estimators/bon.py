"""Best-of-n: its KL from the sampling policy, and the unbiased all-n estimator from one pool.

Best-of-n draws ``n`` responses from ``pi0`` and keeps the one with the highest selection score
(the proxy reward). Gao, Schulman, Hilton 2023 ("Scaling Laws for Reward Model Overoptimization")
measure it for every ``n`` at once from a single pool of ``N >= n`` samples per prompt with an
unbiased estimator, and plot it against ``d = sqrt(KL_bon(n))``:

    E[value of the best of n] = sum_{i=n..N} C(i-1, n-1) / C(N, n) * value_(i)        (1)

where ``value_(i)`` is the value (gold, proxy, ...) of the i-th sample when the pool is sorted
ascending by the selection score (1-indexed). ``C(i-1, n-1) / C(N, n)`` is the probability that, in
a uniformly random n-subset of the pool, the sample of rank ``i`` is the largest: the subset must
contain it and ``n-1`` of the ``i-1`` samples below it. Equation (1) is therefore the exact average
over all ``C(N, n)`` subsets (a U-statistic), hence unbiased for the best-of-n of ``pi0`` when the
pool is i.i.d. from ``pi0``.

Ties in the selection score are broken uniformly at random; see :func:`best_of_n`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TensorLike = torch.Tensor | np.ndarray | Sequence[float] | float | int

__all__ = ["BestOfN", "best_of_n", "bon_log_weights", "bon_weights", "kl_bon"]


def _as_float64(x: TensorLike, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or array of numbers: {err}") from err
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    return t.to(torch.float64)


def _as_int_ns(ns: TensorLike | None, N: int, device: torch.device | None = None) -> torch.Tensor:
    """Validate ``ns`` against pool size ``N``; returns an int64 tensor of shape (J,)."""
    if ns is None:
        return torch.arange(1, N + 1, dtype=torch.int64, device=device)
    t = _as_float64(ns, "ns").reshape(-1)
    if t.numel() == 0:
        raise ValueError("ns is empty")
    if not torch.isfinite(t).all() or (t != torch.round(t)).any():
        raise ValueError(f"ns must be integers, got {t.tolist()[:8]}")
    lo, hi = int(t.min()), int(t.max())
    if lo < 1 or hi > N:
        raise ValueError(
            f"ns must lie in [1, N={N}] (n cannot exceed the pool), got min {lo} max {hi}"
        )
    return t.to(device=device, dtype=torch.int64)


def kl_bon(n: TensorLike) -> torch.Tensor:
    """KL divergence of the best-of-n policy from the sampling policy, in nats.

    ``KL_bon(n) = log n - (n - 1) / n`` (Gao et al. 2023; Beirami et al. 2024, "Theoretical
    guarantees on the best-of-n alignment policy"). Exact for continuous selection scores without
    ties, an upper bound otherwise (Beirami et al. 2024).

    Args:
        n: number of candidates, an int or any array/tensor of ints >= 1, shape (...).

    Returns:
        float64 tensor of shape (...) (0-dim for a scalar ``n``).
    """
    t = _as_float64(n, "n")
    if not torch.isfinite(t).all() or (t != torch.round(t)).any():
        raise ValueError("n must be integers")
    if t.numel() and t.min() < 1:
        raise ValueError(f"n must be >= 1, got min {float(t.min()):g}")
    return torch.log(t) - (t - 1.0) / t


def _log_factorials(N: int, device: torch.device | None = None) -> torch.Tensor:
    """``log k!`` for k = 0..N via ``torch.lgamma``, shape (N + 1,)."""
    return torch.lgamma(torch.arange(N + 1, dtype=torch.float64, device=device) + 1.0)


def _unnormalised_log_weights(N: int, ns: torch.Tensor, logfact: torch.Tensor) -> torch.Tensor:
    """``log C(i-1, n-1) - log C(N, n)`` for int64 ``ns`` (J,) and ranks i = 1..N; (J, N).

    Entries with ``i < n`` are ``-inf``. The term ``log (i-n)!`` is a shifted copy of ``logfact``
    in every row (a Toeplitz matrix), read as contiguous windows of one padded vector instead of an
    elementwise gather; the ``+inf`` padding yields the ``-inf`` entries.
    """
    pad = torch.full((N - 1,), math.inf, dtype=torch.float64, device=logfact.device)
    padded = torch.cat([pad, logfact[:N]])  # (2N - 1,): padded[N - 1 + m] = log m!, +inf if m < 0
    windows = padded.unfold(0, N, 1)  # (N, N) view (no copy): row s = padded[s : s + N]
    log_i_minus_n = windows[N - ns]  # (J, N): log (i-n)! and +inf where i < n
    row = logfact[ns - 1] + logfact[N] - logfact[ns] - logfact[N - ns]  # (J,)
    return torch.sub(logfact[:N], log_i_minus_n).sub_(row[:, None])  # lgamma(i) = log (i-1)!


def bon_log_weights(N: int, ns: TensorLike | None = None) -> torch.Tensor:
    """Log of the best-of-n weight matrix of equation (1) (Gao et al. 2023).

    ``log W[j, i-1] = log C(i-1, n_j-1) - log C(N, n_j)`` for ranks ``i >= n_j`` and ``-inf``
    otherwise, ranks 1-indexed in ascending order of the selection score. Computed from
    ``torch.lgamma`` in float64; every row sums to 1 (``logsumexp`` 0).

    Args:
        N: pool size, >= 1.
        ns: the n values, shape (J,), each in [1, N]; default all 1..N.

    Returns:
        float64 tensor of shape (J, N).
    """
    if isinstance(N, bool) or not isinstance(N, int | np.integer) or N < 1:
        raise ValueError(f"N must be an int >= 1, got {N!r}")
    N = int(N)
    logw = _unnormalised_log_weights(N, _as_int_ns(ns, N), _log_factorials(N))  # (J, N)
    # Hockey-stick identity: sum_i C(i-1, n-1) = C(N, n), so each row sums to 1 exactly. lgamma
    # rounding leaves a relative error of ~1e-11 per weight at N = 10^4; dividing by the computed
    # row sum makes the rows sum to 1 to float64 rounding.
    return logw - torch.logsumexp(logw, dim=1, keepdim=True)


def bon_weights(N: int, ns: TensorLike | None = None) -> torch.Tensor:
    """Best-of-n weights ``W[j, i-1] = C(i-1, n_j-1) / C(N, n_j)`` (0 for ``i < n_j``), (J, N).

    See :func:`bon_log_weights`. Row j is the distribution of the rank of the best of ``n_j``
    samples drawn without replacement from a pool of ``N``.
    """
    return torch.exp(bon_log_weights(N, ns))


@dataclass(frozen=True)
class BestOfN:
    """Best-of-n estimates for every requested n.

    Attributes:
        ns: int64 (J,), the n values.
        mean: float64 (J,) or (J, K): per-prompt estimates averaged over the P prompts.
        stderr: same shape as ``mean``: standard error of that average over prompts,
            ``std(ddof=1) / sqrt(P)``; NaN when P == 1 (a spread cannot be estimated from one
            prompt). It does not include the within-pool sampling error of each prompt.
        per_prompt: float64 (P, J) or (P, J, K): equation (1) for each prompt.
    """

    ns: torch.Tensor
    mean: torch.Tensor
    stderr: torch.Tensor
    per_prompt: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        """``KL_bon(n)`` for each n, float64 (J,); ``d = kl.sqrt()`` is the x-axis of Gao et al."""
        return kl_bon(self.ns)


def _average_ties(sorted_select: torch.Tensor, sorted_values: torch.Tensor) -> torch.Tensor:
    """Replace each run of equal ``sorted_select`` by the mean of its values.

    Args:
        sorted_select: (P, N), ascending along dim 1.
        sorted_values: (P, N, K), in the same order.

    Returns:
        (P, N, K) tensor.
    """
    P, N, K = sorted_values.shape
    new_group = torch.ones_like(sorted_select, dtype=torch.bool)  # (P, N)
    new_group[:, 1:] = sorted_select[:, 1:] != sorted_select[:, :-1]
    if bool(new_group.all()):
        return sorted_values
    group = torch.cumsum(new_group, dim=1) - 1  # (P, N), group index within each prompt
    group = (group + N * torch.arange(P, device=group.device)[:, None]).reshape(-1)  # (P*N,)
    flat = sorted_values.reshape(P * N, K)
    sums = torch.zeros_like(flat).index_add_(0, group, flat)  # (P*N, K)
    counts = torch.zeros(P * N, dtype=flat.dtype, device=flat.device)
    counts.index_add_(0, group, torch.ones_like(counts))
    means = sums / counts.clamp(min=1.0)[:, None]
    return means[group].reshape(P, N, K)


def best_of_n(
    select: TensorLike,
    values: TensorLike,
    ns: TensorLike | None = None,
    *,
    chunk: int = 256,
) -> BestOfN:
    """Unbiased best-of-n estimates of ``values`` for every n, from one pool per prompt.

    Implements equation (1) (Gao et al. 2023): per prompt, sort the pool ascending by ``select``
    once, then ``per_prompt[p, j] = sum_i W[j, i] * values_sorted[p, i]`` with ``W`` from
    :func:`bon_weights`. The result is the exact expectation, over a uniformly random n-subset of
    the pool (without replacement), of the value of the subset's highest-``select`` sample.
    ``W`` is built ``chunk`` rows at a time, so N = 10^4 with all n never holds the full
    (N, N) matrix (800 MB in float64).

    Ties rule: ties in ``select`` are broken uniformly at random, and the estimate is the exact
    average over tie-breaks. That equals replacing the values of each group of tied samples by the
    group mean before applying ``W``. Proof: random tie-breaking is sorting by ``(select, U)``
    with ``U`` i.i.d. continuous, which picks uniformly among the tied maxima of any subset. Under
    ``(select, U)`` a tied group occupies a fixed block of sorted positions and its members are
    in uniformly random order within the block, so each position of the block holds each member
    with equal probability and ``E_U[values_sorted[i]]`` is the group mean. Equation (1) is linear
    in ``values_sorted``, so its average over ``U`` is equation (1) applied to those means.

    Args:
        select: (P, N) selection scores (the proxy) for P prompts with N samples each.
        values: (P, N) or (P, N, K) scores to report for the selected sample (gold, proxy, ...).
        ns: the n values, shape (J,), each in [1, N]; default all 1..N.
        chunk: number of n values per block of the weight matrix (memory ``8 * chunk * N`` bytes
            per temporary).

    Returns:
        :class:`BestOfN` with ``mean``/``stderr`` (J[, K]) and ``per_prompt`` (P, J[, K]),
        float64, on the device of ``select``.

    Raises:
        ValueError: wrong shapes, an n outside [1, N], NaN in ``select``, NaN or inf in
            ``values`` (an infinite value makes equation (1) undefined), or ``chunk < 1``.
    """
    sel = _as_float64(select, "select")
    val = _as_float64(values, "values").to(sel.device)
    if sel.ndim != 2:
        raise ValueError(f"select must have shape (P, N), got shape {tuple(sel.shape)}")
    P, N = sel.shape
    if P == 0 or N == 0:
        raise ValueError(f"select must have at least one prompt and one sample, got {(P, N)}")
    if val.ndim not in (2, 3) or tuple(val.shape[:2]) != (P, N):
        raise ValueError(
            f"values must have shape (P, N) or (P, N, K) matching select {(P, N)}, "
            f"got shape {tuple(val.shape)}"
        )
    if torch.isnan(sel).any():
        raise ValueError(f"select contains NaN ({int(torch.isnan(sel).sum())} entries)")
    if not torch.isfinite(val).all():
        raise ValueError(
            f"values contains NaN or inf ({int((~torch.isfinite(val)).sum())} entries)"
        )
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    ns_t = _as_int_ns(ns, N, device=sel.device)

    v = val if val.ndim == 3 else val.unsqueeze(-1)  # (P, N, K)
    K = v.shape[-1]
    sorted_sel, order = torch.sort(sel, dim=1, stable=True)  # (P, N), ascending
    v_sorted = torch.gather(v, 1, order.unsqueeze(-1).expand(P, N, K))  # (P, N, K)
    v_sorted = _average_ties(sorted_sel, v_sorted)
    flat = v_sorted.permute(1, 0, 2).reshape(N, P * K)  # (N, P*K)

    logfact = _log_factorials(N, device=sel.device)
    J = ns_t.numel()
    out = torch.empty(J, P * K, dtype=torch.float64, device=sel.device)  # (J, P*K)
    for start in range(0, J, chunk):
        w = _unnormalised_log_weights(N, ns_t[start : start + chunk], logfact).exp_()  # (c, N)
        # Normalise by the computed row sum, as in bon_log_weights (hockey-stick identity).
        out[start : start + chunk] = (w @ flat) / w.sum(dim=1, keepdim=True)
    per_prompt = out.reshape(J, P, K).permute(1, 0, 2)  # (P, J, K)

    mean = per_prompt.mean(dim=0)  # (J, K)
    if P > 1:
        stderr = per_prompt.std(dim=0, correction=1) / math.sqrt(P)
    else:
        stderr = torch.full_like(mean, math.nan)
    if val.ndim == 2:
        per_prompt, mean, stderr = per_prompt[..., 0], mean[..., 0], stderr[..., 0]
    return BestOfN(ns=ns_t, mean=mean, stderr=stderr, per_prompt=per_prompt.contiguous())
