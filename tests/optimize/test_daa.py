"""The direct-alignment recipe (proxygap/optimize/daa.py), its beta sweep (daa_sweep.py) and the
likelihood indicators (proxygap/analysis/likelihood.py).

The recipe runs on a tiny random GPT-2 with the built-in task's word-level tokenizer, so every
test takes well under a second or two.
"""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import GPT2Config, GPT2LMHeadModel

from proxygap.analysis.likelihood import likelihood_indicators, topk_entropy, topk_mass
from proxygap.data.preferences import Pairs
from proxygap.models.loading import load_tokenizer
from proxygap.optimize.daa import DAAConfig, plan_schedule, sample_likelihood, train_daa
from proxygap.optimize.daa_pairs import pair_logps, prepare_pairs, tokenize_pairs
from proxygap.optimize.daa_sweep import summarise_sweep
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.sampling.generate import sample
from proxygap.tasks import get_task

TASK = get_task("reviews")
TIME_KEYS = ("time/wall", "time/eval", "time/step")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TASK.tokenizer_path)


def tiny_gpt2(tok, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).eval()


def naive_logp(model, tok, prompt: str, response: str) -> float:
    """log pi(response + eos | bos + prompt) from one unpadded forward pass, token by token."""
    p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    return sum(float(logp[len(p) - 1 + t, r[t]]) for t in range(len(r)))


PAIRS = Pairs(  # prompts of 2 and 5 words and responses of 3 to 8 words: every batch is padded
    prompt=["i liked", "the acting", "i liked the plot but"],
    chosen=["the plot .", "was good and the music was moving .", "the music was great ."],
    rejected=["the script and the music .", "was bad .", "the cast was dull and boring ."],
)


# --------------------------------------------------------------------------- log-probs


def test_tokenize_pairs_adds_bos_and_eos(tok):
    t = tokenize_pairs(tok, PAIRS)
    assert t.prompt[0] == [tok.bos_token_id] + tok("i liked", add_special_tokens=False)["input_ids"]
    assert t.chosen[0] == tok("the plot .", add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    assert all(r[-1] == tok.eos_token_id for r in t.rejected)


def test_pair_logps_match_unpadded_forward_and_padding(tok):
    model = tiny_gpt2(tok)
    t = tokenize_pairs(tok, PAIRS)
    with torch.no_grad():
        alone = [pair_logps(model, t, [i], pad_id=tok.pad_token_id) for i in range(3)]
        together = pair_logps(model, t, [0, 1, 2], pad_id=tok.pad_token_id)
        reordered = pair_logps(model, t, [2, 0, 1], pad_id=tok.pad_token_id)
    for i, (prompt, chosen, rejected) in enumerate(zip(*astuple(PAIRS)[:3], strict=True)):
        c, r = float(alone[i].policy_chosen[0]), float(alone[i].policy_rejected[0])
        # the same pair alone (no padding) and padded inside batches of other widths
        assert abs(c - float(together.policy_chosen[i])) < 1e-5
        assert abs(r - float(together.policy_rejected[i])) < 1e-5
        # independent reference: one unpadded forward pass of bos + prompt + response + eos
        assert abs(c - naive_logp(model, tok, prompt, chosen)) < 1e-5
        assert abs(r - naive_logp(model, tok, prompt, rejected)) < 1e-5
    order = [2, 0, 1]
    torch.testing.assert_close(
        reordered.policy_rejected, together.policy_rejected[order], rtol=0, atol=1e-5
    )
    # lengths count response tokens including eos: "the plot ." is 3 words + eos
    assert together.chosen_len.tolist() == [4.0, 9.0, 6.0]
    assert together.ref_chosen is None  # no reference cached in these tokens


def test_reference_cache_equals_fresh_computation(tok):
    ref = tiny_gpt2(tok, seed=1)
    prepared = prepare_pairs(ref, tok, PAIRS, batch_size=2)  # batches [0, 1] and [2]
    fresh_c = [naive_logp(ref, tok, p, c) for p, c in zip(PAIRS.prompt, PAIRS.chosen, strict=True)]
    fresh_r = [
        naive_logp(ref, tok, p, r) for p, r in zip(PAIRS.prompt, PAIRS.rejected, strict=True)
    ]
    np.testing.assert_allclose(prepared.ref_chosen.numpy(), fresh_c, rtol=0, atol=1e-5)
    np.testing.assert_allclose(prepared.ref_rejected.numpy(), fresh_r, rtol=0, atol=1e-5)
    assert not prepared.ref_chosen.requires_grad


def test_pairs_longer_than_the_model_are_refused(tok):
    short = tiny_gpt2(tok)
    short.config.n_positions = 8
    # longest: bos + "i liked the plot but" (6) + "the cast was dull and boring ." + eos (8)
    with pytest.raises(ValueError, match="a pair needs 14 positions; the model has 8"):
        prepare_pairs(short, tok, PAIRS)


# --------------------------------------------------------------------------- config and schedule


def test_config_validation_names_the_problem():
    with pytest.raises(ValidationError, match="unknown DAA loss 'dpoo'"):
        DAAConfig(loss="dpoo")
    with pytest.raises(ValidationError, match="gamma is not a hyperparameter of loss 'dpo'"):
        DAAConfig(loss="dpo", gamma=1.0)
    with pytest.raises(ValidationError, match="requires label_smoothing"):
        DAAConfig(loss="cdpo")
    with pytest.raises(ValidationError, match="eval_at"):
        DAAConfig(eval_at=[0.5, 1.5])
    cfg = DAAConfig(loss="simpo", beta=2.0, gamma=0.5)
    assert cfg.loss_hyper() == {"beta": 2.0, "gamma": 0.5}
    assert DAAConfig(loss="ipo", beta=0.3).loss_hyper() == {"beta": 0.3}


def test_schedule_eval_points_are_fractions_of_the_first_epoch():
    # 64 pairs, 4 pairs per micro-batch x 2 accumulation = 8 pairs per step -> 8 steps per epoch
    cfg = DAAConfig(batch_size=4, grad_accum=2, epochs=2.5, eval_at=[0, 0.125, 0.25, 0.5, 1.0])
    plan = plan_schedule(64, cfg)
    assert plan.steps_per_epoch == 8 and plan.total_steps == 20  # ceil(2.5 * 8)
    # fractions -> steps 0, 1, 2, 4, 8; then epoch 2 -> 16; then the last step 20
    assert plan.eval_steps == [0, 1, 2, 4, 8, 16, 20]
    # points rounding to the same step are evaluated once: 2 steps per epoch, 0.1 and 0.2 -> 0
    assert plan_schedule(8, DAAConfig(batch_size=4, eval_at=[0, 0.1, 0.2, 1.0])).eval_steps == [
        0,
        2,
    ]


# --------------------------------------------------------------------------- the recipe


TRAIN_SUBJECTS = ["acting", "plot", "story", "music", "ending", "cast", "dialogue", "pacing"]
HELDOUT_SUBJECTS = ["villain", "hero", "finale", "setting"]  # prompts never trained on


def _learnable_pairs(n: int, subjects: list[str] = TRAIN_SUBJECTS) -> Pairs:
    """Chosen responses say "great", rejected ones "bad": one token decides every pair."""
    prompts = [f"the {subjects[i % len(subjects)]}" for i in range(n)]
    return Pairs(
        prompt=prompts,
        chosen=["was great ."] * n,
        rejected=["was bad ."] * n,
        gold_chosen=np.ones(n),
        gold_rejected=np.zeros(n),
    )


def _evaluator(ref, tok) -> PolicyEvaluator:
    prompts = ["the acting", "the plot"]
    ids = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    return PolicyEvaluator(
        ref=ref,
        tokenizer=tok,
        join=TASK.join,
        prompts=prompts,
        prompt_ids=ids,
        gold=lambda texts: np.array([float("great" in t) for t in texts]),
        proxy=None,
        n_per_prompt=2,
        max_new_tokens=6,
        seed=3,
    )


def _run(tok, cfg: DAAConfig, n_train: int = 32):
    ref = tiny_gpt2(tok, seed=7)
    policy = tiny_gpt2(tok, seed=7)
    result = train_daa(
        policy,
        ref,
        tok,
        _learnable_pairs(n_train),
        _learnable_pairs(8, HELDOUT_SUBJECTS),
        cfg=cfg,
        evaluator=_evaluator(ref, tok),
        log=lambda _: None,
    )
    return result


@pytest.mark.parametrize("loss", ["dpo", "ipo", "slic", "fdpo_fkl", "fdpo_js", "fdpo_alpha"])
def test_a_few_steps_learn_a_trivial_preference(tok, loss):
    cfg = DAAConfig(loss=loss, beta=0.5, lr=3e-3, batch_size=8, epochs=1, eval_at=[0, 1.0])
    h = _run(tok, cfg).history
    assert [e["step"] for e in h] == [0, 4]
    # at step 0 the policy is the reference: every implicit margin is exactly 0
    assert h[0]["daa/heldout_margin"] == 0.0 and h[0]["daa/heldout_accuracy"] == 0.0
    assert h[0]["reward/gold"] == 0.0  # the same samples as the initial policy's
    # KL up to float rounding: cached decode-time log-probs against one forward pass of ref
    assert abs(h[0]["kl/k1"]) < 1e-5 and h[0]["d"] < 1e-2
    # 4 steps later all held-out pairs are ranked right and the margin beta*h is clearly > 0
    assert h[-1]["daa/heldout_accuracy"] == 1.0
    assert h[-1]["daa/heldout_margin"] > 0.1
    assert h[-1]["daa/heldout_loss"] < h[0]["daa/heldout_loss"]
    assert "likelihood/topk_entropy" in h[-1] and "train/loss" in h[-1]


def test_eval_points_fire_and_history_is_deterministic(tok):
    # 32 pairs / 4 per step = 8 steps per epoch; fractions -> steps 0, 1, 2, 4, 6, 8; epoch 2 -> 16
    cfg = DAAConfig(
        beta=0.2, lr=1e-3, batch_size=4, epochs=2, eval_at=[0, 0.125, 0.25, 0.5, 0.75, 1.0], seed=5
    )
    a, b = _run(tok, cfg), _run(tok, cfg)
    assert [e["step"] for e in a.history] == [0, 1, 2, 4, 6, 8, 16]
    assert [e["epoch"] for e in a.history] == [0, 0.125, 0.25, 0.5, 0.75, 1.0, 2.0]
    assert [e["samples_seen"] for e in a.history] == [0, 4, 8, 16, 24, 32, 64]
    for x, y in zip(a.history, b.history, strict=True):
        assert {k: v for k, v in x.items() if k not in TIME_KEYS} == {
            k: v for k, v in y.items() if k not in TIME_KEYS
        }
    c = _run(tok, cfg.model_copy(update={"seed": 6}))
    assert c.history[-1]["daa/heldout_margin"] != a.history[-1]["daa/heldout_margin"]


def test_gradient_accumulation_matches_one_large_batch(tok):
    # 8 pairs per step as 1 micro-batch of 8 or as 2 of 4: the same pairs, the same mean gradient
    one = DAAConfig(lr=3e-3, batch_size=8, grad_accum=1, eval_at=[0, 1.0])
    two = one.model_copy(update={"batch_size": 4, "grad_accum": 2})
    a, b = _run(tok, one).history[-1], _run(tok, two).history[-1]
    assert a["step"] == b["step"] == 4
    for k in ("daa/heldout_margin", "daa/heldout_chosen_logp", "train/loss", "train/grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k


def test_beta_sweep_hump_uses_the_final_checkpoints(tok):
    ref = tiny_gpt2(tok, seed=7)
    train = prepare_pairs(ref, tok, _learnable_pairs(16))
    held = prepare_pairs(ref, tok, _learnable_pairs(8, HELDOUT_SUBJECTS))
    evaluator = _evaluator(ref, tok)
    runs = []
    for beta in (0.05, 1.0):
        cfg = DAAConfig(beta=beta, lr=3e-3, batch_size=8, eval_at=[0, 0.5, 1.0])
        policy = tiny_gpt2(tok, seed=7)
        result = train_daa(
            policy, ref, tok, train, held, cfg=cfg, evaluator=evaluator, log=lambda _: None
        )
        runs.append(("dpo", beta, result))
    sweep = summarise_sweep(runs)
    finals = sorted((r.history[-1] for _, _, r in sweep.runs), key=lambda h: h["d"])
    best = max(range(2), key=lambda i: finals[i]["reward/gold"])
    assert sweep.hump["dpo"].d_peak == finals[best]["d"]
    assert sweep.hump["dpo"].gold_peak == finals[best]["reward/gold"]
    assert len(sweep.rows()) == 2 * 3


def test_a_non_finite_loss_stops_at_its_step(tok, monkeypatch):
    """A NaN loss at the third optimizer step stops the run naming step 2, with the history of
    the evaluations before it kept."""
    from proxygap.errors import NonFiniteError
    from proxygap.optimize import daa as daa_module

    calls = {"n": 0}
    real = daa_module.compute_daa_loss

    def nan_on_third(*args, **kw):  # training calls only: evaluations run without gradient
        losses, metrics = real(*args, **kw)
        calls["n"] += torch.is_grad_enabled()
        nan = torch.is_grad_enabled() and calls["n"] == 3
        return (losses * float("nan") if nan else losses), metrics

    monkeypatch.setattr(daa_module, "compute_daa_loss", nan_on_third)
    cfg = DAAConfig(lr=3e-3, batch_size=8, eval_at=[0, 0.25, 1.0])
    with pytest.raises(NonFiniteError, match="step 2: loss is nan") as info:
        _run(tok, cfg)
    assert [h["step"] for h in info.value.result.history] == [0, 1]
    assert len(info.value.result.steps) == 2


# --------------------------------------------------------------------------- likelihood indicators


def naive_indicators(logits: torch.Tensor, k: int) -> tuple[float, float]:
    """Entropy of the renormalised top-k and the top-k mass, by sorting one row in Python."""
    p = sorted(torch.softmax(logits.double(), -1).tolist(), reverse=True)[:k]
    mass = sum(p)
    return -sum(x / mass * math.log(x / mass) for x in p), mass


def test_likelihood_indicators_match_a_naive_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 20, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]])
    ent, mass = topk_entropy(logits, k=4), topk_mass(logits, k=4)
    rows = [(b, t) for b in range(3) for t in range(5)]
    for b, t in rows:
        e_ref, m_ref = naive_indicators(logits[b, t], 4)
        assert abs(float(ent[b, t]) - e_ref) < 1e-12 and abs(float(mass[b, t]) - m_ref) < 1e-12
    kept = [naive_indicators(logits[b, t], 4) for b, t in rows if mask[b, t]]
    out = likelihood_indicators(logits, mask, k=4)
    assert out["likelihood/topk_entropy"] == pytest.approx(np.mean([e for e, _ in kept]), abs=1e-12)
    assert out["likelihood/topk_mass"] == pytest.approx(np.mean([m for _, m in kept]), abs=1e-12)


def test_likelihood_indicators_hand_values():
    V, k = 84, 10
    uniform = torch.zeros(2, 3, V, dtype=torch.float64)
    # uniform over V: the top k hold k/V of the mass; renormalised they are uniform, entropy log k
    torch.testing.assert_close(
        topk_mass(uniform, k=k), torch.full((2, 3), k / V, dtype=torch.float64)
    )
    torch.testing.assert_close(
        topk_entropy(uniform, k=k), torch.full((2, 3), math.log(k), dtype=torch.float64)
    )
    # p = (1/2, 1/4, 1/4), k = 2: mass 3/4; q = (2/3, 1/3), H = log 3 - (2/3) log 2
    logits = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25)], dtype=torch.float64)
    assert float(topk_mass(logits, k=2)) == pytest.approx(0.75, abs=1e-15)
    assert float(topk_entropy(logits, k=2)) == pytest.approx(
        math.log(3) - 2 / 3 * math.log(2), abs=1e-15
    )
    # k = 1: mass is the top probability, the renormalised distribution is a point mass
    assert float(topk_entropy(logits, k=1)) == 0.0
    # a near one-hot distribution: mass -> 1, entropy -> 0
    peaked = torch.tensor([50.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert float(topk_mass(peaked, k=2)) == pytest.approx(1.0, abs=1e-15)
    assert float(topk_entropy(peaked, k=2)) < 1e-18
    # masked-out positions never count, even when they hold NaN
    logits3 = torch.stack([torch.zeros(V, dtype=torch.float64), torch.full((V,), math.nan)])[None]
    out = likelihood_indicators(logits3, torch.tensor([[1, 0]]), k=k)
    assert out == pytest.approx(
        {"likelihood/topk_entropy": math.log(k), "likelihood/topk_mass": k / V}
    )
    with pytest.raises(ValueError, match="k must be an int"):
        topk_mass(logits, k=4)


def test_indicators_on_own_samples_match_unpadded_forward_passes(tok):
    # the recipe's batched, padded pass against one unpadded pass per sample, position by position
    policy = tiny_gpt2(tok, seed=3)
    ev = _evaluator(policy, tok)
    got = sample_likelihood(policy, ev, k=5, n_per_prompt=3)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    s = sample(
        policy, ev.prompt_ids, n_per_prompt=3, max_new_tokens=6, eos_id=eos, pad_id=pad, seed=3
    )
    per_token = []
    for prompt, row, n in zip(s.prompt_ids_rows(), s.response_ids, s.lengths, strict=True):
        ids = torch.tensor([prompt + row[: int(n)].tolist()])
        with torch.no_grad():
            logits = policy(input_ids=ids).logits[0]
        per_token += [naive_indicators(logits[len(prompt) - 1 + t], 5) for t in range(int(n))]
    assert len(per_token) == int(s.mask.sum()) > 6
    assert got["likelihood/topk_entropy"] == pytest.approx(
        np.mean([e for e, _ in per_token]), abs=1e-5
    )
    assert got["likelihood/topk_mass"] == pytest.approx(
        np.mean([m for _, m in per_token]), abs=1e-5
    )
