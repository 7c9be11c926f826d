"""The public API: ``import proxygap as pg`` is cheap, ``__all__`` is complete and documented,
every name resolves, and the names compute what their docstrings say (hand-derived numbers).

Only public names of ``proxygap`` are used below.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import proxygap as pg

README = Path(__file__).resolve().parents[1] / "README.md"


def test_import_is_lazy():
    """``import proxygap`` imports neither torch nor numpy; the first use of a name imports its
    module and only what that module needs (the law fits need numpy, not torch)."""
    code = (
        "import sys, proxygap as pg\n"
        "before = sorted(m for m in ('torch', 'numpy') if m in sys.modules)\n"
        "pg.fit_bon_law\n"
        "print(before, 'numpy' in sys.modules, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["[]", "True", "False"]


def test_all_names_resolve_and_are_listed():
    assert len(set(pg.__all__)) == len(pg.__all__)
    assert pg.__all__[0] == "__version__" and pg.__all__[1:] == sorted(pg.__all__[1:])
    for name in pg.__all__:
        assert getattr(pg, name) is not None, name
        assert name in dir(pg)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pg.nope  # type: ignore[attr-defined]
    # every public name is exported from the module that defines it
    assert pg.best_of_n.__module__ == "proxygap.estimators.bon"
    assert pg.load_run.__module__ == "proxygap.runs"


def test_readme_api_table_lists_exactly_all():
    """The README's API section names every public name, and nothing else."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## API\n", 1)[1].split("\n## ", 1)[0]
    listed: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            listed += re.findall(r"`([A-Za-z_0-9]+)`", first_cell)
    assert sorted(listed) == sorted(pg.__all__)


def test_best_of_n_and_kl_bon_by_hand():
    # pool of N = 3 ranked by select 1 < 2 < 3 with values 10, 20, 30. Best of n = 2 over the
    # C(3, 2) = 3 subsets {1,2} {1,3} {2,3} picks values 20, 30, 30: mean 80/3.
    res = pg.best_of_n([[1.0, 2.0, 3.0]], [[10.0, 20.0, 30.0]], [1, 2, 3])
    assert res.mean.tolist() == pytest.approx([20.0, 80.0 / 3.0, 30.0], rel=1e-12)
    assert float(pg.kl_bon(4)) == pytest.approx(math.log(4) - 0.75, rel=1e-12)
    assert pg.bon_weights(3, [2]).tolist()[0] == pytest.approx([0.0, 1 / 3, 2 / 3], rel=1e-12)


def test_kl_k3_clamp_and_law_fit():
    import torch

    k3, clamped = pg.kl_k3(torch.tensor([0.0, -1000.0]), clamp=20.0)
    # k3(0) = 0; k3(-1000) is k3 at the clamp: exp(20) - 1 - 20
    assert k3.tolist() == pytest.approx([0.0, math.exp(20.0) - 21.0], rel=1e-6)
    assert clamped == 1
    d = [0.5, 1.0, 1.5, 2.0, 3.0]
    fit = pg.fit_bon_law(d, [x * (1.0 - 0.25 * x) for x in d])  # alpha 1, beta 0.25
    assert (fit.alpha, fit.beta) == pytest.approx((1.0, 0.25), abs=1e-10)
    assert fit.d_peak == pytest.approx(2.0) and fit.r_peak == pytest.approx(1.0)


def test_ensembles_and_transforms_by_hand():
    import numpy as np
    import torch

    members = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    # row 0: mean 1, population variance 1; row 1: mean 1, variance 0
    assert pg.ensemble_wco(members).tolist() == [0.0, 1.0]
    assert pg.ensemble_uwo(members, lam=0.5).tolist() == [0.5, 1.0]
    assert pg.aggregate_members(members.numpy().astype(np.float64), "uwo", lam=0.5).tolist() == [
        0.5,
        1.0,
    ]
    # PAR with one reference equal to the reward: sigmoid(0) = 1/2; LSC: log sigmoid(0)
    assert pg.par(np.array([3.0]), np.array([[3.0]])).tolist() == [0.5]
    assert pg.lsc(np.array([3.0]), np.array([3.0]))[0] == pytest.approx(math.log(0.5))


def test_history_from_log():
    log = [
        {"loss": 0.1, "step": 1, "proxygap/reward/proxy": 1.0, "proxygap/reward/gold": 2.0},
        {"loss": 0.2, "step": 2},  # a row without proxygap metrics is skipped
        {"step": 3, "proxygap/reward/proxy": 4.0, "proxygap/reward/gold": 1.5,
         "proxygap/kl/k1": 0.25, "reward": 3.0},
    ]  # fmt: skip
    rows = pg.history_from_log(log)
    assert [r["step"] for r in rows] == [1.0, 3.0]
    assert rows[1]["reward/proxy"] == 3.0 and rows[1]["reward/proxy_raw"] == 4.0
    assert rows[1]["reward/gold"] == -0.5 and rows[0]["reward/gold"] == 0.0
    assert rows[1]["d"] == 0.5 and rows[1]["trl/reward"] == 3.0 and rows[0]["trl/loss"] == 0.1


def test_load_run(tmp_path):
    run = tmp_path / "run"
    (run / "rl" / "kl-0").mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"gold_scale": 2.0, "proxies": []}))
    (run / "rl" / "kl-0" / "history.json").write_text(json.dumps([{"step": 0, "d": 0.0}]))
    (run / "bon_curves.csv").write_text("name,n,gold\nrm,1,0.0\nrm,2,0.5\n")
    (run / "proxygap").mkdir()
    (run / "proxygap" / "history.jsonl").write_text(
        json.dumps({"step": 1, "proxygap/reward/gold": 1.0}) + "\n"
    )
    data = pg.load_run(run)
    assert data.summary == {"gold_scale": 2.0, "proxies": []}
    assert data.rl == {"kl-0": [{"step": 0, "d": 0.0}]}
    assert data.bon_curves[1] == {"name": "rm", "n": 2.0, "gold": 0.5}
    assert data.trl == [{"step": 1.0, "reward/gold": 0.0, "reward/gold_raw": 1.0}]

    with pytest.raises(pg.RunLoadError, match="does not exist"):
        pg.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(pg.RunLoadError, match="holds no run"):
        pg.load_run(tmp_path / "empty")
    (run / "summary.json").write_text("{broken")
    with pytest.raises(pg.RunLoadError, match=r"summary\.json"):
        pg.load_run(run)
