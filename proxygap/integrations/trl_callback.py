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
or takes it from :meth:`ProxygapCallback.attach`. It then wraps two methods of that one
instance: ``log`` (documented as the method to override to add to the logs) and, on GRPO and
RLOO, ``_generate_and_score_completions`` (to read the batch's token masks and log-probs).

KL to the reference (Schulman's k1, k2 and a k3 whose ``exp`` is clamped, docs/methods.md §2):
from the reference log-probs the trainer computed (GRPO with ``beta > 0``) or with the trainer's
``ref_model`` (RLOO with ``beta > 0``) or a ``ref_model`` given to the callback, and the
policy's log-probs of the sampled tokens (the trainer's when it kept them, else one forward pass
without gradients). With none of these (GRPO's default ``beta = 0``) no ``kl/*`` is logged and
:attr:`ProxygapCallback.kl_status` says why (also logged once as a warning).
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

from proxygap.estimators.kl import K3_CLAMP, sequence_kl
from proxygap.integrations.scoring import batch_signals, default_monitor
from proxygap.integrations.trl_rewards import Scored, take
from proxygap.runs import TRL_KEYS

__all__ = ["ProxygapCallback", "kl_metrics"]

logger = logging.getLogger(__name__)
PREFIX = "proxygap/"


def kl_metrics(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, clamp: float = K3_CLAMP
) -> dict[str, float]:
    """``kl/k1``, ``kl/k2``, ``kl/k3`` (means over the batch of the sequence sums; k3 with the
    log ratio clamped at ``-clamp``), ``kl/clamped`` and ``signal/entropy`` (``-sum log pi /
    tokens``, the policy's Monte-Carlo entropy per token) from ``(B, T)`` log-probs of the
    sampled tokens under the policy and the reference and the response mask."""
    mask = mask.float()
    _, metrics = sequence_kl(logp.float() - ref_logp.float(), mask, clamp=clamp)
    tokens = float(mask.sum())
    if tokens > 0:
        metrics["signal/entropy"] = (
            float(-(torch.where(mask > 0, logp.float(), 0.0)).sum()) / tokens
        )
    return metrics


def _is_train_log(logs: dict[str, Any]) -> bool:
    """A training log row (not evaluation, not the end-of-training summary)."""
    return not any(k.startswith("eval_") or k == "train_runtime" for k in logs)


class ProxygapCallback(TrainerCallback):
    """Logs ``proxygap/*`` metrics into the trainer's log and acts on the monitor's alarm.

    Args:
        monitor: an object with ``update(row) -> dict`` (``monitor/score``, ``monitor/alarm``,
            ...); ``"auto"`` uses :mod:`proxygap.monitor` when it is available; None: no
            monitor.
        stop_on_alarm: stop training (``control.should_training_stop``) at the first alarm.
        save_on_alarm: save a checkpoint at the first alarm (``control.should_save``).
        kl: measure KL to the reference when the trainer exposes log-probs.
        kl_every: measure it on every ``kl_every``-th generated batch (each measurement may cost
            forward passes; see the module docstring).
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
        if kl_every < 1:
            raise ValueError(f"kl_every must be >= 1, got {kl_every}")
        self.monitor = (
            default_monitor() if isinstance(monitor, str) and monitor == "auto" else monitor
        )
        if self.monitor is not None and not callable(getattr(self.monitor, "update", None)):
            raise TypeError("monitor must have an update(row) -> dict method")
        self.stop_on_alarm, self.save_on_alarm = stop_on_alarm, save_on_alarm
        self.kl, self.kl_every, self.ref_model, self.history = kl, kl_every, ref_model, history
        self.trainer: Any = None
        self.rows: list[dict[str, float]] = []  # every step's row, for inspection
        self.alarm_step: int | None = None
        self.kl_status = "no batch seen yet"
        self._window: list[dict[str, float]] = []
        self._kl_pending: list[dict[str, float]] = []
        self._generations = 0
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
        generate = getattr(trainer, "_generate_and_score_completions", None)
        if self.kl and generate is not None:

            def generate_and_measure(*args: Any, **kwargs: Any) -> Any:
                out = generate(*args, **kwargs)
                if trainer.model.training:
                    self._generations += 1
                    if (self._generations - 1) % self.kl_every == 0:
                        kl = self._measure_kl(out)
                        if kl:
                            self._kl_pending.append(kl)
                return out

            trainer._generate_and_score_completions = generate_and_measure
        elif self.kl:
            self.kl_status = f"{type(trainer).__name__} generates no batches the callback can read"
        if self.ref_model is not None:
            self.ref_model.to(trainer.accelerator.device).eval()
        return self

    def _find_trainer(self) -> None:
        """The ``Trainer`` up the stack whose callbacks include this one."""
        from transformers import Trainer

        frame = sys._getframe(1)
        for _ in range(12):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            handler = getattr(owner, "callback_handler", None)
            if isinstance(owner, Trainer) and self in getattr(handler, "callbacks", ()):
                self.attach(owner)
                return
            frame = frame.f_back  # type: ignore[assignment]

    # ------------------------------------------------------------ KL
    def _measure_kl(self, out: dict[str, Any]) -> dict[str, float] | None:
        trainer = self.trainer
        mask = out.get("completion_mask")
        if mask is None:
            self.kl_status = "the trainer's batch has no completion mask"
            return None
        ref: Any = out.get("ref_per_token_logps")
        logp: Any = out.get("old_per_token_logps")
        if logp is None:
            logp = out.get("sampling_per_token_logps")
        need_ref = ref is None
        ref_model = (
            self.ref_model if self.ref_model is not None else getattr(trainer, "ref_model", None)
        )
        if need_ref and ref_model is None:
            self.kl_status = (
                "no KL: the trainer computes no reference log-probs (beta = 0) and has no "
                "ref_model; set beta > 0 or pass ProxygapCallback(ref_model=...)"
            )
            self._warn_once(self.kl_status)
            return None
        per_token: Any = getattr(trainer, "_get_per_token_logps_and_entropies", None)
        if (need_ref or logp is None) and per_token is None:
            self.kl_status = f"no KL: {type(trainer).__name__} has no per-token log-prob method"
            self._warn_once(self.kl_status)
            return None
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attn = torch.cat([out["prompt_mask"], mask], dim=1)
        width = out["completion_ids"].shape[1]

        def logps(model: Any) -> torch.Tensor:
            with torch.no_grad():
                lp, _, _ = per_token(model, ids, attn, width, batch_size=ids.shape[0])
            return lp

        if logp is None:
            logp = logps(trainer.model)
        if need_ref:
            ref = logps(ref_model)
        self.kl_status = "measured"
        return kl_metrics(logp, ref, mask)

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
        if self._kl_pending:
            keys = set().union(*self._kl_pending)
            for key in keys:
                vals = [m[key] for m in self._kl_pending if key in m]
                row[key] = float(sum(vals) if key == "kl/clamped" else np.mean(vals))
            row["d"] = math.sqrt(max(row["kl/k1"], 0.0))
            self._kl_pending = []
        if row:
            row["step"] = float(step)
        return self._synchronised(row)

    def _weights(self) -> dict[str, float]:
        """TRL's ``reward_weights`` by reward-function name (1 for every name without one)."""
        trainer = self.trainer
        names = getattr(trainer, "reward_func_names", None)
        weights = getattr(trainer, "reward_weights", None)
        if names is None or weights is None:
            return {}
        return {n: float(w) for n, w in zip(names, weights.tolist(), strict=False)}

    def _synchronised(self, row: dict[str, float]) -> dict[str, float]:
        """The row averaged over processes, so every process sees the same monitor decision
        (untested on more than one process)."""
        accelerator = getattr(self.trainer, "accelerator", None)
        if not row or accelerator is None or accelerator.num_processes == 1:
            return row
        keys = sorted(row)
        values = torch.tensor([row[k] for k in keys], device=accelerator.device)
        mean = accelerator.reduce(values, reduction="mean").tolist()
        return dict(zip(keys, mean, strict=True))

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
        path = self._history_path(args)
        if path is not None and state.is_world_process_zero and state.global_step == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

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
