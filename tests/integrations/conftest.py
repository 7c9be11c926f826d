"""Fixtures of the integration tests: the reviews task's tokenizer and three untrained tiny
reward models saved as reward-model folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxygap.models.loading import load_tokenizer
from proxygap.rewards.reward_model import new_reward_model
from proxygap.tasks import get_task


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer(get_task("reviews").tokenizer_path)


@pytest.fixture(scope="session")
def member_paths(tmp_path_factory, tok) -> list[Path]:
    """Three untrained tiny reward models saved as reward-model folders (safetensors)."""
    root = tmp_path_factory.mktemp("members")
    paths = []
    for k in range(3):
        model = new_reward_model(tok, n_embd=16, n_layer=1, n_head=2, seed=k)
        model.save_pretrained(root / f"member-{k}")
        tok.save_pretrained(root / f"member-{k}")
        paths.append(root / f"member-{k}")
    return paths
