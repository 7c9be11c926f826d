"""The scaling study's section: the law's coefficients, the gold peak and held-out accuracy per
proxy size with intervals, their trends against log parameters, Gao et al.'s direction of change
judged from those trends, and plots (from ``scaling/summary.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proxygap.report.document import Document, Heading, Image, Paragraph, Table  # noqa: E402
from proxygap.report.format import fmt  # noqa: E402
from proxygap.store.atomic import atomic_write  # noqa: E402

__all__ = ["context_sentence", "gao_sentence", "rl_sentence", "scaling_lines", "scaling_section"]

_NAMES = {
    "alpha": "α_bon",
    "beta": "β_bon",
    "d_peak": "gold peak's d",
    "gold_peak": "gold at the peak",
    "law_d_peak": "law peak d*",
    "heldout_accuracy": "held-out accuracy",
}


def _iv(q: dict[str, float], digits: int = 3) -> str:
    return f"{fmt(q['value'], digits)} [{fmt(q['lo'], digits)}, {fmt(q['hi'], digits)}]"


def _slope(t: dict[str, Any]) -> str:
    """A trend's slope per decade with its interval over seeds: ``0.115 [0.024, 0.206]``."""
    return f"{fmt(t['slope'], 3)} [{fmt(t['lo'], 3)}, {fmt(t['hi'], 3)}]"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _table(s: dict[str, Any]) -> Table:
    header = [
        "pairs", "proxy", "params", "width × depth", "held-out acc [seeds]", "α [boot]",
        "β [boot]", "law d* [boot]", "gold peak [boot]", "at d [boot]", "turns down",
    ]  # fmt: skip
    rows = []
    for r in s["table"]:
        acc = r["heldout_accuracy"]
        rows.append(
            [
                str(r["n_pairs"]), r["size"], _params(r["n_params"]),
                f"{r['n_embd']} × {r['n_layer']}",
                f"{fmt(acc['mean'])} [{fmt(acc['lo'])}, {fmt(acc['hi'])}]",
                _iv(r["alpha"]), _iv(r["beta"]), _iv(r["law_d_peak"], 2),
                _iv(r["gold_peak"]), _iv(r["d_peak"], 2), f"{r['turned_down']}/{r['seeds']}",
            ]
        )  # fmt: skip
    return Table(header, rows, caption="Per proxy size, pooled over seeds (gold in SD units)")


def _trend_table(s: dict[str, Any]) -> Table:
    header = ["pairs", "quantity", "slope per decade [seeds]", "[prompts]", "Gao et al.", "here"]
    rows = []
    for n, trends in s["trends"].items():
        for name, t in trends.items():
            claim = s["claims"].get(name)
            rows.append(
                [
                    n, _NAMES.get(name, name),
                    _slope(t),
                    f"[{fmt(t['boot_lo'], 3)}, {fmt(t['boot_hi'], 3)}]",
                    claim or "–", s["gao"][n].get(name, "–"),
                ]
            )  # fmt: skip
    return Table(header, rows, caption="Trends against log10(parameters)")


def gao_sentence(s: dict[str, Any]) -> str:
    """Gao et al.'s direction of change, claim by claim, judged on every data size."""
    parts = []
    for name, claim in s["claims"].items():
        verdicts = {n: s["gao"][n][name] for n in s["gao"]}
        uniq = set(verdicts.values())
        where = (
            next(iter(uniq))
            if len(uniq) == 1
            else ", ".join(f"{v} at {n} pairs" for n, v in verdicts.items())
        )
        slopes = "; ".join(f"{n} pairs: {_slope(s['trends'][n][name])}" for n in verdicts)
        parts.append(f"{claim}: **{where}** (slope per decade {slopes})")
    return (
        "**Against Gao et al.** (α_bon rises and β_bon falls with proxy size; bigger proxies "
        "peak later and higher), judged by whether the t interval over seeds of each slope lies "
        "on the expected side of 0: " + "; ".join(parts) + "."
    )


def context_sentence(s: dict[str, Any]) -> str:
    """What the verdicts rest on, per data size: held-out accuracy by size and its slope, and how
    many curves turn down (a curve still rising at n = N puts its observed peak at the last
    point, so the peak's d and value are then lower bounds)."""
    parts = []
    for n, trends in s["trends"].items():
        rows = [r for r in s["table"] if str(r["n_pairs"]) == n]
        accs = ", ".join(f"`{r['size']}` {fmt(r['heldout_accuracy']['mean'])}" for r in rows)
        acc = trends["heldout_accuracy"]
        turned = sum(r["turned_down"] for r in rows)
        total = sum(r["seeds"] for r in rows)
        parts.append(
            f"at {n} pairs held-out accuracy is {accs} (slope per decade {_slope(acc)}) and "
            f"{turned} of {total} curves turn down by more than 2 SE"
        )
    return "**What the verdicts rest on.** " + "; ".join(parts) + "."


def scaling_lines(s: dict[str, Any]) -> list[str]:
    """The report summary's lines: each of Gao et al.'s directions of change with its verdict
    and slope per decade of parameters, per data size (best-of-n) and for the RL subset."""

    lines = []
    for name, claim in s["claims"].items():
        where = "; ".join(
            f"**{s['gao'][n][name]}** at {n} pairs ({_slope(s['trends'][n][name])} per decade)"
            for n in s["gao"]
        )
        lines.append(f"Reward-model scaling, best-of-n: {claim}: {where}.")
    rl = s.get("rl")
    if rl and rl["gao"]:
        for name, claim in rl["claims"].items():
            lines.append(
                f"Reward-model scaling, RL: {claim}: **{rl['gao'][name]}** "
                f"({_slope(rl['trends'][name])} per decade)."
            )
    return lines


def _tiv(q: dict[str, Any], digits: int = 2) -> str:
    return f"{fmt(q['mean'], digits)} [{fmt(q['lo'], digits)}, {fmt(q['hi'], digits)}]"


def _rl_table(rl: dict[str, Any]) -> Table:
    header = [
        "proxy", "params", "gold peak [seeds]", "at d [seeds]", "turns down",
        "end: d", "end: proxy − gold [seeds]", "law α [seeds]", "law β [seeds]",
        "law (all seeds): d*, R²",
    ]  # fmt: skip
    rows = []
    for r in rl["rows"]:
        law = r["law"]
        if law is None:
            pooled = "–"
        else:
            peak = fmt(law["d_peak"], 2) if law["has_peak"] else "no peak"
            pooled = f"{peak}, {fmt(law['r2'], 2)}"
        rows.append(
            [
                r["size"], _params(r["n_params"]), _tiv(r["peak_gold"]), _tiv(r["peak_d"]),
                f"{r['turned_down']}/{r['seeds']}", fmt(r["end_d"]["mean"], 2),
                _tiv(r["end_gap"]), _tiv(r["law_alpha"]), _tiv(r["law_beta"]), pooled,
            ]
        )  # fmt: skip
    return Table(
        header, rows, caption="RL per proxy size (gold and standardised proxy in SD units)"
    )


def rl_sentence(rl: dict[str, Any]) -> str:
    """Gao et al.'s RL direction of change (bigger proxies peak later and higher), judged by
    the t interval over seeds of the paired slope against log10(parameters)."""
    if not rl["gao"]:
        return "**RL against Gao et al.**: one size only, no comparison across sizes."
    parts = []
    for name, claim in rl["claims"].items():
        t = rl["trends"][name]
        parts.append(
            f"{claim}: **{rl['gao'][name]}** (slope per decade {_slope(t)}; the largest proxy "
            f"above the smallest on {t['largest_above_smallest']} of {len(t['per_seed'])} seeds)"
        )
    still = sum(r["seeds"] - r["turned_down"] for r in rl["rows"])
    total = sum(r["seeds"] for r in rl["rows"])
    caveat = (
        f" {still} of {total} runs do not turn down beyond 2 SE, so their peak's value and d are "
        "lower bounds."
        if still
        else ""
    )
    return (
        "**RL against Gao et al.** (bigger proxies: the RL gold peak comes later and higher), "
        "judged by whether the t interval over seeds of each slope lies on the expected side of "
        "0: " + "; ".join(parts) + "." + caveat
    )


def _plot(s: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for n in [str(n) for n in s["n_pairs"]]:
        rows = [r for r in s["table"] if str(r["n_pairs"]) == n]
        x = np.array([r["n_params"] for r in rows], dtype=float)
        for ax, key in zip(axes[:3], ("alpha", "beta", "gold_peak"), strict=True):
            v = np.array([[r[key]["value"], r[key]["lo"], r[key]["hi"]] for r in rows])
            ax.errorbar(
                x, v[:, 0], yerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], fmt="o-", capsize=3,
                label=f"{n} pairs",
            )  # fmt: skip
            ax.set_title(f"{_NAMES[key]} (pooled over seeds, bootstrap interval)", fontsize=9)
        for name, c in s["curves"][n].items():
            axes[3].plot(c["d"], c["gold"], "-", lw=1, label=f"{name}, {n} pairs")
    for ax in axes[:3]:
        ax.set_xscale("log")
        ax.set_xlabel("reward-model parameters")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[3].set_xlabel("d = sqrt(KL_bon)")
    axes[3].set_ylabel("gold − pool mean (SD units)")
    axes[3].set_title("mean gold curve per size", fontsize=9)
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=6)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def scaling_section(doc: Document, run_dir: Path, s: dict[str, Any]) -> None:
    """Add the scaling study's heading, tables, verdicts and plot to ``doc``."""
    sizes = ", ".join(
        f"`{z['name']}` ({z['n_embd']}×{z['n_layer']}, {_params(z['n_params'])})"
        for z in s["sizes"]
    )
    doc.add(Heading("Reward-model scaling"))
    doc.add(
        Paragraph(
            f"Proxies of {len(s['sizes'])} sizes ({sizes}; {fmt(s['params_span'], 0)}× in "
            f"parameters) × {len(s['n_pairs'])} data sizes ({', '.join(map(str, s['n_pairs']))} "
            f"pairs) × {len(s['seeds'])} seeds; each seed draws its own pairs, label noise, "
            "initialisation and best-of-n pool, shared by all sizes. Per size, the law is fitted "
            "to the mean of the seeds' curves; brackets are "
            f"{100 * s['level']:.0f}% intervals from {s['n_boot']} resamples of each pool's "
            "prompts ([boot]) or Student-t over seeds ([seeds]). Trends are least-squares slopes "
            "against log10(parameters): one per seed, their mean with a t interval over seeds, "
            "and the slope of the seeds' mean over prompt resamples."
        ),
        _table(s),
        _trend_table(s),
        Paragraph(gao_sentence(s)),
        Paragraph(context_sentence(s)),
    )
    _plot(s, run_dir / "plots" / "scaling.png")
    doc.add(Image("plots/scaling.png", "α, β and the gold peak against reward-model size."))
    rl = s.get("rl")
    if rl:
        st = rl["settings"]
        doc.add(
            Paragraph(
                f"**RL against a subset of the proxies.** {st['algo'].upper()}, {st['steps']} "
                f"steps of {st['batch_size']} samples, lr {st['lr']:g}, KL coefficient "
                f"{fmt(st['kl_coef'], 3)}, evaluated every {st['eval_every']} steps on "
                f"{st['eval_prompts']} held-out prompts, against the proxies trained on "
                f"{rl['n_pairs']} pairs with seeds {', '.join(map(str, rl['seeds']))} (the "
                "best-of-n models, not retrained); the reward is the proxy standardised on "
                "base-policy samples. The law is Gao et al.'s R(d) = d(α − β log d)."
            ),
            _rl_table(rl),
            Paragraph(rl_sentence(rl)),
        )
