"""Whether each published claim about mitigations (docs/methods.md §4) reproduced in this study.

Every verdict is computed from the mitigation summary (means and 95% intervals over seeds or
prompts, see :mod:`proxygap.study.mitigation_stats`) and the saved histories, and says on how
many seeds its per-seed comparison holds; a claim whose arms are missing from the config says
so. Coste et al.'s ensemble claims are in :mod:`proxygap.report.mitigation_coste`.
"Overoptimizes" means the turn-down test (gold falls from its peak by more than twice the
standard error of the drop) fires for most seeds (RL and best-of-n: a fresh pool per seed).
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


def ci_text(q: Mapping[str, float], digits: int = 2) -> str:
    return f"{fmt(q['mean'], digits)} [{fmt(q['lo'], digits)}, {fmt(q['hi'], digits)}]"


def verdict_of(ok: Sequence[bool]) -> str:
    return "reproduced" if all(ok) else ("partly reproduced" if any(ok) else "not reproduced")


def downs(s: Summary) -> str:
    td = s["turned_down"]
    return f"{int(round(td['mean'] * td['n']))}/{td['n']}"


def overoptimizes(s: Summary) -> bool:
    return s["turned_down"]["mean"] > 0.5


def seed_share(flags: Sequence[bool]) -> str:
    """``"k/S seeds"``: on how many of the ``S`` seeds a per-seed condition holds."""
    return f"{sum(bool(f) for f in flags)}/{len(flags)} seeds"


def plain(arm: MitigationRunConfig) -> bool:
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
    return plain(arm) and arm.aggregation == "single" and arm.kl_coef == 0


def find_arms(arms: Sequence[MitigationRunConfig], pred: Any) -> list[MitigationRunConfig]:
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
    return t_interval(frontier_gains(arm, base))


def frontier_gains(
    arm: Sequence[Sequence[Mapping[str, float]]], base: Sequence[Sequence[Mapping[str, float]]]
) -> list[float]:
    """The per-seed gains behind :func:`frontier_gain`."""
    gains = []
    for h, b in zip(arm, base, strict=True):
        best = max(h, key=lambda r: r["reward/gold"])
        reach = [r["reward/gold"] for r in b if r["d"] <= best["d"]]
        gains.append(best["reward/gold"] - (max(reach) if reach else 0.0))
    return gains


def paired(arm: Sequence[float], base: Sequence[float]) -> dict:
    """t-interval of a per-seed difference (``arm[i] - base[i]``)."""
    return t_interval(np.asarray(arm, dtype=float) - np.asarray(base, dtype=float))


def frontier_claim(
    arms: Sequence[MitigationRunConfig],
    summary: Mapping[str, Summary],
    histories: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
) -> str:
    """Noukhovitch et al. 2023: Elastic Reset has a better reward-vs-drift Pareto front than the
    unpenalised run and than a KL penalty."""
    head = "**Noukhovitch et al., Elastic Reset (better gold-vs-drift front).** "
    er = find_arms(arms, lambda a: _tests(a.post_step, "drift_front"))
    bases = find_arms(arms, lambda a: plain(a) and a.aggregation == "single")
    if not er or not bases:
        return head + "Not tested: the config needs an Elastic Reset arm and a single-member arm."
    parts, ok = [], []
    for b in bases:
        gains = frontier_gains(histories[er[0].name], histories[b.name])
        g = t_interval(gains)
        ok.append(g["lo"] > 0)
        parts.append(
            f"best gold minus `{b.name}`'s frontier at the same d: {ci_text(g)}, above it on "
            f"{seed_share([x > 0 for x in gains])}"
        )
    verdict = verdict_of(ok)
    counts = ", ".join(
        f"`{a.name}` {downs(summary[a.name])}" for a in [er[0], *bases] if a.name in summary
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
    tr = find_arms(arms, lambda a: a.transforms and all(_tests(t, "shaping") for t in a.transforms))
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
    quark = find_arms(arms, lambda a: a.quark is not None)

    def closer(name: str, base: str) -> tuple[bool, str]:
        d = paired(_end(histories[name], "d"), _end(histories[base], "d"))
        near = d["hi"] < 0
        return (
            near,
            f"d at the end minus the baseline's {ci_text(d)} ({'' if near else 'not '}closer)",
        )

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
    base = find_arms(arms, is_baseline)
    if not base or not tested:
        return f"Not tested: the config needs {what_arm} and the plain baseline."
    b = base[0].name
    end_b = _end(histories[b], "reward/gold")
    parts, ok, partial = [], [], []
    base_down = overoptimizes(summary[b])
    n_b = int(round(summary[b]["turned_down"]["mean"] * len(end_b)))
    for a in tested:
        end_a = _end(histories[a.name], "reward/gold")
        diff = paired(end_a, end_b)
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
            f"`{a.name}`: end gold minus baseline {ci_text(diff)} (higher on "
            f"{seed_share([x > y for x, y in zip(end_a, end_b, strict=True)])}), turns down in "
            f"{int(round(summary[a.name]['turned_down']['mean'] * len(end_b)))}/{len(end_b)} "
            f"seeds ({what})" + (f"; {more_text}" if more_text else "")
        )
    verdict = verdict_of(ok) if all(ok) or not any(partial) else "partly reproduced"
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
    soup = find_arms(arms, lambda a: a.reference == "soup" and a.quark is None)

    def rest(a: MitigationRunConfig) -> dict[str, Any]:  # everything but name and reference
        return a.model_dump(exclude={"name", "reference"})

    sft = [b for a in soup[:1] for b in arms if b.reference == "sft" and rest(b) == rest(a)]
    if not soup or not sft:
        return head + "Not tested: the config needs a soup arm and an otherwise equal SFT arm."
    a, b = soup[0], sft[0]
    kls = [_end(histories[n], "train/kl_k1") for n in (a.name, b.name)]
    peaks = [[max(r["reward/gold"] for r in h) for h in histories[n]] for n in (a.name, b.name)]
    kl, peak = paired(*kls), paired(*peaks)
    verdict = verdict_of([kl["lo"] > 0, peak["lo"] > 0])
    flags = [
        ka > kb and pa > pb
        for ka, kb, pa, pb in zip(kls[0], kls[1], peaks[0], peaks[1], strict=True)
    ]
    return head + (
        f"`{a.name}` minus `{b.name}` (KL {a.kl_coef:g}), paired over seeds: training KL to "
        f"the own reference at the end {ci_text(kl)} nats, gold at the peak {ci_text(peak)} "
        f"(both higher on {seed_share(flags)}); "
        f"turn-downs {downs(summary[a.name])} vs {downs(summary[b.name])}. "
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
    con = find_arms(arms, lambda a: a.constraint is not None)
    if not con:
        return head + "Not tested: the config has no constrained arm."
    parts, ok = [], []
    for a in con:
        assert a.constraint is not None
        src = a.constraint.points_from
        end, end_src = _end(histories[a.name], "reward/gold"), _end(histories[src], "reward/gold")
        diff = paired(end, end_src)
        src_down = overoptimizes(summary[src])
        held = not overoptimizes(summary[a.name])
        same_kl = find_arms(
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
                f"{a.kl_coef:g}, no constraint) {ci_text(d_kl)}, turn-downs "
                f"{downs(summary[same_kl[0].name])}"
            )
        ok.append(src_down and held and diff["lo"] > 0 and beats_kl)
        pts = points.get(a.name, {})
        ends = ", ".join(
            f"{n} {fmt(float(np.mean(_end(histories[a.name], f'component/{n}'))), 2)} "
            f"(point {fmt(v, 2)})"
            for n, v in pts.items()
        )
        parts.append(
            f"`{a.name}` vs `{src}`: end gold difference {ci_text(diff)} (higher on "
            f"{seed_share([x > y for x, y in zip(end, end_src, strict=True)])}), turn-downs "
            f"{downs(summary[a.name])} vs {downs(summary[src])}{kl_text}; components at the "
            f"end (standardised): {ends}"
        )
    return head + "; ".join(parts) + f". Verdict: **{verdict_of(ok)}** here."
