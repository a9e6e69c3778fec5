"""Entry point of the `maif` command: names every subcommand; the commands live in their own modules.

Each command is a thin shell over maif.format: parse options, call the library, render the result with Rich
or as one JSON document (``--json``), and end with a documented exit code (maif.cli.exit_codes, listed in
docs/cli.md).

Start time is part of the interface (issue 13: ``maif --help`` <= 150 ms, ``maif verify`` of a small file
<= 250 ms; benchmarks/cli_start_bench.py). So this module imports nothing but Typer: a command's module
(and with it Rich, the format, the store, FastAPI...) is imported only when that command runs or its own
help is asked for. ``maif --help`` lists the commands from :data:`COMMANDS` (name, module, function, and
the first line of its help, which tests/cli/test_cli_start.py pins to the function's docstring), and
help is Click's plain formatter, not Rich's (importing Rich's help renderer alone takes about 140 ms).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import typer
from typer.core import TyperGroup

from maif.cli.plain_values import convert_without_pydantic


class LazyCommand(NamedTuple):
    module: str
    attribute: str
    summary: str  # the first line of its help, shown by `maif --help` without importing the module


COMMANDS: dict[str, LazyCommand] = {
    "keygen": LazyCommand("maif.cli.keygen", "keygen_command", "Create a key pair: DIR/maif.key (private, mode 0600) and DIR/maif.pub, or the X25519 pair DIR/maif-x25519.key and DIR/maif-x25519.pub with --x25519."),  # noqa: E501
    "pack": LazyCommand("maif.cli.packing", "pack_command", "Pack files and directories into a new signed .maif container (symlinks are never followed)."),  # noqa: E501
    "unpack": LazyCommand("maif.cli.unpacking", "unpack_command", "Write a container's files back under their recorded relative paths, refusing path traversal."),  # noqa: E501
    "inspect": LazyCommand("maif.cli.inspection", "inspect_command", "Show a container's versions, signers' key ids and block table (claims only: see `maif verify`)."),  # noqa: E501
    "verify": LazyCommand("maif.cli.verification", "verify_command", "Verify a container under trusted keys; list every problem with its block index."),  # noqa: E501
    "append": LazyCommand("maif.cli.packing", "append_command", "Add files to a container as a new signed version; earlier versions stay intact and verifiable."),  # noqa: E501
    "repair": LazyCommand("maif.cli.repairing", "repair_command", "Truncate a torn tail: keep every byte up to the last complete version, cut what follows."),  # noqa: E501
    "demo": LazyCommand("maif.cli.demo_full", "demo_command", "Run agents over a corpus into a signed store; search, export, verify and catch tampering."),  # noqa: E501
    "format-demo": LazyCommand("maif.cli.demo", "demo_command", "Show the format working: keys, pack, verify, refuse an untrusted key, catch a flipped byte, append."),  # noqa: E501
    "serve": LazyCommand("maif.cli.serve", "serve_command", "Serve the authenticated HTTP API (/v1), /metrics, /healthz and /readyz."),  # noqa: E501
    "worker": LazyCommand("maif.cli.worker", "worker_command", "Run agents that pull tasks from the shared NATS JetStream queue into the shared store."),  # noqa: E501
    "export": LazyCommand("maif.cli.store_commands", "export_command", "Export blocks of a store (all, the --agent/--type matches, or the --id blocks) to a signed .maif."),  # noqa: E501
    "import": LazyCommand("maif.cli.store_commands", "import_command", "Import a container's blocks into a store, only if it verifies under a --trust key."),  # noqa: E501
    "search": LazyCommand("maif.cli.store_commands", "search_command", "Find the EMBEDDING blocks most similar (cosine) to a query vector or text."),  # noqa: E501
    "stats": LazyCommand("maif.cli.store_commands", "stats_command", "Print a store's statistics: blocks, vectors, log, cache, compression and dedup, bytes per tier."),  # noqa: E501
    "check": LazyCommand("maif.cli.store_commands", "check_command", "Scrub a store: every block's chunks exist, a sample read back and verified; exit 1 on any problem."),  # noqa: E501
    "audit": LazyCommand("maif.cli.audit", "audit_app", "Verify and read a tamper-evident audit log offline."),  # noqa: E501
    "dev-issuer": LazyCommand("maif.cli.dev_issuer", "dev_issuer_app", "DEVELOPMENT ONLY: a local OAuth issuer on 127.0.0.1 that mints tokens for `maif serve`."),  # noqa: E501
    "store": LazyCommand("maif.cli.store_commands", "store_app", "Work on a store directory: export, import, search, stats, check [--repair], delete, compact."),  # noqa: E501
}


def load_command(name: str) -> Any:
    """The Click command (or group) for ``name``, importing its module now; its path and text
    parameters are converted without pydantic (maif.cli.plain_values)."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        group = typer.main.get_group(target)
        group.name, group.help = name, entry.summary
        return convert_without_pydantic(group)
    single = typer.Typer(rich_markup_mode=None, add_completion=False, pretty_exceptions_enable=False)
    single.command(name)(target)
    command = typer.main.get_command(single)
    command.name = name
    return convert_without_pydantic(command)


class _LazyGroup(TyperGroup):
    """A group whose listed commands are imported only when one is run (or its help is shown)."""

    def __init__(self, *arguments: Any, **options: Any) -> None:
        super().__init__(*arguments, **options)
        convert_without_pydantic(self)

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *super().list_commands(ctx)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in COMMANDS:
            return load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, entry.summary) for name, entry in COMMANDS.items()]
        rows += [
            (name, command.get_short_help_str(formatter.width))
            for name, command in self.commands.items()
            if not command.hidden
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    cls=_LazyGroup,
    no_args_is_help=True,
    add_completion=False,
    help="MAIF: provable artifacts for AI agents. Exit codes: see `docs/cli.md`.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    pass


@app.command()
def version() -> None:
    """Print the MAIF version."""
    from maif import __version__

    typer.echo(__version__)


def main() -> None:
    app()
