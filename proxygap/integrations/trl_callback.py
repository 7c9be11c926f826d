"""``ProxygapCallback``: proxygap's measurements inside a TRL (or any ``transformers``) trainer.

``GRPOTrainer(..., callbacks=[ProxygapCallback()])`` is the whole change to a training script
(with ``reward_funcs`` from :mod:`proxygap.integrations.trl_rewards` or wrapped by
``monitor_reward``). After every optimiser step the callback reads what the reward functions
scored since the last step and the KL of the step's batch, builds one row with the keys of the
package's evaluation rows (``reward/proxy``, ``reward/gold``, ``signal/ensemble_std``,
``kl/k1``, ``kl/k3``, ``d``, ``length/mean``, ``diversity/distinct2`` ...; docs/methods.md §6),
feeds it to the monitor, and at each logging step adds the window's means as ``proxygap/<key>``
to the trainer's own log call, so they are in ``trainer.state.log_history`` and reach every
``report_to`` tracker. ``<output_dir>/proxygap/history.jsonl`` keeps the same rows for
:func:`proxygap.runs.load_run`.

How it reaches the trainer: TRL and ``transformers`` hand callbacks no trainer, so the callback
finds it once, in ``on_init_end``, as the ``Trainer`` that is calling it (the caller's frame),
or takes it from :meth:`ProxygapCallback.attach`. It then wraps methods of that one instance:
``log`` (documented as the method to override to add to the logs) and, on GRPO and RLOO, the
loss and generation methods whose log-probs give the KL.

KL to the reference (:class:`~proxygap.integrations.trl_kl.KLProbe`): from the log-probs the
trainer computes for its loss (GRPO with ``beta > 0``: no extra forward pass), else with the
trainer's ``ref_model`` (RLOO with ``beta > 0``) or a ``ref_model`` given to the callback. With
neither (GRPO's default ``beta = 0``) no ``kl/*`` is logged and
:attr:`ProxygapCallback.kl_status` says why (also logged once as a warning).

Several processes (accelerate, DDP): each process scores its own share of the batch; the rows
are gathered and merged after every step (:func:`merge_rows`), so every process feeds the
monitor the same row and takes the same alarm decision; only the main process writes the
history file.

A training resumed from a checkpoint continues the monitor and the KL probe's cutoff as the
checkpoint kept them (:mod:`~proxygap.integrations.trl_resume`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from proxygap.integrations.scoring import batch_signals, default_monitor
from proxygap.integrations.trl_kl import KLProbe
from proxygap.integrations.trl_resume import (
    cut_history,
    monitor_state,
    restore_monitor,
    saved,
    store,
)
from proxygap.integrations.trl_rewards import Scored, take
from proxygap.runs import TRL_KEYS

__all__ = ["ProxygapCallback", "calling_trainer", "gather_objects", "merge_rows"]

logger = logging.getLogger(__name__)
PREFIX = "proxygap/"


def _is_train_log(logs: dict[str, Any]) -> bool:
    """A training log row (not evaluation, not the end-of-training summary)."""
    return not any(k.startswith("eval_") or k == "train_runtime" for k in logs)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order, on every process (``torch.distributed``'s
    ``all_gather_object``; ``[obj]`` with one process or none initialised)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def merge_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-process rows as one: the mean over the rows that have a key (the global mean when
    the processes scored equal shares, as TRL's per-device batches are), ``kl/clamped`` summed."""
    out: dict[str, float] = {}
    for key in sorted(set().union(*rows)):
        vals = [r[key] for r in rows if key in r]
        out[key] = float(sum(vals)) if key == "kl/clamped" else float(np.mean(vals))
    return out


def calling_trainer(callback: TrainerCallback) -> Any:
    """The ``Trainer`` up the call stack whose callbacks include ``callback``, or None (TRL and
    ``transformers`` pass callbacks no trainer)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(14):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        handler = getattr(owner, "callback_handler", None)
        if isinstance(owner, Trainer) and callback in getattr(handler, "callbacks", ()):
            return owner
        frame = frame.f_back  # type: ignore[assignment]
    return None


class ProxygapCallback(TrainerCallback):
    """Logs ``proxygap/*`` metrics into the trainer's log and acts on the monitor's alarm.

    Args:
        monitor: an object with ``update(row) -> dict`` (``monitor/score``, ``monitor/alarm``,
            ...); ``"auto"`` uses :mod:`proxygap.monitor` when it is available; None: no
            monitor.
        stop_on_alarm: stop training (``control.should_training_stop``) at the first alarm.
        save_on_alarm: save a checkpoint at the first alarm (``control.should_save``).
        kl: measure KL to the reference when the trainer exposes log-probs.
        kl_every: where the KL costs forward passes (RLOO, or a ``ref_model`` given here),
            measure it on every ``kl_every``-th generated batch.
        ref_model: a reference model for the KL when the trainer has none (GRPO with
            ``beta = 0``): the initial policy, on the trainer's device.
        history: write ``<output_dir>/proxygap/history.jsonl``.
    """

    def __init__(
        self,
        *,
        monitor: Any = "auto",
        stop_on_alarm: bool = False,
        save_on_alarm: bool = False,
        kl: bool = True,
        kl_every: int = 1,
        ref_model: torch.nn.Module | None = None,
        history: bool = True,
    ) -> None:
        self.probe = KLProbe(every=kl_every, ref_model=ref_model) if kl else None
        self.monitor = (
            default_monitor() if isinstance(monitor, str) and monitor == "auto" else monitor
        )
        if self.monitor is not None and not callable(getattr(self.monitor, "update", None)):
            raise TypeError("monitor must have an update(row) -> dict method")
        self.stop_on_alarm, self.save_on_alarm = stop_on_alarm, save_on_alarm
        self.history = history
        self.trainer: Any = None
        self.rows: list[dict[str, float]] = []  # every step's row, for inspection
        self.alarm_step: int | None = None
        self._window: list[dict[str, float]] = []
        self._warned: set[str] = set()

    # ------------------------------------------------------------ attaching
    def attach(self, trainer: Any) -> ProxygapCallback:
        """Bind to ``trainer`` (done automatically in ``on_init_end``); idempotent."""
        if self.trainer is trainer:
            return self
        self.trainer = trainer
        original_log = trainer.log

        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self._window and _is_train_log(logs):
                logs.update(self._flush())
            return original_log(logs, *args, **kwargs)

        trainer.log = log
        if self.probe is not None:
            self.probe.attach(trainer)
        return self

    @property
    def kl_status(self) -> str:
        """Whether KL is measured, and if not, why."""
        return self.probe.status if self.probe is not None else "off (kl=False)"

    def _find_trainer(self) -> None:
        trainer = calling_trainer(self)
        if trainer is not None:
            self.attach(trainer)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("proxygap: %s", message)

    # ------------------------------------------------------------ rows
    def _row(self, items: list[Scored], step: int) -> dict[str, float]:
        """One row from the batches scored since the last step and their KL."""
        weights = self._weights()
        proxy: np.ndarray | None = None
        by_name: dict[str, list[Scored]] = {}
        for item in items:
            by_name.setdefault(item.name, []).append(item)
        gold: np.ndarray | None = None
        members: np.ndarray | None = None
        lengths: np.ndarray | None = None
        completions: list[str] = []
        for name, group in by_name.items():
            rewards = np.concatenate([g.rewards for g in group])
            if group[0].role == "gold":
                gold = rewards
                continue
            w = weights.get(name, 1.0)
            proxy = w * rewards if proxy is None else proxy + w * rewards
            if not completions:
                completions = [c for g in group for c in g.completions]
                if all(g.lengths is not None for g in group):
                    lengths = np.concatenate([g.lengths for g in group if g.lengths is not None])
            if members is None and all(g.members is not None for g in group):
                members = np.concatenate([g.members for g in group if g.members is not None])
        if not completions and items:
            completions = [c for g in next(iter(by_name.values())) for c in g.completions]
        row = batch_signals(
            proxy=proxy, completions=completions, members=members, gold=gold, lengths=lengths
        )
        kl = self.probe.pop() if self.probe is not None else {}
        if kl:
            row.update(kl)
            row["d"] = math.sqrt(max(row["kl/k1"], 0.0))
        row = self._synchronised(row)
        if row:
            row["step"] = float(step)
        return row

    def _weights(self) -> dict[str, float]:
        """TRL's ``reward_weights`` by reward-function name (1 for every name without one)."""
        trainer = self.trainer
        names = getattr(trainer, "reward_func_names", None)
        weights = getattr(trainer, "reward_weights", None)
        if names is None or weights is None:
            return {}
        return {n: float(w) for n, w in zip(names, weights.tolist(), strict=False)}

    def _synchronised(self, row: dict[str, float]) -> dict[str, float]:
        """With several processes, every process's row gathered (each process scored its own
        share of the batch) and merged: per key the mean over the processes that have it
        (``kl/clamped``: the sum), so every process feeds the monitor the same row and takes
        the same alarm decision. Every process takes part, also with an empty row."""
        rows = gather_objects(row)
        if len(rows) == 1:
            return row
        return merge_rows(rows)

    def _flush(self) -> dict[str, float]:
        """The window's rows as ``proxygap/*`` log entries: means, except the monitor's keys
        (the last value; ``monitor/alarm``: whether any step alarmed)."""
        window, self._window = self._window, []
        out: dict[str, float] = {}
        for key in sorted(set().union(*window) - {"step"}):
            vals = [r[key] for r in window if key in r and not math.isnan(r[key])]
            if not vals:
                continue
            if key == "monitor/alarm":
                out[PREFIX + key] = max(vals)
            elif key.startswith("monitor/") or key == "kl/clamped":
                out[PREFIX + key] = vals[-1] if key != "kl/clamped" else sum(vals)
            else:
                out[PREFIX + key] = float(np.mean(vals))
        return out

    # ------------------------------------------------------------ events
    def on_init_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
        if self.trainer is None:
            self._find_trainer()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
        if self.trainer is None:
            self._find_trainer()
        if self.trainer is None:
            self._warn_once(
                "could not find the trainer; call ProxygapCallback.attach(trainer) before "
                "train(): proxygap/* metrics reach log_history but not the trackers"
            )
        self._check_gold_weights()
        take(state)  # drop anything scored before training (e.g. a sanity evaluation)
        if self.probe is not None and state.global_step == 0:
            self.probe.restart()  # a fresh training calibrates the unlikely-sample cutoff anew
        if state.global_step > 0:
            self._resume(state)
        path = self._history_path(args)
        if path is not None and state.is_world_process_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:
                path.write_text("")
            else:
                cut_history(path, state.global_step)

    def _resume(self, state: TrainerState) -> None:
        """A resumed training: the monitor's baseline, the first alarm and the KL probe's
        cutoff as the checkpoint kept them (:mod:`~proxygap.integrations.trl_resume`)."""
        data = saved(state, type(self).__name__)
        if data is None:
            self._warn_once(
                f"resumed at step {state.global_step} from a checkpoint without proxygap's "
                "state: the monitor takes the first row after the resume as its baseline"
            )
            return
        restore_monitor(self.monitor, data.get("monitor"))
        step = data.get("alarm_step")
        self.alarm_step = None if step is None else int(step)
        if self.probe is not None and data.get("probe") is not None:
            self.probe.load_state_dict(data["probe"])

    def _keep(self, state: TrainerState) -> None:
        """This training's state, for the next checkpoint (every process keeps the same
        monitor state; the probe's cutoff kept is the main process's)."""
        store(state, type(self).__name__, {
            "monitor": monitor_state(self.monitor), "alarm_step": self.alarm_step,
            "probe": self.probe.state_dict() if self.probe is not None else None,
        })  # fmt: skip

    def _check_gold_weights(self) -> None:
        trainer = self.trainer
        funcs = getattr(trainer, "reward_funcs", None) or []
        weights = getattr(trainer, "reward_weights", None)
        for i, f in enumerate(funcs):
            if getattr(f, "role", getattr(f, "proxygap_role", None)) != "gold":
                continue
            w = float(weights[i]) if weights is not None and i < len(weights) else 1.0
            if w != 0.0:
                self._warn_once(
                    f"gold reward {getattr(f, '__name__', i)!r} has weight {w:g}: the policy is "
                    "trained on gold; give it weight 0 in reward_weights to only log it"
                )

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> TrainerControl:  # fmt: skip
        row = self._row(take(state), state.global_step)
        if not row:
            return control
        # ---- the monitor: one row per optimiser step, the keys of the package's evaluations
        if self.monitor is not None:
            row.update(self.monitor.update(row))
        self.rows.append(row)
        self._window.append(row)
        if row.get("monitor/alarm", 0.0) >= 1.0:
            first = self.alarm_step is None
            if first:
                self.alarm_step = state.global_step
                control.should_log = True  # the alarm step's row goes to the log now
            if self.stop_on_alarm:
                control.should_training_stop = True
            if self.save_on_alarm and first:
                control.should_save = True
        self._keep(state)
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
        take(state)  # batches scored during evaluation are not training batches

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:  # fmt: skip
        if logs is None:
            return
        if self.trainer is None and self._window and _is_train_log(logs):
            extra = self._flush()  # fallback without the trainer: log_history only
            logs.update(extra)
            if state.log_history:
                state.log_history[-1].update(extra)
        mine = {k: v for k, v in logs.items() if k.startswith(PREFIX)}
        path = self._history_path(args)
        if mine and path is not None and state.is_world_process_zero:
            theirs = {k: logs[k] for k in TRL_KEYS if k in logs}  # TRL's, as history_from_log
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **mine, **theirs}) + "\n")

    def _history_path(self, args: TrainingArguments) -> Path | None:
        out = getattr(args, "output_dir", None)
        return Path(out) / "proxygap" / "history.jsonl" if self.history and out else None
