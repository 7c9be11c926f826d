"""Tests for proxygap.analysis.bootstrap and .coverage: the bootstrap over prompts of law fits
and peaks, and its coverage on synthetic curves with correlated points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from proxygap.analysis.bootstrap import (
    bootstrap_law,
    curve_fit_se,
    law_replicates,
    percentile_interval,
    prompt_weights,
)
from proxygap.analysis.coverage import correlated_bon_prompts, interval_coverage
from proxygap.analysis.laws import (
    fit_bon_law,
    fit_law_batch,
    fit_rl_law,
    law_peaks,
    overoptimization,
)
from proxygap.estimators.bon import kl_bon
from proxygap.optimize.bon import log_spaced_ns


def demo_grid() -> np.ndarray:
    """The demo's d grid: log-spaced n up to 1024."""
    return np.sqrt(kl_bon(torch.from_numpy(log_spaced_ns(1024, 41))).numpy())


# ---------------------------------------------------------------- batched fits and peaks


@pytest.mark.parametrize("kind", ["bon", "rl"])
@pytest.mark.parametrize("weighted", [False, True])
def test_batched_fit_equals_one_fit_per_row(kind: str, weighted: bool) -> None:
    rng = np.random.default_rng(0)
    d = np.linspace(0.0, 3.0, 12)
    r = rng.normal(size=(5, 12)) + d * (0.8 - 0.2 * d)
    se = rng.uniform(0.05, 0.2, size=12) if weighted else None
    alpha, beta = fit_law_batch(kind, d, r, se)  # type: ignore[arg-type]
    fit = fit_bon_law if kind == "bon" else fit_rl_law
    for b in range(5):
        one = fit(d, r[b], se)
        assert alpha[b] == pytest.approx(one.alpha, abs=1e-12)
        assert beta[b] == pytest.approx(one.beta, abs=1e-12)


def test_law_peaks_by_hand() -> None:
    # bon: d* = a / (2b), R* = a^2 / (4b): (1, 0.25) -> 2, 1; a <= 0 < b -> 0, 0; b <= 0 -> inf.
    d, r = law_peaks("bon", np.array([1.0, -1.0, 1.0]), np.array([0.25, 0.5, 0.0]))
    assert d.tolist() == [2.0, 0.0, math.inf] and r.tolist() == [1.0, 0.0, math.inf]
    # rl: d* = exp(a / b - 1), R* = b d*: (1, 0.5) -> e, e / 2.
    d, r = law_peaks("rl", np.array([1.0, 1.0]), np.array([0.5, -1.0]))
    assert d[0] == pytest.approx(math.e) and r[0] == pytest.approx(math.e / 2)
    assert d[1] == math.inf and r[1] == math.inf


# ---------------------------------------------------------------- weights and intervals


def test_prompt_weights_resample_within_strata() -> None:
    w = prompt_weights([4, 6], 500, np.random.default_rng(0))
    assert w.shape == (500, 10)
    assert np.allclose(w.sum(axis=1), 1.0)
    # each stratum holds half the mass, in multiples of 1 / (P_s * 2)
    assert np.allclose(w[:, :4].sum(axis=1), 0.5) and np.allclose(w[:, 4:].sum(axis=1), 0.5)
    counts = w[:, :4] * 8
    assert np.allclose(counts, np.round(counts))
    assert w.mean(axis=0) == pytest.approx([1 / 8] * 4 + [1 / 12] * 6, abs=0.01)
    with pytest.raises(ValueError, match="at least one prompt"):
        prompt_weights([3, 0], 10, np.random.default_rng(0))


def test_percentile_interval_of_infinite_replicates_is_not_nan() -> None:
    x = np.array([1.0, 2.0, 3.0] + [math.inf] * 7)
    lo, hi = percentile_interval(x, 0.9)
    assert lo == 1.0 and hi == math.inf
    assert percentile_interval(np.arange(1.0, 101.0), 0.9) == (5.0, 95.0)


def test_fit_se_floors_the_first_point() -> None:
    assert curve_fit_se(np.array([0.0, 0.3, 0.2, 0.5])).tolist() == [0.2, 0.3, 0.2, 0.5]


# ---------------------------------------------------------------- replicates


def test_uniform_weights_reproduce_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    d = demo_grid()
    per = correlated_bon_prompts(
        rng, d, alpha=0.5, beta=0.12, n_prompts=16, alpha_sd=0.3, beta_sd=0.1, noise_sd=0.1
    )
    se = curve_fit_se(per.std(axis=0, ddof=1) / 4)
    reps = law_replicates("bon", d, per, np.full((1, 16), 1 / 16), se=se)
    fit = fit_bon_law(d, per.mean(axis=0), se)
    turn = overoptimization(d, per.mean(axis=0), se)
    assert reps.alpha[0] == pytest.approx(fit.alpha) and reps.beta[0] == pytest.approx(fit.beta)
    assert reps.d_peak[0] == pytest.approx(fit.d_peak)
    assert reps.observed_d_peak[0] == turn.d_peak
    assert reps.observed_gold_peak[0] == pytest.approx(turn.gold_peak)


def test_bootstrap_se_of_a_mean_slope_matches_its_formula() -> None:
    # Every prompt's curve is exactly a_p * d, so the fit returns alpha = mean(a_p), beta = 0 in
    # every replicate, and the bootstrap SD of a mean of P values is sd_pop(a) / sqrt(P), with
    # sd_pop the ddof=0 standard deviation of the P values.
    rng = np.random.default_rng(2)
    d = np.linspace(0.0, 2.0, 9)
    a = rng.normal(0.5, 0.4, size=32)
    boot = bootstrap_law("bon", d, a[:, None] * d, se=None, n_boot=20_000, seed=3)
    assert boot.alpha_se == pytest.approx(a.std() / math.sqrt(32), rel=0.03)
    assert boot.beta_se < 1e-12
    lo, hi = boot.alpha
    z = 1.959964
    assert lo == pytest.approx(a.mean() - z * boot.alpha_se, abs=0.1 * boot.alpha_se)
    assert hi == pytest.approx(a.mean() + z * boot.alpha_se, abs=0.1 * boot.alpha_se)
    # a convex curve (beta = -0.1 in every replicate) has no interior peak
    convex = bootstrap_law("bon", d, a[:, None] * d + 0.1 * d * d, se=None, n_boot=100)
    assert convex.share_no_peak == 1.0 and convex.d_peak == (math.inf, math.inf)


def test_law_misplaces_peak_reads_the_interval() -> None:
    rng = np.random.default_rng(4)
    d = demo_grid()
    per = correlated_bon_prompts(
        rng, d, alpha=0.6, beta=0.2, n_prompts=64, alpha_sd=0.2, beta_sd=0.05, noise_sd=0.05
    )
    boot = bootstrap_law("bon", d, per, se=None, n_boot=500)
    lo, hi = boot.d_peak
    assert lo < 1.5 < hi  # the truth, d* = 0.6 / 0.4
    assert not boot.law_misplaces_peak(1.5)
    assert boot.law_misplaces_peak(hi + 0.01) and boot.law_misplaces_peak(lo - 0.01)


# ---------------------------------------------------------------- coverage


def test_bootstrap_covers_correlated_curves_and_least_squares_does_not() -> None:
    # Prompt effects make neighbouring points ~0.98 correlated; 300 replications put the
    # Monte Carlo standard error of a 95% coverage at 1.3 points.
    cov = interval_coverage(
        demo_grid(), alpha=0.5, beta=0.12, n_prompts=64, alpha_sd=0.5, beta_sd=0.15,
        noise_sd=0.08, n_reps=300, n_boot=300,
    )  # fmt: skip
    assert cov.neighbour_corr > 0.95
    for share in (cov.boot_alpha, cov.boot_beta, cov.boot_d_peak):
        assert 0.90 <= share <= 0.99
    assert cov.naive_alpha < 0.86  # independent-point standard errors are too narrow
    assert cov.boot_alpha_width > 1.4 * cov.naive_alpha_width
