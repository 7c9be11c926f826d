"""Tests for the Quark training loop (proxygap.optimize.quark) and what it needs elsewhere:
sampling from the first ``V`` logits only, and an evaluator for a policy conditioned on a prefix.

The models are tiny random GPT-2s over the ``reviews`` vocabulary (84 words) with two logits
raised by hand through ln_f's bias (as in ``test_rl.py``): eos (p ~ 0.1, responses end at many
lengths) and the word "great" (p ~ 0.07, so the reward "number of 'great'" takes the values
0..3 on 8-token responses and the quantile buckets are not all ties). Brute-force references
run one unpadded, uncached forward pass per row.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from proxygap.errors import NonFiniteError
from proxygap.mitigations.quark import QuarkPool
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.optimize.quark import QuarkSettings, train_quark
from proxygap.optimize.quark_update import encode_responses
from proxygap.optimize.rl import RLConfig
from proxygap.sampling.generate import (
    condition_prompts,
    decode_responses,
    encode_prompts,
    sample,
)
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

hf_logging.set_verbosity_error()  # resize_token_embeddings announces its initialisation

TOK = build_tokenizer()
PAD, BOS, EOS = TOK.pad_token_id, TOK.bos_token_id, TOK.eos_token_id
V0 = len(TOK)  # 84
GREAT = TOK.convert_tokens_to_ids("great")
PROMPTS = ["i enjoyed", "the characters", "the plot", "i hated", "the movie", "the hero"]
PROMPTS += ["i liked", "the cast"]
EVAL_PROMPTS = ["the ending", "i loved", "the music", "the villain"]
MAX_NEW = 8


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    """``c * wte[v] / |wte[v]|^2`` added to ln_f's bias raises logit ``v`` by ``c`` (tied
    embeddings): eos by 2.5, "great" by 2.0."""
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    with torch.no_grad():
        for v, c in ((EOS, 2.5), (GREAT, 2.0)):
            e = model.transformer.wte.weight[v]
            model.transformer.ln_f.bias.add_(c * e / e.dot(e))
    return model.eval()


def with_controls(model: GPT2LMHeadModel, k: int, *, scale: float = 0.3) -> GPT2LMHeadModel:
    """A copy with ``k`` appended embedding rows and Gaussian noise on every weight (a
    conditioned policy far from ``model``)."""
    out = copy.deepcopy(model)
    out.resize_token_embeddings(V0 + k)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return out.eval()


def join(prompts, responses):
    return [f"{p} {r}" for p, r in zip(prompts, responses, strict=True)]


def count_great(texts) -> np.ndarray:
    return np.array([t.split().count("great") for t in texts], dtype=np.float64)


def evaluator(ref, *, n: int = 4) -> PolicyEvaluator:
    return PolicyEvaluator(
        ref=ref,
        tokenizer=TOK,
        join=join,
        prompts=EVAL_PROMPTS,
        prompt_ids=encode_prompts(TOK, EVAL_PROMPTS),
        gold=count_great,
        proxy=count_great,
        n_per_prompt=n,
        max_new_tokens=MAX_NEW,
        seed=123,
    )


@pytest.fixture(scope="module")
def ref() -> GPT2LMHeadModel:
    return tiny_lm()


def config(**kw) -> RLConfig:
    base = dict(steps=2, prompts_per_step=4, group_size=4, eval_every=100, lr=1e-2)
    return RLConfig(**(base | kw))


def run(ref, cfg: RLConfig, quark: QuarkSettings | None = None, *, policy=None, **kw):
    policy = copy.deepcopy(ref) if policy is None else policy
    result = train_quark(
        policy,
        ref,
        TOK,
        cfg=cfg,
        quark=quark or QuarkSettings(),
        train_prompts=PROMPTS,
        join=join,
        reward_fn=kw.pop("reward_fn", count_great),
        evaluator=kw.pop("ev", None) or evaluator(ref),
        log=lambda _: None,
        **kw,
    )
    return policy, result


@torch.no_grad()
def full_logps(model, prompt, response, *, vocab: int) -> torch.Tensor:
    """``log_softmax(logits[:vocab])`` at the positions predicting each response token, from ONE
    unpadded forward pass over ``prompt + response``: ``(R, vocab)`` float64."""
    ids = torch.tensor([list(prompt) + list(response)])
    logits = model(input_ids=ids).logits[0].double()  # (P + R, V)
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(response), :vocab].log_softmax(-1)


def without_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


# ---------------------------------------------------------------- sampling from V logits
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_vocab_size_draws_from_the_first_logits_only(ref, temperature: float) -> None:
    # With V = 40 of 84 tokens the model puts about half its mass on ids >= 40; restricted, it
    # never emits them, and the reported log-probs are log_softmax(logits[:40]) at temperature 1
    # (the sampled distribution renormalised over the kept tokens), not the full softmax.
    V, prompts = 40, encode_prompts(TOK, PROMPTS[:3])
    kw = dict(n_per_prompt=8, max_new_tokens=MAX_NEW, eos_id=EOS, pad_id=PAD, seed=3)
    free = sample(ref, prompts, temperature=temperature, **kw)
    assert (free.response_ids[free.mask.bool()] >= V).any()
    s = sample(ref, prompts, temperature=temperature, vocab_size=V, **kw)
    assert (s.response_ids[s.mask.bool()] < V).all()
    assert s.finished.any()  # rows leave the batch mid-decode
    for i in range(len(s.prompt_index)):
        n = int(s.lengths[i])
        y = s.response_ids[i, :n]
        lp = full_logps(ref, prompts[int(s.prompt_index[i])], y.tolist(), vocab=V)
        expect = lp.gather(1, y[:, None]).squeeze(1)
        torch.testing.assert_close(s.logprobs[i, :n].double(), expect, rtol=0, atol=1e-5)
        assert (expect > lp.new_tensor(-np.inf)).all()


def test_sample_vocab_size_of_the_full_width_changes_nothing(ref) -> None:
    kw = dict(n_per_prompt=4, max_new_tokens=MAX_NEW, eos_id=EOS, pad_id=PAD, seed=5)
    a = sample(ref, encode_prompts(TOK, PROMPTS), **kw)
    b = sample(ref, encode_prompts(TOK, PROMPTS), vocab_size=V0, **kw)
    for f in ("response_ids", "mask", "logprobs", "finished", "prompt_index"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize(
    ("vocab_size", "match"), [(0, "vocab_size must be >= 1"), (V0 + 1, "exceeds the model's 84")]
)
def test_sample_vocab_size_is_validated(ref, vocab_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample(ref, [[BOS]], max_new_tokens=2, eos_id=EOS, pad_id=PAD, vocab_size=vocab_size)


def test_condition_prompts_inserts_after_bos() -> None:
    rows = [[BOS, 5, 6], [7], [BOS]]
    assert condition_prompts(rows, [90, 91], BOS) == [
        [BOS, 90, 91, 5, 6],
        [90, 91, 7],
        [BOS, 90, 91],
    ]
    assert condition_prompts(rows, [], BOS) == rows
    assert condition_prompts(rows, [90], None) == [[90, BOS, 5, 6], [90, 7], [90, BOS]]


def test_encode_responses_round_trips_sampled_responses(ref) -> None:
    # eos is appended exactly when the text is shorter than the budget: "great movie" is 2
    # tokens < 8 -> [great, movie, eos]; a text of 8+ tokens is cut to 8 with no eos.
    movie = TOK.convert_tokens_to_ids("movie")
    long = " ".join(["great"] * 10)
    assert encode_responses(TOK, ["great movie", long], max_new_tokens=8) == [
        (GREAT, movie, EOS),
        (GREAT,) * 8,
    ]
    # exact for sampled responses without special tokens other than eos (decoding drops them)
    s = sample(
        ref,
        encode_prompts(TOK, PROMPTS),
        n_per_prompt=4,
        max_new_tokens=MAX_NEW,
        eos_id=EOS,
        pad_id=PAD,
        seed=1,
    )
    ids = [tuple(r[: int(n)].tolist()) for r, n in zip(s.response_ids, s.lengths, strict=True)]
    texts = decode_responses(s, TOK)
    plain = [i for i, y in enumerate(ids) if not set(y[:-1]) & {PAD, BOS, EOS, 3}]
    assert len(plain) >= 20 and any(y[-1] == EOS for y in ids) and any(y[-1] != EOS for y in ids)
    got = encode_responses(TOK, [texts[i] for i in plain], max_new_tokens=MAX_NEW)
    assert got == [ids[i] for i in plain]


# ---------------------------------------------------------------- the evaluator with a prefix
def test_evaluator_defaults_are_the_plain_evaluation(ref) -> None:
    # prefix () and vocab_size None are the old behaviour; vocab_size = the full width samples
    # the same tokens (same noise shape), so every metric is identical.
    ev, policy = evaluator(ref), with_controls(ref, 0)
    plain = ev(policy)
    assert ev(policy, prefix=(), vocab_size=None) == plain
    assert ev(policy, prefix=[], vocab_size=V0) == plain
    assert plain[0]["kl/k1"] > 0.5  # the perturbed policy is far from ref


def test_evaluator_kl_of_a_conditioned_policy_matches_brute_force(ref) -> None:
    # kl/k1 = mean over samples of sum_t [log pi(y_t | bos, c, x, y_<t) - log pi0(y_t | bos, x,
    # y_<t)], pi normalised over the first V0 logits, pi0 on the plain prompt.
    k = 3
    ev, policy = evaluator(ref), with_controls(ref, k)
    c = V0 + k - 1
    metrics, _ = ev(policy, prefix=[c], vocab_size=V0)
    s = sample(
        policy,
        condition_prompts(ev.prompt_ids, [c], BOS),
        n_per_prompt=ev.n_per_prompt,
        max_new_tokens=MAX_NEW,
        eos_id=EOS,
        pad_id=PAD,
        batch_size=ev.batch_size,
        seed=ev.seed,
        vocab_size=V0,
    )
    assert s.prompt_ids[0][:2] == [BOS, c]
    k1 = []
    for i in range(len(s.prompt_index)):
        n, x = int(s.lengths[i]), ev.prompt_ids[int(s.prompt_index[i])]
        y = s.response_ids[i, :n]
        lp = full_logps(policy, [BOS, c] + x[1:], y.tolist(), vocab=V0).gather(1, y[:, None])
        lr = full_logps(ref, x, y.tolist(), vocab=V0).gather(1, y[:, None])
        k1.append(float((lp - lr).sum()))
    assert metrics["kl/k1"] == pytest.approx(np.mean(k1), rel=1e-5)
    assert metrics["d"] == pytest.approx(np.sqrt(np.mean(k1)), rel=1e-5)
    texts = join([EVAL_PROMPTS[i] for i in s.prompt_index.tolist()], decode_responses(s, TOK))
    assert metrics["reward/gold_raw"] == pytest.approx(count_great(texts).mean())
    # the prefix changes the policy's distribution: a different KL from the plain evaluation
    assert abs(ev(policy)[0]["kl/k1"] - metrics["kl/k1"]) > 0.1


# ---------------------------------------------------------------- the loss of one update
def test_first_update_loss_matches_a_hand_computation(ref, monkeypatch) -> None:
    """The update minimises (1/N) sum over the batch's N response tokens of
    ``-log pi(y_t | bos, V0+b, x, y_<t) + beta * sum_v pi(v) (log pi(v) - log pi0(v | bos, x, ..))
    - c * H_t`` with ``pi`` over the first V0 logits. Recomputed here row by row from the
    policy's weights at the update, on the batch it drew; small forward passes
    (``forward_tokens=12``: one or two rows each) must not change the token mean."""
    seen = []
    draw = QuarkPool.sample

    def recording(self, batch_size):
        batch = draw(self, batch_size)
        seen.append((batch, copy.deepcopy(policy), self.buckets.copy()))
        return batch

    monkeypatch.setattr(QuarkPool, "sample", recording)
    beta, c = 0.5, 0.1
    policy = copy.deepcopy(ref)
    cfg = config(steps=1, forward_tokens=12)
    _, result = run(ref, cfg, QuarkSettings(k=4, kl_coef=beta, entropy_coef=c), policy=policy)
    ((batch, before, buckets),) = seen
    assert len(batch) == cfg.batch_size and len(set(buckets.tolist())) >= 2
    nll = kl = ent = 0.0
    n = 0
    for e in batch:
        assert e.prompt[0] == BOS
        lp = full_logps(before, [BOS, V0 + e.bucket, *e.prompt[1:]], e.response, vocab=V0)
        lr = full_logps(ref, e.prompt, e.response, vocab=V0)
        for t, y in enumerate(e.response):
            p = lp[t].exp()
            nll -= float(lp[t, y])
            kl += float((p * (lp[t] - lr[t])).sum())
            ent -= float((p * lp[t]).sum())
            n += 1
    row = result.steps[0]
    assert row["quark/nll"] == pytest.approx(nll / n, rel=1e-5)
    assert row["quark/kl"] == pytest.approx(kl / n, rel=1e-5)
    assert row["quark/entropy"] == pytest.approx(ent / n, rel=1e-5)
    assert row["train/loss"] == pytest.approx((nll + beta * kl - c * ent) / n, rel=1e-5)
    assert kl > 0  # the control token moved the conditioned policy from pi0


def test_forward_passes_do_not_change_the_update(ref) -> None:
    # One forward pass per update or many small ones: the same token-mean loss and gradient
    # (its norm), up to float32 summation order, which Adam amplifies on near-zero gradients.
    one, a = run(ref, config(steps=3))
    many, b = run(ref, config(steps=3, forward_tokens=10, minibatch_size=2))
    for x, y in zip(without_time(a.steps), without_time(b.steps), strict=True):
        assert x == pytest.approx(y, rel=1e-5)
    diff = torch.cat(
        [(x - y).abs().flatten() for x, y in zip(one.parameters(), many.parameters(), strict=True)]
    )
    # nearly every weight agrees to float rounding; Adam's step is at most ~lr, so a weight whose
    # gradient is rounding noise may differ by up to 2 lr a step, and only a handful of them do
    assert float((diff > 1e-5).float().mean()) < 1e-3
    assert float(diff.max()) <= 2 * 3 * 1e-2


# ---------------------------------------------------------------- behaviour of the loop
def test_kl_coefficient_keeps_the_policy_near_pi0(ref) -> None:
    # Measured (15 steps, lr 1e-2): kl/k1 ~ 6.4 nats with beta = 0, ~ 0.14 with beta = 5.
    cfg = config(steps=15)
    _, free = run(ref, cfg, QuarkSettings(kl_coef=0.0))
    _, tied = run(ref, cfg, QuarkSettings(kl_coef=5.0))
    assert free.history[-1]["kl/k1"] > 2.0
    assert tied.history[-1]["kl/k1"] < 0.2 * free.history[-1]["kl/k1"]
    assert tied.steps[-1]["quark/kl"] < free.steps[-1]["quark/kl"]


def test_quark_learns_what_the_control_tokens_mean(ref) -> None:
    # Reward: the number of "great". After 30 steps the best token's samples contain more of it
    # than the worst token's and than pi0's (measured: ~2.7 vs ~0.26, pi0 ~0.49), and the pool's
    # best bucket holds the high-reward samples.
    k = 5
    policy, result = run(
        ref, config(steps=30, eval_every=15), QuarkSettings(k=k, updates_per_step=2)
    )
    ids = result.config["quark_control_ids"]
    assert ids == list(range(V0, V0 + k)) and result.config["quark_vocab_size"] == V0
    prompts = encode_prompts(TOK, PROMPTS)

    def mean_reward(model, prefix):
        s = sample(
            model,
            condition_prompts(prompts, prefix, BOS),
            n_per_prompt=16,
            max_new_tokens=MAX_NEW,
            eos_id=EOS,
            pad_id=PAD,
            seed=5,
            vocab_size=V0,
        )
        rows = [PROMPTS[i] for i in s.prompt_index.tolist()]
        return count_great(join(rows, decode_responses(s, TOK))).mean()

    best, worst = mean_reward(policy, [ids[-1]]), mean_reward(policy, [ids[0]])
    init = mean_reward(ref, [])
    assert best > worst + 1.0 and best > init + 1.0
    last = result.steps[-1]
    assert last[f"quark/reward_bucket{k - 1}"] > last["quark/reward_bucket0"] + 1.0
    assert result.history[-1]["reward/proxy"] > 1.0  # the evaluator sees the best token


def test_history_rows_and_pool_bookkeeping(ref) -> None:
    cfg = config(steps=3, eval_every=2)
    n0 = 5
    initial = (PROMPTS[:n0], ["great movie"] * n0, np.arange(n0, dtype=float))
    _, result = run(ref, cfg, QuarkSettings(k=3), initial=initial)
    ev_keys = set(evaluator(ref)(ref)[0])
    base = ev_keys | {"step", "samples_seen", "time/wall", "time/eval"}
    train = {
        "quark/nll",
        "quark/kl",
        "quark/entropy",
        "quark/pool_size",
        "train/reward_raw",
        "train/length",
        "train/finished",
        "train/loss",
        "train/grad_norm",
        "train/optimizer_steps",
        "train/lr",
        "time/step",
        "time/sample",
        "time/score",
        "time/update",
    }
    assert [r["step"] for r in result.history] == [0, 2, 3]
    assert set(result.history[0]) == base
    for row in result.history[1:]:
        buckets = {k for k in row if k.startswith("quark/reward_bucket")}
        assert set(row) - buckets == base | train
        assert buckets and buckets <= {f"quark/reward_bucket{i}" for i in range(3)}
    assert [r["samples_seen"] for r in result.history] == [0, 2 * 16, 3 * 16]
    assert [r["quark/pool_size"] for r in result.steps] == [n0 + 16, n0 + 32, n0 + 48]
    assert [r["step"] for r in result.steps] == [1, 2, 3]


def test_same_seed_same_run(ref) -> None:
    cfg = config(steps=3, eval_every=2)
    pa, a = run(ref, cfg)
    pb, b = run(ref, cfg)
    assert without_time(a.history) == without_time(b.history)
    assert without_time(a.steps) == without_time(b.steps) and a.examples == b.examples
    for x, y in zip(pa.parameters(), pb.parameters(), strict=True):
        assert torch.equal(x, y)
    _, c = run(ref, config(steps=3, eval_every=2, seed=1))
    assert without_time(c.steps) != without_time(a.steps)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"k": 1}, "k"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"entropy_coef": -1}, "entropy_coef"),
        ({"updates_per_step": 0}, "updates_per_step"),
        ({"batch_size": 0}, "batch_size"),
        ({"beta": 0.1}, "beta"),
    ],
)
def test_bad_settings_name_the_field(kw: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        QuarkSettings(**kw)


def test_bad_runs_raise_clear_errors(ref) -> None:
    cfg = config(steps=2)
    with pytest.raises(ValueError, match="different models"):
        run(ref, cfg, policy=ref)
    with pytest.raises(ValueError, match="quark.batch_size 33 exceeds the pool"):
        run(ref, cfg, QuarkSettings(batch_size=33))  # 16 initial + 16 samples
    with pytest.raises(ValueError, match="88 output rows and ref 84"):
        run(ref, cfg, QuarkSettings(k=4), policy=with_controls(ref, 4))
    with pytest.raises(ValueError, match="2 prompts, 1 responses and 2 rewards"):
        run(ref, cfg, initial=(PROMPTS[:2], ["great"], np.zeros(2)))
    calls = []

    def nan_on_third_call(texts):  # initial pool, step 0, then step 1
        calls.append(1)
        r = count_great(texts)
        return r * np.nan if len(calls) == 3 else r

    with pytest.raises(NonFiniteError, match="step 1") as info:
        run(ref, cfg, reward_fn=nan_on_third_call)
    assert info.value.step == 1 and len(info.value.result.steps) == 1
