"""Several runs on one plot (``proxygap compare``): gold and proxy against ``d = sqrt(KL)``.

Each run keeps one colour; within it, best-of-n curves are solid, RL runs dashed, direct
alignment runs dotted and mitigation arms (mean over their seeds at each evaluation)
dash-dotted. Gold is in units of its standard deviation on base-policy samples of each run, so
runs on the same task and base policy compare directly; the proxy axis is each proxy's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from proxygap.store.atomic import atomic_write  # noqa: E402
from proxygap.study.results import StudyResult  # noqa: E402

__all__ = ["Curve", "curves_of", "plot_compare"]


@dataclass(frozen=True)
class Curve:
    """One line of the comparison: what it is, its kind, and gold and proxy against d."""

    label: str
    kind: str  # "bon", "rl", "daa" or "mitigation"
    d: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray


def _history(label: str, kind: str, rows: Sequence[Mapping[str, float]]) -> Curve:
    def col(key: str) -> np.ndarray:
        return np.array([float(r.get(key, np.nan)) for r in rows])

    return Curve(label, kind, col("d"), col("reward/gold"), col("reward/proxy"))


def curves_of(result: StudyResult) -> list[Curve]:
    """Every curve of a run: best-of-n per proxy, RL per KL coefficient, DAA per (loss, beta),
    and each mitigation arm's mean over seeds (the seeds share their evaluation steps)."""
    out = [Curve(f"bon {r.config.name}", "bon", r.curve.d, r.curve.gold, r.curve.proxy)
           for r in result.proxies]  # fmt: skip
    out += [_history(f"RL β={r.kl_coef:g}", "rl", r.history) for r in result.rl_runs]
    if result.daa is not None:
        out += [
            _history(f"{loss} β={beta:g}", "daa", r.history) for loss, beta, r in result.daa.runs
        ]
    if result.mitigations is not None:
        for arm, seeds in result.mitigations.histories.items():
            n = min(len(h) for h in seeds)
            keys = ("d", "reward/gold", "reward/proxy")
            rows = [
                {k: float(np.mean([h[i].get(k, np.nan) for h in seeds])) for k in keys}
                for i in range(n)
            ]
            out.append(_history(f"arm {arm}", "mitigation", rows))
    return out


STYLE = {"bon": "-", "rl": "--", "daa": ":", "mitigation": "-."}


def plot_compare(runs: Mapping[str, StudyResult], path: Path) -> list[str]:
    """Plot gold and proxy against d for every curve of every run into ``path`` (PNG); return
    the labels drawn, ``"<run>: <curve>"``."""
    fig, (ax_g, ax_p) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = []
    for i, (name, result) in enumerate(runs.items()):
        col = colors[i % len(colors)]
        for c in curves_of(result):
            label = f"{name}: {c.label}"
            style = STYLE[c.kind]
            ax_g.plot(c.d, c.gold, style, marker="o", ms=2.5, lw=1.2, color=col, label=label)
            if np.isfinite(c.proxy).any():
                ax_p.plot(c.d, c.proxy, style, marker="o", ms=2.5, lw=1.2, color=col, label=label)
            drawn.append(label)
    for ax, what in ((ax_g, "gold (SD units)"), (ax_p, "proxy (its own units)")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("d = sqrt(KL to the initial policy)  [nats^1/2]")
        ax.set_ylabel(f"{what}, relative to the start")
        ax.grid(alpha=0.3)
    ax_g.set_title("gold against d", fontsize=10)
    ax_p.set_title("proxy against d", fontsize=10)
    kinds = ", ".join(f"{k} {s!r}" for k, s in STYLE.items())
    fig.suptitle(f"{', '.join(runs)} (colour: run; line: {kinds})", fontsize=9)
    handles, labels = ax_g.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(labels) + 3) // 4)))  # fmt: skip
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return drawn
