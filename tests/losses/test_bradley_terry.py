"""Tests for proxygap.losses.bradley_terry: hand values, metrics, gradients, shape errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from proxygap.losses.bradley_terry import bradley_terry_loss

LOG2 = 0.6931471805599453  # -log sigma(0) = log 2
LOG1P_EXP_M1 = 0.31326168751822286  # -log sigma(1) = log(1 + e^-1) = log(1.36787944) = 0.3132617
LOG1P_EXP_1 = 1.3132616875182228  # -log sigma(-1) = log(1 + e) = 1 + log(1 + e^-1)


def f64(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_hand_values() -> None:
    # diffs r_w - r_l = 0, 1, -1, 2 - 1 = 1
    losses, _ = bradley_terry_loss(f64(0.0, 1.0, 0.0, 2.0), f64(0.0, 0.0, 1.0, 1.0))
    torch.testing.assert_close(losses, f64(LOG2, LOG1P_EXP_M1, LOG1P_EXP_1, LOG1P_EXP_M1))
    assert math.log(2.0) == pytest.approx(LOG2, abs=1e-16)
    assert math.log1p(math.exp(-1.0)) == pytest.approx(LOG1P_EXP_M1, abs=1e-16)
    assert math.log1p(math.e) == pytest.approx(LOG1P_EXP_1, abs=1e-15)


def test_margin_shifts_the_difference() -> None:
    # margin 1: -log sigma(diff - 1); diff 2 -> log(1 + e^-1), diff 1 -> log 2, diff 0 -> log(1 + e)
    losses, metrics = bradley_terry_loss(f64(2.0, 1.0, 0.0), f64(0.0, 0.0, 0.0), margin=1.0)
    torch.testing.assert_close(losses, f64(LOG1P_EXP_M1, LOG2, LOG1P_EXP_1))
    # metrics use the raw difference, not the shifted one: mean (2 + 1 + 0) / 3 = 1
    assert metrics == {"rm/accuracy": pytest.approx(2 / 3), "rm/margin": pytest.approx(1.0)}


def test_matches_binary_cross_entropy_oracle() -> None:
    # -log sigma(d - m) is the BCE-with-logits of logit d - m against label 1
    gen = torch.Generator().manual_seed(0)
    rw = torch.randn(64, generator=gen, dtype=torch.float64)
    rl = torch.randn(64, generator=gen, dtype=torch.float64)
    for margin in (0.0, 0.3):
        losses, _ = bradley_terry_loss(rw, rl, margin=margin)
        oracle = F.binary_cross_entropy_with_logits(
            rw - rl - margin, torch.ones(64, dtype=torch.float64), reduction="none"
        )
        torch.testing.assert_close(losses, oracle, rtol=0, atol=1e-14)
        naive = f64(
            *(
                -math.log(1.0 / (1.0 + math.exp(-(win - lose - margin))))
                for win, lose in zip(rw.tolist(), rl.tolist(), strict=True)
            )
        )
        torch.testing.assert_close(losses, naive, rtol=1e-12, atol=1e-12)


def test_extreme_differences_are_stable() -> None:
    losses, _ = bradley_terry_loss(f64(-100.0, 100.0, -1e4), f64(0.0, 0.0, 0.0))
    # -log sigma(-100) = 100 + log(1 + e^-100) = 100 (to double precision);
    # -log sigma(100) = log(1 + e^-100) = e^-100 = 3.720076e-44
    assert losses[0].item() == pytest.approx(100.0, abs=1e-12)
    assert losses[1].item() == pytest.approx(math.exp(-100.0), rel=1e-10)
    assert losses[2].item() == pytest.approx(1e4, rel=1e-12)
    assert torch.isfinite(losses).all()


def test_accuracy_and_margin_metrics() -> None:
    # diffs [1, 0, -1, 2]: accurate where diff > 0 -> 2 of 4 (a tie is not accurate) = 0.5;
    # margin mean (1 + 0 - 1 + 2) / 4 = 0.5
    _, metrics = bradley_terry_loss(f64(1.0, 0.0, 2.0, -1.0), f64(0.0, 0.0, 3.0, -3.0))
    assert metrics["rm/accuracy"] == 0.5
    assert metrics["rm/margin"] == 0.5
    assert set(metrics) == {"rm/accuracy", "rm/margin"}
    assert all(isinstance(v, float) for v in metrics.values())


def test_single_pair_and_empty_batch() -> None:
    losses, metrics = bradley_terry_loss(f64(1.0), f64(0.0))
    assert losses.shape == (1,)
    assert losses.item() == pytest.approx(LOG1P_EXP_M1, abs=1e-15)
    assert metrics == {"rm/accuracy": 1.0, "rm/margin": 1.0}
    losses, metrics = bradley_terry_loss(f64(), f64())
    assert losses.shape == (0,)
    assert math.isnan(metrics["rm/accuracy"]) and math.isnan(metrics["rm/margin"])


def test_no_reduction_batch_invariance() -> None:
    gen = torch.Generator().manual_seed(1)
    rw, rl = torch.randn(10, generator=gen), torch.randn(10, generator=gen)
    whole, _ = bradley_terry_loss(rw, rl)
    parts = torch.cat([bradley_terry_loss(rw[i : i + 1], rl[i : i + 1])[0] for i in range(10)])
    torch.testing.assert_close(whole, parts, rtol=0, atol=0)


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(2)
    rw = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    rl = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b)[0], (rw, rl))
    assert torch.autograd.gradcheck(lambda a, b: bradley_terry_loss(a, b, margin=0.7)[0], (rw, rl))


def test_gradient_is_minus_sigmoid_of_minus_diff() -> None:
    # d/dr_w [-log sigma(d)] = -(1 - sigma(d)) = -sigma(-d); d/dr_l = +sigma(-d)
    rw = f64(0.0, 1.0, -2.0, 3.5).requires_grad_()
    rl = f64(0.0, 0.0, 1.0, 0.5).requires_grad_()
    losses, _ = bradley_terry_loss(rw, rl)
    losses.sum().backward()
    diff = (rw - rl).detach()  # [0, 1, -3, 3]
    # sigma(-0) = 0.5, sigma(-1) = 0.268941, sigma(3) = 0.952574, sigma(-3) = 0.047426
    expected = f64(-0.5, -0.2689414213699951, -0.9525741268224334, -0.04742587317756678)
    torch.testing.assert_close(rw.grad, -torch.sigmoid(-diff))
    torch.testing.assert_close(rw.grad, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(rl.grad, -expected, rtol=0, atol=1e-15)
    # and numerically: central differences of each pair's loss in r_w, h = 1e-6
    h = 1e-6
    for i in range(4):
        up, down = rw.detach().clone(), rw.detach().clone()
        up[i] += h
        down[i] -= h
        fd = (
            bradley_terry_loss(up, rl.detach())[0][i] - bradley_terry_loss(down, rl.detach())[0][i]
        ) / (2 * h)
        assert fd.item() == pytest.approx(expected[i].item(), abs=1e-8)


@pytest.mark.parametrize(
    ("shape_w", "shape_l"),
    [((3,), (4,)), ((2, 3), (2, 3)), ((), ()), ((3, 1), (3,))],
)
def test_shape_errors(shape_w: tuple[int, ...], shape_l: tuple[int, ...]) -> None:
    with pytest.raises(ValueError) as err:
        bradley_terry_loss(torch.zeros(shape_w), torch.zeros(shape_l))
    assert "must be equal 1-D shapes" in str(err.value)
    assert f"got {shape_w} and {shape_l}" in str(err.value)
