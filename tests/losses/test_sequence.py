"""Token and sequence log-probabilities and masked means (proxygap/losses/sequence.py)
against naive loops, hand values and padding invariance."""

from __future__ import annotations

import math

import pytest
import torch

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
