"""Tests for proxygap.losses.ppo."""

import math

import pytest
import torch

from proxygap.losses.ppo import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    kl_loss_term,
    ppo_policy_loss,
    ppo_value_loss,
)

F64 = torch.float64
NAN = float("nan")


def _masks(T: int, lengths: list[int]) -> torch.Tensor:
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).to(F64)


def _aggregate(per_token: list[list[float]], how: str) -> float:
    """Naive aggregation of lists of per-token losses (one list per sequence)."""
    non_empty = [seq for seq in per_token if seq]
    if how == "token_mean":
        tokens = [x for seq in non_empty for x in seq]
        return sum(tokens) / len(tokens) if tokens else 0.0
    per_seq = [sum(seq) / len(seq) for seq in non_empty]
    return sum(per_seq) / len(per_seq) if per_seq else 0.0


def _naive_policy_loss(logp, old_logp, adv, mask, clip, how):
    per_token = []
    for b in range(logp.shape[0]):
        row = []
        for t in range(logp.shape[1]):
            if mask[b, t] == 0:
                continue
            ratio = math.exp(logp[b, t].item() - old_logp[b, t].item())
            a = adv[b, t].item()
            clipped = min(max(ratio, 1 - clip), 1 + clip)
            row.append(max(-a * ratio, -a * clipped))
        per_token.append(row)
    return _aggregate(per_token, how)


def _naive_value_loss(v, old_v, ret, mask, clip, how):
    per_token = []
    for b in range(v.shape[0]):
        row = []
        for t in range(v.shape[1]):
            if mask[b, t] == 0:
                continue
            x, o, r = v[b, t].item(), old_v[b, t].item(), ret[b, t].item()
            xc = o + min(max(x - o, -clip), clip)
            row.append(0.5 * max((x - r) ** 2, (xc - r) ** 2))
        per_token.append(row)
    return _aggregate(per_token, how)


def _random_batch(seed: int, B: int = 5, T: int = 7):
    gen = torch.Generator().manual_seed(seed)
    mask = _masks(T, [7, 4, 1, 0, 5])
    old = -torch.rand(B, T, generator=gen, dtype=F64) * 3
    logp = old + 0.5 * torch.randn(B, T, generator=gen, dtype=F64)  # many ratios outside 1 +- 0.2
    adv = torch.randn(B, T, generator=gen, dtype=F64)
    return logp, old, adv, mask


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_policy_loss_matches_naive_loop(aggregation):
    logp, old, adv, mask = _random_batch(0)
    loss, metrics = ppo_policy_loss(logp, old, adv, mask, clip=0.2, aggregation=aggregation)
    expected = _naive_policy_loss(logp, old, adv, mask, 0.2, aggregation)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert 0.0 < metrics["policy/clipfrac"] < 1.0


def _single(lr: float, a: float, clip: float = 0.2):
    logp = torch.tensor([[lr]], dtype=F64, requires_grad=True)
    loss, metrics = ppo_policy_loss(
        logp,
        torch.zeros(1, 1, dtype=F64),
        torch.tensor([[a]], dtype=F64),
        torch.ones(1, 1),
        clip=clip,
    )
    loss.backward()
    return loss.item(), logp.grad.item(), metrics


def test_policy_loss_single_token_cases_by_hand():
    # A = 1, ratio 1.5 > 1.2: max(-1.5, -1.2) = -1.2, clipped branch, zero gradient
    loss, grad, m = _single(math.log(1.5), 1.0)
    assert (loss, grad, m["policy/clipfrac"]) == (pytest.approx(-1.2), 0.0, 1.0)
    # approx_kl = ratio - 1 - log ratio = 0.5 - 0.4054651 = 0.0945349
    assert m["policy/approx_kl"] == pytest.approx(0.5 - math.log(1.5))
    assert m["policy/ratio_mean"] == pytest.approx(1.5)
    # A = -1, ratio 0.5 < 0.8: max(0.5, 0.8) = 0.8, clipped, zero gradient
    loss, grad, m = _single(math.log(0.5), -1.0)
    assert (loss, grad, m["policy/clipfrac"]) == (pytest.approx(0.8), 0.0, 1.0)
    # A = 1, ratio 0.5: max(-0.5, -0.8) = -0.5 unclipped; d/dlogp (-A ratio) = -A ratio = -0.5
    loss, grad, m = _single(math.log(0.5), 1.0)
    assert (loss, grad, m["policy/clipfrac"]) == (pytest.approx(-0.5), pytest.approx(-0.5), 0.0)
    # A = -1, ratio 1.5: max(1.5, 1.2) = 1.5 unclipped; gradient -A ratio = 1.5
    loss, grad, m = _single(math.log(1.5), -1.0)
    assert (loss, grad, m["policy/clipfrac"]) == (pytest.approx(1.5), pytest.approx(1.5), 0.0)
    # A = 2, ratio 1.1 inside the trust region: loss -2.2, gradient -2.2
    loss, grad, m = _single(math.log(1.1), 2.0)
    assert (loss, grad, m["policy/clipfrac"]) == (pytest.approx(-2.2), pytest.approx(-2.2), 0.0)


def test_policy_gradient_is_zero_exactly_on_clipped_tokens():
    logp, old, adv, mask = _random_batch(1)
    logp.requires_grad_(True)
    loss, _ = ppo_policy_loss(logp, old, adv, mask)
    loss.backward()
    ratio = torch.exp(logp.detach() - old)
    clipped = ((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8))
    keep = mask.bool()
    assert (clipped & keep).any() and (~clipped & keep).any()
    assert (logp.grad[clipped | ~keep] == 0).all()
    # unclipped response tokens: d/dlogp of -A ratio / N = -A ratio / N (token_mean, N tokens)
    n = keep.sum()
    expected = (-adv * ratio / n)[~clipped & keep]
    torch.testing.assert_close(logp.grad[~clipped & keep], expected)


def _away_from_kinks(x: torch.Tensor, kinks: list[float], gap: float = 1e-2) -> torch.Tensor:
    for k in kinks:
        x = torch.where((x - k).abs() < gap, x + 2 * gap, x)
    return x


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_policy_loss_gradcheck(aggregation):
    logp, old, adv, mask = _random_batch(2)
    # keep log-ratios away from log(0.8), 0 and log(1.2), where the loss is not differentiable
    lr = _away_from_kinks(logp - old, [math.log(0.8), 0.0, math.log(1.2)])
    logp = (old + lr).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: ppo_policy_loss(x, old, adv, mask, aggregation=aggregation)[0], (logp,)
    )


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_value_loss_matches_naive_loop_and_gradcheck(aggregation):
    gen = torch.Generator().manual_seed(3)
    B, T = 5, 7
    mask = _masks(T, [7, 4, 1, 0, 5])
    old = torch.randn(B, T, generator=gen, dtype=F64)
    ret = torch.randn(B, T, generator=gen, dtype=F64)
    delta = _away_from_kinks(0.5 * torch.randn(B, T, generator=gen, dtype=F64), [-0.2, 0.2])
    values = (old + delta).requires_grad_(True)
    loss, metrics = ppo_value_loss(values, old, ret, mask, aggregation=aggregation)
    assert loss.item() == pytest.approx(_naive_value_loss(values, old, ret, mask, 0.2, aggregation))
    assert 0.0 < metrics["value/clipfrac"] < 1.0
    assert torch.autograd.gradcheck(
        lambda v: ppo_value_loss(v, old, ret, mask, aggregation=aggregation)[0], (values,)
    )


def test_value_loss_single_token_cases_by_hand():
    def one(v, old, ret):
        x = torch.tensor([[v]], dtype=F64, requires_grad=True)
        loss, m = ppo_value_loss(
            x, torch.tensor([[old]], dtype=F64), torch.tensor([[ret]], dtype=F64), torch.ones(1, 1)
        )
        loss.backward()
        return loss.item(), x.grad.item(), m["value/clipfrac"]

    # v 1.5, old 1.0, R 2.0: v_clip = 1.2; max(0.25, 0.64) / 2 = 0.32, clipped, zero gradient
    assert one(1.5, 1.0, 2.0) == (pytest.approx(0.32), 0.0, 1.0)
    # v 1.1 inside the clip range: both errors 0.81 -> 0.405; gradient v - R = -0.9
    assert one(1.1, 1.0, 2.0) == (pytest.approx(0.405), pytest.approx(-0.9), 0.0)
    # v 1.5, old 1.0, R 1.0: v_clip = 1.2; max(0.25, 0.04) / 2 = 0.125, unclipped, gradient 0.5
    assert one(1.5, 1.0, 1.0) == (pytest.approx(0.125), pytest.approx(0.5), 0.0)


def _pad(x: torch.Tensor, fill: float, extra: int = 3) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], extra), fill, dtype=x.dtype)], dim=1)


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_padding_changes_nothing(aggregation):
    logp, old, adv, mask = _random_batch(4)
    base_logp = logp.clone().requires_grad_(True)
    base, base_m = ppo_policy_loss(base_logp, old, adv, mask, aggregation=aggregation)
    base.backward()
    # garbage in the existing padding and three extra padded columns
    keep = mask.bool()
    pad_logp = _pad(torch.where(keep, logp, 50.0), NAN).requires_grad_(True)
    pad_old = _pad(torch.where(keep, old, -50.0), float("inf"))
    pad_adv = _pad(torch.where(keep, adv, NAN), NAN)
    padded, pad_m = ppo_policy_loss(
        pad_logp, pad_old, pad_adv, _pad(mask, 0.0), aggregation=aggregation
    )
    padded.backward()
    assert padded.item() == pytest.approx(base.item(), rel=1e-12)
    assert pad_m == pytest.approx(base_m, rel=1e-12)
    torch.testing.assert_close(pad_logp.grad[:, :7], base_logp.grad)
    assert (pad_logp.grad[:, 7:] == 0).all()

    values = (old + 0.1).requires_grad_(True)
    v_loss, _ = ppo_value_loss(values, old, adv, mask, aggregation=aggregation)
    pad_values = _pad(torch.where(keep, old + 0.1, NAN), NAN).requires_grad_(True)
    pad_v_loss, _ = ppo_value_loss(
        pad_values, pad_old, pad_adv, _pad(mask, 0.0), aggregation=aggregation
    )
    pad_v_loss.backward()
    assert pad_v_loss.item() == pytest.approx(v_loss.item(), rel=1e-12)
    assert torch.isfinite(pad_values.grad).all()


def test_sequence_advantages_broadcast_and_empty_mask():
    logp, old, _, mask = _random_batch(5)
    seq_adv = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=F64)
    a, _ = ppo_policy_loss(logp, old, seq_adv, mask)
    b, _ = ppo_policy_loss(logp, old, seq_adv[:, None].expand_as(logp), mask)
    assert a.item() == b.item()
    x = logp.clone().requires_grad_(True)
    for aggregation in AGGREGATIONS:
        loss, _ = ppo_policy_loss(x, old, seq_adv, torch.zeros_like(mask), aggregation=aggregation)
        loss.backward()
        assert loss.item() == 0.0
    assert (x.grad == 0).all()


def test_shape_and_argument_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="old_logp"):
        ppo_policy_loss(z, torch.zeros(2, 4), z, z)
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(z, z, torch.zeros(3), z)
    with pytest.raises(ValueError, match="mask"):
        ppo_policy_loss(z, z, z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="clip"):
        ppo_policy_loss(z, z, z, z, clip=1.5)
    with pytest.raises(ValueError, match="allowed"):
        ppo_policy_loss(z, z, z, z, aggregation="sum")
    with pytest.raises(ValueError, match="returns"):
        ppo_value_loss(z, z, torch.zeros(2, 2), z)
    with pytest.raises(ValueError, match=r"allowed: \['k1', 'k2', 'k3'\]"):
        kl_loss_term(z, z, z, estimator="k4")


def test_kl_loss_term_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -9.0, -9.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, 0.0], [-0.5 - math.log(2), 0.0, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    term, metrics = kl_loss_term(logp, ref, mask, estimator="k3")
    # lr on response tokens: 1, -1, ln 2; k3 = 0.36787944 + 0.71828183 + 0.19314718 = 1.27930845
    assert term.item() == pytest.approx(1.2793084501909326 / 3)
    assert metrics == {
        "kl/loss_term": pytest.approx(1.2793084501909326 / 3),
        "kl/loss_clamped": 0.0,
    }
    term.backward()
    # d k3 / d logp = 1 - exp(-lr), divided by 3 tokens: (1 - 1/e, 1 - e, 1 - 1/2) / 3
    expected = torch.tensor([[1 - math.exp(-1), 1 - math.e, 0.0], [0.5, 0.0, 0.0]], dtype=F64) / 3
    torch.testing.assert_close(logp.grad, expected)
    k1_term, _ = kl_loss_term(logp, ref, mask, estimator="k1")
    assert k1_term.item() == pytest.approx(math.log(2) / 3)  # (1 - 1 + ln 2) / 3
    k2_term, _ = kl_loss_term(logp, ref, mask, estimator="k2", aggregation="seq_mean")
    # seq_mean of k2: row 0 (0.5 + 0.5) / 2 = 0.5, row 1 (ln 2)^2 / 2 = 0.2402265; mean 0.3701133
    assert k2_term.item() == pytest.approx((0.5 + 0.2402265069591007) / 2)


def test_kl_loss_term_clamps_and_reports():
    logp = torch.tensor([[-30.0, -1.0]], requires_grad=True)
    term, metrics = kl_loss_term(logp, torch.tensor([[-1.0, -1.0]]), torch.ones(1, 2))
    term.backward()
    assert metrics["kl/loss_clamped"] == 1.0  # lr = -29 < -20
    assert math.isfinite(term.item()) and torch.isfinite(logp.grad).all()


def test_expected_gradients_of_kl_estimators_in_the_loss():
    # Exact expectation over a categorical pi (no sampling): sum_a pi(a) * grad k(lr(a)).
    theta = torch.tensor([0.3, -0.2, 1.0, 0.0, -1.5], dtype=F64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([0.0, 0.5, -0.5, 1.0, 0.2], dtype=F64), 0)

    def expected_grad(name):
        logp = torch.log_softmax(theta, 0)
        kl, _ = KL_ESTIMATORS[name](logp - ref_logp)
        (g,) = torch.autograd.grad((logp.exp().detach() * kl).sum(), theta)
        return g

    def grad_of(kl_fn):
        logp = torch.log_softmax(theta, 0)
        (g,) = torch.autograd.grad(kl_fn(logp), theta)
        return g

    forward_kl = grad_of(lambda lp: (lp.exp() * (lp - ref_logp)).sum())  # KL(pi || ref)
    reverse_kl = grad_of(lambda lp: (ref_logp.exp() * (ref_logp - lp)).sum())  # KL(ref || pi)
    torch.testing.assert_close(expected_grad("k2"), forward_kl)
    torch.testing.assert_close(expected_grad("k3"), reverse_kl)
    torch.testing.assert_close(expected_grad("k1"), torch.zeros(5, dtype=F64))
    assert not torch.allclose(forward_kl, reverse_kl, atol=1e-3)
