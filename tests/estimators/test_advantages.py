"""Tests for proxygap.estimators.advantages."""

import statistics

import pytest
import torch

from proxygap.estimators.advantages import (
    gae,
    grpo_advantages,
    kl_penalised_token_rewards,
    reinforce_baseline_advantages,
    rloo_advantages,
)
from proxygap.estimators.kl import sequence_kl

NAN = float("nan")


def _random_block_mask(gen: torch.Generator, B: int, T: int) -> torch.Tensor:
    """Rows of one contiguous block at a random start with a random length (0 to T)."""
    mask = torch.zeros(B, T)
    for b in range(B):
        length = int(torch.randint(0, T + 1, (1,), generator=gen))
        start = int(torch.randint(0, T - length + 1, (1,), generator=gen))
        mask[b, start : start + length] = 1.0
    mask[0] = 1.0  # one full row
    mask[1] = 0.0  # one empty row
    return mask


def _naive_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one python list per sequence over its response tokens."""
    adv = torch.zeros_like(rewards)
    ret = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t] != 0]
        r = [rewards[b, t].item() for t in idx]
        v = [values[b, t].item() for t in idx]
        a_next, out = 0.0, [0.0] * len(idx)
        for i in reversed(range(len(idx))):
            v_next = v[i + 1] if i + 1 < len(idx) else 0.0
            a_next = r[i] + gamma * v_next - v[i] + gamma * lam * a_next
            out[i] = a_next
        for i, t in enumerate(idx):
            adv[b, t] = out[i]
            ret[b, t] = out[i] + v[i]
    return adv, ret


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_naive_loop(gamma, lam):
    gen = torch.Generator().manual_seed(0)
    B, T = 7, 9
    mask = _random_block_mask(gen, B, T)
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = torch.randn(B, T, generator=gen, dtype=torch.float64)
    # garbage outside the mask must be ignored
    rewards = torch.where(mask.bool(), rewards, NAN)
    values = torch.where(mask.bool(), values, 1e6)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = _naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, ref_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, ref_ret, atol=1e-6, rtol=0)


def test_gae_three_tokens_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # last token bootstraps from 0:  d2 = 1 + 0 - 0.7 = 0.3;   A2 = 0.3
    # d1 = 0 + 0.7 - 0.6 = 0.1;      A1 = 0.1 + 0.95 * 0.3   = 0.385
    # d0 = 0 + 0.6 - 0.5 = 0.1;      A0 = 0.1 + 0.95 * 0.385 = 0.46575
    # returns A + V: 0.96575, 0.985, 1.0; padding (reward 5, value 9) gives 0
    expected_adv = torch.tensor([[0.46575, 0.385, 0.3, 0.0]], dtype=torch.float64)
    expected_ret = torch.tensor([[0.96575, 0.985, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, expected_ret)


def test_gae_lambda_one_gives_reward_to_go():
    gen = torch.Generator().manual_seed(1)
    mask = _random_block_mask(gen, 5, 6)
    rewards = torch.randn(5, 6, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    _, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1) * mask  # sum_{k >= t} r_k
    torch.testing.assert_close(ret, reward_to_go, atol=1e-12, rtol=0)


def test_gae_errors():
    with pytest.raises(ValueError, match="contiguous"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1, 1, 1], [1, 0, 1]]))
    with pytest.raises(ValueError, match="values"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="lam"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), lam=1.5)


def _naive_grpo(rewards, G, eps, scale):
    out = []
    for start in range(0, len(rewards), G):
        group = rewards[start : start + G].tolist()
        mean = sum(group) / G
        std = statistics.stdev(group) if scale else 1.0  # unbiased, divisor G - 1
        out += [(r - mean) / (std + eps) if scale else r - mean for r in group]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scale", [True, False])
def test_grpo_matches_naive_loop_and_is_centred(scale):
    gen = torch.Generator().manual_seed(2)
    G = 4
    rewards = torch.randn(5 * G, generator=gen, dtype=torch.float64)
    adv = grpo_advantages(rewards, G, eps=1e-6, scale=scale)
    torch.testing.assert_close(adv, _naive_grpo(rewards, G, 1e-6, scale), atol=1e-12, rtol=0)
    torch.testing.assert_close(adv.view(-1, G).sum(1), torch.zeros(5, dtype=torch.float64))


def test_grpo_by_hand_and_constant_group():
    # group [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1] / (1 + eps)
    # group [4, 4, 4]: std 0 -> advantages 0 (no learning signal)
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0], dtype=torch.float64)
    adv = grpo_advantages(rewards, 3, eps=1e-6)
    expected = torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64) / (1 + 1e-6)
    torch.testing.assert_close(adv, expected)


def test_grpo_scale_invariance():
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(12, generator=gen, dtype=torch.float64)
    base = grpo_advantages(rewards, 4)
    scaled = grpo_advantages(7.3 * rewards, 4)
    # (c r - c m) / (c s + eps) differs from (r - m) / (s + eps) only through eps (~1e-6 / s)
    torch.testing.assert_close(scaled, base, atol=1e-5, rtol=0)
    # without std scaling advantages scale with c
    torch.testing.assert_close(
        grpo_advantages(7.3 * rewards, 4, scale=False),
        7.3 * grpo_advantages(rewards, 4, scale=False),
    )


def test_grpo_errors():
    with pytest.raises(ValueError, match="multiple"):
        grpo_advantages(torch.zeros(7), 4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_advantages(torch.zeros(4), 1)  # unbiased std of one sample is undefined
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(4, 2), 2)
    # mean-centring alone is defined for G = 1 (advantage 0)
    torch.testing.assert_close(grpo_advantages(torch.arange(3.0), 1, scale=False), torch.zeros(3))


def test_rloo_matches_naive_loop_and_sums_to_zero():
    gen = torch.Generator().manual_seed(4)
    G = 5
    rewards = torch.randn(3 * G, generator=gen, dtype=torch.float64)
    adv = rloo_advantages(rewards, G)
    naive = []
    for i, r in enumerate(rewards.tolist()):
        start = (i // G) * G
        others = [rewards[j].item() for j in range(start, start + G) if j != i]
        naive.append(r - sum(others) / (G - 1))
    torch.testing.assert_close(adv, torch.tensor(naive, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(adv.view(-1, G).sum(1), torch.zeros(3, dtype=torch.float64))


def test_rloo_by_hand_and_errors():
    # [1, 2, 3]: 1 - (2 + 3) / 2 = -1.5; 2 - (1 + 3) / 2 = 0; 3 - (1 + 2) / 2 = 1.5
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3)
    torch.testing.assert_close(adv, torch.tensor([-1.5, 0.0, 1.5]))
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        rloo_advantages(torch.zeros(4), 1)


def test_reinforce_baseline():
    # mean of [1, 2, 6] is 3
    adv = reinforce_baseline_advantages(torch.tensor([1.0, 2.0, 6.0]))
    torch.testing.assert_close(adv, torch.tensor([-2.0, -1.0, 3.0]))
    with pytest.raises(ValueError, match="1-D"):
        reinforce_baseline_advantages(torch.zeros(2, 2))


def test_kl_penalised_token_rewards_by_hand():
    score = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    lr = torch.tensor(
        [[0.5, -1.0, 0.2, NAN], [0.3, 0.1, NAN, NAN], [NAN, 0.4, 0.6, NAN]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]])
    rewards = kl_penalised_token_rewards(score, lr, mask, beta=0.1)
    # row 0: -0.1 * [0.5, -1, 0.2] = [-0.05, 0.1, -0.02]; score 2 on the last token -> 1.98
    # row 1: -0.1 * [0.3, 0.1] = [-0.03, -0.01]; score -1 on the last token -> -1.01
    # row 2 (left-padded): -0.1 * [0.4, 0.6] = [-0.04, -0.06]; + 0.5 -> 0.44
    expected = torch.tensor(
        [[-0.05, 0.1, 1.98, 0.0], [-0.03, -1.01, 0.0, 0.0], [0.0, -0.04, 0.44, 0.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(rewards, expected)
    # sum_t r_t = score - beta * (k1 sequence KL)
    seq, _ = sequence_kl(lr, mask)
    torch.testing.assert_close(rewards.sum(1), score - 0.1 * seq.k1)
    # with gamma = lam = 1 and zero values, the first advantage is the whole penalised return
    adv, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma=1.0, lam=1.0)
    first = mask.float().argmax(1)
    torch.testing.assert_close(adv[torch.arange(3), first], score - 0.1 * seq.k1)


def test_kl_penalised_token_rewards_errors():
    with pytest.raises(ValueError, match="at least one response token"):
        kl_penalised_token_rewards(
            torch.zeros(2), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), beta=0.1
        )
    with pytest.raises(ValueError, match="beta"):
        kl_penalised_token_rewards(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3), beta=-0.1)
    with pytest.raises(ValueError, match="score"):
        kl_penalised_token_rewards(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3), beta=0.1)
