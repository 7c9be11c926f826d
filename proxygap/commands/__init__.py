"""The ``proxygap`` command line's everyday commands, one module per concern, registered on the
app by :mod:`proxygap.cli`: configs (:mod:`.configs`: ``configs``, ``show``, ``--set``) and run
folders (:mod:`.runs`: ``report``, ``runs``, ``compare``).

Bad input ends with :func:`fail`: a message naming the problem on stderr and exit status 2, no
traceback, nothing written. The modules import the library inside the commands, so that
``proxygap --help`` does not wait for torch.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["SetOption", "console", "fail"]

console = Console(stderr=True, soft_wrap=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="change a field of the config: a dotted path and a YAML value, e.g. "
        "--set rl.settings.steps=50 (repeatable; list items by index or *)",
    ),
]


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit with status 2."""
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)
