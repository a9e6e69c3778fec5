"""`maif verify`: exit 0 only when every byte verifies under a key the caller trusts.

The trust anchors are the ``--trust`` public keys and nothing else: a key found in the file only says
which key to try. Every problem the verifier finds is listed with its block index (or ``-`` for a problem
of the file as a whole), and the exit code says which kind of failure it is:

    0 verified · 1 integrity failure (a block, chain, index or Merkle root does not match) ·
    3 signature missing, invalid or by no trusted key · 4 unreadable or malformed file, or a block that
    breaks a format rule (SPEC section 4) · 7 a block field above a bound in maif.limits · 2 usage error

``--require-signer KEYFILE`` (repeatable) names keys that must each have a valid signature on the last
version (they are trusted as well); one missing is a signature problem (exit 3). The union of signers
over all versions does not stand in for that: a co-signature of the last version can be stripped
(SPEC section 7), and a key that signed only an earlier version did not sign the last one.

A file with several kinds of problem exits with the first of 1, 4, 7, 3: damaged bytes name concrete
damage whoever signed, and a malformed block is refused even when a trusted key signed it.

A ``--decrypt-key`` the container is not encrypted for is the caller's mistake, not damage: when
everything but the encrypted payloads verifies (so the signed manifest's list of recipients is authentic)
and no recipient is that key, the command says "wrong key" and exits 5. A file that also fails without
the key is reported as above, since its recipients list cannot be trusted then.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif.cli.exit_codes import ExitCode
from maif.cli.keyfiles import load_trusted_keys, load_x25519_private_key
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.progress import TransferProgress
from maif.cli.views import reading, require_readable_container, version_row
from maif.errors import DecryptionError, FormatError, IntegrityError, SignatureError
from maif.format.aead import recipient_key_id
from maif.format.container import ContainerReader
from maif.format.signing import key_id
from maif.format.verify import VerificationReport, verify_container

# Problem kind -> exit code, in the order a report with several kinds is judged.
_VERDICT_BY_KIND: tuple[tuple[str, ExitCode], ...] = (
    ("integrity", ExitCode.INTEGRITY_FAILURE),
    ("format", ExitCode.MALFORMED_FILE),
    ("limit", ExitCode.LIMIT_EXCEEDED),
    ("signature", ExitCode.SIGNATURE_UNTRUSTED),
)


def verdict_of(report: VerificationReport) -> ExitCode:
    """The exit code a verification report earns."""
    if report.ok:
        return ExitCode.OK
    kinds = {problem.kind for problem in report.problems}
    for kind, code in _VERDICT_BY_KIND:
        if kind in kinds:
            return code
    raise AssertionError(f"a failed report with no known problem kind: {kinds}")


def raise_for_report(report: VerificationReport, reader: ContainerReader | None = None) -> None:
    """Raise the typed error matching a failed report (for commands that must not go on); else return.

    For a block that breaks a format rule or a bound, ``reader`` (the same file, open) re-reads that
    block, so its own error (FormatError, LimitExceededError with its numbers) is what is raised.
    """
    verdict = verdict_of(report)
    if verdict is ExitCode.OK:
        return
    kind = next(kind for kind, code in _VERDICT_BY_KIND if code is verdict)
    first = next(problem for problem in report.problems if problem.kind == kind)
    count = len(report.problems)
    if verdict is ExitCode.SIGNATURE_UNTRUSTED:
        raise SignatureError(
            f"container is not signed by a trusted key: {first.reason}",
            hint="check the --trust keys, or run `maif verify` for every problem",
        )
    if verdict in (ExitCode.MALFORMED_FILE, ExitCode.LIMIT_EXCEEDED):
        if reader is not None and first.block_index is not None:
            reader.check_block(first.block_index, decrypt=reader.can_decrypt)
        raise FormatError(
            f"container breaks the format in {first.describe()} ({count} problem(s))",
            hint="run `maif verify` to list every problem",
        )
    torn = any(problem.region == "tail" for problem in report.problems)
    raise IntegrityError(
        f"container failed verification with {count} problem(s): {first.reason}",
        block_index=first.block_index,
        hint="if a write was interrupted, `maif repair` cuts the torn tail"
        if torn
        else "run `maif verify` to list every problem",
    )


def report_document(
    path: Path,
    report: VerificationReport,
    trusted_ids: list[bytes],
    *,
    quick: bool,
    required_ids: list[bytes] | None = None,
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
        "signers_by_version": [list(signers) for signers in report.signers_by_version],
        "last_version_signer_key_ids": report.last_version_signer_key_ids,
        "trusted_key_ids": trusted_ids,
        "required_signer_key_ids": required_ids or [],
        "problems": [
            {
                "block_index": problem.block_index,
                "region": problem.region,
                "reason": problem.reason,
                "kind": problem.kind,
            }
            for problem in report.problems
        ],
    }


def verify_command(
    container: Annotated[Path, typer.Argument(help="The container to verify.")],
    trust: Annotated[
        list[Path],
        typer.Option("--trust", help="Ed25519 public key you trust (PEM file, or 64 hex digits); repeat."),
    ],
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Check manifests, index, signatures and Merkle roots; skip payloads."),
    ] = False,
    decrypt_key: Annotated[
        Path | None,
        typer.Option("--decrypt-key", help="X25519 private key: also authenticate encrypted payloads."),
    ] = None,
    require_signer: Annotated[
        list[Path] | None,
        typer.Option(
            "--require-signer",
            help="Ed25519 public key (PEM file, or 64 hex digits) that must have signed the last version; "
            "repeat for several. Trusted as well.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar (only drawn when stderr is a terminal).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Verify a container under trusted keys; list every problem with its block index."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output), TransferProgress.for_terminal(quiet=quiet or quick) as progress:
        trusted_keys = load_trusted_keys(trust)
        required = load_trusted_keys(require_signer or [])
        decryption_key = load_x25519_private_key(decrypt_key) if decrypt_key is not None else None
        require_readable_container(container)
        on_progress = _progress_bars(progress, container)
        checks: dict[str, Any] = {"full": not quick, "required_signers": required, "on_progress": on_progress}
        if decryption_key is not None and not _is_recipient(container, decryption_key):
            report = verify_container(container, trusted_keys, **checks)
            if report.ok:
                raise _wrong_key(container, decrypt_key)
        else:
            report = verify_container(container, trusted_keys, decryption_key=decryption_key, **checks)
    document = report_document(
        container,
        report,
        [key_id(key) for key in trusted_keys],
        quick=quick,
        required_ids=[key_id(key) for key in required],
    )
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


def _progress_bars(progress: TransferProgress, container: Path) -> Callable[[str, int], None] | None:
    """A "hash" and a "decode" bar over the container's record bytes, when a bar is drawn at all."""
    if not progress.enabled:
        return None
    with reading(container) as reader:
        record_bytes = sum(reader.entry(index).length for index in range(len(reader)))
    bars = {phase: progress.task(phase, record_bytes) for phase in ("hash", "decode")}
    return lambda phase, size: bars[phase](size)


def _is_recipient(container: Path, decryption_key: X25519PrivateKey) -> bool:
    """Whether the last version's manifest wraps the data key for ``decryption_key`` (True when the
    container is not encrypted at all: then the key is simply not needed)."""
    with reading(container) as reader:
        manifests = reader.manifests
        wraps = manifests[-1].key_wraps if manifests else ()
    wanted = recipient_key_id(decryption_key.public_key())
    return not wraps or any(wrap.recipient_key_id == wanted for wrap in wraps)


def _wrong_key(container: Path, key_file: Path | None) -> DecryptionError:
    return DecryptionError(
        f"wrong key: {container} is not encrypted for {key_file} (signatures, digests and Merkle roots "
        "verify; the encrypted payloads were not checked)",
        hint="pass the X25519 private key of one of the container's recipients to --decrypt-key",
    )


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
    last = ", ".join(key.hex() for key in document["last_version_signer_key_ids"]) or "none"
    output.human(f"  of which on the last version: {last}")
    if document["ok"]:
        output.human("[bold green]verified[/bold green]: every check passed under a trusted key")
        return
    from rich.table import Table  # only a failure draws one: a verified file does not pay its import

    table = Table(title=f"{len(document['problems'])} problem(s)", title_justify="left")
    table.add_column("block", justify="right")
    table.add_column("kind")
    table.add_column("reason")
    for problem in document["problems"]:
        index = problem["block_index"]
        table.add_row("-" if index is None else str(index), problem["kind"], plain(problem["reason"]))
    output.human(table)
    output.human(f"[bold red]NOT VERIFIED[/bold red] ({document['verdict']})")
