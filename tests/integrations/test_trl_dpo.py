"""``ProxygapEvalCallback`` in TRL's ``DPOTrainer`` (two steps on CPU): the logged gold, proxy
and KL are those of samples drawn again here, independently, from the initial and the final
policy with the callback's seed; the per-process merge by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from proxygap.integrations.scoring import text_join
from proxygap.integrations.trl import ensemble_reward, gold_reward
from proxygap.integrations.trl_eval import EvalSamples, ProxygapEvalCallback, merge_parts
from proxygap.models.loading import load_policy
from proxygap.models.logprobs import response_logprobs
from proxygap.monitor.signals import TOPK, topk_signals
from proxygap.runs import load_run
from proxygap.sampling.generate import decode_responses, sample
from proxygap.tasks import get_task

from .trainers import dpo_trainer

TASK = get_task("reviews")
SAMPLING = dict(n_per_prompt=2, max_new_tokens=10, seed=7)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, member_paths, tok):
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    out = tmp_path_factory.mktemp("dpo")
    join = text_join(TASK.separator, strip_prefix=f"{tok.bos_token} ")
    prompts = [f"{tok.bos_token} {p}" for p in TASK.prompts(4, seed=3)]
    pairs = datasets.Dataset.from_dict(
        {
            "prompt": [f"{tok.bos_token} {p}" for p in TASK.prompts(4, seed=0)],
            "chosen": [" a moving and great film ."] * 4,
            "rejected": [" a dull film ."] * 4,
        }
    )
    cb = ProxygapEvalCallback(
        prompts, proxy=ensemble_reward(member_paths, join=join),
        gold=gold_reward(TASK.gold, join=join), every=2, **SAMPLING,
    )  # fmt: skip
    trainer = dpo_trainer(out, pairs, tok, [cb])
    trainer.train()
    return SimpleNamespace(trainer=trainer, cb=cb, out=out, prompts=prompts, join=join)


def _resample(model, tok, prompts):
    """The callback's sampling, redone: TRL's tokenization, the same seed."""
    ids = [list(x) for x in tok(text=prompts)["input_ids"]]
    model.eval()
    with torch.no_grad():
        s = sample(model, ids, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, **SAMPLING)
    rows = [prompts[i] for i in s.prompt_index.tolist()]
    return s, rows, decode_responses(s, tok)


def test_dpo_logs_gold_proxy_and_kl_of_resampled_texts(dpo_run, member_paths, tok):
    trainer, cb = dpo_run.trainer, dpo_run.cb
    assert cb.trainer is trainer and cb.kl_status == "measured"
    log = trainer.state.log_history
    mine = [r for r in log if "proxygap/reward/gold" in r]
    assert [r["step"] for r in mine] == [0, 2]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]  # DPO's own rows are all there
    proxy = ensemble_reward(member_paths, join=dpo_run.join)
    policies = {0: load_policy(TASK.policy_path), 2: trainer.model}
    for row in mine:
        step = row["step"]
        s, rows, texts = _resample(policies[step], tok, dpo_run.prompts)
        assert texts == cb.samples[step].completions
        gold = TASK.gold(dpo_run.join(rows, texts))
        assert row["proxygap/reward/gold"] == pytest.approx(np.mean(gold), abs=1e-9)
        per_prompt = np.asarray(gold, dtype=float).reshape(4, 2).mean(axis=1)
        se = per_prompt.std(ddof=1) / 2.0  # SD of the 4 prompt means / sqrt(4)
        assert row["proxygap/reward/gold_se"] == pytest.approx(se, abs=1e-9)
        members = proxy.scorer.members(dpo_run.join(rows, texts))
        assert row["proxygap/reward/proxy"] == pytest.approx(members.mean(), abs=1e-6)
        assert row["proxygap/signal/ensemble_std"] == pytest.approx(
            members.std(axis=1).mean(), abs=1e-6
        )
        assert {"proxygap/monitor/score", "proxygap/monitor/alarm"} <= set(row)
    # KL of the final policy's samples to DPO's reference: mean over samples of
    # sum_t (log pi - log ref), with the trainer's own two models
    s, _, _ = _resample(trainer.model, tok, dpo_run.prompts)
    with torch.no_grad():
        args = (s.prompt_ids_rows(), s.response_ids, s.mask)
        lp = response_logprobs(trainer.model, *args, pad_id=tok.pad_token_id)
        ref = response_logprobs(trainer.ref_model, *args, pad_id=tok.pad_token_id)
    k1 = float(((lp - ref) * s.mask).sum(dim=1).mean())
    assert mine[1]["proxygap/kl/k1"] == pytest.approx(k1, abs=1e-4)
    assert mine[1]["proxygap/d"] == pytest.approx(np.sqrt(max(k1, 0.0)), abs=1e-3)
    # signal/unlikely_rate: the reference's per-token NLL of the final samples against the
    # 0.99-quantile of the step-0 samples' (the initial policy's own)
    s0, _, _ = _resample(policies[0], tok, dpo_run.prompts)
    with torch.no_grad():
        args0 = (s0.prompt_ids_rows(), s0.response_ids, s0.mask)
        ref0 = response_logprobs(trainer.ref_model, *args0, pad_id=tok.pad_token_id)
    nll0 = (-(ref0 * s0.mask).sum(dim=1) / s0.mask.sum(dim=1)).numpy()
    nll = (-(ref * s.mask).sum(dim=1) / s.mask.sum(dim=1)).numpy()
    cutoff = np.quantile(nll0, 0.99)
    assert cb.unlikely_cutoff == pytest.approx(cutoff, rel=1e-5)
    assert mine[0]["proxygap/signal/unlikely_rate"] == pytest.approx(np.mean(nll0 > cutoff))
    assert mine[1]["proxygap/signal/unlikely_rate"] == pytest.approx(np.mean(nll > cutoff))
    # signal/topk_*: the token means of the sampler's top-10 statistics of the same samples,
    # redrawn from the trainer's own initial policy (its reference) and final policy
    prompt_ids = [list(x) for x in tok(text=dpo_run.prompts)["input_ids"]]
    for row, model, redone in ((mine[0], trainer.ref_model, s0), (mine[1], trainer.model, s)):
        again = sample(
            model, prompt_ids, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, topk=TOPK,
            **SAMPLING,
        )  # fmt: skip
        assert torch.equal(again.response_ids, redone.response_ids)
        mass, entropy = topk_signals(again.topk_stats, again.mask)
        assert row["proxygap/signal/topk_mass"] == pytest.approx(mass, abs=1e-6)
        assert row["proxygap/signal/topk_entropy"] == pytest.approx(entropy, abs=1e-6)
    assert abs(mine[0]["proxygap/kl/k1"]) < 1e-5  # the initial policy is the reference
    assert mine[0]["proxygap/d"] == pytest.approx(0.0, abs=1e-3)
    assert mine[1]["proxygap/kl/k1"] > 1e-3  # two DPO steps moved the policy


def test_dpo_history_file_reads_back(dpo_run):
    rows = load_run(dpo_run.out).trl
    log = [r for r in dpo_run.trainer.state.log_history if "proxygap/reward/gold" in r]
    assert [r["step"] for r in rows] == [0.0, 2.0]
    assert rows[0]["reward/gold"] == 0.0
    gold = [r["proxygap/reward/gold"] for r in log]
    assert rows[1]["reward/gold"] == pytest.approx(gold[1] - gold[0])
    assert rows[1]["reward/gold_se"] == pytest.approx(log[1]["proxygap/reward/gold_se"])


def test_merge_parts_by_hand():
    """Two processes' parts: KL sequence-weighted (1 and 3 samples), entropy token-weighted
    (10 and 30 tokens), clamped summed, samples concatenated in rank order."""

    def part(n, k1, ent, tokens, clamped, first):
        kl = {"kl/k1": k1, "signal/entropy": ent, "kl/clamped": clamped}
        kl |= {"signal/topk_mass": ent / 4, "signal/topk_entropy": ent + 1}
        return EvalSamples(
            prompt_index=np.arange(first, first + n), prompts=["p"] * n, completions=["c"] * n,
            lengths=np.ones(n), proxy=np.full(n, float(first)), members=None, gold=None, kl=kl,
            tokens=tokens,
        )  # fmt: skip

    merged, kl = merge_parts([part(1, 2.0, 1.0, 10, 1, 0), part(3, 6.0, 2.0, 30, 2, 1)])
    assert merged.ref_nll is None  # no part measured the reference's NLLs
    # a process with no prompts measured nothing: the others' NLLs still come through
    empty = EvalSamples(np.zeros(0, dtype=np.int64), [], [], np.zeros(0), None, None, None, {}, 0.0)
    measured = part(2, 1.0, 1.0, 4, 0, 0)
    measured.ref_nll = np.array([1.5, 2.5])
    with_empty, _ = merge_parts([measured, empty])
    assert with_empty.ref_nll is not None and with_empty.ref_nll.tolist() == [1.5, 2.5]
    assert kl["kl/k1"] == pytest.approx((1 * 2.0 + 3 * 6.0) / 4)  # 5.0
    assert kl["signal/entropy"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)  # 1.75
    assert kl["signal/topk_mass"] == pytest.approx((10 * 0.25 + 30 * 0.5) / 40)  # by tokens
    assert kl["signal/topk_entropy"] == pytest.approx((10 * 2.0 + 30 * 3.0) / 40)
    assert kl["kl/clamped"] == 3
    assert merged.proxy is not None and merged.proxy.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert merged.gold is None and merged.prompt_index.tolist() == [0, 1, 2, 3]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prompts"):
        ProxygapEvalCallback([])
    with pytest.raises(ValueError, match="every"):
        ProxygapEvalCallback(["x"], every=0)
