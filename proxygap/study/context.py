"""What every study stage shares: the task, its models, the run folder, and what the held-out
pairs fix once (the base-policy reference samples and the gold scale).

:func:`setup` checks everything a user gives before a run folder is made or touched: the
device, the task (prompt file, models, gold), the preference file, and that gold tells
base-policy samples apart. A mistake there stops the study with a message naming the file,
field or value, and leaves the runs folder as it was.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.config import StudyConfig
from proxygap.data.preferences import Pairs, PreferenceFileError, read_jsonl
from proxygap.errors import NonFiniteError, check_ray_address
from proxygap.models.device import resolve_device
from proxygap.models.loading import (
    check_reward_model_folder,
    check_vocab_match,
    load_policy,
    load_tokenizer,
)
from proxygap.sampling.generate import decode_responses, encode_prompts, sample
from proxygap.seeds import study_seed
from proxygap.store.atomic import atomic_write_json
from proxygap.store.run import RunFolder
from proxygap.tasks import Task, resolve_task

if TYPE_CHECKING:
    from proxygap.rewards.proxy import ProxyScorer

__all__ = [
    "SetupError",
    "StudyContext",
    "attach",
    "check_measurements",
    "gold_scale_of",
    "input_paths",
    "reference_texts",
    "sample_responses",
    "setup",
]

PROBE_PROMPTS, PROBE_SAMPLES = 8, 4


class SetupError(ValueError):
    """A study that cannot start with these inputs (found before the run folder is made), or
    whose gold cannot be scaled."""


@dataclass
class StudyContext:
    """What every stage needs: the task, its models and the run folder; once the preference
    pairs exist, the held-out pairs, the base-policy reference samples and the gold scale
    (:meth:`use_heldout`)."""

    cfg: StudyConfig
    run: RunFolder
    task: Task
    tokenizer: Tokenizer
    policy: PreTrainedModel
    gold_fn: Any
    log: Any = print
    timings: dict[str, float] = field(default_factory=dict)
    held: Pairs | None = None
    gold_scale: float = 1.0
    """Gold's standard deviation over the base-policy reference samples: gold is reported in
    these units (Gao et al. §2; ``docs/methods.md`` §1)."""
    proxies: dict[str, ProxyScorer] = field(default_factory=dict)
    """Trained proxies loaded so far (:func:`proxygap.study.scoring.proxy_scorer`)."""
    file_pairs: Pairs | None = None
    """The preference file's pairs (prompts as the policy reads them), checked by :func:`setup`."""
    reference: list[str] = field(default_factory=list)
    """Base-policy samples (full texts) every score is normalised on."""
    reference_gold: np.ndarray = field(default_factory=lambda: np.zeros(0))
    reference_is_heldout: bool = True
    """Whether the reference samples are the held-out pairs' responses (sampled pairs)."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def use_heldout(
        self, held: Pairs, reference: tuple[list[str], np.ndarray] | None = None
    ) -> None:
        """Fix the held-out pairs (with gold scores) and the base-policy reference samples
        (texts, gold): by default the held-out pairs' responses, which are such samples when the
        study sampled its pairs; the gold scale is gold's SD over them."""
        assert held.gold_chosen is not None and held.gold_rejected is not None
        self.held = held
        self.reference_is_heldout = reference is None
        if reference is None:
            texts = self.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
            reference = texts, np.concatenate([held.gold_chosen, held.gold_rejected])
        self.reference, self.reference_gold = reference
        self.gold_scale = gold_scale_of(self.reference_gold, self.reference)

    @property
    def heldout(self) -> Pairs:
        if self.held is None:
            raise RuntimeError("the held-out pairs are not known yet (stage 'preferences')")
        return self.held


def gold_scale_of(gold: np.ndarray, texts: list[str] | None = None) -> float:
    """Gold's standard deviation over the base-policy reference samples; a :class:`SetupError`
    if gold gives them all one score (nothing could be measured in its units)."""
    scale = float(np.asarray(gold, dtype=np.float64).std())
    if not scale > 0:
        first = repr(texts[0][:60]) if texts else "-"
        value = float(gold[0]) if len(gold) else float("nan")
        raise SetupError(
            f"gold gives all {len(gold)} base-policy reference samples the same score "
            f"({value:g}), so gold has no scale: check that the policy writes text the gold can "
            f"judge (first sample: {first})"
        )
    return scale


def input_paths(cfg: StudyConfig, task: Task) -> dict[str, Path]:
    """Every file and folder a study reads (role -> path), fingerprinted in its run folder; a
    gold function counts by its module's source file."""
    out: dict[str, Path] = {}
    t = cfg.task
    for role, value in (("task.prompts", t.prompts), ("task.policy", t.policy)):
        if value is not None:
            out[role] = Path(value)
    if t.tokenizer is not None:
        out["task.tokenizer"] = Path(t.tokenizer)
    if t.gold is not None:
        module = sys.modules.get(t.gold.partition(":")[0]) if ":" in t.gold else None
        source = getattr(module, "__file__", None)
        out["task.gold"] = Path(source) if module is not None and source else Path(t.gold)
    if cfg.preferences.file is not None:
        out["preferences.file"] = Path(cfg.preferences.file)
    for p in cfg.proxies:
        if p.path is not None:
            out[f"proxies.{p.name}.path"] = Path(p.path)
    detector = getattr(getattr(cfg, "monitor", None), "detector", None)
    if detector:
        out["monitor.detector"] = Path(detector)
    return {k: v for k, v in out.items() if v.exists()}


def _read_file_pairs(cfg: StudyConfig, task: Task) -> Pairs | None:
    path = cfg.preferences.file
    if path is None:
        return None
    pairs = read_jsonl(path, duplicates="warn")
    need = cfg.preferences.n_pairs + cfg.preferences.n_heldout
    if len(pairs) < need:
        raise PreferenceFileError(
            f"preference file {path!r} has {len(pairs)} pairs; preferences.n_pairs + n_heldout "
            f"= {cfg.preferences.n_pairs} + {cfg.preferences.n_heldout} = {need}: lower them "
            "or give more pairs"
        )
    prompts = [task.format_prompt(p) for p in pairs.prompt]
    return Pairs(prompts, pairs.chosen, pairs.rejected, pairs.gold_chosen, pairs.gold_rejected)


def _check_prompt_counts(cfg: StudyConfig, task: Task) -> None:
    held = task.record.get("heldout_prompts")
    if held is not None and cfg.bon is not None and cfg.bon.n_prompts > held:
        raise SetupError(
            f"bon.n_prompts ({cfg.bon.n_prompts}) exceeds the {held} held-out prompts of "
            f"task.prompts {cfg.task.prompts!r} (task.heldout_prompts: "
            f"{cfg.task.heldout_prompts:g}): lower it or hold out more prompts"
        )


def probe_gold(
    task: Task, policy: PreTrainedModel, tokenizer: Tokenizer, cfg: StudyConfig
) -> np.ndarray:
    """Gold on a few base-policy samples (their own random stream: no result depends on them);
    a :class:`SetupError` if gold scores them all alike or not at all."""
    prompts = task.prompts(PROBE_PROMPTS, seed=study_seed(cfg.seed, "gold_probe"))
    s = sample(
        policy,
        encode_prompts(tokenizer, prompts),
        n_per_prompt=PROBE_SAMPLES,
        max_new_tokens=cfg.preferences.max_new_tokens or task.max_new_tokens,
        temperature=cfg.preferences.temperature,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        batch_size=cfg.runtime.sample_batch_size,
        seed=study_seed(cfg.seed, "gold_probe"),
    )
    responses = decode_responses(s, tokenizer)
    texts = task.join([prompts[i] for i in s.prompt_index.tolist()], responses)
    where = f"task.gold {cfg.task.gold!r}" if cfg.task.gold else f"the gold of task {task.name!r}"
    try:
        gold = np.asarray(task.gold(texts), dtype=np.float64)
    except NonFiniteError as err:  # a gold function's own check
        raise SetupError(f"{err} on base-policy samples") from None
    if gold.shape != (len(texts),) or not np.isfinite(gold).all():
        raise SetupError(
            f"{where} gave {int((~np.isfinite(gold)).sum())} non-finite score(s) of {gold.size} "
            f"on base-policy samples (first text: {texts[0][:60]!r})"
        )
    if np.ptp(gold) == 0:
        raise SetupError(
            f"{where} gives all {len(texts)} base-policy samples of the policy "
            f"{str(task.policy_path)!r} the same score ({gold[0]:g}): it cannot tell the "
            f"policy's responses apart, so nothing can be measured against it (first sample: "
            f"{texts[0][:60]!r})"
        )
    return gold


def setup(
    cfg: StudyConfig, runs_root: Path, *, restart: bool = False, log: Any = print
) -> StudyContext:
    """Check the inputs, load the task's models, then open (or resume) the run folder."""
    if cfg.runtime.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise SetupError(
            "runtime.backend: ray needs Ray, which is not installed: pip install "
            "'proxygap[ray]', or use backend: processes"
        )
    if cfg.runtime.address is not None:
        check_ray_address(cfg.runtime.address, SetupError)
    device, task, policy, tokenizer = _load_task(cfg)
    trust = cfg.task.trust_remote_code
    check_vocab_match(policy, tokenizer, f"policy {str(task.policy_path)!r}")
    _check_prompt_counts(cfg, task)
    for proxy in cfg.proxies:
        if proxy.path is not None:
            what = f"proxies[{proxy.name}].path: reward model"
            check_reward_model_folder(proxy.path, what=what, trust_remote_code=trust)
    file_pairs = _read_file_pairs(cfg, task)
    probe_gold(task, policy, tokenizer, cfg)
    # the folder is opened only once every input checked out: a mistake leaves nothing behind
    data = cfg.model_dump(mode="json")
    data["runtime"]["device"] = str(device)
    run = RunFolder(runs_root, cfg.name, data, restart=restart, inputs=input_paths(cfg, task))
    if run.removed_tmp:
        log(f"removed {len(run.removed_tmp)} temporary file(s) of an interrupted write")
    atomic_write_json(
        run.path("task.json"),
        {"name": task.name, "description": task.description, **dict(task.record)},
    )
    return StudyContext(
        cfg, run, task, tokenizer, policy, task.gold, log, file_pairs=file_pairs, device=device
    )


def _load_task(cfg: StudyConfig) -> tuple[torch.device, Task, PreTrainedModel, Tokenizer]:
    """The device, the task and its policy and tokenizer (a gold ``module:function`` is also
    looked for in the working folder)."""
    device = resolve_device(cfg.runtime.device)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    t, trust = cfg.task, cfg.task.trust_remote_code
    task = resolve_task(
        name=t.name, device=device, prompts=t.prompts, policy=t.policy,
        policy_size=t.policy_size, tokenizer=t.tokenizer,
        gold=t.gold, chat_template=t.chat_template, separator=t.separator,
        max_new_tokens=t.max_new_tokens, heldout_prompts=t.heldout_prompts,
        seed=study_seed(cfg.seed, "prompt_split"), score_batch_size=cfg.runtime.score_batch_size,
        trust_remote_code=trust, search=[Path.cwd()],
    )  # fmt: skip
    policy = load_policy(task.policy_path, trust_remote_code=trust)
    policy = policy.to(device)  # type: ignore[arg-type]  # wrapped .to: see models.loading
    tokenizer = load_tokenizer(task.tokenizer_path, trust_remote_code=trust)
    return device, task, policy, tokenizer


def attach(cfg: StudyConfig, folder: Path) -> StudyContext:
    """A worker's context for the run folder ``folder`` of ``cfg``, which another process holds
    (:meth:`RunFolder.attach`): the task's models loaded afresh, the inputs not checked again
    (the holder checked them), nothing logged."""
    device, task, policy, tokenizer = _load_task(cfg)
    file_pairs = _read_file_pairs(cfg, task)
    run = RunFolder.attach(folder)
    return StudyContext(
        cfg, run, task, tokenizer, policy, task.gold, lambda *_: None, file_pairs=file_pairs,
        device=device,
    )  # fmt: skip


MEASURED = ("d", "kl/k1", "kl/k2", "kl/k3", "reward/gold", "reward/proxy")
"""The evaluation metrics a result is made of: a run whose evaluation gave NaN or inf in one of
them diverged, and its result is not written."""


def check_measurements(history: list[dict[str, Any]], stage: str) -> None:
    """A :class:`NonFiniteError` naming ``stage``, the step and the metrics if an evaluation row
    of ``history`` holds a non-finite :data:`MEASURED` value."""
    for row in history:
        bad = [k for k in MEASURED if k in row and not np.isfinite(row[k])]
        if bad:
            raise NonFiniteError(
                f"stage {stage!r}: the evaluation at step {int(row.get('step', -1))} gave "
                f"non-finite {', '.join(bad)}: the run diverged (lower the learning rate or raise "
                "beta); its result was not written, finished runs are kept"
            )


def sample_responses(
    ctx: StudyContext,
    prompts: list[str],
    *,
    n: int,
    temperature: float,
    max_new: int | None,
    seed: int,
    desc: str | None,
) -> list[str]:
    """``n`` responses per prompt (grouped by prompt) from the base policy, as texts."""
    s = sample(
        ctx.policy,
        encode_prompts(ctx.tokenizer, prompts),
        n_per_prompt=n,
        max_new_tokens=max_new or ctx.task.max_new_tokens,
        temperature=temperature,
        eos_id=ctx.tokenizer.eos_token_id,
        pad_id=ctx.tokenizer.pad_token_id,
        batch_size=ctx.cfg.runtime.sample_batch_size,
        seed=seed,
        progress=desc,
    )
    return decode_responses(s, ctx.tokenizer)


def reference_texts(ctx: StudyContext) -> list[str]:
    """The base-policy samples every score is normalised on (:meth:`StudyContext.use_heldout`)."""
    if ctx.held is None:
        raise RuntimeError("the reference samples are not known yet (stage 'preferences')")
    return ctx.reference
