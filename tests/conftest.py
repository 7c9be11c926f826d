"""Test-wide settings: one torch thread per test process.

The suite runs with ``pytest -n 2``; two workers with two intra-op threads each oversubscribe a
2-core machine, and tiny models then run several times slower.
"""

import torch

torch.set_num_threads(1)


# ---------------------------------------------------------------- a user's own files
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _make_own_files(folder: Path) -> dict[str, Path]:
    """What a researcher brings: a prompt file, a tiny causal LM and a tiny sequence-classification
    gold (each saved with ``save_pretrained``), and a preference JSONL without gold fields."""
    from transformers import GPT2LMHeadModel

    from proxygap.models.loading import load_tokenizer
    from proxygap.models.tiny import tiny_gpt2_config
    from proxygap.rewards.reward_model import new_reward_model
    from proxygap.tasks import get_task
    from proxygap.tasks.reviews.grammar import sample_review

    tok = load_tokenizer(get_task("reviews").tokenizer_path)
    rng = np.random.default_rng(0)
    reviews = [" ".join(sample_review(rng)) for _ in range(600)]
    prompts = sorted({" ".join(r.split()[:3]) for r in reviews})[:40]
    (folder / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")
    rows = []
    for i in range(0, 2 * 120, 2):
        a, b = reviews[i].split(), reviews[i + 1].split()
        if a[3:] != b[3:]:
            rows.append({"prompt": " ".join(a[:3]), "chosen": " ".join(a[3:]),
                         "rejected": " ".join(b[3:])})  # fmt: skip
    (folder / "pairs.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:100]), encoding="utf-8"
    )
    cfg = tiny_gpt2_config(tok, n_embd=16, n_layer=1, n_head=2, n_positions=64)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder / "policy", safe_serialization=True)
    tok.save_pretrained(folder / "policy")
    gold = new_reward_model(tok, n_embd=16, n_layer=1, n_head=2, n_positions=64, seed=1)
    gold.save_pretrained(folder / "gold", safe_serialization=True)
    tok.save_pretrained(folder / "gold")
    return {k: folder / k for k in ("prompts.txt", "pairs.jsonl", "policy", "gold")}


@pytest.fixture(scope="session")
def own_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths of a user's own prompt file, policy, gold and preference file (built once; tests
    that change a file copy it first)."""
    return _make_own_files(tmp_path_factory.mktemp("own"))


def own_config(files: dict[str, Path], **top: Any) -> dict[str, Any]:
    """The smallest study of a task made from ``files``: best-of-n, RL and one DAA loss."""
    data: dict[str, Any] = {
        "name": "own",
        "seed": 1,
        "task": {"prompts": str(files["prompts.txt"]), "policy": str(files["policy"]),
                 "gold": str(files["gold"]), "max_new_tokens": 6},
        "preferences": {"n_pairs": 64, "n_heldout": 24, "file": str(files["pairs.jsonl"])},
        "proxies": [{"name": "rm", "n_embd": 16, "n_head": 2, "n_layer": 1, "epochs": 1,
                     "batch_size": 32}],
        "bon": {"n_prompts": 4, "pool_size": 16, "n_points": 4, "examples_at": [1, 16]},
        "rl": {"proxy": "rm", "settings": {"steps": 2, "prompts_per_step": 2, "group_size": 2,
               "eval_every": 2, "eval_prompts": 2, "eval_samples_per_prompt": 2, "lr": 0.01}},
        "daa": {"betas": {"dpo": [0.1]}, "settings": {"batch_size": 32, "eval_at": [0, 1.0],
                "eval_prompts": 2, "eval_samples_per_prompt": 2, "lr": 0.01}},
        "runtime": {"threads": 1, "sample_batch_size": 64, "score_batch_size": 64},
    }  # fmt: skip
    data.update(top)
    return data


@pytest.fixture(scope="session")
def own_study() -> Any:
    """:func:`own_config` as a fixture (test modules are imported in importlib mode)."""
    return own_config
