"""Preference rows in TRL's layouts read as the explicit ``{prompt, chosen, rejected}`` rows they
stand for, and prompt files (text or JSONL) with their seeded training / held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from proxygap.data.jsonl import DataFileError
from proxygap.data.preferences import read_jsonl
from proxygap.data.prompts import read_prompts, split_prompts


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


ROWS = {
    "standard": {"prompt": "The sky is", "chosen": "blue .", "rejected": "green ."},
    # the texts part inside the word "b|lue" / "b|rown": the shared "b" goes to the responses
    "implicit": {"chosen": "The sky is blue .", "rejected": "The sky is brown ."},
    "conversational": {
        "prompt": _user("The sky is"),
        "chosen": _assistant("blue ."),
        "rejected": _assistant("green ."),
    },
    "conversational-implicit": {
        "chosen": _user("The sky is") + _assistant("blue ."),
        "rejected": _user("The sky is") + _assistant("green ."),
    },
}
EXPECTED = {
    "standard": ("The sky is", "blue .", "green ."),
    "implicit": ("The sky is", "blue .", "brown ."),
    "conversational": ("The sky is", "blue .", "green ."),
    "conversational-implicit": ("The sky is", "blue .", "green ."),
}


@pytest.mark.parametrize("layout", list(ROWS))
def test_trl_layouts_read_as_explicit_rows(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({**ROWS[layout], "gold_chosen": 1, "gold_rejected": 0}) + "\n")
    pairs = read_jsonl(path)
    assert (pairs.prompt[0], pairs.chosen[0], pairs.rejected[0]) == EXPECTED[layout]
    assert pairs.gold_chosen is not None and pairs.gold_chosen.tolist() == [1.0]


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        # hand cases: common prefix, cut back to the last whitespace when inside a word
        ("a b c", "a b d", ("a b", "c", "d")),
        ("good film", "great film", ("", "good film", "great film")),
        ("x\ny z", "x\ny w", ("x\ny", "z", "w")),
        ("same start", "other", ("", "same start", "other")),
    ],
)
def test_implicit_prompt_is_the_common_prefix_at_a_word_boundary(
    tmp_path: Path, chosen: str, rejected: str, expected: tuple[str, str, str]
) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n")
    pairs = read_jsonl(path)
    assert (pairs.prompt[0], pairs.chosen[0], pairs.rejected[0]) == expected
    # the parts join back to the texts
    for text, part in ((chosen, pairs.chosen[0]), (rejected, pairs.rejected[0])):
        assert text.replace("\n", " ").split() == (pairs.prompt[0] + " " + part).split()


def test_prompt_files_as_text_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"\xef\xbb\xbfthe plot\r\n\n  \nthe cast was\n")  # BOM, CRLF, blank lines
    assert read_prompts(txt) == ["the plot", "the cast was"]
    jsonl = tmp_path / "p.jsonl"
    rows = [{"prompt": "the plot"}, {"prompt": _user("the cast")}, {"prompt": "x", "id": 3}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_prompts(jsonl) == ["the plot", "the cast", "x"]
    jsonl.write_text('{"prompt": ""}\n{"prompt": 3}\n')
    with pytest.raises(DataFileError) as err:
        read_prompts(jsonl)
    first, *rest = str(err.value).splitlines()
    assert first == f"{jsonl}: 2 problem(s), first line 1: empty prompt:"
    assert rest == [
        "  line 1: empty prompt",
        "  line 2: prompt must be a string or one user message, got 3",
    ]


def test_split_is_seeded_disjoint_and_keeps_repeats_together() -> None:
    prompts = [f"p{i % 30}" for i in range(45)]  # p0..p14 twice
    a = split_prompts(prompts, heldout=0.2, seed=5)
    assert a == split_prompts(prompts, heldout=0.2, seed=5)
    assert a != split_prompts(prompts, heldout=0.2, seed=6)
    assert sorted(a.train + a.heldout) == list(range(45))
    held = {prompts[i] for i in a.heldout}
    assert len(held) == 6  # round(0.2 x 30 distinct)
    assert held.isdisjoint(prompts[i] for i in a.train)
    four = split_prompts(prompts, heldout=4, seed=0)  # a number of distinct prompts
    assert len({prompts[i] for i in four.heldout}) == 4
    with pytest.raises(DataFileError, match="cannot hold out 30 of 30 distinct"):
        split_prompts(prompts, heldout=30, seed=0)


def test_draw_cycles_through_the_pool_evenly() -> None:
    from proxygap.tasks.files import draw

    pool = [f"p{i}" for i in range(7)]
    got = draw(pool, 30, seed=1)
    counts = np.unique(got, return_counts=True)[1]
    assert len(counts) == 7 and set(counts) <= {4, 5}  # 30 = 4 x 7 + 2
    assert draw(pool, 5, seed=1) == got[:5] and len(set(got[:7])) == 7
