"""`maif verify`: exit 0 only when every byte verifies under a key the caller trusts.

The trust anchors are the ``--trust`` public keys and nothing else: a key found in the file only says
which key to try. Every problem the verifier finds is listed with its block index (or ``-`` for a problem
of the file as a whole), and the exit code says which kind of failure it is:

    0 verified · 1 integrity failure (a block, chain, index or Merkle root does not match) ·
    3 signature missing, invalid or by no trusted key · 4 unreadable or malformed file · 2 usage error

When a file has both kinds of problem, integrity (1) wins: it names concrete damage, whoever signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from maif.cli.exit_codes import ExitCode
from maif.cli.keyfiles import load_trusted_keys, load_x25519_private_key
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.views import problem_is_signature, require_readable_container, version_row
from maif.errors import IntegrityError, SignatureError
from maif.format.signing import key_id
from maif.format.verify import VerificationReport, verify_container


def verdict_of(report: VerificationReport) -> ExitCode:
    """The exit code a verification report earns."""
    if report.ok:
        return ExitCode.OK
    if all(problem_is_signature(problem) for problem in report.problems):
        return ExitCode.SIGNATURE_UNTRUSTED
    return ExitCode.INTEGRITY_FAILURE


def raise_for_report(report: VerificationReport) -> None:
    """Raise the typed error matching a failed report (for commands that must not go on); else return."""
    verdict = verdict_of(report)
    if verdict is ExitCode.OK:
        return
    first = report.problems[0] if report.problems else None
    detail = f": {first.reason}" if first is not None else ""
    count = len(report.problems)
    if verdict is ExitCode.SIGNATURE_UNTRUSTED:
        raise SignatureError(
            f"container is not signed by a trusted key{detail}",
            hint="check the --trust keys, or run `maif verify` for every problem",
        )
    torn = any(problem.region == "tail" for problem in report.problems)
    raise IntegrityError(
        f"container failed verification with {count} problem(s){detail}",
        block_index=first.block_index if first is not None else None,
        hint="if a write was interrupted, `maif repair` cuts the torn tail"
        if torn
        else "run `maif verify` to list every problem",
    )


def report_document(
    path: Path, report: VerificationReport, trusted_ids: list[bytes], *, quick: bool
) -> dict[str, Any]:
    verdict = verdict_of(report)
    return {
        "ok": report.ok,
        "verdict": verdict.name.lower(),
        "exit_code": int(verdict),
        "container": str(path),
        "mode": "quick" if quick else "full",
        "block_count": report.block_count,
        "versions": [version_row(version) for version in report.versions],
        "signer_key_ids": list(report.signer_key_ids),
        "trusted_key_ids": trusted_ids,
        "problems": [
            {
                "block_index": problem.block_index,
                "region": problem.region,
                "reason": problem.reason,
                "kind": "signature" if problem_is_signature(problem) else "integrity",
            }
            for problem in report.problems
        ],
    }


def verify_command(
    container: Annotated[Path, typer.Argument(help="The container to verify.")],
    trust: Annotated[
        list[Path],
        typer.Option("--trust", help="Ed25519 public key (PEM) you trust; repeat for several."),
    ],
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Check manifests, index, signatures and Merkle roots; skip payloads."),
    ] = False,
    decrypt_key: Annotated[
        Path | None,
        typer.Option("--decrypt-key", help="X25519 private key: also authenticate encrypted payloads."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Verify a container under trusted keys; list every problem with its block index."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        trusted_keys = load_trusted_keys(trust)
        decryption_key = load_x25519_private_key(decrypt_key) if decrypt_key is not None else None
        require_readable_container(container)
        report = verify_container(container, trusted_keys, full=not quick, decryption_key=decryption_key)
    document = report_document(container, report, [key_id(key) for key in trusted_keys], quick=quick)
    output.result(document)
    _render(output, document)
    verdict = verdict_of(report)
    if verdict is not ExitCode.OK:
        typer.echo(
            f"error: {container} failed verification ({verdict.name.lower()}, "
            f"{len(report.problems)} problem(s))",
            err=True,
        )
    raise typer.Exit(int(verdict))


def _render(output: CommandOutput, document: dict[str, Any]) -> None:
    if output.json_output:
        return
    versions = document["versions"]
    output.human(
        f"{plain(document['container'])}: {document['block_count']} blocks, {len(versions)} version(s), "
        f"{document['mode']} verification"
    )
    signers = ", ".join(key.hex() for key in document["signer_key_ids"]) or "none"
    output.human(f"  valid signatures by trusted key id(s): {signers}")
    if document["ok"]:
        output.human("[bold green]verified[/bold green]: every check passed under a trusted key")
        return
    table = Table(title=f"{len(document['problems'])} problem(s)", title_justify="left")
    table.add_column("block", justify="right")
    table.add_column("kind")
    table.add_column("reason")
    for problem in document["problems"]:
        index = problem["block_index"]
        table.add_row("-" if index is None else str(index), problem["kind"], plain(problem["reason"]))
    output.human(table)
    output.human(f"[bold red]NOT VERIFIED[/bold red] ({document['verdict']})")
