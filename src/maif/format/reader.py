"""The .maif container reader: memory-mapped, O(1) random access, zero-copy raw payloads.

The reader maps the file, finds the last valid trailer (a torn tail leaves the file readable up to its
last complete version, docs/format/SPEC.md section 10), walks the versions back to the first with every
link checked, and loads each version's index into flat arrays so any block is reached in O(1). It checks
structure, and each block's chained digest against the index when it reads that block; whether the index
itself is authentic is the job of :func:`maif.format.verify.verify_container`, which checks signatures
against keys the caller trusts.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import operator
import os
import sys
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import blake3

from maif import limits
from maif.errors import (
    BackendError,
    BlockNotFoundError,
    CryptoError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
)
from maif.format import aead, codec, layout, merkle, native
from maif.format.block import MAIFBlock
from maif.format.compression import decompress_exact, iter_decompressed

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

PARALLEL_HASH_BYTES_MIN: Final = 1 << 20
"""Blocks at least this large are hashed with all cores (blake3 max_threads=AUTO)."""
_MADV_DONTNEED: Final = getattr(mmap, "MADV_DONTNEED", None)
_PROGRESS_BATCH_BYTES: Final = 8 << 20


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One committed version: its Merkle root over the first ``block_count`` block digests."""

    number: int
    block_count: int
    merkle_root: bytes
    committed_at_ns: int
    signer_key_ids: tuple[bytes, ...]
    """Key ids the manifest *claims* signed it; only verify_container says which signatures hold."""
    end_offset: int
    manifest_digest: bytes


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """Where block ``index`` lives: its record's byte range, chained digest and version."""

    index: int
    offset: int
    length: int
    digest: bytes
    version: int


def chained_digest(previous: bytes, parts: Sequence[bytes | memoryview]) -> bytes:
    """BLAKE3(previous digest || record bytes): the digest each index entry holds."""
    size = sum(len(part) for part in parts)
    # Passing max_threads at all costs a lot per call, so small inputs take the plain constructor.
    hasher = (
        blake3.blake3(previous, max_threads=blake3.blake3.AUTO)
        if size >= PARALLEL_HASH_BYTES_MIN
        else blake3.blake3(previous)
    )
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def io_error(action: str, path: str | os.PathLike[str], error: OSError) -> BackendError:
    return BackendError(f"cannot {action} {os.fspath(path)!r}: {error.strerror or error}")


@dataclass(frozen=True, slots=True)
class BlockStream:
    """A block whose payload is read piece by piece (:meth:`ContainerReader.stream_block`).

    ``chunks`` can be consumed once; it raises a FormatError after the last piece if the payload breaks
    a rule that shows only at its end.
    """

    header: codec.BlockHeader
    metadata: dict[str, Any]
    chunks: Iterator[memoryview | bytes]


def _stream(header: codec.BlockHeader, metadata: bytes, stored: memoryview) -> BlockStream:
    decoded = codec.decode_metadata(metadata) if metadata else {}
    if header.storage_flags & codec.STORAGE_COMPRESSED:
        chunks: Iterator[memoryview | bytes] = iter_decompressed(stored, header.payload_length)
    else:
        chunks = _pieces(stored, limits.decompression_buffer_bytes_max)
    return BlockStream(header, decoded, chunks)


def _pieces(view: memoryview, size: int) -> Iterator[memoryview]:
    for start in range(0, len(view), size):
        yield view[start : start + size]


@dataclass(frozen=True, slots=True)
class _Version:
    trailer_offset: int
    trailer: layout.Trailer
    manifest: layout.Manifest
    info: VersionInfo


_ENTRY_BYTES: Final = layout.INDEX_ENTRY.size
_DIGEST_AT: Final = 8  # an index entry is the record's offset (u64), then its chained digest
_WORDS_PER_ENTRY: Final = _ENTRY_BYTES // 8
assert layout.INDEX_ENTRY.size == 8 * _WORDS_PER_ENTRY and array.array("Q").itemsize == 8


def _words(typecode: str, values: Iterable[int] = ()) -> array.array[int]:
    return array.array(typecode, values)


def _decode_index(region: memoryview, index_offset: int) -> tuple[array.array[int], array.array[int]]:
    """An index region's record offsets (each entry's first 8 bytes, u64 little-endian) and where each
    record ends (the next offset; the last ends where the index begins). One strided slice, in C."""
    words = _words("Q")
    words.frombytes(region)
    offsets = words[::_WORDS_PER_ENTRY]
    if sys.byteorder == "big":
        offsets.byteswap()
    ends = offsets[1:]
    if offsets:
        ends.append(index_offset)
    return offsets, ends


def _layout_breaks(starts: array.array[int], stops: array.array[int], trailer: layout.Trailer) -> list[int]:
    """Positions of the entries whose record does not lie, in order and without holes, in the segment.

    A valid index (the usual case) is one C-speed comparison of neighbours: it starts at the segment's
    start and its offsets strictly increase up to the index itself. Only a damaged one is walked.
    """
    if not starts or (starts[0] == trailer.segment_start and all(map(operator.lt, starts, stops))):
        return []
    broken = [
        position
        for position, (start, stop) in enumerate(zip(starts, stops, strict=True))
        if start < trailer.segment_start or stop > trailer.index_offset or stop <= start
    ]
    if starts[0] != trailer.segment_start and broken[:1] != [0]:
        broken.insert(0, 0)
    return broken


class ContainerReader:
    """Read-only, memory-mapped access to every block of the last complete version of a container."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        handle: Any,
        mapping: mmap.mmap | None,
        decryption_key: X25519PrivateKey | None,
    ) -> None:
        self._path = path
        self._handle = handle
        self._mapping = mapping
        self._view = memoryview(mapping) if mapping is not None else memoryview(b"")
        self.file_size = len(self._view)
        self.file_header = bytes(self._view[: layout.FILE_HEADER.size])
        self.file_id = layout.decode_file_header(self._view)
        last = _find_last_trailer(self._view)
        self._versions = _load_versions(self._view, last) if last is not None else []
        self.valid_end = self._versions[-1].info.end_offset if self._versions else layout.FILE_HEADER.size
        self.torn_tail_bytes = self.file_size - self.valid_end
        self._load_index()
        self._data_key: bytes | None = None
        self._key_error: CryptoError | None = None
        if decryption_key is not None and self._versions:
            try:
                self._data_key = aead.unwrap_data_key(
                    list(self._versions[-1].manifest.key_wraps), decryption_key, self.file_id
                )
            except CryptoError as error:  # reported when an encrypted block is read
                self._key_error = error
        self._ids: dict[str, int] | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        decryption_key: X25519PrivateKey | None = None,
    ) -> ContainerReader:
        try:
            handle = open(path, "rb")  # noqa: SIM115 (lives with the reader)
        except OSError as error:
            raise io_error("open", path, error) from error
        try:
            size = os.fstat(handle.fileno()).st_size
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError) as error:
            handle.close()
            raise BackendError(f"cannot map {os.fspath(path)!r}: {error}") from error
        try:
            return cls(path, handle, mapping, decryption_key)
        except BaseException:
            _close_mapping(mapping)
            handle.close()
            raise

    # ---- index -----------------------------------------------------------------------------------

    def _load_index(self) -> None:
        """Offsets, ends and digests of every block, plus the entries whose offsets break the layout.

        Built with the standard library's ``array`` (C loops over strided slices, no numpy): a command
        that reads a small container must not pay numpy's import, which costs more than decoding an
        index of a million entries this way (ADR 0082).
        """
        self._offsets, self._ends, self._version_of = _words("Q"), _words("Q"), _words("I")
        entries: list[memoryview] = []
        self.bad_entries: dict[int, str] = {}
        for number, version in enumerate(self._versions):
            trailer = version.trailer
            region = self._view[trailer.index_offset : trailer.manifest_offset]
            starts, stops = _decode_index(region, trailer.index_offset)
            first_index = trailer.block_count - len(starts)
            for position in _layout_breaks(starts, stops, trailer):
                self.bad_entries[first_index + position] = "index entry's offset breaks the no-holes layout"
            self._offsets.extend(starts)
            self._ends.extend(stops)
            entries.append(region)
            self._version_of.extend(_words("I", [number]) * len(starts))
        self._entries = b"".join(entries)  # every version's index entries as stored: offset, digest
        self._leaf_hashes: list[bytes] | None = None

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def can_decrypt(self) -> bool:
        """Whether encrypted blocks can be read: a decryption key was given and it unwrapped the data key."""
        return self._data_key is not None

    @property
    def versions(self) -> list[VersionInfo]:
        return [version.info for version in self._versions]

    @property
    def manifests(self) -> list[layout.Manifest]:
        return [version.manifest for version in self._versions]

    def index_region(self, version: int) -> memoryview:
        trailer = self._versions[version].trailer
        return self._view[trailer.index_offset : trailer.manifest_offset]

    def digest(self, index: int) -> bytes:
        at = index * _ENTRY_BYTES + _DIGEST_AT
        return self._entries[at : at + 32]

    def previous_digest(self, index: int) -> bytes:
        return self.digest(index - 1) if index else layout.chain_genesis(self.file_id)

    def digests(self) -> list[bytes]:
        entries = self._entries
        return [entries[at : at + 32] for at in range(_DIGEST_AT, len(entries), _ENTRY_BYTES)]

    def leaf_hashes(self) -> list[bytes]:
        if self._leaf_hashes is None:
            self._leaf_hashes = merkle.leaf_hashes_of_entries(self._entries, _ENTRY_BYTES, _DIGEST_AT)
        return self._leaf_hashes

    def entry(self, index: int) -> BlockEntry:
        self._check_index(index)
        offset, end = int(self._offsets[index]), int(self._ends[index])
        return BlockEntry(index, offset, end - offset, self.digest(index), int(self._version_of[index]))

    def _check_index(self, index: int) -> None:
        if not isinstance(index, int) or not 0 <= index < len(self._offsets):
            raise IndexError(f"block index {index!r} outside a container of {len(self._offsets)} blocks")

    def record(self, index: int) -> memoryview:
        """The stored bytes of block ``index`` (a view of the mapping), after the layout check."""
        self._check_index(index)
        problem = self.bad_entries.get(index)
        if problem is not None:
            raise FormatError(f"block {index}: {problem}")
        return self._view[int(self._offsets[index]) : int(self._ends[index])]

    def check_record(self, index: int, record: memoryview) -> None:
        if chained_digest(self.previous_digest(index), (record,)) != self.digest(index):
            raise IntegrityError("stored bytes do not match the indexed BLAKE3 digest", block_index=index)

    def digest_mismatches(self, on_bytes: Callable[[int], None] | None = None) -> list[int]:
        """Blocks whose stored bytes do not reproduce their indexed chained digest (full verification).

        One tight loop over the mapping: small records are hashed in one call each, large ones with all
        cores and then released from the mapping so the resident set stays flat. ``on_bytes`` is told the
        record bytes hashed, in batches of at least 8 MiB (for a progress bar).
        """
        if self._mapping is None or not len(self):
            return []
        if native.core() is not None:
            return self._digest_mismatches_native(on_bytes)
        offsets, ends, entries = self._offsets.tolist(), self._ends.tolist(), self._entries
        bad = self.bad_entries
        previous = layout.chain_genesis(self.file_id)
        mismatches = []
        pending = 0
        digest_ats = range(_DIGEST_AT, len(entries), _ENTRY_BYTES)
        for index, (start, end, at) in enumerate(zip(offsets, ends, digest_ats, strict=True)):
            expected = entries[at : at + 32]
            if index not in bad and self._digest_differs(index, start, end, previous, expected):
                mismatches.append(index)
            previous = expected
            if on_bytes is not None:
                pending += end - start
                if pending >= _PROGRESS_BATCH_BYTES:
                    on_bytes(pending)
                    pending = 0
        if on_bytes is not None and pending:
            on_bytes(pending)
        return mismatches

    def _digest_differs(self, index: int, start: int, end: int, previous: bytes, expected: bytes) -> bool:
        """Whether record ``index`` does not reproduce its indexed digest (a large one is then released)."""
        assert self._mapping is not None
        if end - start < PARALLEL_HASH_BYTES_MIN:
            return bool(blake3.blake3(previous + self._mapping[start:end]).digest() != expected)
        differs = chained_digest(previous, (self._view[start:end],)) != expected
        self.release(index)
        return differs

    def _digest_mismatches_native(self, on_bytes: Callable[[int], None] | None) -> list[int]:
        """:meth:`digest_mismatches` with the small records hashed by the compiled core, between the
        entries the layout check refused; large records (and any the core leaves) are hashed here."""
        core = native.core()
        assert core is not None and self._mapping is not None
        entries, genesis, count = self._entries, layout.chain_genesis(self.file_id), len(self)
        budget = _PROGRESS_BATCH_BYTES if on_bytes is not None else 1 << 62
        mismatches: list[int] = []
        bad = sorted(self.bad_entries)
        pending, index = 0, 0
        for stop in [*bad, count]:
            while index < stop:
                index, covered = core.chain_mismatches(
                    self._mapping, self._offsets, self._ends, entries, genesis, index, stop,
                    budget - pending, PARALLEL_HASH_BYTES_MIN, blake3.blake3, mismatches,
                )
                pending += covered
                if index < stop and pending < budget:  # the core stopped before a record it leaves
                    start, end = int(self._offsets[index]), int(self._ends[index])
                    expected = self.digest(index)
                    if self._digest_differs(index, start, end, self.previous_digest(index), expected):
                        mismatches.append(index)
                    pending += end - start
                    index += 1
                if on_bytes is not None and pending >= budget:
                    on_bytes(pending)
                    pending = 0
            if on_bytes is not None and index < count:  # a refused entry: its bytes count as covered
                pending += int(self._ends[index]) - int(self._offsets[index])
            index = stop + 1
        if on_bytes is not None and pending:
            on_bytes(pending)
        return mismatches

    def unproven_blocks(self, first: int, stop: int, skip: Container[int] = ()) -> Iterator[int]:
        """The blocks in ``range(first, stop)`` that :meth:`check_block` must look at: all of them on
        the pure-Python path. With the compiled core, only those it could not prove valid: it proves
        plain small records, but for their metadata, which is decoded here (a block whose metadata
        fails, or is in ``skip``, is left to check_block, which reports it exactly)."""
        core = native.core()
        if core is None or self._mapping is None:
            yield from range(first, stop)
            return
        mapping = self._mapping
        for item in core.unproven_records(
            mapping, self._offsets, self._ends, first, stop, PARALLEL_HASH_BYTES_MIN
        ):
            if isinstance(item, int):
                yield item
                continue
            index, start, end = item
            if index in skip:
                yield index
                continue
            try:
                codec.decode_metadata(mapping[start:end])
            except MAIFError:
                yield index

    # ---- blocks ----------------------------------------------------------------------------------

    def _open_body(self, index: int, *, verify: bool) -> tuple[codec.BlockHeader, bytes, memoryview]:
        """The header, the metadata bytes and the stored payload (a view of the mapping unless encrypted),
        after every check that needs no decompression."""
        record = self.record(index)
        if verify:
            self.check_record(index, record)
        return self._split_body(index, record, codec.decode_header(record, 0, len(record)))

    def _split_body(
        self, index: int, record: memoryview, header: codec.BlockHeader
    ) -> tuple[codec.BlockHeader, bytes, memoryview]:
        body = record[header.body_offset :]
        if header.storage_flags & codec.STORAGE_ENCRYPTED:
            body = memoryview(self._decrypt(index, record[: header.body_offset], body))
        if len(body) < header.metadata_length:
            raise FormatError(f"block {index}: body is shorter than its metadata")
        stored = body[header.metadata_length :]
        if not header.storage_flags & codec.STORAGE_COMPRESSED and len(stored) != header.payload_length:
            raise FormatError(
                f"block {index}: payload is {len(stored)} bytes, header says {header.payload_length}"
            )
        return header, bytes(body[: header.metadata_length]), stored

    def _decrypt(self, index: int, header_bytes: memoryview, body: memoryview) -> bytes:
        if self._data_key is None:
            raise self._key_error or CryptoError(
                f"block {index} is encrypted and no decryption key was given"
            )
        associated = aead.block_associated_data(self.file_id, index, header_bytes)
        return aead.decrypt_body(self._data_key, body, associated)

    def block(
        self,
        index: int,
        *,
        verify: bool = True,
        payload_bytes_max: int = limits.materialized_payload_bytes_max,
    ) -> MAIFBlock:
        """Block ``index``, its stored bytes checked against the indexed digest unless ``verify=False``.

        The payload is materialized, so its declared length is held to ``payload_bytes_max`` (the read's
        total-size budget) before a byte is decompressed or copied: a 33 KB frame that declares 1 GiB is
        refused with LimitExceededError, not allocated. :meth:`stream_block` reads any valid payload in
        bounded memory.
        """
        header, metadata, stored = self._open_body(index, verify=verify)
        _check_materialized(index, header.payload_length, payload_bytes_max)
        decoded = codec.decode_metadata(metadata) if metadata else {}
        if header.storage_flags & codec.STORAGE_COMPRESSED:
            payload = decompress_exact(stored, header.payload_length)
        else:
            payload = bytes(stored)
        return codec.block_from_parts(header, decoded, payload)

    def stream_block(self, index: int, *, verify: bool = True) -> BlockStream:
        """Block ``index`` without materializing its payload: header and metadata decoded, payload as an
        iterator of pieces of at most ``limits.decompression_buffer_bytes_max`` bytes.

        The stored bytes are checked against the indexed digest first (unless ``verify=False``); a payload
        that breaks a rule found only at its end (short, or bytes after its zstd frame) raises FormatError
        from the iterator after the last piece, so a consumer must discard what it wrote on error.
        """
        return _stream(*self._open_body(index, verify=verify))

    def check_block(self, index: int, *, decrypt: bool = True) -> None:
        """Apply every SPEC section 4 rule to block ``index`` in bounded memory (full verification).

        The header always; the metadata and the payload (decompressed as a stream and dropped) unless the
        block is encrypted and ``decrypt`` is False, when only the body's minimum length can be checked.
        Stored bytes are not hashed here (:meth:`digest_mismatches` does that for every block at once);
        a large record's pages are dropped from the mapping afterwards.
        """
        record = self.record(index)
        try:
            header = codec.decode_header(record, 0, len(record))
            if header.storage_flags & codec.STORAGE_ENCRYPTED and not decrypt:
                sealed_bytes_min = aead.NONCE_BYTES + aead.TAG_BYTES
                if len(record) - header.body_offset < sealed_bytes_min:
                    raise FormatError(
                        f"block {index}: encrypted body is shorter than its nonce and tag "
                        f"({sealed_bytes_min} bytes)"
                    )
                if not self._versions[-1].manifest.key_wraps:
                    raise FormatError(f"block {index} is encrypted but the container has no recipients: "
                                      "no key can ever read it (SPEC section 8)")
                return
            header, metadata, stored = self._split_body(index, record, header)
            if metadata:
                codec.decode_metadata(metadata)
            if header.storage_flags & codec.STORAGE_COMPRESSED:  # a raw payload's length is checked above
                for _ in iter_decompressed(stored, header.payload_length):
                    pass
        finally:
            if len(record) >= PARALLEL_HASH_BYTES_MIN:
                self.release(index)

    def payload_view(self, index: int, *, verify: bool = True) -> memoryview:
        """Block ``index``'s payload; zero-copy (a view of the mapping) when stored raw and unencrypted.
        A compressed payload is materialized within ``limits.materialized_payload_bytes_max``."""
        header, _, stored = self._open_body(index, verify=verify)
        if header.storage_flags & codec.STORAGE_COMPRESSED:
            _check_materialized(index, header.payload_length, limits.materialized_payload_bytes_max)
            return memoryview(decompress_exact(stored, header.payload_length))
        return stored

    def iter_payloads(self, *, verify: bool = True) -> Iterator[tuple[int, memoryview]]:
        """Every payload in order; pages of large blocks already yielded are dropped from the mapping
        so that streaming a file larger than memory keeps the resident set flat."""
        for index in range(len(self)):
            yield index, self.payload_view(index, verify=verify)
            self.release(index)

    def release(self, index: int) -> None:
        """Hint that block ``index`` will not be read soon: drop its pages from this process's mapping.

        Nothing to drop for an entry the layout check refused (its offsets may point anywhere)."""
        self._check_index(index)
        if index in self.bad_entries:
            return
        offset, end = int(self._offsets[index]), int(self._ends[index])
        page = mmap.PAGESIZE
        start, stop = -(-offset // page) * page, (end // page) * page
        if (
            self._mapping is not None
            and stop - start >= PARALLEL_HASH_BYTES_MIN
            and _MADV_DONTNEED is not None
        ):
            self._mapping.madvise(_MADV_DONTNEED, start, stop - start)

    def find(self, block_id: str) -> int:
        """Index of the block with ``block_id`` (the latest one if an id was written more than once)."""
        if self._ids is None:
            ids: dict[str, int] = {}
            for index in range(len(self)):
                try:
                    record = self.record(index)
                    ids[codec.decode_header(record, 0, len(record)).block_id] = index
                except MAIFError:
                    continue  # a damaged record cannot be found by id; verify_container reports it
            self._ids = ids
        found = self._ids.get(block_id)
        if found is None:
            raise BlockNotFoundError(f"no block with id {block_id!r} in {os.fspath(self._path)!r}")
        return found

    # ---- proofs ----------------------------------------------------------------------------------

    def _version(self, version: int) -> _Version:
        if not self._versions:
            raise FormatError("the container has no committed version")
        try:
            return self._versions[version]
        except IndexError as error:
            raise IndexError(f"version {version} outside {len(self._versions)} versions") from error

    def inclusion_proof(self, index: int, version: int = -1) -> list[bytes]:
        """RFC 9162 audit path of block ``index`` in ``version``'s Merkle tree."""
        count = self._version(version).info.block_count
        if not 0 <= index < count:
            raise IndexError(f"block {index} is not in a version of {count} blocks")
        return merkle.inclusion_proof(self.leaf_hashes()[:count], index)

    def consistency_proof(self, old_version: int, new_version: int = -1) -> list[bytes]:
        """RFC 9162 proof that ``old_version``'s tree is a prefix of ``new_version``'s."""
        old_count = self._version(old_version).info.block_count
        new_count = self._version(new_version).info.block_count
        if old_count > new_count:
            raise IndexError("the old version must not be newer than the new version")
        return merkle.consistency_proof(self.leaf_hashes()[:new_count], old_count)

    # ---- lifetime --------------------------------------------------------------------------------

    def _append_state(self) -> dict[str, Any]:
        """What a writer needs to continue this file after its last version."""
        if self.torn_tail_bytes:
            raise FormatError(
                f"{self.torn_tail_bytes} bytes follow the last complete version",
                hint="run `maif repair` (repair_container) first",
            )
        if not self._versions:
            raise FormatError("the container has no committed version to append to")
        frontier = merkle.Frontier()
        frontier.extend(self.leaf_hashes())
        wraps = self._versions[-1].manifest.key_wraps
        if wraps and self._key_error is not None:
            raise self._key_error
        return {
            "file_header": self.file_header,
            "end_offset": self.valid_end,
            "data_key": self._data_key,
            "key_wraps": wraps,
            "last": self._versions[-1].info,
            "frontier": frontier,
            "previous_digest": self.previous_digest(len(self)),
        }

    def close(self) -> None:
        """Close the file; payload views a caller still holds keep the mapping alive until dropped."""
        self._view.release()
        _close_mapping(self._mapping)
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _check_materialized(index: int, payload_length: int, budget: int) -> None:
    """Refuse to build a payload in memory past ``budget`` bytes; decompression never outgrows the
    declared length (compression.py), so checking the declared length bounds the allocation."""
    if payload_length > budget:
        raise LimitExceededError(
            f"payload length of block {index}, to hold in memory",
            payload_length,
            budget,
            hint="read it in pieces with stream_block (as `maif unpack` does)",
        )


def _close_mapping(mapping: mmap.mmap | None) -> None:
    if mapping is None:
        return
    # Views may still be exported (a caller's payload view): then it is unmapped when the last one goes.
    with contextlib.suppress(BufferError):
        mapping.close()


def _find_last_trailer(view: memoryview) -> int | None:
    """Offset of the last trailer that validates: the file's end, or the end of its last complete version.

    A torn tail is searched backwards for the trailer magic; both the candidates examined and the manifest
    bytes hashed to check them are bounded (``limits.trailer_candidates_max``,
    ``limits.trailer_search_hash_bytes_max``), so a crafted tail cannot make opening slow.
    """
    size = len(view)
    budget = layout.HashBudget(
        "manifest bytes hashed while searching a torn tail for a trailer",
        limits.trailer_search_hash_bytes_max,
    )
    try:
        layout.decode_trailer(view, size - layout.TRAILER.size, budget)
        return size - layout.TRAILER.size
    except MAIFError:
        pass  # no valid version ends at the end of the file: its tail is torn
    data = view.obj if isinstance(view.obj, mmap.mmap) else bytes(view)
    magic, magic_at = layout.TRAILER_MAGIC, layout.TRAILER.size - len(layout.TRAILER_MAGIC)
    search_end = size - 1  # the candidate ending at the file's end was just tried (and charged)
    for _ in range(limits.trailer_candidates_max):
        found = data.rfind(magic, layout.FILE_HEADER.size, search_end)
        if found < 0:
            return None
        try:
            layout.decode_trailer(view, found - magic_at, budget)
            return found - magic_at
        except MAIFError:
            if budget.exhausted:
                raise
            search_end = found + len(magic) - 1
    raise LimitExceededError(
        "trailer candidates scanned in a torn tail",
        limits.trailer_candidates_max + 1,
        limits.trailer_candidates_max,
    )


def _load_versions(view: memoryview, last_offset: int) -> list[_Version]:
    """Every version from the first to the one whose trailer is at ``last_offset``, all links checked."""
    versions: list[_Version] = []
    offset = last_offset
    while True:
        trailer = layout.decode_trailer(view, offset)
        manifest = layout.decode_manifest(
            bytes(view[trailer.manifest_offset : offset]), trailer.manifest_offset
        )
        if (manifest.version_number, manifest.block_count, manifest.segment_start) != (
            trailer.version_number,
            trailer.block_count,
            trailer.segment_start,
        ):
            raise FormatError(
                f"version {trailer.version_number}'s manifest disagrees with its trailer",
                offset=trailer.manifest_offset,
            )
        info = VersionInfo(
            trailer.version_number,
            trailer.block_count,
            manifest.merkle_root,
            manifest.committed_at_ns,
            tuple(s.key_id for s in manifest.signatures),
            offset + layout.TRAILER.size,
            manifest.digest,
        )
        versions.append(_Version(offset, trailer, manifest, info))
        if trailer.version_number == 0:
            break
        if len(versions) > limits.container_versions_max:
            raise LimitExceededError("version count", len(versions), limits.container_versions_max)
        offset = trailer.segment_start - layout.TRAILER.size
        try:
            previous = layout.decode_trailer(view, offset)
        except MAIFError as error:
            raise FormatError(
                f"the trailer of version {trailer.version_number - 1} is damaged: {error}", offset=offset
            ) from error
        if previous.version_number != trailer.version_number - 1:
            raise FormatError(
                f"version {trailer.version_number} does not follow version {previous.version_number}",
                offset=offset,
            )
    versions.reverse()
    _check_version_sequence(versions)
    return versions


def _check_version_sequence(versions: list[_Version]) -> None:
    if versions[0].trailer.segment_start != layout.FILE_HEADER.size:
        raise FormatError(
            "the first version does not start right after the file header", offset=versions[0].trailer_offset
        )
    previous_count = 0
    for version in versions:
        expected = previous_count + version.trailer.new_block_count
        if version.trailer.block_count != expected:
            raise FormatError(
                f"version {version.info.number} claims {version.trailer.block_count} blocks, "
                f"its index implies {expected}",
                offset=version.trailer_offset,
            )
        previous_count = expected


__all__ = [
    "PARALLEL_HASH_BYTES_MIN",
    "BlockEntry",
    "BlockStream",
    "ContainerReader",
    "VersionInfo",
    "chained_digest",
    "io_error",
]
