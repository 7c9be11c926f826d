"""The top-k likelihood indicators: ``topk_stats`` against a sort-and-sum reference and a
closed form, the sampler's per-position values against an uncached forward pass (with the
samples unchanged by recording them), and ``topk_signals``'s token means by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from proxygap.monitor.signals import topk_signals
from proxygap.sampling.generate import sample, topk_stats
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

TOK = build_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id
V = len(TOK)
PROMPTS = [[BOS], [BOS, 5, 54], [BOS, 4, 72, 10, 11, 12]]


def _reference(logp: np.ndarray, k: int) -> tuple[float, float]:
    """Sort the probabilities, add the k largest, and sum -q log q of them renormalised."""
    p = sorted(np.exp(logp).tolist(), reverse=True)[:k]
    mass = sum(p)
    entropy = -sum((x / mass) * math.log(x / mass) for x in p if x > 0)
    return mass, entropy


@pytest.mark.parametrize("k", [1, 3, 7, 10])
def test_topk_stats_equals_sort_and_sum(k: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 5, 7, generator=gen, dtype=torch.float64)
    logits[0, 0, :3] = -math.inf  # tokens of probability 0 (as a vocabulary cut leaves)
    logp = torch.log_softmax(logits, dim=-1)
    got = topk_stats(logp, k)
    assert got.shape == (4, 5, 2)
    for i in range(4):
        for t in range(5):
            mass, entropy = _reference(logp[i, t].numpy(), k)
            assert float(got[i, t, 0]) == pytest.approx(mass, abs=1e-12)
            assert float(got[i, t, 1]) == pytest.approx(entropy, abs=1e-12)
    # k at least the vocabulary: all of the mass, the full entropy
    full = topk_stats(logp, 7)
    assert torch.allclose(full[..., 0], torch.ones(4, 5, dtype=torch.float64))
    assert torch.allclose(full[..., 1], torch.special.entr(logp.exp()).sum(-1))


def test_topk_stats_closed_form() -> None:
    # one token with p = 1/2 and 83 with p = 1/166 each: the top 10 hold 1/2 + 9/166
    p = torch.full((V,), 1 / (2 * (V - 1)), dtype=torch.float64)
    p[EOS] = 0.5
    mass, entropy = topk_stats(p.log(), 10).tolist()
    m = 0.5 + 9 / 166
    assert mass == pytest.approx(m, abs=1e-12)
    q_top, q_rest = 0.5 / m, (1 / 166) / m
    assert entropy == pytest.approx(-(q_top * math.log(q_top) + 9 * q_rest * math.log(q_rest)))
    with pytest.raises(ValueError, match="topk"):
        topk_stats(p.log(), 0)


@pytest.fixture(scope="module")
def lm() -> GPT2LMHeadModel:
    torch.manual_seed(1)
    model = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    with torch.no_grad():  # logits spread over a few nats; eos about 1 in 8
        model.transformer.ln_f.weight.mul_(4.0)
        e = model.transformer.wte.weight[EOS]
        model.transformer.ln_f.bias.add_(2.5 * e / e.dot(e))
    return model.eval()


@torch.no_grad()
def test_sampler_records_the_policy_topk_at_every_position(lm) -> None:
    kw = dict(n_per_prompt=6, max_new_tokens=14, eos_id=EOS, pad_id=PAD, seed=4, batch_size=7)
    kw |= dict(temperature=0.8)  # recorded at temperature 1, whatever the sampling temperature
    plain = sample(lm, PROMPTS, **kw)
    s = sample(lm, PROMPTS, topk=5, **kw)
    assert plain.topk_stats is None
    assert torch.equal(s.response_ids, plain.response_ids)  # no random number drawn for it
    assert torch.equal(s.logprobs, plain.logprobs)
    assert s.topk_stats is not None and s.topk_stats.shape == (*s.mask.shape, 2)
    assert len(set(s.lengths.tolist())) >= 3  # rows of several lengths, three batches padded
    for i in range(len(s.prompt_index)):
        prompt, n = PROMPTS[int(s.prompt_index[i])], int(s.lengths[i])
        ids = torch.tensor([prompt + s.response_ids[i, :n].tolist()])
        logp = torch.log_softmax(lm(input_ids=ids).logits[0].double(), dim=-1)
        ref = topk_stats(logp[len(prompt) - 1 : len(prompt) - 1 + n], 5)
        torch.testing.assert_close(s.topk_stats[i, :n].double(), ref, rtol=0, atol=1e-5)
        assert torch.all(s.topk_stats[i, n:] == 0)  # off the mask: zero
    with pytest.raises(ValueError, match="topk"):
        sample(lm, PROMPTS, topk=0, **kw)


def test_topk_signals_by_hand() -> None:
    stats = torch.tensor(
        [[[0.9, 1.0], [0.5, 2.0], [7.0, 7.0]], [[0.7, 0.5], [9.0, 9.0], [9.0, 9.0]]]
    )
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # padding's values never count
    mass, entropy = topk_signals(stats, mask)
    assert mass == pytest.approx((0.9 + 0.5 + 0.7) / 3)
    assert entropy == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    assert all(math.isnan(x) for x in topk_signals(stats, torch.zeros(2, 3)))
    with pytest.raises(ValueError, match=r"\(B, T, 2\)"):
        topk_signals(stats[..., :1], mask)
    with pytest.raises(ValueError, match=r"\(B, T, 2\)"):
        topk_signals(stats, mask[:, :2])
