"""The shared training loop (proxygap/optimize/loop.py): when it evaluates, what a row holds,
how NaN stops it, and the accumulated optimiser step."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from proxygap.errors import NonFiniteError
from proxygap.optimize.loop import (
    LoopResult,
    Schedule,
    Watchers,
    checked_rewards,
    optimiser_step,
    run_loop,
    window_means,
)


def _fake(total: int, schedule: Schedule, *, nan_at: int | None = None, **kw):
    """A loop whose step ``s`` records ``train/x = s`` and whose evaluation reports the step."""
    calls: list[tuple[str, int]] = []

    def train_step(step: int) -> dict[str, float]:
        calls.append(("train", step))
        if step == nan_at:
            raise NonFiniteError("loss is nan")
        return {"train/x": float(step)}

    def evaluate(step: int):
        calls.append(("eval", step))
        return {"reward/gold": 10.0 * step, "reward/gold_se": 0.0, "kl/k1": 0.0}, [{"text": "t"}]

    result = run_loop(
        schedule=schedule,
        train_step=train_step,
        evaluate=evaluate,
        result=LoopResult(),
        log=lambda _: None,
        **kw,
    )
    return result, calls


def test_every_k_evaluates_at_zero_every_k_and_the_last_step():
    result, calls = _fake(7, Schedule.every(3, total=7, samples_per_step=4))
    assert [r["step"] for r in result.history] == [0, 3, 6, 7]
    assert [r["samples_seen"] for r in result.history] == [0, 12, 24, 28]
    # evaluation at step s happens before training step s: eval 0, train 0, 1, 2, eval 3, ...
    assert calls[:5] == [("eval", 0), ("train", 0), ("train", 1), ("train", 2), ("eval", 3)]
    assert calls[-1] == ("eval", 7) and ("train", 7) not in calls


def test_at_evaluates_only_where_asked_and_after_the_last_step():
    result, _ = _fake(5, Schedule.at([2], total=5, samples_per_step=1))
    assert [r["step"] for r in result.history] == [2, 5]


def test_rows_hold_metrics_then_window_means_then_times():
    result, _ = _fake(4, Schedule.every(2, total=4, samples_per_step=1))
    first, second = result.history[0], result.history[1]
    assert "train/x" not in first  # nothing trained before step 0
    # steps 0 and 1 ran since the first row: train/x = mean(0, 1)
    assert second["train/x"] == 0.5 and second["reward/gold"] == 20.0
    assert list(second)[:3] == ["step", "samples_seen", "reward/gold"]
    assert list(second)[-2:] == ["time/wall", "time/eval"]
    assert [s["step"] for s in result.steps] == [1, 2, 3, 4]
    assert all(s["time/step"] >= 0 for s in result.steps)
    assert [e["step"] for e in result.examples] == [0, 2, 4]


def test_a_non_finite_step_names_the_step_and_keeps_the_run_so_far():
    with pytest.raises(NonFiniteError, match="^step 3: loss is nan$") as info:
        _fake(6, Schedule.every(2, total=6, samples_per_step=1), nan_at=3)
    err = info.value
    assert err.step == 3
    assert [r["step"] for r in err.result.history] == [0, 2]
    assert len(err.result.steps) == 3
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == "step 3: loss is nan" and back.result.steps == err.result.steps


def test_checkpoint_and_watchers_fire_on_schedule():
    saved, seen, steps = [], [], []
    watch = Watchers(
        on_evaluate=[lambda row, result: seen.append((row["step"], len(result.history)))],
        on_step=[lambda row: steps.append(row["train/x"])],
        progress="fake",
    )
    _fake(
        5,
        Schedule.every(5, total=5, samples_per_step=1),
        checkpoint=lambda done, state: saved.append((done, state["step"])),
        checkpoint_every=2,
        watch=watch,
    )
    assert saved == [(2, 2), (4, 4)]
    assert seen == [(0, 1), (5, 2)]
    assert steps == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_window_means_average_each_key_over_the_rows_that_have_it():
    assert window_means([{"a": 1.0, "b": 4.0}, {"a": 3.0}]) == {"a": 2.0, "b": 4.0}
    assert window_means([]) == {}


def test_checked_rewards_refuses_wrong_shapes_and_non_finite_values():
    assert checked_rewards([1, 2], [0.5, 1.5], n=2).dtype == np.float64
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        checked_rewards([1, 2], [1, 2], n=3)
    with pytest.raises(NonFiniteError, match="1 non-finite rewards"):
        checked_rewards([1, 2], [1, float("inf")], n=2)


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, dtype=torch.float64)
    return model, x, y


def test_weighted_passes_give_the_gradient_of_the_whole_batch():
    """Two passes of 2 and 4 rows weighted 2/6 and 4/6 step exactly like one pass over 6."""
    model, x, y = _model_and_data()
    twin = torch.nn.Linear(3, 1, dtype=torch.float64)
    twin.load_state_dict(model.state_dict())

    def mse(m, rows):
        return ((m(x[rows]).squeeze(-1) - y[rows]) ** 2).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = [torch.arange(2), torch.arange(2, 6)]
    norm_parts = optimiser_step(
        opt,
        list(model.parameters()),
        parts,
        lambda rows: (mse(model, rows), len(rows) / 6),
        max_grad_norm=None,
    )
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    norm_whole = optimiser_step(
        opt_twin,
        list(twin.parameters()),
        [torch.arange(6)],
        lambda rows: (mse(twin, rows), 1.0),
        max_grad_norm=None,
    )
    assert norm_parts == pytest.approx(norm_whole, rel=1e-12)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_clipping_scales_the_gradient_to_the_limit_and_reports_the_norm_before():
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = lambda _: (1000.0 * ((model(x).squeeze(-1) - y) ** 2).mean(), 1.0)  # noqa: E731
    norm = optimiser_step(opt, list(model.parameters()), [0], loss, max_grad_norm=0.5)
    assert norm > 0.5
    params = list(model.parameters())
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params, strict=True)])
    assert float(step.norm()) == pytest.approx(0.5, rel=1e-6)  # lr 1: the step is the gradient


def test_a_nan_loss_raises_before_the_optimiser_steps():
    model, x, _ = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="loss is nan"):
        optimiser_step(
            opt,
            list(model.parameters()),
            [0],
            lambda _: (model(x).sum() * float("nan"), 1.0),
            max_grad_norm=1.0,
        )
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
