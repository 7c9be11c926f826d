"""PolicyKeeper: the final and the best-by-gold policy of a run, written when the loop closes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from proxygap.models.tiny import tiny_gpt2_config
from proxygap.optimize.checkpoint import PolicyKeeper
from proxygap.tasks.reviews.build import build_tokenizer

TOK = build_tokenizer()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_keeps_the_best_and_the_final_policy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    keep = PolicyKeeper(model, TOK, tmp_path)
    states = []
    for step, gold in enumerate([0.1, 0.5, math.nan, 0.3]):  # best at step 1; NaN is skipped
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (step + 1))
        states.append(_state(model))
        keep({"step": float(step), "reward/gold": gold})
    assert not (tmp_path / "policy-best").exists()  # nothing written before the loop closes
    keep.close()
    best = GPT2LMHeadModel.from_pretrained(tmp_path / "policy-best")
    final = GPT2LMHeadModel.from_pretrained(tmp_path / "policy-final")
    for k, v in best.state_dict().items():
        assert torch.equal(v, states[1][k]), k
    for k, v in final.state_dict().items():
        assert torch.equal(v, states[3][k]), k
    assert torch.equal(best.lm_head.weight, best.transformer.wte.weight)  # still tied
    info = json.loads((tmp_path / "policy-best.json").read_text())
    assert info == {"metric": "reward/gold", "step": 1.0, "reward/gold": 0.5}
    assert (tmp_path / "policy-best" / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary folder left behind


def test_keeps_the_last_policy_before_the_monitors_first_alarm(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    keep = PolicyKeeper(model, TOK, tmp_path)
    states = []
    # alarms at steps 20 and 40, none at 30 in between: the rollback point is step 10
    for step, alarm in zip((0, 10, 20, 30, 40), (0.0, 0.0, 1.0, 0.0, 1.0), strict=True):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        states.append(_state(model))
        keep({"step": float(step), "reward/gold": 0.0, "monitor/alarm": alarm})
    keep.close()
    rollback = GPT2LMHeadModel.from_pretrained(tmp_path / "policy-before-alarm")
    for k, v in rollback.state_dict().items():
        assert torch.equal(v, states[1][k]), k
    assert json.loads((tmp_path / "policy-before-alarm.json").read_text()) == {"step": 10.0}


def test_no_rollback_policy_without_an_alarm(tmp_path: Path) -> None:
    model = GPT2LMHeadModel(tiny_gpt2_config(TOK, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    keep = PolicyKeeper(model, TOK, tmp_path)
    for step in range(3):
        keep({"step": float(step), "reward/gold": 0.1 * step, "monitor/alarm": 0.0})
    keep.close()
    assert (tmp_path / "policy-best").is_dir()
    assert not (tmp_path / "policy-before-alarm").exists()
