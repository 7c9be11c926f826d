"""f-DPG advantages (proxygap/estimators/fdpg.py, Go et al. 2023) against exact computations.

The brute-force reference enumerates a categorical policy over K = 6 outcomes: the target
``p = pi0 exp(r/beta) / Z`` and ``D_f(pi || p) = sum_y p(y) f(pi(y)/p(y))`` are exact, its
gradient with respect to the logits comes from autograd, and the estimator's expectation
``E_pi[A grad log pi]`` is the exact sum over the six outcomes weighted by ``pi`` (no sampling).
"""

from __future__ import annotations

import math

import pytest
import torch

from proxygap.estimators.fdpg import DIVERGENCES, fdpg_advantages

F64 = torch.float64
K, BETA = 6, 0.5

# f with f(1) = 0 for each divergence (docstring of fdpg.py); t = pi/p
F_OF = {
    "reverse_kl": lambda t: t * torch.log(t),
    "forward_kl": lambda t: -torch.log(t),
    "js": lambda t: t * torch.log(t) - (t + 1) * torch.log((t + 1) / 2),
    "tv": lambda t: 0.5 * (t - 1).abs(),
}


def problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(K, generator=g, dtype=F64)
    ref_logp = torch.log_softmax(torch.randn(K, generator=g, dtype=F64), dim=0)
    rewards = torch.randn(K, generator=g, dtype=F64)
    return logits, ref_logp, rewards


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("seed", [0, 1])
def test_expectation_is_minus_exact_gradient(divergence: str, seed: int) -> None:
    logits, ref_logp, rewards = problem(seed)
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=0)
    log_p = torch.log_softmax(ref_logp + rewards / BETA, dim=0)  # exact target
    d_f = (log_p.exp() * F_OF[divergence]((logp - log_p).exp())).sum()
    (exact,) = torch.autograd.grad(d_f, theta)
    assert exact.abs().max() > 1e-3  # the problem is not at its optimum

    # estimator with Z estimated from the six outcomes weighted by pi (then exact)
    adv, metrics = fdpg_advantages(
        logp, ref_logp, rewards, beta=BETA, divergence=divergence, sample_weights=logp.exp()
    )
    true_log_z = torch.logsumexp(ref_logp + rewards / BETA, dim=0)
    assert metrics["fdpg/log_z"] == pytest.approx(true_log_z.item(), abs=1e-12)
    theta2 = logits.clone().requires_grad_(True)
    logp2 = torch.log_softmax(theta2, dim=0)
    surrogate = (logp2.exp().detach() * adv * logp2).sum()  # E_pi[A log pi] with A fixed
    (expected,) = torch.autograd.grad(surrogate, theta2)
    torch.testing.assert_close(expected, -exact, rtol=0, atol=1e-10)
    # the same with the true log Z given
    adv_z, _ = fdpg_advantages(
        logp,
        ref_logp,
        rewards,
        beta=BETA,
        divergence=divergence,
        sample_weights=logp.exp(),
        log_z=true_log_z.reshape(1),
    )
    torch.testing.assert_close(adv_z, adv, rtol=0, atol=1e-12)


def test_reverse_kl_is_kl_penalised_reward() -> None:
    # A = r/beta - (logpi - logpi0) - log Z - 1, centred in each group of 4: the -log Z - 1
    # constant drops out, so A = x - mean_G(x) with x = r/beta - log(pi/pi0).
    g = torch.Generator().manual_seed(7)
    lp, rp, r = (-20 * torch.rand(12, generator=g, dtype=F64) for _ in range(3))
    adv, _ = fdpg_advantages(lp, rp, r, beta=0.2, divergence="reverse_kl", group_size=4)
    x = (r / 0.2 - (lp - rp)).view(3, 4)
    torch.testing.assert_close(
        adv, (x - x.mean(dim=1, keepdim=True)).reshape(-1), rtol=0, atol=1e-12
    )


def test_forward_kl_is_self_normalised_weight_and_extremes_are_finite() -> None:
    # A + 1/G-mean = p/pi = G * softmax(r/beta - l) within the group; bounded by G.
    lp = torch.tensor([0.0, -100.0, -50.0, -1.0], dtype=torch.float32)
    rp = torch.tensor([-50.0, -50.0, 0.0, -1.0], dtype=torch.float32)  # l = 50, -50, -50, 0
    r = torch.tensor([3.0, -3.0, 0.0, 1.0], dtype=torch.float32)
    for div in DIVERGENCES:
        adv, metrics = fdpg_advantages(lp, rp, r, beta=0.1, divergence=div)
        assert torch.isfinite(adv).all() and all(math.isfinite(v) for v in metrics.values())
        assert abs(adv.sum().item()) < 1e-3  # centred
    adv, _ = fdpg_advantages(lp, rp, r, beta=0.1, divergence="forward_kl")
    w = 4 * torch.softmax(r / 0.1 - (lp - rp), dim=0)
    torch.testing.assert_close(adv, w - w.mean(), rtol=1e-5, atol=1e-4)


def test_tv_advantages_are_half_signs() -> None:
    # one group, uniform weights: log(pi/p) = log Z_hat - (r/beta - l); TV's -f' is -sign/2.
    lp = torch.tensor([-1.0, -1.0], dtype=F64)
    rp = torch.tensor([-1.0, -1.0], dtype=F64)
    r = torch.tensor([1.0, 0.0], dtype=F64)  # sample 0 is more likely under p than pi: t < 1
    adv, _ = fdpg_advantages(lp, rp, r, beta=1.0, divergence="tv")
    # pseudo-rewards +1/2 and -1/2, mean 0
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5], dtype=F64), rtol=0, atol=0)
    # with the true log Z given, a sample with pi = p exactly (t = 1, where |t - 1| has a kink)
    # gets the subgradient 0: here log Z = log(e^0 + e^2) - log 2 and sample 1 has r/beta - l
    # equal to it; sample 0 (t < 1) gets +1/2, sample 2 (t > 1) -1/2, before the mean 0
    lz = math.log((1 + math.exp(2.0)) / 2)
    r = torch.tensor([2.0, lz, 0.0], dtype=F64)
    z = torch.zeros(3, dtype=F64)
    adv, m = fdpg_advantages(
        z, z, r, beta=1.0, divergence="tv", log_z=torch.tensor([lz], dtype=F64)
    )
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.0, -0.5], dtype=F64), rtol=0, atol=0)
    assert m["fdpg/pseudo_reward"] == 0.0
    # the pseudo-rewards are +-1/2 whatever the rewards' scale: advantages stay in [-1, 1]
    g = torch.Generator().manual_seed(3)
    lp, rp = (-10 * torch.rand(64, generator=g, dtype=F64) for _ in range(2))
    big = 1e3 * torch.randn(64, generator=g, dtype=F64)
    adv, _ = fdpg_advantages(lp, rp, big, beta=0.1, divergence="tv", group_size=8)
    assert adv.abs().max() <= 1.0 and adv.abs().max() > 0.5


def test_bad_input() -> None:
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="divergence must be one of"):
        fdpg_advantages(x, x, x, beta=1.0, divergence="hellinger")
    with pytest.raises(ValueError, match="beta"):
        fdpg_advantages(x, x, x, beta=0.0, divergence="js")
    with pytest.raises(ValueError, match="group_size"):
        fdpg_advantages(x, x, x, beta=1.0, divergence="js", group_size=3)
    with pytest.raises(ValueError, match="rewards has shape"):
        fdpg_advantages(x, x, torch.zeros(3), beta=1.0, divergence="js")
    with pytest.raises(ValueError, match="sample_weights"):
        fdpg_advantages(x, x, x, beta=1.0, divergence="js", sample_weights=-torch.ones(4))


@pytest.mark.parametrize(
    ("f_name", "option"),
    [("reverse_kl", "forward_kl"), ("forward_kl", "reverse_kl"), ("js", "js"), ("tv", "tv")],
)
def test_other_direction_is_the_perspective_option(f_name: str, option: str) -> None:
    """``D_f(p || pi) = sum_y pi(y) f(p(y)/pi(y))`` computed exactly; its gradient is minus the
    estimator's expectation with the option the docstring names for that direction (the
    perspective ``t f(1/t)``): reverse and forward KL swap, JS and TV map to themselves."""
    logits, ref_logp, rewards = problem(2)
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=0)
    log_p = torch.log_softmax(ref_logp + rewards / BETA, dim=0)
    d_f = (logp.exp() * F_OF[f_name]((log_p - logp).exp())).sum()
    (exact,) = torch.autograd.grad(d_f, theta)
    assert exact.abs().max() > 1e-3
    lp = logp.detach()
    adv, _ = fdpg_advantages(
        lp, ref_logp, rewards, beta=BETA, divergence=option, sample_weights=lp.exp()
    )
    theta2 = logits.clone().requires_grad_(True)
    logp2 = torch.log_softmax(theta2, dim=0)
    (expected,) = torch.autograd.grad((lp.exp() * adv * logp2).sum(), theta2)
    torch.testing.assert_close(expected, -exact, rtol=0, atol=1e-10)
