"""Tests for proxygap.estimators.kl (Schulman 2020 KL estimators)."""

import math

import pytest
import torch

from proxygap.estimators.kl import kl_k1, kl_k2, kl_k3, log_ratio, sequence_kl

LN2 = math.log(2.0)


def test_closed_forms_at_hand_chosen_values():
    lr = torch.tensor([0.0, 1.0, -1.0, 2.0, LN2], dtype=torch.float64)
    # k1 = lr
    torch.testing.assert_close(kl_k1(lr), lr)
    # k2 = lr^2 / 2: 0, 1/2, 1/2, 4/2 = 2, (ln 2)^2 / 2 = 0.480453 / 2 = 0.2402265
    k2 = torch.tensor([0.0, 0.5, 0.5, 2.0, 0.2402265069591007], dtype=torch.float64)
    torch.testing.assert_close(kl_k2(lr), k2)
    # k3 = exp(-lr) - 1 + lr:
    #   lr = 0:     1 - 1 + 0                     = 0
    #   lr = 1:     e^-1 - 1 + 1 = 0.36787944
    #   lr = -1:    e - 1 - 1    = 2.71828183 - 2 = 0.71828183
    #   lr = 2:     e^-2 - 1 + 2 = 0.13533528 + 1 = 1.13533528
    #   lr = ln 2:  1/2 - 1 + 0.69314718          = 0.19314718
    k3 = torch.tensor(
        [0.0, 0.36787944117144233, 0.7182818284590451, 1.1353352832366128, 0.1931471805599453],
        dtype=torch.float64,
    )
    got, n_clamped = kl_k3(lr)
    torch.testing.assert_close(got, k3)
    assert n_clamped == 0


def test_log_ratio_and_shape_error():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(log_ratio(logp, ref), torch.tensor([[0.5, -1.0]]))
    with pytest.raises(ValueError, match="same shape"):
        log_ratio(logp, ref[:, :1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_nonnegative_everywhere(dtype):
    grid = torch.linspace(-30.0, 30.0, 200_001, dtype=dtype)
    tiny = torch.tensor([1e-12, -1e-12, 1e-8, -1e-8, 1e-4, -1e-4], dtype=dtype)
    k3, _ = kl_k3(torch.cat([grid, tiny]))
    assert torch.isfinite(k3).all()
    assert (k3 >= 0).all()


def test_k3_extreme_values_are_finite_and_clamps_are_counted():
    lr = torch.tensor([-1e4, 1e4, 0.0, -20.5, -19.5], requires_grad=True)
    k3, n_clamped = kl_k3(lr, clamp=20.0)
    assert n_clamped == 2  # -1e4 and -20.5 lie below -clamp
    assert torch.isfinite(k3).all()
    # lr = -1e4 is evaluated at lr = -20: e^20 - 1 - 20 = 485165195.41 - 21 = 485165174.41
    assert k3[0].item() == pytest.approx(math.expm1(20.0) - 20.0, rel=1e-6)
    # lr = +1e4: e^-1e4 - 1 + 1e4 = 9999 (exp underflows to 0, which is exact in fp32)
    assert k3[1].item() == 9999.0
    k3.sum().backward()
    assert torch.isfinite(lr.grad).all()
    # d k3 / d lr = 1 - e^-lr: 0 where clamped, 1 - e^19.5 at lr = -19.5
    assert lr.grad[0].item() == 0.0 and lr.grad[3].item() == 0.0
    assert lr.grad[4].item() == pytest.approx(1.0 - math.exp(19.5), rel=1e-5)


def test_k3_rejects_bad_clamp_and_dtype():
    with pytest.raises(ValueError, match="clamp"):
        kl_k3(torch.zeros(3), clamp=0.0)
    with pytest.raises(ValueError, match="overflows"):
        kl_k3(torch.zeros(3, dtype=torch.float16), clamp=20.0)  # e^20 > 65504
    with pytest.raises(ValueError, match="floating"):
        kl_k3(torch.zeros(3, dtype=torch.int64))
    k3, _ = kl_k3(torch.tensor([-50.0], dtype=torch.float16), clamp=10.0)
    assert torch.isfinite(k3).all()


def _mc_estimates(p: torch.Tensor, q: torch.Tensor, n: int, seed: int):
    """Sample n tokens from p; return exact KL(p||q) and per-sample k1, k2, k3."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.multinomial(p, n, replacement=True, generator=gen)
    lr = (p.log() - q.log())[x]
    exact = (p * (p.log() - q.log())).sum().item()
    return exact, kl_k1(lr), kl_k2(lr), kl_k3(lr)[0]


def _within_4se(samples: torch.Tensor, target: float) -> bool:
    se = samples.std().item() / math.sqrt(samples.numel())
    return abs(samples.mean().item() - target) < 4 * se


def test_monte_carlo_k1_k3_unbiased_for_distant_distributions():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3], dtype=torch.float64)
    exact, k1, k2, k3 = _mc_estimates(p, q, 200_000, seed=0)
    assert exact == pytest.approx(0.70075, abs=1e-4)  # sum p log(p/q), far from 0
    assert _within_4se(k1, exact)
    assert _within_4se(k3, exact)
    # k2 is biased here: E_p[lr^2/2] is exactly 0.5 * sum p (log p/q)^2
    exact_k2 = (0.5 * p * (p.log() - q.log()).square()).sum().item()
    assert _within_4se(k2, exact_k2)
    assert abs(exact_k2 - exact) > 0.1 * exact


def test_monte_carlo_nearby_distributions_k2_close_and_k3_low_variance():
    p = torch.tensor([0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)
    q = p * torch.tensor([1.1, 0.9, 1.05, 0.95, 1.0], dtype=torch.float64)
    q = q / q.sum()
    exact, k1, k2, k3 = _mc_estimates(p, q, 200_000, seed=1)
    assert _within_4se(k1, exact)
    assert _within_4se(k3, exact)
    # bias of k2 is third order in log(p/q) (~0.1 here); exactly 0.83% of KL for these p, q
    se2 = k2.std().item() / math.sqrt(k2.numel())
    assert abs(k2.mean().item() - exact) < 0.05 * exact + 4 * se2
    # Schulman's point: for nearby p, q k3 has far lower variance than k1
    assert k3.std() < 0.2 * k1.std()


def test_sequence_kl_hand_values_and_metrics():
    lr = torch.tensor([[1.0, -1.0, 9.0], [LN2, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    out, metrics = sequence_kl(lr, mask)
    # row 0: k1 = 1 - 1 = 0; k2 = 0.5 + 0.5 = 1; k3 = 0.36787944 + 0.71828183 = 1.08616127
    # row 1: k1 = ln 2;      k2 = 0.2402265; k3 = 0.19314718 (the 9.0 is padding)
    torch.testing.assert_close(out.k1, torch.tensor([0.0, LN2], dtype=torch.float64))
    torch.testing.assert_close(out.k2, torch.tensor([1.0, 0.2402265069591007], dtype=torch.float64))
    torch.testing.assert_close(
        out.k3, torch.tensor([1.0861612696304874, 0.1931471805599453], dtype=torch.float64)
    )
    assert metrics["kl/k1"] == pytest.approx(LN2 / 2)
    assert metrics["kl/k2"] == pytest.approx((1.0 + 0.2402265069591007) / 2)
    assert metrics["kl/k3"] == pytest.approx((1.0861612696304874 + 0.1931471805599453) / 2)
    assert metrics["kl/clamped"] == 0.0


def test_sequence_kl_padding_changes_nothing():
    gen = torch.Generator().manual_seed(0)
    lr = torch.randn(4, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    base, base_metrics = sequence_kl(lr, mask.bool())
    # extra padded columns holding garbage, and garbage in the existing padding
    garbage = torch.tensor([float("nan"), float("inf"), -1e4])
    lr_pad = torch.cat([torch.where(mask.bool(), lr, -1e4), garbage.expand(4, 3)], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(4, 3, dtype=mask.dtype)], dim=1).float()
    padded, padded_metrics = sequence_kl(lr_pad, mask_pad)
    for a, b in zip(base, padded, strict=True):
        torch.testing.assert_close(a, b)
    assert padded_metrics == pytest.approx(base_metrics, rel=1e-6)  # fp32 summation order
    assert padded.k1[3].item() == 0.0  # empty row


def test_sequence_kl_counts_only_clamped_response_tokens():
    lr = torch.tensor([[-1e4, 0.5, -1e4]])
    _, metrics = sequence_kl(lr, torch.tensor([[1, 1, 0]]))
    assert metrics["kl/clamped"] == 1.0
    assert math.isfinite(metrics["kl/k3"])


def test_sequence_kl_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        sequence_kl(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        sequence_kl(torch.zeros(3), torch.ones(3))
