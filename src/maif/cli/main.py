"""Entry point of the `maif` command: registers every subcommand; the commands live in their own modules.

Each command is a thin shell over maif.format: parse options, call the library, render the result with Rich
or as one JSON document (``--json``), and end with a documented exit code (maif.cli.exit_codes, listed in
docs/cli.md). Heavy modules are imported by the command modules, which load only when their command runs.
"""

from __future__ import annotations

import typer

from maif.cli.audit import audit_app
from maif.cli.audit_key import audit_public_key_command
from maif.cli.demo import demo_command as format_demo_command
from maif.cli.demo_full import demo_command
from maif.cli.dev_issuer import dev_issuer_app
from maif.cli.inspection import inspect_command
from maif.cli.keygen import keygen_command
from maif.cli.packing import append_command, pack_command
from maif.cli.repairing import repair_command
from maif.cli.serve import serve_command
from maif.cli.store_commands import (
    check_command,
    export_command,
    import_command,
    search_command,
    stats_command,
    store_app,
)
from maif.cli.unpacking import unpack_command
from maif.cli.verification import verify_command
from maif.cli.worker import worker_command

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="MAIF: provable artifacts for AI agents. Exit codes: see `docs/cli.md`.",
    pretty_exceptions_enable=False,
)

app.command("keygen")(keygen_command)
app.command("pack")(pack_command)
app.command("unpack")(unpack_command)
app.command("inspect")(inspect_command)
app.command("verify")(verify_command)
app.command("append")(append_command)
app.command("repair")(repair_command)
app.command("demo")(demo_command)
app.command("format-demo")(format_demo_command)
app.command("serve")(serve_command)
app.command("worker")(worker_command)
app.command("export")(export_command)
app.command("import")(import_command)
app.command("search")(search_command)
app.command("stats")(stats_command)
app.command("check")(check_command)
audit_app.command("public-key")(audit_public_key_command)
app.add_typer(audit_app, name="audit", help="Verify and read a tamper-evident audit log offline.")
app.add_typer(
    dev_issuer_app,
    name="dev-issuer",
    help="DEVELOPMENT ONLY: a local OAuth issuer on 127.0.0.1 that mints tokens for `maif serve`.",
)
app.add_typer(
    store_app,
    name="store",
    help="Work on a store directory: export, import, search, stats, check [--repair], delete, compact.",
)


@app.command()
def version() -> None:
    """Print the MAIF version."""
    from maif import __version__

    typer.echo(__version__)


def main() -> None:
    app()
