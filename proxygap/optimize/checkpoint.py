"""Atomic training checkpoints (policy, critic, tokenizer, trainer state) of any optimiser."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel


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
    ``rl_config.json`` (the run's config). Sampling and shuffling seeds derive from
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
        (tmp / "rl_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
