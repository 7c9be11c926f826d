"""Tests for proxygap.estimators.bon: weights, the all-n estimator, ties, KL of best-of-n."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest
import torch

from proxygap.estimators.bon import BestOfN, best_of_n, bon_log_weights, bon_weights, kl_bon


def brute_force_best_of_n(select: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Average over ALL n-subsets of the value of the subset's best; tied maxima share uniformly.

    select (N,), values (N, K) -> (K,).
    """
    total = np.zeros(values.shape[1])
    count = 0
    for subset in combinations(range(select.size), n):
        idx = np.array(subset)
        best = idx[select[idx] == select[idx].max()]  # the tied maxima of this subset
        total += values[best].mean(axis=0)
        count += 1
    return total / count


# ---------------------------------------------------------------- weights


def test_weights_hand_derived_n3() -> None:
    # Pool of N = 3 sorted ascending by the selection score, ranks i = 1, 2, 3.
    # n = 1: one sample drawn uniformly, so each rank with probability 1/3.
    # n = 2: C(3, 2) = 3 subsets {1,2}, {1,3}, {2,3}; their best ranks are 2, 3, 3
    #        -> P(best = 1, 2, 3) = 0, 1/3, 2/3; formula C(i-1, 1)/3 = 0/3, 1/3, 2/3.
    # n = 3: the whole pool, the best is always rank 3 -> 0, 0, 1.
    expected = torch.tensor(
        [[1 / 3, 1 / 3, 1 / 3], [0.0, 1 / 3, 2 / 3], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(bon_weights(3), expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(bon_weights(3, [2]), expected[1:2], rtol=0, atol=1e-15)
    log_w = bon_log_weights(3)
    assert log_w[1, 0] == -math.inf and log_w[2, 1] == -math.inf
    assert log_w.dtype == torch.float64 and log_w.shape == (3, 3)


def test_weights_match_exact_binomials() -> None:
    N = 30
    expected = torch.tensor(
        [
            [float(Fraction(math.comb(i - 1, n - 1), math.comb(N, n))) for i in range(1, N + 1)]
            for n in range(1, N + 1)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(bon_weights(N), expected, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("N", [1, 7, 1000, 10_000])
def test_weight_rows_sum_to_one(N: int) -> None:
    ns = sorted({1, min(2, N), max(1, N // 3), max(1, N - 1), N})
    w = bon_weights(N, ns)
    assert w.shape == (len(ns), N)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(len(ns), dtype=torch.float64))
    assert (w >= 0).all()


# ---------------------------------------------------------------- estimator vs references


@pytest.mark.parametrize("with_ties", [False, True])
def test_matches_all_subsets_brute_force(with_ties: bool) -> None:
    gen = torch.Generator().manual_seed(0 if with_ties else 1)
    P, N, K = 3, 8, 2
    if with_ties:  # few distinct scores, so most subsets have tied maxima
        select = torch.randint(0, 3, (P, N), generator=gen).to(torch.float64)
    else:
        select = torch.randn(P, N, generator=gen, dtype=torch.float64)
    values = torch.randn(P, N, K, generator=gen, dtype=torch.float64)
    result = best_of_n(select, values)
    assert result.per_prompt.shape == (P, N, K) and result.mean.shape == (N, K)
    for p in range(P):
        for n in range(1, N + 1):
            ref = brute_force_best_of_n(select[p].numpy(), values[p].numpy(), n)
            np.testing.assert_allclose(result.per_prompt[p, n - 1].numpy(), ref, atol=1e-12)
    torch.testing.assert_close(result.mean, result.per_prompt.mean(dim=0))


def test_monte_carlo_best_of_n() -> None:
    gen = torch.Generator().manual_seed(2)
    N, draws = 200, 20_000
    select = torch.randn(1, N, generator=gen, dtype=torch.float64)
    values = select + torch.randn(1, N, generator=gen, dtype=torch.float64)  # gold ~ proxy + noise
    ns = [1, 4, 32, 200]
    est = best_of_n(select, values, ns).per_prompt[0]
    # Each row of a random permutation starts with a uniformly random n-subset (no replacement).
    perm = torch.rand(draws, N, generator=gen).argsort(dim=1)  # (draws, N)
    for j, n in enumerate(ns):
        idx = perm[:, :n]  # (draws, n)
        best = idx.gather(1, select[0][idx].argmax(dim=1, keepdim=True))[:, 0]  # (draws,)
        picked = values[0][best]
        mc, mc_se = picked.mean().item(), picked.std().item() / math.sqrt(draws)
        if n == N:  # every draw is the whole pool
            assert est[j].item() == pytest.approx(mc, abs=1e-12)
        else:
            assert abs(est[j].item() - mc) < 4 * mc_se, (n, est[j].item(), mc, mc_se)


def test_n1_is_pool_mean_and_nN_is_value_at_max() -> None:
    gen = torch.Generator().manual_seed(3)
    select = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    values = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    r = best_of_n(select, values, [1, 50])
    torch.testing.assert_close(r.per_prompt[:, 0], values.mean(dim=1))
    at_max = values.gather(1, select.argmax(dim=1, keepdim=True))[:, 0]
    torch.testing.assert_close(r.per_prompt[:, 1], at_max, rtol=0, atol=1e-13)


def test_ties_at_max_share_uniformly() -> None:
    # Two samples tie for the top score: best-of-N picks either with probability 1/2.
    select = torch.tensor([[0.0, 1.0, 2.0, 2.0]])
    values = torch.tensor([[10.0, 20.0, 30.0, 50.0]])
    r = best_of_n(select, values, [4, 3])
    # n = 4: (30 + 50) / 2 = 40.
    # n = 3: subsets {0,1,2}->30, {0,1,3}->50, {0,2,3}->40, {1,2,3}->40; mean 160 / 4 = 40.
    torch.testing.assert_close(r.per_prompt[0], torch.tensor([40.0, 40.0], dtype=torch.float64))


def test_invariant_to_pool_order_with_ties() -> None:
    gen = torch.Generator().manual_seed(4)
    select = torch.randint(0, 5, (2, 40), generator=gen).to(torch.float64)
    values = torch.randn(2, 40, 3, generator=gen, dtype=torch.float64)
    perm = torch.randperm(40, generator=gen)
    a = best_of_n(select, values)
    b = best_of_n(select[:, perm], values[:, perm])
    torch.testing.assert_close(a.per_prompt, b.per_prompt, rtol=0, atol=1e-12)


def test_columns_chunks_and_ns_are_independent() -> None:
    gen = torch.Generator().manual_seed(5)
    select = torch.randn(3, 64, generator=gen, dtype=torch.float64)
    values = torch.randn(3, 64, 2, generator=gen, dtype=torch.float64)
    full = best_of_n(select, values)
    for chunk in (1, 7, 64, 1000):
        torch.testing.assert_close(
            best_of_n(select, values, chunk=chunk).per_prompt, full.per_prompt
        )
    col = best_of_n(select, values[..., 1])
    torch.testing.assert_close(col.per_prompt, full.per_prompt[..., 1])
    sub = best_of_n(select, values, [64, 5, 5])  # order and repeats kept
    torch.testing.assert_close(sub.per_prompt, full.per_prompt[:, [63, 4, 4]])
    assert sub.ns.tolist() == [64, 5, 5] and sub.ns.dtype == torch.int64


def test_stderr_over_prompts() -> None:
    gen = torch.Generator().manual_seed(6)
    select = torch.randn(5, 20, generator=gen, dtype=torch.float64)
    values = torch.randn(5, 20, generator=gen, dtype=torch.float64)
    r = best_of_n(select, values, [1, 3, 20])
    expected = r.per_prompt.numpy().std(axis=0, ddof=1) / math.sqrt(5)
    np.testing.assert_allclose(r.stderr.numpy(), expected, rtol=1e-12)
    single = best_of_n(select[:1], values[:1], [1, 3])
    assert torch.isnan(single.stderr).all()  # documented: undefined with one prompt
    assert isinstance(r, BestOfN)
    torch.testing.assert_close(r.kl, kl_bon(torch.tensor([1, 3, 20])))


def test_accepts_numpy_and_float32() -> None:
    select = np.array([[0.1, 0.3, 0.2]], dtype=np.float32)
    values = np.array([[1.0, 3.0, 2.0]], dtype=np.float32)
    r = best_of_n(select, values)
    assert r.mean.dtype == torch.float64
    # n = 2 weights on ranks (1, 2, 3) = (0, 1/3, 2/3); values by rank (1, 2, 3): 2/3 + 2 = 8/3.
    assert r.mean[1].item() == pytest.approx(8 / 3, abs=1e-12)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("select", "values", "ns", "match"),
    [
        (torch.zeros(5), torch.zeros(5), None, "select must have shape"),
        (torch.zeros(2, 5), torch.zeros(2, 4), None, "values must have shape"),
        (torch.zeros(2, 5), torch.zeros(3, 5, 2), None, "values must have shape"),
        (torch.zeros(2, 5), torch.zeros(2, 5), [0, 1], r"ns must lie in \[1, N=5\]"),
        (torch.zeros(2, 5), torch.zeros(2, 5), [6], r"ns must lie in \[1, N=5\]"),
        (torch.zeros(2, 5), torch.zeros(2, 5), [1.5], "ns must be integers"),
        (torch.zeros(2, 5), torch.zeros(2, 5), [], "ns is empty"),
        (torch.zeros(0, 5), torch.zeros(0, 5), None, "at least one prompt"),
        (torch.tensor([[0.0, math.nan]]), torch.zeros(1, 2), None, "select contains NaN"),
        (torch.zeros(1, 2), torch.tensor([[0.0, math.nan]]), None, "values contains NaN"),
        (torch.zeros(1, 2), torch.tensor([[0.0, math.inf]]), None, "values contains NaN or inf"),
    ],
)
def test_bad_inputs_raise(select, values, ns, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        best_of_n(select, values, ns)


def test_bad_chunk_and_weights_args() -> None:
    with pytest.raises(ValueError, match="chunk must be an int >= 1"):
        best_of_n(torch.zeros(1, 3), torch.zeros(1, 3), chunk=0)
    with pytest.raises(ValueError, match="N must be an int >= 1"):
        bon_weights(0)
    with pytest.raises(ValueError, match=r"ns must lie in \[1, N=3\]"):
        bon_log_weights(3, [4])


# ---------------------------------------------------------------- KL of best-of-n


def test_kl_bon_values() -> None:
    assert kl_bon(1).item() == 0.0
    assert kl_bon(2).item() == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    ns = torch.arange(1, 2001)
    kl = kl_bon(ns)
    assert kl.shape == (2000,) and kl.dtype == torch.float64
    assert (kl.diff() > 0).all()
    np.testing.assert_allclose(kl_bon(np.array([[1, 4]])).numpy(), [[0.0, math.log(4) - 0.75]])
    with pytest.raises(ValueError, match="n must be >= 1"):
        kl_bon(0)
    with pytest.raises(ValueError, match="n must be integers"):
        kl_bon(2.5)


@pytest.mark.parametrize("n", [2, 8, 64])
def test_kl_bon_matches_discrete_best_of_n(n: int) -> None:
    # Best of n draws with replacement from N equally likely distinct scores:
    # P(pick the i-th smallest) = P(max rank <= i) - P(max rank <= i-1) = [i^n - (i-1)^n] / N^n.
    # Its KL from the uniform 1/N tends to log n - (n-1)/n as N grows (continuous limit).
    N = 20_000
    i = np.arange(1, N + 1, dtype=np.float64)
    prob = (i / N) ** n - ((i - 1) / N) ** n
    prob = prob[prob > 0]
    kl_discrete = float(np.sum(prob * np.log(prob * N)))
    assert abs(kl_discrete - kl_bon(n).item()) < 1e-5
