"""The evaluator's gold on a small labelling budget (proxygap/optimize/evaluate.py):
``reward/gold_budget`` reads only the first prompts' samples, ``reward/gold`` all of them."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.sampling.generate import encode_prompts
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config

TOK = build_tokenizer()
PROMPTS = ["the ending", "i loved", "the music", "the villain"]


def _policy(shift: float) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = tiny_gpt2_config(TOK, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    model = GPT2LMHeadModel(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(shift * torch.randn(p.shape, generator=gen))
    return model


def _join(prompts: list[str], responses: list[str]) -> list[str]:
    return [f"{p} | {r}" for p, r in zip(prompts, responses, strict=True)]


def test_budget_gold_is_the_mean_and_clustered_se_over_the_first_prompts_samples():
    calls: list[tuple[list[str], np.ndarray]] = []

    def gold(texts: list[str]) -> np.ndarray:  # a text's own number, recorded per call
        values = np.array([zlib.crc32(t.encode()) % 1000 / 100.0 for t in texts])
        calls.append((list(texts), values))
        return values

    ev = PolicyEvaluator(
        ref=_policy(0.0), tokenizer=TOK, join=_join,
        prompts=PROMPTS, prompt_ids=encode_prompts(TOK, PROMPTS), gold=gold, proxy=None,
        n_per_prompt=3, max_new_tokens=8, seed=5, gold_budget_prompts=2,
    )  # fmt: skip
    metrics, _ = ev(_policy(0.5))
    (texts0, g0), (texts, g) = calls[0], calls[-1]
    prompt = np.array([PROMPTS.index(t.split(" | ")[0]) for t in texts])
    assert [PROMPTS.index(t.split(" | ")[0]) for t in texts0] == prompt.tolist()
    x = g - g0
    keep = prompt < 2
    assert keep.sum() == 6 and (~keep).sum() == 6
    assert metrics["reward/gold_budget"] == pytest.approx(x[keep].mean(), rel=1e-12)
    assert metrics["reward/gold"] == pytest.approx(x.mean(), rel=1e-12)
    means = [x[prompt == k].mean() for k in (0, 1)]  # SE of the mean of two prompt means
    assert metrics["reward/gold_budget_se"] == pytest.approx(np.std(means, ddof=1) / np.sqrt(2))
    with pytest.raises(ValueError, match=r"gold_budget_prompts must lie in \[1, 4\]"):
        PolicyEvaluator(
            ref=_policy(0.0), tokenizer=TOK, join=lambda p, r: list(r), prompts=PROMPTS,
            prompt_ids=encode_prompts(TOK, PROMPTS), gold=gold, proxy=None,
            gold_budget_prompts=5,
        )  # fmt: skip
