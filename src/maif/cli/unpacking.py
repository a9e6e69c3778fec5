"""`maif unpack`: write a container's payloads back to disk under the paths `maif pack` recorded.

Every recorded path is checked before anything is written (:func:`maif.cli.extract.checked_parts`): one
unsafe path (absolute, ``..``, NUL, too long) refuses the whole container with
:class:`~maif.errors.UnsafePathError` and writes nothing. While writing, the extractor refuses symlinks in
the destination, so a planted link cannot redirect a file outside it either.

Blocks without a recorded path (written by the library rather than `maif pack`) are listed as skipped.
With ``--trust`` the container is verified first and nothing is written unless it verifies.

Payloads stream from the container to disk in bounded pieces (:meth:`ContainerReader.stream_block`), so
a 33 KB file declaring a 1 GiB compressed payload unpacks in bounded memory; every block, with or without
a path, is read to its end and so checked under every format rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif.cli.extract import Extractor, PendingFile, checked_parts
from maif.cli.keyfiles import load_trusted_keys, load_x25519_private_key
from maif.cli.output import CommandOutput, plain, reporting_errors
from maif.cli.packing import MTIME_KEY, PATH_KEY, QuietOption
from maif.cli.progress import TransferProgress
from maif.cli.verification import raise_for_report
from maif.cli.views import reading, recorded_metadata
from maif.errors import IntegrityError
from maif.format import merkle
from maif.format.container import BlockStream, ContainerReader
from maif.format.parts import PartSequence, parse_part
from maif.format.verify import VerificationReport, verify_container


@dataclass
class UnpackTally:
    files_written: int = 0
    bytes_written: int = 0
    written: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


def unpack_container(
    container_path: Path,
    destination: Path,
    *,
    decryption_key: X25519PrivateKey | None = None,
    trusted_keys: list[Ed25519PublicKey] | None = None,
    force: bool = False,
    keep_rows: bool = False,
    on_written: Callable[[int, str, int], None] = lambda index, path, size: None,
    on_progress: Callable[[str, int | None, int], None] = lambda phase, total, size: None,
) -> UnpackTally:
    """Write every block that has a recorded path into ``destination``; the later block wins a path.

    ``on_progress(phase, total_bytes, done_bytes)``: the phase starts with ``total_bytes`` and ``done_bytes``
    0, then reports record bytes as they are covered ("verify" with ``trusted_keys``: hash then decode;
    "unpack": each block's stored bytes once it is written)."""
    tally = UnpackTally()
    with reading(container_path, decryption_key=decryption_key) as reader:
        record_bytes = sum(reader.entry(index).length for index in range(len(reader)))
        if trusted_keys is not None:
            on_progress("hash", record_bytes, 0)
            on_progress("decode", record_bytes, 0)
            report = verify_container(
                container_path,
                trusted_keys,
                full=True,
                decryption_key=decryption_key,
                on_progress=lambda phase, size: on_progress(phase, None, size),
            )
            raise_for_report(report, reader)
            _require_what_was_verified(reader, report)
        block_count = len(reader)
        for index in range(block_count):  # first pass: refuse before writing anything
            recorded = recorded_metadata(reader, index).get(PATH_KEY)
            if recorded is not None:
                checked_parts(recorded)
        on_progress("unpack", record_bytes, 0)
        with Extractor(destination, overwrite=force) as extractor:
            unpacker = _Unpacker(reader, extractor, tally, keep_rows=keep_rows, on_written=on_written)
            try:
                for index in range(block_count):
                    unpacker.block(index)
                    on_progress("unpack", None, reader.entry(index).length)
                    reader.release(index)
                unpacker.finish()
            finally:
                unpacker.abandon()
    return tally


class _Unpacker:
    """Writes blocks in index order: a lone block to its own file, a part set's blocks one after the other
    into one temporary file that is fsynced and renamed into place only once the set is whole and its
    reassembled bytes match its BLAKE3 (maif.format.parts.PartSequence checks each part as it streams)."""

    def __init__(
        self,
        reader: ContainerReader,
        extractor: Extractor,
        tally: UnpackTally,
        *,
        keep_rows: bool,
        on_written: Callable[[int, str, int], None],
    ) -> None:
        self._reader, self._extractor, self._tally = reader, extractor, tally
        self._keep_rows, self._on_written = keep_rows, on_written
        self._sequence = PartSequence()
        self._pending: PendingFile | None = None
        self._first_index = 0

    def block(self, index: int) -> None:
        """Stream block ``index``'s payload into its recorded path (bounded memory whatever its size); a
        block without one is still read to the end, so every block is checked as `maif unpack` reads it."""
        block = self._reader.stream_block(index)
        part = parse_part(block.metadata)
        recorded = block.metadata.get(PATH_KEY)
        length = block.header.payload_length
        self._sequence.begin(index, part, length, recorded)
        if part is None:
            self._lone_block(index, block, recorded)
            return
        if part.index == 0 and recorded is not None:
            self._pending = self._extractor.open_file(recorded)
            self._first_index = index
        for piece in block.chunks:
            self._sequence.feed(piece)
            if self._pending is not None:
                self._pending.write(piece)
        if not self._sequence.end(index, part, length):
            return
        pending, self._pending = self._pending, None
        if pending is None:
            self._skip(index, block.header.block_id, "no recorded path")
            return
        with pending:
            mtime_ns = block.metadata.get(MTIME_KEY)
            written = pending.commit(mtime_ns=mtime_ns if _is_plain_int(mtime_ns) else None, sync=True)
        self._count(self._first_index, written, part.total)

    def _lone_block(self, index: int, block: BlockStream, recorded: object) -> None:
        if recorded is None:
            for _ in block.chunks:
                pass
            self._skip(index, block.header.block_id, "no recorded path")
            return
        mtime_ns = block.metadata.get(MTIME_KEY)
        written = self._extractor.write(
            recorded, block.chunks, mtime_ns=mtime_ns if _is_plain_int(mtime_ns) else None
        )
        self._count(index, written, block.header.payload_length)  # the stream ended with exactly this

    def _count(self, index: int, written: str, size: int) -> None:
        self._tally.files_written += 1
        self._tally.bytes_written += size
        if self._keep_rows:
            self._tally.written.append({"index": index, "path": written, "size_bytes": size})
        self._on_written(index, written, size)

    def _skip(self, index: int, block_id: str, reason: str) -> None:
        self._tally.skipped.append({"index": index, "id": block_id, "reason": reason})

    def finish(self) -> None:
        self._sequence.finish(len(self._reader))

    def abandon(self) -> None:
        """Remove the temporary file of a set left incomplete (an error, or the container's end)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with pending:
                pass


def _require_what_was_verified(reader: ContainerReader, report: VerificationReport) -> None:
    """The verifier opened the path again: make sure the open reader holds the file it verified.

    Same last manifest, and the reader's own index digests hash to that manifest's Merkle root; every
    block read afterwards is checked against those digests, so a file swapped in between is refused.
    """
    latest = reader.versions[-1] if reader.versions else None
    verified = report.versions[-1] if report.versions else None
    if (
        latest is None
        or verified is None
        or latest.manifest_digest != verified.manifest_digest
        or merkle.root(reader.leaf_hashes()[: latest.block_count]) != latest.merkle_root
    ):
        raise IntegrityError("the container changed while it was being verified")


def _progress_phases(progress: TransferProgress) -> Callable[[str, int | None, int], None]:
    """One bar per phase of :func:`unpack_container`, created when the phase announces its total."""
    bars: dict[str, Callable[[int], None]] = {}

    def on_progress(phase: str, total: int | None, size: int) -> None:
        if total is not None:
            bars[phase] = progress.task(phase, total)
        elif size:
            bars[phase](size)

    return on_progress


def _is_plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 63)


def unpack_command(
    container: Annotated[Path, typer.Argument(help="The container to unpack.")],
    output_dir: Annotated[Path, typer.Option("--output", "-o", help="Destination directory.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", "--decrypt-key", help="X25519 private key (PEM) of an encrypted container."),
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            help="Verify under these Ed25519 public keys first; write nothing unless "
            "everything verifies. Repeat for several.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace files that exist in the destination.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="List every file as it is written.")
    ] = False,
    quiet: QuietOption = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Write a container's files back under their recorded relative paths, refusing path traversal."""
    output = CommandOutput(json_output=json_output)
    with reporting_errors(output), TransferProgress.for_terminal(quiet=quiet) as progress:
        decryption_key = load_x25519_private_key(key) if key is not None else None
        trusted_keys = load_trusted_keys(trust) if trust else None
        if trusted_keys is None:
            output.warn("not verified: pass --trust PUBKEY to refuse a container that does not verify")
        tally = unpack_container(
            container,
            output_dir,
            decryption_key=decryption_key,
            trusted_keys=trusted_keys,
            force=force,
            keep_rows=json_output,
            on_written=lambda index, path, size: (
                output.human(f"  [cyan]{index:>6}[/cyan]  {size:>10,} B  {plain(path)}") if verbose else None
            ),
            on_progress=_progress_phases(progress),
        )
        output.result(
            {
                "ok": True,
                "container": str(container),
                "destination": str(output_dir),
                "verified": trusted_keys is not None,
                "files_written": tally.files_written,
                "bytes_written": tally.bytes_written,
                "files": tally.written,
                "skipped": tally.skipped,
            }
        )
        for skipped in tally.skipped:
            output.human(
                f"  [yellow]skipped[/yellow] block {skipped['index']} ({plain(skipped['id'])}): "
                f"{skipped['reason']}"
            )
        output.human(
            f"[green]unpacked[/green] {tally.files_written} files ({tally.bytes_written:,} bytes) "
            f"into {plain(output_dir)}"
        )


__all__ = ["UnpackTally", "unpack_command", "unpack_container"]
