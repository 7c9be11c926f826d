"""Tests for proxygap.sampling.generate: log-probs, masks, seeding, the sampling distribution.

The models are tiny random GPT-2s over the ``reviews`` task's 84-word vocabulary (no pretrained
assets needed), three of them edited by hand so that eos is common, the next-token distribution
is far from uniform, or it is known in closed form; see the fixtures.
"""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import GPT2LMHeadModel

from proxygap.models.logprobs import response_logprobs
from proxygap.sampling.generate import Samples, decode_responses, sample
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

TOK = build_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id  # 0, 1, 2
V = len(TOK)  # 84

# Prompts of different lengths (1, 3 and 6 tokens), so the batch is left-padded and the position
# ids and attention mask of the shorter rows differ from the trivial ones.
PROMPTS = [[BOS], [BOS, 5, 54], [BOS, 4, 72, 10, 11, 12]]


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def lm() -> GPT2LMHeadModel:
    """A random LM that emits eos about 1 time in 8 (random init: 1 in 84), so rows finish at
    many different steps and the sampler drops them from the batch and KV cache mid-decode.

    The logits are ln_f(h) @ wte^T; adding c wte[eos] / |wte[eos]|^2 to ln_f's bias raises the
    eos logit by c = 2.5 (others move by c cos(wte[v], wte[eos]) |wte[v]| / |wte[eos]|, ~0.4 at
    most for random embeddings). Measured: p(eos) = 0.10 to 0.15 at T = 1, ~0.27 at T = 0.7.
    """
    model = tiny_lm()
    with torch.no_grad():
        e = model.transformer.wte.weight[EOS]
        model.transformer.ln_f.bias.add_(2.5 * e / e.dot(e))
    return model


@pytest.fixture(scope="module")
def peaky_lm() -> GPT2LMHeadModel:
    """A random LM whose logits spread over a few nats (random init gives ~uniform ones).

    Scaling the final layer norm's gain by 5 scales every logit by 5 (the LM head is linear
    without bias): at T = 1 the top token then has p ~ 0.1 and the least likely p ~ 0.002, so
    temperature visibly changes the distribution.
    """
    model = tiny_lm(seed=1)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(5.0)
    return model


@pytest.fixture(scope="module")
def coin_lm() -> GPT2LMHeadModel:
    """An LM that, in every context, emits eos with probability 1/2 and each other token with
    probability 1/(2 (V - 1)).

    With the final layer norm's gain 0 and bias e_0, its output is e_0 at every position, so the
    logits are the (tied) embedding's column 0: we set it to log(V - 1) for eos and 0 elsewhere.
    softmax: eos gets (V-1) / ((V-1) + (V-1) * 1) = 1/2, every other token 1 / (2 (V - 1)).
    """
    model = tiny_lm(seed=2)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        wte = model.transformer.wte.weight
        wte[:, 0] = 0.0
        wte[EOS, 0] = math.log(V - 1)
    return model


def run(model: GPT2LMHeadModel, prompts=PROMPTS, **kw) -> Samples:
    kw = {"n_per_prompt": 8, "max_new_tokens": 12, "eos_id": EOS, "pad_id": PAD, **kw}
    return sample(model, prompts, **kw)


@torch.no_grad()
def full_forward_logprobs(model: GPT2LMHeadModel, prompt: list[int], response: list[int]):
    """log pi(response_t | prompt, response_<t) from ONE unpadded forward pass without a cache."""
    ids = torch.tensor([prompt + response])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (P + R, V)
    # the logits at position len(prompt) - 1 + t predict response token t
    at = logp[len(prompt) - 1 : len(prompt) - 1 + len(response)]  # (R, V)
    return at.gather(1, torch.tensor(response)[:, None]).squeeze(1)  # (R,)


# ---------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_an_uncached_full_forward_pass(lm, temperature: float) -> None:
    # The cached, left-padded decode must give the same temperature-1 log-probs as a plain
    # forward pass over each row's prompt + response alone (no padding, no cache). A wrong
    # position id, attention mask or cache update changes the logits of the shorter prompts.
    s = run(lm, n_per_prompt=6, max_new_tokens=16, temperature=temperature, seed=3)
    # rows leave the batch at different steps while others go on (exercises the cache pruning)
    ends = s.lengths[s.finished]
    assert len(set(ends.tolist())) >= 3 and int(ends.min()) < int(s.lengths.max())
    for i in range(len(s.prompt_index)):
        n = int(s.lengths[i])
        response = s.response_ids[i, :n].tolist()
        ref = full_forward_logprobs(lm, PROMPTS[int(s.prompt_index[i])], response)
        torch.testing.assert_close(s.logprobs[i, :n].double(), ref, rtol=0, atol=1e-5)
        assert torch.all(s.logprobs[i, n:] == 0)  # off the mask: zero


def test_logprobs_hand_derived_on_the_coin_model(coin_lm) -> None:
    # coin_lm: p(eos) = 1/2, p(any other token) = 1/(2 * 83) in every context.
    s = run(coin_lm, n_per_prompt=20, max_new_tokens=10, seed=0)
    on = s.mask.bool()
    expected = torch.where(s.response_ids == EOS, math.log(0.5), math.log(0.5 / (V - 1))).float()
    torch.testing.assert_close(s.logprobs[on], expected[on], rtol=0, atol=1e-5)


def test_logprobs_agree_with_response_logprobs(lm) -> None:
    # The RL loop and evaluation re-score samples with proxygap.models.logprobs (one padded,
    # uncached pass over the whole batch); for the sampling policy itself the two must agree,
    # or KL(policy || ref) would not start at 0.
    s = run(lm, n_per_prompt=6, max_new_tokens=16, seed=4)
    again = response_logprobs(lm, s.prompt_ids_rows(), s.response_ids, s.mask, pad_id=PAD)
    torch.testing.assert_close(again, s.logprobs, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- mask, finished, padding


def first_eos(row: torch.Tensor) -> int | None:
    hits = (row == EOS).nonzero()
    return int(hits[0]) if len(hits) else None


def test_mask_covers_up_to_the_first_eos(lm) -> None:
    max_new = 12
    s = run(lm, n_per_prompt=24, max_new_tokens=max_new, seed=0)
    # p(eos) ~ 0.13 a step: ~80% of rows finish within 12 steps
    assert 0 < int(s.finished.sum()) < len(s.finished), "need finished and unfinished rows"
    B, T = s.response_ids.shape
    assert s.mask.shape == s.logprobs.shape == (B, T) and s.finished.shape == (B,)
    assert int(s.lengths.max()) == T  # no all-padding column on the right
    for i in range(B):
        row, k = s.response_ids[i], first_eos(s.response_ids[i])
        assert bool(s.finished[i]) == (k is not None)
        n = max_new if k is None else k + 1  # length includes the eos
        assert int(s.lengths[i]) == n
        assert torch.all(s.mask[i, :n] == 1) and torch.all(s.mask[i, n:] == 0)
        assert torch.all(row[n:] == PAD)
    assert s.mask.dtype == s.logprobs.dtype == torch.float32
    assert s.response_ids.dtype == torch.long and s.finished.dtype == torch.bool


def test_early_exit_and_geometric_lengths_on_the_coin_model(coin_lm) -> None:
    # Each step ends a row with probability 1/2, so the length L (incl. eos) is geometric:
    # P(L = k) = 2^-k, E[L] = 2, sd(L) = sqrt((1 - p) / p^2) = sqrt(2). Over 4000 rows every
    # row finishes well inside 40 steps (P(some row needs > 30) < 4000 * 2^-30), so the loop
    # exits early and the width is the longest row, not max_new_tokens.
    n = 4000
    s = run(coin_lm, prompts=[[BOS]], n_per_prompt=n, max_new_tokens=40, batch_size=n, seed=0)
    assert bool(s.finished.all())
    assert s.response_ids.shape[1] == int(s.lengths.max()) < 40
    mean = s.lengths.double().mean().item()
    assert abs(mean - 2.0) < 4 * math.sqrt(2.0 / n)
    # P(L = 1) = 1/2: binomial(4000, 1/2) has sd sqrt(1000)
    assert abs(int((s.lengths == 1).sum()) - n / 2) < 4 * math.sqrt(n / 4)


def test_budget_of_one_token(lm) -> None:
    s = run(lm, max_new_tokens=1, seed=0)
    assert s.response_ids.shape == (len(PROMPTS) * 8, 1)
    assert torch.all(s.mask == 1)
    assert torch.equal(s.finished, s.response_ids[:, 0] == EOS)


# ---------------------------------------------------------------- seeding


def test_same_seed_reproduces_and_other_seeds_differ(lm) -> None:
    a = run(lm, seed=11, batch_size=5)
    b = run(lm, seed=11, batch_size=5)
    c = run(lm, seed=12, batch_size=5)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.logprobs, b.logprobs) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.response_ids, c.response_ids)
    # Samples are NOT required to be independent of batch_size: one generator feeds all batches
    # in turn, each decode step drawing a (rows still running, V) block of uniforms. A different
    # batch_size hands different parts of the stream to each row, so only (seed, model,
    # batch_size) together pin the samples; we test exactly that.


# ---------------------------------------------------------------- the KV-cache argument


def test_no_deprecated_cache_argument(lm) -> None:
    # transformers renamed ``past_key_values`` to ``cache`` (the old name warns, and is removed
    # in 5.40): the sampler must pass the current name to a current model.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        run(lm, seed=1)


class _LegacyLM(torch.nn.Module):
    """``lm`` behind the pre-rename interface: takes and returns ``past_key_values``."""

    def __init__(self, lm: GPT2LMHeadModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids, attention_mask, position_ids, past_key_values, use_cache, logits_to_keep
    ):
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep,
        )  # fmt: skip
        return SimpleNamespace(logits=out.logits, past_key_values=out.cache)


def test_models_with_the_old_cache_argument_give_the_same_samples(lm) -> None:
    legacy = _LegacyLM(lm)
    a, b = run(lm, seed=4, batch_size=7), run(legacy, seed=4, batch_size=7)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)


# ---------------------------------------------------------------- the sampling distribution


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_first_token_frequencies_match_softmax(peaky_lm, temperature: float) -> None:
    # With a one-token budget each row is one draw from softmax(logits(prompt) / T). Two prompts
    # of different lengths share a (left-padded) batch of 20,000 rows.
    prompts = [PROMPTS[0], PROMPTS[1]]
    n = 10_000
    s = run(
        peaky_lm,
        prompts=prompts,
        n_per_prompt=n,
        max_new_tokens=1,
        temperature=temperature,
        batch_size=2 * n,
        seed=5,
    )
    for j, prompt in enumerate(prompts):
        with torch.no_grad():
            logits = peaky_lm(input_ids=torch.tensor([prompt])).logits[0, -1].double()  # (V,)
        p = torch.softmax(logits / temperature, dim=-1).numpy()
        assert p.max() / p.min() > 5  # far from uniform, so T matters
        tokens = s.response_ids[s.prompt_index == j, 0].numpy()
        counts = np.bincount(tokens, minlength=V)
        # per token: |count - n p| < 4 sd of a binomial (+1 for the lattice)
        sd = np.sqrt(n * p * (1 - p))
        assert np.all(np.abs(counts - n * p) < 4 * sd + 1), (temperature, j)
        # chi-square over tokens pooled so that each bin expects >= 5 draws
        assert chi_square_pvalue(counts, p) > 1e-4
        # and the test has power: the T = 1 distribution is rejected when T != 1
        if temperature != 1.0:
            p1 = torch.softmax(logits, dim=-1).numpy()
            assert chi_square_pvalue(counts, p1) < 1e-12


def chi_square_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; tokens expected < 5 times are pooled into one bin."""
    n = counts.sum()
    big = n * p >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(n * p[big], n * p[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()  # renormalise float round-off
    return float(stats.chisquare(obs, exp).pvalue)


# ---------------------------------------------------------------- grouping and decoding


def test_rows_are_grouped_by_prompt(lm) -> None:
    s = run(lm, n_per_prompt=3, seed=0)
    assert torch.equal(s.prompt_index, torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    assert s.prompt_ids == PROMPTS
    assert s.prompt_ids_rows() == [PROMPTS[i] for i in (0, 0, 0, 1, 1, 1, 2, 2, 2)]
    # the log-prob test above checks each row was generated from prompts[prompt_index[row]]


def test_decode_responses_drops_eos_and_padding() -> None:
    the, plot, was, great, dot = (
        TOK.convert_tokens_to_ids(w) for w in ["the", "plot", "was", "great", "."]
    )
    ids = torch.tensor(
        [
            [the, plot, EOS, PAD, PAD],  # finished: eos and pads dropped
            [the, plot, was, great, dot],  # unfinished: every token kept
            [EOS, PAD, PAD, PAD, PAD],  # empty response
        ]
    )
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).float()
    s = Samples(
        prompt_index=torch.arange(3),
        prompt_ids=[[BOS]] * 3,
        response_ids=ids,
        mask=mask,
        logprobs=torch.zeros(3, 5),
        finished=torch.tensor([1, 0, 1]).bool(),
    )
    assert decode_responses(s, TOK) == ["the plot", "the plot was great .", ""]


def test_decode_responses_of_real_samples(lm) -> None:
    s = run(lm, n_per_prompt=4, seed=0)
    texts = decode_responses(s, TOK)
    for i, text in enumerate(texts):
        # reference: words of the masked tokens, eos and other special tokens removed
        kept = [
            t
            for t in s.response_ids[i, : int(s.lengths[i])].tolist()
            if t not in TOK.all_special_ids
        ]
        assert text.split() == TOK.convert_ids_to_tokens(kept)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"prompts": []}, "no prompts"),
        ({"prompts": [[BOS], []]}, "empty"),
        ({"n_per_prompt": 0}, "n_per_prompt"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise(lm, kw: dict, match: str) -> None:
    prompts = kw.pop("prompts", PROMPTS)
    with pytest.raises(ValueError, match=match):
        run(lm, prompts=prompts, **kw)
