"""Best-of-n against a proxy, measured on gold (Gao et al. 2023, §3.1 and eq. 1).

All curves come from one pool of N base-policy samples per prompt: for every n the unbiased
estimator (:func:`proxygap.estimators.bon.best_of_n`) gives the expected gold and proxy score of
the proxy's pick, and ``KL_bon(n) = log n - (n-1)/n`` its divergence from the sampler. Gold is
reported relative to n = 1 (the pool mean), so that the law ``R(d) = d (alpha - beta d)`` with
``R(0) = 0`` applies directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from proxygap.analysis.bootstrap import LawBootstrap, bootstrap_law, curve_fit_se
from proxygap.analysis.laws import LawFit, Overoptimization, fit_bon_law, overoptimization
from proxygap.estimators.bon import best_of_n, kl_bon


def log_spaced_ns(pool_size: int, n_points: int) -> np.ndarray:
    """About ``n_points`` distinct integers from 1 to ``pool_size``, evenly spaced in log n."""
    ns = np.unique(np.round(np.geomspace(1, pool_size, n_points)).astype(np.int64))
    return ns


@dataclass
class BonCurve:
    """Best-of-n curve of one proxy: arrays over ``ns`` (means over prompts, standard errors)."""

    name: str
    ns: np.ndarray
    kl: np.ndarray
    d: np.ndarray
    gold: np.ndarray  # gold of the pick minus the pool mean (n = 1)
    gold_se: np.ndarray  # standard error over prompts of that difference
    proxy: np.ndarray  # proxy of the pick minus the pool mean
    proxy_se: np.ndarray
    fit: LawFit
    turn: Overoptimization
    boot: LawBootstrap | None = None  # intervals from a bootstrap over prompts, when asked for
    per_prompt: np.ndarray | None = field(default=None, repr=False)  # (P, J) gold, for pooling

    def rows(self) -> list[dict[str, Any]]:
        """One dict per n: ``name, n, kl, d, gold, gold_se, proxy, proxy_se``."""
        keys = ("kl", "d", "gold", "gold_se", "proxy", "proxy_se")
        return [
            {"name": self.name, "n": int(self.ns[i])}
            | {k: float(getattr(self, k)[i]) for k in keys}
            for i in range(len(self.ns))
        ]


def bon_curve(
    name: str,
    select: np.ndarray,
    gold: np.ndarray,
    *,
    ns: np.ndarray,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
    keep_per_prompt: bool = False,
) -> BonCurve:
    """Best-of-n curve for selection scores ``select`` (P, N) and gold scores ``gold`` (P, N).

    The proxy curve reports ``select`` itself (the score being optimised). Standard errors are
    over prompts, on the per-prompt difference from n = 1. With ``n_boot > 0`` (and P > 1) the
    law's coefficients and peak and the observed gold peak also get ``level`` intervals from
    ``n_boot`` bootstrap resamples of the prompts (:mod:`proxygap.analysis.bootstrap`, seeded by
    ``seed``): the per-prompt curves are reweighted and the law refitted with the same weights.
    ``keep_per_prompt`` keeps the per-prompt gold curves (P, J) on the result.
    """
    if select.shape != gold.shape or select.ndim != 2:
        raise ValueError(
            f"select and gold must be equal (P, N) arrays, got {select.shape}, {gold.shape}"
        )
    ns = np.asarray(ns, dtype=np.int64)
    if ns[0] != 1:
        ns = np.concatenate([[1], ns])
    values = torch.from_numpy(np.stack([gold, select], axis=-1))  # (P, N, 2)
    res = best_of_n(torch.from_numpy(select), values, torch.from_numpy(ns))
    per = res.per_prompt.numpy()  # (P, J, 2)
    rel = per - per[:, :1, :]
    P = rel.shape[0]
    mean = rel.mean(axis=0)
    se = rel.std(axis=0, ddof=1) / np.sqrt(P) if P > 1 else np.zeros_like(mean)
    kl = kl_bon(torch.from_numpy(ns)).numpy()
    d = np.sqrt(kl)
    fit_se = curve_fit_se(se[:, 0]) if P > 1 else None  # n = 1 has zero error by construction
    fit = fit_bon_law(d, mean[:, 0], fit_se)
    turn = overoptimization(d, mean[:, 0], se[:, 0])
    boot = None
    if n_boot > 0 and P > 1:
        boot = bootstrap_law(
            "bon", d, rel[:, :, 0], se=fit_se, n_boot=n_boot, level=level, seed=seed
        )
    return BonCurve(
        name=name,
        ns=ns,
        kl=kl,
        d=d,
        gold=mean[:, 0],
        gold_se=se[:, 0],
        proxy=mean[:, 1],
        proxy_se=se[:, 1],
        fit=fit,
        turn=turn,
        boot=boot,
        per_prompt=rel[:, :, 0] if keep_per_prompt else None,
    )


def pick_examples(
    select: np.ndarray, *, ns: list[int], per_n: int, seed: int
) -> dict[int, list[tuple[int, int]]]:
    """For each n, ``per_n`` (prompt, sample) indices of a proxy's best-of-n pick on random
    n-subsets of random prompts' pools — what a reader of the report looks at."""
    rng = np.random.default_rng(seed)
    P, N = select.shape
    out: dict[int, list[tuple[int, int]]] = {}
    for n in ns:
        if n > N:
            continue
        picks = []
        for _ in range(per_n):
            p = int(rng.integers(P))
            subset = rng.choice(N, size=n, replace=False)
            picks.append((p, int(subset[np.argmax(select[p, subset])])))
        out[n] = picks
    return out
