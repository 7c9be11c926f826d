"""Sweeps: grid expansion, validation, confidence intervals, aggregation, Ray and the fallback."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from proxygap import sweep as sweep_mod
from proxygap.analysis.seeds import group_key, t_band, t_interval
from proxygap.cli import app
from proxygap.config import parse_config
from proxygap.report.sweep import write_sweep_outputs
from proxygap.sweep import SweepError, choose_backend, expand, load_sweep, parse_sweep, run_sweep

# the study of tests/study/test_study.py cut to one proxy and a smaller pool (a few seconds a cell)
BASE: dict[str, Any] = {
    "name": "tiny",
    "seed": 1,
    "preferences": {"n_pairs": 200, "n_heldout": 80},
    "proxies": [{"name": "rm", "n_embd": 32, "n_head": 2, "n_layer": 1, "epochs": 1}],
    "bon": {"n_prompts": 8, "pool_size": 32, "n_points": 8, "examples_at": [1, 8, 32]},
    "runtime": {"threads": 1},
}
TWO_PROXIES = {**BASE, "proxies": [BASE["proxies"][0], {**BASE["proxies"][0], "name": "rm2"}]}


def _resolved(cfg: dict[str, Any]) -> dict[str, Any]:
    return parse_config(cfg).model_dump(mode="json")


def _spec(grid: dict[str, list[Any]], name: str = "sw") -> Any:
    return parse_sweep({"name": name, "base": "base.yaml", "grid": grid})


# ---------------------------------------------------------------- expansion
def test_grid_is_the_cartesian_product_in_written_order() -> None:
    grid = {"seed": [1, 2, 3], "proxies.*.label_noise": [0.0, 0.1], "bon.temperature": [1.0]}
    cells = expand(_spec(grid), _resolved(TWO_PROXIES))
    assert len(cells) == 3 * 2 * 1
    # itertools.product order: the last path varies fastest
    assert [(c.values["seed"], c.values["proxies.*.label_noise"]) for c in cells] == [
        (1, 0.0), (1, 0.1), (2, 0.0), (2, 0.1), (3, 0.0), (3, 0.1),
    ]  # fmt: skip
    for c in cells:
        assert c.config["seed"] == c.values["seed"]
        assert c.config["bon"]["temperature"] == 1.0
        # `*` reaches every proxy
        assert [p["label_noise"] for p in c.config["proxies"]] == [
            c.values["proxies.*.label_noise"]
        ] * 2
        assert c.config["name"] == c.name


def test_an_index_path_sets_only_that_item() -> None:
    cells = expand(_spec({"proxies.1.label_noise": [0.2]}), _resolved(TWO_PROXIES))
    assert [p["label_noise"] for p in cells[0].config["proxies"]] == [0.0, 0.2]


def test_whole_sections_can_be_grid_values() -> None:
    proxies_a = [{"name": "a", "n_embd": 32, "n_head": 2}]
    proxies_b = [{"name": "b", "n_embd": 32, "n_head": 4}, {"name": "c", "n_embd": 32}]
    cells = expand(_spec({"proxies": [proxies_a, proxies_b]}), _resolved(BASE))
    assert [[p["name"] for p in c.config["proxies"]] for c in cells] == [["a"], ["b", "c"]]
    assert cells[1].config["proxies"][1]["n_layer"] == 2  # defaults filled in by validation


def test_cell_names_are_deterministic_safe_and_distinct() -> None:
    spec = _spec({"seed": [1, 2], "bon.temperature": [1.0, 1.3]})
    a = expand(spec, _resolved(BASE))
    b = expand(spec, _resolved(BASE))
    assert [c.name for c in a] == [c.name for c in b]
    assert len({c.name for c in a}) == 4
    assert all(re.fullmatch(r"sw-\d{3}-[0-9a-f]{8}", c.name) for c in a)
    # the hash follows the config: another base gives other names at the same indices
    other = expand(spec, _resolved({**BASE, "preferences": {"n_pairs": 201, "n_heldout": 80}}))
    assert [c.name[:6] for c in other] == [c.name[:6] for c in a]
    assert not {c.name for c in other} & {c.name for c in a}


def test_long_sweep_names_are_cut_to_a_valid_folder_name() -> None:
    cells = expand(_spec({"seed": [1, 2]}, name="s" * 64), _resolved(BASE))
    assert all(len(c.name) == 64 for c in cells)
    parse_config(cells[0].config)  # the cell name passes the study's own name check


# ---------------------------------------------------------------- validation
def test_unknown_grid_path_lists_the_valid_ones() -> None:
    with pytest.raises(SweepError) as err:
        expand(_spec({"bon.temprature": [1.0]}), _resolved(TWO_PROXIES))
    msg = str(err.value)
    assert "grid path 'bon.temprature'" in msg and "no field 'temprature' under bon" in msg
    assert "did you mean 'bon.temperature'?" in msg
    for valid in ("seed", "bon.temperature", "proxies.*.label_noise", "preferences.n_pairs"):
        assert valid in msg.split("valid paths")[1]


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("proxies.2.label_noise", "proxies has 2 items; got index '2'"),
        ("seed.x", "seed is a value, not a section"),
        ("proxies.*.noise", "no field 'noise' under proxies.*"),
    ],
)
def test_bad_paths_say_why(path: str, why: str) -> None:
    with pytest.raises(SweepError, match=re.escape(why)):
        expand(_spec({path: [1]}), _resolved(TWO_PROXIES))


def test_the_name_is_not_a_grid_path() -> None:
    with pytest.raises(SweepError, match="cells are named by the sweep"):
        expand(_spec({"name": ["a", "b"]}), _resolved(BASE))


def test_a_bad_value_names_the_cell_and_the_field() -> None:
    spec = _spec({"seed": [1], "proxies.*.label_noise": [0.1, 0.9], "bon.temperature": [1.0, -1]})
    with pytest.raises(SweepError) as err:
        expand(spec, _resolved(BASE))
    msg = str(err.value)
    assert "3 of 4 cells are invalid" in msg
    # cell 1: label_noise 0.1 with temperature -1; cells 2, 3: label_noise 0.9
    assert "cell 1 (seed=1, proxies.*.label_noise=0.1, bon.temperature=-1)" in msg
    assert "bon.temperature: Input should be greater than 0" in msg
    assert "cell 2 (seed=1, proxies.*.label_noise=0.9, bon.temperature=1.0)" in msg
    assert "proxies.0.label_noise: Input should be less than or equal to 0.5" in msg
    assert "cell 0 " not in msg


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "s", "base": "b", "grid": {"seed": [1]}, "grids": {}}, "grids: unknown field"),
        ({"name": "s", "base": "b", "grid": {}}, "grid: Dictionary should have at least 1 item"),
        ({"name": "s", "base": "b", "grid": {"seed": []}}, "grid.seed: List should have at least"),
        ({"name": "s", "base": "b", "grid": {"seed": [1, 1]}}, "grid path 'seed' repeats values"),
        ({"name": "../x", "base": "b", "grid": {"seed": [1]}}, "sweep name '../x' must be"),
        ({"base": "b", "grid": {"seed": [1]}}, "name: Field required"),
        (
            {"name": "s", "base": "b", "grid": {"seed": [1]}, "runtime": {"backend": "dask"}},
            "runtime.backend: Input should be 'auto', 'ray' or 'sequential'",
        ),
        (
            {"name": "s", "base": "b", "grid": {"seed": [1]}, "runtime": {"num_workers": 0}},
            "runtime.num_workers: Input should be greater than or equal to 1",
        ),
    ],
)
def test_sweep_file_fields_are_validated(data: dict[str, Any], expected: str) -> None:
    with pytest.raises(SweepError, match=re.escape(expected)):
        parse_sweep(data, source="s.yaml")


def test_base_is_a_path_beside_the_sweep_file_or_a_builtin(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "a.yaml").write_text("name: a\nbase: base.yaml\ngrid: {seed: [1, 2]}\n")
    spec, cells = load_sweep(tmp_path / "a.yaml")
    assert spec.runtime.backend == "auto" and spec.runtime.num_workers == 2
    assert [c.config["preferences"]["n_pairs"] for c in cells] == [200, 200]
    (tmp_path / "b.yaml").write_text("name: b\nbase: demo\ngrid: {seed: [1]}\n")
    _, cells = load_sweep(tmp_path / "b.yaml")
    assert cells[0].config["proxies"][0]["name"] == "rm-1k"  # the shipped demo config
    (tmp_path / "c.yaml").write_text("name: c\nbase: nosuch\ngrid: {seed: [1]}\n")
    with pytest.raises(SweepError, match="no built-in config 'nosuch'; shipped configs: .*demo"):
        load_sweep(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("name: d\nbase: gone.yaml\ngrid: {seed: [1]}\n")
    with pytest.raises(SweepError, match="'base': config file .*gone.yaml' does not exist"):
        load_sweep(tmp_path / "d.yaml")


def test_cli_refuses_a_bad_sweep_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.yaml").write_text("name: s\nbase: base.yaml\ngrid: {bon.tmp: [1.0]}\n")
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "s.yaml"), "--runs-dir",
                                      str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 2
    assert "grid path 'bon.tmp'" in result.output and "valid paths" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing written for a sweep that cannot run


# ---------------------------------------------------------------- confidence intervals
def test_t_interval_matches_the_hand_computed_one() -> None:
    # x = 1, 2, 3, 4: mean 2.5; s^2 = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; se = sqrt(5/3) / 2;
    # t_{0.975, 3} = 3.182446 (tables) -> half width 3.182446 * 0.645497 = 2.054260
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    assert iv.mean == 2.5 and iv.n == 4
    assert iv.lo == pytest.approx(2.5 - 2.054260, abs=1e-6)
    assert iv.hi == pytest.approx(2.5 + 2.054260, abs=1e-6)
    # x = 0, 2: mean 1, s = sqrt(2), se = 1, t_{0.975, 1} = 12.706205 -> [-11.706205, 13.706205]
    iv = t_interval([0.0, 2.0])
    assert (iv.lo, iv.hi) == (pytest.approx(-11.706205, abs=1e-6), pytest.approx(13.706205, 1e-6))
    # 90%: t_{0.95, 3} = 2.353363 -> half width 2.353363 * 0.645497 = 1.519089
    assert t_interval([1.0, 2.0, 3.0, 4.0], level=0.9).hi == pytest.approx(4.019089, abs=1e-6)


def test_t_interval_edge_cases() -> None:
    one = t_interval([3.0])
    assert one.mean == 3.0 and one.n == 1 and math.isnan(one.lo) and math.isnan(one.hi)
    none = t_interval([])
    assert none.n == 0 and math.isnan(none.mean)
    # non-finite and missing values are left out, and n says so
    assert t_interval([1.0, None, float("nan"), 2.0, 3.0, 4.0, float("inf")]) == t_interval(
        [1.0, 2.0, 3.0, 4.0]
    )
    assert t_interval([5.0, 5.0, 5.0]) == t_interval([5.0, 5.0, 5.0])  # zero spread
    assert t_interval([5.0, 5.0]).lo == 5.0
    with pytest.raises(ValueError, match="level"):
        t_interval([1.0, 2.0], level=95)


def test_t_band_is_the_columnwise_interval() -> None:
    x = np.random.default_rng(0).normal(size=(5, 7))
    mean, lo, hi = t_band(x)
    for j in range(7):
        iv = t_interval(x[:, j].tolist())
        assert (mean[j], lo[j], hi[j]) == pytest.approx((iv.mean, iv.lo, iv.hi), abs=1e-12)
    mean, lo, hi = t_band(x[:1])
    assert np.isnan(lo).all() and np.isnan(hi).all() and (mean == x[0]).all()


def test_seed_paths_do_not_separate_settings() -> None:
    a = {"seed": 1, "proxies.*.seed": 3, "proxies.*.label_noise": 0.1}
    b = {"seed": 2, "proxies.*.seed": 4, "proxies.*.label_noise": 0.1}
    c = {"seed": 1, "proxies.*.seed": 3, "proxies.*.label_noise": 0.2}
    assert group_key(a) == group_key(b) != group_key(c)


# ---------------------------------------------------------------- aggregation
GOLD_PEAKS = {0.0: [1.0, 2.0, 4.0], 0.25: [0.5, 1.5]}


def _fake_cell(root: Path, name: str, seed: int, noise: float, k: int) -> dict[str, Any]:
    """A finished cell: summary.json and bon_curves.csv written by hand."""
    run = root / "cells" / name
    run.mkdir(parents=True)
    peak = GOLD_PEAKS[noise][k]
    proxy = {
        "name": "rm",
        "heldout_accuracy": 0.6 + 0.1 * k,
        "fit": {"alpha": 1.0 + k, "beta": 0.5, "r2": 0.9},
        "turn_down": {"gold_peak": peak, "d_peak": 1.0, "gold_end": peak - 1.0, "drop": 1.0,
                      "drop_se": 0.2, "significant": k == 0, "peak_n": 4},
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps({"gold_scale": 1.0, "proxies": [proxy]}))
    rows = ["name,n,kl,d,gold,gold_se,proxy,proxy_se"]
    for n, d, gold in ((1, 0.0, 0.0), (2, 0.5, peak / 2), (4, 1.0, peak)):
        rows.append(f"rm,{n},{d * d},{d},{gold},0.1,{gold},0.1")
    (run / "bon_curves.csv").write_text("\n".join(rows) + "\n")
    values = {"seed": seed, "proxies.*.label_noise": noise}
    return {"index": 0, "name": name, "values": values, "run_dir": str(run), "ok": True,
            "seconds": 1.0, "error": None, "traceback": None}  # fmt: skip


def test_aggregation_of_synthetic_summaries(tmp_path: Path) -> None:
    records = [_fake_cell(tmp_path, f"c{s}", s, 0.0, s) for s in range(3)]
    records += [_fake_cell(tmp_path, f"d{s}", s, 0.25, s) for s in range(2)]
    records.append({"index": 5, "name": "d2", "values": {"seed": 2, "proxies.*.label_noise": 0.25},
                    "run_dir": str(tmp_path / "cells" / "d2"), "ok": False, "seconds": 0.1,
                    "error": "PreferenceFileError: boom\nmore", "traceback": "..."})  # fmt: skip
    spec = {"name": "syn", "base": "b.yaml",
            "grid": {"seed": [0, 1, 2], "proxies.*.label_noise": [0.0, 0.25]}}  # fmt: skip
    write_sweep_outputs(tmp_path, spec, records, backend="sequential")

    with (tmp_path / "aggregate.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["proxies.*.label_noise"], r["proxy"], r["n_seeds"]) for r in rows] == [
        ("0.0", "rm", "3"), ("0.25", "rm", "2"),
    ]  # fmt: skip
    a, b = rows
    # gold peaks 1, 2, 4: mean 7/3, s^2 = (16/9 + 1/9 + 25/9) / 2 = 7/3, se = sqrt(7/9) = 0.881917;
    # t_{0.975, 2} = 4.302653 -> half width 3.794583
    assert float(a["gold_peak_mean"]) == pytest.approx(7 / 3, abs=1e-12)
    assert float(a["gold_peak_lo"]) == pytest.approx(7 / 3 - 3.794583, abs=1e-5)
    assert float(a["gold_peak_hi"]) == pytest.approx(7 / 3 + 3.794583, abs=1e-5)
    # held-out accuracies 0.6, 0.7, 0.8 -> mean 0.7; constant fields give a zero-width interval
    assert float(a["heldout_accuracy_mean"]) == pytest.approx(0.7, abs=1e-12)
    assert float(a["r2_lo"]) == pytest.approx(0.9) and float(a["r2_hi"]) == pytest.approx(0.9)
    assert float(a["alpha_mean"]) == pytest.approx(2.0)
    # only seed k = 0 turned down
    assert (a["n_significant"], float(a["significant_fraction"])) == ("1", pytest.approx(1 / 3))
    # the failed cell is left out: 2 seeds, peaks 0.5 and 1.5, t_{0.975,1} * 0.5 = 6.353103
    assert float(b["gold_peak_mean"]) == pytest.approx(1.0)
    assert float(b["gold_peak_hi"]) == pytest.approx(1.0 + 6.353103, abs=1e-5)
    assert float(b["significant_fraction"]) == 0.5

    out = json.loads((tmp_path / "sweep.json").read_text())
    assert out["failed"] == ["d2"]
    assert out["groups"][1]["cells"] == ["d0", "d1", "d2"]
    gp = out["groups"][0]["proxies"]["rm"]["metrics"]["gold_end"]
    assert gp["mean"] == pytest.approx(7 / 3 - 1) and gp["n"] == 3
    md = (tmp_path / "report.md").read_text()
    assert "## Failed cells" in md and "PreferenceFileError: boom" in md and "more" not in md
    assert "| rm | 3 | 2.333 [-1.461, 6.128]" in md
    assert (tmp_path / "plots" / "group-0.png").is_file()
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_a_cell_without_outputs_counts_as_failed(tmp_path: Path) -> None:
    rec = _fake_cell(tmp_path, "c0", 0, 0.0, 0)
    (Path(rec["run_dir"]) / "summary.json").unlink()
    spec = {"name": "syn", "base": "b", "grid": {"seed": [0]}}
    groups = write_sweep_outputs(tmp_path, spec, [rec], backend="sequential")
    assert not rec["ok"] and "left no summary.json" in rec["error"]
    assert groups[0].proxies == {}
    assert "No cell of this setting finished." in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------- backends
def test_backend_choice_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_mod, "_import_ray", lambda: None)
    said: list[str] = []
    assert choose_backend("auto", 4, said.append) == "sequential"
    assert "Ray is not installed" in said[0] and "pip install 'proxygap[ray]'" in said[0]
    with pytest.raises(SweepError, match=r"needs Ray.*pip install 'proxygap\[ray\]'"):
        choose_backend("ray", 4, said.append)
    assert choose_backend("sequential", 4, said.append) == "sequential"
    with pytest.raises(SweepError, match="unknown backend 'dask'"):
        choose_backend("dask", 4, said.append)


class _Ref:
    def __init__(self, *args: Any) -> None:
        self.args = args


class _FakeRay:
    """Just enough of Ray's API to drive :func:`run_ray`: tasks run on ``get``, seed 2 dies."""

    def __init__(self) -> None:
        self.init_kwargs: dict[str, Any] | None = None
        self.task_options: dict[str, Any] = {}
        self.shut_down = False

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs: Any) -> None:
        self.init_kwargs = kwargs

    def remote(self, **options: Any) -> Any:
        self.task_options = options
        return lambda fn: type("Task", (), {"remote": staticmethod(_Ref)})

    def wait(self, refs: list[Any], num_returns: int) -> tuple[list[Any], list[Any]]:
        return refs[-num_returns:], refs[:-num_returns]  # finish in reverse order

    def get(self, ref: _Ref) -> dict[str, Any]:
        config, _ = ref.args
        if config["seed"] == 2:
            raise RuntimeError("worker died")
        return {"ok": True, "seconds": 1.0, "error": None, "traceback": None}

    def shutdown(self) -> None:
        self.shut_down = True


def test_ray_backend_records_a_dead_worker_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _FakeRay()
    monkeypatch.setattr(sweep_mod, "_import_ray", lambda: fake)
    cells = [sweep_mod.Cell(i, f"c{i}", {"seed": s}, {"seed": s}) for i, s in enumerate((1, 2, 3))]
    said: list[str] = []
    outs = sweep_mod.run_ray(cells, tmp_path, sweep_mod.SweepRuntime(num_workers=2), said.append)
    assert fake.init_kwargs == {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}
    assert fake.task_options["num_cpus"] == 1 and fake.shut_down
    assert [o["ok"] for o in outs] == [True, False, True]  # in cell order, whatever finished first
    assert outs[1]["error"] == "RuntimeError: worker died"
    assert len(said) == 3 and said[0].startswith("[1/3] cell c2") and "FAILED" in said[1]


def _write_sweep(folder: Path, name: str, grid: dict[str, list[Any]], backend: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(BASE))
    spec = {"name": name, "base": "base.yaml", "grid": grid,
            "runtime": {"backend": backend, "num_workers": 2}}  # fmt: skip
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 seeds x 2 label-noise rates = 4 cells as Ray tasks on a local Ray of 2 workers."""
    pytest.importorskip("ray", reason="the Ray backend needs ray (pip install 'proxygap[ray]')")
    tmp = tmp_path_factory.mktemp("ray")
    grid = {"seed": [1, 2], "proxies.*.label_noise": [0.0, 0.25]}
    result = run_sweep(_write_sweep(tmp, "onray", grid, "ray"), tmp / "runs", log=lambda _: None)
    assert result.backend == "ray" and result.failed == []
    return result.dir


def test_sweep_on_local_ray_aggregates_four_cells(ray_sweep: Path) -> None:
    out = json.loads((ray_sweep / "sweep.json").read_text())
    assert out["backend"] == "ray" and out["failed"] == []
    cells = out["cells"]
    assert len(cells) == 4 and all(c["ok"] for c in cells)
    for c in cells:  # each cell is a full study with its grid values applied
        cfg = yaml.safe_load((Path(c["run_dir"]) / "config.yaml").read_text())
        assert cfg["seed"] == c["values"]["seed"] and cfg["name"] == c["name"]
        assert cfg["proxies"][0]["label_noise"] == c["values"]["proxies.*.label_noise"]
        assert cfg["runtime"]["threads"] == 1
    with (ray_sweep / "aggregate.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["proxies.*.label_noise"], r["n_seeds"]) for r in rows] == [
        ("0.0", "2"),
        ("0.25", "2"),
    ]
    for row in rows:  # the aggregate is the t interval of the cells' own summaries
        noise = float(row["proxies.*.label_noise"])
        peaks = [
            json.loads((Path(c["run_dir"]) / "summary.json").read_text())["proxies"][0]
            for c in cells
            if c["values"]["proxies.*.label_noise"] == noise
        ]
        iv = t_interval([p["turn_down"]["gold_peak"] for p in peaks])
        assert float(row["gold_peak_mean"]) == pytest.approx(iv.mean, abs=1e-12)
        assert float(row["gold_peak_hi"]) == pytest.approx(iv.hi, abs=1e-12)
        acc = t_interval([p["heldout_accuracy"] for p in peaks])
        assert float(row["heldout_accuracy_lo"]) == pytest.approx(acc.lo, abs=1e-12)
    for name in ("report.md", "report.html", "plots/group-0.png", "plots/group-1.png"):
        assert (ray_sweep / name).is_file(), name
    assert (ray_sweep / "report.html").read_text().count("data:image/png;base64,") == 2


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """The CLI with Ray made unimportable; a missing preference file fails one of the two cells.
    Returns the sweep folder, the CLI output and its exit code."""
    tmp = tmp_path_factory.mktemp("local")
    grid = {"seed": [2], "preferences.file": [None, str(tmp / "missing.jsonl")]}
    path = _write_sweep(tmp, "local", grid, "auto")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_mod, "_import_ray", lambda: None)
        result = CliRunner().invoke(app, ["sweep", str(path), "--runs-dir", str(tmp / "runs")])
    return tmp / "runs" / "local", result.output, result.exit_code


def test_sequential_fallback_runs_the_cells_and_reports_failed_ones(
    local_sweep: tuple[Path, str, int],
) -> None:
    """Without Ray, `auto` runs the cells in-process; a failing cell does not stop the others."""
    folder, output, code = local_sweep
    assert code == 1, output
    assert "Ray is not installed: running the 2 cells one after another" in output
    assert "1 of 2 cells failed" in output
    out = json.loads((folder / "sweep.json").read_text())
    assert out["backend"] == "sequential"
    failed = [c for c in out["cells"] if not c["ok"]]
    assert [c["index"] for c in failed] == [1]
    assert "PreferenceFileError" in failed[0]["error"]
    assert "missing.jsonl' does not exist" in failed[0]["error"]
    assert out["failed"] == [failed[0]["name"]]
    with (folder / "aggregate.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["preferences.file"], r["n_seeds"]) for r in rows] == [("null", "1")]
    md = (folder / "report.md").read_text()
    assert "## Failed cells" in md and "No cell of this setting finished." in md


def test_ray_and_sequential_cells_give_identical_runs(
    ray_sweep: Path, local_sweep: tuple[Path, str, int]
) -> None:
    ray_cells = json.loads((ray_sweep / "sweep.json").read_text())["cells"]
    local_cells = json.loads((local_sweep[0] / "sweep.json").read_text())["cells"]
    compared = 0
    for c in (c for c in local_cells if c["ok"]):
        twin = {"seed": c["values"]["seed"], "proxies.*.label_noise": 0.0}
        (r,) = [r for r in ray_cells if r["values"] == twin]
        for name in ("bon_curves.csv", "preferences.jsonl", "pool.jsonl"):
            a, b = Path(c["run_dir"]) / name, Path(r["run_dir"]) / name
            assert a.read_bytes() == b.read_bytes(), name
        compared += 1
    assert compared == 1


def test_grid_values_are_copied_not_shared() -> None:
    value = [{"name": "a", "n_embd": 32}]
    cells = expand(_spec({"proxies": [value], "seed": [1, 2]}), _resolved(BASE))
    cells[0].config["proxies"][0]["n_embd"] = 64
    assert cells[1].config["proxies"][0]["n_embd"] == 32 and value[0]["n_embd"] == 32
