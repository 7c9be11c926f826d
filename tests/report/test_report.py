"""The study report: its opening summary (numbers derived by hand from the hand-made study of
``conftest.py``), a page that fits (no table wider than ten columns, examples folded), and
``results.json``, which reads back to the same result."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from proxygap.report.render import write_report
from proxygap.report.saved import SavedResultError, decode, encode, load_result
from proxygap.report.summary import summary_lines


def test_summary_lines_carry_the_numbers(tmp_path: Path, study_runs: Any) -> None:
    _, make = study_runs
    lines = summary_lines(make(tmp_path, "s"))
    rl0 = next(x for x in lines if x.startswith("RL with KL coefficient 0:"))
    # gold peaks at step 2 (+0.50, d = 1: KL 1.00) and ends at step 4 (-0.60, KL 4.00); the drop
    # 1.10 / sqrt(0.05^2 + 0.05^2) = 15.56 SE; at step 3 gold has fallen 0.40 > 2 SE while the
    # proxy (1.2) is above its value at the peak (0.8): the two part there
    assert rl0 == (
        "RL with KL coefficient 0: gold peaks at +0.50 ± 0.05 at step 2 (KL 1.00 nats) and ends "
        "at −0.60 ± 0.05 SD at step 4 (KL 4.00 nats, proxy +1.60): **overoptimized**: it falls "
        "15.6 SE below its peak, proxy and gold part at step 3."
    )
    rl1 = next(x for x in lines if x.startswith("RL with KL coefficient 0.1:"))
    assert "gold still rises at the last step, +0.45 ± 0.05 SD at step 2" in rl1
    # the penalised run's best (0.45 at d 0.6) against the unpenalised run's best at d <= 0.6
    # (0.30 at d 0.5): 0.15 / 0.0707 = 2.1 SE > 2
    frontier = next(x for x in lines if x.startswith("RL, KL penalty:"))
    assert "beats the unpenalised run's frontier" in frontier and "2.1 SE" in frontier
    # DAA finals sorted by d: (0.5, +0.2), (1.0, +0.4), (3.0, -1.0): peak +0.40 at d 1.00,
    # drop 1.40 > 2 x 0.07
    daa = next(x for x in lines if x.startswith("Direct alignment (dpo)"))
    assert "**hump-shaped** (best +0.40 SD at d = 1.00, the furthest beta −1.00" in daa
    bon = next(x for x in lines if x.startswith("Best-of-n with `rm`"))
    assert "held-out accuracy 0.750" in bon


def test_report_opens_with_the_summary_and_fits_the_page(study_runs: Any) -> None:
    root, _ = study_runs
    html = (root / "a" / "report.html").read_text()
    md = (root / "a" / "report.md").read_text()
    assert md.startswith("# proxygap study: a\n")  # no literal backticks in the title
    assert "<title>proxygap study: a</title>" in html
    assert html.index("<h2>Summary</h2>") < html.index("<h2>Setup</h2>")
    assert html.count("<li>") >= 5  # bon, two RL runs, the frontier, DAA
    for table in re.findall(r"<table>.*?</table>", html, flags=re.S):
        header = re.search(r"<thead><tr>(.*?)</tr></thead>", table, flags=re.S)
        assert header is not None and header.group(1).count("<th>") <= 13
    assert html.count('<div class="table">') == html.count("<table>")  # each scrolls alone
    assert "overflow-x: auto" in html
    # the best-of-n table of old had 17 columns; now two tables of 8 and 10
    assert "<th>proxy</th><th>params</th>" in html and "<th>proxy</th><th>α</th>" in html
    assert "<details><summary>Samples at the start" in html  # RL examples folded away
    assert "<details><summary>Every checkpoint of every run" in html
    assert "wall time 12.5 s" in html and "Re-rendered" not in html


@dataclass
class _Record:
    arr: np.ndarray
    by_pair: dict[tuple[str, int], list[float]]
    maybe: float | None = None
    pairs: list[tuple[str, float]] = field(default_factory=list)


def test_codec_round_trip_keeps_types_and_special_values() -> None:
    rec = _Record(
        arr=np.arange(6, dtype=np.int64).reshape(2, 3),
        by_pair={("a", 1): [math.nan, math.inf]},
        pairs=[("x", 0.5)],
    )
    text = json.dumps(encode(rec))
    back = decode(json.loads(text), _Record)
    assert back.arr.dtype == np.int64 and back.arr.shape == (2, 3)
    assert np.array_equal(back.arr, rec.arr)
    assert list(back.by_pair) == [("a", 1)]
    assert math.isnan(back.by_pair[("a", 1)][0]) and back.by_pair[("a", 1)][1] == math.inf
    assert back.pairs == [("x", 0.5)] and back.maybe is None


def test_results_json_reads_back_to_the_same_result(study_runs: Any) -> None:
    root, _ = study_runs
    result = load_result(root / "a")
    again = json.loads((root / "a" / "results.json").read_text())["result"]
    assert encode(result) | {"dir": again["dir"]} == again
    assert result.rl_runs[0].analysis.peak_step == 2
    assert result.daa is not None and result.daa.hump["dpo"].turns_down


def test_a_damaged_results_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"format": 1, "result": {"config": 3}}')
    with pytest.raises(SavedResultError, match="cannot be read back"):
        load_result(tmp_path)
    with pytest.raises(SavedResultError, match="does not exist"):
        load_result(tmp_path / "nowhere")


def test_rerendered_report_says_so(study_runs: Any) -> None:
    root, _ = study_runs
    folder = root / "b"
    before = (folder / "results.json").read_bytes()
    write_report(load_result(folder), rerendered=True)
    html = (folder / "report.html").read_text()
    assert "Re-rendered from <code>results.json</code> without rerunning anything" in html
    assert "wall time 12.5 s (the invocation that computed these results" in html
    assert (folder / "results.json").read_bytes() == before  # not rewritten


def test_a_result_the_codec_cannot_write_still_gets_its_report(
    tmp_path: Path, study_runs: Any
) -> None:
    _, make = study_runs
    study = make(tmp_path, "odd")
    study.rl_runs, study.daa = [], None  # fewer plots
    study.picks = [{"proxy": "other", "n": 1, "why": object()}]
    write_report(study)
    assert not (study.dir / "results.json").exists()
    html = (study.dir / "report.html").read_text()
    assert "<code>results.json</code> was not written (cannot save a object" in html
