"""The best-of-n section's intervals: the law's peak next to the observed peak, each with its
bootstrap interval over prompts, and where the law misplaces the peak (docs/methods.md §1,
"Intervals")."""

from __future__ import annotations

from proxygap.analysis.bootstrap import LawBootstrap
from proxygap.report.document import Paragraph, Table
from proxygap.report.format import fmt
from proxygap.study.results import ProxyResult

__all__ = ["law_peak_blocks", "misplaced"]

Z95 = 1.959964  # the normal quantile behind a least-squares "± 1.96 SE" interval


def _ci(x: float, iv: tuple[float, float], digits: int = 2) -> str:
    return f"{fmt(x, digits)} [{fmt(iv[0], digits)}, {fmt(iv[1], digits)}]"


def _peaks_inside(r: ProxyResult, boot: LawBootstrap) -> bool:
    """Whether the curve has a clear observed peak: its interval stays below the last ``d``
    (a curve whose peak interval reaches n = N may still be rising)."""
    return boot.observed_d_peak[1] < r.curve.d[-1]


def misplaced(r: ProxyResult) -> bool:
    """The law misplaces the peak: the curve has a clear observed peak and it lies outside the
    interval of the law's ``d*``."""
    boot = r.curve.boot
    return (
        boot is not None and _peaks_inside(r, boot) and boot.law_misplaces_peak(r.curve.turn.d_peak)
    )


def _placement(r: ProxyResult, boot: LawBootstrap) -> str:
    """Whether the law's peak interval holds the observed peak."""
    if not _peaks_inside(r, boot):
        return "no clear observed peak (its interval reaches n = N)"
    if misplaced(r):
        side = "beyond" if r.curve.turn.d_peak < boot.d_peak[0] else "before"
        return f"**misplaced**: law peak {side} the observed one"
    return "within the law's interval"


def _table(results: list[ProxyResult]) -> Table:
    header = [
        "proxy", "α boot [95%] (LS ± SE)", "β boot [95%] (LS ± SE)", "law peak d* [95%]",
        "law peak gold [95%]", "observed peak d [95%]", "observed peak gold [95%]",
        "law vs observed",
    ]  # fmt: skip
    rows = []
    for r in results:
        b, f, t = r.curve.boot, r.curve.fit, r.curve.turn
        assert b is not None
        rows.append(
            [
                r.config.name,
                f"{_ci(f.alpha, b.alpha, 3)} ({fmt(f.alpha, 3)} ± {fmt(f.alpha_se, 3)})",
                f"{_ci(f.beta, b.beta, 3)} ({fmt(f.beta, 3)} ± {fmt(f.beta_se, 3)})",
                _ci(f.d_peak, b.d_peak),
                _ci(f.r_peak, b.r_peak),
                _ci(t.d_peak, b.observed_d_peak),
                _ci(t.gold_peak, b.observed_gold_peak),
                _placement(r, b),
            ]
        )
    return Table(header, rows, caption="The law's peak against the observed peak")


def _reading(results: list[ProxyResult]) -> Paragraph:
    boots = [(r, r.curve.boot) for r in results if r.curve.boot is not None]
    n_boot, level = boots[0][1].n_boot, boots[0][1].level
    ratios = [
        (b.alpha[1] - b.alpha[0]) / (2 * Z95 * r.curve.fit.alpha_se)
        for r, b in boots
        if r.curve.fit.alpha_se > 0
    ]
    text = (
        f"Intervals are {100 * level:.0f}% percentile intervals from {n_boot} resamples of the "
        "prompts (each with its pool): the curve is recomputed from the resampled per-prompt "
        "curves and the law refitted. The least-squares standard errors in brackets treat the "
        "points of a curve as independent, but they share prompts and pools; "
    )
    if ratios:
        text += (
            f"the bootstrap interval of α is {fmt(min(ratios), 1)}–{fmt(max(ratios), 1)}× as "
            "wide as ± 1.96 least-squares SE here. "
        )
    wrong = [(r, b) for r, b in boots if misplaced(r)]
    if wrong:
        parts = [
            f"`{r.config.name}` (law d* {_ci(r.curve.fit.d_peak, b.d_peak)}, observed "
            f"d {_ci(r.curve.turn.d_peak, b.observed_d_peak)})"
            for r, b in wrong
        ]
        text += (
            "**The law misplaces the peak** (the observed peak lies outside the law peak's "
            "interval) for " + "; ".join(parts) + ": read the turn-down from the curve, not from "
            "the fitted law."
        )
    else:
        text += "The law's peak interval holds the observed peak of every proxy with a clear peak."
    return Paragraph(text)


def law_peak_blocks(results: list[ProxyResult]) -> list[Table | Paragraph]:
    """The table and its reading; nothing when the curves carry no bootstrap."""
    if not any(r.curve.boot is not None for r in results):
        return []
    return [_table([r for r in results if r.curve.boot is not None]), _reading(results)]
