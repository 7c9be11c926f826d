"""Trackers: TensorBoard event files written through the loop's watchers and read back with the
metric names of the run's history and steps; W&B and trackio through fake modules holding their
documented calls; a missing package named with its install command, before anything runs."""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from proxygap.config import ConfigError, parse_config
from proxygap.optimize.loop import LoopResult, Schedule, Watchers, run_loop
from proxygap.store import trackers
from proxygap.store.run import result_config
from proxygap.store.trackers import TensorBoardTracker, TrackerError, check_trackers, open_trackers


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_events_read_back(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    t = TensorBoardTracker(tmp_path / "tb")
    t.on_evaluate({"step": 0.0, "reward/gold": 0.0, "kl/k1": 0.0})
    t.on_step({"step": 1.0, "train/loss": 0.5, "kl/beta": 0.1})
    t.on_step({"step": 2.0, "train/loss": 0.25, "kl/beta": 0.1})
    # the evaluation row repeats the steps' mean under train/loss: not logged a second time
    t.on_evaluate({"step": 2.0, "reward/gold": 0.5, "train/loss": 0.375, "reward/proxy": math.nan})
    t.close()
    t.close()  # closing twice is harmless
    got = _scalars(tmp_path / "tb")
    assert set(got) == {"reward/gold", "kl/k1", "train/loss", "kl/beta"}  # no NaN proxy
    assert got["reward/gold"] == [(0, 0.0), (2, 0.5)]
    assert got["kl/k1"] == [(0, 0.0)]
    assert got["train/loss"] == [(1, 0.5), (2, 0.25)]  # exact in float32
    assert got["kl/beta"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.1))]


def test_a_loop_logs_the_names_of_its_history_and_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    (tb,) = open_trackers(["tensorboard"], folder=tmp_path, project="study", run="rl/kl-0")
    result = LoopResult()
    run_loop(
        schedule=Schedule.every(2, total=4, samples_per_step=8),
        train_step=lambda step: {"train/loss": 1.0 / (step + 1), "kl/beta": 0.05},
        evaluate=lambda step: ({"reward/gold": 0.1 * step, "d": 0.2 * step}, []),
        result=result,
        log=lambda *_: None,
        describe=str,
        watch=Watchers(on_evaluate=[tb.on_evaluate], on_step=[tb.on_step], on_close=[tb.close]),
    )
    got = _scalars(tmp_path / "tensorboard" / "rl" / "kl-0")
    step_names = {k for row in result.steps for k in row} - {"step"}
    eval_names = {k for row in result.history for k in row} - {"step"} - step_names
    assert set(got) == step_names | eval_names  # every name of history.json and steps.jsonl
    assert [s for s, _ in got["reward/gold"]] == [0, 2, 4]
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4]
    assert got["d"][-1] == (4, pytest.approx(0.8))
    assert tb.writer is None  # the loop closed it


def _fake(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def test_wandb_and_trackio_receive_the_same_rows(tmp_path: Path, monkeypatch: Any) -> None:
    calls: list[tuple[str, Any]] = []

    class Run:
        def log(self, metrics: dict[str, float], step: int) -> None:
            calls.append(("wandb.log", (metrics, step)))

        def finish(self) -> None:
            calls.append(("wandb.finish", None))

    def wandb_init(**kw: Any) -> Run:
        calls.append(("wandb.init", kw))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", _fake("wandb", init=wandb_init))
    trackio = _fake(
        "trackio",
        init=lambda **kw: calls.append(("trackio.init", kw)),
        log=lambda metrics, step: calls.append(("trackio.log", (metrics, step))),
        finish=lambda: calls.append(("trackio.finish", None)),
    )
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    opened = open_trackers(["wandb", "trackio"], folder=tmp_path, project="demo",
                           run="daa/dpo-0.1", config={"beta": 0.1})  # fmt: skip
    for t in opened:
        t.on_step({"step": 1.0, "train/loss": 0.5})
        t.on_evaluate({"step": 1.0, "reward/gold": 0.2, "train/loss": 0.5})
        t.close()
    init = dict(calls)["wandb.init"]
    assert init["project"] == "demo" and init["name"] == "daa/dpo-0.1"
    assert init["config"] == {"beta": 0.1} and init["dir"] == str(tmp_path)
    assert dict(calls)["trackio.init"] == {"project": "demo", "name": "daa/dpo-0.1",
                                           "config": {"beta": 0.1}}  # fmt: skip
    for who in ("wandb", "trackio"):
        logged = [args for name, args in calls if name == f"{who}.log"]
        assert logged == [({"train/loss": 0.5}, 1), ({"reward/gold": 0.2}, 1)]
        assert [name for name, _ in calls].count(f"{who}.finish") == 1


def test_a_missing_package_is_named_with_its_install_command(monkeypatch: Any) -> None:
    monkeypatch.setitem(trackers._PACKAGE, "wandb", "proxygap_no_such_package")
    with pytest.raises(TrackerError, match=r"pip install 'proxygap\[wandb\]'"):
        check_trackers(["wandb"])
    with pytest.raises(ConfigError) as err:
        parse_config({"name": "x", "proxies": [{"name": "rm"}],
                      "runtime": {"report_to": ["wandb"]}})  # fmt: skip
    assert "runtime.report_to" in str(err.value) and "proxygap[wandb]" in str(err.value)
    with pytest.raises(ConfigError, match="runtime.report_to.0"):
        parse_config(
            {"name": "x", "proxies": [{"name": "rm"}], "runtime": {"report_to": ["mlflow"]}}
        )


def test_trackers_do_not_change_a_run_folder_digest() -> None:
    config = {"name": "x", "runtime": {"report_to": ["tensorboard"], "device": "cpu"}}
    assert result_config(config) == {"name": "x", "runtime": {"device": "cpu"}}


class _Stop(Exception):
    """Stands for a kill."""


def test_a_resumed_run_logs_each_step_once(tmp_path: Path) -> None:
    """A loop stopped after step 3 (its checkpoint is at step 2, before the evaluation there)
    and continued in a fresh process-like setting: TensorBoard reads back one point per step,
    the continued run's values from step 2 on, and the stopped run's before."""
    pytest.importorskip("tensorboard")
    import copy

    schedule = Schedule.every(2, total=4, samples_per_step=8)

    def loop(offset: float, stop_at: int | None, resume: dict | None, saved: list) -> None:
        (tb,) = open_trackers(["tensorboard"], folder=tmp_path, project="s", run="rl/a")

        def step(s: int) -> dict[str, float]:
            if s + 1 == stop_at:
                raise _Stop
            return {"train/loss": offset + s}

        run_loop(
            schedule=schedule, train_step=step, result=LoopResult(), log=lambda *_: None,
            describe=str,
            evaluate=lambda s: ({"reward/gold": offset + 0.1 * s}, []),
            checkpoint=lambda s, state: saved.append(copy.deepcopy(state)),
            watch=Watchers(on_evaluate=[tb.on_evaluate], on_step=[tb.on_step],
                           on_close=[tb.close], on_resume=[tb.on_resume]),
            resume=resume,
        )  # fmt: skip

    saved: list[dict] = []
    with pytest.raises(_Stop):
        loop(0.0, 4, None, saved)  # logged gold at 0 and 2, losses at steps 1-3
    state = saved[-1]
    assert state["step"] == 2
    loop(100.0, None, state, [])  # continued: other values, to tell the two runs apart
    got = _scalars(tmp_path / "tensorboard" / "rl" / "a")
    # step 2's loss was kept in the checkpoint (logged again as it was); 3 and 4 are new
    assert got["train/loss"] == [(1, 0.0), (2, 1.0), (3, 102.0), (4, 103.0)]
    assert got["reward/gold"] == [(0, 0.0), (2, pytest.approx(100.2)), (4, pytest.approx(100.4))]


def test_wandb_keeps_one_run_id_per_run_folder(tmp_path: Path, monkeypatch: Any) -> None:
    inits: list[dict] = []

    class Run:
        def finish(self) -> None:
            pass

    def wandb_init(**kw: Any) -> Run:
        inits.append(kw)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", _fake("wandb", init=wandb_init))
    for folder, run in [("a", "rl/x"), ("a", "rl/x"), ("a", "rl/y"), ("b", "rl/x")]:
        (t,) = open_trackers(["wandb"], folder=tmp_path / folder, project="p", run=run)
        t.close()
    ids = [kw["id"] for kw in inits]
    assert ids[0] == ids[1] and len(set(ids)) == 3  # continued, another run, another folder
    assert all(kw["resume"] == "allow" for kw in inits)
