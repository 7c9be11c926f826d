"""A study result made by hand, and run folders holding it: the report, its re-rendering and the
commands that read run folders are tested on numbers set here, without running a study."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

# RL history of the unpenalised run: gold peaks at step 2 (+0.50 ± 0.05) and ends at step 4
# (-0.60 ± 0.05), a drop of 1.10 / sqrt(0.05^2 + 0.05^2) = 15.6 SE; the proxy keeps rising.
RL_GOLD = [0.0, 0.3, 0.5, 0.1, -0.6]
RL_D = [0.0, 0.5, 1.0, 1.5, 2.0]


def _rl_history(gold: list[float], d: list[float]) -> list[dict[str, float]]:
    return [
        {"step": float(s), "d": x, "kl/k1": x * x, "reward/gold": g, "reward/gold_se": 0.05,
         "reward/proxy": 0.4 * s, "reward/proxy_se": 0.05}
        for s, (g, x) in enumerate(zip(gold, d, strict=True))
    ]  # fmt: skip


def make_study_result(root: Path, name: str, *, shift: float = 0.0):
    """A run folder with ``config.yaml`` and ``versions.json`` and the :class:`StudyResult` of a
    study with best-of-n (one proxy), RL (two KL coefficients) and DAA (one loss, three betas),
    its numbers made by hand (``shift`` moves every gold value), without running anything."""
    from proxygap.analysis.rl_analysis import analyse_rl
    from proxygap.config import parse_config
    from proxygap.optimize.bon import bon_curve, log_spaced_ns
    from proxygap.optimize.daa_sweep import summarise_sweep
    from proxygap.optimize.loop import LoopResult
    from proxygap.study.results import ProxyResult, RLRunResult, StudyResult

    cfg = parse_config({
        "name": name, "proxies": [{"name": "rm", "n_pairs": 1000}],
        "rl": {"proxy": "rm", "kl_coefs": [0.0, 0.1]},
        "daa": {"betas": {"dpo": [0.1, 0.5, 1.0]}},
    })  # fmt: skip
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    versions = {"proxygap": "0.1.0", "torch": "t", "transformers": "x", "git_revision": None}
    (folder / "versions.json").write_text(json.dumps(versions))
    rng = np.random.default_rng(0)
    gold = rng.normal(size=(16, 64)) + shift
    curve = bon_curve("rm", gold + 2.0 * rng.normal(size=(16, 64)), gold, ns=log_spaced_ns(64, 8))
    rl = [
        RLRunResult(f"kl-{k:g}", k, h, [], analyse_rl(h))
        for k, h in (
            (0.0, _rl_history([g + shift for g in RL_GOLD], RL_D)),
            (0.1, _rl_history([shift, 0.2 + shift, 0.45 + shift], [0.0, 0.3, 0.6])),
        )
    ]
    daa = summarise_sweep([
        ("dpo", beta, LoopResult(history=_rl_history([shift, g + shift], [0.0, d])))
        for beta, g, d in ((0.1, -1.0, 3.0), (0.5, 0.4, 1.0), (1.0, 0.2, 0.5))
    ])  # fmt: skip
    proxy = ProxyResult(cfg.proxies[0], curve, 0.75, 0.5, 1234, 1.0)
    return StudyResult(cfg, folder, 1.5, proxies=[proxy], rl_runs=rl, daa=daa,
                       timings={"wall_seconds": 12.5})  # fmt: skip


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Callable[..., object]]:
    """A runs folder with two finished hand-made studies ``a`` and ``b`` (reports written)."""
    from proxygap.report.render import write_report

    root = tmp_path_factory.mktemp("runs")
    for name, shift in (("a", 0.0), ("b", 0.25)):
        write_report(make_study_result(root, name, shift=shift))
    return root, make_study_result
