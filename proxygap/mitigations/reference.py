"""Per-prompt reference rewards from the initial policy, used by LSC (Wang et al. 2024) and PAR
(Fu et al. 2025): sample ``n`` responses per prompt from ``pi0`` and score them with the proxy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from transformers import PreTrainedModel

from proxygap.sampling.generate import decode_responses, encode_prompts, sample


def reference_rewards(
    policy: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    n: int,
    reward_fn: Callable[[Sequence[str]], np.ndarray],
    join: Callable[[Sequence[str], Sequence[str]], list[str]],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, np.ndarray]:
    """``{prompt: rewards (n,)}``: ``reward_fn`` on ``n`` samples of ``policy`` for each distinct
    prompt.

    Args:
        policy: the initial policy ``pi0`` (pass the model before any training).
        tokenizer: with ``bos``/``eos``/``pad`` ids; prompts are encoded as in the RL recipe.
        prompts: prompt texts; duplicates are sampled once.
        n: samples per prompt (``M`` references for PAR; LSC takes a quantile of them).
        reward_fn: ``texts -> (B,)`` the proxy the transform will be applied to.
        join: ``(prompts, responses) -> texts`` as ``reward_fn`` reads them.
        max_new_tokens, temperature: as in training (the references should come from the same
            sampling distribution as the policy's rollouts at step 0).
        seed: sampling seed (use one the training rollouts do not).
        batch_size: rows per sampling batch.

    Returns:
        A dict from each distinct prompt to its ``(n,)`` float64 rewards, in sample order.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    unique = list(dict.fromkeys(prompts))
    if not unique:
        raise ValueError("no prompts")
    s = sample(
        policy,
        encode_prompts(tokenizer, unique),
        n_per_prompt=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        seed=seed,
    )
    rows = [unique[i] for i in s.prompt_index.tolist()]  # (P * n,) grouped by prompt
    scores = np.asarray(reward_fn(join(rows, decode_responses(s, tokenizer))), dtype=np.float64)
    if scores.shape != (len(rows),):
        raise ValueError(f"reward_fn returned shape {scores.shape}, expected ({len(rows)},)")
    grouped = scores.reshape(len(unique), n)
    return {p: grouped[i].copy() for i, p in enumerate(unique)}
