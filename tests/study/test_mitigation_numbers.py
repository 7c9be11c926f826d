"""The numbers behind the mitigation tables and verdicts: intervals, per-run and per-pool
quantities, proxy points, member aggregation, and every published-claim verdict computed from
hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from proxygap.config import MitigationRunConfig
from proxygap.report.mitigation_claims import (
    constrained_claim,
    frontier_gain,
    quark_claim,
    salsa_claim,
    seed_share,
    transform_claim,
)
from proxygap.report.mitigation_coste import bon_claim, ppo_claim, variance_claim
from proxygap.rewards.proxy import aggregate_members
from proxygap.study.mitigation_bon import average_member, bon_seed_quantities, member_diagnostics
from proxygap.study.mitigation_ensembles import member_seeds
from proxygap.study.mitigation_stats import (
    QUANTITIES,
    proxy_points,
    rl_run_quantities,
    t_interval,
)

# t quantile 0.975 with 2 degrees of freedom, 4.3027 in tables; exactly
# sqrt(2) * 0.95 / sqrt(1 - 0.95^2) since the t_2 CDF is 1/2 + x / (2 sqrt(2 + x^2)))
T2 = math.sqrt(2) * 0.95 / math.sqrt(1 - 0.95**2)


# ---------------------------------------------------------------- interval maths
def test_t_interval_on_hand_derived_numbers() -> None:
    # x = 1, 2, 3: mean 2, s = 1, half-width t_{0.975,2} * 1 / sqrt(3)
    ci = t_interval([1.0, 2.0, 3.0])
    assert abs(T2 - 4.3027) < 1e-4  # the tabulated value
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["hi"] - ci["mean"] == pytest.approx(T2 / math.sqrt(3), rel=1e-12)
    assert ci["mean"] - ci["lo"] == pytest.approx(T2 / math.sqrt(3), rel=1e-12)
    one = t_interval([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["lo"]) and math.isnan(one["hi"])
    with pytest.raises(ValueError, match="non-empty"):
        t_interval([])


def _row(step: float, gold: float, d: float, proxy: float, std: float, se: float = 0.1) -> dict:
    return {
        "step": step, "reward/gold": gold, "reward/gold_se": se, "d": d, "reward/proxy": proxy,
        "ensemble/std": std,
    }  # fmt: skip


def test_run_quantities_by_hand() -> None:
    h = [
        _row(0, 0.0, 0.0, 0.0, 0.5, se=0.0),
        _row(10, 0.4, 0.5, 0.6, 0.6),
        _row(20, -0.2, 1.5, 1.3, 1.5),
    ]
    q = rl_run_quantities(h)
    assert q["gold_peak"] == 0.4 and q["d_peak"] == 0.5 and q["gold_end"] == -0.2
    assert q["drop"] == pytest.approx(0.6)
    assert q["gap_end"] == pytest.approx(1.3 - (-0.2))
    assert q["std_growth"] == pytest.approx(1.5 / 0.5)
    assert q["turned_down"] == 1.0  # 0.6 > 2 * hypot(0.1, 0.1) = 0.283
    h[-1]["reward/gold"] = 0.3  # drop 0.1 < 0.283
    assert rl_run_quantities(h)["turned_down"] == 0.0
    assert set(q) == set(QUANTITIES)


def test_bon_seed_quantities_by_hand() -> None:
    # 3 prompts, n in (1, 2, 4) with d = (0, 0.5, 1); gold rises then falls on every prompt
    gold = np.array([[1.0, 2.0, 1.5], [0.0, 1.2, 0.4], [2.0, 2.9, 2.6]])
    proxy = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 3.0]])
    std = np.array([[1.0, 1.5, 2.0], [2.0, 2.0, 2.0], [1.0, 1.0, 4.0]])
    q = bon_seed_quantities(np.stack([gold, proxy, std], axis=-1), np.array([0.0, 0.5, 1.0]))
    # relative to n = 1 the mean curve is (0, 1.033, 0.5): peak at n = 2, d 0.5
    assert q["gold_peak"] == pytest.approx((1.0 + 1.2 + 0.9) / 3)
    assert q["gold_end"] == pytest.approx((0.5 + 0.4 + 0.6) / 3)
    assert q["d_peak"] == 0.5
    drops = np.array([0.5, 0.8, 0.3])
    assert q["drop"] == pytest.approx(drops.mean())
    assert q["gap_end"] == pytest.approx(((2 - 0.5) + (2 - 0.4) + (3 - 0.6)) / 3)
    # member std of the pick, mean over prompts: 4/3 at n = 1, 8/3 at n = N
    assert q["std_growth"] == pytest.approx(2.0)
    se = drops.std(ddof=1) / math.sqrt(3)  # 0.144: mean drop 0.533 > 2 * SE
    assert q["turned_down"] == 1.0 and drops.mean() > 2 * se
    flat = np.stack([gold[:, [0, 1, 1]], proxy, std], axis=-1)  # no fall after n = 2
    assert bon_seed_quantities(flat, np.array([0.0, 0.5, 1.0]))["turned_down"] == 0.0
    with pytest.raises(ValueError, match=r"\(P, J=3, 3\)"):
        bon_seed_quantities(np.zeros((3, 2, 3)), np.array([0.0, 0.5, 1.0]))


def test_proxy_points_by_hand() -> None:
    def run(golds: list[float], comps: list[tuple[float, float]]) -> list[dict]:
        return [
            {"reward/gold": g, "component/a": a, "component/b": b}
            for g, (a, b) in zip(golds, comps, strict=True)
        ]

    # gold peaks at evaluation 1 in the first run (a=0.4, b=-0.2) and at 2 in the second
    # (a=0.8, b=0.0): the points are the means (0.6, -0.1)
    runs = [
        run([0.0, 0.5, 0.1], [(0.0, 0.0), (0.4, -0.2), (1.0, 0.3)]),
        run([0.0, 0.2, 0.3], [(0.1, 0.1), (0.5, 0.2), (0.8, 0.0)]),
    ]
    np.testing.assert_allclose(proxy_points(runs, ["a", "b"]), [0.6, -0.1])
    np.testing.assert_allclose(proxy_points(runs, ["b"]), [-0.1])
    with pytest.raises(ValueError, match="components \\['c'\\]"):
        proxy_points(runs, ["c"])


def test_aggregate_members() -> None:
    x = np.array([[1.0, 3.0, 2.0], [0.0, -2.0, 2.0]])  # (B=2, K=3)
    assert aggregate_members(x, "single", member=1, lam=0.0).tolist() == [3.0, -2.0]
    assert aggregate_members(x, "wco", member=0, lam=0.0).tolist() == [1.0, -2.0]
    mean = aggregate_members(x, "mean", member=0, lam=0.0)
    np.testing.assert_allclose(aggregate_members(x, "uwo", member=0, lam=0.0), mean)
    # row 0: mean 2, population variance 2/3; UWO lambda 0.5 -> 2 - 1/3
    assert aggregate_members(x, "uwo", member=0, lam=0.5)[0] == pytest.approx(2 - 1 / 3)


# ---------------------------------------------------------------- claims from numbers
def _s(growth: float) -> dict:
    return {"std_growth": {"mean": growth, "lo": growth - 0.1, "hi": growth + 0.1, "n": 3}}


def test_variance_claim_follows_the_numbers() -> None:
    arms = [
        MitigationRunConfig(name="m", aggregation="mean"),
        MitigationRunConfig(name="u", aggregation="uwo"),
    ]
    assert "**reproduced**" in variance_claim(arms, {"m": _s(3.0), "u": _s(1.1)})
    assert "**not reproduced**" in variance_claim(arms, {"m": _s(1.2), "u": _s(1.9)})
    assert "Not tested" in variance_claim(arms[:1], {"m": _s(3.0)})


def _bon(end: float, down: bool) -> dict:
    q = {"mean": end, "lo": end - 0.1, "hi": end + 0.1, "n": 8}
    return {"gold_end": q, "gold_peak": q, "turned_down": {"mean": float(down), "n": 1}}


def test_bon_claim_follows_the_numbers() -> None:
    # WCO 0.9 vs single 0.5: +80%; reproduced only when the single member turns down
    text = bon_claim({"single": _bon(0.5, True), "wco": _bon(0.9, False)})
    assert "**reproduced**" in text and "80% relative" in text
    assert "**partly reproduced**" in bon_claim(
        {"single": _bon(0.5, False), "wco": _bon(0.9, False)}
    )
    assert "**not reproduced**" in bon_claim({"single": _bon(0.5, True), "wco": _bon(0.4, True)})


def test_bon_claim_states_the_share_of_seeds() -> None:
    # per seed: WCO ends at 0.9, 0.2, 0.8 and never turns down; the average single member ends
    # at 0.5 on every seed: WCO is higher on seeds 0 and 2 -> the claim holds on 2/3 seeds;
    # paired differences 0.4, -0.3, 0.3: mean 0.4 / 3
    single = [{"gold_end": 0.5, "turned_down": 0.8}] * 3
    wco = [{"gold_end": g, "turned_down": 0.0} for g in (0.9, 0.2, 0.8)]
    summ = {"single": _bon(0.5, True), "wco": _bon(0.9, False)}
    text = bon_claim(summ, {"single": single, "wco": wco})
    assert "holds on 2/3 seeds" in text and "paired difference 0.13 [" in text
    assert "**reproduced**" in text
    wco[2] = {"gold_end": 0.8, "turned_down": 1.0}  # now only seed 0 holds: 1/3
    text = bon_claim(summ, {"single": single, "wco": wco})
    assert "holds on 1/3 seeds" in text and "**not reproduced**" in text
    diag = [{"error_corr": 0.9, "ceilings": [1.0, 1.4], "wco_argmin": [0.75, 0.25]}]
    assert "correlate 0.90" in bon_claim(summ, {"single": single, "wco": wco}, diag)
    assert seed_share([True, False, True, True]) == "3/4 seeds"


def test_average_member_is_the_mean_of_the_members() -> None:
    # two members on one seed: gold at the end 1.0 and 0.4 -> 0.7; one of two turns down -> 0.5
    a = {"gold_end": 1.0, "gold_peak": 1.2, "turned_down": 1.0}
    b = {"gold_end": 0.4, "gold_peak": 0.6, "turned_down": 0.0}
    assert average_member([a, b]) == pytest.approx(
        {"gold_end": 0.7, "gold_peak": 0.9, "turned_down": 0.5}
    )
    with pytest.raises(ValueError, match="no member runs"):
        average_member([])


def test_member_diagnostics_by_hand() -> None:
    # one prompt, three samples, two members. Gold (0, 1, 2). Member 0 = gold + (0, 0, 3), member
    # 1 = gold + (0, 0, 6): errors (0, 0, 3) and (0, 0, 6) correlate exactly 1.
    gold = np.array([[0.0, 1.0, 2.0]])
    members = np.stack([gold + [0, 0, 3], gold + [0, 0, 6]], axis=-1)  # (1, 3, 2)
    wco = members.min(axis=-1)  # (0, 1, 5): pick sample 2, where member 0 (5 < 8) is the min
    d = member_diagnostics(gold, members, wco)
    assert d["error_corr"] == pytest.approx(1.0)
    assert d["wco_argmin"] == [1.0, 0.0] and d["wco_same_pick"] == [1.0, 1.0]
    # member 1's error flips sign: errors (0, 0, 3) and (0, 0, -3) correlate -1; WCO picks
    # sample 1 (scores min(1, 1) = 1 vs min(5, -1) = -1), member 1 picks sample 1 as well
    members[..., 1] = gold + [0, 0, -3]
    d = member_diagnostics(gold, members, members.min(axis=-1))
    assert d["error_corr"] == pytest.approx(-1.0)
    assert d["wco_same_pick"] == [0.0, 1.0]


def test_member_seeds_differ_across_seeds_and_repeat() -> None:
    seeds = {s: member_seeds(7, s, 5) for s in range(4)}
    assert all(len(v) == 5 for v in seeds.values())
    assert len({x for v in seeds.values() for x in v}) == 20  # all distinct
    assert member_seeds(7, 2, 5) == seeds[2]  # reproducible
    assert member_seeds(8, 2, 5) != seeds[2]  # another study seed, another draw
    assert member_seeds(7, 2, 3) == seeds[2][:3]  # a member's seed does not depend on K


def _runs(ends: list[float], comps: tuple[float, float] = (0.0, 0.0)) -> list[list[dict]]:
    row = {"component/s": comps[0], "component/c": comps[1]}
    return [[{"reward/gold": 0.0, **row}, {"reward/gold": e, **row}] for e in ends]


def _down(frac: float) -> dict:
    return {"turned_down": {"mean": frac, "n": 3}}


def test_constrained_claim_follows_the_numbers() -> None:
    comp = {"components": ["s", "c"]}
    arms = [
        MitigationRunConfig(name="sum", **comp),
        MitigationRunConfig(name="sum-kl", kl_coef=0.2, **comp),
        MitigationRunConfig(name="con", kl_coef=0.2, constraint={"points_from": "sum"}, **comp),
    ]
    summary = {"sum": _down(1.0), "sum-kl": _down(0.0), "con": _down(0.0)}
    hist = {"sum": _runs([-1.0, -2.0, -1.5]), "con": _runs([0.4, 0.5, 0.45], (0.4, 0.5))}
    points = {"con": {"s": 0.35, "c": 0.5}}
    # beats the composite (+1.98) and the same-KL composite (+0.2 on every seed)
    hist["sum-kl"] = _runs([0.2, 0.3, 0.25])
    text = constrained_claim(arms, summary, hist, points)
    assert "**reproduced**" in text and "s 0.40 (point 0.35)" in text
    # the same KL without the constraint ends as high: the credit goes to the KL penalty
    hist["sum-kl"] = _runs([0.4, 0.5, 0.45])
    assert "**not reproduced**" in constrained_claim(arms, summary, hist, points)
    # without a same-KL arm only the composite is the reference
    text = constrained_claim([arms[0], arms[2]], summary, hist, points)
    assert "**reproduced**" in text
    assert "Not tested" in constrained_claim(arms[:2], summary, hist, points)


def _gold_d(ends: list[float], ds: list[float]) -> list[list[dict]]:
    return [
        [{"reward/gold": 0.0, "d": 0.0}, {"reward/gold": e, "d": d}]
        for e, d in zip(ends, ds, strict=True)
    ]


def test_quark_and_transform_claims_follow_the_numbers() -> None:
    arms = [
        MitigationRunConfig(name="base"),
        MitigationRunConfig(name="q", quark={}),
        MitigationRunConfig(name="p", transforms=[{"method": "par"}]),
    ]
    summary = {"base": _down(1.0), "q": _down(0.0), "p": _down(0.0)}
    hist = {
        "base": _gold_d([-1.0, -2.0, -1.5], [2.0, 2.2, 2.1]),
        "q": _gold_d([0.2, 0.1, 0.3], [0.5, 0.6, 0.4]),  # +1.2..+2.1 gold, d 1.6 lower
        "p": _gold_d([0.2, 0.1, 0.3], [2.5, 2.6, 2.4]),
    }
    assert "**reproduced**" in quark_claim(arms, summary, hist)
    assert "**reproduced**" in transform_claim(arms, summary, hist)
    hist["q"] = _gold_d([0.2, 0.1, 0.3], [2.5, 2.6, 2.4])  # as far from pi0 as the baseline
    text = quark_claim(arms, summary, hist)
    assert "**partly reproduced**" in text and "(not closer)" in text
    summary["p"] = _down(1.0)
    hist["p"] = _gold_d([-1.0, -2.1, -1.4], [2.5, 2.6, 2.4])  # no better than the baseline
    assert "**not reproduced**" in transform_claim(arms, summary, hist)


def test_ppo_and_salsa_claims_need_their_controls() -> None:
    wco = MitigationRunConfig(name="w", aggregation="wco", kl_coef=0.01)
    summary = {"w": {**_down(0.0), "gold_end": {"mean": 0.3, "lo": 0.2, "hi": 0.4, "n": 3}}}
    # no single member at KL 0.01: the ensemble's lack of a turn-down alone proves nothing
    text = ppo_claim([wco], summary)
    assert "**not reproduced**" in text and "contrast is untested" in text
    soup = MitigationRunConfig(name="s", reference="soup", kl_coef=0.01)
    other = MitigationRunConfig(name="f", reference="sft", kl_coef=0.01, aggregation="mean")
    assert "Not tested" in salsa_claim([soup, other], {}, {})
    sft = MitigationRunConfig(name="f", reference="sft", kl_coef=0.01)

    def runs(kls: list[float], peaks: list[float]) -> list[list[dict]]:
        return [
            [{"reward/gold": 0.0, "train/kl_k1": 0.0}, {"reward/gold": p, "train/kl_k1": k}]
            for k, p in zip(kls, peaks, strict=True)
        ]

    summary = {"s": _down(0.0), "f": _down(0.0)}
    hist = {"s": runs([2.0, 2.1, 2.2], [0.5, 0.6, 0.7]), "f": runs([1.0, 1.0, 1.1], [0.3] * 3)}
    assert "**reproduced**" in salsa_claim([soup, sft], summary, hist)
    hist["f"] = runs([2.0, 2.1, 2.2], [0.5, 0.6, 0.7])
    assert "**not reproduced**" in salsa_claim([soup, sft], summary, hist)


def test_frontier_gain_by_hand() -> None:
    base = [[{"d": 0.0, "reward/gold": 0.0}, {"d": 1.0, "reward/gold": 0.5}]] * 3
    # the arm's best point is at d = 0.8 with gold 0.3, 0.4, 0.5; the base reached 0 by d = 0.8
    arm = [[{"d": 0.0, "reward/gold": 0.0}, {"d": 0.8, "reward/gold": g}] for g in (0.3, 0.4, 0.5)]
    g = frontier_gain(arm, base)
    assert g["mean"] == pytest.approx(0.4)
    assert g["hi"] - g["mean"] == pytest.approx(T2 * 0.1 / math.sqrt(3))
