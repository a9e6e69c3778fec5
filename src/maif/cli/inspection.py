"""`maif inspect`: what a container holds, without judging it (that is `maif verify`'s job).

Shows the versions (number, block count, Merkle root, time, signers' key ids) and the block table (index,
id, type, stored and payload sizes, storage flags). Inspecting reads structure only and trusts nothing: the
key ids shown are what the file *claims*; only `maif verify --trust` says whether they are true.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from maif.cli.keyfiles import load_x25519_private_key
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.views import block_row, reading, version_row


def inspect_container(path: Path, *, decryption_key: Any = None) -> dict[str, Any]:
    """The versions and the block table of the container at ``path``, as plain data."""
    with reading(path, decryption_key=decryption_key) as reader:
        versions = [version_row(version) for version in reader.versions]
        blocks = [block_row(reader, index) for index in range(len(reader))]
        torn_tail_bytes = reader.torn_tail_bytes
    signer_ids: list[bytes] = []
    for version in versions:
        for signer in version.get("signer_key_ids", []):
            if signer not in signer_ids:
                signer_ids.append(signer)
    return {
        "ok": True,
        "container": str(path),
        "file_bytes": path.stat().st_size,
        "torn_tail_bytes": torn_tail_bytes,
        "block_count": len(blocks),
        "versions": versions,
        "signer_key_ids": signer_ids,
        "blocks": blocks,
    }


def inspect_command(
    container: Annotated[Path, typer.Argument(help="The container to inspect.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", "--decrypt-key", help="X25519 private key (PEM) of an encrypted container."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Show a container's versions, signers' key ids and block table (claims only: see `maif verify`)."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        decryption_key = load_x25519_private_key(key) if key is not None else None
        document = inspect_container(container, decryption_key=decryption_key)
    output.result(document)
    if not output.json_output:
        _render(output, document)


def _render(output: CommandOutput, document: dict[str, Any]) -> None:
    output.human(
        f"[bold]{plain(document['container'])}[/bold]: {document['file_bytes']:,} bytes, "
        f"{document['block_count']} blocks, {len(document['versions'])} version(s)"
    )
    if document["torn_tail_bytes"]:
        output.human(
            f"[yellow]torn tail[/yellow]: {document['torn_tail_bytes']} bytes after the last "
            "complete version (ignored; `maif repair` cuts them)"
        )
    versions = Table(title="versions (claimed; verify with `maif verify --trust`)", title_justify="left")
    for column in ("version", "blocks", "merkle root", "committed at (UTC)", "signer key ids"):
        versions.add_column(column, overflow="fold")
    for version in document["versions"]:
        signers = "\n".join(signer.hex() for signer in version["signer_key_ids"])
        versions.add_row(
            str(version["number"]),
            str(version["block_count"]),
            version["merkle_root"].hex()[:16] + "…",
            version["committed_at"],
            signers or "[red]none[/red]",
        )
    output.human(versions)
    blocks = Table(title="blocks", title_justify="left")
    for column, justify in _BLOCK_COLUMNS:
        blocks.add_column(column, justify=justify, overflow="fold")
    for row in document["blocks"]:
        where = f"[red]{plain(row['error'])}[/red]" if "error" in row else plain(row["path"] or "")
        if not row["metadata_readable"] and "error" not in row:
            where = "[dim](metadata sealed: pass --key)[/dim]"
        blocks.add_row(
            str(row["index"]),
            plain(row.get("id", "?")),
            plain(row.get("type", "?")),
            _number(row.get("stored_bytes")),
            _number(row.get("payload_bytes")),
            ",".join(row.get("flags", [])) or "-",
            where,
        )
    output.human(blocks)


_BLOCK_COLUMNS: tuple[tuple[str, Literal["left", "right"]], ...] = (
    ("index", "right"),
    ("id", "left"),
    ("type", "left"),
    ("stored B", "right"),
    ("payload B", "right"),
    ("flags", "left"),
    ("path", "left"),
)


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"
