"""`maif audit public-key`: the audit log's signing key, the trust anchor for `maif audit verify --trust`.

Read-only: the keystore is opened with the master key (``MAIF_MASTER_KEY``, else the key file named by
``--config``'s ``security.master_key_file`` or ``~/.config/maif/master.key``, as the service finds it)
and nothing is created or changed. Prints the key as 64 hex digits (what every ``--trust`` takes) and its
key id; ``--output FILE`` also writes it as a PEM file (never over a file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization

from maif.cli.keyfiles import write_new_file
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.format import signing


def audit_public_key_command(
    security_dir: Annotated[
        Path, typer.Argument(help="The security directory (holds keys.maifkeys and audit/).")
    ] = Path("maif-data/security"),
    output_file: Annotated[
        Path | None, typer.Option("--output", "-o", help="Also write the key to this new PEM file.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    config: Annotated[
        Path | None, typer.Option(help="The service's config file (for security.master_key_file).")
    ] = None,
) -> None:
    """Print the audit log's public signing key (hex; with -o also a PEM file) without changing anything."""
    from maif.security.manager import audit_public_key

    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        key = audit_public_key(security_dir, config=config)
        raw = key.public_bytes_raw().hex()
        if output_file is not None:
            pem = key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
            write_new_file(output_file, pem, mode=0o644)
        result = {"ok": True, "public_key": raw, "key_id": signing.key_id(key).hex(),
                  "pem_file": str(output_file) if output_file is not None else None}
        output.result(result)
        output.human(f"audit signing key: [bold]{raw}[/bold] (key id {result['key_id']})")
        if output_file is not None:
            output.human(f"  written to {plain(str(output_file))}")
        output.human(f"  verify with: maif audit verify {plain(str(security_dir / 'audit'))} --trust {raw}")
