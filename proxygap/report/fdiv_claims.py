"""Verdicts on the published claims about f-divergence alignment, computed from the study's
numbers (:func:`proxygap.study.fdiv_stats.summarise_arms`).

Every comparison is paired over seeds: for arms ``a`` and ``b`` and a quantity ``q`` the
per-seed differences ``q_a - q_b`` get a Student-t 95% interval, and the difference is
*significant* when that interval excludes 0. A claim **held** when the difference it predicts is
significant in its direction, **did not hold** when it is significant in the other direction
(or, for "best trade-off", when another arm beats it), and is **inconclusive** otherwise. With 3
seeds an interval is wide (``t_{0.975, 2} = 4.3``), so inconclusive is the common outcome for
small effects; the sentences give the intervals so the reader can judge their size.

Claims (docs/methods.md §7):

- Go et al. 2023 (f-DPG): forward KL (mass-covering) yields more diverse samples than reverse KL
  (mode-seeking); Jensen-Shannon gives the best trade-off between alignment and diversity.
- Wang et al. 2023 (f-DPO): reverse-KL f-DPO is DPO; forward KL and JS (and alpha) trade some
  reward for diversity relative to DPO; forward KL and JS are better calibrated than DPO. Their
  calibration is of the aligned model's answers to benchmark questions, which this task has
  none of; the study measures the nearest thing it has, the expected calibration error of the
  implicit reward's preference probabilities on held-out gold-labelled pairs (``heldout_ece_end``,
  lower is better), and the sentence says so.

Alignment is ``gold_end`` and diversity ``distinct2_end``: both of the final policy, so a
trade-off is between properties of one policy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from proxygap.report.format import fmt
from proxygap.study.mitigation_stats import t_interval

__all__ = [
    "Verdict", "better_calibrated", "fdiv_lines", "fdiv_verdicts", "paired", "significance",
]  # fmt: skip

Status = Literal["held", "did not hold", "inconclusive", "not measured"]
Runs = Mapping[str, Sequence[Mapping[str, float]]]  # arm -> per-seed quantities

GOLD, DIVERSITY = "gold_end", "distinct2_end"
NAMES = {
    "reverse_kl": "reverse KL", "forward_kl": "forward KL", "js": "JS", "tv": "TV",
    "dpo": "DPO", "fdpo_rkl": "f-DPO reverse KL", "fdpo_fkl": "f-DPO forward KL",
    "fdpo_js": "f-DPO JS", "fdpo_alpha": "f-DPO alpha",
}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """One claim: who made it, what it says, its status here and the sentence with numbers."""

    source: str
    claim: str
    status: Status
    sentence: str


def paired(runs: Runs, a: str, b: str, q: str) -> dict[str, float]:
    """The 95% t-interval of the per-seed differences ``q_a - q_b`` (non-finite pairs left
    out; all nan when none is left)."""
    d = [x[q] - y[q] for x, y in zip(runs[a], runs[b], strict=True)]
    d = [v for v in d if math.isfinite(v)]
    if not d:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    return t_interval(d)


def significance(iv: Mapping[str, float]) -> int:
    """+1 if the interval lies above 0, -1 if below, 0 if it holds 0 or is undefined."""
    if iv["lo"] > 0:
        return 1
    if iv["hi"] < 0:
        return -1
    return 0


def _iv(iv: Mapping[str, float]) -> str:
    return f"{fmt(iv['mean'])} [{fmt(iv['lo'])}, {fmt(iv['hi'])}]"


def _name(arm: str) -> str:
    return NAMES.get(arm, arm)


def _diff_text(runs: Runs, a: str, b: str) -> str:
    g, v = paired(runs, a, b, GOLD), paired(runs, a, b, DIVERSITY)
    return f"{_name(a)} − {_name(b)}: distinct-2 {_iv(v)}, gold at the end {_iv(g)}"


def more_diverse(runs: Runs, arm: str, baseline: str, *, source: str, claim: str) -> Verdict:
    """``arm`` has a higher final distinct-2 than ``baseline`` (paired over seeds)."""
    s = significance(paired(runs, arm, baseline, DIVERSITY))
    by_sign: dict[int, Status] = {1: "held", -1: "did not hold", 0: "inconclusive"}
    status = by_sign[s]
    cost = significance(paired(runs, arm, baseline, GOLD))
    tail = {
        -1: "; its gold is lower (a reward cost)",
        1: "; its gold is higher (no reward cost)",
        0: "; the gold difference is not significant",
    }[cost]
    return Verdict(source, claim, status, f"{_diff_text(runs, arm, baseline)}{tail}.")


def best_tradeoff(runs: Runs, arm: str, others: Sequence[str], *, source: str) -> Verdict:
    """``arm`` is the best alignment-diversity trade-off among ``[arm, *others]``: held if
    against every other arm it is significantly better in gold or diversity and not
    significantly worse in the other; did not hold if some other arm is significantly better in
    one and not significantly worse in the other (it dominates ``arm``); else inconclusive."""
    claim = f"{_name(arm)} gives the best trade-off between alignment (gold) and diversity"
    if not others:
        return Verdict(source, claim, "not measured", "No other arm to compare with.")
    beats, beaten = [], []
    for o in others:
        g = significance(paired(runs, arm, o, GOLD))
        v = significance(paired(runs, arm, o, DIVERSITY))
        beats.append(max(g, v) == 1 and min(g, v) >= 0)
        beaten.append(min(g, v) == -1 and max(g, v) <= 0)
    status: Status = "did not hold" if any(beaten) else "held" if all(beats) else "inconclusive"
    parts = "; ".join(_diff_text(runs, arm, o) for o in others)
    if any(beaten):
        why = "dominated by " + ", ".join(
            _name(o) for o, b in zip(others, beaten, strict=True) if b
        )
    elif all(beats):
        why = "it dominates every other arm on at least one axis"
    else:
        why = "no arm dominates the others significantly"
    return Verdict(source, claim, status, f"{parts}: {why}.")


def better_calibrated(runs: Runs, arm: str, baseline: str, *, source: str) -> Verdict:
    """``arm`` has a lower held-out ECE than ``baseline`` (paired over seeds); not measured when
    either lacks the ECE."""
    claim = f"{_name(arm)} is better calibrated than {_name(baseline)}"
    q = "heldout_ece_end"
    if not all(math.isfinite(r.get(q, math.nan)) for r in [*runs[arm], *runs[baseline]]):
        return Verdict(source, claim, "not measured", "No held-out ECE in these results.")
    iv = paired(runs, arm, baseline, q)
    by_sign: dict[int, Status] = {-1: "held", 1: "did not hold", 0: "inconclusive"}
    base = t_interval([r[q] for r in runs[baseline]])
    return Verdict(
        source, claim, by_sign[significance(iv)],
        f"{_name(arm)} − {_name(baseline)}: held-out ECE {_iv(iv)} ({_name(baseline)}: "
        f"{_iv(base)}). Here calibration is that of the implicit reward's preference "
        "probabilities on held-out pairs, not the paper's calibration of answers to benchmark "
        "questions (this task has none).",
    )  # fmt: skip


def fdiv_verdicts(summary: Mapping[str, Any]) -> list[Verdict]:
    """The verdicts the study's numbers allow (``summary`` as in ``fdiv/summary.json``)."""
    out: list[Verdict] = []
    go, wang = "Go et al. 2023 (f-DPG)", "Wang et al. 2023 (f-DPO)"
    rl = summary.get("rl")
    if rl is not None:
        runs, base = rl["runs"], rl["baseline"]
        if "forward_kl" in runs and base != "forward_kl":
            claim = f"forward KL yields more diverse samples than {_name(base)}"
            out.append(more_diverse(runs, "forward_kl", base, source=go, claim=claim))
        if "js" in runs:
            others = [a for a in ("reverse_kl", "forward_kl") if a in runs]
            out.append(best_tradeoff(runs, "js", others, source=go))
    daa = summary.get("daa")
    if daa is not None:
        runs, base = daa["runs"], daa["baseline"]
        out.append(
            Verdict(
                wang, "reverse-KL f-DPO is DPO", "held",
                "An identity, not a measurement: `fdpo_rkl` equals `dpo` bit for bit "
                "(tests/losses/test_fdpo.py).",
            )
        )  # fmt: skip
        for arm in runs:
            if arm != base:
                claim = f"{_name(arm)} trades some reward for diversity against {_name(base)}"
                out.append(more_diverse(runs, arm, base, source=wang, claim=claim))
        for arm in ("fdpo_fkl", "fdpo_js"):
            if arm in runs and arm != base:
                out.append(better_calibrated(runs, arm, base, source=wang))
    return out


def fdiv_lines(summary: Mapping[str, Any]) -> list[str]:
    """The report summary's lines: per family (RL, DAA) gold at the common ``d`` and at the end
    per arm with 95% intervals over seeds, then how many published claims held."""
    lines = []
    for key, title in (("rl", "f-divergences, RL (f-DPG)"), ("daa", "f-divergences, DAA (f-DPO)")):
        part = summary.get(key)
        if part is None:
            continue
        arms = "; ".join(
            f"{_name(arm)} {_iv(s['gold_at_d'])} at d* (end {_iv(s['gold_end'])})"
            for arm, s in part["summary"].items()
        )
        lines.append(f"{title}: gold in SD units at d* = {fmt(part['d_common'])}: {arms}.")
    verdicts = fdiv_verdicts(summary)
    if verdicts:
        counts = {
            st: sum(v.status == st for v in verdicts)
            for st in ("held", "did not hold", "inconclusive", "not measured")
        }
        told = ", ".join(f"{n} {st}" for st, n in counts.items() if n)
        lines.append(f"f-divergences, published claims ({len(verdicts)}): {told}.")
    return lines
