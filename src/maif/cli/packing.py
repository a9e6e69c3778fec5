"""`maif pack` (files into a new signed container) and `maif append` (files as a new signed version).

Files are read one at a time and handed to the container writer as they are walked (maif.cli.inputs), so
memory does not grow with the number of files, except for the per-file rows of the ``--json`` result. Each
file becomes one block whose type comes from its content (maif.cli.detect) and whose metadata records where
it came from::

    {"path": "corpus/ozymandias.txt", "size_bytes": 666, "mtime_ns": 1732470000000000000,
     "media_type": "text/plain; charset=utf-8"}

A file larger than the part size (``--part-size``, 16 MiB by default, at most one block's payload limit)
becomes a part set (docs/format/SPEC.md section 15): consecutive blocks of one part each, every one with
the metadata above (``size_bytes`` is the whole file's) plus a ``part`` map tying it to its set, the last
carrying the whole file's BLAKE3. Files are read in pieces of at most the part size, so memory holds one
part (and its compressed form) whatever the file's size. A large file's type is detected from its
first part.

`pack` writes a temporary file beside the output and renames it into place only after the signed commit,
so an interrupted pack never leaves a half-written container under the requested name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from maif import limits
from maif.cli.detect import detect
from maif.cli.inputs import InputFile, SkippedPath, iter_input_files, open_input_file, read_pieces
from maif.cli.keyfiles import (
    load_signing_key,
    load_trusted_keys,
    load_x25519_private_key,
    load_x25519_public_key,
)
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.progress import TransferProgress
from maif.cli.verification import raise_for_report
from maif.cli.views import require_readable_container, version_row
from maif.errors import ConfigError
from maif.format import signing
from maif.format.block import MAIFBlock, fourcc_of
from maif.format.container import ContainerWriter, VersionInfo
from maif.format.parts import add_parts, check_part_bytes, part_count
from maif.format.verify import verify_container

DEFAULT_AGENT_ID = "maif-cli"
DEFAULT_PART_BYTES = 16 << 20
PATH_KEY, SIZE_KEY, MTIME_KEY, MEDIA_TYPE_KEY = "path", "size_bytes", "mtime_ns", "media_type"


@dataclass
class PackTally:
    """What one pack or append added: counts always, per-file rows only when asked for (``--json``)."""

    keep_rows: bool
    file_count: int = 0
    block_count: int = 0
    payload_bytes: int = 0
    blocks_by_type: dict[str, int] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_count: int = 0

    def skip(self, item: SkippedPath) -> None:
        self.skipped_count += 1
        if len(self.skipped) < limits.cli_skipped_rows_max:
            self.skipped.append({"path": str(item.path), "reason": item.reason})

    def count(self, row: dict[str, Any]) -> None:
        blocks = row.get("parts", 1)
        self.file_count += 1
        self.block_count += blocks
        self.payload_bytes += row["size_bytes"]
        self.blocks_by_type[row["type"]] = self.blocks_by_type.get(row["type"], 0) + blocks
        if self.keep_rows:
            self.rows.append(row)


def add_files(
    writer: ContainerWriter,
    arguments: Sequence[Path],
    *,
    agent_id: str,
    encrypt: bool,
    tally: PackTally,
    part_bytes: int = DEFAULT_PART_BYTES,
    on_added: Callable[[dict[str, Any]], None] = lambda row: None,
    on_skipped: Callable[[SkippedPath], None] = lambda skipped: None,
    on_bytes: Callable[[int], None] = lambda size: None,
) -> None:
    """Add every file under ``arguments`` to ``writer`` in walk order: one block each, or one part set
    for a file larger than ``part_bytes``. ``on_bytes`` is told each piece's size as it is written."""
    part_bytes = min(part_bytes, limits.block_payload_bytes_max)
    check_part_bytes(part_bytes)
    for item in iter_input_files(arguments):
        if isinstance(item, SkippedPath):
            tally.skip(item)
            on_skipped(item)
            continue
        row = _add_file(
            writer, item, agent_id=agent_id, encrypt=encrypt, part_bytes=part_bytes, on_bytes=on_bytes
        )
        tally.count(row)
        on_added(row)


def _add_file(
    writer: ContainerWriter,
    item: InputFile,
    *,
    agent_id: str,
    encrypt: bool,
    part_bytes: int,
    on_bytes: Callable[[int], None],
) -> dict[str, Any]:
    with open_input_file(item.path) as source:
        pieces = read_pieces(source, part_bytes, item.path)
        first = [next(pieces)]
        detection = detect(first[0], item.path.name)
        metadata = {
            PATH_KEY: item.recorded_path,
            SIZE_KEY: source.size_bytes,
            MTIME_KEY: source.mtime_ns,
            MEDIA_TYPE_KEY: detection.media_type,
        }
        count = part_count(source.size_bytes, part_bytes)
        if count == 1:
            block = MAIFBlock(
                block_type=detection.block_type, data=first.pop(), metadata=metadata, agent_id=agent_id
            )
            index, block_id = writer.add(block, encrypt=encrypt), block.id
            del block
            _require_no_more(pieces)
            on_bytes(source.size_bytes)
        else:
            written = add_parts(
                writer,
                _first_then(first, pieces),
                source.size_bytes,
                part_bytes=part_bytes,
                block_type=detection.block_type,
                metadata=metadata,
                agent_id=agent_id,
                encrypt=encrypt,
                on_part=lambda index, size: on_bytes(size),
            )
            index, block_id = written.indexes[0], written.first_block_id
    row = {
        "index": index,
        "id": block_id,
        "type": fourcc_of(detection.block_type).decode("ascii"),
        "path": item.recorded_path,
        "size_bytes": source.size_bytes,
        "media_type": detection.media_type,
    }
    if count > 1:
        row["parts"] = count
    return row


def _require_no_more(pieces: Iterator[bytes]) -> None:
    """Run the pieces' end check (FormatError if the file grew) after the only piece was used."""
    if next(pieces, None) is not None:
        raise AssertionError("a one-piece file yielded a second piece")


def _first_then(first: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first``'s one piece (taken out of the list, so nothing else holds it), then ``rest``."""
    yield first.pop()
    yield from rest


def input_bytes(arguments: Sequence[Path]) -> int:
    """Total size of the regular files ``arguments`` would pack (one walk with lstat: for a progress bar)."""
    items = iter_input_files(arguments)
    return sum(os.lstat(item.path).st_size for item in items if isinstance(item, InputFile))


def pack_paths(
    arguments: Sequence[Path],
    output_path: Path,
    *,
    signing_keys: Sequence[Ed25519PrivateKey],
    recipients: Sequence[X25519PublicKey] = (),
    agent_id: str = DEFAULT_AGENT_ID,
    compression_threshold: int = 4096,
    force: bool = False,
    part_bytes: int = DEFAULT_PART_BYTES,
    tally: PackTally | None = None,
    on_added: Callable[[dict[str, Any]], None] = lambda row: None,
    on_skipped: Callable[[SkippedPath], None] = lambda skipped: None,
    on_bytes: Callable[[int], None] = lambda size: None,
) -> tuple[VersionInfo, PackTally]:
    """Pack ``arguments`` into a new signed container at ``output_path``; returns (VersionInfo, tally)."""
    if os.path.lexists(output_path) and not force:
        raise ConfigError(f"refusing to overwrite {output_path}", hint="pass --force to replace it")
    if output_path.is_dir():
        raise ConfigError(f"{output_path} is a directory")
    tally = tally if tally is not None else PackTally(keep_rows=False)
    directory = output_path.parent if str(output_path.parent) else Path(".")
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{output_path.name}.", suffix=".partial", dir=directory
    )
    os.close(descriptor)
    temporary = Path(temporary_name)
    try:
        temporary.unlink()  # the writer creates its file itself; mkstemp only reserved a unique name
        with ContainerWriter.create(
            temporary, compression_threshold=compression_threshold, recipients=list(recipients)
        ) as writer:
            add_files(
                writer,
                arguments,
                agent_id=agent_id,
                encrypt=bool(recipients),
                tally=tally,
                part_bytes=part_bytes,
                on_added=on_added,
                on_skipped=on_skipped,
                on_bytes=on_bytes,
            )
            if tally.block_count == 0:
                raise ConfigError("no files to pack", hint="name at least one regular file or directory")
            version = writer.commit(list(signing_keys))
        os.replace(temporary, output_path)
    finally:
        if os.path.lexists(temporary):
            temporary.unlink()
    return version, tally


def append_paths(
    container_path: Path,
    arguments: Sequence[Path],
    *,
    signing_keys: Sequence[Ed25519PrivateKey],
    trusted_keys: Sequence[Ed25519PublicKey],
    decryption_key: X25519PrivateKey | None = None,
    agent_id: str = DEFAULT_AGENT_ID,
    part_bytes: int = DEFAULT_PART_BYTES,
    tally: PackTally | None = None,
    on_added: Callable[[dict[str, Any]], None] = lambda row: None,
    on_skipped: Callable[[SkippedPath], None] = lambda skipped: None,
    on_bytes: Callable[[int], None] = lambda size: None,
) -> tuple[VersionInfo, PackTally]:
    """Add ``arguments`` to an existing container as a new signed version; returns (VersionInfo, tally).

    The writer verifies the existing versions under ``trusted_keys`` before it appends anything. New
    blocks are encrypted when a decryption key is given (the container is encrypted: its data key is needed).
    """
    tally = tally if tally is not None else PackTally(keep_rows=False)
    require_readable_container(container_path)
    # The writer refuses an unverified container too, but as a bare IntegrityError; checking here first
    # gives the caller the precise verdict (untrusted signature vs damaged bytes) and its exit code.
    raise_for_report(verify_container(container_path, trusted_keys, full=False))
    with ContainerWriter.append(
        container_path, trusted_keys=list(trusted_keys), decryption_key=decryption_key
    ) as writer:
        add_files(
            writer,
            arguments,
            agent_id=agent_id,
            encrypt=decryption_key is not None,
            tally=tally,
            part_bytes=part_bytes,
            on_added=on_added,
            on_skipped=on_skipped,
            on_bytes=on_bytes,
        )
        if tally.block_count == 0:
            raise ConfigError("no files to append", hint="name at least one regular file or directory")
        version = writer.commit(list(signing_keys))
    return version, tally


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="List every file as it is added.")]
AgentOption = Annotated[str, typer.Option("--agent", help="Agent id recorded as each block's producer.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar (it is only drawn when stderr is a terminal).")
]
PartSizeOption = Annotated[
    str,
    typer.Option(
        "--part-size",
        help="Files larger than this are stored as several blocks (parts) of this size: bytes, or with "
        "a K, M or G suffix (powers of 1024); capped at one block's payload limit (1G).",
    ),
]


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864: a byte count with an optional K, M or G (binary) suffix."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    stripped = text.strip().upper().removesuffix("B").removesuffix("I")
    multiplier = units.get(stripped[-1:], 1)
    digits = stripped[:-1] if stripped[-1:] in units else stripped
    if not digits.isdigit() or int(digits) == 0:
        raise ConfigError(
            f"part size {text!r} is not a positive byte count", hint="for example 64M or 1048576"
        )
    return int(digits) * multiplier


def pack_command(
    paths: Annotated[list[Path], typer.Argument(help="Files and directories to pack (recursively).")],
    output_path: Annotated[Path, typer.Option("--output", "-o", help="The container to create.")],
    key: Annotated[
        list[Path],
        typer.Option("--key", help="Ed25519 private key (PEM) that signs the container; repeat to co-sign."),
    ],
    encrypt_for: Annotated[
        list[Path] | None,
        typer.Option("--encrypt-for", help="X25519 public key of a recipient; repeat for several."),
    ] = None,
    agent: AgentOption = DEFAULT_AGENT_ID,
    compression_threshold: Annotated[
        int, typer.Option("--compression-threshold", min=0, help="Compress payloads above this many bytes.")
    ] = 4096,
    force: Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")] = False,
    part_size: PartSizeOption = "16M",
    verbose: VerboseOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
) -> None:
    """Pack files and directories into a new signed .maif container (symlinks are never followed)."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output), TransferProgress.for_terminal(quiet=quiet) as progress:
        signing_keys = load_signing_keys(key)
        recipients = [load_x25519_public_key(path) for path in encrypt_for or []]
        part_bytes = parse_size(part_size)
        tally = PackTally(keep_rows=json_output)
        on_bytes = progress.task("pack", input_bytes(paths) if progress.enabled else None)
        version, tally = pack_paths(
            paths,
            output_path,
            signing_keys=signing_keys,
            recipients=recipients,
            agent_id=agent,
            compression_threshold=compression_threshold,
            force=force,
            part_bytes=part_bytes,
            tally=tally,
            on_added=lambda row: output.human(_added_line(row)) if verbose else None,
            on_skipped=lambda skipped: output.warn(f"skipped {skipped.path}: {skipped.reason}"),
            on_bytes=on_bytes,
        )
        _report(output, "packed", output_path, version, tally, encrypted=bool(recipients))


def append_command(
    container: Annotated[Path, typer.Argument(help="The container to extend.")],
    paths: Annotated[list[Path], typer.Argument(help="Files and directories to add (recursively).")],
    key: Annotated[
        list[Path],
        typer.Option(
            "--key", help="Ed25519 private key (PEM) that signs the new version; repeat to co-sign."
        ),
    ],
    trust: Annotated[
        list[Path],
        typer.Option(
            "--trust", help="Ed25519 public key trusted to have signed the existing versions; repeat."
        ),
    ],
    decrypt_key: Annotated[
        Path | None,
        typer.Option(
            "--decrypt-key",
            help="X25519 private key of an encrypted container; new blocks are encrypted too.",
        ),
    ] = None,
    agent: AgentOption = DEFAULT_AGENT_ID,
    part_size: PartSizeOption = "16M",
    verbose: VerboseOption = False,
    quiet: QuietOption = False,
    json_output: JsonOption = False,
) -> None:
    """Add files to a container as a new signed version; earlier versions stay intact and verifiable."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output), TransferProgress.for_terminal(quiet=quiet) as progress:
        signing_keys = load_signing_keys(key)
        trusted_keys = load_trusted_keys(trust)
        decryption_key = load_x25519_private_key(decrypt_key) if decrypt_key is not None else None
        part_bytes = parse_size(part_size)
        tally = PackTally(keep_rows=json_output)
        on_bytes = progress.task("append", input_bytes(paths) if progress.enabled else None)
        version, tally = append_paths(
            container,
            paths,
            signing_keys=signing_keys,
            trusted_keys=trusted_keys,
            decryption_key=decryption_key,
            agent_id=agent,
            part_bytes=part_bytes,
            tally=tally,
            on_added=lambda row: output.human(_added_line(row)) if verbose else None,
            on_skipped=lambda skipped: output.warn(f"skipped {skipped.path}: {skipped.reason}"),
            on_bytes=on_bytes,
        )
        _report(output, "appended to", container, version, tally, encrypted=decryption_key is not None)


def load_signing_keys(paths: Sequence[Path]) -> list[Ed25519PrivateKey]:
    """The co-signing keys in ``paths``; the same key twice is a usage error, not a second signature."""
    keys = [load_signing_key(path) for path in paths]
    key_ids = [signing.key_id(key.public_key()) for key in keys]
    if len(set(key_ids)) != len(key_ids):
        raise ConfigError("the same signing key was given twice", hint="each --key must be a different key")
    return keys


def _added_line(row: dict[str, Any]) -> str:
    size = f"{row['size_bytes']:>10,}"
    parts = f"  ({row['parts']} parts)" if "parts" in row else ""
    return f"  [cyan]{row['index']:>6}[/cyan]  {row['type']}  {size} B  {plain(row['path'])}{parts}"


def _report(
    output: CommandOutput, verb: str, path: Path, version: VersionInfo, tally: PackTally, *, encrypted: bool
) -> None:
    summary = version_row(version)
    output.result(
        {
            "ok": True,
            "container": str(path),
            "version": summary,
            "files_added": tally.file_count,
            "blocks_added": tally.block_count,
            "payload_bytes_added": tally.payload_bytes,
            "blocks_by_type": tally.blocks_by_type,
            "encrypted": encrypted,
            "blocks": tally.rows,
            "skipped": tally.skipped,
            "skipped_count": tally.skipped_count,
        }
    )
    types = ", ".join(f"{count} {name}" for name, count in sorted(tally.blocks_by_type.items()))
    output.human(
        f"[green]{verb}[/green] {plain(path)}: {tally.file_count} files in {tally.block_count} blocks "
        f"({types}), "
        f"{tally.payload_bytes:,} payload bytes{', encrypted' if encrypted else ''}; "
        f"signed version {summary['number']}"
    )
