"""Gold-free signals (proxygap/monitor/signals.py) against hand values and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from proxygap.monitor.signals import (
    FEATURES,
    ensemble_disagreement,
    features,
    mahalanobis,
    mc_entropy,
    outlier_rate,
    token_nll,
    unlikely_cutoff,
    unlikely_rate,
)


def test_mc_entropy_is_minus_the_mean_token_log_prob():
    # two rows: tokens with log-probs (-1, -2) and (-3, padding): (1 + 2 + 3) / 3 = 2 nats
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert mc_entropy(logp, mask) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no response tokens"):
        mc_entropy(logp, torch.zeros_like(mask))


def test_ensemble_disagreement_is_the_mean_population_sd_across_members():
    members = np.array([[0.0, 2.0], [1.0, 1.0], [-1.0, 3.0]])  # SDs 1, 0, 2
    assert ensemble_disagreement(members) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        ensemble_disagreement(np.ones((3, 1)))


def test_mahalanobis_matches_a_naive_loop_with_the_shrunk_covariance():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 4)) @ np.diag([1.0, 2.0, 0.5, 3.0])
    x = rng.normal(size=(7, 4))
    s = 0.2
    cov = np.cov(ref, rowvar=False)
    shrunk = (1 - s) * cov + s * np.trace(cov) / 4 * np.eye(4)
    inv = np.linalg.inv(shrunk)
    mu = ref.mean(axis=0)
    naive = [math.sqrt((r - mu) @ inv @ (r - mu)) for r in x]
    np.testing.assert_allclose(mahalanobis(x, ref, shrinkage=s), naive, rtol=1e-10)


def test_outlier_rate_of_fresh_in_distribution_samples_is_one_minus_q_in_high_dimension():
    # 64 initial samples of a 64-dimensional latent (the reward model's width): fresh samples of
    # the same distribution must exceed the cutoff about 5% of the time (an in-sample cutoff
    # flags over half of them here); over 20 draws the mean rate lies within [2%, 10%]
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(20):
        ref = rng.normal(size=(64, 64))
        fresh = rng.normal(size=(500, 64))
        rates.append(outlier_rate(fresh, ref, quantile=0.95))
    assert 0.02 <= np.mean(rates) <= 0.10
    ref = rng.normal(size=(64, 64))
    assert outlier_rate(ref + 10.0, ref, quantile=0.95) == 1.0
    with pytest.raises(ValueError, match="at least 4"):
        outlier_rate(ref[:2], ref[:3])


def test_token_nll_is_the_per_sample_mean_over_response_tokens():
    # rows: (-1, -3) -> 2; (-4, padding -inf) -> 4; no response tokens -> NaN (left out)
    logp = torch.tensor([[-1.0, -3.0], [-4.0, -math.inf], [-7.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    nll = token_nll(logp, mask)
    np.testing.assert_allclose(nll[:2], [2.0, 4.0])
    assert math.isnan(nll[2])
    with pytest.raises(ValueError, match=r"one \(B, T\) shape"):
        token_nll(logp, mask[:, :1])
    with pytest.raises(ValueError, match=r"one \(B, T\) shape"):
        token_nll(logp[0], mask[0])
    with pytest.raises(TypeError, match="torch tensors"):
        token_nll(logp.numpy(), mask)  # type: ignore[arg-type]


def test_unlikely_rate_counts_samples_past_the_initial_quantile():
    # initial NLLs 1..100: the 0.99-quantile is 99.01 (numpy's linear interpolation), and only
    # 100 lies past it: 1 of 100
    init = np.arange(1.0, 101.0)
    cutoff = unlikely_cutoff(init)
    assert cutoff == pytest.approx(99.01)
    assert unlikely_rate(init, cutoff) == pytest.approx(0.01)
    # 16 initial samples: one sample past the quantile, 1/16 rather than 1%
    assert unlikely_rate(init[:16], unlikely_cutoff(init[:16])) == pytest.approx(1 / 16)
    # a later policy: 50 and 99 below, 100, 150 and 200 past; a masked-out row (NaN) left out
    later = np.array([50.0, 99.0, 100.0, 150.0, 200.0, math.nan])
    assert unlikely_rate(later, cutoff) == pytest.approx(3 / 5)
    # NaN rows do not move the cutoff either
    assert unlikely_cutoff(np.append(init, math.nan)) == pytest.approx(99.01)
    # a token the initial policy gives probability 0: an infinite NLL is past any cutoff, and
    # stays out of the quantile
    assert unlikely_rate(np.array([1.0, 1.0, math.inf]), 2.0) == pytest.approx(1 / 3)
    assert unlikely_cutoff(np.append(init, math.inf)) == pytest.approx(99.01)
    with pytest.raises(ValueError, match="all NaN or empty"):
        unlikely_rate(np.array([math.nan]), cutoff)
    with pytest.raises(ValueError, match="no finite NLL"):
        unlikely_cutoff(np.array([]))
    with pytest.raises(ValueError, match="finite number, got nan"):
        unlikely_rate(init, math.nan)
    with pytest.raises(ValueError, match="finite number, got None"):
        unlikely_rate(init, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\), got 99"):
        unlikely_cutoff(init, 99)
    with pytest.raises(ValueError, match=r"\(n,\) array"):
        unlikely_cutoff(np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"\(n,\) array"):
        unlikely_rate(np.ones((2, 2)), cutoff)


def test_features_are_zero_on_the_first_row_and_read_drift_after():
    first = {
        "d": 0.0, "reward/proxy": 0.0, "signal/proxy_std": 2.0, "length/mean": 10.0,
        "diversity/distinct2": 0.8, "signal/entropy": 2.0, "signal/ensemble_std": 0.5,
        "signal/outlier_rate": 0.05, "signal/unlikely_rate": 0.01,
    }  # fmt: skip
    assert set(features(first, first)) == set(FEATURES)
    assert all(v == 0.0 for v in features(first, first).values())
    # and +0.0, not -0.0 (which logs print as "-0")
    assert all(math.copysign(1.0, v) == 1.0 for v in features(first, first).values())
    later = first | {
        "d": 2.0, "reward/proxy": 3.0, "length/mean": 5.0, "diversity/distinct2": 0.5,
        "signal/entropy": 1.5, "signal/ensemble_std": 1.0, "signal/outlier_rate": 0.45,
        "signal/unlikely_rate": 0.26,
    }  # fmt: skip
    f = features(later, first)
    assert f["d"] == 2.0
    assert f["proxy_gain"] == pytest.approx(1.5)  # 3 / spread 2
    assert f["proxy_per_d"] == pytest.approx(0.75)
    assert f["length_drift"] == pytest.approx(math.log(2.0))  # |log(5 / 10)|
    assert f["distinct2_drop"] == pytest.approx(0.3)
    assert f["entropy_drop"] == pytest.approx(0.5)
    assert f["ensemble_growth"] == pytest.approx(math.log(2.0))
    assert f["outlier_excess"] == pytest.approx(0.4)
    assert f["unlikely_excess"] == pytest.approx(0.25)


def test_the_first_row_of_a_policy_that_starts_away_from_pi0_has_zero_features():
    # a Quark policy conditioned on its control token starts at a small KL: d counts its growth
    first = {"d": 0.3, "reward/proxy": 0.1, "length/mean": 10.0}
    assert features(first, first)["d"] == 0.0
    assert features(first | {"d": 1.3}, first)["d"] == pytest.approx(1.0)


def test_features_without_optional_signals_count_them_as_zero():
    first = {"d": 0.0, "reward/proxy": 0.0, "length/mean": 10.0}
    f = features({"d": 1.0, "reward/proxy": 0.5, "length/mean": 10.0}, first)
    assert f["ensemble_growth"] == f["outlier_excess"] == f["entropy_drop"] == 0.0
    assert f["unlikely_excess"] == 0.0
    assert f["proxy_gain"] == 0.5  # no spread measured: unit scale
