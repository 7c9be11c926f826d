"""Atomic training checkpoints (policy, critic, tokenizer, trainer state) of any optimiser, read
back to resume a run where it stopped, and a watcher that keeps a run's final and best-by-gold
policy (:class:`PolicyKeeper`).

A checkpoint folder holds ``step-NNNNNN/`` folders, each renamed into place when complete, so a
process killed while writing one leaves only a ``.step-NNNNNN.*.tmp`` folder, which
:func:`prune_checkpoints` deletes. :func:`latest_checkpoint` finds the newest complete one and
:func:`load_checkpoint` puts its weights back into the live models and returns the trainer state
(optimiser, scheduler, the loop's record, ...) for the recipe to restore.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from proxygap.optimize.loop import Stateful

__all__ = [
    "CheckpointError",
    "PolicyKeeper",
    "checkpoint_writer",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "prune_checkpoints",
    "resume_training",
    "save_checkpoint",
]

STEP_GLOB = "step-" + "[0-9]" * 6
"""The names of complete checkpoints: ``step-`` and six digits."""


class CheckpointError(ValueError):
    """A checkpoint that cannot resume this run (another config, weights that do not fit)."""


def save_checkpoint(
    folder: Path | str,
    *,
    step: int,
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    tokenizer: Any,
    state: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write ``folder/step-{step:06d}`` atomically: into a temporary folder beside it, renamed
    when complete. Holds ``policy/`` (and ``critic/``) as safetensors model folders, the
    tokenizer, ``trainer_state.pt`` (``state``: optimiser, scheduler, KL controller, prompt
    position, history so far, ...; loadable with ``torch.load(..., weights_only=True)``) and
    ``run_config.json`` (the run's config). Sampling and shuffling seeds derive from
    ``(seed, step)``, so a run resumed from this state can continue exactly.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        policy.save_pretrained(tmp / "policy", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "policy")
        if critic is not None:
            critic.save_pretrained(tmp / "critic", safe_serialization=True)
        torch.save({"step": step, **state}, tmp / "trainer_state.pt")
        (tmp / "run_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _complete(folder: Path) -> list[Path]:
    """The complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(STEP_GLOB) if (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def latest_checkpoint(folder: Path | str) -> Path | None:
    """The newest complete checkpoint in ``folder`` (None: none)."""
    found = _complete(Path(folder))
    return found[-1] if found else None


def prune_checkpoints(folder: Path | str, *, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (None: keep all) and the
    temporary folders of checkpoints whose writing was interrupted."""
    root = Path(folder)
    if not root.is_dir():
        return
    for tmp in root.glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:
        for old in _complete(root)[: -keep or None]:
            shutil.rmtree(old)


def load_weights(model: torch.nn.Module, folder: Path | str) -> None:
    """Put the weights ``save_pretrained`` wrote into ``folder`` (every ``*.safetensors`` shard)
    into ``model`` in place, exactly. A weight missing from the files must be tied to one
    that is there (``save_pretrained`` writes tied weights once).

    Raises:
        CheckpointError: the files hold a weight the model has not, or lack an untied one.
    """
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    live = model.state_dict()
    loaded = {live[k].data_ptr() for k in state if k in live}
    untied = [k for k in missing if live[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise CheckpointError(
            f"the weights in {str(folder)!r} do not fit the model: "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}), "
            f"{len(untied)} missing ({', '.join(untied[:3])})"
        )


def load_checkpoint(
    path: Path | str,
    *,
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    config: Mapping[str, Any],
    ignore: tuple[str, ...] = ("checkpoint_every",),
) -> dict[str, Any]:
    """Load the checkpoint ``path`` (from :func:`save_checkpoint`) into ``policy`` (and
    ``critic``) in place and return its trainer state, after checking that it was written by
    a run of ``config`` (fields in ``ignore`` aside: they change no result).

    Raises:
        CheckpointError: written by another config, or weights that do not fit.
    """
    path = Path(path)
    saved = json.loads((path / "run_config.json").read_text(encoding="utf-8"))
    now = json.loads(json.dumps(dict(config)))  # tuples as lists, as in the file
    differ = sorted(
        k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k)
    )
    if differ:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by a run with other settings "
            f"({', '.join(differ[:6])}); resume with its settings, or use another folder"
        )
    load_weights(policy, path / "policy")
    if critic is not None:
        load_weights(critic, path / "critic")
    state: dict[str, Any] = torch.load(
        path / "trainer_state.pt", map_location="cpu", weights_only=True
    )
    return state


def resume_training(
    folder: Path | str | None,
    *,
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: Mapping[str, Any],
    log: Callable[[str], Any],
    own: Mapping[str, Stateful] | None = None,
) -> dict[str, Any] | None:
    """Continue from the newest complete checkpoint in ``folder``: its weights go into
    ``policy`` (and ``critic``), its state into ``optimizer``, ``scheduler`` and each of the
    recipe's ``own`` stateful objects (the names :func:`checkpoint_writer` saved them under: a
    KL controller, the prompt stream, a Quark pool, the mitigation hooks); returns the rest of
    its trainer state (``step`` and ``loop``, for :func:`~proxygap.optimize.loop.run_loop`'s
    ``resume``). None: no folder or no checkpoint.

    Raises:
        CheckpointError: the checkpoint was written by a run of another ``config``, or lacks
            the state of one of ``own``.
    """
    last = latest_checkpoint(folder) if folder is not None else None
    if last is None:
        return None
    saved = load_checkpoint(last, policy=policy, critic=critic, config=config)
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    for name, obj in (own or {}).items():
        if name not in saved:
            raise CheckpointError(f"checkpoint {str(last)!r} holds no state of {name!r}")
        obj.load_state_dict(saved.pop(name))
    log(f"resuming from {last}")
    return saved


def checkpoint_writer(
    folder: Path | str | None,
    *,
    policy: PreTrainedModel,
    critic: PreTrainedModel | None,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: Mapping[str, Any],
    keep: int | None,
    own: Mapping[str, Stateful] | None = None,
) -> Callable[[int, dict[str, Any]], None] | None:
    """A loop's ``checkpoint``: ``(steps_done, loop_state)`` saves the models, the optimiser
    and scheduler state, the ``state_dict`` of each of the recipe's ``own`` stateful objects
    under its name and the loop's state with :func:`save_checkpoint` into ``folder``, then
    keeps the newest ``keep`` checkpoints (None: all). None when ``folder`` is None (no
    checkpoints)."""
    if folder is None:
        return None
    root, objects = folder, dict(own or {})

    def write(done: int, loop: dict[str, Any]) -> None:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        state |= {name: obj.state_dict() for name, obj in objects.items()}
        save_checkpoint(
            root, step=done, policy=policy, critic=critic, tokenizer=tokenizer,
            config=dict(config), state=state | {"loop": loop},
        )  # fmt: skip
        prune_checkpoints(root, keep=keep)

    return write


class PolicyKeeper:
    """Keeps a run's final and best policy: an evaluation watcher
    (:class:`~proxygap.optimize.loop.Watchers`) that remembers the policy's weights (a copy on
    the CPU) at the evaluation with the highest ``metric`` (gold by default: the policy one
    would have wanted to stop at, Gao et al. 2023), and a close hook that writes
    ``folder/policy-final`` and ``folder/policy-best`` (safetensors model folders with the
    tokenizer) and ``folder/policy-best.json`` (the step and value of the best evaluation).

    When the overoptimization monitor watches the run (its ``monitor/alarm`` in the rows, the
    monitor placed before the keeper), it also keeps the policy of the last evaluation before the
    first alarm, what a practitioner without gold would roll back to, and writes it as
    ``folder/policy-before-alarm`` with ``folder/policy-before-alarm.json`` (its step).

    It reads the policy and changes nothing: the run's numbers are the same with or without it.
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        tokenizer: Any,
        folder: Path | str,
        *,
        metric: str = "reward/gold",
    ) -> None:
        self.policy, self.tokenizer, self.folder, self.metric = (
            policy,
            tokenizer,
            Path(folder),
            metric,
        )
        self.best: dict[str, float] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.alarmed = False
        self.before_alarm: dict[str, float] | None = None
        self.before_alarm_state: dict[str, torch.Tensor] | None = None

    def _snapshot(self) -> dict[str, torch.Tensor]:
        copies: dict[int, torch.Tensor] = {}  # tied weights stay tied in the copy
        return {
            k: copies.setdefault(id(v), v.detach().to("cpu", copy=True))
            for k, v in self.policy.state_dict().items()
        }

    def __call__(self, row: dict[str, float], result: Any = None) -> None:
        alarm = row.get("monitor/alarm")
        if alarm is not None and not self.alarmed:
            if alarm == 1.0:
                self.alarmed = True
            else:
                self.before_alarm = {"step": row["step"]}
                self.before_alarm_state = self._snapshot()
        value = row.get(self.metric)
        if value is None or value != value:  # absent or NaN
            return
        if self.best is None or value > self.best[self.metric]:
            self.best = {"step": row["step"], self.metric: float(value)}
            self.best_state = self._snapshot()

    def state_dict(self) -> dict[str, Any]:
        """What the keeper remembers (weights as CPU tensors), for a checkpoint."""
        return {
            "best": self.best,
            "best_state": self.best_state,
            "alarmed": self.alarmed,
            "before_alarm": self.before_alarm,
            "before_alarm_state": self.before_alarm_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Remember what a checkpoint's :meth:`state_dict` held."""
        self.best, self.best_state = state["best"], state["best_state"]
        self.alarmed = bool(state["alarmed"])
        self.before_alarm = state["before_alarm"]
        self.before_alarm_state = state["before_alarm_state"]

    def _write(self, name: str, state: dict[str, torch.Tensor] | None) -> None:
        folder = self.folder / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder))
        try:
            self.policy.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def close(self) -> None:
        """Write the final and the best policy (nothing if no evaluation was seen), and the
        last one before the monitor's first alarm when it alarmed."""
        if self.best is None or self.best_state is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write("policy-final", None)
        self._write("policy-best", self.best_state)
        info = json.dumps({"metric": self.metric, **self.best}, indent=2) + "\n"
        (self.folder / "policy-best.json").write_text(info, encoding="utf-8")
        if self.alarmed and self.before_alarm_state is not None:
            self._write("policy-before-alarm", self.before_alarm_state)
            info = json.dumps(self.before_alarm, indent=2) + "\n"
            (self.folder / "policy-before-alarm.json").write_text(info, encoding="utf-8")
