"""What every study stage shares: the task, its models, the run folder, and what the held-out
pairs fix once (the base-policy reference samples and the gold scale)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from proxygap.config import StudyConfig
from proxygap.data.preferences import Pairs
from proxygap.models.loading import (
    check_vocab_match,
    load_policy,
    load_reward_model,
    load_tokenizer,
)
from proxygap.rewards.reward_model import score_texts
from proxygap.sampling.generate import decode_responses, encode_prompts, sample
from proxygap.store.run import RunFolder
from proxygap.tasks import Task, get_task

if TYPE_CHECKING:
    from proxygap.rewards.proxy import ProxyScorer

__all__ = ["StudyContext", "gold_scale_of", "reference_texts", "sample_responses", "setup"]


@dataclass
class StudyContext:
    """What every stage needs: the task, its models and the run folder; once the preference
    pairs exist, the held-out pairs and the gold scale (:meth:`use_heldout`)."""

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
    these units (Gao et al. §2)."""
    proxies: dict[str, ProxyScorer] = field(default_factory=dict)
    """Trained proxies loaded so far (:func:`proxygap.study.scoring.proxy_scorer`)."""

    def use_heldout(self, held: Pairs) -> None:
        """Fix the held-out pairs: the reference samples and the gold scale come from them."""
        self.held = held
        self.gold_scale = gold_scale_of(held)

    @property
    def heldout(self) -> Pairs:
        if self.held is None:
            raise RuntimeError("the held-out pairs are not known yet (stage 'preferences')")
        return self.held


def gold_scale_of(held: Pairs) -> float:
    """Gold's standard deviation over the held-out pair responses (1 if they all tie)."""
    assert held.gold_chosen is not None and held.gold_rejected is not None
    return float(np.concatenate([held.gold_chosen, held.gold_rejected]).std()) or 1.0


def setup(
    cfg: StudyConfig, runs_root: Path, *, restart: bool = False, log: Any = print
) -> StudyContext:
    """Open (or resume) the run folder and load the task's models."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    task = get_task(cfg.task.name)
    trust = cfg.task.trust_remote_code
    policy_path = cfg.task.policy or task.policy_path
    tok_path = cfg.task.tokenizer or (cfg.task.policy or task.tokenizer_path)
    policy = load_policy(policy_path, trust_remote_code=trust)
    policy = policy.to(cfg.runtime.device)  # type: ignore[arg-type]  # wrapped .to: see models.loading
    tokenizer = load_tokenizer(tok_path, trust_remote_code=trust)
    check_vocab_match(policy, tokenizer, f"policy {str(policy_path)!r}")
    gold_fn: Callable[[list[str]], np.ndarray]
    if cfg.task.gold is None:
        gold_fn = task.gold
    else:
        gold_model = load_reward_model(cfg.task.gold, trust_remote_code=trust)
        gold_tok = load_tokenizer(cfg.task.gold, trust_remote_code=trust)

        def gold_fn(texts: list[str]) -> np.ndarray:
            return score_texts(gold_model, gold_tok, texts, batch_size=cfg.runtime.score_batch_size)

    # the folder is opened only once every model loaded: a bad path leaves nothing behind
    run = RunFolder(runs_root, cfg.name, cfg.model_dump(mode="json"), restart=restart)
    return StudyContext(cfg, run, task, tokenizer, policy, gold_fn, log)


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
    """The base-policy samples every score is normalised on: the held-out pair responses."""
    held = ctx.heldout
    return ctx.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
