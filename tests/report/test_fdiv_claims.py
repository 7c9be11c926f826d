"""Verdicts on the f-divergence claims (proxygap/report/fdiv_claims.py) from hand-made numbers.

Three seeds per arm. The paired interval of differences ``d`` is ``mean ± t_{0.975,2} s/sqrt(3)``
with ``t_{0.975,2} = 4.3027``; differences ``[0.10, 0.11, 0.12]`` have mean 0.11 and ``s =
0.01``, so the interval is ``0.11 ± 0.0248``: above 0 (significant). ``[0.3, -0.2, 0.05]`` has
mean 0.05 and ``s = 0.25``, interval ``0.05 ± 0.62``: holds 0 (not significant).
"""

from __future__ import annotations

import pytest

from proxygap.report.fdiv_claims import fdiv_verdicts, paired, significance

UP = [0.10, 0.11, 0.12]  # significantly positive
NOISE = [0.3, -0.2, 0.05]  # not significant
DOWN = [-x for x in UP]  # significantly negative


def arms(base: str, others: dict[str, tuple[list[float], list[float]]]) -> dict:
    """Per-seed quantities: the baseline at gold 1.0 / distinct-2 0.5 (plus a seed effect that
    pairing removes), each other arm shifted by (gold, diversity) differences per seed."""
    seed_effect = [0.0, 0.4, -0.3]
    runs = {base: [{"gold_end": 1.0 + e, "distinct2_end": 0.5 + e} for e in seed_effect]}
    for arm, (dg, dv) in others.items():
        runs[arm] = [
            {"gold_end": 1.0 + e + g, "distinct2_end": 0.5 + e + v}
            for e, g, v in zip(seed_effect, dg, dv, strict=True)
        ]
    return {"runs": runs, "baseline": base}


def test_paired_interval_by_hand() -> None:
    runs = arms("a", {"b": (UP, NOISE)})["runs"]
    iv = paired(runs, "b", "a", "gold_end")
    assert iv["mean"] == pytest.approx(0.11)
    assert iv["hi"] - iv["mean"] == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)
    assert significance(iv) == 1
    assert significance(paired(runs, "b", "a", "distinct2_end")) == 0
    assert significance(paired(runs, "a", "b", "gold_end")) == -1


def by_claim(summary: dict) -> dict[str, str]:
    return {v.claim: v.status for v in fdiv_verdicts(summary)}


def test_rl_claims_held() -> None:
    # forward KL: more diverse, less gold; JS: more diverse than reverse KL at equal gold, more
    # gold than forward KL at equal diversity (forward KL - JS diversity: UP - UP = 0 exactly)
    rl = arms("reverse_kl", {"forward_kl": (DOWN, UP), "js": ([0.0, 0.01, -0.01], UP)})
    got = by_claim({"rl": rl})
    assert got["forward KL yields more diverse samples than reverse KL"] == "held"
    assert got["JS gives the best trade-off between alignment (gold) and diversity"] == "held"


def test_rl_claims_did_not_hold() -> None:
    # forward KL less diverse; JS dominated by reverse KL (less gold, no more diversity)
    rl = arms("reverse_kl", {"forward_kl": (NOISE, DOWN), "js": (DOWN, [0.0, 0.01, -0.01])})
    got = by_claim({"rl": rl})
    assert got["forward KL yields more diverse samples than reverse KL"] == "did not hold"
    assert got["JS gives the best trade-off between alignment (gold) and diversity"] == (
        "did not hold"
    )


def test_rl_claims_inconclusive() -> None:
    rl = arms("reverse_kl", {"forward_kl": (NOISE, NOISE), "js": (NOISE, NOISE)})
    got = by_claim({"rl": rl})
    assert set(got.values()) == {"inconclusive"}


def test_daa_claims() -> None:
    daa = arms("dpo", {"fdpo_fkl": (DOWN, UP), "fdpo_js": (NOISE, DOWN), "fdpo_alpha": (UP, NOISE)})
    verdicts = {v.claim: v for v in fdiv_verdicts({"daa": daa})}
    fkl = verdicts["f-DPO forward KL trades some reward for diversity against DPO"]
    assert fkl.status == "held" and "a reward cost" in fkl.sentence
    js = verdicts["f-DPO JS trades some reward for diversity against DPO"]
    assert js.status == "did not hold"
    alpha = verdicts["f-DPO alpha trades some reward for diversity against DPO"]
    assert alpha.status == "inconclusive" and "no reward cost" in alpha.sentence
    assert verdicts["reverse-KL f-DPO is DPO"].status == "held"
    for arm in ("forward KL", "JS"):  # these runs carry no held-out ECE
        assert verdicts[f"f-DPO {arm} is better calibrated than DPO"].status == "not measured"
    # the sentence carries the interval: mean 0.110 for the forward-KL diversity difference
    assert "distinct-2 0.110 [" in fkl.sentence


def test_calibration_claims() -> None:
    # ECE per seed: DPO 0.10, 0.20, 0.15; forward KL lower by UP (held), JS higher by UP (did
    # not hold), so the paired intervals are those of UP, DOWN: 0.11 ± 0.0248
    daa = arms("dpo", {"fdpo_fkl": (NOISE, NOISE), "fdpo_js": (NOISE, NOISE)})
    base_ece = [0.10, 0.20, 0.15]
    for arm, shift in (("dpo", [0.0] * 3), ("fdpo_fkl", DOWN), ("fdpo_js", UP)):
        for run, e, dx in zip(daa["runs"][arm], base_ece, shift, strict=True):
            run["heldout_ece_end"] = e + dx
    verdicts = {v.claim: v for v in fdiv_verdicts({"daa": daa})}
    fkl = verdicts["f-DPO forward KL is better calibrated than DPO"]
    assert fkl.status == "held" and "held-out ECE -0.110 [" in fkl.sentence
    assert "(DPO: 0.150 [" in fkl.sentence and "benchmark questions" in fkl.sentence
    assert verdicts["f-DPO JS is better calibrated than DPO"].status == "did not hold"
    daa["runs"]["fdpo_js"][1]["heldout_ece_end"] = float("nan")
    verdicts = {v.claim: v for v in fdiv_verdicts({"daa": daa})}
    assert verdicts["f-DPO JS is better calibrated than DPO"].status == "not measured"


def test_summary_lines() -> None:
    from proxygap.report.fdiv_claims import fdiv_lines

    rl = arms("reverse_kl", {"forward_kl": (DOWN, UP), "js": ([0.0, 0.01, -0.01], UP)})
    iv = {"mean": 0.2, "lo": 0.1, "hi": 0.3, "n": 3}
    rl |= {"d_common": 0.6, "summary": {a: {"gold_at_d": iv, "gold_end": iv} for a in rl["runs"]}}
    lines = fdiv_lines({"rl": rl})
    assert lines[0].startswith("f-divergences, RL (f-DPG): gold in SD units at d* = 0.600: ")
    assert "JS 0.200 [0.100, 0.300] at d* (end 0.200 [0.100, 0.300])" in lines[0]
    assert lines[1] == "f-divergences, published claims (2): 2 held."
