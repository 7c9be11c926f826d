"""Tests for proxygap.data.preferences: gold labels, label noise, JSONL files, atomic writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from proxygap.data.preferences import (
    Pairs,
    PreferenceFileError,
    gold_preferences,
    label_pairs,
    read_jsonl,
    relabel,
    write_jsonl,
)
from proxygap.store import atomic
from proxygap.store.atomic import atomic_write, atomic_write_json, atomic_write_text


def four_sigma(p: float, n: int) -> float:
    """4 standard deviations of a binomial proportion with success probability p over n draws."""
    return 4.0 * math.sqrt(p * (1.0 - p) / n)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- gold_preferences


def test_deterministic_labels_pick_the_higher_gold() -> None:
    rng = np.random.default_rng(0)
    ga, gb = rng.normal(size=5_000), rng.normal(size=5_000)
    a_wins = gold_preferences(ga, gb, rng=np.random.default_rng(1))
    assert a_wins.dtype == np.bool_ and a_wins.shape == (5_000,)
    np.testing.assert_array_equal(a_wins, ga > gb)
    # hand case: 2 > 1, -1 < 0, 6 > -8
    got = gold_preferences(
        np.array([2.0, -1.0, 6.0]), np.array([1.0, 0.0, -8.0]), rng=np.random.default_rng(0)
    )
    assert got.tolist() == [True, False, True]


def test_deterministic_ties_are_a_fair_coin() -> None:
    n = 20_000
    g = np.full(n, 1.5)
    a_wins = gold_preferences(g, g.copy(), rng=np.random.default_rng(2))
    # p = 0.5: 4 sigma = 4 * sqrt(0.25 / 20000) = 0.01414
    assert abs(a_wins.mean() - 0.5) < four_sigma(0.5, n)
    # the coin depends on the generator: same seed same coins
    again = gold_preferences(g, g.copy(), rng=np.random.default_rng(2))
    np.testing.assert_array_equal(a_wins, again)


@pytest.mark.parametrize("noise", [0.1, 0.25, 0.5])
def test_label_noise_flips_at_the_requested_rate(noise: float) -> None:
    n = 20_000
    rng = np.random.default_rng(3)
    ga, gb = rng.normal(size=n), rng.normal(size=n)
    a_wins = gold_preferences(ga, gb, noise=noise, rng=np.random.default_rng(4))
    flipped = (a_wins != (ga > gb)).mean()
    # noise 0.25: sd = sqrt(0.25 * 0.75 / 20000) = 0.00306, 4 sigma = 0.01225
    assert abs(flipped - noise) < four_sigma(noise, n)


def test_noise_zero_flips_nothing() -> None:
    rng = np.random.default_rng(5)
    ga, gb = rng.normal(size=1_000), rng.normal(size=1_000)
    got = gold_preferences(ga, gb, noise=0.0, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(got, ga > gb)


@pytest.mark.parametrize(
    ("diff", "temperature"),
    [(1.0, 1.0), (1.0, 2.0), (-2.0, 0.5), (0.0, 1.0), (3.0, 1.0)],
)
def test_bradley_terry_win_rate_is_sigmoid_of_scaled_diff(diff: float, temperature: float) -> None:
    # P(a wins) = sigma(diff / T): sigma(1) = 0.731059, sigma(0.5) = 0.622459,
    # sigma(-4) = 0.017986, sigma(0) = 0.5, sigma(3) = 0.952574
    n = 20_000
    p = sigmoid(diff / temperature)
    gb = np.linspace(-3.0, 3.0, n)  # the level does not matter, only the difference
    a_wins = gold_preferences(
        gb + diff, gb, mode="bradley_terry", temperature=temperature, rng=np.random.default_rng(7)
    )
    assert abs(a_wins.mean() - p) < four_sigma(p, n)


def test_bradley_terry_hand_sigmoid_values() -> None:
    assert sigmoid(1.0) == pytest.approx(0.7310585786300049, abs=1e-15)
    assert sigmoid(-4.0) == pytest.approx(0.01798620996209156, abs=1e-15)


def test_bradley_terry_with_noise_composes() -> None:
    # flipped BT: P(a wins) = (1 - e) * s + e * (1 - s) with s = sigma(1) = 0.731059, e = 0.25:
    # 0.75 * 0.731059 + 0.25 * 0.268941 = 0.548294 + 0.067235 = 0.615529
    n = 20_000
    g = np.zeros(n)
    a_wins = gold_preferences(
        g + 1.0, g, mode="bradley_terry", noise=0.25, rng=np.random.default_rng(8)
    )
    p = 0.75 * sigmoid(1.0) + 0.25 * (1 - sigmoid(1.0))
    assert p == pytest.approx(0.6155292893150025, abs=1e-12)
    assert abs(a_wins.mean() - p) < four_sigma(p, n)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "random"}, "unknown label mode 'random'; allowed: ['deterministic', 'bradley"),
        ({"noise": 0.6}, "label noise must be in [0, 0.5], got 0.6"),
        ({"noise": -0.1}, "label noise must be in [0, 0.5], got -0.1"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"temperature": -1.0}, "temperature must be > 0, got -1.0"),
    ],
)
def test_gold_preferences_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        gold_preferences(np.zeros(2), np.ones(2), rng=np.random.default_rng(0), **kwargs)
    assert message in str(err.value)


# ---------------------------------------------------------------- label_pairs / relabel


def synthetic(n: int, seed: int) -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prompts = [f"p{i}" for i in range(n)]
    a = [f"a{i}" for i in range(n)]
    b = [f"b{i}" for i in range(n)]
    return prompts, a, b, rng.normal(size=n), rng.normal(size=n)


def test_label_pairs_fields_are_consistent() -> None:
    prompts, a, b, ga, gb = synthetic(2_000, seed=9)
    gold_of = dict(zip(a, ga, strict=True)) | dict(zip(b, gb, strict=True))
    pairs = label_pairs(prompts, a, b, ga, gb, noise=0.25, seed=3)
    assert len(pairs) == 2_000 and pairs.prompt == prompts
    for i in range(len(pairs)):
        assert {pairs.chosen[i], pairs.rejected[i]} == {a[i], b[i]}
        assert pairs.gold_chosen[i] == gold_of[pairs.chosen[i]]
        assert pairs.gold_rejected[i] == gold_of[pairs.rejected[i]]
    # with 25 % noise the chosen has the lower gold on ~25 % of pairs (4 sigma = 0.0387)
    wrong = (pairs.gold_chosen < pairs.gold_rejected).mean()
    assert abs(wrong - 0.25) < four_sigma(0.25, 2_000)


def test_label_pairs_noise_free_always_chooses_higher_gold_and_is_seeded() -> None:
    prompts, a, b, ga, gb = synthetic(500, seed=10)
    pairs = label_pairs(prompts, a, b, ga, gb)
    assert (pairs.gold_chosen > pairs.gold_rejected).all()
    np.testing.assert_array_equal(pairs.gold_chosen, np.maximum(ga, gb))
    expected_chosen = [x if gx > gy else y for x, y, gx, gy in zip(a, b, ga, gb, strict=True)]
    assert pairs.chosen == expected_chosen
    noisy1 = label_pairs(prompts, a, b, ga, gb, noise=0.3, seed=1)
    noisy2 = label_pairs(prompts, a, b, ga, gb, noise=0.3, seed=1)
    noisy3 = label_pairs(prompts, a, b, ga, gb, noise=0.3, seed=2)
    assert noisy1.chosen == noisy2.chosen
    assert noisy1.chosen != noisy3.chosen


def test_label_pairs_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        label_pairs(["p", "q"], ["a", "b"], ["c"], np.zeros(2), np.zeros(2))


def test_relabel_noise_zero_equals_deterministic_labelling() -> None:
    prompts, a, b, ga, gb = synthetic(1_000, seed=11)
    noisy = label_pairs(prompts, a, b, ga, gb, noise=0.25, seed=4)
    assert (noisy.gold_chosen < noisy.gold_rejected).sum() > 150  # really noisy: ~250 flipped
    clean = relabel(noisy, noise=0.0, seed=5)
    reference = label_pairs(prompts, a, b, ga, gb, noise=0.0, seed=0)
    assert clean.prompt == reference.prompt
    assert clean.chosen == reference.chosen
    assert clean.rejected == reference.rejected
    np.testing.assert_array_equal(clean.gold_chosen, reference.gold_chosen)
    np.testing.assert_array_equal(clean.gold_rejected, reference.gold_rejected)


def test_relabel_without_gold_flips_the_given_labels_as_labelling_with_gold_would() -> None:
    """Pairs without gold scores keep their own order as the clean label; ``noise`` flips the
    same rows that labelling the same pairs from (tie-free) gold scores flips."""
    prompts, a, b, ga, gb = synthetic(2_000, seed=4)
    with_gold = label_pairs(prompts, a, b, ga, gb)
    bare = Pairs(with_gold.prompt, with_gold.chosen, with_gold.rejected)
    for noise, seed in [(0.0, 0), (0.25, 3), (0.5, 9)]:
        got = relabel(bare, noise=noise, seed=seed)
        want = relabel(with_gold, noise=noise, seed=seed)
        assert (got.chosen, got.rejected) == (want.chosen, want.rejected)
        assert got.gold_chosen is None
    flipped = np.mean(
        [
            c != c0
            for c, c0 in zip(relabel(bare, noise=0.25, seed=1).chosen, bare.chosen, strict=True)
        ]
    )
    assert abs(flipped - 0.25) < four_sigma(0.25, 2_000)
    with pytest.raises(ValueError, match="label mode 'bradley_terry' draws labels from gold"):
        relabel(bare, mode="bradley_terry")


def test_subset_keeps_rows_aligned() -> None:
    prompts, a, b, ga, gb = synthetic(10, seed=12)
    pairs = label_pairs(prompts, a, b, ga, gb)
    sub = pairs.subset([7, 2])
    assert sub.prompt == ["p7", "p2"]
    assert sub.chosen == [pairs.chosen[7], pairs.chosen[2]]
    np.testing.assert_array_equal(sub.gold_chosen, pairs.gold_chosen[[7, 2]])
    np.testing.assert_array_equal(sub.gold_rejected, pairs.gold_rejected[[7, 2]])
    no_gold = Pairs(prompt=["x", "y"], chosen=["a", "b"], rejected=["c", "d"]).subset([1])
    assert (no_gold.prompt, no_gold.gold_chosen) == (["y"], None)


# ---------------------------------------------------------------- JSONL round trip


def test_write_read_round_trip_with_gold(tmp_path: Path) -> None:
    pairs = Pairs(
        prompt=["the plot", "", "i loved"],
        chosen=["was good .", "the cast was superb .", "the café ."],
        rejected=["was bad .", "the cast was weak .", "the music ."],
        gold_chosen=np.array([1.0, 3.0, 0.1 + 0.2]),  # 0.30000000000000004 survives exactly
        gold_rejected=np.array([-1.0, -1.0, -8.0]),
    )
    path = tmp_path / "sub" / "pairs.jsonl"
    write_jsonl(pairs, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {
        "prompt": "the plot",
        "chosen": "was good .",
        "rejected": "was bad .",
        "gold_chosen": 1.0,
        "gold_rejected": -1.0,
    }
    assert "café" in lines[2]  # written as UTF-8, not escaped
    back = read_jsonl(path)
    assert (back.prompt, back.chosen, back.rejected) == (
        pairs.prompt,
        pairs.chosen,
        pairs.rejected,
    )
    np.testing.assert_array_equal(back.gold_chosen, pairs.gold_chosen)
    np.testing.assert_array_equal(back.gold_rejected, pairs.gold_rejected)
    assert back.gold_chosen.dtype == np.float64


def test_write_read_round_trip_without_gold(tmp_path: Path) -> None:
    pairs = Pairs(prompt=["a", "b"], chosen=["x", "y"], rejected=["z", "w"])
    path = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, path)
    assert json.loads(path.read_text().splitlines()[1]) == {
        "prompt": "b",
        "chosen": "y",
        "rejected": "w",
    }
    back = read_jsonl(path)
    assert (back.prompt, back.chosen, back.rejected) == (["a", "b"], ["x", "y"], ["z", "w"])
    assert back.gold_chosen is None and back.gold_rejected is None


def test_read_skips_blank_lines_and_accepts_integer_gold(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 2, "gold_rejected": -1}
    path.write_text("\n" + json.dumps(row) + "\n   \n")
    back = read_jsonl(path)
    assert back.chosen == ["a"]
    assert back.gold_chosen.tolist() == [2.0] and back.gold_rejected.tolist() == [-1.0]


# ---------------------------------------------------------------- JSONL validation


MISSING = object()


def row(**kw: object) -> str:
    base: dict[str, object] = {"prompt": "p", "chosen": "good", "rejected": "bad"}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not MISSING})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([row(rejected=MISSING)], "line 1: missing key(s) ['rejected']"),
        ([row(prompt=MISSING, chosen=MISSING)], "line 1: missing key(s) ['chosen']"),
        ([row(chosen=3)], "line 1: ['chosen'] must be strings"),
        ([row(prompt=None)], "line 1: ['prompt'] must be strings"),
        ([row(rejected="   ")], "line 1: empty text in ['rejected']"),
        ([row(chosen="")], "line 1: empty text in ['chosen']"),
        (['{"prompt": "p", "chosen": '], "line 1: not valid JSON (Expecting value, column 27)"),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
        (['"text"'], "line 1: expected a JSON object, got str"),
        ([row(), row(), row()], "line 2: duplicate of line 1"),
        ([row(chosen="same", rejected="same")], "line 1: chosen and rejected are the same text"),
        (
            [
                '{"prompt": "p", "chosen": "a", "rejected": "b", '
                '"gold_chosen": Infinity, "gold_rejected": 0}'
            ],
            "line 1: gold_chosen must be a finite number, got inf",
        ),
        (
            [
                '{"prompt": "p", "chosen": "a", "rejected": "b", '
                '"gold_chosen": 1, "gold_rejected": NaN}'
            ],
            "line 1: gold_rejected must be a finite number, got nan",
        ),
        (
            [row(gold_chosen="1.0", gold_rejected=0.0)],
            "line 1: gold_chosen must be a finite number, got '1.0'",
        ),
        (
            [row(gold_chosen=True, gold_rejected=0.0)],
            "line 1: gold_chosen must be a finite number, got True",
        ),
        (
            [row(gold_chosen=1.0, gold_rejected=0.0), row(prompt="q")],
            "gold_chosen/gold_rejected present on 1 of 2 rows: give them on every row or on none",
        ),
        ([], "the file holds no preference pairs"),
        (["", "   "], "the file holds no preference pairs"),
    ],
)
def test_read_jsonl_reports_each_problem(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(PreferenceFileError) as err:
        read_jsonl(path, duplicates="error")
    text = str(err.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert isinstance(err.value, ValueError)


def test_read_jsonl_duplicates_count_once_per_repeat(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join([row(), row(prompt="q"), row(), row()]) + "\n")
    with pytest.raises(PreferenceFileError) as err:
        read_jsonl(path, duplicates="error")
    text = str(err.value)
    assert "2 problem(s)" in text
    assert "line 3: duplicate of line 1" in text and "line 4: duplicate of line 1" in text


def test_read_jsonl_duplicates_warn_by_default_and_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join([row(), row(prompt="q"), row()]) + "\n")
    with pytest.warns(UserWarning, match=r"1 duplicate row\(s\) kept: line 3: duplicate of line 1"):
        pairs = read_jsonl(path)
    assert pairs.prompt == ["p", "q", "p"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_jsonl(path, duplicates="keep")) == 3
    with pytest.raises(ValueError, match="duplicates must be one of"):
        read_jsonl(path, duplicates="drop")


def test_read_jsonl_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(PreferenceFileError, match="does not exist"):
        read_jsonl(path)
    with pytest.raises(PreferenceFileError, match="is a folder, not a file"):
        read_jsonl(tmp_path)


def test_read_jsonl_reports_all_errors_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    lines = [
        row(),  # 1: fine
        "not json",  # 2
        row(prompt="q", rejected=MISSING),  # 3
        "",  # 4: blank, skipped
        row(prompt="r", chosen="x", rejected="x"),  # 5
        "42",  # 6
        row(),  # 7: duplicate of 1
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreferenceFileError) as err:
        read_jsonl(path, duplicates="error")
    text = str(err.value)
    assert "5 problem(s)" in text
    expected = [
        "line 2: not valid JSON",
        "line 3: missing key(s) ['rejected']",
        "line 5: chosen and rejected are the same text",
        "line 6: expected a JSON object, got int",
        "line 7: duplicate of line 1",
    ]
    positions = [text.index(e) for e in expected]
    assert positions == sorted(positions)  # listed in file order


def test_read_jsonl_truncates_long_error_lists(tmp_path: Path) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text("junk\n" * 25)
    with pytest.raises(PreferenceFileError) as err:
        read_jsonl(path, max_errors=20)
    text = str(err.value)
    assert "25 problem(s)" in text
    assert "line 20: not valid JSON" in text and "line 21:" not in text
    assert text.endswith("... and 5 more")


def test_read_jsonl_rejects_null_gold(tmp_path: Path) -> None:
    path = tmp_path / "null.jsonl"
    path.write_text(row(gold_chosen=None, gold_rejected=1.0) + "\n")
    with pytest.raises(PreferenceFileError, match="gold_chosen must be a finite number"):
        read_jsonl(path)


def test_read_jsonl_rejects_huge_integer_gold(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 1'
        + "0" * 400
        + ', "gold_rejected": 0}\n'
    )
    with pytest.raises(PreferenceFileError, match="gold_chosen must be a finite number"):
        read_jsonl(path)


# ---------------------------------------------------------------- atomic writes


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "pairs.jsonl"
    target.write_text("old content\n")

    def half_write(tmp: Path) -> None:
        tmp.write_text("new but trunc")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(target, half_write)
    assert target.read_text() == "old content\n"
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_failed_atomic_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new" / "file.txt"

    def fail(tmp: Path) -> None:
        raise OSError("no space")

    with pytest.raises(OSError, match="no space"):
        atomic_write(target, fail)
    assert not target.exists()
    assert list((tmp_path / "new").iterdir()) == []


def test_write_jsonl_failing_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "pairs.jsonl"
    old = Pairs(prompt=["p"], chosen=["a"], rejected=["b"])
    write_jsonl(old, target)
    before = target.read_text()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    new = Pairs(prompt=["q"] * 3, chosen=["c"] * 3, rejected=["d"] * 3)
    with pytest.raises(OSError, match="rename failed"):
        write_jsonl(new, target)
    monkeypatch.undo()
    assert target.read_text() == before
    assert leftovers(tmp_path) == []
    assert read_jsonl(target).prompt == ["p"]


def test_atomic_text_and_json_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    atomic_write_text(target, "first")
    atomic_write_json(target, {"b": np.array([1, 2]), "a": tmp_path / "f"})
    assert json.loads(target.read_text()) == {"a": str(tmp_path / "f"), "b": [1, 2]}
    assert target.read_text().startswith('{\n  "a"')  # sorted keys, indented
    assert leftovers(tmp_path) == []
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text())["b"] == [1, 2]
    assert leftovers(tmp_path) == []
