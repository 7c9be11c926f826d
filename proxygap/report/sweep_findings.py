"""A sweep's findings seed by seed, and the share of seeds on which each holds.

One seed's study states findings such as "rm-3k's best-of-n gold turns down"; whether that is a
property of the setting or of the seed shows only across seeds. For every setting of a sweep
(the cells that differ only in a seed) this module lists, per seed and proxy, the numbers behind
the turn-down (gold at the peak and where, the drop in standard errors, whether it exceeds two)
and counts, per finding, the seeds on which it holds:

- *some proxy turns down*: at least one proxy's best-of-n drop exceeds two standard errors
  (the demo's headline);
- *<proxy> turns down*, for each proxy;
- *the proxy with the most pairs peaks highest*, and *held-out accuracy rises with pairs*, when
  the proxies differ in their number of pairs;
- *RL <run> turns down*, for each RL or DAA run the cells ran (:mod:`proxygap.report.sweep_stages`).

A finding that cannot be judged on a seed (e.g. no summary) counts neither way: its share is
over the seeds that judge it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "bon_findings", "seed_rows", "share_of_seeds", "stage_findings"]


def share_of_seeds(holds: Sequence[bool | None]) -> tuple[int, int]:
    """``(k, n)``: the finding holds on ``k`` of the ``n`` seeds that judge it (None: not
    judged)."""
    judged = [bool(h) for h in holds if h is not None]
    return sum(judged), len(judged)


@dataclass(frozen=True)
class Finding:
    """One finding and, per seed in the group's order, whether it holds (None: not judged)."""

    text: str
    holds: list[bool | None]

    @property
    def share(self) -> tuple[int, int]:
        return share_of_seeds(self.holds)

    def as_dict(self) -> dict[str, Any]:
        k, n = self.share
        return {"finding": self.text, "holds": self.holds, "seeds_holding": k, "seeds": n}


def _drop_in_se(turn: Mapping[str, Any]) -> float:
    se = float(turn.get("drop_se") or 0.0)
    return float(turn["drop"]) / se if se > 0 else 0.0


def seed_rows(seeds: Sequence[Any], summaries: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Per seed and proxy: ``[seed, proxy, gold at peak, n at peak, drop / SE, turns down]``
    from each seed's ``summary.json`` (``summaries[i]`` belongs to ``seeds[i]``)."""
    rows = []
    for seed, summary in zip(seeds, summaries, strict=True):
        for p in summary["proxies"]:
            t = p["turn_down"]
            rows.append(
                [seed, p["name"], float(t["gold_peak"]), int(t["peak_n"]), _drop_in_se(t),
                 bool(t["significant"])]
            )  # fmt: skip
    return rows


def _most_pairs(proxies: Sequence[Mapping[str, Any]]) -> bool | None:
    """Whether the proxy with the most pairs has the highest gold peak (None: no unique one)."""
    if any(p.get("n_pairs") is None for p in proxies):
        return None
    pairs = [int(p["n_pairs"]) for p in proxies]
    if len(set(pairs)) < 2 or pairs.count(max(pairs)) > 1:
        return None
    top = max(proxies, key=lambda p: float(p["turn_down"]["gold_peak"]))
    return bool(top["n_pairs"] == max(pairs))


def _accuracy_rises(proxies: Sequence[Mapping[str, Any]]) -> bool | None:
    """Whether held-out accuracy strictly rises with the number of pairs (None: not judged)."""
    if any(p.get("n_pairs") is None or p.get("heldout_accuracy") is None for p in proxies):
        return None
    ordered = sorted(proxies, key=lambda p: int(p["n_pairs"]))
    pairs = [int(p["n_pairs"]) for p in ordered]
    acc = [float(p["heldout_accuracy"]) for p in ordered]
    if len(set(pairs)) != len(pairs) or len(pairs) < 2:
        return None
    return all(b > a for a, b in zip(acc, acc[1:], strict=False))


def bon_findings(summaries: Sequence[Mapping[str, Any] | None]) -> list[Finding]:
    """The best-of-n findings (module docstring) over one group's seeds; ``None`` for a seed
    without a summary."""
    names = list(dict.fromkeys(p["name"] for s in summaries if s for p in s["proxies"]))
    if not names:
        return []

    def per_seed(fn: Any) -> list[bool | None]:
        return [None if s is None else fn(s["proxies"]) for s in summaries]

    def turns(name: str) -> Any:
        def fn(proxies: Sequence[Mapping[str, Any]]) -> bool | None:
            p = next((p for p in proxies if p["name"] == name), None)
            return None if p is None else bool(p["turn_down"]["significant"])

        return fn

    out = [
        Finding(
            "best-of-n: some proxy's gold turns down (drop > 2 SE)",
            per_seed(lambda ps: any(bool(p["turn_down"]["significant"]) for p in ps)),
        )
    ]
    out += [Finding(f"best-of-n: {n} turns down (drop > 2 SE)", per_seed(turns(n))) for n in names]
    for text, fn in (
        ("best-of-n: the proxy with the most pairs peaks highest", _most_pairs),
        ("held-out accuracy rises with the proxy's pairs", _accuracy_rises),
    ):
        holds = per_seed(fn)
        if any(h is not None for h in holds):
            out.append(Finding(text, holds))
    return out


def stage_findings(turned: Mapping[str, Sequence[bool | None]]) -> list[Finding]:
    """``run -> per-seed turned-down flags`` as findings (*<run> turns down*)."""
    return [
        Finding(f"{run} turns down (drop > 2 SE)", list(flags)) for run, flags in turned.items()
    ]
