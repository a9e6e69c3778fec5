"""Entry point of the `maif` command. Subcommands are registered by their own modules."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="MAIF: provable artifacts for AI agents.")


@app.command()
def version() -> None:
    """Print the MAIF version."""
    from maif import __version__

    typer.echo(__version__)


def main() -> None:
    app()
