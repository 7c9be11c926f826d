"""A TRL training resumed from a checkpoint continues proxygap's monitor where it was: the
resumed run's rows equal those of the same training run without a break (GRPO with
``ProxygapCallback``, DPO with ``ProxygapEvalCallback``), its history file holds every step once,
and a checkpoint without the state is said to be one. The state helpers by hand."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from proxygap.integrations import trl_kl
from proxygap.integrations.scoring import text_join
from proxygap.integrations.trl import ProxygapCallback, ensemble_reward, gold_reward
from proxygap.integrations.trl_eval import ProxygapEvalCallback
from proxygap.integrations.trl_resume import STATE_KEY, cut_history, saved, store
from proxygap.monitor import Monitor
from proxygap.tasks import get_task

from .trainers import dpo_trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASK = get_task("reviews")
COMPARED = ("reward/proxy", "reward/gold", "kl/k1", "signal/unlikely_rate", "monitor/score")


def _quiet() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _grpo(out, member_paths, tok, resume=None):
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    _quiet()
    join = text_join(" ", strip_prefix=f"{tok.bos_token} ")
    data = datasets.Dataset.from_dict(
        {"prompt": [f"{tok.bos_token} {p}" for p in TASK.prompts(16, seed=0)]}
    )
    cb = ProxygapCallback(monitor=Monitor())
    cfg = GRPOConfig(
        output_dir=str(out), use_cpu=True, report_to="none", per_device_train_batch_size=4,
        num_generations=2, max_completion_length=12, max_steps=4, logging_steps=1,
        save_strategy="steps", save_steps=2, disable_tqdm=True, beta=0.04, learning_rate=1e-2,
        seed=0, reward_weights=[1.0, 0.0], model_init_kwargs={"dtype": torch.float32},
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=str(TASK.policy_path),
        reward_funcs=[ensemble_reward(member_paths, join=join), gold_reward(TASK.gold, join=join)],
        args=cfg, train_dataset=data, processing_class=tok, callbacks=[cb],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return SimpleNamespace(trainer=trainer, cb=cb, out=out)


def _rows(cb, steps):
    return [{k: r[k] for k in COMPARED if k in r} for r in cb.rows if r["step"] in steps]


def _history_steps(out):
    lines = (out / "proxygap" / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def grpo_whole(tmp_path_factory, member_paths, tok):
    mp = pytest.MonkeyPatch()
    mp.setattr(trl_kl, "UNLIKELY_CALIBRATION", 8)  # calibrated after 2 steps of 4 completions
    try:
        yield _grpo(tmp_path_factory.mktemp("whole"), member_paths, tok)
    finally:
        mp.undo()


def test_grpo_resume_continues_the_monitor(grpo_whole, member_paths, tok, tmp_path, monkeypatch):
    monkeypatch.setattr(trl_kl, "UNLIKELY_CALIBRATION", 8)
    whole = grpo_whole
    assert whole.cb.probe.unlikely_cutoff is not None
    kept = json.loads((whole.out / "checkpoint-2" / "trainer_state.json").read_text())
    entry = kept["stateful_callbacks"][STATE_KEY]["ProxygapCallback"]
    assert entry["probe"]["unlikely_cutoff"] == pytest.approx(whole.cb.probe.unlikely_cutoff)
    assert entry["monitor"]["first"]["step"] == 1.0

    out = tmp_path / "resumed"
    shutil.copytree(whole.out, out)  # the interrupted run's folder: checkpoints and history
    resumed = _grpo(out, member_paths, tok, resume=str(out / "checkpoint-2"))
    assert resumed.cb.monitor.first == whole.cb.monitor.first  # the step-1 baseline, kept
    assert resumed.cb.probe.unlikely_cutoff == pytest.approx(whole.cb.probe.unlikely_cutoff)
    assert [r["step"] for r in resumed.cb.rows] == [3.0, 4.0]
    after, before = _rows(resumed.cb, {3.0, 4.0}), _rows(whole.cb, {3.0, 4.0})
    assert "signal/unlikely_rate" in after[0]
    for a, b in zip(after, before, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert _history_steps(out) == [1, 2, 3, 4]  # steps 3 and 4 once, not twice


def test_grpo_resume_without_state_says_so(grpo_whole, member_paths, tok, tmp_path, caplog):
    out = tmp_path / "old"
    shutil.copytree(grpo_whole.out, out)
    path = out / "checkpoint-2" / "trainer_state.json"
    kept = json.loads(path.read_text())
    del kept["stateful_callbacks"][STATE_KEY]  # as a checkpoint from before the state was kept
    path.write_text(json.dumps(kept))
    with caplog.at_level(logging.WARNING):
        resumed = _grpo(out, member_paths, tok, resume=str(path.parent))
    assert "without proxygap's state" in caplog.text
    assert resumed.cb.monitor.first["step"] == 3.0  # the baseline is the first row after it
    assert resumed.cb.monitor.first != grpo_whole.cb.monitor.first


def _dpo(out, member_paths, tok, resume=None):
    import datasets

    _quiet()
    join = text_join(TASK.separator, strip_prefix=f"{tok.bos_token} ")
    pairs = datasets.Dataset.from_dict(
        {
            "prompt": [f"{tok.bos_token} {p}" for p in TASK.prompts(8, seed=0)],
            "chosen": [" a moving and great film ."] * 8,
            "rejected": [" a dull film ."] * 8,
        }
    )
    cb = ProxygapEvalCallback(
        [f"{tok.bos_token} {p}" for p in TASK.prompts(4, seed=3)],
        proxy=ensemble_reward(member_paths, join=join), gold=gold_reward(TASK.gold, join=join),
        every=1, n_per_prompt=2, max_new_tokens=10, seed=7, monitor=Monitor(),
    )  # fmt: skip
    trainer = dpo_trainer(out, pairs, tok, [cb], save_strategy="steps", save_steps=1)
    trainer.train(resume_from_checkpoint=resume)
    return SimpleNamespace(trainer=trainer, cb=cb, out=out)


def test_dpo_eval_callback_resume_continues_the_monitor(member_paths, tok, tmp_path):
    whole = _dpo(tmp_path / "whole", member_paths, tok)
    assert [r["step"] for r in whole.cb.rows] == [0.0, 1.0, 2.0]
    out = tmp_path / "resumed"
    shutil.copytree(whole.out, out)
    resumed = _dpo(out, member_paths, tok, resume=str(out / "checkpoint-1"))
    assert resumed.cb.unlikely_cutoff == pytest.approx(whole.cb.unlikely_cutoff)
    assert resumed.cb.monitor.first == whole.cb.monitor.first  # the step-0 baseline
    assert [r["step"] for r in resumed.cb.rows] == [2.0]
    (a,), (b,) = _rows(resumed.cb, {2.0}), _rows(whole.cb, {2.0})
    assert a.keys() == b.keys() and "signal/unlikely_rate" in a
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert _history_steps(out) == [0, 1, 2]


def test_state_helpers_by_hand(tmp_path):
    state = SimpleNamespace(stateful_callbacks={"TrainerControl": {"args": {}}})
    assert saved(state, "X") is None
    store(state, "X", {"a": 1})
    store(state, "Y", {"b": None})
    assert state.stateful_callbacks["TrainerControl"] == {"args": {}}  # others' entries kept
    assert saved(state, "X") == {"a": 1} and saved(state, "Y") == {"b": None}
    assert saved(SimpleNamespace(stateful_callbacks=None), "X") is None
    # a copy, in plain JSON values: numpy numbers converted, NaN kept, later changes not seen
    first = {"d": np.float32(0.5), "nan": float("nan"), "v": np.arange(2)}
    store(state, "M", {"first": first})
    first["d"] = 9.0
    kept = saved(state, "M")["first"]
    assert kept["d"] == 0.5 and type(kept["d"]) is float and math.isnan(kept["nan"])
    assert kept["v"] == [0, 1]
    with pytest.raises(TypeError, match="object"):
        store(state, "bad", {"x": object()})
    path = tmp_path / "history.jsonl"
    assert cut_history(path, 3) == 0 and not path.exists()  # nothing to cut
    path.write_text("".join(json.dumps({"step": s, "v": s * 10}) + "\n" for s in (1, 2, 3, 4, 5)))
    assert cut_history(path, 3) == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"step": s, "v": s * 10} for s in (1, 2, 3)
    ]
    assert cut_history(path, 3) == 0  # already cut: the file is left as it is
    # a row cut short when the training stopped (and a non-object line) is dropped, not fatal
    path.write_text(path.read_text() + '[1]\n{"step": 2, "v"')
    assert cut_history(path, 3) == 2
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
