"""Numbers for the DAA losses (proxygap/losses/daa.py) and sequence log-probs (losses/sequence.py).

Expected values are derived by hand in the comments. Where TRL implements the same loss, its code
serves as an independent oracle (``pytest.importorskip("trl")``): DPOTrainer._compute_loss for
sigmoid (DPO), hinge (SLiC), ipo and sigmoid+sft (RPO); CPOTrainer.cpo_loss for the label-smoothed
sigmoid (cDPO) and simpo; selective_log_softmax / CPOTrainer.get_batch_logps for the log-probs.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from proxygap.losses.daa import (
    DAA_LOSSES,
    PairBatchLogps,
    cdpo_loss,
    compute_daa_loss,
    dpo_loss,
    ipo_loss,
    rpo_loss,
    simpo_loss,
    slic_loss,
)
from proxygap.losses.fdpo import FDPO_LOSSES
from proxygap.losses.sequence import sequence_logprobs, token_logprobs

F64 = torch.float64
TOL = {"rtol": 0.0, "atol": 1e-12}


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=F64)


# Two pairs used by the hand-derived tests.
# pair 0: chosen log-ratio -3.0 - (-3.5) = 0.5, rejected log-ratio -4.0 - (-3.5) = -0.5, so h = 1.
# pair 1: chosen log-ratio -2.0 - (-1.0) = -1.0, rejected log-ratio -1.0 - (-1.0) = 0,  so h = -1.
PC, RC = t(-3.0, -2.0), t(-3.5, -1.0)
PR, RR = t(-4.0, -1.0), t(-3.5, -1.0)
LOG1P_EXP_M05 = 0.4740769841801067  # log(1 + e^{-0.5}) = -log sigma(0.5)
LOG1P_EXP_P05 = 0.9740769841801067  # log(1 + e^{0.5}) = 0.5 + log(1 + e^{-0.5})


# --------------------------------------------------------------------------- hand-derived values


def test_dpo_hand_values_and_metrics():
    # beta = 0.5: pair 0 -log sigma(0.5 * 1) = log(1+e^-0.5); pair 1 -log sigma(-0.5) = log(1+e^0.5)
    losses, m = dpo_loss(PC, PR, RC, RR, beta=0.5)
    torch.testing.assert_close(losses, t(LOG1P_EXP_M05, LOG1P_EXP_P05), **TOL)
    # rewards beta * log-ratio: chosen (0.25, -0.5), rejected (-0.25, 0); margins (0.5, -0.5)
    assert m["daa/chosen_reward"] == pytest.approx(-0.125, abs=1e-15)
    assert m["daa/rejected_reward"] == pytest.approx(-0.125, abs=1e-15)
    assert m["daa/margin"] == pytest.approx(0.0, abs=1e-15)
    assert m["daa/accuracy"] == 0.5
    assert m["daa/loss"] == pytest.approx((LOG1P_EXP_M05 + LOG1P_EXP_P05) / 2, abs=1e-15)
    assert all(isinstance(v, float) for v in m.values())


def test_cdpo_hand_values():
    # eps = 0.25, beta = 0.5. -log sigma(-x) = x - log sigma(x), so with L = log(1+e^-0.5):
    # h = 1:  0.75 * L + 0.25 * (L + 0.5) = L + 0.125 = 0.5990769841801067
    # h = -1: 0.75 * (L + 0.5) + 0.25 * L = L + 0.375 = 0.8490769841801067
    losses, _ = cdpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.25)
    torch.testing.assert_close(losses, t(0.5990769841801067, 0.8490769841801067), **TOL)


def test_ipo_hand_values():
    # beta = 0.25: target 1/(2 beta) = 2;  h = 1 -> (1-2)^2 = 1;      h = -1 -> (-1-2)^2 = 9
    # beta = 1:    target 0.5;             h = 1 -> (0.5)^2 = 0.25;   h = -1 -> (-1.5)^2 = 2.25
    torch.testing.assert_close(ipo_loss(PC, PR, RC, RR, beta=0.25)[0], t(1.0, 9.0), **TOL)
    torch.testing.assert_close(ipo_loss(PC, PR, RC, RR, beta=1.0)[0], t(0.25, 2.25), **TOL)


def test_slic_hand_values():
    # beta = 0.5: h = 1 -> max(0, 1 - 0.5) = 0.5;  h = -1 -> 1.5
    torch.testing.assert_close(slic_loss(PC, PR, RC, RR, beta=0.5)[0], t(0.5, 1.5), **TOL)
    # beta = 2: h = 1 -> max(0, 1 - 2) = 0;  h = -1 -> 3
    torch.testing.assert_close(slic_loss(PC, PR, RC, RR, beta=2.0)[0], t(0.0, 3.0), **TOL)


def test_simpo_hand_values_and_metrics():
    # pair 0: chosen -6 over 3 tokens = -2/token, rejected -12 over 4 = -3/token.
    #   beta = 2: rewards -4, -6; gamma = 1: -log sigma(-4 + 6 - 1) = log(1 + e^-1) = 0.313261687518
    # pair 1: chosen -3 over 1 token, rejected -4 over 2 tokens = -2/token.
    #   rewards -6, -4: -log sigma(-6 + 4 - 1) = log(1 + e^3) = 3.048587351573742
    losses, m = simpo_loss(
        t(-6.0, -3.0),
        t(-12.0, -4.0),
        torch.tensor([3, 1]),
        torch.tensor([4, 2]),
        beta=2.0,
        gamma=1.0,
    )
    torch.testing.assert_close(losses, t(math.log1p(math.exp(-1)), math.log1p(math.exp(3))), **TOL)
    assert losses[0].item() == pytest.approx(0.31326168751822286, abs=1e-15)
    assert m["daa/chosen_reward"] == pytest.approx(-5.0)  # mean(-4, -6)
    assert m["daa/rejected_reward"] == pytest.approx(-5.0)  # mean(-6, -4)
    assert m["daa/margin"] == pytest.approx(0.0)
    assert m["daa/accuracy"] == 0.5


def test_rpo_hand_values():
    # DPO part as in test_dpo (beta = 0.5). NLL(chosen) = -log pi(y_w) = (3, 2) over (2, 4) tokens
    # = (1.5, 0.5) per token; eta = 0.5 adds (0.75, 0.25).
    losses, m = rpo_loss(PC, PR, RC, RR, -PC, torch.tensor([2, 4]), beta=0.5, eta=0.5)
    torch.testing.assert_close(losses, t(LOG1P_EXP_M05 + 0.75, LOG1P_EXP_P05 + 0.25), **TOL)
    assert m["daa/nll"] == pytest.approx(1.0)


def test_dpo_large_margins_are_finite():
    # |beta h| = 1e4: log(1 + e^-x) must not overflow. -log sigma(1e4) ~ e^-1e4 = 0 in float64;
    # -log sigma(-1e4) = 1e4 + log(1 + e^-1e4) = 1e4.
    h = t(1e5, -1e5)
    losses, _ = dpo_loss(
        h, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), beta=0.1
    )
    torch.testing.assert_close(losses, t(0.0, 1e4), **TOL)


# --------------------------------------------------------------------------- special cases


def test_cdpo_eps0_equals_dpo_exactly(random_pairs):
    p = random_pairs()
    args = (p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected)
    dpo, dpo_m = dpo_loss(*args, beta=0.3)
    cdpo, cdpo_m = cdpo_loss(*args, beta=0.3, label_smoothing=0.0)
    assert torch.equal(dpo, cdpo) and dpo_m == cdpo_m
    h = (p.policy_chosen - p.ref_chosen) - (p.policy_rejected - p.ref_rejected)
    assert torch.equal(dpo, -F.logsigmoid(0.3 * h))


def test_rpo_eta0_equals_dpo_exactly(random_pairs):
    p = random_pairs()
    args = (p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected)
    dpo, dpo_m = dpo_loss(*args, beta=0.2)
    rpo, rpo_m = rpo_loss(*args, -p.policy_chosen, p.chosen_len, beta=0.2, eta=0.0)
    assert torch.equal(dpo, rpo)
    assert {k: v for k, v in rpo_m.items() if k != "daa/nll"} == dpo_m


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_ipo_minimum_at_half_inverse_beta(beta):
    target = 1.0 / (2.0 * beta)
    h = torch.linspace(target - 3.0, target + 3.0, 601, dtype=F64)  # step 0.01, contains target
    zeros = torch.zeros_like(h)
    losses, _ = ipo_loss(h, zeros, zeros, zeros, beta=beta)
    assert h[losses.argmin()].item() == pytest.approx(target, abs=1e-9)
    at = torch.tensor([target], dtype=F64, requires_grad=True)
    z1 = torch.zeros(1, dtype=F64)
    loss, _ = ipo_loss(at, z1, z1, z1, beta=beta)
    (grad,) = torch.autograd.grad(loss.sum(), at)
    assert loss.item() == 0.0 and grad.item() == 0.0


def test_slic_zero_when_margin_reached():
    beta = 0.5
    # beta * h = 1, 1.25, 5 (margin reached), then 0.95 and -0.5 (not reached)
    h = torch.tensor([2.0, 2.5, 10.0, 1.9, -1.0], dtype=F64, requires_grad=True)
    zeros = torch.zeros(5, dtype=F64)
    losses, _ = slic_loss(h, zeros, zeros, zeros, beta=beta)
    (grad,) = torch.autograd.grad(losses.sum(), h)
    assert torch.equal(losses[:3], torch.zeros(3, dtype=F64))
    assert torch.equal(grad[:3], torch.zeros(3, dtype=F64))
    torch.testing.assert_close(losses[3:], t(1 - 0.95, 1.5), **TOL)  # 1 - beta*h
    torch.testing.assert_close(grad[3:], t(-beta, -beta), **TOL)


def test_simpo_length_normalisation():
    # Same per-token log-prob (-0.7 chosen, -1.1 rejected) at lengths n and 2n: same loss.
    lp_c, lp_l, n_c, n_l = -0.7, -1.1, torch.tensor([5, 3]), torch.tensor([4, 7])
    short, _ = simpo_loss(lp_c * n_c.to(F64), lp_l * n_l.to(F64), n_c, n_l, beta=2.0, gamma=0.5)
    long, _ = simpo_loss(
        lp_c * 2 * n_c.to(F64), lp_l * 2 * n_l.to(F64), 2 * n_c, 2 * n_l, beta=2.0, gamma=0.5
    )
    torch.testing.assert_close(short, long, **TOL)
    # -log sigma(2 * (-0.7 + 1.1) - 0.5) = -log sigma(0.3) for every pair
    torch.testing.assert_close(
        short, torch.full((2,), math.log1p(math.exp(-0.3)), dtype=F64), **TOL
    )
    # From tokens: with every position sharing one distribution, a response of k tokens has
    # log-prob k * lp. Pair 0 has 4 tokens, pair 1 has 8; rejected = chosen - 0.25 per token.
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 1, 7, generator=g, dtype=F64).expand(2, 12, 7)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :4], mask[1, :8] = True, True
    chosen = sequence_logprobs(logits, torch.full((2, 12), 3), mask)
    lens = mask.sum(-1)
    losses, _ = simpo_loss(chosen, chosen - 0.25 * lens, lens, lens)
    torch.testing.assert_close(losses[0], losses[1], **TOL)


# --------------------------------------------------------------------------- gradients, registry


def _call(name: str, p: PairBatchLogps, **hyper: float) -> torch.Tensor:
    return compute_daa_loss(name, p, **hyper)[0]


GRAD_HYPER = {
    "dpo": {"beta": 0.3},
    "cdpo": {"beta": 0.3, "label_smoothing": 0.2},
    "ipo": {"beta": 0.3},
    "slic": {"beta": 0.01},  # beta*h stays within (-1, 1) here: away from the hinge kink
    "simpo": {"beta": 2.0, "gamma": 0.5},
    "rpo": {"beta": 0.3, "eta": 0.7},
}


# the f-DPO losses have their own gradchecks in test_fdpo.py
@pytest.mark.parametrize("name", sorted(GRAD_HYPER))
def test_gradcheck_wrt_policy_logps(name, random_pairs):
    p = random_pairs(b=4, seed=1)
    pc = p.policy_chosen.clone().requires_grad_(True)
    pr = p.policy_rejected.clone().requires_grad_(True)

    def f(pc: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
        batch = PairBatchLogps(pc, pr, p.ref_chosen, p.ref_rejected, p.chosen_len, p.rejected_len)
        return _call(name, batch, **GRAD_HYPER[name])

    assert torch.autograd.gradcheck(f, (pc, pr), eps=1e-6, atol=1e-9)


def test_registry_matches_direct_calls(random_pairs):
    p = random_pairs()
    ref = (p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected)
    direct = {
        "dpo": dpo_loss(*ref, **GRAD_HYPER["dpo"]),
        "cdpo": cdpo_loss(*ref, **GRAD_HYPER["cdpo"]),
        "ipo": ipo_loss(*ref, **GRAD_HYPER["ipo"]),
        "slic": slic_loss(*ref, **GRAD_HYPER["slic"]),
        "simpo": simpo_loss(
            p.policy_chosen, p.policy_rejected, p.chosen_len, p.rejected_len, **GRAD_HYPER["simpo"]
        ),
        "rpo": rpo_loss(*ref, -p.policy_chosen, p.chosen_len, **GRAD_HYPER["rpo"]),
    }
    assert set(direct) | set(FDPO_LOSSES) == set(DAA_LOSSES)
    for name, (losses, metrics) in direct.items():
        got, got_metrics = compute_daa_loss(name, p, **GRAD_HYPER[name])
        assert torch.equal(got, losses) and got_metrics == metrics, name
    # SimPO needs no reference; defaults are the documented paper setting.
    assert DAA_LOSSES["simpo"].hyperparameters() == {"beta": 2.0, "gamma": 1.0}
    no_ref = PairBatchLogps(
        p.policy_chosen, p.policy_rejected, chosen_len=p.chosen_len, rejected_len=p.rejected_len
    )
    expected, _ = simpo_loss(p.policy_chosen, p.policy_rejected, p.chosen_len, p.rejected_len)
    assert torch.equal(compute_daa_loss("simpo", no_ref)[0], expected)


# --------------------------------------------------------------------------- bad input


def test_bad_shapes():
    with pytest.raises(ValueError, match="policy_rejected_logps has shape \\(1,\\)"):
        dpo_loss(t(1.0, 2.0), t(1.0), t(1.0, 2.0), t(1.0, 2.0))
    with pytest.raises(ValueError, match="must have shape \\(B,\\)"):
        ipo_loss(torch.zeros(2, 1, dtype=F64), *(torch.zeros(2, 1, dtype=F64),) * 3)
    with pytest.raises(ValueError, match="rejected_lengths"):
        simpo_loss(t(1.0, 2.0), t(1.0, 2.0), torch.tensor([1, 2]), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="empty batch"):
        dpo_loss(*(torch.zeros(0, dtype=F64),) * 4)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="beta must be a finite number > 0, got -0.1"):
        dpo_loss(PC, PR, RC, RR, beta=-0.1)
    for fn in (ipo_loss, slic_loss):
        with pytest.raises(ValueError, match="beta"):
            fn(PC, PR, RC, RR, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        simpo_loss(PC, PR, torch.tensor([1, 1]), torch.tensor([1, 1]), beta=-2.0)
    with pytest.raises(ValueError, match="beta"):
        rpo_loss(PC, PR, RC, RR, -PC, torch.tensor([1, 1]), beta=float("nan"))
    with pytest.raises(ValueError, match="label_smoothing must be in \\[0, 0.5\\)"):
        cdpo_loss(PC, PR, RC, RR, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, label_smoothing=-0.1)
    with pytest.raises(ValueError, match="gamma"):
        simpo_loss(PC, PR, torch.tensor([1, 1]), torch.tensor([1, 1]), gamma=-1.0)
    with pytest.raises(ValueError, match="eta"):
        rpo_loss(PC, PR, RC, RR, -PC, torch.tensor([1, 1]), eta=-1.0)
    with pytest.raises(ValueError, match="chosen_lengths must be > 0"):
        simpo_loss(PC, PR, torch.tensor([0, 1]), torch.tensor([1, 1]))


def test_registry_errors(random_pairs):
    p = random_pairs()
    allowed = (
        "allowed: \\['cdpo', 'dpo', 'fdpo_alpha', 'fdpo_fkl', 'fdpo_js', 'fdpo_rkl', 'ipo', "
        "'rpo', 'simpo', 'slic'\\]"
    )
    with pytest.raises(ValueError, match=f"unknown DAA loss 'dpoo'; {allowed}"):
        compute_daa_loss("dpoo", p)
    with pytest.raises(
        ValueError,
        match="unknown hyperparameter\\(s\\) \\['gamma'\\] for loss "
        "'dpo'; allowed: \\['beta', 'label_smoothing'\\]",
    ):
        compute_daa_loss("dpo", p, gamma=1.0)
    with pytest.raises(ValueError, match="'cdpo' requires hyperparameter\\(s\\) \\['label_smooth"):
        compute_daa_loss("cdpo", p)
    with pytest.raises(ValueError, match="needs PairBatchLogps.ref_chosen"):
        compute_daa_loss("ipo", PairBatchLogps(p.policy_chosen, p.policy_rejected))
    with pytest.raises(ValueError, match="needs PairBatchLogps.chosen_len"):
        compute_daa_loss(
            "rpo", PairBatchLogps(p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected)
        )
    with pytest.raises(ValueError, match="beta"):
        compute_daa_loss("slic", p, beta=-1.0)


def test_padding_invariance_of_logps_and_losses():
    # The same two pairs laid out right-padded (T = 9) and left-padded (T = 13). Pad positions get
    # arbitrary (large, random, even NaN) logits and junk labels; the response mask excludes them.
    g = torch.Generator().manual_seed(3)
    V, lengths = 11, [5, 2, 7, 4]  # response lengths of chosen0, chosen1, rejected0, rejected1
    rows = [
        (torch.randn(n, V, generator=g, dtype=F64), torch.randint(0, V, (n,), generator=g))
        for n in lengths
    ]

    def layout(total: int, left: bool) -> tuple[torch.Tensor, ...]:
        logits = 1e3 * torch.randn(4, total, V, generator=g, dtype=F64)
        logits[0, 0, 0] = float("nan")
        labels = torch.randint(-100, V, (4, total), generator=g)  # junk, some negative
        mask = torch.zeros(4, total, dtype=torch.bool)
        for i, (row_logits, row_labels) in enumerate(rows):
            n = len(row_labels)
            # left: response flush right; right: after one prompt slot, padding after it
            sl = slice(total - n, total) if left else slice(1, 1 + n)
            logits[i, sl], labels[i, sl], mask[i, sl] = row_logits, row_labels, True
        return logits, labels, mask

    right = sequence_logprobs(*layout(9, left=False))
    left = sequence_logprobs(*layout(13, left=True))
    torch.testing.assert_close(right, left, **TOL)
    expected = torch.stack([token_logprobs(lg[None], lb[None]).sum() for lg, lb in rows])
    torch.testing.assert_close(right, expected, **TOL)
    ref = right.detach() - 0.5  # any fixed reference
    lens = torch.tensor(lengths)
    for name in sorted(DAA_LOSSES):
        hyper = {"label_smoothing": 0.1} if name == "cdpo" else {}
        a, b = (
            PairBatchLogps(x[:2], x[2:], ref[:2], ref[2:], lens[:2], lens[2:])
            for x in (right, left)
        )
        torch.testing.assert_close(_call(name, a, **hyper), _call(name, b, **hyper), **TOL)
