"""Run folders from the command line: render a report again, list runs, compare runs.

A run folder is found by its path, or by its name under ``--runs-dir``. Studies read back what
they saved (``results.json``, :mod:`proxygap.report.saved`), sweeps their ``sweep.json``; nothing
is rerun and no model is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from proxygap.commands import console, fail

if TYPE_CHECKING:
    from proxygap.study.results import StudyResult

RESULTS_FILE = "results.json"  # proxygap.report.saved.RESULTS_FILE, without importing torch

__all__ = ["compare", "key_numbers", "report", "resolve_run", "runs"]

RunsDir = Annotated[Path, typer.Option(help="folder that holds run folders")]


def resolve_run(name: str, runs_dir: Path) -> Path:
    """The run (or sweep) folder ``name``: a path, else a folder of that name in ``runs_dir``."""
    candidates = list(dict.fromkeys((Path(name), runs_dir / name)))  # one, for an absolute name
    for candidate in candidates:
        if candidate.is_dir() and (
            (candidate / "config.yaml").is_file() or (candidate / "sweep.json").is_file()
        ):
            return candidate
    where = " and in ".join(repr(str(c)) for c in candidates)
    fail(
        f"no run folder {name!r} (looked for a config.yaml or sweep.json in {where}, and no "
        "TRL log: proxygap/history.jsonl or trainer_state.json); `proxygap runs` lists the runs"
    )


def _load(folder: Path) -> StudyResult:
    from proxygap.report.saved import SavedResultError, load_result

    try:
        return load_result(folder)
    except SavedResultError as err:
        if not (folder / RESULTS_FILE).exists():
            stages = _stages(folder)
            fail(
                f"run folder {str(folder)!r} has no {RESULTS_FILE}: "
                + (
                    f"the study has not finished ({stages} stage(s) done): `proxygap run` "
                    "resumes it"
                    if not (folder / "report.html").exists()
                    else "it was written by an older proxygap; `proxygap run` with its config "
                    "reads every finished stage back and writes it"
                )
            )
        fail(str(err))


def _stages(folder: Path) -> int:
    try:
        return len(json.loads((folder / "stages.json").read_text()))
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------- report
def report(
    run: Annotated[
        str, typer.Argument(help="run or sweep folder (a path, or a name in --runs-dir)")
    ],
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Render a run's (or a sweep's) report again from its saved results, rerunning nothing; or
    the report of a TRL output folder from the log of proxygap's callbacks."""
    from proxygap.report.render import write_report

    trl = _trl_folder(run, runs_dir)
    if trl is not None:
        _trl_report(trl)
        return
    folder = resolve_run(run, runs_dir)
    if (folder / "sweep.json").is_file():
        from proxygap.report.sweep import rerender_sweep

        try:
            rerender_sweep(folder)
        except (OSError, ValueError, KeyError) as err:
            fail(f"cannot render the sweep in {str(folder)!r} again: {err}")
    else:
        write_report(_load(folder), rerendered=True)
    typer.echo(str(folder / "report.html"))


def _trl_folder(name: str, runs_dir: Path) -> Path | None:
    """``name`` as a TRL output folder (a log of proxygap's callbacks or a trainer state, and
    no study config), or None."""
    for candidate in (Path(name), runs_dir / name):
        if not candidate.is_dir() or (candidate / "config.yaml").is_file():
            continue
        if (
            (candidate / "proxygap" / "history.jsonl").is_file()
            or (candidate / "trainer_state.json").is_file()
            or any(candidate.glob("checkpoint-*/trainer_state.json"))
        ):
            return candidate
    return None


def _trl_report(folder: Path) -> None:
    """Write ``report.md``/``report.html`` of a TRL run into its folder; print the HTML path."""
    from proxygap.report.trl_report import write_trl_report
    from proxygap.runs import RunLoadError, load_run

    try:
        data = load_run(folder)
    except RunLoadError as err:
        fail(str(err))
    source = data.trl_log.relative_to(folder) if data.trl_log is not None else folder
    if not data.trl:
        fail(
            f"{str(folder / source)!r} holds no proxygap/* metrics: train with "
            "ProxygapCallback or ProxygapEvalCallback (proxygap.integrations.trl)"
        )
    try:
        path = write_trl_report(data.trl, folder, source=str(source), label=folder.name)
    except OSError as err:
        fail(f"cannot write the report into {str(folder)!r}: {err}")
    typer.echo(str(path))


# ---------------------------------------------------------------- runs
def _gold(x: float) -> str:
    return f"{x:+.2f}" if math.isfinite(x) else "nan"


def _drop(drop: float, se: float, significant: bool) -> str:
    if drop <= 0:
        return " (peak at the end)"
    ratio = f"{drop / se:.1f}" if se > 0 else "∞"
    return f" (drop {ratio} SE{', overoptimized' if significant else ''})"


def key_numbers(result: StudyResult) -> str:
    """One line of a run's key numbers: gold at the peak -> at the end (SD units) per best-of-n
    proxy and RL run, with the drop in standard errors; the hump test per DAA loss; the
    mitigation arm with the highest end gold."""
    parts = []
    for r in result.proxies:
        t = r.curve.turn
        parts.append(
            f"bon {r.config.name} {_gold(t.gold_peak)}@n={int(r.curve.ns[t.peak_index])}"
            f"->{_gold(t.gold_end)}" + _drop(t.drop, t.drop_se, t.turns_down)
        )
    for rl in result.rl_runs:
        a = rl.analysis
        parts.append(
            f"RL β={rl.kl_coef:g} {_gold(a.peak_gold)}@step {a.peak_step}"
            f"->{_gold(rl.history[-1]['reward/gold'])}"
            + _drop(a.turn.drop, a.turn.drop_se, a.turn.turns_down)
        )
    if result.daa is not None:
        humps = [f"{loss} {'yes' if h.turns_down else 'no'}" for loss, h in result.daa.hump.items()]
        parts.append("DAA hump: " + ", ".join(humps))
    if result.mitigations is not None and result.mitigations.summary:
        s = result.mitigations.summary
        best = max(s, key=lambda a: s[a]["gold_end"]["mean"])
        parts.append(f"best arm {best} end gold {_gold(s[best]['gold_end']['mean'])}")
    return "; ".join(parts) or "no results"


def _describe(folder: Path) -> tuple[str, str]:
    """``(status, key numbers)`` of one run or sweep folder."""
    if (folder / "sweep.json").is_file():
        try:
            sweep = json.loads((folder / "sweep.json").read_text())
        except (OSError, ValueError) as err:
            return "sweep", f"unreadable sweep.json: {err}"
        cells, failed = sweep.get("cells", []), sweep.get("failed", [])
        return "sweep", f"{len(cells)} cells, {len(failed)} failed"
    if (folder / RESULTS_FILE).is_file():
        from proxygap.report.saved import SavedResultError, load_result

        try:
            result = load_result(folder)
        except SavedResultError as err:
            return "finished", str(err)
        return "finished", key_numbers(result)
    if (folder / "report.html").is_file():
        return "finished", f"no {RESULTS_FILE} (an older proxygap): `proxygap run` writes it"
    return "unfinished", f"{_stages(folder)} stage(s) done; `proxygap run` resumes it"


def runs(runs_dir: RunsDir = Path("runs")) -> None:
    """List the runs and sweeps in a runs folder with their key numbers (gold in SD units)."""
    if not runs_dir.is_dir():
        fail(f"runs folder {str(runs_dir)!r} does not exist")
    folders = sorted(
        p
        for p in runs_dir.iterdir()
        if p.is_dir() and ((p / "config.yaml").is_file() or (p / "sweep.json").is_file())
    )
    if not folders:
        console.print(f"no runs in {runs_dir}")
        return
    width = max(len(p.name) for p in folders)
    for p in folders:
        status, numbers = _describe(p)
        typer.echo(f"{p.name:<{width}}  {status:<10}  {numbers}")


# ---------------------------------------------------------------- compare
def compare(
    run: Annotated[list[str], typer.Argument(help="two or more run folders (paths or names)")],
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("compare.png"),
    runs_dir: RunsDir = Path("runs"),
) -> None:
    """Plot gold and proxy against d for several runs on one figure; print its path."""
    from proxygap.report.compare import plot_compare

    if len(run) < 2:
        fail(f"compare needs at least two runs, got {len(run)}")
    if out.suffix.lower() != ".png":
        fail(f"--out {str(out)!r}: the plot is a PNG file; give a name ending in .png")
    results: dict[str, Any] = {}
    for name in run:
        folder = resolve_run(name, runs_dir)
        if (folder / "sweep.json").is_file():
            fail(f"{name!r} is a sweep; compare its cells (in {str(folder / 'cells')!r})")
        label = folder.name if folder.name not in results else str(folder)
        results[label] = _load(folder)
    try:
        plot_compare(results, out)
    except OSError as err:
        fail(f"cannot write {str(out)!r}: {err}")
    typer.echo(str(out))
