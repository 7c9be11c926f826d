"""Whether each published claim about mitigations (docs/methods.md §4) reproduced in this study.

Every verdict is computed from the mitigation summary (means and 95% intervals over seeds or
prompts, see :mod:`proxygap.study.mitigation_stats`) and the saved histories; a claim whose arms
are missing from the config says so. "Overoptimizes" means the turn-down test (gold falls from
its peak by more than twice the standard error of the drop) fires for most seeds (RL) or on the
prompt-mean curve (best-of-n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from proxygap.config import MitigationHookConfig, MitigationRunConfig
from proxygap.mitigations import MITIGATIONS
from proxygap.report.format import fmt
from proxygap.study.mitigation_stats import t_interval

Summary = Mapping[str, Mapping[str, float]]


def _ci(q: Mapping[str, float], digits: int = 2) -> str:
    return f"{fmt(q['mean'], digits)} [{fmt(q['lo'], digits)}, {fmt(q['hi'], digits)}]"


def _verdict(ok: Sequence[bool]) -> str:
    return "reproduced" if all(ok) else ("partly reproduced" if any(ok) else "not reproduced")


def _downs(s: Summary) -> str:
    td = s["turned_down"]
    return f"{int(round(td['mean'] * td['n']))}/{td['n']}"


def overoptimizes(s: Summary) -> bool:
    return s["turned_down"]["mean"] > 0.5


def _plain(arm: MitigationRunConfig) -> bool:
    """No transform, hook, components, constraint, Quark or other start: reward and KL only."""
    return (
        not arm.transforms
        and arm.post_step is None
        and not arm.components
        and arm.constraint is None
        and arm.quark is None
        and arm.reference == "base"
    )


def is_baseline(arm: MitigationRunConfig) -> bool:
    """The unmitigated baseline: one member, nothing else, no KL penalty."""
    return _plain(arm) and arm.aggregation == "single" and arm.kl_coef == 0


def _find(arms: Sequence[MitigationRunConfig], pred: Any) -> list[MitigationRunConfig]:
    return [a for a in arms if pred(a)]


def _tests(hook: MitigationHookConfig | None, claim: str) -> bool:
    """Whether ``hook``'s registry row declares it is tested by ``claim``
    (:data:`proxygap.mitigations.registry.CLAIMS`)."""
    spec = None if hook is None else MITIGATIONS.get(hook.method)
    return spec is not None and spec.claim == claim


def frontier_gain(
    arm: Sequence[Sequence[Mapping[str, float]]], base: Sequence[Sequence[Mapping[str, float]]]
) -> dict[str, float]:
    """Per seed (paired by position): the arm's best gold minus the best gold ``base`` reached
    at ``d`` no larger than the arm's at that best point (``base``'s frontier there); the
    t-interval over seeds. Positive: the arm reaches more gold for the same drift (Noukhovitch et
    al. 2023's reward-vs-drift Pareto comparison)."""
    gains = []
    for h, b in zip(arm, base, strict=True):
        best = max(h, key=lambda r: r["reward/gold"])
        reach = [r["reward/gold"] for r in b if r["d"] <= best["d"]]
        gains.append(best["reward/gold"] - (max(reach) if reach else 0.0))
    return t_interval(gains)


def paired(arm: Sequence[float], base: Sequence[float]) -> dict:
    """t-interval of a per-seed difference (``arm[i] - base[i]``)."""
    return t_interval(np.asarray(arm, dtype=float) - np.asarray(base, dtype=float))


def bon_claim(bon: Mapping[str, Summary]) -> str:
    """Coste et al. 2023, best-of-n: WCO/UWO show no overoptimization, up to ~70% more gold."""
    head = "**Coste et al., best-of-n (WCO/UWO do not overoptimize; up to ~70% more gold).** "
    if "single" not in bon or not {"wco", "uwo"} & set(bon):
        return head + "Not tested: the config has no WCO/UWO best-of-n variant."
    single = bon["single"]
    parts, ok = [], []
    g0 = single["gold_end"]["mean"]
    parts.append(
        f"The single member {'overoptimizes' if overoptimizes(single) else 'does not overoptimize'}"
        f" (gold at n = N {_ci(single['gold_end'])}, peak {_ci(single['gold_peak'])})."
    )
    for v in ("wco", "uwo"):
        if v not in bon:
            continue
        s = bon[v]
        gain = (s["gold_end"]["mean"] - g0) / abs(g0) if g0 else float("nan")
        no_over = not overoptimizes(s)
        ok.append(no_over and gain > 0)
        parts.append(
            f"{v.upper()}: {'no' if no_over else 'a'} significant turn-down, gold at n = N "
            f"{_ci(s['gold_end'])} ({fmt(100 * gain, 0)}% relative to the single member)."
        )
    if not overoptimizes(single):
        ok.append(False)  # nothing to prevent: the contrast with a single model is untested
        parts.append("Without a turn-down of the single member the contrast is not shown.")
    verdict = _verdict(ok)
    return head + " ".join(parts) + f" Verdict: **{verdict}** here."


def ppo_claim(arms: Sequence[MitigationRunConfig], summary: Mapping[str, Summary]) -> str:
    """Coste et al. 2023, RL: with a small KL penalty WCO/UWO avoid overoptimization where a
    single reward model (same penalty) does not."""
    head = "**Coste et al., RL (WCO/UWO with a small KL penalty avoid overoptimization).** "
    ens = _find(arms, lambda a: _plain(a) and a.aggregation in ("wco", "uwo"))
    if not ens:
        return head + "Not tested: the config has no plain WCO/UWO arm."
    parts, ok = [], []
    for a in ens:
        same = _find(
            arms, lambda b, a=a: _plain(b) and b.aggregation == "single" and b.kl_coef == a.kl_coef
        )
        s = summary[a.name]
        verdict = not overoptimizes(s)
        text = (
            f"`{a.name}` (KL {a.kl_coef:g}) turns down in "
            f"{int(round(s['turned_down']['mean'] * s['turned_down']['n']))}/"
            f"{s['turned_down']['n']} seeds, end gold {_ci(s['gold_end'])}"
        )
        if same:
            b = summary[same[0].name]
            verdict = verdict and overoptimizes(b)
            text += (
                f"; the single member at the same KL (`{same[0].name}`) turns down in "
                f"{int(round(b['turned_down']['mean'] * b['turned_down']['n']))}/"
                f"{b['turned_down']['n']}, end gold {_ci(b['gold_end'])}"
            )
        else:  # nothing to contrast with: the claim is about the ensemble against one model
            verdict = False
            text += "; no single-member arm at the same KL, so the contrast is untested"
        ok.append(verdict)
        parts.append(text + ".")
    return head + " ".join(parts) + f" Verdict: **{_verdict(ok)}** here."


def variance_claim(arms: Sequence[MitigationRunConfig], summary: Mapping[str, Summary]) -> str:
    """Coste et al. 2023: member variance grows several-fold under mean optimisation and stays
    nearly flat under UWO (read here as: growth >= 2 under mean, <= 1.5 under UWO)."""
    head = "**Coste et al., ensemble variance (grows under mean, flat under UWO).** "
    mean = _find(arms, lambda a: _plain(a) and a.aggregation == "mean")
    uwo = _find(arms, lambda a: _plain(a) and a.aggregation == "uwo")
    if not mean or not uwo:
        return head + "Not tested: the config needs a plain mean arm and a plain UWO arm."
    gm, gu = summary[mean[0].name]["std_growth"], summary[uwo[0].name]["std_growth"]
    grows, flat = gm["mean"] >= 2.0, gu["mean"] <= 1.5
    # flat under UWO only means something if the variance grows under mean optimisation
    verdict = _verdict([grows, flat]) if grows else "not reproduced"
    return head + (
        f"Member std at the end over step 0: mean {_ci(gm)}, UWO {_ci(gu)} (criteria: ≥ 2 under "
        f"mean, ≤ 1.5 under UWO). Verdict: **{verdict}** here."
    )


def frontier_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
) -> str:
    """Noukhovitch et al. 2023: Elastic Reset has a better reward-vs-drift Pareto front than the
    unpenalised run and than a KL penalty."""
    head = "**Noukhovitch et al., Elastic Reset (better gold-vs-drift front).** "
    er = _find(arms, lambda a: _tests(a.post_step, "drift_front"))
    bases = _find(arms, lambda a: _plain(a) and a.aggregation == "single")
    if not er or not bases:
        return head + "Not tested: the config needs an Elastic Reset arm and a single-member arm."
    parts, ok = [], []
    for b in bases:
        g = frontier_gain(histories[er[0].name], histories[b.name])
        ok.append(g["lo"] > 0)
        parts.append(f"best gold minus `{b.name}`'s frontier at the same d: {_ci(g)}")
    verdict = _verdict(ok)
    counts = ", ".join(
        f"`{a.name}` {_downs(summary[a.name])}" for a in [er[0], *bases] if a.name in summary
    )
    return (
        head
        + f"`{er[0].name}`: "
        + "; ".join(parts)
        + f" (seeds turning down: {counts}). Verdict: **{verdict}** here."
    )


def transform_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
) -> str:
    """Wang et al. 2024 (LSC) and Fu et al. 2025 (PAR): the transform mitigates reward hacking
    (read here as: end gold above the unmitigated baseline's, paired over seeds, and no
    turn-down in most seeds where the baseline turns down in most; one of the two: partly)."""
    head = "**Wang et al. (LSC) and Fu et al. (PAR) mitigate hacking.** "
    tr = _find(arms, lambda a: a.transforms and all(_tests(t, "shaping") for t in a.transforms))
    return head + _against_baseline(arms, tr, summary, histories, "an LSC or PAR arm")


def quark_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
) -> str:
    """Lu et al. 2022: Quark (reward-quantile tokens with a KL to pi0) raises reward while
    staying close to pi0 (read here, as for the transforms: end gold above the baseline's and no
    turn-down where the baseline turns down; and d at the end below the baseline's, paired over
    seeds)."""
    head = "**Lu et al., Quark (more reward, close to π0).** "
    quark = _find(arms, lambda a: a.quark is not None)

    def closer(name: str, base: str) -> tuple[bool, str]:
        d = paired(_end(histories[name], "d"), _end(histories[base], "d"))
        near = d["hi"] < 0
        return near, f"d at the end minus the baseline's {_ci(d)} ({'' if near else 'not '}closer)"

    return head + _against_baseline(arms, quark, summary, histories, "a Quark arm", closer)


def _against_baseline(
    arms: Sequence[MitigationRunConfig],
    tested: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
    what_arm: str,
    extra: Any = None,
) -> str:
    """End gold minus the baseline's (paired over seeds) and turn-downs, with a verdict;
    ``extra(arm, baseline) -> (ok, text)`` is one more condition of a full reproduction."""
    base = _find(arms, is_baseline)
    if not base or not tested:
        return f"Not tested: the config needs {what_arm} and the plain baseline."
    b = base[0].name
    end_b = _end(histories[b], "reward/gold")
    parts, ok, partial = [], [], []
    base_down = overoptimizes(summary[b])
    n_b = int(round(summary[b]["turned_down"]["mean"] * len(end_b)))
    for a in tested:
        diff = paired(_end(histories[a.name], "reward/gold"), end_b)
        higher, kept = diff["lo"] > 0, base_down and not overoptimizes(summary[a.name])
        more, more_text = extra(a.name, b) if extra is not None else (True, "")
        ok.append(higher and kept and more)
        partial.append(higher or kept or (extra is not None and more))
        what = (
            "mitigates"
            if higher and kept
            else "prevents the turn-down, end gold not significantly higher"
            if kept
            else "end gold higher, still turns down"
            if higher
            else "does not clearly mitigate"
        )
        parts.append(
            f"`{a.name}`: end gold minus baseline {_ci(diff)}, turns down in "
            f"{int(round(summary[a.name]['turned_down']['mean'] * len(end_b)))}/{len(end_b)} "
            f"seeds ({what})" + (f"; {more_text}" if more_text else "")
        )
    verdict = _verdict(ok) if all(ok) or not any(partial) else "partly reproduced"
    return (
        f"The baseline `{b}` turns down in {n_b}/{len(end_b)} seeds. "
        + "; ".join(parts)
        + f". Verdict: **{verdict}** here."
    )


def _end(histories: Sequence[Sequence[Mapping[str, float]]], key: str) -> list[float]:
    return [float(h[-1][key]) for h in histories]


def salsa_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
) -> str:
    """Chegini et al. 2024 (SALSA): with the soup of two SFT models as the KL reference (and
    start) the policy deviates further from its reference and reaches more reward than with one
    SFT model, at the same KL coefficient (read here: training KL to the reference at the end
    and gold at the peak, paired over seeds, both higher)."""
    head = "**Chegini et al., SALSA (a soup reference allows larger deviation and more reward).** "
    soup = _find(arms, lambda a: a.reference == "soup" and a.quark is None)

    def rest(a: MitigationRunConfig) -> dict[str, Any]:  # everything but name and reference
        return a.model_dump(exclude={"name", "reference"})

    sft = [b for a in soup[:1] for b in arms if b.reference == "sft" and rest(b) == rest(a)]
    if not soup or not sft:
        return head + "Not tested: the config needs a soup arm and an otherwise equal SFT arm."
    a, b = soup[0], sft[0]
    kl = paired(_end(histories[a.name], "train/kl_k1"), _end(histories[b.name], "train/kl_k1"))
    peak = paired(
        [max(r["reward/gold"] for r in h) for h in histories[a.name]],
        [max(r["reward/gold"] for r in h) for h in histories[b.name]],
    )
    verdict = _verdict([kl["lo"] > 0, peak["lo"] > 0])
    return head + (
        f"`{a.name}` minus `{b.name}` (KL {a.kl_coef:g}), paired over seeds: training KL to "
        f"the own reference at the end {_ci(kl)} nats, gold at the peak {_ci(peak)}; "
        f"turn-downs {_downs(summary[a.name])} vs {_downs(summary[b.name])}. "
        f"Verdict: **{verdict}** here."
    )


def constrained_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
    points: Mapping[str, Mapping[str, float]],
) -> str:
    """Moskovitz et al. 2023: holding each component reward at its proxy point with Lagrange
    multipliers prevents the overoptimization of the composite (read here: the constrained
    arm does not turn down where the unconstrained composite does, and its end gold is higher,
    paired over seeds; where the config has the composite with the constrained arm's KL
    coefficient and no constraint, the constrained arm must also end above it, so the credit
    does not go to the KL penalty alone)."""
    head = "**Moskovitz et al., constrained RLHF (components held at proxy points).** "
    con = _find(arms, lambda a: a.constraint is not None)
    if not con:
        return head + "Not tested: the config has no constrained arm."
    parts, ok = [], []
    for a in con:
        assert a.constraint is not None
        src = a.constraint.points_from
        end = _end(histories[a.name], "reward/gold")
        diff = paired(end, _end(histories[src], "reward/gold"))
        src_down = overoptimizes(summary[src])
        held = not overoptimizes(summary[a.name])
        same_kl = _find(
            arms,
            lambda b, a=a, src=src: (
                b.components == a.components
                and b.constraint is None
                and b.kl_coef == a.kl_coef
                and b.name != src
            ),
        )
        beats_kl, kl_text = True, ""
        if same_kl:
            d_kl = paired(end, _end(histories[same_kl[0].name], "reward/gold"))
            beats_kl = d_kl["lo"] > 0
            kl_text = (
                f"; end gold minus `{same_kl[0].name}` (same components and KL "
                f"{a.kl_coef:g}, no constraint) {_ci(d_kl)}, turn-downs "
                f"{_downs(summary[same_kl[0].name])}"
            )
        ok.append(src_down and held and diff["lo"] > 0 and beats_kl)
        pts = points.get(a.name, {})
        ends = ", ".join(
            f"{n} {fmt(float(np.mean(_end(histories[a.name], f'component/{n}'))), 2)} "
            f"(point {fmt(v, 2)})"
            for n, v in pts.items()
        )
        parts.append(
            f"`{a.name}` vs `{src}`: end gold difference {_ci(diff)}, turn-downs "
            f"{_downs(summary[a.name])} vs {_downs(summary[src])}{kl_text}; components at the "
            f"end (standardised): {ends}"
        )
    return head + "; ".join(parts) + f". Verdict: **{_verdict(ok)}** here."
