"""A task made from a user's files: prompts from a file, a causal LM folder as the base policy,
and a gold (a sequence-classification folder or a Python function, :mod:`proxygap.tasks.gold`).

The prompts are split once, by the study's seed, into training prompts (preference pairs, RL
and other training loops) and held-out prompts (best-of-n pools, policy evaluators), as Gao et
al. (2023, §2) evaluate on prompts the reward models never saw; the split is recorded in the
run folder. With ``chat_template`` every prompt (also those of a preference file) is wrapped in
the tokenizer's chat template as one user turn, with the generation prompt, and responses
follow it directly; without, prompt and response are joined by ``separator``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from proxygap.data.jsonl import DataFileError
from proxygap.data.prompts import read_prompts, split_prompts
from proxygap.models.loading import ModelLoadError, load_tokenizer
from proxygap.tasks.base import GoldFn, Task

GoldFactory = Callable[[Mapping[str, str], str], GoldFn]
"""Builds the gold from the map of formatted prompts to prompts as written, and the separator."""

__all__ = ["draw", "file_task"]


def draw(pool: Sequence[str], n: int, *, seed: int) -> list[str]:
    """``n`` prompts from ``pool``: a seeded permutation, and further ones when ``n`` exceeds
    the pool (every prompt then appears ``n // len(pool)`` or one more times)."""
    rng = np.random.default_rng([seed, 7919])
    out: list[str] = []
    while len(out) < n:
        out += [pool[i] for i in rng.permutation(len(pool))]
    return out[:n]


def _chat_format(tokenizer_path: Path, trust_remote_code: bool) -> tuple[object, str | None]:
    tok = load_tokenizer(tokenizer_path, trust_remote_code=trust_remote_code)
    return tok, getattr(tok, "chat_template", None)


def file_task(
    *,
    name: str,
    prompts: str | Path,
    policy: str | Path,
    gold: GoldFactory,
    tokenizer: str | Path | None = None,
    chat_template: bool = False,
    separator: str = " ",
    max_new_tokens: int = 64,
    heldout_prompts: float = 0.2,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> Task:
    """The task from these files; ``gold`` builds its gold. Raises :class:`DataFileError` for
    the prompt file and :class:`ModelLoadError` for a tokenizer without the chat template asked
    for."""
    texts = read_prompts(prompts)
    try:
        split = split_prompts(texts, heldout=heldout_prompts, seed=seed)
    except DataFileError as err:
        raise DataFileError(
            f"task.prompts {str(prompts)!r}: {err} (task.heldout_prompts)"
        ) from None
    tok_path = Path(tokenizer or policy)
    raw: dict[str, str] = {}
    fmt = _plain
    if chat_template:
        tok, template = _chat_format(tok_path, trust_remote_code)
        if not template:
            raise ModelLoadError(
                f"task.chat_template is true but the tokenizer at {str(tok_path)!r} has no chat "
                "template; set chat_template: false or use a tokenizer that has one"
            )
        bos = getattr(tok, "bos_token", None)

        def fmt(prompt: str) -> str:
            text = tok.apply_chat_template(  # type: ignore[attr-defined]
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            # the sampler puts the bos token in front of every prompt itself
            return text[len(bos) :] if bos and text.startswith(bos) else text

    def format_prompt(prompt: str) -> str:
        out = fmt(prompt)
        raw.setdefault(out, prompt)
        return out

    formatted = [format_prompt(p) for p in texts]
    train = [formatted[i] for i in split.train]
    held = [formatted[i] for i in split.heldout]

    def sample(n: int, *, seed: int, heldout: bool = False) -> list[str]:
        return draw(held if heldout else train, n, seed=seed)

    return Task(
        name=name,
        policy_path=Path(policy),
        tokenizer_path=tok_path,
        gold=gold(raw, "" if chat_template else separator),
        prompts=sample,
        separator="" if chat_template else separator,
        max_new_tokens=max_new_tokens,
        description=f"prompts from {prompts}",
        format_prompt=format_prompt,
        record={
            "prompts_file": str(prompts),
            "n_prompts": len(texts),
            "chat_template": chat_template,
            "heldout_prompts": len(split.heldout),
            "split": split.as_dict(),
        },
    )


def _plain(prompt: str) -> str:
    return prompt
