"""The monitor's reward-model signals from one pass: the reward model's scores and hidden states
from the same forward pass (proxygap/rewards/reward_model.py, proxygap/rewards/proxy.py), the
outlier reference fitted once (proxygap/monitor/signals.py), and the evaluator's signals equal to
those computed separately (proxygap/optimize/evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from proxygap.monitor.signals import (
    TOPK,
    OutlierReference,
    mahalanobis,
    outlier_rate,
)
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.rewards.proxy import ProxyScorer
from proxygap.rewards.reward_model import (
    encode_texts,
    new_reward_model,
    score_and_embed_texts,
    score_texts,
)
from proxygap.sampling.generate import encode_prompts, topk_stats
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config
from proxygap.tasks.reviews.grammar import sample_corpus

TOK = build_tokenizer()
TEXTS = sample_corpus(30, seed=3)
TEXTS = TEXTS + TEXTS[:5]  # repeated texts are run once and returned at every position


def _member(seed: int) -> torch.nn.Module:
    return new_reward_model(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64, seed=seed)


def _naive_embedding(model: torch.nn.Module, texts: list[str]) -> np.ndarray:
    """One text at a time, no padding: the hidden state at the last token (the reference)."""
    rows = []
    with torch.no_grad():
        for t in texts:
            ids, attn = encode_texts(TOK, [t], max_length=64)
            h = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
            rows.append(h.hidden_states[-1][0, -1].double().numpy())
    return np.stack(rows)


class CountingModel(torch.nn.Module):
    """Counts forward passes of the wrapped reward model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.config = model, 0, model.config

    def forward(self, **kw):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.model(**kw)


def test_one_pass_scores_like_score_texts_and_embeds_like_a_text_at_a_time():
    model = _member(0)
    scores, states = score_and_embed_texts(model, TOK, TEXTS, batch_size=8)
    np.testing.assert_array_equal(scores, score_texts(model, TOK, TEXTS, batch_size=8))
    assert states.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(states, _naive_embedding(model, TEXTS), rtol=1e-5, atol=1e-5)
    # the score head reads exactly this hidden state: score = w . h (GPT-2's head has no bias)
    head = model.score.weight.detach().double().numpy()[0]
    np.testing.assert_allclose(states @ head, scores, rtol=1e-5, atol=1e-5)


def test_proxy_scorer_runs_each_member_once_for_reward_members_and_embedding():
    plain = [_member(k) for k in range(3)]
    counted = [CountingModel(m) for m in plain]
    reference = sample_corpus(20, seed=4)
    scorer = ProxyScorer("ens", counted, TOK, reference, batch_size=64)
    texts = list(TEXTS)
    before = [m.calls for m in counted]
    states, reward, members = scorer.embed(texts), scorer.reward(texts), scorer.standardised(texts)
    assert [m.calls - b for m, b in zip(counted, before, strict=True)] == [1, 1, 1]
    # scored first, embedded second: the first member runs once more for its hidden states
    scorer.raw(reference)
    before = [m.calls for m in counted]
    np.testing.assert_array_equal(scorer.embed(reference), scorer.embed(reference))
    assert [m.calls - b for m, b in zip(counted, before, strict=True)] == [1, 0, 0]
    # the same numbers as each piece computed on its own
    raw = np.stack([score_texts(m, TOK, texts) for m in plain], axis=1)
    np.testing.assert_array_equal(members, (raw - scorer.centre) / scorer.scale)
    np.testing.assert_array_equal(reward, (raw - scorer.centre).mean(axis=1))
    np.testing.assert_allclose(states, _naive_embedding(plain[0], texts), rtol=1e-5, atol=1e-5)
    # other texts: a fresh pass, not the remembered one
    other = sample_corpus(6, seed=9)
    np.testing.assert_array_equal(
        scorer.raw(other), np.stack([score_texts(m, TOK, other) for m in plain], axis=1)
    )
    # a caller mutating a returned array does not change what the scorer remembers
    got = scorer.raw(other)
    got[:] = 0.0
    assert np.abs(scorer.raw(other)).sum() > 0


def test_outlier_reference_equals_the_per_call_outlier_rate():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(64, 16)) @ rng.normal(size=(16, 16))
    ref_fit = ref[0::2]
    x = np.vstack([rng.normal(size=(40, 16)) @ rng.normal(size=(16, 16)), ref[:8] + 5.0])
    fitted = OutlierReference(ref)
    np.testing.assert_allclose(fitted.distance(x), mahalanobis(x, ref_fit), rtol=1e-9)
    assert fitted.chol.dtype == torch.float64 and fitted.distance(x).dtype == np.float64
    # the per-call definition written out: fit on even rows, cutoff from the odd rows' distances
    cut = np.quantile(mahalanobis(ref[1::2], ref_fit), 0.95)
    expected = float((mahalanobis(x, ref_fit) > cut).mean())
    assert fitted.cutoff == pytest.approx(cut, rel=1e-9)
    assert fitted.rate(x) == expected == outlier_rate(x, ref)
    assert 8 / 48 <= expected < 1  # the shifted rows are outliers
    with pytest.raises(ValueError, match="need x"):
        fitted.rate(np.ones((3, 5)))
    with pytest.raises(ValueError, match="4 reference rows"):
        OutlierReference(ref[:3])


def _policy() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def _evaluator(ref, *, proxy, members, embed) -> PolicyEvaluator:
    prompts = ["the ending", "i loved", "the music", "the villain"]
    return PolicyEvaluator(
        ref=ref, tokenizer=TOK, join=lambda p, r: [f"{a} {b}" for a, b in zip(p, r, strict=True)],
        prompts=prompts, prompt_ids=encode_prompts(TOK, prompts), gold=lambda t: np.zeros(len(t)),
        proxy=proxy, n_per_prompt=4, max_new_tokens=8, seed=11, members=members, embed=embed,
    )  # fmt: skip


def test_evaluator_signals_from_the_shared_pass_equal_the_separate_ones():
    ref = _policy()
    policy = _policy()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    plain = [_member(k) for k in range(3)]
    reference = sample_corpus(20, seed=4)
    shared = ProxyScorer("ens", plain, TOK, reference)
    separate = ProxyScorer("ens", plain, TOK, reference)

    def members_alone(texts: list[str]) -> np.ndarray:
        raw = np.stack([score_texts(m, TOK, texts) for m in plain], axis=1)
        return (raw - separate.centre) / separate.scale

    def embed_alone(texts: list[str]) -> np.ndarray:
        return _naive_embedding(plain[0], texts)

    combined = _evaluator(ref, proxy=shared.reward, members=shared.standardised, embed=shared.embed)
    alone = _evaluator(ref, proxy=separate.reward, members=members_alone, embed=embed_alone)
    m1, _ = combined(policy)
    m2, _ = alone(policy)
    keys = ("signal/ensemble_std", "signal/outlier_rate", "signal/entropy", "signal/proxy_std")
    for key in keys:
        assert m1[key] == pytest.approx(m2[key], rel=1e-9, abs=1e-12), key
    assert m1["signal/ensemble_std"] > 0 and 0 < m1["signal/outlier_rate"] <= 1


def test_daa_evaluator_carries_the_monitor_signals():
    from proxygap.optimize.daa import DAAConfig, daa_evaluator
    from proxygap.tasks import get_task

    task = get_task("reviews")
    ref = _policy()
    plain = [_member(k) for k in range(2)]
    scorer = ProxyScorer("ens", plain, TOK, sample_corpus(20, seed=4))
    cfg = DAAConfig(eval_prompts=2, eval_samples_per_prompt=2)
    ev = daa_evaluator(
        ref, TOK, task=task, proxy=scorer.reward, cfg=cfg, seed=3,
        members=scorer.standardised, embed=scorer.embed,
    )  # fmt: skip
    metrics, _ = ev(ref)
    # the initial policy against itself: no outliers beyond chance, members as on the references
    assert 0.0 <= metrics["signal/outlier_rate"] <= 1.0 and metrics["signal/ensemble_std"] > 0
    # fewer than 4 initial samples: no outlier rate rather than an error
    tiny = daa_evaluator(
        ref, TOK, task=task, proxy=scorer.reward, seed=3, embed=scorer.embed,
        cfg=DAAConfig(eval_prompts=1, eval_samples_per_prompt=2),
    )  # fmt: skip
    assert "signal/outlier_rate" not in tiny(ref)[0]


def _naive_token_nll(model: torch.nn.Module, s) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One sample at a time, prompt + response with no padding: the mean NLL of the response's
    tokens under ``model`` (the reference for signal/unlikely_rate)."""
    out = []
    with torch.no_grad():
        for row in range(len(s.response_ids)):
            n = int(s.mask[row].sum())
            prompt = s.prompt_ids[int(s.prompt_index[row])]
            response = s.response_ids[row, :n].tolist()
            ids = torch.tensor([prompt + response])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            nll = -sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(response))
            out.append(nll / n)
    return np.array(out)


def test_evaluator_unlikely_rate_matches_a_naive_reference_nll():
    ref = _policy()
    policy = _policy()
    with torch.no_grad():  # a policy that prefers what the reference finds least likely
        policy.transformer.ln_f.weight.mul_(-3.0)
        policy.transformer.ln_f.bias.mul_(-3.0)
    ev = _evaluator(ref, proxy=None, members=None, embed=None)
    nll0 = _naive_token_nll(ref, ev._sample(ref))
    cutoff = np.quantile(nll0, 0.99)
    # the initial policy against itself (the same seeded samples): its own tail past the
    # 0.99-quantile, 1 of 16 samples
    m0, _ = ev(ref)
    assert m0["signal/unlikely_rate"] == pytest.approx(float((nll0 > cutoff).mean())) == 1 / 16
    nll = _naive_token_nll(ref, ev._sample(policy))
    m1, _ = ev(policy)
    assert m1["signal/unlikely_rate"] == pytest.approx(float((nll > cutoff).mean()))
    assert m1["signal/unlikely_rate"] > m0["signal/unlikely_rate"]  # the perturbed policy strays


def test_evaluator_topk_signals_match_a_naive_recomputation():
    ref, policy = _policy(), _policy()
    with torch.no_grad():  # a sharper policy: more of its mass on its top tokens
        policy.transformer.ln_f.weight.mul_(3.0)
    ev = _evaluator(ref, proxy=None, members=None, embed=None)
    metrics = {}
    for name, model in (("ref", ref), ("policy", policy)):
        s = ev._sample(model)
        per_token = []
        with torch.no_grad():  # one sample at a time, unpadded: the policy's own distributions
            for row in range(len(s.response_ids)):
                n = int(s.mask[row].sum())
                prompt = s.prompt_ids[int(s.prompt_index[row])]
                ids = torch.tensor([prompt + s.response_ids[row, :n].tolist()])
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
                per_token.append(topk_stats(logp[len(prompt) - 1 : len(prompt) - 1 + n], TOPK))
        naive = torch.cat(per_token).mean(dim=0)  # the token mean over every sample's tokens
        m, _ = ev(model)
        assert m["signal/topk_mass"] == pytest.approx(float(naive[0]), abs=1e-5)
        assert m["signal/topk_entropy"] == pytest.approx(float(naive[1]), abs=1e-5)
        metrics[name] = m
    assert metrics["policy"]["signal/topk_mass"] > metrics["ref"]["signal/topk_mass"]
