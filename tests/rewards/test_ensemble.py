"""Tests for proxygap.rewards.ensemble: mean, WCO and UWO aggregation (Coste et al. 2023)."""

from __future__ import annotations

import statistics

import pytest
import torch

from proxygap.rewards.ensemble import (
    AGGREGATIONS,
    aggregate,
    ensemble_mean,
    ensemble_std,
    ensemble_uwo,
    ensemble_wco,
)

# rows: members [1, 2, 3, 6], [0, 0, 0, 0], [-1, 1, -1, 1]
HAND = torch.tensor(
    [[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, -1.0, 1.0]], dtype=torch.float64
)


def f64(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_hand_values() -> None:
    # row 0: mean 12 / 4 = 3; min 1; population variance
    #   ((1-3)^2 + (2-3)^2 + (3-3)^2 + (6-3)^2) / 4 = (4 + 1 + 0 + 9) / 4 = 3.5
    #   UWO(0.5) = 3 - 0.5 * 3.5 = 1.25; std sqrt(3.5) = 1.8708287
    # row 1: all zero
    # row 2: mean 0, min -1, variance 4 * 1 / 4 = 1, UWO(0.5) = -0.5, std 1
    torch.testing.assert_close(ensemble_mean(HAND), f64(3.0, 0.0, 0.0))
    torch.testing.assert_close(ensemble_wco(HAND), f64(1.0, 0.0, -1.0))
    torch.testing.assert_close(ensemble_uwo(HAND, lam=0.5), f64(1.25, 0.0, -0.5))
    torch.testing.assert_close(ensemble_uwo(HAND), f64(1.25, 0.0, -0.5))  # default lam = 0.5
    torch.testing.assert_close(ensemble_std(HAND), f64(1.8708286933869707, 0.0, 1.0))
    # UWO(0.1) = 3 - 0.35 = 2.65 for row 0
    assert ensemble_uwo(HAND, lam=0.1)[0].item() == pytest.approx(2.65, abs=1e-12)


def test_aggregate_dispatches_by_name() -> None:
    assert sorted(AGGREGATIONS) == ["mean", "uwo", "wco"]
    torch.testing.assert_close(aggregate(HAND), f64(3.0, 0.0, 0.0))  # default "mean"
    torch.testing.assert_close(aggregate(HAND, "wco"), f64(1.0, 0.0, -1.0))
    torch.testing.assert_close(aggregate(HAND, "uwo", lam=0.5), f64(1.25, 0.0, -0.5))
    # lam = 2: row 0 -> 3 - 7 = -4; row 2 -> 0 - 2 = -2
    torch.testing.assert_close(aggregate(HAND, "uwo", lam=2.0), f64(-4.0, 0.0, -2.0))


def test_against_a_naive_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(50, 5, generator=gen, dtype=torch.float64)
    lam = 0.3
    naive_mean, naive_min, naive_uwo, naive_std = [], [], [], []
    for members in rewards.tolist():
        naive_mean.append(statistics.fmean(members))
        naive_min.append(min(members))
        naive_uwo.append(statistics.fmean(members) - lam * statistics.pvariance(members))
        naive_std.append(statistics.pstdev(members))
    torch.testing.assert_close(ensemble_mean(rewards), f64(*naive_mean))
    torch.testing.assert_close(ensemble_wco(rewards), f64(*naive_min))
    torch.testing.assert_close(ensemble_uwo(rewards, lam=lam), f64(*naive_uwo))
    torch.testing.assert_close(ensemble_std(rewards), f64(*naive_std))


def test_uwo_with_zero_lambda_is_the_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(100, 4, generator=gen)
    torch.testing.assert_close(ensemble_uwo(rewards, lam=0.0), ensemble_mean(rewards))


def test_wco_is_a_lower_bound_attained_by_a_member() -> None:
    gen = torch.Generator().manual_seed(2)
    rewards = torch.randn(200, 6, generator=gen) * 3.0
    wco = ensemble_wco(rewards)
    assert (wco[:, None] <= rewards).all()
    assert ((rewards == wco[:, None]).sum(dim=1) >= 1).all()
    # ordering of the three aggregations: UWO <= mean and WCO <= mean
    assert (ensemble_uwo(rewards, lam=0.5) <= ensemble_mean(rewards) + 1e-6).all()
    assert (wco <= ensemble_mean(rewards) + 1e-6).all()


def test_single_member_ensemble_is_that_member() -> None:
    rewards = f64(1.5, -2.0, 0.25)[:, None]  # (3, 1)
    for method in ("mean", "wco", "uwo"):
        torch.testing.assert_close(aggregate(rewards, method), f64(1.5, -2.0, 0.25))
    torch.testing.assert_close(ensemble_std(rewards), f64(0.0, 0.0, 0.0))


def test_member_order_does_not_matter() -> None:
    perm = HAND[:, [3, 1, 0, 2]]
    for method in ("mean", "wco", "uwo"):
        torch.testing.assert_close(aggregate(perm, method), aggregate(HAND, method))


def test_uwo_gradient() -> None:
    # d/dr_k [mean - lam * var] = 1/K - lam * 2 (r_k - mean) / K; row [1, 2, 3, 6], lam 0.5:
    # 0.25 - 0.5 * 2 * (-2, -1, 0, 3) / 4 = 0.25 + (0.5, 0.25, 0, -0.75) = (0.75, 0.5, 0.25, -0.5)
    r = HAND[:1].clone().requires_grad_()
    ensemble_uwo(r, lam=0.5).sum().backward()
    torch.testing.assert_close(r.grad, f64(0.75, 0.5, 0.25, -0.5)[None])
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ensemble_uwo(t, lam=0.3), (x,))


@pytest.mark.parametrize("fn", [ensemble_mean, ensemble_wco, ensemble_uwo, ensemble_std])
@pytest.mark.parametrize("shape", [(4,), (3, 0), (2, 3, 1), ()])
def test_bad_shapes(fn, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as err:
        fn(torch.zeros(shape))
    assert str(err.value) == f"ensemble rewards must have shape (B, K>=1), got {shape}"


def test_unknown_method_and_negative_lambda() -> None:
    with pytest.raises(ValueError) as err:
        aggregate(HAND, "median")
    assert str(err.value) == (
        "unknown ensemble aggregation 'median'; allowed: ['mean', 'uwo', 'wco']"
    )
    with pytest.raises(ValueError, match="UWO lambda must be >= 0, got -0.1"):
        ensemble_uwo(HAND, lam=-0.1)
    with pytest.raises(ValueError, match="UWO lambda must be >= 0, got -1.0"):
        aggregate(HAND, "uwo", lam=-1.0)
    with pytest.raises(TypeError):
        aggregate(HAND, "mean", lam=0.5)  # lam means nothing to the mean
