"""How often an interval for a best-of-n law covers the truth, on synthetic curves whose points
are correlated as real ones are (docs/methods.md §1, "Intervals").

Each synthetic prompt has its own law, ``alpha_p = alpha + a_p``, ``beta_p = beta + b_p`` with
normal prompt effects ``a_p, b_p``, plus independent noise at each point that grows with ``d``
(``noise_sd * d * e``) and vanishes at ``d = 0`` (curves are relative to ``n = 1``). The mean over
prompts of the population follows ``d (alpha - beta d)`` exactly, and the prompt effects make
the points of one averaged curve move together, as a shared pool does. For every replication a
fresh set of prompts is drawn, the curve is their mean, and two intervals are built:

- the naive one, ``coef ± z * se`` from the weighted least-squares fit that treats the points
  as independent (:func:`proxygap.analysis.laws.fit_bon_law` with the curve's standard errors);
- the bootstrap over prompts (:func:`proxygap.analysis.bootstrap.bootstrap_law`).

Coverage is the share of replications whose interval contains the true value.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from proxygap.analysis.bootstrap import bootstrap_law, curve_fit_se
from proxygap.analysis.laws import fit_bon_law

__all__ = ["Coverage", "correlated_bon_prompts", "interval_coverage"]


def correlated_bon_prompts(
    rng: np.random.Generator,
    d: np.ndarray,
    *,
    alpha: float,
    beta: float,
    n_prompts: int,
    alpha_sd: float,
    beta_sd: float,
    noise_sd: float,
) -> np.ndarray:
    """Per-prompt best-of-n curves ``(n_prompts, M)`` on the grid ``d`` (M,), see the module
    docstring; their population mean is ``d (alpha - beta d)``."""
    d = np.asarray(d, dtype=np.float64)
    a = alpha + alpha_sd * rng.standard_normal(n_prompts)  # (P,)
    b = beta + beta_sd * rng.standard_normal(n_prompts)
    noise = noise_sd * d * rng.standard_normal((n_prompts, d.size))  # (P, M)
    return d * (a[:, None] - b[:, None] * d) + noise


@dataclass(frozen=True)
class Coverage:
    """Measured coverage (share of ``n_reps`` replications) and mean interval widths.

    ``naive_*`` are the least-squares intervals ``coef ± z se``; ``boot_*`` the bootstrap
    percentile intervals; ``neighbour_corr`` is the median correlation, across prompts, of
    neighbouring points of the curve (the averaged curve's points correlate alike).
    """

    level: float
    n_reps: int
    n_boot: int
    naive_alpha: float
    naive_beta: float
    boot_alpha: float
    boot_beta: float
    boot_d_peak: float
    naive_alpha_width: float
    boot_alpha_width: float
    naive_beta_width: float
    boot_beta_width: float
    neighbour_corr: float


def interval_coverage(
    d: np.ndarray,
    *,
    alpha: float,
    beta: float,
    n_prompts: int,
    alpha_sd: float,
    beta_sd: float,
    noise_sd: float,
    n_reps: int,
    n_boot: int,
    level: float = 0.95,
    seed: int = 0,
) -> Coverage:
    """Coverage of the naive and bootstrap intervals over ``n_reps`` synthetic curves."""
    rng = np.random.default_rng(seed)
    z = NormalDist().inv_cdf((1 + level) / 2)
    true_peak = alpha / (2 * beta)
    hits = np.zeros((n_reps, 5), dtype=bool)
    widths = np.zeros((n_reps, 4))
    corr = []
    for i in range(n_reps):
        per = correlated_bon_prompts(
            rng, d, alpha=alpha, beta=beta, n_prompts=n_prompts,
            alpha_sd=alpha_sd, beta_sd=beta_sd, noise_sd=noise_sd,
        )  # fmt: skip
        mean = per.mean(axis=0)
        se = curve_fit_se(per.std(axis=0, ddof=1) / np.sqrt(n_prompts))
        fit = fit_bon_law(d, mean, se)
        boot = bootstrap_law("bon", d, per, se=se, n_boot=n_boot, level=level, seed=i)
        hits[i] = [
            abs(fit.alpha - alpha) <= z * fit.alpha_se,
            abs(fit.beta - beta) <= z * fit.beta_se,
            boot.alpha[0] <= alpha <= boot.alpha[1],
            boot.beta[0] <= beta <= boot.beta[1],
            boot.d_peak[0] <= true_peak <= boot.d_peak[1],
        ]
        widths[i] = [
            2 * z * fit.alpha_se,
            boot.alpha[1] - boot.alpha[0],
            2 * z * fit.beta_se,
            boot.beta[1] - boot.beta[0],
        ]
        if i < 20:
            c = np.corrcoef(per[:, 1:].T)  # (M-1, M-1), without the constant d = 0 point
            corr.append(np.median(np.diag(c, 1)))
    share, width = hits.mean(axis=0), widths.mean(axis=0)
    return Coverage(
        level=level,
        n_reps=n_reps,
        n_boot=n_boot,
        naive_alpha=float(share[0]),
        naive_beta=float(share[1]),
        boot_alpha=float(share[2]),
        boot_beta=float(share[3]),
        boot_d_peak=float(share[4]),
        naive_alpha_width=float(width[0]),
        boot_alpha_width=float(width[1]),
        naive_beta_width=float(width[2]),
        boot_beta_width=float(width[3]),
        neighbour_corr=float(np.median(corr)),
    )
