"""A study of a task made only from a researcher's own files: a prompt file, a tiny causal LM,
a tiny sequence-classification gold and a preference file without gold fields (best-of-n, RL and
DAA on it), the gold scale checked against the gold model's SD computed here, the file's labels
used as given, and a gold function with a chat template."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from proxygap.cli import run_and_report
from proxygap.config import parse_config


def _gold_by_hand(folder: Path, texts: list[str]) -> np.ndarray:
    """The gold model's score of each text, one text at a time (no padding, no batching):
    ``[bos] text [eos]`` into the classifier, its single logit (proxygap's reward convention)."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for t in texts:
            ids = [
                tok.bos_token_id,
                *tok(t, add_special_tokens=False)["input_ids"],
                tok.eos_token_id,
            ]
            out.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    return np.array(out)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def own_run(
    own_files: dict[str, Path], own_study: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return run_and_report(
        parse_config(own_study(own_files)), tmp_path_factory.mktemp("runs"), log=lambda *_: None
    )


def test_gold_scale_is_the_gold_models_sd_on_base_policy_samples(
    own_run: Path, own_files: dict[str, Path]
) -> None:
    ref = _rows(own_run / "reference.jsonl")
    assert len(ref) == 2 * 24  # two base-policy samples for each of n_heldout prompts
    texts = [f"{r['prompt']} {r['response']}" if r["response"] else r["prompt"] for r in ref]
    gold = _gold_by_hand(own_files["gold"], texts)
    np.testing.assert_allclose([r["gold"] for r in ref], gold, rtol=1e-5, atol=1e-7)
    summary = json.loads((own_run / "summary.json").read_text())
    assert summary["gold_scale"] == pytest.approx(float(gold.std()), rel=1e-5)
    # the samples are the base policy's: prompts of the training split, responses of at most
    # max_new_tokens = 6 tokens of its vocabulary
    task = json.loads((own_run / "task.json").read_text())
    prompts = own_files["prompts.txt"].read_text().splitlines()
    train = {prompts[i] for i in task["split"]["train"]}
    assert {r["prompt"] for r in ref} <= train
    tok = AutoTokenizer.from_pretrained(own_files["policy"])
    assert max(len(tok(r["response"], add_special_tokens=False)["input_ids"]) for r in ref) <= 6


def test_prompts_split_once_and_evaluation_uses_held_out_prompts(
    own_run: Path, own_files: dict[str, Path]
) -> None:
    task = json.loads((own_run / "task.json").read_text())
    train, held = task["split"]["train"], task["split"]["heldout"]
    assert sorted(train + held) == list(range(40)) and len(held) == 8  # 0.2 x 40 prompts
    prompts = own_files["prompts.txt"].read_text().splitlines()
    picks = json.loads((own_run / "samples.json").read_text())
    assert {p["prompt"] for p in picks} <= {prompts[i] for i in held}


def test_held_out_pairs_are_the_files_labels_scored_by_the_gold_model(
    own_run: Path, own_files: dict[str, Path]
) -> None:
    file_rows = _rows(own_files["pairs.jsonl"])[64 : 64 + 24]  # after the 64 training pairs
    held = _rows(own_run / "heldout.jsonl")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in held] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in file_rows
    ]  # the file's order kept: labels as given
    texts = [f"{r['prompt']} {r['chosen']}" for r in held[:4]]
    by_hand = _gold_by_hand(own_files["gold"], texts)
    np.testing.assert_allclose([r["gold_chosen"] for r in held[:4]], by_hand, rtol=1e-5, atol=1e-7)
    prefers = np.mean([r["gold_chosen"] > r["gold_rejected"] for r in held])
    info = json.loads((own_run / "stages.json").read_text())["preferences"]
    assert info["gold_prefers_chosen"] == pytest.approx(prefers)


def test_every_stage_ran_and_the_report_says_where_the_pairs_came_from(own_run: Path) -> None:
    history = json.loads((own_run / "rl" / "kl-0" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 2]
    assert history[-1]["kl/k1"] != 0.0  # the policy moved (lr 0.01)
    daa = json.loads((own_run / "daa" / "dpo-0.1" / "result.json").read_text())["history"]
    assert daa[0]["reward/gold"] == 0.0 and all(np.isfinite(h["reward/gold"]) for h in daa)
    md = (own_run / "report.md").read_text()
    assert "The pairs come from" in md and "with the file's own labels" in md
    assert "it labels 64 training pairs of base-policy samples" not in md


def test_gold_fields_in_the_file_change_neither_labels_nor_scale(
    own_files: dict[str, Path], own_study: Any, tmp_path: Path
) -> None:
    """A file with gold fields 100x another scale and in the opposite order: the configured gold
    rules (same scale, same curves), and the log says so with their agreement."""
    rows = _rows(own_files["pairs.jsonl"])
    for i, r in enumerate(rows):
        r["gold_chosen"], r["gold_rejected"] = -100.0 * i, 100.0 * i + 1
    with_gold = tmp_path / "with-gold.jsonl"
    with_gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    small = {"rl": None, "daa": None}
    logs: list[str] = []
    a = run_and_report(
        parse_config(own_study(own_files, **small)), tmp_path / "a", log=lambda *_: None
    )
    files = {**own_files, "pairs.jsonl": with_gold}
    b = run_and_report(parse_config(own_study(files, **small)), tmp_path / "b", log=logs.append)
    sa, sb = (json.loads((x / "summary.json").read_text()) for x in (a, b))
    assert sa["gold_scale"] == sb["gold_scale"]
    assert (a / "bon_curves.csv").read_text() == (b / "bon_curves.csv").read_text()
    note = [m for m in logs if "gold_chosen/gold_rejected fields are not used" in str(m)]
    assert len(note) == 1 and "the configured gold rules" in note[0]
    info = json.loads((b / "stages.json").read_text())["preferences"]
    held = _rows(b / "heldout.jsonl")
    ours = np.array([r["gold_chosen"] - r["gold_rejected"] for r in held])
    # the file's gold says rejected wins every pair: agreement is the share gold prefers rejected
    assert info["file_gold_agreement"] == pytest.approx(float(np.mean(ours < 0)))


GOLD_MODULE = """
SEEN = []

def score(prompts, responses):
    SEEN.extend(prompts)
    return [float(r.count("good") - r.count("bad") + 0.01 * len(r)) for r in responses]
"""
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_gold_function_gets_prompts_as_written_with_a_chat_template(
    own_files: dict[str, Path], own_study: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gold: module:function`` is imported from the current folder; with ``chat_template``
    the policy reads templated prompts while the function gets them as the file wrote them; the
    gold scale is the SD of the function on the reference samples."""
    (tmp_path / "my_gold_fn.py").write_text(GOLD_MODULE)
    policy = tmp_path / "policy"
    shutil.copytree(own_files["policy"], policy)
    tok = AutoTokenizer.from_pretrained(policy)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(policy)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_gold_fn", raising=False)
    task = {"prompts": str(own_files["prompts.txt"]), "policy": str(policy),
            "gold": "my_gold_fn:score", "chat_template": True, "max_new_tokens": 6}  # fmt: skip
    cfg = parse_config(own_study(own_files, task=task, rl=None, daa=None))
    run = run_and_report(cfg, tmp_path / "runs", log=lambda *_: None)
    seen = set(sys.modules["my_gold_fn"].SEEN)
    written = set(own_files["prompts.txt"].read_text().splitlines())
    pair_prompts = {r["prompt"] for r in _rows(own_files["pairs.jsonl"])}
    assert seen and seen <= written | pair_prompts  # never the templated text
    ref = _rows(run / "reference.jsonl")
    assert all(
        r["prompt"].startswith("<user>") and r["prompt"].endswith("<assistant>") for r in ref
    )
    mine = [r["response"].count("good") - r["response"].count("bad") + 0.01 * len(r["response"])
            for r in ref]  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert summary["gold_scale"] == pytest.approx(float(np.std(mine)), rel=1e-12)


def test_a_daa_run_with_nan_kl_is_stopped_not_written(
    own_files: dict[str, Path], own_study: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A diverged DAA run (NaN KL at an evaluation) raises naming the stage; nothing NaN is
    written, and the rerun resumes from the finished stages."""
    import proxygap.study.daa as daa
    from proxygap.errors import NonFiniteError
    from proxygap.study import run_study

    real = daa.train_daa

    def diverged(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        result.history[-1]["kl/k1"] = float("nan")
        return result

    monkeypatch.setattr(daa, "train_daa", diverged)
    cfg = parse_config(own_study(own_files, bon=None, rl=None))
    with pytest.raises(NonFiniteError) as err:
        run_study(cfg, tmp_path, log=lambda *_: None)
    assert str(err.value).startswith(
        "stage 'daa:dpo-0.1': the evaluation at step 2 gave non-finite kl/k1: the run diverged"
    )
    run = tmp_path / "own"
    assert not (run / "daa" / "dpo-0.1" / "result.json").exists()
    assert set(json.loads((run / "stages.json").read_text())) == {"preferences", "proxy:rm"}
    monkeypatch.undo()
    run_study(cfg, tmp_path, log=lambda *_: None)
    history = json.loads((run / "daa" / "dpo-0.1" / "result.json").read_text())["history"]
    assert all(np.isfinite(h["kl/k1"]) for h in history)
