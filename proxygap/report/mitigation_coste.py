"""Coste et al. (2023)'s claims about reward-model ensembles, checked in this study.

Each verdict is read from the means and 95% intervals over seeds and states the share of seeds
on which the claim holds (a seed: one ensemble draw, with per-seed ensembles, and one pool or
RL run). In best-of-n the ensembles are compared with the *average single member* (each
quantity averaged over the members of the seed's ensemble; its ``turned_down`` is the share of
members that turn down), as Coste et al. compare against single reward models. When a claim
does not reproduce, the pools say why (:func:`why_not`): how far apart the members' ceilings
are and how correlated their errors against gold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from proxygap.config import MitigationRunConfig
from proxygap.report.format import fmt
from proxygap.report.mitigation_claims import (
    Summary,
    ci_text,
    downs,
    find_arms,
    overoptimizes,
    paired,
    plain,
    seed_share,
    verdict_of,
)
from proxygap.study.mitigation_stats import rl_run_quantities

__all__ = ["bon_claim", "ppo_claim", "variance_claim", "why_not"]

Runs = Mapping[str, Sequence[Mapping[str, float]]]  # rule or arm -> one dict per seed


def why_not(diagnostics: Sequence[Mapping[str, Any]]) -> str:
    """What the pools show about the members (:func:`proxygap.study.mitigation_bon.
    member_diagnostics`), over seeds: their error correlation, the spread of their ceilings,
    and how often WCO's pick follows one member."""
    if not diagnostics:
        return ""
    corr = [float(d["error_corr"]) for d in diagnostics]
    spread = [max(d["ceilings"]) - min(d["ceilings"]) for d in diagnostics]
    follow = [max(d["wco_argmin"]) for d in diagnostics]
    lowest_is_followed = sum(
        int(np.argmax(d["wco_argmin"])) == int(np.argmin(d["ceilings"])) for d in diagnostics
    )
    return (
        f" What the pools show: the members' errors against gold correlate "
        f"{fmt(float(np.mean(corr)), 2)} on average over member pairs (seeds "
        f"{fmt(min(corr), 2)}–{fmt(max(corr), 2)}), so they share most of their mistakes; "
        f"their ceilings (best-of-n gold peaks) differ by {fmt(float(np.mean(spread)), 2)} SD "
        f"within a seed on average; WCO's pick has one member as the minimum on "
        f"{fmt(100 * float(np.mean(follow)), 0)}% of prompts (that member has the lowest "
        f"ceiling of its ensemble on {lowest_is_followed}/{len(diagnostics)} seeds)."
    )


def bon_claim(
    bon: Mapping[str, Summary],
    runs: Runs | None = None,
    diagnostics: Sequence[Mapping[str, Any]] = (),
) -> str:
    """Coste et al. 2023, best-of-n: WCO/UWO show no overoptimization, up to ~70% more gold than
    a single reward model. A seed holds the claim for a rule when the rule does not turn down
    and ends above the average single member on that seed's pool."""
    head = "**Coste et al., best-of-n (WCO/UWO do not overoptimize; up to ~70% more gold).** "
    if "single" not in bon or not {"wco", "uwo"} & set(bon):
        return head + "Not tested: the config has no WCO/UWO best-of-n variant."
    single = bon["single"]
    parts, ok = [], []
    g0 = single["gold_end"]["mean"]
    td = single["turned_down"]
    over = "overoptimizes" if overoptimizes(single) else "does not overoptimize"
    parts.append(
        f"The average single member {over} ({fmt(100 * td['mean'], 0)}% of members turn "
        f"down; gold at n = N {ci_text(single['gold_end'])}, peak "
        f"{ci_text(single['gold_peak'])})."
    )
    for v in ("mean", "wco", "uwo"):
        if v not in bon:
            continue
        s = bon[v]
        gain = (s["gold_end"]["mean"] - g0) / abs(g0) if g0 else float("nan")
        no_over = not overoptimizes(s)
        text = (
            f"{v.upper()}: {'no' if no_over else 'a'} significant turn-down ({downs(s)} seeds), "
            f"gold at n = N {ci_text(s['gold_end'])} ({fmt(100 * gain, 0)}% relative to the "
            "average single member"
        )
        holds = no_over and gain > 0
        if runs is not None and v in runs:
            mine, base = runs[v], runs["single"]
            diff = paired([r["gold_end"] for r in mine], [r["gold_end"] for r in base])
            flags = [
                r["turned_down"] < 0.5 and r["gold_end"] > b["gold_end"]
                for r, b in zip(mine, base, strict=True)
            ]
            holds = holds and sum(flags) > len(flags) / 2
            text += f"; paired difference {ci_text(diff)}; the claim holds on {seed_share(flags)}"
        if v != "mean":  # the claim is about WCO and UWO; the mean is shown beside them
            ok.append(holds)
        parts.append(text + ").")
    if not overoptimizes(single):
        ok.append(False)  # nothing to prevent: the contrast with a single model is untested
        parts.append("Without a turn-down of the single members the contrast is not shown.")
    verdict = verdict_of(ok)
    why = why_not(diagnostics) if verdict != "reproduced" else ""
    return head + " ".join(parts) + f" Verdict: **{verdict}** here." + why


def ppo_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]] | None = None,
) -> str:
    """Coste et al. 2023, RL: with a small KL penalty WCO/UWO avoid overoptimization where a
    single reward model (same penalty) does not. A seed holds the claim when, on it, the
    ensemble arm does not turn down and the single member at the same KL does."""
    head = "**Coste et al., RL (WCO/UWO with a small KL penalty avoid overoptimization).** "
    ens = find_arms(arms, lambda a: plain(a) and a.aggregation in ("wco", "uwo"))
    if not ens:
        return head + "Not tested: the config has no plain WCO/UWO arm."
    parts, ok = [], []
    for a in ens:
        same = find_arms(
            arms, lambda b, a=a: plain(b) and b.aggregation == "single" and b.kl_coef == a.kl_coef
        )
        s = summary[a.name]
        verdict = not overoptimizes(s)
        text = (
            f"`{a.name}` (KL {a.kl_coef:g}) turns down in {downs(s)} seeds, end gold "
            f"{ci_text(s['gold_end'])}"
        )
        if same:
            b = summary[same[0].name]
            verdict = verdict and overoptimizes(b)
            text += (
                f"; the single member at the same KL (`{same[0].name}`) turns down in "
                f"{downs(b)}, end gold {ci_text(b['gold_end'])}"
            )
            if histories is not None:
                mine = [rl_run_quantities(h) for h in histories[a.name]]
                base = [rl_run_quantities(h) for h in histories[same[0].name]]
                flags = [
                    r["turned_down"] < 0.5 <= q["turned_down"]
                    for r, q in zip(mine, base, strict=True)
                ]
                diff = paired([r["gold_end"] for r in mine], [q["gold_end"] for q in base])
                text += (
                    f"; end gold minus the single member's {ci_text(diff)}; the claim holds on "
                    f"{seed_share(flags)}"
                )
        else:  # nothing to contrast with: the claim is about the ensemble against one model
            verdict = False
            text += "; no single-member arm at the same KL, so the contrast is untested"
        ok.append(verdict)
        parts.append(text + ".")
    return head + " ".join(parts) + f" Verdict: **{verdict_of(ok)}** here."


def variance_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]] | None = None,
) -> str:
    """Coste et al. 2023: member variance grows several-fold under mean optimisation and stays
    nearly flat under UWO (read here as: growth >= 2 under mean, <= 1.5 under UWO; a seed holds
    it when both hold on it)."""
    head = "**Coste et al., ensemble variance (grows under mean, flat under UWO).** "
    mean = find_arms(arms, lambda a: plain(a) and a.aggregation == "mean")
    uwo = find_arms(arms, lambda a: plain(a) and a.aggregation == "uwo")
    if not mean or not uwo:
        return head + "Not tested: the config needs a plain mean arm and a plain UWO arm."
    gm, gu = summary[mean[0].name]["std_growth"], summary[uwo[0].name]["std_growth"]
    grows, flat = gm["mean"] >= 2.0, gu["mean"] <= 1.5
    # flat under UWO only means something if the variance grows under mean optimisation
    verdict = verdict_of([grows, flat]) if grows else "not reproduced"
    share = ""
    if histories is not None:
        qm = [rl_run_quantities(h)["std_growth"] for h in histories[mean[0].name]]
        qu = [rl_run_quantities(h)["std_growth"] for h in histories[uwo[0].name]]
        flags = [m >= 2.0 and u <= 1.5 for m, u in zip(qm, qu, strict=True)]
        share = f"; both hold on {seed_share(flags)}"
    return head + (
        f"Member std at the end over step 0: mean {ci_text(gm)}, UWO {ci_text(gu)} "
        f"(criteria: ≥ 2 under mean, ≤ 1.5 under UWO{share}). Verdict: **{verdict}** here."
    )
