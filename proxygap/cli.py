"""The ``proxygap`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from proxygap.commands import SetOption
from proxygap.commands.configs import configs, show
from proxygap.commands.runs import compare, report, runs

app = typer.Typer(
    help="Measure, predict and mitigate reward-model overoptimization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
task_app = typer.Typer(help="Built-in tasks.", no_args_is_help=True)
app.add_typer(task_app, name="task")
console = Console(stderr=True, soft_wrap=True)

if TYPE_CHECKING:
    from proxygap.config import StudyConfig


def run_and_report(
    cfg: StudyConfig, runs_root: Path | str = "runs", *, restart: bool = False, log: Any = print
) -> Path:
    """Run (or resume) the study ``cfg`` under ``runs_root``, then write its report from what
    the stages found; return the run folder."""
    from proxygap.report.render import write_report
    from proxygap.study import run_study

    result = run_study(cfg, runs_root, restart=restart, log=log)
    write_report(result)
    return result.dir


@app.command()
def run(
    config: Annotated[
        str | None, typer.Argument(help="YAML study config, or a built-in name (default: demo)")
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="folder that holds run folders")] = Path("runs"),
    restart: Annotated[
        bool, typer.Option(help="delete an existing run folder of another config and start over")
    ] = False,
    set_: SetOption = None,
) -> None:
    """Run (or resume) a study and write its run folder and report.

    Exits 2 with a message naming the file, field or value for a mistake in the config or the
    inputs (found before the run folder is made or touched), for a run that stops on NaN, and
    for a full disk or an unwritable folder mid-run (naming the stage and the path)."""
    from proxygap.commands.configs import load_study_config
    from proxygap.config import ConfigError
    from proxygap.data.jsonl import DataFileError
    from proxygap.models.device import DeviceError
    from proxygap.models.loading import ModelLoadError
    from proxygap.store.faults import WriteFault, write_fault
    from proxygap.store.run import RunFolderError
    from proxygap.study.context import SetupError
    from proxygap.tasks.gold import GoldError

    user_errors = (
        ConfigError, DataFileError, ModelLoadError, RunFolderError, DeviceError, GoldError,
        SetupError, WriteFault,
    )  # fmt: skip
    cfg = None
    try:
        # a file, or the name of a shipped config (also where a folder of that name is here)
        cfg = load_study_config(config or "demo", set_)
        out = run_and_report(cfg, runs_dir, restart=restart, log=console.print)
    except user_errors as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(2) from None
    except FloatingPointError as err:  # NaN or inf in scores, rewards or losses
        console.print(f"[red]error:[/red] {escape(str(err))} (finished stages are kept)")
        raise typer.Exit(2) from None
    except Exception as err:  # a full disk or an unwritable folder mid-run
        fault = write_fault(err, run_dir=runs_dir / cfg.name if cfg is not None else None)
        if fault is None:
            raise
        console.print(f"[red]error:[/red] {escape(str(fault))}")
        raise typer.Exit(2) from None
    console.print(f"[green]done:[/green] {out}/report.html")


@task_app.command("build")
def task_build(
    out: Annotated[
        Path,
        typer.Option(
            help="output folder (required: the installed package's assets are never "
            "overwritten unless named here)"
        ),
    ],
    name: Annotated[str, typer.Argument(help="task name")] = "reviews",
    n_sentences: Annotated[int, typer.Option(help="pretraining corpus size")] = 200_000,
    seed: Annotated[int, typer.Option(help="seed of corpus, init and data order")] = 0,
    size: Annotated[str, typer.Option(help="policy size: tiny | small | base")] = "base",
) -> None:
    """Recreate a built-in task's tokenizer and pretrained base policy (of one size) from its
    seed, with the thread count the shipped weights were built with."""
    if name != "reviews":
        console.print(f"[red]error:[/red] unknown task {name!r}; built-in tasks: ['reviews']")
        raise typer.Exit(2)
    from dataclasses import replace

    from proxygap.tasks.reviews.build import POLICY_SIZES, build

    if size not in POLICY_SIZES:
        console.print(f"[red]error:[/red] --size {size!r}: allowed {list(POLICY_SIZES)}")
        raise typer.Exit(2)
    recipe = POLICY_SIZES[size]
    spec = replace(recipe.spec, n_sentences=n_sentences, seed=seed)
    path = build(out, spec, threads=recipe.threads)
    console.print(f"[green]built[/green] {path}")


@app.command()
def version() -> None:
    """Print the proxygap version."""
    from proxygap import __version__

    typer.echo(__version__)


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="YAML sweep file (base config + grid)")],
    runs_dir: Annotated[Path, typer.Option(help="folder that holds run folders")] = Path("runs"),
    backend: Annotated[
        str | None,
        typer.Option(help="auto | ray | sequential (default: the sweep file's runtime.backend)"),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Run (or resume) every cell of a sweep and aggregate the results over seeds.

    Exits 2 when the sweep cannot start (bad file, bad grid path or value, no Ray for
    --backend ray) and 1 when some cells failed (the report covers the others). ``--set``
    changes the base config, for every cell.
    """
    from proxygap.config import ConfigError
    from proxygap.store.run import RunFolderError
    from proxygap.sweep import SweepError, run_sweep

    try:
        result = run_sweep(spec, runs_dir, backend=backend, log=console.print, overrides=set_)
    except (SweepError, ConfigError, RunFolderError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"[green]report:[/green] {result.dir}/report.html")
    if result.failed:
        console.print(
            f"[red]{len(result.failed)} of {result.n_cells} cells failed:[/red] "
            + ", ".join(result.failed)
            + " (errors in sweep.json; run the sweep again to resume them)"
        )
        raise typer.Exit(1)


for command in (configs, show, report, runs, compare):
    app.command()(command)

if __name__ == "__main__":
    app()
