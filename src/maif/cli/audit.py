"""`maif audit`: check and read a tamper-evident audit log offline, with only the trusted public keys.

    maif audit verify PATH --trust KEY [--trust KEY ...] [--witness FILE] [--require-witness]
                      [--allow-unsigned-tail] [--from-segment N] [--fetch-archived] [--no-remember] [--json]
    maif audit show PATH [--start N] [--limit N] [--json]
    maif audit archive DIR --before-segment N [--to PATH | --to s3://BUCKET/PREFIX] [--json]
    maif audit checkpoint PATH --output FILE [--json]

PATH is a segmented audit log directory (docs/adr/0022-audit-segment-chain.md) or one audit log file (a
log from before segments, or one segment). For a directory, `verify` checks every segment as below and
every link between them, and names the segment file and entry of the first problem; segments archived
out of the directory are skipped with `--from-segment N`, which anchors on the signed head of segment
N-1 that segment N records (accepted once its signature verifies under a --trust key). `show` lists the
records of every segment (entry indices count within their segment), `checkpoint` saves the newest.

``--trust`` takes an Ed25519 public key as a PEM file (as `maif keygen` writes) or as 64 hex digits of
the raw key. `verify` checks every frame digest, every chain link, the Merkle root at every checkpoint
and every checkpoint signature, and names the first bad entry. `show` lists entries and checkpoints
after the same structural checks, without signatures (so it needs no keys). `checkpoint` copies the log's
latest signed checkpoint to a file (`--witness` also takes the JSON signed head GET /v1/audit serves);
an auditor keeps it and later passes it to `verify --witness`, which
then also refuses a log that was cut back or replaced since, or an older genuine copy (the file alone
cannot reveal that: a log cut right after a checkpoint is fully signed). A passing `verify` prints what it
proved ("N entries, signed head at entry K (time T, key id ...)") and what freshness it established: it
remembers the newest signed head it verified on this machine (maif.cli.audit_heads, docs/adr/0088) and a
later verify of the same log, at any path, refuses a copy that no longer holds it; the first verification
of a log on a machine says it checked no freshness, unless --witness is given. --no-remember neither reads
nor writes that state (to verify an archive of older segments on its own); --require-witness makes a
missing --witness a usage error.

Exit codes (maif.cli.exit_codes.ExitCode, shared by every `maif` command):

    0  OK                   every check passed and every entry is covered by a trusted signed checkpoint
                            (with --allow-unsigned-tail: at least one entry is, and the rest follow it)
    1  INTEGRITY_FAILURE    a frame digest, chain link, entry order or Merkle root failed (the message
                            names the first bad entry); the log was altered or damaged; or it no longer
                            holds the --witness head or the head remembered on this machine (cut back,
                            older copy, segments dropped)
    2  USAGE_ERROR          bad arguments
    3  SIGNATURE_UNTRUSTED  a checkpoint is not validly signed by a --trust key, no entry at all is
                            covered by a verified signed checkpoint (always refused: a log cut to its
                            header or rewritten without the key), or entries at the end are not yet
                            covered by one (accepted with --allow-unsigned-tail)
    4  MALFORMED_FILE       not an audit log, an unsupported version, or the file cannot be read
    5  KEY_ERROR            a --trust key is unreadable or not an Ed25519 public key
    7  LIMIT_EXCEEDED       a record or count above a bound in maif.limits
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from maif.cli.exit_codes import ExitCode
from maif.cli.output import CommandOutput, reporting_errors
from maif.errors import ConfigError, CryptoError, SignatureError, StorageError

audit_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Verify and read tamper-evident audit logs offline.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # Click's help formatter: Rich's costs ~140 ms of start time
)

_HEX_KEY_LENGTH = 64


def load_trust_argument(value: str) -> Ed25519PublicKey:
    """A --trust value: 64 hex digits of a raw Ed25519 public key, or a PEM public key file."""
    text = value.strip()
    if len(text) == _HEX_KEY_LENGTH and all(c in "0123456789abcdefABCDEF" for c in text):
        try:
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
        except ValueError as error:
            raise CryptoError("--trust value is not a valid Ed25519 public key") from error
    from maif.cli.keyfiles import load_trusted_keys

    path = Path(value)
    if not path.is_file():
        raise CryptoError(f"--trust {value!r} is neither 64 hex digits nor a public key file")
    return load_trusted_keys([path])[0]


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


def _unreadable_as_malformed(output: CommandOutput, error: StorageError) -> typer.Exit:
    output.error(error, ExitCode.MALFORMED_FILE)
    return typer.Exit(int(ExitCode.MALFORMED_FILE))


@audit_app.command("verify")
def verify_command(
    path: Annotated[Path, typer.Argument(help="The audit log directory, or one audit log file.")],
    trust: Annotated[
        list[str], typer.Option("--trust", help="A trusted Ed25519 public key: PEM file or 64 hex digits.")
    ],
    witness: Annotated[
        Path | None,
        typer.Option(
            "--witness",
            help="A signed head saved earlier: `maif audit checkpoint` output, or GET /v1/audit's JSON.",
        ),
    ] = None,
    allow_unsigned_tail: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned-tail", help="Accept trailing entries after the last verified signed checkpoint."
        ),
    ] = False,
    require_witness: Annotated[
        bool, typer.Option("--require-witness", help="Refuse to verify without --witness (freshness).")
    ] = False,
    from_segment: Annotated[
        int | None,
        typer.Option(
            "--from-segment", min=0, help="Verify a directory from this segment on (earlier ones archived)."
        ),
    ] = None,
    fetch_archived: Annotated[
        bool,
        typer.Option(
            "--fetch-archived",
            help="Fetch the segments archived to an object store (its manifest) and verify the whole chain.",
        ),
    ] = False,
    s3_endpoint: Annotated[
        str | None,
        typer.Option("--s3-endpoint", help="S3 endpoint URL for --fetch-archived (default: the manifest's)."),
    ] = None,
    no_remember: Annotated[
        bool,
        typer.Option(
            "--no-remember",
            help="Neither check against nor remember the signed head verified on this machine before.",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Check every frame, chain link, Merkle root and checkpoint signature of an audit log."""
    from maif.security.audit import verify_audit_log

    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        if require_witness and witness is None:
            raise ConfigError(
                "--require-witness needs --witness FILE: "
                "a signed head saved earlier with `maif audit checkpoint`"
            )
        trusted = [load_trust_argument(value) for value in trust]
        witness_checkpoint = None if witness is None else _read_checkpoint_file(witness)
        freshness = _Freshness(trusted, witness_checkpoint, remember=not no_remember)
        if path.is_dir():
            options = _DirectoryOptions(allow_unsigned_tail, from_segment, fetch_archived, s3_endpoint)
            _verify_directory(output, path, trusted, freshness, options)
            return
        if fetch_archived:
            raise ConfigError(f"--fetch-archived needs a segmented audit log directory; {path} is a file")
        if from_segment is not None:
            raise ConfigError(f"--from-segment needs a segmented audit log directory; {path} is a file")
        try:
            report = verify_audit_log(
                path, trusted, witness=witness_checkpoint, allow_unsigned_tail=allow_unsigned_tail
            )
        except StorageError as error:
            raise _unreadable_as_malformed(output, error) from None
        fresh_line = freshness.check(path, report.log_id, None, 0, report.last_checkpoint)
        document: dict[str, Any] = {
            "ok": True,
            "path": str(path),
            "log_id": report.log_id,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "signed_entries": report.signed_entries,
            "unsigned_tail_entries": report.unsigned_tail_entries,
            "root": report.root,
            "signing_key_ids": report.signing_key_ids,
            "torn_tail_bytes": report.torn_tail_bytes,
            **freshness.fields(report.last_checkpoint),
        }
        if report.torn_tail_bytes:
            output.warn(
                f"{report.torn_tail_bytes} bytes of an incomplete record at the end (a crash mid-append)"
            )
        output.result(document)
        output.human(
            f"[green]verified[/green] {path}: "
            + _proven(report.entries, report.signed_entries - 1, report.last_checkpoint)
            + f" ({report.checkpoints} signed checkpoints)"
        )
        output.human(fresh_line)


class _DirectoryOptions(NamedTuple):
    allow_unsigned_tail: bool
    from_segment: int | None
    fetch_archived: bool
    s3_endpoint: str | None


def _verify_directory(
    output: CommandOutput,
    path: Path,
    trusted: list[Ed25519PublicKey],
    freshness: _Freshness,
    options: _DirectoryOptions,
) -> None:
    from maif.security.audit_archive import check_manifest_anchor, read_manifest, split_archived
    from maif.security.audit_chain import verify_audit_chain

    witness = freshness.witness
    manifest = read_manifest(path)
    from_segment = options.from_segment
    if options.fetch_archived:
        if manifest is None:
            raise ConfigError(f"--fetch-archived: {path} has no archive manifest (nothing archived to S3)")
        if from_segment is not None:
            raise ConfigError("--fetch-archived verifies from segment 0; leave out --from-segment")
        report = _verify_fetching(path, trusted, witness, options, manifest)
    else:
        archived, local = split_archived(path, manifest)
        if manifest is not None and from_segment is None and archived:
            from_segment = local[0][0] if local else None
        try:
            report = verify_audit_chain(
                path,
                trusted,
                from_segment=from_segment,
                witness=witness,
                allow_unsigned_tail=options.allow_unsigned_tail,
            )
        except StorageError as error:
            raise _unreadable_as_malformed(output, error) from None
        if manifest is not None:
            check_manifest_anchor(path, manifest, report)
    fresh_line = freshness.check(
        path, report.chain_id, report.last_segment, report.first_segment, report.last_checkpoint
    )
    document: dict[str, Any] = {
        "ok": True,
        "path": str(path),
        "chain_id": report.chain_id,
        "first_segment": report.first_segment,
        "last_segment": report.last_segment,
        "segments": report.segments,
        "first_index": report.first_index,
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "unsigned_tail_entries": report.unsigned_tail_entries,
        "anchored_on": None if report.anchor is None else _checkpoint_row(report.anchor),
        "signing_key_ids": report.signing_key_ids,
        "torn_tail_bytes": report.torn_tail_bytes,
        **freshness.fields(report.last_checkpoint),
    }
    if report.torn_tail_bytes:
        output.warn(f"{report.torn_tail_bytes} bytes of an incomplete record at the end (a crash mid-append)")
    anchored = ""
    if options.fetch_archived and manifest is not None:
        fetched = len(split_archived(path, manifest)[0])
        document["fetched"] = {"segments": fetched, "from": manifest.location}
        output.human(f"segments 0..{fetched - 1} fetched from {manifest.location} and verified with the rest")
    elif report.anchor is not None and manifest is not None:
        where = manifest.location
        document["archived"] = {
            "segments": [0, report.first_segment - 1],
            "entries": report.first_index,
            "to": where,
            "keys": [entry.key for entry in manifest.segments[: report.first_segment]],
        }
        output.human(
            f"segments 0..{report.first_segment - 1} (entries 0..{report.first_index - 1}) are archived in "
            f"{where} (manifest {path}/archive-manifest.json, linked); not fetched: pass --fetch-archived "
            "to verify them too"
        )
    elif report.anchor is not None:
        anchored = f", anchored on the signed head of segment {report.first_segment - 1}"
        document["archived"] = {"segments": [0, report.first_segment - 1], "entries": report.first_index}
        output.human(
            f"segments 0..{report.first_segment - 1} (entries 0..{report.first_index - 1}) are not in {path} "
            "(archived): not checked here; verify the archive on its own (--no-remember), its last "
            "checkpoint is the anchor"
        )
    last_signed = report.first_index + report.entries - report.unsigned_tail_entries - 1
    output.human(
        f"[green]verified[/green] {path}: segments {report.first_segment}..{report.last_segment}, entries "
        f"from entry {report.first_index}: {_proven(report.entries, last_signed, report.last_checkpoint)} "
        f"({report.checkpoints} signed checkpoints{anchored})"
    )
    output.human(fresh_line)
    output.result(document)


def _s3_store(url: str, endpoint: str | None) -> Any:
    """An S3ObjectStore for ``s3://BUCKET[/PREFIX]``; the endpoint from the argument or the storage config."""
    from urllib.parse import urlsplit

    from maif.config import StorageConfig, load_section
    from maif.storage.backends.s3 import S3ObjectStore

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{url!r} is not an s3://BUCKET/PREFIX location")
    if endpoint is None:
        endpoint = load_section(StorageConfig).s3_endpoint
    return S3ObjectStore(endpoint_url=endpoint, bucket=parts.netloc, prefix=parts.path.strip("/"))


def _verify_fetching(
    path: Path, trusted: list[Ed25519PublicKey], witness: Any, options: _DirectoryOptions, manifest: Any
) -> Any:
    import asyncio

    from maif.security.audit_archive import verify_with_archive

    store = _s3_store(manifest.location, options.s3_endpoint or manifest.endpoint)
    with asyncio.Runner() as runner:
        try:
            return verify_with_archive(
                path,
                trusted,
                store,
                where=store.where,
                run=runner.run,
                witness=witness,
                allow_unsigned_tail=options.allow_unsigned_tail,
            )
        finally:
            runner.run(store.close())


def _proven(entries: int, last_signed: int, head: Any) -> str:
    """What a passing verify proved, in one line: which entries a verified signed head covers."""
    signer = "" if head is None else f" (time {_utc(head.timestamp)}, key id {head.key_id.hex()})"
    unsigned = entries - 1 - last_signed if head is None else entries - head.tree_size
    tail = "every entry signed" if unsigned == 0 else f"entries after {last_signed} unsigned ({unsigned})"
    return f"{entries} entries, signed head at entry {last_signed}{signer}; {tail}"


class _Freshness:
    """What makes a passing verify fresh: the --witness head, and the head this machine remembered the
    last time it verified the log (maif.cli.audit_heads, ADR 0088), which is checked, then advanced."""

    def __init__(self, trusted: list[Ed25519PublicKey], witness: Any, *, remember: bool) -> None:
        self.trusted, self.witness, self.remember = trusted, witness, remember
        self.remembered: Any = None
        self.remembered_file: Path | None = None

    def check(self, path: Path, identity: bytes, segment: int | None, first_segment: int, head: Any) -> str:
        """Refuse a log older than the remembered head (IntegrityError); remember ``head``; the line
        that says what freshness was established."""
        if not self.remember:
            return self._line()
        from maif.cli import audit_heads

        directory = audit_heads.heads_directory()
        self.remembered = audit_heads.recall(directory, identity)
        if self.remembered is not None:
            audit_heads.check_still_held(path, self.remembered, self.trusted, first_segment=first_segment)
        if head is not None and (self.remembered is None or self.remembered.checkpoint != head):
            self.remembered_file = audit_heads.remember(directory, identity, segment, head)
        return self._line()

    def _line(self) -> str:
        witness, remembered = self.witness, self.remembered
        lines = []
        if witness is not None:
            lines.append(
                f"fresh: at least as new as the witness signed head over {witness.tree_size} entries "
                f"(time {_utc(witness.timestamp)}), which it still holds unchanged"
            )
        if remembered is not None:
            head = remembered.checkpoint
            lines.append(
                f"fresh: at least as new as the signed head over {head.tree_size} entries (time "
                f"{_utc(head.timestamp)}) verified on this machine before, which it still holds unchanged "
                f"(remembered in {remembered.file})"
            )
        elif self.remembered_file is not None and witness is None:
            lines.append(
                "first verification of this log on this machine: freshness not checked (a log cut back "
                "or an older copy passes once); its signed head is now remembered in "
                f"{self.remembered_file}, so every later verify refuses an older copy. Pass --witness "
                "<exported signed head> (`maif audit checkpoint`) to check freshness the first time too"
            )
        if not lines:
            lines.append(
                "freshness not checked: pass --witness <exported signed head> to detect a truncated or "
                "older copy (export one with `maif audit checkpoint`)"
            )
        return "\n".join(lines)

    def fields(self, head: Any) -> dict[str, Any]:
        witness, remembered = self.witness, self.remembered
        return {
            "signed_head": None if head is None else _checkpoint_row(head),
            "freshness_checked": witness is not None or remembered is not None,
            "witness": None if witness is None else _checkpoint_row(witness),
            "remembered_head": None
            if remembered is None
            else {**_checkpoint_row(remembered.checkpoint), "file": str(remembered.file)},
            "remembered_in": None if self.remembered_file is None else str(self.remembered_file),
        }


@audit_app.command("show")
def show_command(
    path: Annotated[Path, typer.Argument(help="The audit log directory, or one audit log file.")],
    start: Annotated[int, typer.Option("--start", min=0, help="First entry index to list.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most entries to list.")] = 1000,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """List the entries and checkpoints of an audit log (structure checked, signatures not)."""
    from maif.security.audit import AuditEntry, read_audit_log
    from maif.security.audit_chain import read_audit_chain

    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        rows: list[dict[str, Any]] = []
        records = read_audit_chain(path) if path.is_dir() else ((None, r) for r in read_audit_log(path))
        try:
            for segment, record in records:
                if isinstance(record, AuditEntry):
                    if start <= record.index < start + limit:
                        rows.append({**_entry_row(record), "segment": segment})
                elif start < record.tree_size <= start + limit:
                    rows.append({**_checkpoint_row(record), "segment": segment})
        except StorageError as error:
            raise _unreadable_as_malformed(output, error) from None
        output.result({"ok": True, "path": str(path), "records": rows})
        if not json_output:
            _render_rows(output, rows)


@audit_app.command("archive")
def archive_command(
    path: Annotated[Path, typer.Argument(help="The audit log directory (segment files).")],
    before_segment: Annotated[
        int, typer.Option("--before-segment", min=1, help="Move every segment numbered below this one.")
    ],
    to: Annotated[
        str | None,
        typer.Option(
            "--to", help="Archive directory (default: DIR-archive beside DIR), or s3://BUCKET/PREFIX."
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option("--s3-endpoint", help="S3 endpoint URL (default: s3_endpoint of the storage config)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Move old segments out of an audit log directory, oldest first; the newest never moves."""
    from maif.security.audit_chain import archive_segments

    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        if not path.is_dir():
            raise ConfigError(f"{path} is not an audit log directory")
        if to is not None and to.startswith("s3://"):
            _archive_to_s3(output, path, before_segment, to, s3_endpoint)
            return
        if s3_endpoint is not None:
            raise ConfigError("--s3-endpoint goes with --to s3://BUCKET/PREFIX")
        destination = Path(to) if to is not None else path.with_name(path.name + "-archive")
        moved = archive_segments(path, destination, before_segment=before_segment)
        output.result(
            {"ok": True, "path": str(path), "archive": str(destination), "moved": [str(p) for p in moved]}
        )
        if not moved:
            output.human(f"nothing below segment {before_segment} in {path}: nothing moved")
            return
        output.human(
            f"moved {len(moved)} segment(s) ({moved[0].name} .. {moved[-1].name}) to {destination}; verify "
            f"what remains with `maif audit verify {path} --from-segment {before_segment} --trust KEY`, the "
            f"archive with `maif audit verify {destination} --trust KEY --no-remember` (older than the head "
            "remembered for the log)"
        )


def _archive_to_s3(
    output: CommandOutput, path: Path, before_segment: int, url: str, s3_endpoint: str | None
) -> None:
    import asyncio

    from maif.security.audit_archive import archive_segments_to_store

    store = _s3_store(url, s3_endpoint)

    async def archive() -> list[Any]:
        try:
            return await archive_segments_to_store(
                path, store, before_segment=before_segment, location=url, endpoint=store.endpoint_url
            )
        finally:
            await store.close()

    done = asyncio.run(archive())
    output.result(
        {
            "ok": True,
            "path": str(path),
            "archive": url,
            "archived": [
                {"segment": e.segment, "key": e.key, "size": e.size, "digest": e.digest} for e in done
            ],
        }
    )
    if not done:
        output.human(f"nothing below segment {before_segment} in {path}: nothing archived")
        return
    output.human(
        f"archived {len(done)} segment(s) ({done[0].segment}..{done[-1].segment}) to {url} in {store.where}, "
        f"each read back and checked (BLAKE3) before removal; verify what remains with `maif audit verify "
        f"{path} --trust KEY`, the whole chain with `maif audit verify {path} --fetch-archived --trust KEY`"
    )


@audit_app.command("checkpoint")
def checkpoint_command(
    path: Annotated[Path, typer.Argument(help="The audit log directory, or one audit log file.")],
    output_path: Annotated[Path, typer.Option("--output", "-o", help="Where to write the checkpoint.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Save the log's latest signed checkpoint, to pass to `verify --witness` later."""
    from maif.security.audit import SignedCheckpoint, encode_checkpoint, read_audit_log
    from maif.security.audit_chain import latest_chain_checkpoint

    output = CommandOutput(json_output=json_output)
    with reporting_errors(output):
        latest: SignedCheckpoint | None = None
        try:
            if path.is_dir():
                latest = latest_chain_checkpoint(path)
            for record in [] if path.is_dir() else read_audit_log(path):
                if isinstance(record, SignedCheckpoint):
                    latest = record
        except StorageError as error:
            raise _unreadable_as_malformed(output, error) from None
        if latest is None:
            raise SignatureError(f"audit log {path} holds no signed checkpoint yet")
        output_path.write_bytes(encode_checkpoint(latest))
        output.result({"ok": True, "path": str(path), "output": str(output_path), **_checkpoint_row(latest)})
        output.human(f"saved the checkpoint over {latest.tree_size} entries of {path} to {output_path}")


def _read_checkpoint_file(path: Path) -> Any:
    """A --witness file: what `maif audit checkpoint` writes (MessagePack), or a signed head as JSON as
    the service serves it: the ``checkpoint`` object of a GET /v1/audit page, or the whole page."""
    from maif import limits
    from maif.errors import LimitExceededError
    from maif.security.audit import decode_checkpoint

    bound = limits.service_audit_page_entries_max * limits.audit_record_bytes_max * 2  # a page, as JSON
    with path.open("rb") as handle:
        data = handle.read(bound + 1)
    if data.lstrip()[:1] == b"{":
        if len(data) > bound:
            raise LimitExceededError("witness checkpoint JSON file", len(data), bound)
        return _checkpoint_from_json(path, data)
    if len(data) > limits.audit_record_bytes_max:
        raise LimitExceededError("witness checkpoint file", len(data), limits.audit_record_bytes_max)
    return decode_checkpoint(data)


def _checkpoint_from_json(path: Path, data: bytes) -> Any:
    import json

    import msgspec

    from maif.errors import FormatError
    from maif.security.audit import SignedCheckpoint

    try:
        document = json.loads(data)
        head = document.get("checkpoint", document) if isinstance(document, dict) else None
        if not isinstance(head, dict):
            raise ValueError("no signed checkpoint in it (an audit page of a segment without one?)")
        fields = {name: head[name] for name in ("log_id", "root", "key_id", "signature")}
        if type(head["tree_size"]) is not int or not isinstance(head["timestamp"], int | float):
            raise ValueError("tree_size and timestamp must be numbers")
        return msgspec.convert(
            {
                **{name: bytes.fromhex(value) for name, value in fields.items()},
                "tree_size": head["tree_size"],
                "timestamp": float(head["timestamp"]),
            },
            SignedCheckpoint,
        )
    except (ValueError, KeyError, TypeError, AttributeError, msgspec.ValidationError) as error:
        raise FormatError(f"witness {path} is not a signed audit checkpoint: {error}") from None


def _entry_row(entry: Any) -> dict[str, Any]:
    return {
        "type": "entry",
        "index": entry.index,
        "time": entry.time,
        "actor": entry.actor,
        "action": entry.action,
        "resource": entry.resource,
        "decision": entry.decision,
        "reason": entry.reason,
        "details": entry.details,
        "hash": entry.hash,
    }


def _checkpoint_row(checkpoint: Any) -> dict[str, Any]:
    return {
        "type": "checkpoint",
        "tree_size": checkpoint.tree_size,
        "root": checkpoint.root,
        "time": checkpoint.timestamp,
        "key_id": checkpoint.key_id,
    }


def _render_rows(output: CommandOutput, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("#", "time (UTC)", "actor", "action", "resource", "decision", "reason")
    for row in rows:
        if row["type"] == "entry":
            colour = "green" if row["decision"] == "allow" else "red"
            table.add_row(
                str(row["index"]),
                _utc(row["time"]),
                row["actor"],
                row["action"],
                row["resource"],
                f"[{colour}]{row['decision']}[/{colour}]",
                row["reason"],
            )
        else:
            table.add_row(
                "",
                _utc(row["time"]),
                "",
                "[bold]checkpoint[/bold]",
                f"{row['tree_size']} entries, root {row['root'].hex()[:16]}...",
                "",
                f"key {row['key_id'].hex()}",
            )
    output.human(table)


def _register_public_key_command() -> None:
    from maif.cli.audit_key import audit_public_key_command

    audit_app.command("public-key")(audit_public_key_command)


_register_public_key_command()

__all__ = ["audit_app", "load_trust_argument"]
