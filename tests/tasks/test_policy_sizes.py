"""The ``reviews`` task's base policies of three sizes: shipped weights are what their recipe
builds, the original policy is untouched, and the sizes span at least 10x in parameters."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from proxygap.models.loading import load_policy
from proxygap.tasks import get_task, resolve_task
from proxygap.tasks.reviews.build import POLICY_SIZES, rebuild_fingerprint
from proxygap.tasks.reviews.grammar import sample_corpus

BASE_SHA256 = "2b33eeb8a945e5f426de4d0f1e5d32b768221c9c51f71f6aa6058d536b092e83"
"""sha256 of the original base policy's ``model.safetensors``: other studies' numbers rest on it."""

BUILT = [name for name, size in POLICY_SIZES.items() if size.threads is not None]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_base_policy_is_byte_identical() -> None:
    assert POLICY_SIZES["base"].folder == get_task("reviews").policy_path
    assert _sha256(POLICY_SIZES["base"].folder / "model.safetensors") == BASE_SHA256


def test_sizes_span_ten_times_and_match_their_specs() -> None:
    counts = {}
    for name, size in POLICY_SIZES.items():
        model = load_policy(size.folder)
        cfg = model.config
        assert (cfg.n_embd, cfg.n_layer, cfg.n_head) == (
            size.spec.n_embd, size.spec.n_layer, size.spec.n_head
        ), name  # fmt: skip
        counts[name] = sum(p.numel() for p in model.parameters())
    # GPT-2 with tied embeddings: 12 h^2 + 13 h per layer, (84 + 64) h embeddings, 2 h final
    # norm; h = 32, 2 layers: 2 * 12,704 + 4,736 + 64 = 30,208; h = 64, 2 layers:
    # 2 * 49,984 + 9,472 + 128 = 109,568; h = 128, 3 layers: 3 * 198,272 + 18,944 + 256 = 614,016
    assert counts == {"tiny": 30_208, "small": 109_568, "base": 614_016}
    assert counts["base"] / counts["tiny"] >= 10


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    specs = {(POLICY_SIZES[n].spec.n_sentences, POLICY_SIZES[n].spec.seed) for n in BUILT}
    assert len(specs) == 1  # one recipe: every size reads the same corpus
    n, seed = specs.pop()
    return sample_corpus(n, seed=seed)


@pytest.mark.parametrize("name", BUILT)
def test_shipped_weights_are_their_recipes_build(name: str, corpus: list[str]) -> None:
    # The full build takes minutes; its record pins the shipped file (sha256), the weights at
    # initialisation (bit for bit) and the tensor norms after the first steps, which are rebuilt
    # here with the recorded thread count: the recipe still produces the trajectory the shipped
    # weights came from (to float rounding: other library versions change a step's last bits).
    size = POLICY_SIZES[name]
    record = json.loads((size.folder / "BUILD.json").read_text())
    assert record["sha256"] == _sha256(size.folder / "model.safetensors")
    assert record["spec"] == dataclasses.asdict(size.spec)
    assert record["threads"] == size.threads
    threads = torch.get_num_threads()
    digests, norms = rebuild_fingerprint(size.spec, threads=size.threads, corpus=corpus)
    assert digests["init"] == record["digests"]["init"]
    assert norms.keys() == record["norms"].keys()
    for key, values in norms.items():
        assert values == pytest.approx(record["norms"][key], rel=1e-4)
    assert torch.get_num_threads() == threads  # restored


def test_fingerprints_tell_recipes_apart(corpus: list[str]) -> None:
    """Two steps at twice the learning rate move some tensor norm far beyond the tolerance the
    shipped records are checked with."""
    spec = POLICY_SIZES["small"].spec
    fast = dataclasses.replace(spec, lr=2e-3)
    other = rebuild_fingerprint(fast, threads=1, corpus=corpus, steps=2)
    same = rebuild_fingerprint(spec, threads=1, corpus=corpus, steps=2)
    assert other[0]["init"] == same[0]["init"] and other[0]["step_2"] != same[0]["step_2"]
    assert other[1]["step_2"] != pytest.approx(same[1]["step_2"], rel=1e-3)


def test_policy_size_resolves_to_its_folder() -> None:
    cpu = torch.device("cpu")
    task = resolve_task(name="reviews", device=cpu, policy_size="small")
    assert task.policy_path == task.tokenizer_path == POLICY_SIZES["small"].folder
    assert resolve_task(name="reviews", device=cpu).policy_path == POLICY_SIZES["base"].folder
    with pytest.raises(ValueError, match="no policy size 'huge'"):
        resolve_task(name="reviews", device=cpu, policy_size="huge")


def test_task_build_refuses_an_unknown_size(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from proxygap.cli import app

    result = CliRunner().invoke(app, ["task", "build", "--out", str(tmp_path), "--size", "huge"])
    assert result.exit_code == 2 and "--size 'huge'" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"policy_size": "huge"}, "task: policy_size 'huge' is not a base-policy size"),
        ({"policy_size": "small", "policy": "/x"}, "cannot be combined with policy"),
    ],
)
def test_bad_policy_size_names_the_field(task: dict, message: str) -> None:
    from proxygap.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config({"proxies": [{"name": "rm"}], "task": task})
