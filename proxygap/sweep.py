"""Sweeps: a grid of study configs, each cell a resumable run, on Ray or one after another.

A sweep file (YAML) names a base study config and a grid of dotted config paths::

    name: noise-sweep
    base: demo                     # a built-in config name, or a path relative to this file
    grid:
      seed: [0, 1, 2]
      proxies.*.label_noise: [0.0, 0.25]   # `*`: every proxy; `proxies.0.x`: the first one
    runtime: {backend: auto, num_workers: 2}

The cells are the cartesian product of the grid values (in the order written), applied to the
resolved base config; each is validated as a study config and named
``<sweep>-<index>-<hash of its config>``. They run as studies in ``<runs>/<sweep>/cells/``, so a
re-run resumes every unfinished cell. ``backend: ray`` runs one Ray task per cell (``ray`` is an
optional extra); ``auto`` uses Ray when it is installed and runs the cells sequentially otherwise.
A cell that fails is recorded and reported; the others still run and are aggregated over seeds
(:mod:`proxygap.analysis.seeds`, :mod:`proxygap.report.sweep`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from proxygap.commands.configs import with_overrides
from proxygap.config import ConfigError, builtin_config_path, load_config, parse_config
from proxygap.errors import RAY_INSTALL, check_ray_address
from proxygap.schema import PosInt, Strict, format_errors, safe_name

Backend = Literal["auto", "ray", "sequential"]
BACKENDS = ("auto", "ray", "sequential")
Log = Callable[[str], Any]


class SweepError(ValueError):
    """A sweep that cannot run as written; the message names the field, path or cell."""


class SweepRuntime(Strict):
    """Where the cells run."""

    backend: Backend = "auto"
    num_workers: PosInt = 2  # CPUs of the local Ray; one cell per CPU
    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:port"); None: local


class SweepSpec(Strict):
    """A sweep file: a base study config and a grid of dotted paths to values."""

    name: str
    base: str
    grid: Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]
    runtime: SweepRuntime = Field(default_factory=SweepRuntime)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "sweep name")

    @field_validator("grid")
    @classmethod
    def _distinct(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in grid.items():
            seen = [json.dumps(v, sort_keys=True) for v in values]
            dup = sorted({s for s in seen if seen.count(s) > 1})
            if dup:
                raise ValueError(f"grid path {path!r} repeats values: {', '.join(dup)}")
        return grid


@dataclass(frozen=True)
class Cell:
    """One grid point: its position, folder name, grid values and full study config."""

    index: int
    name: str
    values: dict[str, Any]
    config: dict[str, Any]


# ---------------------------------------------------------------- dotted paths
def settable_paths(tree: Any, prefix: str = "") -> list[str]:
    """Every dotted path of a resolved config, list items written ``*`` (mapping keys recurse;
    lists of mappings recurse through ``*``; anything else is a leaf), in document order."""
    out: list[str] = []
    if isinstance(tree, dict):
        for key, sub in tree.items():
            path = f"{prefix}{key}"
            out.append(path)
            out += settable_paths(sub, path + ".")
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        for item in tree:
            out += settable_paths(item, prefix + "*.")
    return list(dict.fromkeys(out))


def _path_error(path: str, base: dict[str, Any], why: str) -> SweepError:
    valid = [p for p in settable_paths(base) if p != "name"]
    close = difflib.get_close_matches(re.sub(r"(?<=\.)\d+(?=\.|$)", "*", path), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return SweepError(
        f"grid path {path!r}: {why}{hint}\nvalid paths (for a list, use an index 0..len-1 or * "
        f"for every item): {', '.join(valid)}"
    )


def check_path(base: dict[str, Any], path: str) -> None:
    """Raise :class:`SweepError` (listing the valid paths) unless ``path`` exists in ``base``."""
    if path == "name":
        raise SweepError("grid path 'name': cells are named by the sweep; drop it from the grid")
    node: Any = base
    for i, part in enumerate(path.split(".")):
        where = ".".join(path.split(".")[:i]) or "the top level"
        if isinstance(node, dict):
            if part not in node:
                raise _path_error(path, base, f"no field {part!r} under {where}")
            node = node[part]
        elif isinstance(node, list):
            if part == "*":
                if not node:
                    raise _path_error(path, base, f"{where} is an empty list")
                node = node[0]
            elif part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise _path_error(path, base, f"{where} has {len(node)} items; got index {part!r}")
        else:
            raise _path_error(path, base, f"{where} is a value, not a section")


def set_path(tree: Any, parts: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``parts`` inside ``tree`` in place (``*`` sets every list item)."""
    head, rest = parts[0], parts[1:]
    keys: list[Any] = list(range(len(tree))) if head == "*" else [head]
    for key in keys:
        key = int(key) if isinstance(tree, list) else key
        if rest:
            set_path(tree[key], rest, value)
        else:
            tree[key] = copy.deepcopy(value)


# ---------------------------------------------------------------- expansion
def cell_name(sweep: str, index: int, n_cells: int, config: dict[str, Any]) -> str:
    """``<sweep>-<index>-<8 hex of the config's hash>``, at most 64 characters."""
    body = {k: v for k, v in config.items() if k != "name"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    tail = f"-{index:0{max(3, len(str(n_cells - 1)))}d}-{digest}"
    return sweep[: 64 - len(tail)] + tail


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def expand(spec: SweepSpec, base: dict[str, Any]) -> list[Cell]:
    """The cells of ``spec`` over the resolved ``base`` config, each validated as a study."""
    for path in spec.grid:
        check_path(base, path)
    paths = list(spec.grid)
    combos = list(itertools.product(*spec.grid.values()))
    cells, errors = [], []
    for index, combo in enumerate(combos):
        values = dict(zip(paths, combo, strict=True))
        config = copy.deepcopy(base)
        for path, value in values.items():
            set_path(config, path.split("."), value)
        config["name"] = cell_name(spec.name, index, len(combos), config)
        try:
            cfg = parse_config(config, source=f"for cell {index} ({_values_text(values)})")
        except ConfigError as err:
            errors.append(str(err))
            continue
        if cfg.bon is None and cfg.rl is None and cfg.daa is None:
            errors.append(
                f"cell {index} ({_values_text(values)}): bon, rl and daa are null; a sweep "
                "aggregates best-of-n, RL and DAA results"
            )
            continue
        cells.append(Cell(index, config["name"], values, cfg.model_dump(mode="json")))
    if errors:
        raise SweepError(
            f"sweep {spec.name!r}: {len(errors)} of {len(combos)} cells are invalid:\n"
            + "\n".join(errors)
        )
    return cells


def parse_sweep(data: Any, *, source: str = "<dict>") -> SweepSpec:
    """Validate a mapping as a :class:`SweepSpec`; raise :class:`SweepError` naming fields."""
    if not isinstance(data, dict):
        raise SweepError(f"invalid sweep {source}: expected a mapping at the top level")
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SweepError(format_errors(err, f"sweep {source}")) from None


def resolve_base(base: str, folder: Path) -> Path:
    """The base config file: a path (relative to the sweep file's folder) or a built-in name."""
    path = Path(base) if Path(base).is_absolute() else folder / base
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or "/" in base:
        raise SweepError(f"sweep field 'base': config file {str(path)!r} does not exist")
    try:
        return builtin_config_path(base)
    except ConfigError as err:
        raise SweepError(f"sweep field 'base': no file {str(path)!r} and {err}") from None


def load_sweep(
    path: str | Path, overrides: Sequence[str] | None = None
) -> tuple[SweepSpec, list[Cell]]:
    """Read a sweep file, load its base config (with ``overrides``, ``a.b=value`` as
    ``proxygap run --set`` takes them) and expand the grid."""
    p = Path(path)
    if not p.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SweepError(f"sweep file {str(path)!r} is not valid YAML: {err}") from None
    spec = parse_sweep(data, source=str(path))
    base_path = resolve_base(spec.base, p.parent)
    cfg = with_overrides(load_config(base_path), overrides, source=str(base_path))
    return spec, expand(spec, cfg.model_dump(mode="json"))


# ---------------------------------------------------------------- running cells
def _import_ray() -> ModuleType | None:
    """The ``ray`` module, or None when it is not installed."""
    try:
        import ray
    except ImportError:
        return None
    return ray


def choose_backend(requested: str, n_cells: int, log: Log) -> Literal["ray", "sequential"]:
    """``ray`` or ``sequential``: ``auto`` falls back (with a message) when Ray is absent."""
    if requested not in BACKENDS:
        raise SweepError(f"unknown backend {requested!r}; allowed: {', '.join(BACKENDS)}")
    if requested == "sequential":
        return "sequential"
    if _import_ray() is not None:
        return "ray"
    if requested == "ray":
        raise SweepError(
            f"backend 'ray' needs Ray, which is not installed: {RAY_INSTALL} (or pip install "
            "ray), or run with --backend sequential"
        )
    log(
        f"Ray is not installed: running the {n_cells} cells one after another in this process "
        f"({RAY_INSTALL} to run them in parallel)"
    )
    return "sequential"


def _failed(err: BaseException, seconds: float | None) -> dict[str, Any]:
    """The outcome of a cell that raised ``err``."""
    return {
        "ok": False,
        "seconds": seconds,
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(err, limit=-8)),
    }


def run_cell(config: dict[str, Any], cells_dir: str) -> dict[str, Any]:
    """Run (or resume) one cell's study; never raises: a failure comes back as ``error``."""
    from proxygap.report.render import write_report
    from proxygap.study import run_study

    t0 = time.perf_counter()
    try:
        write_report(run_study(parse_config(config), Path(cells_dir), log=lambda *_: None))
    except Exception as err:  # one failing cell must not stop the sweep
        return _failed(err, time.perf_counter() - t0)
    return {"ok": True, "seconds": time.perf_counter() - t0, "error": None, "traceback": None}


def _ray_cell(config: dict[str, Any], cells_dir: str) -> dict[str, Any]:
    """A Ray task: one cell on one thread (the task holds one CPU)."""
    import torch

    torch.set_num_threads(1)
    return run_cell(config, cells_dir)


def _report(cell: Cell, out: dict[str, Any], done: int, total: int, log: Log) -> None:
    what = f"done in {out['seconds']:.1f} s" if out["ok"] else f"FAILED: {out['error']}"
    log(f"[{done}/{total}] cell {cell.name} ({_values_text(cell.values)}) {what}")


def run_sequential(cells: Sequence[Cell], cells_dir: Path, log: Log) -> list[dict[str, Any]]:
    """Run the cells one after another in this process."""
    outs = []
    for k, cell in enumerate(cells):
        outs.append(run_cell(cell.config, str(cells_dir)))
        _report(cell, outs[-1], k + 1, len(cells), log)
    return outs


def run_ray(
    cells: Sequence[Cell], cells_dir: Path, runtime: SweepRuntime, log: Log
) -> list[dict[str, Any]]:
    """Run one Ray task per cell (a local Ray of ``num_workers`` CPUs unless an address is set).

    A task whose worker dies is recorded as failed, not retried: re-running the sweep resumes it.
    """
    ray = _import_ray()
    if ray is None:
        raise SweepError(f"the Ray backend needs Ray: {RAY_INSTALL}")
    started = not ray.is_initialized()
    if started and runtime.address:
        check_ray_address(runtime.address, SweepError)
        ray.init(address=runtime.address, log_to_driver=False)
    elif started:
        ray.init(num_cpus=runtime.num_workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
        pending = {task.remote(c.config, str(cells_dir)): i for i, c in enumerate(cells)}
        outs: list[dict[str, Any]] = [{} for _ in cells]
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    outs[i] = ray.get(ref)
                except Exception as err:  # the worker itself died (killed, out of memory)
                    outs[i] = _failed(err, None)
                _report(cells[i], outs[i], len(cells) - len(pending), len(cells), log)
        return outs
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class GridSweepResult:
    """Where the sweep wrote its outputs, and which cells failed."""

    dir: Path
    backend: str
    n_cells: int
    failed: list[str]


def run_sweep(
    path: str | Path,
    runs_root: str | Path = "runs",
    *,
    backend: str | None = None,
    log: Log = print,
    overrides: Sequence[str] | None = None,
) -> GridSweepResult:
    """Run (or resume) every cell of a sweep file, then aggregate and write the report;
    ``overrides`` (``a.b=value``) change the base config of every cell."""
    from proxygap.report.sweep import write_sweep_outputs

    spec, cells = load_sweep(path, overrides)
    root = Path(runs_root)
    sweep_dir = (root / spec.name).resolve()
    if root.exists() and not root.is_dir():
        raise SweepError(f"runs folder {str(root)!r} is not a folder")
    chosen = choose_backend(backend or spec.runtime.backend, len(cells), log)
    cells_dir = sweep_dir / "cells"
    try:
        cells_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SweepError(f"cannot create the sweep folder {str(sweep_dir)!r}: {err}") from err
    log(f"sweep {spec.name}: {len(cells)} cells on backend {chosen!r} in {sweep_dir}")
    if chosen == "ray":
        outs = run_ray(cells, cells_dir, spec.runtime, log)
    else:
        outs = run_sequential(cells, cells_dir, log)
    records = [
        {"index": c.index, "name": c.name, "values": c.values, "run_dir": str(cells_dir / c.name)}
        | out
        for c, out in zip(cells, outs, strict=True)
    ]
    write_sweep_outputs(sweep_dir, spec.model_dump(mode="json"), records, backend=chosen)
    failed = [c.name for c, out in zip(cells, outs, strict=True) if not out["ok"]]
    return GridSweepResult(sweep_dir, chosen, len(cells), failed)
