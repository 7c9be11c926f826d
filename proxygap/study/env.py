"""What every study stage shares: the task, its models, the run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from proxygap.rewards.reward_model import (
    score_texts,
)
from proxygap.sampling.generate import decode_responses, encode_prompts, sample
from proxygap.store.run import RunFolder
from proxygap.tasks import Task, get_task


class NonFiniteError(FloatingPointError):
    """NaN or inf in rewards, losses or KL; the message names the stage or step."""


@dataclass
class Env:
    """What every stage needs: the task, its models and the run folder."""

    cfg: StudyConfig
    run: RunFolder
    task: Task
    tokenizer: Tokenizer
    policy: PreTrainedModel
    gold_fn: Any
    log: Any = print
    timings: dict[str, float] = field(default_factory=dict)


def setup(cfg: StudyConfig, runs_root: Path, *, restart: bool = False, log: Any = print) -> Env:
    """Open (or resume) the run folder and load the task's models."""
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    task = get_task(cfg.task.name)
    trust = cfg.task.trust_remote_code
    policy_path = cfg.task.policy or task.policy_path
    tok_path = cfg.task.tokenizer or (cfg.task.policy or task.tokenizer_path)
    policy = load_policy(policy_path, trust_remote_code=trust).to(cfg.runtime.device)
    tokenizer = load_tokenizer(tok_path, trust_remote_code=trust)
    check_vocab_match(policy, tokenizer, f"policy {str(policy_path)!r}")
    if cfg.task.gold is None:
        gold_fn = task.gold
    else:
        gold_model = load_reward_model(cfg.task.gold, trust_remote_code=trust)
        gold_tok = load_tokenizer(cfg.task.gold, trust_remote_code=trust)

        def gold_fn(texts: list[str]) -> np.ndarray:
            return score_texts(gold_model, gold_tok, texts, batch_size=cfg.runtime.score_batch_size)

    # the folder is opened only once every model loaded: a bad path leaves nothing behind
    run = RunFolder(runs_root, cfg, restart=restart)
    return Env(cfg, run, task, tokenizer, policy, gold_fn, log)


def sample_responses(
    env: Env,
    prompts: list[str],
    *,
    n: int,
    temperature: float,
    max_new: int | None,
    seed: int,
    desc: str,
) -> list[str]:
    """``n`` responses per prompt (grouped by prompt) from the base policy, as texts."""
    s = sample(
        env.policy,
        encode_prompts(env.tokenizer, prompts),
        n_per_prompt=n,
        max_new_tokens=max_new or env.task.max_new_tokens,
        temperature=temperature,
        eos_id=env.tokenizer.eos_token_id,
        pad_id=env.tokenizer.pad_token_id,
        batch_size=env.cfg.runtime.sample_batch_size,
        seed=seed,
        progress=desc,
    )
    return decode_responses(s, env.tokenizer)


def reference_texts(env: Env, held: Pairs) -> list[str]:
    """The base-policy samples every score is normalised on: the held-out pair responses."""
    return env.task.join(held.prompt + held.prompt, held.chosen + held.rejected)
