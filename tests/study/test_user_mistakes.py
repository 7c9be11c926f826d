"""A researcher's mistakes with their own task and data: each stops ``proxygap run`` with exit
code 2 and a message whose first line names the file, field or value, before any run folder is
made, and leaves everything that existed as it was."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from proxygap.cli import app

GOLD_MODULE = """
VALUE = 3

def short(prompts, responses):
    return [0.0]

def words(prompts, responses):
    return ["high"] * len(responses)

def broken(prompts, responses):
    return 1 / 0

def nan(prompts, responses):
    return [float("nan")] * len(responses)

def const(prompts, responses):
    return [1.0] * len(responses)
"""

Case = Callable[[Path, dict[str, Any]], None]


def _task(**kw: Any) -> Case:
    def edit(tmp: Path, cfg: dict[str, Any]) -> None:
        cfg["task"].update({k: (v(tmp) if callable(v) else v) for k, v in kw.items()})

    return edit


def _section(section: str, **kw: Any) -> Case:
    def edit(tmp: Path, cfg: dict[str, Any]) -> None:
        cfg[section] = {**cfg[section], **kw}

    return edit


def _file(name: str, content: bytes, field: str = "prompts", section: str = "task") -> Case:
    def edit(tmp: Path, cfg: dict[str, Any]) -> None:
        (tmp / name).write_bytes(content)
        cfg[section][field] = str(tmp / name)

    return edit


def _pairs(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


GOOD = json.dumps({"prompt": "p", "chosen": "good", "rejected": "bad"})
MULTI = json.dumps(
    {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
)
UNSHARED = json.dumps(
    {
        "chosen": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "v"}, {"role": "assistant", "content": "b"}],
    }
)
CUDA = torch.version.cuda is not None

# id -> (edit of the config, text the message's first line contains)
MISTAKES: dict[str, tuple[Case, str]] = {
    "prompt file missing": (_task(prompts=lambda t: str(t / "nope.txt")), "prompt file '"),
    "prompt file is a folder": (_task(prompts=lambda t: str(t)), "is a folder, not a file"),
    "prompt JSONL bad line": (
        _file("p.jsonl", _pairs('{"prompt": "a"}', '{"prompt": ')),
        "p.jsonl: line 2: not valid JSON (Expecting value, column 12)",
    ),
    "prompt JSONL missing field": (
        _file("p.jsonl", _pairs('{"text": "a"}')),
        "p.jsonl: line 1: missing key 'prompt' (keys: ['text'])",
    ),
    "prompt JSONL line not an object": (
        _file("p.jsonl", _pairs("[1, 2]")),
        "p.jsonl: line 1: expected a JSON object, got list",
    ),
    "prompt file not UTF-8": (
        _file("p.txt", b"the plot\n\xff the cast\n"),
        "p.txt: line 2: not UTF-8 (byte 0xff at column 1)",
    ),
    "prompt file empty": (_file("p.txt", b"\n  \n"), "p.txt: the file holds no prompts"),
    "one distinct prompt": (
        _file("p.txt", b"the plot\nthe plot\n"),
        "cannot hold out 0.2 of 1 distinct prompt(s)",
    ),
    "all prompts held out": (_task(heldout_prompts=40), "cannot hold out 40 of 40 distinct"),
    "more best-of-n prompts than held out": (
        _section("bon", n_prompts=20),
        "bon.n_prompts (20) exceeds the 8 held-out prompts of task.prompts",
    ),
    "preference file shorter than needed": (
        _section("preferences", n_pairs=90),
        "has 100 pairs; preferences.n_pairs + n_heldout = 90 + 24 = 114",
    ),
    "preference file missing": (
        _section("preferences", file="nowhere.jsonl"),
        "preference file 'nowhere.jsonl' does not exist",
    ),
    "preference file not UTF-8": (
        _file(
            "d.jsonl",
            _pairs(GOOD, GOOD.replace("p", "q")) + b'{"prompt": "\xe9"}\n',
            "file",
            "preferences",
        ),  # fmt: skip
        "d.jsonl: line 3: not UTF-8 (byte 0xe9 at column 13)",
    ),
    "preference file bad JSON": (
        _file("d.jsonl", _pairs(GOOD, "{oops"), "file", "preferences"),
        "d.jsonl: line 2: not valid JSON (Expecting property name enclosed in double quotes",
    ),
    "preference row missing rejected": (
        _file("d.jsonl", _pairs('{"prompt": "p", "chosen": "c"}'), "file", "preferences"),
        "d.jsonl: line 1: missing key(s) ['rejected']",
    ),
    "preference chosen equals rejected": (
        _file(
            "d.jsonl",
            _pairs('{"chosen": "the plot", "rejected": "the plot"}'),
            "file",
            "preferences",
        ),  # fmt: skip
        "d.jsonl: line 1: chosen and rejected are the same text",
    ),
    "conversational prompt of two turns": (
        _file("d.jsonl", _pairs(MULTI), "file", "preferences"),
        "line 1: prompt: a prompt must be one user message, got roles ['system', 'user']",
    ),
    "conversations sharing no prompt": (
        _file("d.jsonl", _pairs(UNSHARED), "file", "preferences"),
        "line 1: chosen and rejected must share every message but their last",
    ),
    "Bradley-Terry labels on a preference file": (
        lambda t, c: c["proxies"][0].update(labels="bradley_terry"),
        "invalid config",
    ),
    "device gpu": (_section("runtime", device="gpu"), "invalid config"),
    "device cuda on a CPU build": (
        _section("runtime", device="cuda"),
        "runtime.device 'cuda': this torch build" if not CUDA else "",
    ),
    "device cuda:3 on a CPU build": (
        _section("runtime", device="cuda:3"),
        "runtime.device 'cuda:3': this" if not CUDA else "",
    ),
    "classifier as policy": (
        _task(policy=lambda t: str(t / "own" / "gold")),
        "holds a GPT2ForSequenceClassification (a classifier, e.g. a reward model); the policy",
    ),
    "causal LM as gold": (
        _task(gold=lambda t: str(t / "own" / "policy")),
        "task.gold: reward model path",
    ),
    "gold folder missing": (
        _task(gold=lambda t: str(t / "no-gold")),
        "is not a directory (nothing to load)",
    ),
    "gold module not importable": (
        _task(gold="no_such_gold_module:score"),
        "task.gold 'no_such_gold_module:score': cannot import module 'no_such_gold_module'",
    ),
    "gold function missing": (
        _task(gold="mistake_gold:nope"),
        "task.gold 'mistake_gold:nope': module 'mistake_gold' has no 'nope'",
    ),
    "gold not a function": (
        _task(gold="mistake_gold:VALUE"),
        "task.gold 'mistake_gold:VALUE' is a int, not a function",
    ),
    "gold function of wrong length": (
        _task(gold="mistake_gold:short"),
        "task.gold 'mistake_gold:short' returned shape (1,) for 32 texts",
    ),
    "gold function returning words": (
        _task(gold="mistake_gold:words"),
        "task.gold 'mistake_gold:words' must return one number per text; got list",
    ),
    "gold function raising": (
        _task(gold="mistake_gold:broken"),
        "task.gold 'mistake_gold:broken' raised ZeroDivisionError: division by zero",
    ),
    "gold function returning NaN": (
        _task(gold="mistake_gold:nan"),
        "task.gold 'mistake_gold:nan' returned 32 non-finite value(s) of 32",
    ),
    "gold constant on the policy": (
        _task(gold="mistake_gold:const"),
        "task.gold 'mistake_gold:const' gives all 32 base-policy samples of the policy",
    ),
    "built-in gold constant on a user's policy": (
        lambda t, c: c.update(
            task={"policy": str(t / "own" / "policy")}, preferences={"n_pairs": 64}
        ),
        "the gold of task 'reviews' gives all 32 base-policy samples of the policy",
    ),
    "chat template the tokenizer lacks": (
        _task(chat_template=True),
        "task.chat_template is true but the tokenizer at",
    ),
    "task from prompts without gold": (_task(gold=None), "invalid config"),
    "chat template on the built-in task": (
        lambda t, c: c.update(task={"chat_template": True}),
        "invalid config",
    ),
    "proxy path missing": (
        lambda t, c: c["proxies"].append({"name": "given", "path": str(t / "no-rm")}),
        "proxies[given].path: reward model path",
    ),
    "causal LM as a proxy": (
        lambda t, c: c["proxies"].append({"name": "given", "path": str(t / "own" / "policy")}),
        "holds a GPT2LMHeadModel (a language model), not a sequence-classification model",
    ),
    "task named like the built-in one": (_task(name="reviews"), "invalid config"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture
def workspace(
    own_files: dict[str, Path], own_study: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, dict[str, Any]]:
    """A folder with the user's files (symlinked), a gold module, and a runs folder holding an
    earlier run; the current folder (gold modules import from there)."""
    (tmp_path / "own").mkdir()
    for name, path in own_files.items():
        (tmp_path / "own" / name).symlink_to(path)
    (tmp_path / "mistake_gold.py").write_text(GOLD_MODULE)
    (tmp_path / "runs" / "earlier").mkdir(parents=True)
    (tmp_path / "runs" / "earlier" / "summary.json").write_text('{"kept": true}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mistake_gold", raising=False)
    files = {k: tmp_path / "own" / k for k in own_files}
    return tmp_path, own_study(files, name="mine", rl=None, daa=None)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_mistake_exits_2_naming_it_and_changes_nothing(
    mistake: str, workspace: tuple[Path, dict[str, Any]]
) -> None:
    edit, expected = MISTAKES[mistake]
    if not expected:
        pytest.skip("this machine has CUDA")
    tmp, cfg = workspace
    edit(tmp, cfg)
    (tmp / "study.yaml").write_text(yaml.safe_dump(cfg))
    before = _snapshot(tmp)
    result = CliRunner().invoke(app, ["run", "study.yaml", "--runs-dir", "runs"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    # the message's first line (progress bars of model loading may come before it)
    first = next(line for line in result.output.splitlines() if line.startswith("error: "))
    assert expected in first, first
    assert _snapshot(tmp) == before  # no run folder, no file touched
    assert sorted(p.name for p in (tmp / "runs").iterdir()) == ["earlier"]


def test_config_path_typo_says_the_file_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mine.yaml").write_text("proxies: [{name: rm}]\n")
    for typo in ("configs/mien.yaml", "mien.yaml"):
        result = CliRunner().invoke(app, ["run", str(tmp_path / typo), "--runs-dir", "r"])
        assert result.exit_code == 2
        first = result.output.strip().splitlines()[0]
        assert first == f"error: config file {str(tmp_path / typo)!r} does not exist"
        assert "shipped configs" not in result.output
    assert not (tmp_path / "r").exists()
