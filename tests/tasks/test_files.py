"""Tasks resolved from a config's fields: a task from files, the built-in task with its gold
replaced (and every evaluator then scoring with that gold), and gold functions' checks."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from proxygap.errors import NonFiniteError
from proxygap.models.loading import load_policy, load_reward_model, load_tokenizer
from proxygap.optimize.evaluate import PolicyEvaluator
from proxygap.rewards.reward_model import score_texts
from proxygap.tasks import Joined, get_task, resolve_task
from proxygap.tasks.gold import GoldError, function_gold

CPU = torch.device("cpu")


def test_join_keeps_prompt_and_response_through_pickling() -> None:
    task = get_task("reviews")
    texts = task.join(["the plot", ""], ["was good .", "bad ."])
    assert texts == ["the plot was good .", "bad ."]  # equal to plain strings
    assert isinstance(texts[0], Joined) and (texts[0].prompt, texts[0].response) == (
        "the plot",
        "was good .",
    )
    back = pickle.loads(pickle.dumps(texts))
    assert back == texts and back[1].prompt == "" and back[1].response == "bad ."


def test_gold_function_receives_parts_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    module = type(sys)("gold_fn_for_test")
    calls: list[tuple[list[str], list[str]]] = []

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        calls.append((prompts, responses))
        return [float(len(r)) for r in responses]

    module.score = score  # type: ignore[attr-defined]
    module.bad = lambda p, r: [float("nan")] * len(r)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gold_fn_for_test", module)
    gold = function_gold("gold_fn_for_test:score", raw_prompts={"<u>hi<a>": "hi"}, separator="")
    texts = [Joined("<u>hi<a>yes", "<u>hi<a>", "yes"), "plain text"]
    np.testing.assert_array_equal(gold(texts), [3.0, 10.0])
    # the prompt as written; a plain text without a separator is all response
    assert calls == [(["hi", ""], ["yes", "plain text"])]
    nan = function_gold("gold_fn_for_test:bad", raw_prompts={}, separator=" ")
    with pytest.raises(NonFiniteError, match="returned 2 non-finite value"):
        nan(["a b", "c d"])
    with pytest.raises(GoldError, match="module 'gold_fn_for_test' has no 'missing'"):
        function_gold("gold_fn_for_test:missing", raw_prompts={}, separator=" ")


def test_a_task_from_files(own_files: dict[str, Path]) -> None:
    task = resolve_task(
        name="mine", device=CPU, prompts=str(own_files["prompts.txt"]),
        policy=str(own_files["policy"]), gold=str(own_files["gold"]), max_new_tokens=7, seed=3,
    )  # fmt: skip
    prompts = own_files["prompts.txt"].read_text().splitlines()
    held = {prompts[i] for i in task.record["split"]["heldout"]}
    assert task.record["heldout_prompts"] == len(held) == 8
    assert set(task.prompts(8, seed=1, heldout=True)) == held
    assert held.isdisjoint(task.prompts(100, seed=1))
    assert task.max_new_tokens == 7 and task.wellformed is None and not task.components
    # its gold is the gold model, as proxygap scores any reward model
    texts = task.join(["the plot", "the cast"], ["was good .", "was bad ."])
    model = load_reward_model(own_files["gold"])
    want = score_texts(model, load_tokenizer(own_files["gold"]), texts)
    np.testing.assert_array_equal(task.gold(texts), want)


def test_a_gold_model_replaces_the_built_in_gold_everywhere(own_files: dict[str, Path]) -> None:
    """With ``task.gold`` set, the built-in task's gold is replaced for every caller: the policy
    evaluators of RL and DAA score with it too (they read the task's gold)."""
    builtin = get_task("reviews")
    task = resolve_task(name="reviews", device=CPU, gold=str(own_files["gold"]))
    assert task.prompts is builtin.prompts and not task.components
    tok = load_tokenizer(builtin.tokenizer_path)
    policy = load_policy(builtin.policy_path)
    ev: Any = PolicyEvaluator.for_task(policy, tok, task, proxy=None, n_prompts=2, n_per_prompt=2)
    texts = task.join(ev.prompts, ["was good .", "was bad ."])
    np.testing.assert_array_equal(ev.gold(texts), task.gold(texts))
    assert not np.array_equal(task.gold(texts), builtin.gold(texts))
