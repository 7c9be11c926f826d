"""Numbers for the DAA losses (proxygap/losses/daa.py) and sequence log-probs (losses/sequence.py).

Expected values are derived by hand in the comments. Where TRL implements the same loss, its code
serves as an independent oracle (``pytest.importorskip("trl")``): DPOTrainer._compute_loss for
sigmoid (DPO), hinge (SLiC), ipo and sigmoid+sft (RPO); CPOTrainer.cpo_loss for the label-smoothed
sigmoid (cDPO) and simpo; selective_log_softmax / CPOTrainer.get_batch_logps for the log-probs.
"""

from __future__ import annotations

import collections
import math
import types
import warnings

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
from proxygap.losses.sequence import masked_mean, sequence_logprobs, token_logprobs

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


def _random_pairs(b: int = 6, seed: int = 0) -> PairBatchLogps:
    g = torch.Generator().manual_seed(seed)

    def logps() -> torch.Tensor:
        return -30.0 * torch.rand(b, generator=g, dtype=F64)

    return PairBatchLogps(
        policy_chosen=logps(),
        policy_rejected=logps(),
        ref_chosen=logps(),
        ref_rejected=logps(),
        chosen_len=torch.randint(1, 40, (b,), generator=g),
        rejected_len=torch.randint(1, 40, (b,), generator=g),
    )


def test_cdpo_eps0_equals_dpo_exactly():
    p = _random_pairs()
    args = (p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected)
    dpo, dpo_m = dpo_loss(*args, beta=0.3)
    cdpo, cdpo_m = cdpo_loss(*args, beta=0.3, label_smoothing=0.0)
    assert torch.equal(dpo, cdpo) and dpo_m == cdpo_m
    h = (p.policy_chosen - p.ref_chosen) - (p.policy_rejected - p.ref_rejected)
    assert torch.equal(dpo, -F.logsigmoid(0.3 * h))


def test_rpo_eta0_equals_dpo_exactly():
    p = _random_pairs()
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


@pytest.mark.parametrize("name", sorted(DAA_LOSSES))
def test_gradcheck_wrt_policy_logps(name):
    p = _random_pairs(b=4, seed=1)
    pc = p.policy_chosen.clone().requires_grad_(True)
    pr = p.policy_rejected.clone().requires_grad_(True)

    def f(pc: torch.Tensor, pr: torch.Tensor) -> torch.Tensor:
        batch = PairBatchLogps(pc, pr, p.ref_chosen, p.ref_rejected, p.chosen_len, p.rejected_len)
        return _call(name, batch, **GRAD_HYPER[name])

    assert torch.autograd.gradcheck(f, (pc, pr), eps=1e-6, atol=1e-9)


def test_registry_matches_direct_calls():
    p = _random_pairs()
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
    assert set(direct) == set(DAA_LOSSES)
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


def test_registry_errors():
    p = _random_pairs()
    allowed = "allowed: \\['cdpo', 'dpo', 'ipo', 'rpo', 'simpo', 'slic'\\]"
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


# --------------------------------------------------------------------------- sequence log-probs


def test_token_logprobs_matches_naive_and_ignores_negative_labels():
    g = torch.Generator().manual_seed(0)
    logits = 5.0 * torch.randn(3, 6, 17, generator=g, dtype=F64)
    labels = torch.randint(0, 17, (3, 6), generator=g)
    naive = logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, labels), naive, **TOL)
    labels[1, 2:] = -100
    out = token_logprobs(logits, labels)
    assert torch.equal(out[1, 2:], torch.zeros(4, dtype=F64))
    torch.testing.assert_close(out[1, :2], naive[1, :2], **TOL)
    half = token_logprobs(logits.to(torch.bfloat16), labels)
    assert half.dtype == torch.float32
    # bf16 keeps 8 significand bits: logits up to ~16 are rounded by up to 0.03 each
    torch.testing.assert_close(half.double(), out, rtol=0.0, atol=0.15)


def test_sequence_logprobs_hand_value():
    # uniform over V = 4 tokens: each scored token has log(1/4); 3 masked-in tokens -> -3 log 4
    logits = torch.zeros(1, 5, 4, dtype=F64)
    mask = torch.tensor([[0, 1, 1, 1, 0]])
    out = sequence_logprobs(logits, torch.tensor([[0, 1, 2, 3, -100]]), mask)
    torch.testing.assert_close(out, t(-3 * math.log(4)), **TOL)


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


def test_sequence_logprobs_bad_shapes():
    with pytest.raises(ValueError, match="mask must have the shape of labels"):
        sequence_logprobs(
            torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4)
        )
    with pytest.raises(ValueError, match="labels must have shape \\(B, T\\)"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="logits must have shape \\(B, T, V\\)"):
        token_logprobs(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_masked_mean():
    x = t(1.0, 2.0, 3.0, 4.0, 5.0, float("nan")).reshape(2, 3)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # row 0: (1 + 2) / 2 = 1.5; row 1: empty mask -> 0; overall (1 + 2) / 2 = 1.5
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), t(1.5, 0.0), **TOL)
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor(1.5, dtype=F64), **TOL)
    mask2 = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    # columns: (1 + 4) / 2 = 2.5; 5 / 1 = 5; 3 / 1 = 3 (the NaN at [1, 2] is masked out)
    torch.testing.assert_close(masked_mean(x, mask2, dim=0), t(2.5, 5.0, 3.0), **TOL)
    with pytest.raises(ValueError, match="mask must have the shape of x"):
        masked_mean(x, mask[:, :2])


# --------------------------------------------------------------------------- TRL as oracle


@pytest.fixture(scope="module")
def trl():
    trl = pytest.importorskip("trl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOTrainer
        from trl.trainer.dpo_trainer import DPOTrainer
        from trl.trainer.utils import selective_log_softmax
    return types.SimpleNamespace(
        version=trl.__version__,
        DPOTrainer=DPOTrainer,
        CPOTrainer=CPOTrainer,
        selective_log_softmax=selective_log_softmax,
    )


class _FakeFusedLM:
    """Stands in for a model patched by TRL's ``add_fused_lm_head``: returns per-token log-probs
    of ``labels[:, 1:]`` (0 where the label is -100) computed with TRL's own selective_log_softmax
    from fixed logits."""

    training = True

    def __init__(self, logits: torch.Tensor, selective_log_softmax):
        self.logits, self.sls = logits, selective_log_softmax

    def __call__(self, *, labels, fused_lm_head, **_):
        assert fused_lm_head
        shift = labels[:, 1:]
        keep = shift != -100
        lp = self.sls(self.logits[:, :-1], shift.clamp(min=0)).masked_fill(~keep, 0.0)
        zeros = torch.zeros_like(lp)
        return types.SimpleNamespace(
            log_probs=lp,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(keep),
            aux_loss=None,
        )


def _trl_dpo(trl, batch, loss_types, beta, loss_weights=None):
    """TRL's ``DPOTrainer._compute_loss`` on a minimal stand-in ``self`` (precomputed ref logps,
    reverse KL, no weighting): returns (mean loss, TRL's logged metrics)."""
    model = _FakeFusedLM(batch["logits"], trl.selective_log_softmax)
    accelerator = types.SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    stub = types.SimpleNamespace(
        model=model,
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=loss_weights or [1.0] * len(loss_types),
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        k: batch[k]
        for k in ("input_ids", "completion_mask", "ref_chosen_logps", "ref_rejected_logps")
    }
    inputs["attention_mask"] = batch["attention_mask"]
    loss = trl.DPOTrainer._compute_loss(stub, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in stub._metrics["train"].items()}


def _pair_batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """TRL's DPO layout: rows [chosen_0..chosen_{b-1}, rejected_0..], right padded, prompt first."""
    g = torch.Generator().manual_seed(seed)
    T, V = 12, 13
    input_ids = torch.randint(0, V, (2 * b, T), generator=g)
    completion_mask = torch.zeros(2 * b, T, dtype=torch.long)
    attention_mask = torch.zeros(2 * b, T, dtype=torch.long)
    for i in range(2 * b):
        prompt = int(torch.randint(1, 4, (1,), generator=g))
        n = int(torch.randint(1, T - prompt + 1, (1,), generator=g))
        completion_mask[i, prompt : prompt + n] = 1
        attention_mask[i, : prompt + n] = 1
    return {
        "logits": (3.0 * torch.randn(2 * b, T, V, generator=g, dtype=F64)).requires_grad_(True),
        "input_ids": input_ids,
        "completion_mask": completion_mask,
        "attention_mask": attention_mask,
        "ref_chosen_logps": -20.0 * torch.rand(b, generator=g, dtype=F64),
        "ref_rejected_logps": -20.0 * torch.rand(b, generator=g, dtype=F64),
    }


def _ours_logps(batch) -> PairBatchLogps:
    # Shift for a causal LM: position t scores token t + 1 (see losses/sequence.py).
    mask = batch["completion_mask"][:, 1:]
    logps = sequence_logprobs(batch["logits"][:, :-1], batch["input_ids"][:, 1:], mask)
    lens = mask.sum(-1)
    pc, pr = logps.chunk(2)
    lc, lr = lens.chunk(2)
    return PairBatchLogps(pc, pr, batch["ref_chosen_logps"], batch["ref_rejected_logps"], lc, lr)


def _subset(batch, i: int) -> dict[str, torch.Tensor]:
    """Pair ``i`` alone, in the same layout (rows chosen_i, rejected_i)."""
    b = batch["ref_chosen_logps"].shape[0]
    out = {k: v[[i, b + i]] for k, v in batch.items() if v.shape[0] == 2 * b}
    out["ref_chosen_logps"] = batch["ref_chosen_logps"][i : i + 1]
    out["ref_rejected_logps"] = batch["ref_rejected_logps"][i : i + 1]
    return out


@pytest.mark.parametrize(
    ("trl_type", "name", "beta"),
    [("sigmoid", "dpo", 0.1), ("sigmoid", "dpo", 0.7), ("hinge", "slic", 0.1)],
)
def test_dpo_and_slic_match_trl_dpo_trainer(trl, trl_type, name, beta):
    batch = _pair_batch()
    trl_loss, trl_m = _trl_dpo(trl, batch, [trl_type], beta)
    (trl_grad,) = torch.autograd.grad(trl_loss, batch["logits"])
    losses, m = compute_daa_loss(name, _ours_logps(batch), beta=beta)
    (grad,) = torch.autograd.grad(losses.mean(), batch["logits"])
    torch.testing.assert_close(losses.mean(), trl_loss, **TOL)
    torch.testing.assert_close(grad, trl_grad, **TOL)
    for ours_key, trl_key in [
        ("daa/chosen_reward", "rewards/chosen"),
        ("daa/rejected_reward", "rewards/rejected"),
        ("daa/margin", "rewards/margins"),
        ("daa/accuracy", "rewards/accuracies"),
    ]:
        assert m[ours_key] == pytest.approx(trl_m[trl_key], abs=1e-12)
    for i in range(2):  # per-pair values: TRL only returns the batch mean, so use batches of one
        one, _ = _trl_dpo(trl, _subset(batch, i), [trl_type], beta)
        torch.testing.assert_close(losses[i], one, **TOL)


def test_ipo_matches_trl_with_per_token_average(trl):
    # TRL 1.x divides each log-ratio by the response length before the IPO square; ipo_loss uses
    # the sums (docs/methods.md §5). Feeding per-token averages reproduces TRL exactly.
    batch, beta = _pair_batch(seed=1), 0.1
    trl_loss, _ = _trl_dpo(trl, batch, ["ipo"], beta)
    p = _ours_logps(batch)
    lc, lr = p.chosen_len.to(F64), p.rejected_len.to(F64)
    avg, _ = ipo_loss(
        p.policy_chosen / lc,
        p.policy_rejected / lr,
        p.ref_chosen / lc,
        p.ref_rejected / lr,
        beta=beta,
    )
    torch.testing.assert_close(avg.mean(), trl_loss, **TOL)
    summed, _ = ipo_loss(
        p.policy_chosen, p.policy_rejected, p.ref_chosen, p.ref_rejected, beta=beta
    )
    assert not torch.allclose(summed.mean(), trl_loss)  # the documented difference is real


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_rpo_matches_trl_sigmoid_plus_sft(trl, eta):
    # TRL's RPO: loss_type ["sigmoid", "sft"], weights [1, eta]. Its SFT term is a token mean over
    # the whole batch, equal to NLL(y_w) / |y_w| for a batch of one pair.
    batch = _pair_batch(seed=2)
    losses, _ = compute_daa_loss("rpo", _ours_logps(batch), beta=0.1, eta=eta)
    for i in range(batch["ref_chosen_logps"].shape[0]):
        one, _ = _trl_dpo(trl, _subset(batch, i), ["sigmoid", "sft"], 0.1, [1.0, eta])
        torch.testing.assert_close(losses[i], one, **TOL)


def _trl_cpo_losses(trl, chosen, rejected, *, loss_type, beta, label_smoothing=0.0, gamma=0.5):
    """``CPOTrainer.cpo_loss`` (per-example losses) on a stand-in ``self``."""
    stub = types.SimpleNamespace(
        alpha=0.0,
        accelerator=types.SimpleNamespace(device="cpu"),
        loss_type=loss_type,
        beta=beta,
        label_smoothing=label_smoothing,
        simpo_gamma=gamma,
    )
    return trl.CPOTrainer.cpo_loss(stub, chosen, rejected)[0]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_cdpo_matches_trl_cpo_label_smoothed_sigmoid(trl, eps):
    # TRL 1.x's DPOTrainer sigmoid loss has no label smoothing (its label_smoothing feeds the
    # "robust" and "exo_pair" losses, which are different). CPOTrainer.cpo_loss keeps the cDPO
    # form -(1-eps) log sigma(beta z) - eps log sigma(-beta z) of z = chosen - rejected; given the
    # policy-minus-reference log-ratios, z = h and it is exactly cDPO.
    p = _random_pairs(b=8, seed=4)
    ours, _ = dpo_loss(
        p.policy_chosen,
        p.policy_rejected,
        p.ref_chosen,
        p.ref_rejected,
        beta=0.25,
        label_smoothing=eps,
    )
    theirs = _trl_cpo_losses(
        trl,
        p.policy_chosen - p.ref_chosen,
        p.policy_rejected - p.ref_rejected,
        loss_type="sigmoid",
        beta=0.25,
        label_smoothing=eps,
    )
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 1.0), (2.5, 0.3), (0.5, 0.0)])
def test_simpo_matches_trl_cpo_simpo(trl, beta, gamma):
    # CPOTrainer computes SimPO on per-token average log-probs (average_log_prob=True).
    p = _random_pairs(b=8, seed=5)
    ours, _ = simpo_loss(
        p.policy_chosen, p.policy_rejected, p.chosen_len, p.rejected_len, beta=beta, gamma=gamma
    )
    theirs = _trl_cpo_losses(
        trl,
        p.policy_chosen / p.chosen_len,
        p.policy_rejected / p.rejected_len,
        loss_type="simpo",
        beta=beta,
        gamma=gamma,
    )
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-12)


def test_sequence_logprobs_matches_trl(trl):
    batch = _pair_batch(seed=6)
    logits, ids, cm = batch["logits"].detach(), batch["input_ids"], batch["completion_mask"]
    labels = ids.masked_fill(cm == 0, -100)  # TRL's convention: unshifted labels, -100 = ignore
    theirs = trl.CPOTrainer.get_batch_logps(logits, labels)  # shifts internally
    ours = sequence_logprobs(logits[:, :-1], ids[:, 1:], cm[:, 1:])
    torch.testing.assert_close(ours, theirs, **TOL)
    torch.testing.assert_close(
        token_logprobs(logits, ids), trl.selective_log_softmax(logits, ids), **TOL
    )
