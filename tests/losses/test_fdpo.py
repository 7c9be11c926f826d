"""Numbers for the f-DPO losses (proxygap/losses/fdpo.py, Wang et al. 2023).

Expected values are derived by hand in the comments. Notation: ``l = log pi - log pi_ref``,
``u = exp(l)``, loss ``-log sigma(beta (f'(u_w) - f'(u_l))) = log(1 + exp(-beta d))`` with
``d = f'(u_w) - f'(u_l)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import torch

from proxygap.losses.daa import DAA_LOSSES, PairBatchLogps, compute_daa_loss, dpo_loss
from proxygap.losses.fdpo import (
    FDPO_LOSSES,
    fdpo_alpha_loss,
    fdpo_forward_kl_loss,
    fdpo_js_loss,
    fdpo_reverse_kl_loss,
)
from proxygap.optimize.daa import DAAConfig

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}


def t(*xs: float, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(xs, dtype=dtype)


# One pair with chosen log-ratio a = 0.5 (-3.0 vs -3.5) and rejected log-ratio -a (-4.0 vs -3.5).
PAIR = (t(-3.0), t(-4.0), t(-3.5), t(-3.5))
A = 0.5
BETA = 0.7


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_hand_values() -> None:
    # forward KL: f'(u) = -1/u, so d = -e^{-a} + e^{a} = 2 sinh(a).
    fkl, _ = fdpo_forward_kl_loss(*PAIR, beta=BETA)
    assert fkl.item() == pytest.approx(softplus(-BETA * 2 * math.sinh(A)), abs=1e-12)
    # JS: f'(u) = log(2u/(1+u)); d = [log 2 + a - log(1+e^a)] - [log 2 - a - log(1+e^-a)]
    #   = 2a - log((1+e^a)/(1+e^-a)) = 2a - log(e^a) = a.
    js, _ = fdpo_js_loss(*PAIR, beta=BETA)
    assert js.item() == pytest.approx(softplus(-BETA * A), abs=1e-12)
    # alpha = 1/2: f'(u) = 2 (1 - u^{-1/2}); d = 2 (e^{a/2} - e^{-a/2}) = 4 sinh(a/2).
    al, _ = fdpo_alpha_loss(*PAIR, beta=BETA, alpha=0.5)
    assert al.item() == pytest.approx(softplus(-BETA * 4 * math.sinh(A / 2)), abs=1e-12)
    # reverse KL: f'(u) = log u + 1; d = 2a.
    rkl, metrics = fdpo_reverse_kl_loss(*PAIR, beta=BETA)
    assert rkl.item() == pytest.approx(softplus(-BETA * 2 * A), abs=1e-12)
    # implicit rewards beta f'(u) (without the +1): beta a and -beta a.
    assert metrics["daa/chosen_reward"] == pytest.approx(BETA * A, abs=1e-12)
    assert metrics["daa/margin"] == pytest.approx(2 * BETA * A, abs=1e-12)
    assert metrics["daa/accuracy"] == 1.0


def test_reverse_kl_is_dpo_exactly(random_pairs: Callable[..., PairBatchLogps]) -> None:
    b = random_pairs(32, seed=3)
    args = (b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected)
    for beta in (0.01, 0.1, 2.0):
        f_losses, f_metrics = fdpo_reverse_kl_loss(*args, beta=beta)
        d_losses, d_metrics = dpo_loss(*args, beta=beta)
        torch.testing.assert_close(f_losses, d_losses, **TOL)
        assert f_metrics == pytest.approx(d_metrics, abs=1e-12)


def test_alpha_limits(random_pairs: Callable[..., PairBatchLogps]) -> None:
    """alpha -> 0 gives the reverse-KL link, alpha -> 1 the forward-KL link plus 1 (differences
    equal): (1 - e^{-alpha l})/alpha = l + O(alpha l^2) and -> 1 - e^{-l}."""
    b = random_pairs(8, seed=4)
    # keep log-ratios moderate so the O(alpha l^2) term is small
    args = (b.policy_chosen / 10, b.policy_rejected / 10, b.ref_chosen / 10, b.ref_rejected / 10)
    small, _ = fdpo_alpha_loss(*args, beta=0.3, alpha=1e-7)
    torch.testing.assert_close(small, dpo_loss(*args, beta=0.3)[0], rtol=0, atol=1e-5)
    near_one, _ = fdpo_alpha_loss(*args, beta=0.3, alpha=1 - 1e-7)
    fkl, _ = fdpo_forward_kl_loss(*args, beta=0.3)
    torch.testing.assert_close(near_one, fkl, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FDPO_LOSSES))
def test_gradcheck(name: str, random_pairs: Callable[..., PairBatchLogps]) -> None:
    b = random_pairs(4, seed=5)
    # log-ratios of a few nats either way
    pc, pr = (x.detach().clone().requires_grad_(True) for x in (b.policy_chosen, b.policy_rejected))
    rc, rr = pc.detach() + t(1.0, -2.0, 0.5, 3.0), pr.detach() + t(-1.5, 2.0, 0.0, -3.0)
    fn = FDPO_LOSSES[name]
    assert torch.autograd.gradcheck(lambda a, c: fn(a, c, rc, rr, beta=0.4)[0], (pc, pr))


@pytest.mark.parametrize("name", sorted(FDPO_LOSSES))
def test_large_log_ratios_are_finite(name: str) -> None:
    # log-ratios +-50 in float32: e^50 ~ 5e21 fits (float32 max ~3.4e38); every link stays finite
    pc = t(0.0, -100.0, 0.0, -100.0, dtype=torch.float32).requires_grad_(True)
    pr = t(-100.0, 0.0, 0.0, -100.0, dtype=torch.float32).requires_grad_(True)
    ref = t(-50.0, -50.0, -50.0, -50.0, dtype=torch.float32)
    losses, metrics = FDPO_LOSSES[name](pc, pr, ref, ref, beta=1.0)
    losses.sum().backward()
    assert torch.isfinite(losses).all()
    assert pc.grad is not None and torch.isfinite(pc.grad).all()
    assert pr.grad is not None and torch.isfinite(pr.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())
    # chosen +50 vs rejected -50: a confident right answer has loss ~0 for every link
    assert losses[0].item() < 1e-6


def test_registry_and_config(random_pairs: Callable[..., PairBatchLogps]) -> None:
    b = random_pairs(6, seed=6)
    args = (b.policy_chosen, b.policy_rejected, b.ref_chosen, b.ref_rejected)
    for name, fn in FDPO_LOSSES.items():
        assert name in DAA_LOSSES
        got, _ = compute_daa_loss(name, b, beta=0.2)
        torch.testing.assert_close(got, fn(*args, beta=0.2)[0], **TOL)
    assert DAA_LOSSES["fdpo_alpha"].hyperparameters() == {"beta": 0.1, "alpha": 0.5}
    got, _ = compute_daa_loss("fdpo_alpha", b, beta=0.2, alpha=0.3)
    torch.testing.assert_close(got, fdpo_alpha_loss(*args, beta=0.2, alpha=0.3)[0], **TOL)
    with pytest.raises(ValueError, match="alpha"):
        compute_daa_loss("fdpo_js", b, beta=0.2, alpha=0.3)
    with pytest.raises(ValueError, match="needs PairBatchLogps.ref_chosen"):
        compute_daa_loss("fdpo_js", PairBatchLogps(b.policy_chosen, b.policy_rejected))
    assert DAAConfig(loss="fdpo_js").loss_hyper() == {"beta": 0.1}
    assert inspect.signature(fdpo_alpha_loss).parameters["alpha"].default == 0.5


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        fdpo_alpha_loss(*PAIR, alpha=alpha)


def test_bad_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        fdpo_js_loss(*PAIR, beta=0.0)


def test_daa_config_sets_alpha_only_for_the_alpha_loss() -> None:
    assert DAAConfig(loss="fdpo_alpha", alpha=0.3).loss_hyper() == {"beta": 0.1, "alpha": 0.3}
    assert DAAConfig(loss="fdpo_alpha").loss_hyper() == {"beta": 0.1}  # the loss's 0.5
    with pytest.raises(ValueError, match="alpha is not a hyperparameter of loss 'fdpo_js'"):
        DAAConfig(loss="fdpo_js", alpha=0.3)
    with pytest.raises(ValueError, match="alpha"):
        DAAConfig(loss="fdpo_alpha", alpha=1.0)
