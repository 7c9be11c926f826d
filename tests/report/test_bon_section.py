"""The best-of-n section's law-peak table: intervals beside the point estimates, and the law
called out when the observed peak lies outside its peak's interval."""

from __future__ import annotations

import dataclasses

import numpy as np

from proxygap.config import ProxyConfig
from proxygap.optimize.bon import bon_curve, log_spaced_ns
from proxygap.report.bon_section import law_peak_blocks
from proxygap.report.document import Paragraph, Table
from proxygap.report.saved import decode, encode
from proxygap.study.results import ProxyResult


def turning_result(name: str = "rm") -> ProxyResult:
    """Gold rises then falls along the proxy's ranking (a hacked upper tail): a peak before N."""
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(32, 128))
    hack = np.maximum(rng.normal(size=(32, 128)) - 1.0, 0) * 4
    curve = bon_curve(name, gold + hack, gold - hack, ns=log_spaced_ns(128, 16), n_boot=300, seed=0)
    assert curve.turn.peak_index < len(curve.ns) - 1  # the fixture turns
    assert curve.boot is not None and curve.boot.observed_d_peak[1] < curve.d[-1]
    return ProxyResult(ProxyConfig(name=name), curve, 0.7, 0.5, 100, 1.0)


def test_the_table_shows_both_peaks_with_intervals() -> None:
    r = turning_result()
    table, reading = law_peak_blocks([r])
    assert isinstance(table, Table) and isinstance(reading, Paragraph)
    row = table.rows[0]
    b = r.curve.boot
    assert b is not None
    assert row[3] == f"{r.curve.fit.d_peak:.2f} [{b.d_peak[0]:.2f}, {b.d_peak[1]:.2f}]"
    assert row[5].startswith(f"{r.curve.turn.d_peak:.2f} [")
    assert "300 resamples of the prompts" in reading.text


def test_a_law_peak_interval_that_misses_the_observed_peak_is_named() -> None:
    r = turning_result()
    b = r.curve.boot
    assert b is not None
    far = dataclasses.replace(b, d_peak=(r.curve.turn.d_peak + 1.0, r.curve.turn.d_peak + 2.0))
    near = dataclasses.replace(b, d_peak=(r.curve.turn.d_peak - 0.1, r.curve.turn.d_peak + 0.1))
    wrong = ProxyResult(r.config, dataclasses.replace(r.curve, boot=far), 0.7, 0.5, 100, 1.0)
    right = ProxyResult(r.config, dataclasses.replace(r.curve, boot=near), 0.7, 0.5, 100, 1.0)
    table, reading = law_peak_blocks([wrong])
    assert isinstance(table, Table) and isinstance(reading, Paragraph)
    assert table.rows[0][-1].startswith("**misplaced**: law peak beyond")
    assert "**The law misplaces the peak**" in reading.text
    table, reading = law_peak_blocks([right])
    assert isinstance(table, Table) and isinstance(reading, Paragraph)
    assert table.rows[0][-1] == "within the law's interval"
    assert "holds the observed peak" in reading.text
    # a peak whose interval reaches the last d may still be rising: not called misplaced
    open_end = dataclasses.replace(far, observed_d_peak=(b.observed_d_peak[0], r.curve.d[-1]))
    rising = ProxyResult(r.config, dataclasses.replace(r.curve, boot=open_end), 0.7, 0.5, 1, 1.0)
    table, reading = law_peak_blocks([rising])
    assert isinstance(table, Table) and isinstance(reading, Paragraph)
    assert table.rows[0][-1].startswith("no clear observed peak")
    assert "misplaces" not in reading.text


def test_no_bootstrap_no_blocks_and_the_codec_keeps_intervals() -> None:
    r = turning_result()
    plain = dataclasses.replace(r.curve, boot=None)
    assert law_peak_blocks([ProxyResult(r.config, plain, 0.7, 0.5, 100, 1.0)]) == []
    back = decode(encode(r), ProxyResult)
    assert back.curve.boot == r.curve.boot
