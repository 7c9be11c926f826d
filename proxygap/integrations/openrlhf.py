"""proxygap in OpenRLHF: a ``reward_func(queries, prompts, labels)`` file (written against
OpenRLHF 0.11.2; ``pip install "proxygap[openrlhf]"``).

OpenRLHF loads ``reward_func`` from the Python file given as ``--remote_rm_url
/path/to/file.py`` and calls it (on worker threads) with lists of full decoded texts
(``queries``: prompt and response, special tokens kept), the prompts and the dataset labels; it
reads ``rewards`` (advantages), ``scores`` (dynamic filtering) and ``extra_logs`` (one number
per key, logged to its trackers) from the returned dict. OpenRLHF 0.11.2 passes one sample per
call, so the signals and the monitor's metrics come from a window of samples
(:class:`~proxygap.integrations.scoring.SampleWindow`).

This file is such a file: configured by the ``PROXYGAP_*`` environment variables
(:mod:`proxygap.integrations.service`), run with::

    --remote_rm_url $(python -c "import proxygap.integrations.openrlhf as m; print(m.__file__)")

or write your own three lines with :func:`make_reward_func`. Tested against the calling code of
OpenRLHF 0.11.2 (``SingleTurnAgentExecutor`` and the experience builder) installed without its
GPU dependencies, and by the suite against this documented contract (OpenRLHF is not a test
dependency).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from proxygap.integrations.service import RewardService, shared_service

__all__ = ["make_reward_func", "reward_func", "strip_special"]


def strip_special(tokenizer: Any) -> Callable[[str, str], tuple[str, str]]:
    """``(query, prompt) -> (text, response)``: the query without ``tokenizer``'s special
    tokens (OpenRLHF decodes queries with them) and the response, the query after the prompt."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    pattern = re.compile("|".join(re.escape(t) for t in specials)) if specials else None

    def clean(query: str, prompt: str) -> tuple[str, str]:
        response = query[len(prompt) :] if prompt and query.startswith(prompt) else query
        if pattern is not None:
            query, response = pattern.sub("", query), pattern.sub("", response)
        return " ".join(query.split()), " ".join(response.split())

    return clean


def make_reward_func(
    service: RewardService | Callable[[], RewardService],
    *,
    clean: Callable[[str, str], tuple[str, str]] | None = None,
) -> Callable[[Sequence[str], Sequence[str], Sequence[Any]], dict[str, Any]]:
    """An OpenRLHF ``reward_func`` over ``service`` (or a function building it on first use).

    ``clean(query, prompt) -> (text the reward models read, response)``; by default
    :func:`strip_special` of the ensemble's tokenizer. Returns ``{"rewards": (B,) tensor,
    "scores": the same, "extra_logs": {key: mean over the call's samples}}``.
    """
    get = service if callable(service) and not isinstance(service, RewardService) else None

    def reward_func(
        queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any]
    ) -> dict[str, Any]:
        svc = get() if get is not None else service
        assert isinstance(svc, RewardService)
        if len(queries) != len(prompts):
            raise ValueError(f"{len(queries)} queries for {len(prompts)} prompts")
        fix = clean or strip_special(svc.scorer.tokenizer)
        pairs = [fix(q, p) for q, p in zip(queries, prompts, strict=True)]
        rewards, extras = svc.score([t for t, _ in pairs], [r for _, r in pairs])
        tensor = torch.tensor(rewards, dtype=torch.float32)
        logs = {k: float(np.mean([x[k] for x in extras])) for k in svc.keys} if extras else {}
        return {"rewards": tensor, "scores": tensor.clone(), "extra_logs": logs}

    return reward_func


reward_func = make_reward_func(shared_service)
"""The ``reward_func`` OpenRLHF loads from this file, configured by environment."""
