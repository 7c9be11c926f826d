"""Supervised fine-tuning (the SFT variants behind SALSA's soup) and the reviews task's gold
components (the targets of constrained RLHF's component proxies)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from proxygap.optimize.sft import encode_demonstrations, fine_tune
from proxygap.tasks import get_task
from proxygap.tasks.reviews.build import build_tokenizer, tiny_gpt2_config
from proxygap.tasks.reviews.gold import (
    UNPARSEABLE,
    concision_score,
    form_score,
    gold_facets,
    gold_score,
    sentiment_score,
)
from proxygap.tasks.reviews.grammar import sample_corpus

TOK = build_tokenizer()


def tiny_lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=32, n_layer=1, n_head=2, n_positions=64))


PROMPTS = ["the plot", "the music was", "i loved"]
RESPONSES = ["was good .", "very dull but the plot was great .", "the acting ."]


def test_encode_demonstrations_by_hand() -> None:
    prompt_ids, ids, mask = encode_demonstrations(TOK, PROMPTS, RESPONSES)
    words = TOK("the plot", add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == [TOK.bos_token_id, *words]
    lengths = [len(r.split()) + 1 for r in RESPONSES]  # one token per word, plus eos
    assert mask.sum(dim=1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert ids[i, n - 1] == TOK.eos_token_id
        assert (ids[i, n:] == TOK.pad_token_id).all()
    with pytest.raises(ValueError, match="equally many"):
        encode_demonstrations(TOK, PROMPTS, RESPONSES[:2])


def brute_force_nll(model: GPT2LMHeadModel, prompt: str, response: str) -> tuple[float, int]:
    """Sum of -log p over the response tokens and eos of one unpadded sequence, and their count."""
    p = [TOK.bos_token_id, *TOK(prompt, add_special_tokens=False)["input_ids"]]
    r = [*TOK(response, add_special_tokens=False)["input_ids"], TOK.eos_token_id]
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return float(-sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(r))), len(r)


def test_first_step_loss_is_the_token_mean_nll() -> None:
    """One batch holding every demonstration: the recorded loss is the NLL summed over all
    response tokens of the batch over their number (computed unpadded, one row at a time)."""
    model = tiny_lm()
    before = copy.deepcopy(model)
    hist = fine_tune(model, TOK, PROMPTS, RESPONSES, epochs=1, lr=1e-3, batch_size=3)
    parts = [brute_force_nll(before, p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    expected = sum(s for s, _ in parts) / sum(n for _, n in parts)
    assert len(hist.loss) == 1
    assert hist.loss[0] == pytest.approx(expected, rel=1e-5)


def test_fine_tuning_learns_the_demonstrations_and_is_seeded() -> None:
    model = tiny_lm()
    before = [brute_force_nll(model, p, r)[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    twin = copy.deepcopy(model)
    hist = fine_tune(model, TOK, PROMPTS * 8, RESPONSES * 8, epochs=6, lr=1e-2, batch_size=4)
    after = [brute_force_nll(model, p, r)[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)
    assert len(hist.loss) == 36  # 24 demonstrations / 4 per batch x 6 epochs
    fine_tune(twin, TOK, PROMPTS * 8, RESPONSES * 8, epochs=6, lr=1e-2, batch_size=4)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="epochs and lr must be > 0"):
        fine_tune(twin, TOK, PROMPTS, RESPONSES, lr=0.0)


# ---------------------------------------------------------------- gold components
def test_components_add_up_to_gold() -> None:
    texts = sample_corpus(300, seed=5) + ["brilliant brilliant .", "the plot was good"]
    comps = get_task("reviews").components
    assert set(comps) == {"sentiment", "concision", "form"}
    total = sum(f(texts) for f in comps.values())
    np.testing.assert_allclose(total, gold_score(texts), atol=1e-12)


def test_components_by_hand() -> None:
    # the five-clause review of test_reviews_task: sentiment 0.3, repetition 1.25, rambling 1
    text = (
        "the plot was good and the music was great but the plot was good and "
        "the cast was dull but the film was okay ."
    )
    assert sentiment_score([text])[0] == pytest.approx(0.3, abs=1e-12)
    assert concision_score([text])[0] == pytest.approx(-2.25, abs=1e-12)
    assert form_score([text])[0] == 0.0
    bad = "the plot was good"  # no period: does not parse
    assert [sentiment_score([bad])[0], concision_score([bad])[0]] == [0.0, 0.0]
    assert form_score([bad])[0] == UNPARSEABLE == gold_facets(bad).total


def test_component_proxy_is_trained_on_its_component(tmp_path, monkeypatch) -> None:
    """A proxy with ``target: sentiment`` sees pairs ordered by gold's sentiment facet, not by
    gold (noise 0: every chosen text has the higher or equal sentiment)."""
    import proxygap.study.data as data_module
    from proxygap.config import parse_config
    from proxygap.data.preferences import label_pairs
    from proxygap.rewards.reward_model import TrainHistory
    from proxygap.study.context import setup
    from proxygap.study.data import stage_proxy

    cfg = parse_config({
        "name": "comp", "preferences": {"n_pairs": 200, "n_heldout": 10}, "bon": None,
        "proxies": [{"name": "s", "target": "sentiment", "n_embd": 32, "n_layer": 1}],
    })  # fmt: skip
    ctx = setup(cfg, tmp_path, log=lambda *_: None)
    texts = sample_corpus(400, seed=9)
    a, b = texts[:200], texts[200:]
    pairs = label_pairs([""] * 200, a, b, gold_score(a), gold_score(b))
    seen: dict[str, list[str]] = {}

    def fake_train(model, tokenizer, chosen, rejected, *, cfg, progress=None) -> TrainHistory:
        seen["chosen"], seen["rejected"] = list(chosen), list(rejected)
        return TrainHistory(loss=[0.0], accuracy=[1.0])

    monkeypatch.setattr(data_module, "train_reward_model", fake_train)
    stage_proxy(ctx, cfg.proxies[0], pairs)
    sc, sr = sentiment_score(seen["chosen"]), sentiment_score(seen["rejected"])
    assert (sc >= sr).all() and (sc > sr).mean() > 0.5
    # gold orders some of these pairs the other way: the labels are not gold's
    assert (gold_score(seen["chosen"]) < gold_score(seen["rejected"])).any()
