"""f-DPG: policy-gradient advantages for minimising ``D_f(pi || p)`` towards the KL-regularised
target ``p(y) ∝ pi0(y) exp(r(y)/beta)`` (Go et al. 2023, "Aligning Language Models with
Preferences through f-divergence Minimization"; docs/methods.md §7).

Derivation. With ``D_f(pi || p) = E_{y~p}[f(pi(y)/p(y))]`` (``f`` convex, ``f(1) = 0``) and ``p``
not depending on the policy parameters ``theta``,

    grad D_f = sum_y p(y) f'(pi(y)/p(y)) grad pi(y) / p(y)
             = E_{y~pi}[f'(pi(y)/p(y)) grad log pi(y)],

so ``A(y) = -f'(pi(y)/p(y))`` is a pseudo-reward whose REINFORCE gradient ``E_pi[A grad log pi]``
is ``-grad D_f``; any baseline ``b`` may be subtracted since ``E_pi[grad log pi] = 0``. Writing
``l(y) = log pi(y) - log pi0(y)`` and ``Z = E_{pi0}[exp(r/beta)]``,

    log(pi(y)/p(y)) = l(y) - r(y)/beta + log Z.

``Z`` is unknown; it is estimated by self-normalised importance sampling from the policy's own
samples, ``Z = E_{y~pi}[exp(r(y)/beta - l(y))] ≈ sum_i w_i exp(r_i/beta - l_i)`` with sample
weights ``w_i`` (``1/G`` for ``G`` samples of one prompt). The divergences and their links:

- reverse KL ``KL(pi || p)``: ``f(t) = t log t``, ``f'(t) = log t + 1``, so
  ``A = r/beta - l - log Z - 1``: the KL-penalised reward ``r/beta - log(pi/pi0)`` up to a
  constant (RLHF with a KL penalty, Ziegler et al. 2019; ``Z`` then only shifts the baseline);
- forward KL ``KL(p || pi)``: ``f(t) = -log t``, ``f'(t) = -1/t``, so ``A = p/pi``, the
  self-normalised importance weight (times ``G``) of distributional policy gradient (DPG/GDC,
  Khalifa et al. 2021); bounded by ``G`` because the weights sum to one;
- Jensen-Shannon (twice JS(pi, p)): ``f(t) = t log t - (t + 1) log((t + 1)/2)``,
  ``f'(t) = log(2t/(1 + t)) = log 2 + s - softplus(s)`` with ``s = log t``;
- total variation: ``f(t) = |t - 1| / 2``, not differentiable at ``t = 1``; the link is its
  subgradient ``f'(t) = sign(t - 1) / 2 = sign(s) / 2`` with ``sign(0) = 0`` (any value in
  ``[-1/2, 1/2]`` is a subgradient there; 0 is the one that leaves a sample with ``pi = p``
  alone). The pseudo-reward is ``+1/2`` for a sample the target favours more than the policy
  (``pi < p``), ``-1/2`` for one it favours less: it says which side of ``p`` a sample is on,
  not how far, so its advantages lie in ``[-1, 1]`` whatever the reward's scale and do not
  shrink as ``pi`` nears ``p``. Its ``f'`` is a step, not invertible, so TV has no f-DPO loss
  (:mod:`proxygap.losses.fdpo` needs an invertible link); it is an f-DPG option only.

The other direction, ``D_f(p || pi)``, needs no option of its own: ``D_f(p || pi) =
D_g(pi || p)`` with the perspective ``g(t) = t f(1/t)``, which maps ``t log t`` to ``-log t`` and
back and leaves JS and TV unchanged. So ``KL(p || pi)`` is ``forward_kl``, ``KL(pi || p)`` is
``reverse_kl``, and JS and TV are symmetric: the four options cover both directions.

The baseline is the weighted mean of ``A`` within each group (so a group's advantages average to
0). With ``Z`` estimated from the same samples the estimator is consistent, not unbiased, as in
Go et al.; given the true ``log Z`` (``log_z``) its expectation is exactly ``-grad D_f``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DIVERGENCES = ("reverse_kl", "forward_kl", "js", "tv")
"""The divergences :func:`fdpg_advantages` supports."""


def _link(divergence: str, s: Tensor) -> Tensor:
    """``f'(t)`` of ``divergence`` at ``t = exp(s)``, computed from ``s = log t``."""
    if divergence == "reverse_kl":
        return s + 1.0
    if divergence == "forward_kl":
        return -torch.exp(-s)
    if divergence == "js":
        return math.log(2.0) + s - F.softplus(s)
    return 0.5 * torch.sign(s)


def fdpg_advantages(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    divergence: str,
    group_size: int | None = None,
    sample_weights: Tensor | None = None,
    log_z: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Per-sample f-DPG advantages ``-f'(pi/p) - baseline`` (see the module docstring).

    Args:
        logprobs: ``(B,)`` sequence log-probabilities ``log pi(y_i|x)`` under the sampling
            policy (sums over response tokens).
        ref_logprobs: ``(B,)`` the same under the reference ``pi0``.
        rewards: ``(B,)`` rewards ``r(x, y_i)``.
        beta: temperature of the target, ``> 0`` (the KL coefficient of RLHF).
        divergence: one of :data:`DIVERGENCES`.
        group_size: ``G``, samples per prompt in consecutive rows (each prompt has its own
            target and its own ``Z``); ``None``: all rows share one prompt.
        sample_weights: ``(B,)`` non-negative weights of the samples, normalised within each
            group (default uniform); e.g. ``pi(y)`` when the rows enumerate every outcome.
        log_z: ``(B // G,)`` known ``log Z`` per group, replacing the estimate.

    Returns:
        ``(advantages (B,), metrics)``, the advantages detached from any graph. Metrics:
        ``fdpg/log_z`` (mean over groups), ``fdpg/ess`` (effective sample size of the
        normalised importance weights ``p/pi`` as a fraction of ``G``, mean over groups),
        ``fdpg/pseudo_reward`` (mean of ``-f'`` before the baseline) and ``fdpg/log_ratio``
        (mean of ``log(pi/p)``).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {list(DIVERGENCES)}, got {divergence!r}")
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and beta > 0):
        raise ValueError(f"beta must be a number > 0, got {beta!r}")
    if not (math.isfinite(beta)):
        raise ValueError(f"beta must be finite, got {beta!r}")
    for name, x in (("ref_logprobs", ref_logprobs), ("rewards", rewards)):
        if x.shape != logprobs.shape:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, logprobs {tuple(logprobs.shape)}; "
                "all must be (B,)"
            )
    if logprobs.dim() != 1 or logprobs.numel() == 0:
        raise ValueError(f"logprobs must be a non-empty (B,) tensor, got {tuple(logprobs.shape)}")
    n = logprobs.shape[0]
    g = n if group_size is None else group_size
    if g < 1 or n % g:
        raise ValueError(f"group_size must be >= 1 and divide the batch size {n}, got {g}")
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    lp, rp, r = (x.detach().to(dtype).view(-1, g) for x in (logprobs, ref_logprobs, rewards))
    if sample_weights is None:
        log_w = torch.full_like(lp, -math.log(g))
    else:
        w = sample_weights.detach().to(dtype).view(-1, g)
        if bool((w < 0).any()) or not bool((w.sum(dim=1) > 0).all()):
            raise ValueError("sample_weights must be >= 0 with a positive sum in every group")
        log_w = torch.log(w / w.sum(dim=1, keepdim=True))
    tilted = r / beta - (lp - rp)  # (P, G)  log of p(y) Z / pi(y)
    log_z_hat = torch.logsumexp(log_w + tilted, dim=1, keepdim=True)  # (P, 1)
    lz = log_z_hat if log_z is None else log_z.detach().to(dtype).view(-1, 1)
    s = lz - tilted  # (P, G)  log(pi/p)
    pseudo = -_link(divergence, s)  # (P, G)
    weights = log_w.exp()
    adv = pseudo - (weights * pseudo).sum(dim=1, keepdim=True)
    snis = torch.softmax(log_w + tilted, dim=1)  # normalised importance weights of p/pi
    with torch.no_grad():
        metrics = {
            "fdpg/log_z": float(log_z_hat.mean()),
            "fdpg/ess": float((1.0 / snis.square().sum(dim=1) / g).mean()),
            "fdpg/pseudo_reward": float(pseudo.mean()),
            "fdpg/log_ratio": float(s.mean()),
        }
    return adv.reshape(-1).to(logprobs.dtype), metrics
