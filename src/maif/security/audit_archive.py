"""Archiving sealed audit segments to an object store (S3, or any :class:`ObjectStore`), verifiably.

Design: docs/adr/0022-audit-segment-chain.md (addendum "archiving to an object store"). For each sealed
segment below ``before_segment``, oldest first, :func:`archive_segments_to_store`:

1. reads the segment and checks it is sealed (ends with a checkpoint over all its entries), notes its
   size, BLAKE3 digest and that signed head;
2. uploads it to ``<chain id hex>/segment-NNNNNNNNNNNN.audit`` unless an object there already has that
   digest (a re-run after a crash does not upload twice);
3. reads the object back, streamed in :data:`READ_CHUNK_BYTES` ranges, and compares size and digest;
4. records (segment -> key, size, digest, head) in the local manifest ``archive-manifest.json`` beside
   the segments (written to a temporary file, synced, renamed, directory synced);
5. only then removes the local file (and syncs the directory).

A crash at any point leaves every segment either local, or in the manifest with a verified copy, or
both (between 4 and 5); a re-run finishes the job. The manifest is what lets the remaining directory
verify and link on its own (:func:`check_manifest_anchor`), and what :func:`verify_with_archive` checks
the fetched copies against: a flipped byte, a deleted object or a segment swapped for another is
reported with the segment number and the object key before the segment is even parsed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import msgspec

from maif import limits
from maif.durable import fsync_directory
from maif.errors import (
    BlockNotFoundError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
    StorageError,
)
from maif.security.audit import SignedCheckpoint, TrustedKey, read_audit_log
from maif.security.audit_chain import (
    AuditChainReport,
    _link_error,
    list_segments,
    numbered_link,
    segment_name,
    verify_segment_sequence,
)

if TYPE_CHECKING:  # the interface only: maif.security never imports storage at run time (DESIGN.md)
    from maif.storage.backends.base import ObjectStore

MANIFEST_NAME = "archive-manifest.json"
MANIFEST_VERSION = 1
READ_CHUNK_BYTES = 1 << 20
"""Archived segments are read back and fetched in ranges of this size: memory stays bounded."""
_MANIFEST_BYTES_MAX = 64 << 20


class ArchivedSegment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One segment's copy in the archive: where, how big, its BLAKE3 digest and its sealed signed head."""

    segment: int
    key: str
    size: int
    digest: str
    head: SignedCheckpoint


class ArchiveManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What was archived where, oldest first (segments 0..n-1, contiguous)."""

    version: int
    chain_id: bytes
    location: str
    """Where the store is, as `maif audit archive --to` takes it (``s3://bucket/prefix``)."""
    endpoint: str | None
    segments: list[ArchivedSegment]


# ---- the manifest ---------------------------------------------------------------------------------


def read_manifest(directory: str | os.PathLike[str]) -> ArchiveManifest | None:
    """The directory's archive manifest, or None when nothing was archived to an object store."""
    path = Path(directory) / MANIFEST_NAME
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MANIFEST_BYTES_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError(f"cannot read audit archive manifest {path}: {error.strerror}") from error
    if len(data) > _MANIFEST_BYTES_MAX:
        raise LimitExceededError(f"audit archive manifest {path}", len(data), _MANIFEST_BYTES_MAX)
    try:
        manifest = msgspec.json.decode(data, type=ArchiveManifest)
    except msgspec.DecodeError as error:
        raise FormatError(f"audit archive manifest {path} is malformed: {error}") from error
    if manifest.version != MANIFEST_VERSION:
        raise FormatError(
            f"audit archive manifest {path} has version {manifest.version}, not {MANIFEST_VERSION}"
        )
    for position, entry in enumerate(manifest.segments):
        if entry.segment != position:
            raise FormatError(
                f"audit archive manifest {path} lists segment {entry.segment} at position {position}"
            )
    return manifest


def _write_manifest(directory: Path, manifest: ArchiveManifest) -> None:
    path = directory / MANIFEST_NAME
    temporary = directory / f".{MANIFEST_NAME}.tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(msgspec.json.encode(manifest))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_directory(directory)
    except OSError as error:
        raise StorageError(f"cannot write audit archive manifest {path}: {error.strerror}") from error


# ---- archiving -----------------------------------------------------------------------------------


def _sealed_head(number: int, path: Path) -> tuple[bytes, SignedCheckpoint]:
    """(chain id, sealed head) of a segment; IntegrityError unless a checkpoint covers all of it."""
    entries, head, chain_id = 0, None, b""
    for record in read_audit_log(path):
        if isinstance(record, SignedCheckpoint):
            head = record
            continue
        if entries == 0 and number > 0:
            chain_id = numbered_link(path, number, record).chain_id
        entries += 1
    if head is None or head.tree_size != entries:
        signed = 0 if head is None else head.tree_size
        raise IntegrityError(
            f"audit segment {path}: entry {signed}: not sealed (no checkpoint over all its {entries} "
            "entries); only sealed segments are archived",
            block_index=signed,
        )
    return (head.log_id if number == 0 else chain_id), head


async def stored_digest(store: ObjectStore, key: str, size: int) -> str | None:
    """BLAKE3 (hex) of the object ``key`` if it holds exactly ``size`` bytes, read in bounded ranges;
    None when it is absent or of another size."""
    hasher = blake3.blake3()
    offset = 0
    try:
        while offset < size:
            chunk = await store.get_range(key, offset, min(READ_CHUNK_BYTES, size - offset))
            if not chunk:
                return None
            hasher.update(chunk)
            offset += len(chunk)
        if await store.get_range(key, size, 1):
            return None  # longer than recorded
        if size == 0 and not await store.exists(key):
            return None
    except BlockNotFoundError:
        return None
    return hasher.hexdigest()


def _remove_durably(path: Path) -> None:
    try:
        path.unlink()
        fsync_directory(path.parent)
    except OSError as error:
        raise StorageError(f"cannot remove archived audit segment {path}: {error.strerror}") from error


async def archive_segments_to_store(
    directory: str | os.PathLike[str],
    store: ObjectStore,
    *,
    before_segment: int,
    location: str,
    endpoint: str | None = None,
) -> list[ArchivedSegment]:
    """Archive every segment numbered below ``before_segment`` to ``store``, oldest first (see the module
    docstring for the steps). Idempotent: re-running after a crash finishes the job. A segment is removed
    locally only once its copy was read back with the same size and digest. Returns what this call
    archived (or finished archiving). ``location`` and ``endpoint`` are recorded in the manifest so that
    `maif audit verify --fetch-archived` finds the store again."""
    folder = Path(directory)
    segments = list_segments(folder)
    if not segments:
        return []
    if before_segment > segments[-1][0]:
        raise FormatError(f"cannot archive the newest segment ({segments[-1][1].name}) of {folder}")
    manifest = read_manifest(folder)
    listed = [] if manifest is None else list(manifest.segments)
    if manifest is not None and manifest.location != location:
        raise FormatError(
            f"{folder} was archived to {manifest.location}, not {location}: one archive per audit directory",
            hint=f"archive to {manifest.location} again",
        )
    done: list[ArchivedSegment] = []
    for number, path in segments:
        if number >= before_segment:
            break
        if number < len(listed):  # recorded before a crash: its copy verified; the removal did not happen
            entry = listed[number]
            local = blake3.blake3(path.read_bytes()).hexdigest()
            if local != entry.digest:
                raise IntegrityError(
                    f"audit segment {path} differs from the copy the archive manifest records "
                    f"(digest {local[:16]}..., recorded {entry.digest[:16]}...): not removed",
                    block_index=0,
                )
        else:
            if number != len(listed):
                raise IntegrityError(
                    f"audit log {folder}: segments {len(listed)}..{number - 1} are neither here nor in the "
                    "archive manifest (dropped)",
                    block_index=0,
                )
            chain_id, entry = await _upload_verified(store, number, path, manifest)
            listed.append(entry)
            manifest = ArchiveManifest(
                version=MANIFEST_VERSION,
                chain_id=chain_id,
                location=location,
                endpoint=endpoint,
                segments=listed,
            )
            _write_manifest(folder, manifest)
        _remove_durably(path)
        done.append(entry)
    return done


async def _upload_verified(
    store: ObjectStore, number: int, path: Path, manifest: ArchiveManifest | None
) -> tuple[bytes, ArchivedSegment]:
    chain_id, head = _sealed_head(number, path)
    if manifest is not None and chain_id != manifest.chain_id:
        raise _link_error(path, "the segment belongs to another chain than the archived ones")
    try:
        data = path.read_bytes()  # at most limits.audit_segment_bytes_max (a sealed segment)
    except OSError as error:
        raise StorageError(f"cannot read audit segment {path}: {error.strerror}") from error
    if len(data) > limits.audit_segment_bytes_max + limits.audit_record_bytes_max:
        raise LimitExceededError(f"audit segment {path}", len(data), limits.audit_segment_bytes_max)
    digest = blake3.blake3(data).hexdigest()
    key = f"{chain_id.hex()}/{path.name}"
    if await stored_digest(store, key, len(data)) != digest:
        await store.put(key, data)
        stored = await stored_digest(store, key, len(data))
        if stored != digest:
            raise IntegrityError(
                f"audit segment {path}: the copy uploaded to {key!r} reads back "
                + ("absent or of another size" if stored is None else f"with digest {stored[:16]}...")
                + f", not {digest[:16]}...: the local segment is kept",
                block_index=0,
            )
    return chain_id, ArchivedSegment(segment=number, key=key, size=len(data), digest=digest, head=head)


# ---- verifying -----------------------------------------------------------------------------------


def split_archived(
    directory: str | os.PathLike[str], manifest: ArchiveManifest | None
) -> tuple[list[ArchivedSegment], list[tuple[int, Path]]]:
    """(archived segments not present locally, local segments): what the whole chain is made of."""
    local = list_segments(directory)
    first_local = local[0][0] if local else 0
    listed = [] if manifest is None else manifest.segments
    archived = [entry for entry in listed if entry.segment < first_local]
    return archived, local


def check_manifest_anchor(
    directory: str | os.PathLike[str], manifest: ArchiveManifest, report: AuditChainReport
) -> None:
    """The remaining segments (verified with ``from_segment``) continue the head the manifest recorded for
    the last archived segment: the two halves link."""
    if report.first_segment == 0:
        return
    previous = report.first_segment - 1
    if previous >= len(manifest.segments):
        if (Path(directory) / segment_name(previous)).exists():
            return  # verified from a later segment on purpose (--from-segment): it links to a local one
        raise IntegrityError(
            f"audit log {directory}: segments {len(manifest.segments)}..{previous} are neither here nor "
            "in the archive manifest (dropped)",
            block_index=0,
        )
    if report.anchor != manifest.segments[previous].head:
        raise IntegrityError(
            f"audit log {directory}: segment {report.first_segment} continues a head of segment {previous} "
            f"other than the one the archive manifest records for {manifest.segments[previous].key!r}",
            block_index=0,
        )


async def _fetch(store: ObjectStore, entry: ArchivedSegment, target: Path, where: str) -> None:
    """Download ``entry`` to ``target`` in bounded ranges, checking size and digest as it comes."""
    hasher = blake3.blake3()
    offset = 0
    problem = ""
    try:
        with open(target, "wb") as handle:
            while offset < entry.size:
                chunk = await store.get_range(entry.key, offset, min(READ_CHUNK_BYTES, entry.size - offset))
                if not chunk:
                    problem = f"is {offset} bytes long, not {entry.size}"
                    break
                hasher.update(chunk)
                handle.write(chunk)
                offset += len(chunk)
            if not problem and await store.get_range(entry.key, entry.size, 1):
                problem = f"is longer than the {entry.size} bytes recorded"
    except BlockNotFoundError:
        problem = "is missing (deleted)"
    except OSError as error:
        raise StorageError(f"cannot write fetched audit segment {target}: {error.strerror}") from error
    if not problem and hasher.hexdigest() != entry.digest:
        problem = (
            f"has digest {hasher.hexdigest()[:16]}..., not the recorded {entry.digest[:16]}... "
            "(altered or swapped)"
        )
    if problem:
        raise IntegrityError(
            f"archived audit segment {entry.segment}: object {entry.key!r} in {where} {problem}",
            block_index=0,
        )


def verify_with_archive(
    directory: str | os.PathLike[str],
    trusted_keys: Sequence[TrustedKey],
    store: ObjectStore,
    *,
    where: str,
    run: Callable[[Coroutine[Any, Any, None]], None],
    witness: SignedCheckpoint | None = None,
    allow_unsigned_tail: bool = False,
) -> AuditChainReport:
    """Verify the whole chain from segment 0: the archived segments are fetched one at a time (bounded
    ranges, checked against the manifest's size and digest, then verified as part of the chain and
    deleted) and the local ones read in place. ``run`` runs a coroutine to completion on the loop the
    store belongs to (e.g. ``asyncio.Runner().run``)."""
    folder = Path(directory)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FormatError(
            f"{folder} has no archive manifest ({MANIFEST_NAME}): nothing was archived to a store"
        )
    archived, local = split_archived(folder, manifest)
    by_number = {entry.segment: entry for entry in archived}

    with tempfile.TemporaryDirectory(prefix="maif-audit-fetch-") as scratch:

        @contextlib.contextmanager
        def open_segment(number: int, path: Path) -> Iterator[Path]:
            entry = by_number.get(number)
            if entry is None:
                yield path
                return
            run(_fetch(store, entry, path, where))
            try:
                yield path
            except MAIFError as error:
                note = f"archived audit segment {number} (object {entry.key!r} in {where}): "
                error.message = note + error.message
                error.args = (note + str(error),)
                raise
            finally:
                path.unlink(missing_ok=True)

        segments = [(entry.segment, Path(scratch) / Path(entry.key).name) for entry in archived] + local
        report = verify_segment_sequence(
            folder,
            segments,
            trusted_keys,
            expected_first=0,
            witness=witness,
            allow_unsigned_tail=allow_unsigned_tail,
            open_segment=open_segment,
        )
    return report


__all__ = [
    "MANIFEST_NAME",
    "READ_CHUNK_BYTES",
    "ArchiveManifest",
    "ArchivedSegment",
    "archive_segments_to_store",
    "check_manifest_anchor",
    "read_manifest",
    "split_archived",
    "stored_digest",
    "verify_with_archive",
]
