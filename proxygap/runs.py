"""Read what a run left on disk: a study's run folder, or a TRL training folder with proxygap's
log.

A study's run folder (:mod:`proxygap.study`) holds ``summary.json`` and ``bon_curves.csv``
(best-of-n), ``rl/<run>/history.json`` (one row per evaluation), ``daa/<loss>-<beta>/result.json``
and ``mitigations/<arm>/seed-<s>/history.json``, beside ``config.yaml`` and ``versions.json``.
A TRL ``output_dir`` trained with :class:`proxygap.integrations.trl.ProxygapCallback` holds
``proxygap/history.jsonl`` (the callback's rows of ``trainer.state.log_history``), and its
``trainer_state.json`` (written by ``trainer.save_state()``) and any
``checkpoint-*/trainer_state.json`` hold the whole log. :func:`load_run` reads whichever exist,
and :func:`history_from_log` turns a TRL log into the package's history rows (``step``, ``d``,
``reward/gold``, ``reward/proxy``, ``kl/k1`` ...), the rows the report reads from RL runs.

Only JSON, CSV and YAML are read; nothing is imported from the run folder.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PREFIX", "RunData", "RunLoadError", "history_from_log", "load_run"]

PREFIX = "proxygap/"
"""Prefix of the metrics :class:`~proxygap.integrations.trl.ProxygapCallback` logs."""

TRL_KEYS = ("loss", "reward", "reward_std", "kl", "entropy", "completions/mean_length")
"""TRL's own metrics copied into history rows as ``trl/<name>`` when a log row has them."""


class RunLoadError(ValueError):
    """A run folder that does not exist or holds a file that cannot be read."""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunLoadError(f"cannot read {str(path)!r}: {err}") from err


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunLoadError(f"cannot read {str(path)!r}: {err}") from err
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunLoadError(f"{str(path)!r} line {i} is not JSON: {err}") from err
        if not isinstance(row, dict):
            raise RunLoadError(f"{str(path)!r} line {i} is not a JSON object")
        rows.append(row)
    return rows


def _csv(path: Path) -> list[dict[str, Any]]:
    def value(text: str) -> Any:
        try:
            return float(text)
        except ValueError:
            return text

    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RunLoadError(f"cannot read {str(path)!r}: {err}") from err


def history_from_log(log: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The package's history rows from a TRL log (``trainer.state.log_history``, or the rows of
    ``proxygap/history.jsonl``).

    One row per log entry that holds ``proxygap/*`` metrics, in step order: ``step``, every
    ``proxygap/<name>`` as ``<name>`` (``reward/proxy``, ``reward/gold``, ``kl/k1``, ``kl/k3``,
    ``length/mean``, ``signal/ensemble_std``, ``monitor/score`` ...), and TRL's own
    :data:`TRL_KEYS` as ``trl/<name>``. As in the package's RL evaluations (docs/methods.md §6),
    ``reward/proxy`` and ``reward/gold`` become differences from the first row's value (the
    callback's first batch is sampled by the initial policy), with the logged means kept as
    ``reward/proxy_raw`` and ``reward/gold_raw``; ``d = sqrt(max(kl/k1, 0))`` when ``kl/k1`` is
    logged. Gold stays in its own units (the study divides by gold's SD on base samples; a TRL
    run has no such reference unless the gold function divides by it).
    """
    rows: list[dict[str, float]] = []
    for entry in log:
        mine = {k[len(PREFIX) :]: v for k, v in entry.items() if k.startswith(PREFIX)}
        if not mine:
            continue
        row: dict[str, float] = {"step": float(entry.get("step", mine.pop("step", math.nan)))}
        row.update({k: float(v) for k, v in mine.items() if _is_number(v)})
        for key in TRL_KEYS:
            if _is_number(entry.get(key)):
                row[f"trl/{key}"] = float(entry[key])
        if "kl/k1" in row and "d" not in row:
            row["d"] = math.sqrt(max(row["kl/k1"], 0.0))
        rows.append(row)
    rows.sort(key=lambda r: r["step"])
    for key in ("reward/proxy", "reward/gold"):
        first = next((r[key] for r in rows if key in r), None)
        for r in rows:
            if key in r and first is not None:
                r[f"{key}_raw"] = r[key]
                r[key] = r[key] - first
    return rows


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass
class RunData:
    """Everything :func:`load_run` found in one folder; absent parts are empty or None.

    Attributes:
        dir: the folder.
        config: the resolved study config (``config.yaml``).
        summary: best-of-n per proxy (``summary.json``).
        bon_curves: the rows of ``bon_curves.csv`` (name, n, kl, d, gold, gold_se, proxy, ...).
        rl: RL run name -> evaluation rows (``rl/<run>/history.json``).
        rl_summary: ``rl/summary.json`` (per run: peak, divergence, law fit).
        daa: DAA run name (``<loss>-<beta>``) -> evaluation rows.
        daa_summary: ``daa/summary.json``.
        mitigations: arm -> one list of evaluation rows per seed.
        mitigation_summary: ``mitigations/summary.json``.
        trl: history rows of a TRL run (:func:`history_from_log`).
        trl_log: the file they were read from (``proxygap/history.jsonl``, else
            ``trainer_state.json``, else the latest ``checkpoint-*/trainer_state.json``).
        proxies: proxy name -> its member folders (``proxies/<name>/member-<k>``).
    """

    dir: Path
    config: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    bon_curves: list[dict[str, Any]] = field(default_factory=list)
    rl: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rl_summary: list[dict[str, Any]] | None = None
    daa: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    daa_summary: dict[str, Any] | None = None
    mitigations: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    mitigation_summary: dict[str, Any] | None = None
    trl: list[dict[str, float]] = field(default_factory=list)
    trl_log: Path | None = None
    proxies: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when the folder held none of the files above."""
        return not (
            self.config or self.summary or self.bon_curves or self.rl or self.daa
            or self.mitigations or self.trl or self.proxies
        )  # fmt: skip


def _trl_log(folder: Path) -> tuple[list[dict[str, Any]], Path | None]:
    """The log and the file it came from: the callback's rows if written, else the
    ``trainer_state.json`` of the folder (``trainer.save_state()``), else that of the latest
    checkpoint."""
    own = folder / "proxygap" / "history.jsonl"
    if own.is_file():
        return _jsonl(own), own
    states = sorted(
        folder.glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[-1]) if p.parent.name[11:].isdigit() else -1,
    )
    if (folder / "trainer_state.json").is_file():
        states.append(folder / "trainer_state.json")
    if states:
        state = _json(states[-1])
        log = state.get("log_history") if isinstance(state, dict) else None
        if not isinstance(log, list):
            raise RunLoadError(f"{str(states[-1])!r} holds no log_history list")
        return [e for e in log if isinstance(e, dict)], states[-1]
    return [], None


def load_run(path: str | Path) -> RunData:
    """Read a study's run folder or a TRL ``output_dir`` (see the module docstring).

    Raises:
        RunLoadError: the folder does not exist, holds none of the known files, or a file in
            it is not valid JSON/CSV/YAML (the message names the file).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RunLoadError(f"run folder {str(path)!r} does not exist or is not a directory")
    out = RunData(dir=folder)
    if (folder / "config.yaml").is_file():
        import yaml

        try:
            out.config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RunLoadError(f"cannot read {str(folder / 'config.yaml')!r}: {err}") from err
    if (folder / "summary.json").is_file():
        out.summary = _json(folder / "summary.json")
    if (folder / "bon_curves.csv").is_file():
        out.bon_curves = _csv(folder / "bon_curves.csv")
    for hist in sorted(folder.glob("rl/*/history.json")):
        out.rl[hist.parent.name] = _json(hist)
    if (folder / "rl" / "summary.json").is_file():
        out.rl_summary = _json(folder / "rl" / "summary.json")
    for res in sorted(folder.glob("daa/*/result.json")):
        data = _json(res)
        out.daa[res.parent.name] = data.get("history", []) if isinstance(data, dict) else []
    if (folder / "daa" / "summary.json").is_file():
        out.daa_summary = _json(folder / "daa" / "summary.json")
    for arm in sorted(p for p in folder.glob("mitigations/*") if p.is_dir()):
        seeds = sorted(arm.glob("seed-*/history.json"), key=lambda p: p.parent.name)
        if seeds:
            out.mitigations[arm.name] = [_json(s) for s in seeds]
    if (folder / "mitigations" / "summary.json").is_file():
        out.mitigation_summary = _json(folder / "mitigations" / "summary.json")
    for proxy in sorted(p for p in folder.glob("proxies/*") if p.is_dir()):
        members = sorted(
            (m for m in proxy.glob("member-*") if m.is_dir() and m.name[7:].isdigit()),
            key=lambda m: int(m.name[7:]),
        )
        if members:
            out.proxies[proxy.name] = members
    log, out.trl_log = _trl_log(folder)
    out.trl = history_from_log(log)
    if out.empty and out.trl_log is not None:
        raise RunLoadError(
            f"{str(out.trl_log)!r} holds no proxygap/* metrics: train with ProxygapCallback or "
            "ProxygapEvalCallback (proxygap.integrations.trl)"
        )
    if out.empty:
        raise RunLoadError(
            f"{str(folder)!r} holds no run: expected a study's summary.json, rl/, daa/, "
            "mitigations/ or proxies/, or a TRL output_dir with proxygap/history.jsonl, "
            "trainer_state.json or checkpoint-*/trainer_state.json"
        )
    return out
