"""``ProxygapEvalCallback``: gold, proxy, KL and the monitor on samples the policy generates at
evaluation points, for trainers that generate nothing while training (TRL's ``DPOTrainer``, and
any ``transformers`` ``Trainer``: SFT, KTO, ORPO ...).

    trainer = DPOTrainer(
        model=policy, train_dataset=pairs, args=DPOConfig(..., eval_strategy="steps"),
        callbacks=[ProxygapEvalCallback(prompts, proxy=ensemble_reward([...]),
                                        gold=gold_reward(my_gold))],
    )

At each evaluation point the callback samples ``n_per_prompt`` responses to a fixed list of
prompts from the current policy with one fixed seed (the same random numbers at every point, as
the package's own evaluator does, so differences between points are not sampling noise of
different draws), scores them with ``proxy`` and ``gold`` (TRL reward functions, e.g.
:func:`~proxygap.integrations.trl_rewards.ensemble_reward` and
:func:`~proxygap.integrations.trl_rewards.gold_reward`), measures the KL of the samples to the
reference (the trainer's ``ref_model``, or one given here: ``log pi - log pi_ref`` of the
sampled tokens, :func:`~proxygap.integrations.trl_kl.kl_metrics`), feeds the row to the monitor
and logs it as ``proxygap/<key>`` with the trainer's own ``log`` (so it is a row of
``trainer.state.log_history`` and reaches every ``report_to`` tracker), and appends it to
``<output_dir>/proxygap/history.jsonl``.

Evaluation points: step 0 (``at_start``: the initial policy, the baseline of every difference),
then every ``every`` optimiser steps, or, with ``every=None``, at the trainer's own evaluations
(``eval_strategy``).

Several processes (accelerate, DDP): every process samples its share of the prompts
(``prompts[rank::world]``; under ZeRO-3 every rank must take part in a forward pass anyway),
scores and measures it, and the per-sample results are gathered to every process, which then
builds the same row and takes the same monitor decision; only the main process writes the
history file, and the trainer's ``log`` sends the row to the trackers from the main process.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from proxygap.integrations.scoring import batch_signals, default_monitor
from proxygap.integrations.trl_callback import calling_trainer, gather_objects
from proxygap.integrations.trl_kl import kl_metrics
from proxygap.integrations.trl_resume import (
    cut_history,
    monitor_state,
    restore_monitor,
    saved,
    store,
)
from proxygap.integrations.trl_rewards import TRLReward
from proxygap.models.logprobs import response_logprobs
from proxygap.monitor.signals import (
    TOPK,
    token_nll,
    topk_signals,
    unlikely_cutoff,
    unlikely_rate,
)
from proxygap.sampling.generate import decode_responses, sample

__all__ = ["EvalSamples", "ProxygapEvalCallback", "gather_parts", "merge_parts"]

logger = logging.getLogger(__name__)
PREFIX = "proxygap/"
# a part's values of these keys are means over its tokens: merged weighted by tokens
TOKEN_MEANS = frozenset({"signal/entropy", "signal/topk_mass", "signal/topk_entropy"})


@dataclass
class EvalSamples:
    """One process's share of an evaluation: per sample its prompt's index in the full prompt
    list, prompt and completion text, length in tokens, proxy, members ``(B, K)``, gold, the
    reference's per-token NLL (for ``signal/unlikely_rate``); and the KL of its samples
    (:func:`kl_metrics` with the sample and token counts it averages over)."""

    prompt_index: np.ndarray
    prompts: list[str]
    completions: list[str]
    lengths: np.ndarray
    proxy: np.ndarray | None
    members: np.ndarray | None
    gold: np.ndarray | None
    kl: dict[str, float]
    tokens: float
    ref_nll: np.ndarray | None = None


def gather_parts(part: EvalSamples) -> list[EvalSamples]:
    """Every process's part, in rank order, on every process (``[part]`` with one process)."""
    return gather_objects(part)


def merge_parts(parts: Sequence[EvalSamples]) -> tuple[EvalSamples, dict[str, float]]:
    """The parts as one evaluation, and their KL: sequence-weighted means of ``kl/k1..k3``,
    the total ``kl/clamped``, token-weighted means of :data:`TOKEN_MEANS`; the reference's NLLs
    of the parts that measured them."""

    def cat(name: str, *, of_those_with: bool = False) -> np.ndarray | None:
        """The parts' arrays joined; None when a part has none, or, ``of_those_with``, when
        no part has one (a process with no prompts measured nothing)."""
        values = [getattr(p, name) for p in parts]
        have = [v for v in values if v is not None]
        if not have or (len(have) < len(values) and not of_those_with):
            return None
        return np.concatenate(have)

    n = [len(p.completions) for p in parts]
    kl: dict[str, float] = {}
    for key in sorted(set().union(*(p.kl for p in parts))):
        have = [(p, w) for p, w in zip(parts, n, strict=True) if key in p.kl]
        if key == "kl/clamped":
            kl[key] = float(sum(p.kl[key] for p, _ in have))
            continue
        weights = [p.tokens if key in TOKEN_MEANS else w for p, w in have]
        if sum(weights) > 0:
            kl[key] = sum(p.kl[key] * w for (p, _), w in zip(have, weights, strict=True)) / sum(
                weights
            )
    merged = EvalSamples(
        prompt_index=np.concatenate([p.prompt_index for p in parts]),
        prompts=[x for p in parts for x in p.prompts],
        completions=[x for p in parts for x in p.completions],
        lengths=np.concatenate([p.lengths for p in parts]),
        proxy=cat("proxy"), members=cat("members"), gold=cat("gold"), kl=kl,
        tokens=float(sum(p.tokens for p in parts)), ref_nll=cat("ref_nll", of_those_with=True),
    )  # fmt: skip
    return merged, kl


def _score(fn: Any, prompts: list[str], completions: list[str]) -> tuple[np.ndarray, Any]:
    """``(rewards (B,), members (B, K) or None)`` from a TRL reward function."""
    if isinstance(fn, TRLReward):
        rewards, members = fn.score(fn.join(prompts, completions), prompts)
        return np.asarray(rewards, dtype=np.float64), members
    out = fn(prompts=prompts, completions=completions)
    return np.array([np.nan if r is None else float(r) for r in out], dtype=np.float64), None


class ProxygapEvalCallback(TrainerCallback):
    """Gold, proxy, KL and the monitor on samples generated at evaluation points (module
    docstring).

    Args:
        prompts: the fixed evaluation prompts, text as the trainer's dataset holds them
            (tokenized as TRL tokenizes standard-format prompts, ``tokenizer(text=prompts)``).
        proxy: the reward the policy is (implicitly) optimised towards, a TRL reward function
            (an :func:`~proxygap.integrations.trl_rewards.ensemble_reward` also gives the
            members' disagreement); None: no proxy.
        gold: a TRL reward function for gold (e.g. :func:`gold_reward`); None: no gold.
        every: evaluate every ``every`` optimiser steps; None: at the trainer's evaluations.
        at_start: evaluate the initial policy at step 0 (the baseline of the report's
            differences and the monitor's first row).
        n_per_prompt, max_new_tokens, temperature, seed, batch_size: the sampling (one seed for
            every evaluation point).
        ref_model: the reference for the KL when the trainer has none (``ref_model`` of
            ``DPOTrainer`` is used otherwise; with neither no ``kl/*`` is logged and
            :attr:`kl_status` says why).
        tokenizer: default: the trainer's ``processing_class``.
        monitor, stop_on_alarm, save_on_alarm, history: as for
            :class:`~proxygap.integrations.trl_callback.ProxygapCallback`.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        *,
        proxy: Callable[..., Any] | None = None,
        gold: Callable[..., Any] | None = None,
        every: int | None = None,
        at_start: bool = True,
        n_per_prompt: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
        ref_model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        monitor: Any = "auto",
        stop_on_alarm: bool = False,
        save_on_alarm: bool = False,
        history: bool = True,
    ) -> None:
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a non-empty list of text prompts")
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1 or None, got {every}")
        if n_per_prompt < 1:
            raise ValueError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
        self.prompts, self.proxy, self.gold = list(prompts), proxy, gold
        self.every, self.at_start = every, at_start
        self.sampling: dict[str, Any] = dict(
            n_per_prompt=n_per_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
            seed=seed, batch_size=batch_size,
        )  # fmt: skip
        self.ref_model, self.tokenizer = ref_model, tokenizer
        self.monitor = (
            default_monitor() if isinstance(monitor, str) and monitor == "auto" else monitor
        )
        if self.monitor is not None and not callable(getattr(self.monitor, "update", None)):
            raise TypeError("monitor must have an update(row) -> dict method")
        self.stop_on_alarm, self.save_on_alarm, self.history = stop_on_alarm, save_on_alarm, history
        self.trainer: Any = None
        self.rows: list[dict[str, float]] = []
        self.samples: dict[int, EvalSamples] = {}  # step -> the evaluation's samples (all ranks)
        self.alarm_step: int | None = None
        self.kl_status = "no evaluation yet"
        self._last_step: int | None = None
        self.unlikely_cutoff: float | None = None

    def attach(self, trainer: Any) -> ProxygapEvalCallback:
        """Bind to ``trainer`` (done automatically in ``on_init_end``)."""
        self.trainer = trainer
        return self

    # ------------------------------------------------------------ one evaluation
    def _reference(self) -> Any:
        ref = self.ref_model
        if ref is None:
            ref = getattr(self.trainer, "ref_model", None)
        if ref is None:
            self.kl_status = (
                "no KL: the trainer has no ref_model (PEFT, or precomputed reference log-probs); "
                "pass ProxygapEvalCallback(ref_model=...)"
            )
        return ref

    @torch.no_grad()
    def _local(self, model: Any, tok: Any, rank: int, world: int) -> EvalSamples:
        """This process's share of the prompts: sample, score, measure KL."""
        index = list(range(rank, len(self.prompts), world))
        prompts = [self.prompts[i] for i in index]
        ids = [list(x) for x in tok(text=prompts)["input_ids"]] if prompts else []
        if not ids:
            return EvalSamples(np.zeros(0, dtype=np.int64), [], [], np.zeros(0), None, None,
                               None, {}, 0.0)  # fmt: skip
        ends = {"eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}
        s = sample(model, ids, **ends, topk=TOPK, **self.sampling)
        rows = [prompts[i] for i in s.prompt_index.tolist()]
        completions = decode_responses(s, tok)
        proxy = members = gold = None
        if self.proxy is not None:
            proxy, members = _score(self.proxy, rows, completions)
        if self.gold is not None:
            gold, _ = _score(self.gold, rows, completions)
        kl: dict[str, float] = {}
        if s.topk_stats is not None:
            kl["signal/topk_mass"], kl["signal/topk_entropy"] = topk_signals(s.topk_stats, s.mask)
        ref_nll = None
        ref = self._reference()
        if ref is not None:
            ref_logp = response_logprobs(
                ref, s.prompt_ids_rows(), s.response_ids, s.mask, pad_id=tok.pad_token_id,
                batch_size=self.sampling["batch_size"],
            )  # fmt: skip
            mask = s.mask.to(ref_logp.device)
            kl |= kl_metrics(s.logprobs.to(ref_logp.device), ref_logp, mask)
            ref_nll = token_nll(ref_logp, mask)
            self.kl_status = "measured"
        return EvalSamples(
            prompt_index=np.array([index[i] for i in s.prompt_index.tolist()], dtype=np.int64),
            prompts=rows, completions=completions, lengths=s.lengths.cpu().numpy().astype(float),
            proxy=proxy, members=members, gold=gold, kl=kl, tokens=float(s.mask.sum()),
            ref_nll=ref_nll,
        )  # fmt: skip

    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate the trainer's current policy at ``step``: the row, with the monitor's keys."""
        trainer = self.trainer
        model = trainer.model
        tok = self.tokenizer or getattr(trainer, "processing_class", None)
        tok = getattr(tok, "tokenizer", tok)  # a processor's tokenizer
        accelerator = getattr(trainer, "accelerator", None)
        rank = accelerator.process_index if accelerator is not None else 0
        world = accelerator.num_processes if accelerator is not None else 1
        was_training = model.training
        model.eval()
        try:
            part = self._local(model, tok, rank, world)
        finally:
            model.train(was_training)
        merged, kl = merge_parts(gather_parts(part))
        self.samples[step] = merged
        row = batch_signals(
            proxy=merged.proxy, completions=merged.completions, members=merged.members,
            gold=merged.gold, lengths=merged.lengths, groups=merged.prompt_index,
        )  # fmt: skip
        row.update(kl)
        nll = merged.ref_nll
        if nll is not None and self.unlikely_cutoff is None and np.isfinite(nll).any():
            # the first evaluation with the reference's NLLs (step 0: the initial policy's own
            # samples; after a resume from a checkpoint without the cutoff, the resumed
            # policy's, as the monitor's baseline) sets the cutoff, as the evaluator does
            self.unlikely_cutoff = unlikely_cutoff(nll)
        if nll is not None and self.unlikely_cutoff is not None and (~np.isnan(nll)).any():
            row["signal/unlikely_rate"] = unlikely_rate(nll, self.unlikely_cutoff)
        if "kl/k1" in kl:
            row["d"] = math.sqrt(max(kl["kl/k1"], 0.0))
        row["step"] = float(step)
        if self.monitor is not None:
            row.update(self.monitor.update(row))
        self.rows.append(row)
        return row

    def _run(self, args: TrainingArguments, state: TrainerState, control: TrainerControl) -> None:
        """Evaluate at ``state.global_step`` (once per step), log, and act on the alarm."""
        if self.trainer is None or self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        row = self.evaluate(state.global_step)
        logs = {PREFIX + k: v for k, v in row.items() if k != "step"}
        from transformers import Trainer

        should_log = control.should_log  # the trainer's on_log event clears it
        Trainer.log(self.trainer, dict(logs))  # the base log: TRL's would flush its own metrics
        control.should_log = should_log
        path = self._history_path(args)
        if path is not None and state.is_world_process_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")
        if row.get("monitor/alarm", 0.0) >= 1.0:
            first = self.alarm_step is None
            if first:
                self.alarm_step = state.global_step
            if self.stop_on_alarm:
                control.should_training_stop = True
            if self.save_on_alarm and first:
                control.should_save = True
        store(state, type(self).__name__, {
            "monitor": monitor_state(self.monitor), "alarm_step": self.alarm_step,
            "unlikely_cutoff": self.unlikely_cutoff,
        })  # fmt: skip

    def _resume(self, state: TrainerState) -> None:
        """A resumed training: the monitor's baseline, the first alarm and the cutoff as the
        checkpoint kept them (:mod:`~proxygap.integrations.trl_resume`)."""
        data = saved(state, type(self).__name__)
        if data is None:
            logger.warning(
                "proxygap: resumed at step %d from a checkpoint without proxygap's state: the "
                "first evaluation after the resume is the monitor's baseline",
                state.global_step,
            )
            return
        restore_monitor(self.monitor, data.get("monitor"))
        step, cutoff = data.get("alarm_step"), data.get("unlikely_cutoff")
        self.alarm_step = None if step is None else int(step)
        self.unlikely_cutoff = None if cutoff is None else float(cutoff)

    def _history_path(self, args: TrainingArguments) -> Path | None:
        out = getattr(args, "output_dir", None)
        return Path(out) / "proxygap" / "history.jsonl" if self.history and out else None

    # ------------------------------------------------------------ events
    def on_init_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:  # fmt: skip
        if self.trainer is None:
            self.trainer = calling_trainer(self)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> TrainerControl:  # fmt: skip
        if self.trainer is None:
            self.trainer = calling_trainer(self)
        if self.trainer is None:
            logger.warning("proxygap: could not find the trainer; call attach(trainer) first")
            return control
        path = self._history_path(args)
        if path is not None and state.is_world_process_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            if state.global_step == 0:
                path.write_text("")
            else:
                cut_history(path, state.global_step)
        if state.global_step == 0:  # a fresh training: the first evaluation sets the cutoff
            self.unlikely_cutoff = None
        else:
            self._resume(state)
        if self.at_start and state.global_step == 0:
            self._run(args, state, control)
        return control

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> TrainerControl:  # fmt: skip
        if self.every is not None and state.global_step % self.every == 0:
            self._run(args, state, control)
        return control

    def on_evaluate(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> TrainerControl:  # fmt: skip
        if self.every is None:
            self._run(args, state, control)
        return control
