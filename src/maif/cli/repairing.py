"""`maif repair`: cut a torn tail so a container ends at its last complete version again.

A crash mid-append leaves bytes after the last valid trailer; readers ignore them, but appending refuses
(the format's hint points here). Repair truncates exactly those bytes and nothing before them. A damaged
last trailer looks the same as a torn one, so repair can drop a version that was complete: `--dry-run`
shows what would be cut, and a repair that would keep no version at all needs `--force`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.views import reading
from maif.errors import ConfigError
from maif.format.repair import repair_container


def repair_command(
    container: Annotated[Path, typer.Argument(help="The container to repair.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be cut.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Repair even when no complete version would remain.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Truncate a torn tail: keep every byte up to the last complete version, cut what follows."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        with reading(container) as reader:
            torn_tail_bytes, versions_kept = reader.torn_tail_bytes, len(reader.versions)
        if torn_tail_bytes and versions_kept == 0 and not force:
            raise ConfigError(
                f"repair would keep no version of {container}: all {torn_tail_bytes} bytes after the "
                "header would be cut",
                hint="keep a copy; pass --force only if this really is a torn first write",
            )
        if not dry_run and torn_tail_bytes:
            report = repair_container(container)
            torn_tail_bytes, versions_kept = report.bytes_truncated, report.versions_kept
        output.result(
            {
                "ok": True,
                "container": str(container),
                "dry_run": dry_run,
                "bytes_truncated": torn_tail_bytes,
                "versions_kept": versions_kept,
            }
        )
        verb = "would cut" if dry_run else "cut"
        if torn_tail_bytes:
            output.human(f"{verb} {torn_tail_bytes:,} torn bytes; {versions_kept} complete version(s) kept")
        else:
            output.human(f"nothing to repair: {plain(container)} ends at its last complete version")
