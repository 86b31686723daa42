"""The ``diffdiff`` command line. Each command group lives in its own module and registers itself."""

from __future__ import annotations

from typing import Optional

import typer

from ..version import __version__
from . import batch, diffedit, edit, fan, maps, serve, video
from .common import set_verbose

app = typer.Typer(
    name="diffdiff",
    help="Graded image editing with diffusion models: each pixel changes as much as a change map allows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show third-party warnings and full tracebacks."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    set_verbose(verbose)


# Command modules; each defines register(app). ``maps`` before ``diffedit``, which adds ``map auto``.
for _mod in (edit, maps, fan, diffedit, serve, video, batch):
    _mod.register(app)


def main() -> None:
    app()
