"""Append-only pack files of content-addressed chunks, and the durable pack index that locates them.

This is the synchronous core of :class:`maif.storage.backends.local.LocalChunkStore` (which runs it in
a worker thread). The byte layout is specified in docs/format/PACKS.md; in short:

    packs/pack-00000001.pack   header | frame | frame | ... [| seal trailer]
    packs/index.log            header | entry | entry | ...      (digest -> pack, offset, lengths)
    packs/remote.list          (id, size) of sealed packs moved to the cold tier (tiers.py)

Write order is the restic rule: chunk frames are appended to the active pack and synced, and only then
are their index entries appended to the index and synced (``flush``). A pack reaching
``limits.pack_bytes_max`` is flushed, then sealed with a trailer holding the BLAKE3 digest of its body,
so a sealed pack is always fully indexed and never changes again.

Recovery on open: a torn index tail (a partial or failed-checksum last entry) is truncated; damage in
the middle of the index makes the store rebuild the whole index from the self-describing packs. Each
unsealed pack is scanned: frames whose header checksum and BLAKE3 data digest verify are (re)indexed,
and the first frame that does not is where the torn tail starts and the file is truncated, unless the
index holds synced frames beyond it: then it is damage, the pack is kept whole and no longer written to,
and the damaged chunk is refused on read and reported by scrub. Entries that
point past the end of a pack (external damage) are reported by :meth:`PackStore.scrub`.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import blake3
import msgspec
import zstandard

from maif import limits
from maif.durable import fsync_directory, write_atomically
from maif.errors import (
    BackendError,
    BlockNotFoundError,
    DurabilityError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    UnsupportedVersionError,
)
from maif.format import native

PACK_MAGIC: Final = b"MAIFPACK"
SEAL_MAGIC: Final = b"MAIFSEAL"
INDEX_MAGIC: Final = b"MAIFPIDX"
FORMAT_VERSION: Final = 2  # version 2 added block-record frames (FLAG_RECORD); version 1 is read
READABLE_VERSIONS: Final = frozenset({1, FORMAT_VERSION})
DIGEST_BYTES: Final = 32
FLAG_ZSTD: Final = 0x01
FLAG_RECORD: Final = 0x02
KNOWN_FLAGS: Final = FLAG_ZSTD | FLAG_RECORD
RECORD_DIGEST_CONTEXT: Final = "MAIF 2026-12 pack block record v1"
_FILE_MODE: Final = 0o666  # the index files are created like the packs (open(): 0o666 less the umask)

_PACK_HEADER = struct.Struct("<8sHHI")  # magic, version, reserved, pack id
_FRAME_HEADER = struct.Struct("<32sB3sII4s")  # digest, flags, reserved, raw len, stored len, check
_SEAL_TRAILER = struct.Struct("<8sQ32s")  # magic, body length, BLAKE3(body)
_INDEX_HEADER = struct.Struct("<8sH6s")  # magic, version, reserved
_INDEX_ENTRY = struct.Struct("<32sIB3sQII8s")  # digest, pack, flags, reserved, offset, raw, stored, check
_PACK_NAME = re.compile(r"^pack-([0-9a-f]{8})\.pack$")
_ZSTD_LEVEL: Final = 3
_COMPRESSION_MIN_SAVING: Final = 0.9  # store compressed only when it is at most 90 % of the raw size

_FRAME_HEADER_BODY = struct.Struct("<32sB3sII")  # the frame header without its 4-byte check
assert _FRAME_HEADER.size == 48 and _INDEX_ENTRY.size == 64 and _SEAL_TRAILER.size == 48
_INDEX_ENTRY_BODY = struct.Struct("<32sIB3sQII")  # an index entry without its 8-byte check
assert _FRAME_HEADER_BODY.size == _FRAME_HEADER.size - 4 and _INDEX_ENTRY_BODY.size == _INDEX_ENTRY.size - 8
FRAME_HEADER_BYTES: Final = _FRAME_HEADER.size


def pack_header(pack_id: int) -> bytes:
    """The 16-byte header of a pack (id 0 for a pack object of the shared store, named by its key)."""
    return _PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, 0, pack_id)


def seal_trailer(body_length: int, body_digest: bytes) -> bytes:
    """The 48-byte seal trailer of a pack whose first ``body_length`` bytes hash to ``body_digest``."""
    return _SEAL_TRAILER.pack(SEAL_MAGIC, body_length, body_digest)


class ChunkLocation(msgspec.Struct, frozen=True):
    """Where one chunk's frame lives: pack id, frame offset, and the lengths from its header.
    (A msgspec struct rather than a frozen dataclass: built once per stored frame, its constructor runs
    in C, several times cheaper on the applier's path.)"""

    pack_id: int
    offset: int
    flags: int
    raw_length: int
    stored_length: int

    @property
    def end(self) -> int:
        return self.offset + _FRAME_HEADER.size + self.stored_length


_STAGED_BYTES_MAX: Final = 1 << 16  # one write per 64 KiB of frames (put_chunks, put_records); see ADR 0044


class _StagedFrames:
    """Frames encoded but not yet written: appended to the active pack with one write."""

    __slots__ = ("digests", "entries", "frames")

    def __init__(self) -> None:
        # One buffer rather than a bytes object per frame: short-lived small objects interleaved with
        # the pack index's long-lived ones fragment CPython's allocator (test_memory_stays_bounded...).
        self.frames = bytearray()
        self.entries: list[tuple[bytes, int, int, int]] = []  # digest, flags, raw length, stored length
        self.digests: set[bytes] = set()

    def add(self, digest: bytes, frame: bytes, flags: int, raw_length: int, stored_length: int) -> None:
        self.frames += frame
        self.entries.append((digest, flags, raw_length, stored_length))
        self.digests.add(digest)

    def clear(self) -> None:
        del self.frames[:]
        self.entries.clear()
        # digests stay: a digest staged earlier in the same call is deduplicated


def encode_chunk(data: bytes | memoryview, compression_threshold: int) -> tuple[int, bytes]:
    """``(flags, stored bytes)``: zstd only above the threshold and only when it saves at least 10 %."""
    raw = bytes(data)
    if len(raw) >= compression_threshold and len(raw) > 0:
        compressed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)
        if len(compressed) <= len(raw) * _COMPRESSION_MIN_SAVING:
            return FLAG_ZSTD, compressed
    return 0, raw


_RECORD_HASHER: Final = blake3.blake3(derive_key_context=RECORD_DIGEST_CONTEXT)  # never updated: copied
_CHUNK_HASHER: Final = blake3.blake3()  # never updated: the compiled core hashes chunks with a copy


def record_digest(raw: bytes | memoryview) -> bytes:
    """The address of a block-record frame: BLAKE3 in derive-key mode with :data:`RECORD_DIGEST_CONTEXT`.

    Domain-separated from payload chunks (plain BLAKE3), so no payload a caller stores can ever share
    an address with a block record: a record frame can neither be forged by writing its bytes as a
    payload nor be deduplicated away by an earlier payload with the same bytes."""
    hasher = _RECORD_HASHER.copy()  # the key derived once (copy: 0.45 us against 0.61 us per record)
    hasher.update(raw)
    return hasher.digest()


def content_digest(flags: int, raw: bytes | memoryview) -> bytes:
    """The digest a frame with ``flags`` must carry for ``raw``: a record address or plain BLAKE3."""
    return record_digest(raw) if flags & FLAG_RECORD else blake3.blake3(raw).digest()


def decode_chunk(digest: bytes, flags: int, stored: bytes, raw_length: int, where: str) -> bytes:
    """The raw chunk from its stored form, verified: exact length, then its digest (plain BLAKE3, or the
    record address for a block-record frame)."""
    if flags & ~KNOWN_FLAGS:
        raise IntegrityError(f"chunk {digest.hex()[:16]} at {where} has unknown flags {flags:#x}")
    if flags & FLAG_ZSTD:
        try:
            # Exactly one frame, as in a container (SPEC 4.2): a second frame, a skippable frame or junk
            # after it is damage, refused like any other (zstd's default would ignore it).
            raw = zstandard.ZstdDecompressor().decompress(
                stored, max_output_size=raw_length, read_across_frames=False, allow_extra_data=False
            )
        except zstandard.ZstdError as error:
            raise IntegrityError(
                f"chunk {digest.hex()[:16]} at {where} is not exactly one valid zstd frame: {error}"
            ) from error
    else:
        raw = stored
    if len(raw) != raw_length or content_digest(flags, raw) != digest:
        raise IntegrityError(f"chunk {digest.hex()[:16]} at {where} fails its BLAKE3 check")
    return raw


def check_chunk_input(digest: bytes, data: bytes | memoryview) -> None:
    """Refuse a chunk whose digest is malformed, whose size is over the limit, or that is not BLAKE3(data)."""
    if not isinstance(digest, bytes) or len(digest) != DIGEST_BYTES:
        raise FormatError("chunk digest must be 32 bytes (BLAKE3)")
    if len(data) > limits.chunk_bytes_max:
        raise LimitExceededError("chunk size", len(data), limits.chunk_bytes_max)
    if blake3.blake3(data).digest() != digest:
        raise IntegrityError(
            f"chunk {digest.hex()[:16]} does not match its BLAKE3 digest; refused before writing"
        )


def check_record_input(raw: bytes) -> bytes:
    """The address of a block record about to be stored; LimitExceededError when it is too large."""
    if len(raw) > limits.chunk_bytes_max:
        raise LimitExceededError("block record size", len(raw), limits.chunk_bytes_max)
    return record_digest(raw)


def _check4(body: bytes) -> bytes:
    return blake3.blake3(body).digest()[:4]


def _check8(body: bytes) -> bytes:
    return blake3.blake3(body).digest()[:8]


def frame_header(digest: bytes, flags: int, raw_length: int, stored_length: int) -> bytes:
    body = _FRAME_HEADER.pack(digest, flags, b"\0\0\0", raw_length, stored_length, b"\0\0\0\0")[:-4]
    return body + _check4(body)


def parse_frame_header(raw: bytes, where: str) -> tuple[bytes, int, int, int]:
    """``(digest, flags, raw length, stored length)`` of a frame header, checked."""
    if len(raw) != _FRAME_HEADER.size:
        raise IntegrityError(f"truncated frame header at {where}")
    digest, flags, reserved, raw_length, stored_length, check = _FRAME_HEADER.unpack(raw)
    if check != _check4(raw[:-4]) or reserved != b"\0\0\0":
        raise IntegrityError(f"frame header at {where} fails its checksum")
    if stored_length > limits.chunk_bytes_max or raw_length > limits.chunk_bytes_max:
        raise IntegrityError(f"frame at {where} claims a length above limits.chunk_bytes_max")
    if not flags & FLAG_ZSTD and stored_length != raw_length:
        raise IntegrityError(f"uncompressed frame at {where} has different stored and raw lengths")
    return digest, flags, raw_length, stored_length


def _encode_entry(digest: bytes, location: ChunkLocation) -> bytes:
    return _encode_entries(((digest, location),))


def _encode_entries(entries: Iterable[tuple[bytes, ChunkLocation]]) -> bytes:
    """Index entries, each with its check (the first 8 bytes of BLAKE3 of its body: blake3's digest(8)
    is that prefix). It runs per frame at every flush: the compiled core encodes a list of them
    (ADR 0092), or hands it back to this loop, the reference, with its lookups bound to locals."""
    core = native.core()
    if core is not None and type(entries) is list:
        encoded: bytes | None = core.pack_encode_entries(entries, blake3.blake3)
        if encoded is not None:
            return encoded
    body_of = _INDEX_ENTRY_BODY.pack
    hasher = blake3.blake3
    output = bytearray()
    for digest, location in entries:
        body = body_of(digest, location.pack_id, location.flags, b"\0\0\0", location.offset,
                       location.raw_length, location.stored_length)
        output += body
        output += hasher(body).digest(8)
    return bytes(output)


def _decode_entry(raw: bytes) -> tuple[bytes, ChunkLocation] | None:
    digest, pack_id, flags, _reserved, offset, raw_length, stored_length, check = _INDEX_ENTRY.unpack(raw)
    if check != _check8(raw[:-8]):
        return None
    return digest, ChunkLocation(pack_id, offset, flags, raw_length, stored_length)


@dataclass
class CompactionResult:
    """What one compaction did, in frames and bytes."""

    packs_examined: int = 0
    packs_rewritten: int = 0
    bytes_before: int = 0
    live_frames_copied: int = 0
    live_bytes_copied: int = 0
    garbage_frames_dropped: int = 0

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.live_bytes_copied


def pack_file_name(pack_id: int) -> str:
    return f"pack-{pack_id:08x}.pack"


class PackStore:
    """Chunks in append-only packs, located by an in-memory map loaded from the durable pack index.

    Thread-safe: writers serialise on one lock; readers use ``pread`` on their own descriptors.
    ``remote_reader(pack_id, offset, length)`` serves packs moved to the cold tier.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        compression_threshold: int = 4096,
        pack_bytes_max: int = limits.pack_bytes_max,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert 0 < pack_bytes_max <= limits.pack_bytes_max
        self.directory = Path(directory)
        self._directory_prefix = os.path.join(os.fspath(self.directory), "")  # for the read path: no pathlib
        self.compression_threshold = compression_threshold
        self.pack_bytes_max = pack_bytes_max
        self.clock = clock
        self.remote_reader: Callable[[int, int, int], bytes] | None = None
        self._lock = threading.RLock()
        self._locations: dict[bytes, ChunkLocation] = {}
        self._unindexed = bytearray()  # the index entries of frames written since the last flush, encoded
        self._pack_sizes: dict[int, int] = {}
        self._sealed: set[int] = set()
        self._remote: set[int] = set()
        self._missing: set[int] = set()  # named by the index, absent from the disk (found at open)
        self._indexed_end: dict[int, int] = {}  # per pack: the end of the last frame the index names
        # Packs whose index entries go backwards (an index rewritten in the order of the chunk map, as
        # compaction did before it sorted): the last entry does not prove the frames before it are
        # indexed, so open re-checks these packs and rewrites the index in pack order.
        self._entries_unordered: set[int] = set()
        self._seal_verified: set[int] = set()  # local packs whose seal trailer is well-formed (at open)
        self.remote_underindexed: set[int] = set()  # cold packs the index names only part of
        self._records_indexed = 0  # block-record entries in the pack index (not kept in _locations)
        self._last_access: dict[int, float] = {}
        self._active_id = 0
        self._active_fd = -1
        self._active_dirty = False
        self._failure: str | None = None
        self._open_problems: list[str] = []  # damage found at open, reported by scrub
        self.repairs: list[str] = []  # what open rebuilt (nothing lost), for the engine's report
        self.counters = {
            "dedup_hits": 0,
            "offered_bytes": 0,
            "tails_truncated": 0,
            "index_rebuilds": 0,
            "raw_bytes": 0,
            "stored_bytes": 0,
        }
        self._open()

    # ---- open and recovery ------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            pack_ids = self._list_pack_ids()
            self._remote = self._load_remote_list()
            index_intact = self._load_index()
            if not index_intact:
                self._rebuild_index(pack_ids)
            for pack_id in pack_ids:
                self._recover_pack(pack_id)
            self._index_sealed_gaps()
            if self._unindexed:  # frames recovered from pack tails are indexed before any pack is sealed
                self._append_encoded_entries(bytes(self._unindexed))
                del self._unindexed[:]
            if self._entries_unordered:  # once: from now on a cut index leaves each pack a named prefix
                self._write_index(self._locations.items(), self._record_entries())
            referenced = set(self._indexed_end)  # every pack an entry names (chunks and records)
            self._note_missing_packs(referenced - set(pack_ids) - self._remote)
            self._start_active_pack(max([*pack_ids, *self._remote, *referenced, 0]))
            self.flush()
        except BaseException as error:
            if self._active_fd >= 0:  # a failed open keeps no descriptor (the caller never gets close())
                os.close(self._active_fd)
                self._active_fd = -1
            if not isinstance(error, OSError):
                raise
            where = f" ({error.filename})" if error.filename else ""
            raise DurabilityError(
                f"cannot open pack store {self.directory}: {error.strerror}{where}") from error

    def _note_missing_packs(self, missing: set[int]) -> None:
        """Packs the index names but the disk lacks: their chunks are lost; everything else is served."""
        for pack_id in sorted(missing):
            lost = sum(1 for location in self._locations.values() if location.pack_id == pack_id)
            self._missing.add(pack_id)
            if not lost:
                continue  # every chunk it held was stored again elsewhere (its entries are superseded)
            self._open_problems.append(
                f"pack {pack_id} ({pack_file_name(pack_id)}) is missing: {lost} chunk(s) in it are lost")

    def _index_sealed_gaps(self) -> None:
        """A sealed pack is fully indexed before its seal is written; if the index names less of it (its
        tail was cut or lost after the fact), its missing frames are indexed again from the pack, and a
        cold pack is left to the tier layer (``remote_underindexed``). The index is derived state."""
        for pack_id in sorted(self._seal_verified - self._remote):
            body_end = self._pack_sizes[pack_id] - _SEAL_TRAILER.size
            indexed_end = self._indexed_end.get(pack_id, _PACK_HEADER.size)
            if indexed_end >= body_end and pack_id not in self._entries_unordered:
                continue
            found = 0
            for digest, location in self._scan_frames(pack_id, verify_data=True):
                current = self._locations.get(digest)
                unindexed = (location.end > indexed_end if location.flags & FLAG_RECORD
                             else current is None or not self._is_present(current))
                if unindexed:
                    self._add_location(digest, location)
                    self._unindexed += _encode_entry(digest, location)
                    found += 1
            if found:
                self.repairs.append(f"sealed pack {pack_id}: {found} frame(s) the pack index had lost were "
                                    "indexed again")
        for pack_id in sorted(self._remote):
            size = self._pack_sizes.get(pack_id)
            indexed_end = self._indexed_end.get(pack_id, _PACK_HEADER.size)
            if size is not None and (indexed_end < size - _SEAL_TRAILER.size
                                     or pack_id in self._entries_unordered):
                self.remote_underindexed.add(pack_id)

    def _list_pack_ids(self) -> list[int]:
        ids = [int(m.group(1), 16) for name in os.listdir(self.directory) if (m := _PACK_NAME.match(name))]
        if len(ids) > limits.packs_max:
            raise LimitExceededError("pack file count", len(ids), limits.packs_max)
        return sorted(ids)

    def _load_index(self) -> bool:
        """Load index.log; truncate a torn tail. False when damage in the middle demands a rebuild.

        The index is kept in pack order (appends follow the writes; rewrites are sorted), so an index cut
        anywhere still names a prefix of each pack's frames, and the end of the last frame it names says
        how much of a sealed pack is indexed (``_index_sealed_gaps``). A pack whose entries go backwards
        is noted in ``_entries_unordered``: for it that end proves nothing."""
        path = self.directory / "index.log"
        if not path.exists():
            pack_ids = self._list_pack_ids()
            if self._remote or len(pack_ids) > 1 or any(
                    self._read_seal(pack_id, self.pack_path(pack_id).stat().st_size) for pack_id in pack_ids):
                self.repairs.append("pack index missing; rebuilt from the packs")
                return False
            return True  # a store that never flushed: its one unsealed pack is recovered like any tail
        raw = path.read_bytes()
        if len(raw) < _INDEX_HEADER.size or raw[:8] != INDEX_MAGIC:
            self.repairs.append("pack index header damaged; index rebuilt from packs")
            return False
        index_version = _INDEX_HEADER.unpack(raw[: _INDEX_HEADER.size])[1]
        _check_version(index_version, "pack index")
        if index_version != FORMAT_VERSION:  # upgraded in place, once: the entries are the same
            raw = _INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, b"\0" * 6) + raw[_INDEX_HEADER.size :]
            write_atomically(path, raw, mode=_FILE_MODE)
        entry_count = (len(raw) - _INDEX_HEADER.size) // _INDEX_ENTRY.size
        if entry_count > limits.pack_index_entries_max:
            raise LimitExceededError("pack index entries", entry_count, limits.pack_index_entries_max)
        good_end = _INDEX_HEADER.size
        damaged = []
        for number in range(entry_count):
            start = _INDEX_HEADER.size + number * _INDEX_ENTRY.size
            decoded = _decode_entry(raw[start : start + _INDEX_ENTRY.size])
            if decoded is None:
                damaged.append(number)
                continue
            location = decoded[1]
            if location.offset < self._indexed_end.get(location.pack_id, 0):
                self._entries_unordered.add(location.pack_id)
            self._add_location(decoded[0], location)  # the last entry wins: a re-stored chunk
            good_end = start + _INDEX_ENTRY.size
        if any(number < entry_count - 1 for number in damaged):  # not just a torn last entry
            self.repairs.append(
                f"pack index entries {damaged[:5]} damaged; index rebuilt from good entries and packs"
            )
            return False
        if good_end != len(raw):
            os.truncate(path, good_end)
            self.counters["tails_truncated"] += 1
        return True

    def _rebuild_index(self, pack_ids: list[int]) -> None:
        """Keep the entries that verified, add every valid frame of the local packs, rewrite atomically.
        (Entries of cold packs survive only through the good entries: cold packs are not rescanned.)"""
        self.counters["index_rebuilds"] += 1
        records: list[tuple[bytes, ChunkLocation]] = []  # held only while the index is rewritten
        for pack_id in pack_ids:
            if pack_id in self._remote:
                continue
            for digest, location in self._scan_frames(pack_id, verify_data=True):
                current = self._locations.get(digest)
                if location.flags & FLAG_RECORD:
                    records.append((digest, location))
                    self._add_location(digest, location)
                elif current is None or current.pack_id not in self._remote:
                    self._add_location(digest, location)
        self._write_index(self._locations.items(), records)

    def _recover_pack(self, pack_id: int) -> None:
        """Seal state and size of one pack; for an unsealed pack, index valid frames and cut the torn tail."""
        path = self.directory / pack_file_name(pack_id)
        if pack_id in self._remote:  # crashed after recording the move, before deleting the local copy
            os.unlink(path)
            return
        size = path.stat().st_size
        header = _read_head(path, _PACK_HEADER.size)
        if size >= _PACK_HEADER.size and header[:8] == PACK_MAGIC:
            _check_version(_PACK_HEADER.unpack(header)[1], f"pack {pack_id}")
        if size >= _PACK_HEADER.size and header[:8] != PACK_MAGIC:
            self._open_problems.append(f"pack {pack_id} has a damaged header; no longer written to")
            self._sealed.add(pack_id)
            self._pack_sizes[pack_id] = size
            return
        if self._read_seal(pack_id, size) is not None:
            self._sealed.add(pack_id)
            self._seal_verified.add(pack_id)
            self._pack_sizes[pack_id] = size
            return
        indexed_end = self._indexed_end.get(pack_id, _PACK_HEADER.size)
        end = _PACK_HEADER.size
        for digest, location in self._scan_frames(pack_id, verify_data=True):
            end = location.end
            unindexed = (location.end > indexed_end if location.flags & FLAG_RECORD
                         else digest not in self._locations)
            if unindexed:
                self._add_location(digest, location)
                self._unindexed += _encode_entry(digest, location)
        if size < _PACK_HEADER.size:
            self._write_pack_header(pack_id, path)
        elif end < indexed_end:
            # The index holds synced frames beyond the first bad one: this is damage, not a torn tail.
            # Truncating would destroy healthy chunks; keep every byte, stop writing to this pack, and
            # let reads and scrub name the damaged chunk.
            self._open_problems.append(
                f"pack {pack_id}: the frame at offset {end} is damaged but indexed frames follow it; "
                "the pack is kept as it is and no longer written to"
            )
            self._sealed.add(pack_id)
            self._pack_sizes[pack_id] = size
            return
        elif end != size:
            os.truncate(path, end)
            self.counters["tails_truncated"] += 1
        self._pack_sizes[pack_id] = max(end, _PACK_HEADER.size)

    def _scan_frames(self, pack_id: int, *, verify_data: bool) -> Iterator[tuple[bytes, ChunkLocation]]:
        """Valid frames of one pack in order, stopping at the first that does not verify or the seal."""
        path = self.directory / pack_file_name(pack_id)
        with open(path, "rb") as handle:
            header = handle.read(_PACK_HEADER.size)
            if len(header) < _PACK_HEADER.size or header[:8] != PACK_MAGIC:
                return
            offset = _PACK_HEADER.size
            while True:
                raw_header = handle.read(_FRAME_HEADER.size)
                if raw_header[:8] == SEAL_MAGIC:
                    return
                try:
                    digest, flags, raw_length, stored_length = parse_frame_header(raw_header, "scan")
                except IntegrityError:
                    return
                stored = handle.read(stored_length)
                location = ChunkLocation(pack_id, offset, flags, raw_length, stored_length)
                if len(stored) != stored_length:
                    return
                if verify_data:
                    try:
                        decode_chunk(digest, flags, stored, raw_length, "scan")
                    except IntegrityError:
                        return
                yield digest, location
                offset = location.end

    def _read_seal(self, pack_id: int, size: int) -> tuple[int, bytes] | None:
        """``(body length, body digest)`` when the pack ends with a well-formed seal trailer."""
        if size < _PACK_HEADER.size + _SEAL_TRAILER.size:
            return None
        with open(self.directory / pack_file_name(pack_id), "rb") as handle:
            handle.seek(size - _SEAL_TRAILER.size)
            magic, body_length, body_digest = _SEAL_TRAILER.unpack(handle.read(_SEAL_TRAILER.size))
        if magic != SEAL_MAGIC or body_length != size - _SEAL_TRAILER.size:
            return None
        return body_length, body_digest

    def _load_remote_list(self) -> set[int]:
        path = self.directory / "remote.list"
        if not path.exists():
            return set()
        raw = path.read_bytes()
        if len(raw) > 16 * limits.packs_max:
            raise LimitExceededError("remote pack list size", len(raw), 16 * limits.packs_max)
        try:
            pairs = msgspec.msgpack.decode(raw, type=list[tuple[int, int]])
        except msgspec.DecodeError as error:
            # Derived state: the cold tier holds the packs themselves, and the tier layer adopts every
            # one this list no longer names (TieredChunkStore.reconcile). Kept as evidence, not trusted.
            os.replace(path, path.with_name(f"remote.list.damaged-{int(time.time())}"))
            self.repairs.append(f"remote pack list {path.name} was damaged ({error}); set aside, the cold "
                                "packs are adopted again from the cold tier")
            return set()
        self._pack_sizes.update(pairs)
        return {pack_id for pack_id, _ in pairs}

    def _add_location(self, digest: bytes, location: ChunkLocation) -> None:
        """Locate a chunk (the last entry of a digest wins). A block-record frame is NOT kept in memory
        (one per applied write would double the map for small blocks): only counted, and its end kept
        per pack, so recovery still tells a torn tail from damage before indexed frames."""
        self._indexed_end[location.pack_id] = max(self._indexed_end.get(location.pack_id, 0), location.end)
        if location.flags & FLAG_RECORD:
            self._records_indexed += 1
            return
        self._locate_chunk(digest, location)

    def _locate_chunk(self, digest: bytes, location: ChunkLocation) -> None:
        previous = self._locations.get(digest)
        if previous is not None:
            self.counters["raw_bytes"] -= previous.raw_length
            self.counters["stored_bytes"] -= previous.stored_length
        self._locations[digest] = location
        self.counters["raw_bytes"] += location.raw_length
        self.counters["stored_bytes"] += location.stored_length

    # ---- writing --------------------------------------------------------------------------------

    def _write_pack_header(self, pack_id: int, path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(pack_header(pack_id))
            handle.flush()
            os.fdatasync(handle.fileno())
        self._pack_sizes[pack_id] = _PACK_HEADER.size

    def _pack_version(self, pack_id: int) -> int | None:
        header = _read_head(self.directory / pack_file_name(pack_id), _PACK_HEADER.size)
        return _PACK_HEADER.unpack(header)[1] if len(header) == _PACK_HEADER.size else None

    def _start_active_pack(self, last_id: int) -> None:
        """Continue the last unsealed pack, or start a new one after the last sealed/remote one."""
        if (last_id and last_id not in self._sealed and last_id not in self._remote
                and last_id not in self._missing and self._pack_version(last_id) == FORMAT_VERSION):
            pack_id = last_id
        else:
            pack_id = last_id + 1
            self._write_pack_header(pack_id, self.directory / pack_file_name(pack_id))
            fsync_directory(self.directory)
        for other in list(self._pack_sizes):
            if other != pack_id and other not in self._sealed and other not in self._remote:
                self._seal(other)  # an older unsealed (or version 1) pack is sealed now
        self._active_id = pack_id
        self._active_fd = os.open(self.directory / pack_file_name(pack_id), os.O_WRONLY | os.O_APPEND)

    def put_chunks(self, chunks: Sequence[tuple[bytes, bytes | memoryview]]) -> int:
        """Append new chunks to the active pack; returns the stored bytes added (0 for duplicates)."""
        for digest, data in chunks:
            check_chunk_input(digest, data)
        with self._lock:
            return self._put_checked([digest for digest, _ in chunks], [data for _, data in chunks])

    def put_chunk_data(self, pieces: Sequence[bytes | memoryview]) -> tuple[list[bytes], int]:
        """Store each chunk under the BLAKE3 digest computed here (hashed once, not given and checked);
        returns the digests in order and the stored bytes added."""
        chunk_bytes_max = limits.chunk_bytes_max
        hasher = blake3.blake3
        core = native.core()
        digests: list[bytes] | None = (
            None if core is None else core.pack_digests(pieces, _CHUNK_HASHER, chunk_bytes_max))
        if digests is not None:  # all exact bytes within the limit (else this code refuses or hashes)
            with self._lock:
                return digests, self._put_checked(digests, pieces)
        for data in pieces:
            if len(data) > chunk_bytes_max:
                raise LimitExceededError("chunk size", len(data), chunk_bytes_max)
        digests = [hasher(data).digest() for data in pieces]
        with self._lock:
            return digests, self._put_checked(digests, pieces)

    def _put_checked(self, digests: Sequence[bytes], pieces: Sequence[bytes | memoryview]) -> int:
        """Stage and write the chunks not stored yet (``digests[i]`` of ``pieces[i]``, already checked);
        under the lock."""
        self._refuse_if_failed()
        staged = _StagedFrames()
        locations = self._locations
        counters = self.counters
        core = native.core()
        fresh = None if core is None else core.pack_fresh_chunks(
            digests, pieces, locations, staged.digests, self._remote, self._pack_sizes)
        if fresh is not None:  # the loop below, compiled (ADR 0092)
            fresh_digests, fresh_pieces, offered_bytes, dedup_hits = fresh
            counters["offered_bytes"] += offered_bytes
            counters["dedup_hits"] += dedup_hits
            return self._stage_frames(staged, fresh_digests, fresh_pieces, 0)
        fresh_digests = []
        fresh_pieces = []
        for digest, data in zip(digests, pieces, strict=True):
            counters["offered_bytes"] += len(data)
            existing = locations.get(digest)
            if digest in staged.digests or (existing is not None and self._is_present(existing)):
                counters["dedup_hits"] += 1
                continue
            staged.digests.add(digest)
            fresh_digests.append(digest)
            fresh_pieces.append(data)
        return self._stage_frames(staged, fresh_digests, fresh_pieces, 0)

    def put_records(self, records: Sequence[bytes]) -> int:
        """Append block-record frames (FLAG_RECORD, addressed by :func:`record_digest`): the
        authoritative copy of each block's record, from which the metadata index can be rebuilt.
        Returns the stored bytes added. Records are not deduplicated (their locations are not kept in
        memory): a replayed batch stores its records again, which compaction drops."""
        with self._lock:
            self._refuse_if_failed()
            core = native.core()
            digests: list[bytes] | None = (
                None if core is None
                else core.pack_digests(records, _RECORD_HASHER, limits.chunk_bytes_max))
            if digests is None:  # not all exact bytes within the limit: this code refuses or hashes
                digests = [check_record_input(raw) for raw in records]
            return self._stage_frames(_StagedFrames(), digests, records, FLAG_RECORD)

    def record_count(self) -> int:
        """How many block-record entries the pack index holds (0 in a store written before them;
        a replayed record counts again)."""
        return self._records_indexed

    def local_record_packs(self) -> list[int]:
        """Ids of the packs on this disk, in order (the cold tier scans its own)."""
        with self._lock:
            return sorted(pack_id for pack_id in self._pack_sizes if pack_id not in self._remote)

    def records_in_pack(self, pack_id: int) -> tuple[list[bytes], list[str]]:
        """Every verified block record in one local pack, and the problems met reading it."""
        with self._lock:
            size = self._pack_sizes.get(pack_id)
            if pack_id == self._active_id and self._active_dirty and self._active_fd >= 0:
                os.fdatasync(self._active_fd)
                self._active_dirty = False
        try:
            data = self.pack_path(pack_id).read_bytes()
        except FileNotFoundError:
            return [], [f"pack {pack_id} is missing: the block records in it are lost"]
        if size is not None:
            data = data[:size]
        return self.records_in_bytes(pack_id, data)

    def records_in_bytes(self, pack_id: int, data: bytes) -> tuple[list[bytes], list[str]]:
        """The verified block records of one pack's bytes (local or fetched from the cold tier); the
        walk resynchronises at the frames the pack index knows (see :func:`records_of_pack`)."""
        known = sorted(loc.offset for loc in self._locations.values() if loc.pack_id == pack_id)
        return records_of_pack(data, pack_id, known, f"pack {pack_id}")

    def _stage_frames(self, staged: _StagedFrames, digests: Sequence[bytes],
                      pieces: Sequence[bytes | memoryview], extra_flags: int) -> int:
        """Encode the frames of ``pieces`` (under ``digests``, already checked) into ``staged`` and write
        them: one system call per ``_STAGED_BYTES_MAX`` of frames, before the active pack would be full,
        and at the end. Returns the stored bytes. It runs per chunk and per block record on the
        applier's thread, which shares the GIL with the acks: the compiled core stages the frames that
        need no compression (ADR 0092) and hands back the others, which this loop, the reference,
        stages with its lookups bound to locals."""
        threshold = self.compression_threshold
        pack_bytes_max = self.pack_bytes_max
        pack_bytes = self._pack_sizes[self._active_id]
        header_body = _FRAME_HEADER_BODY.pack
        hasher = blake3.blake3
        frames = staged.frames
        entries = staged.entries
        new_bytes = 0
        core = native.core()
        position = 0
        count = len(pieces)
        while position < count:
            if core is not None:
                position, added = core.pack_stage_frames(
                    digests, pieces, position, frames, entries, extra_flags, threshold, _STAGED_BYTES_MAX,
                    pack_bytes_max - pack_bytes, hasher)
                new_bytes += added
                # The core stopped after a frame that filled the buffer or the pack (with nothing
                # staged, a pack already full waits for the frame this loop stages, as before)...
                staged_bytes = len(frames)
                if staged_bytes and (staged_bytes >= _STAGED_BYTES_MAX
                                     or pack_bytes + staged_bytes >= pack_bytes_max):
                    self._write_staged(staged)
                    pack_bytes = self._pack_sizes[self._active_id]
                    continue
                if position == count:
                    break
            # ... or before a piece it leaves to this loop, the reference.
            digest = digests[position]
            data = pieces[position]
            position += 1
            raw_length = len(data)
            stored: bytes | memoryview
            if raw_length >= threshold and raw_length > 0:
                flags, stored = encode_chunk(data, threshold)
            else:
                flags, stored = 0, data
            flags |= extra_flags
            stored_length = len(stored)
            body = header_body(digest, flags, b"\0\0\0", raw_length, stored_length)
            frames += body
            frames += hasher(body).digest(4)  # the first 4 bytes of BLAKE3(body): blake3 XOF prefix
            frames += stored
            entries.append((digest, flags, raw_length, stored_length))
            new_bytes += stored_length
            if len(frames) >= _STAGED_BYTES_MAX or pack_bytes + len(frames) >= pack_bytes_max:
                self._write_staged(staged)
                pack_bytes = self._pack_sizes[self._active_id]
        self._write_staged(staged)
        return new_bytes

    def _write_frame(self, digest: bytes, frame: bytes, flags: int, raw_length: int,
                     stored_length: int) -> None:
        """Append one whole frame to the active pack and locate ``digest`` there (indexed at flush)."""
        staged = _StagedFrames()
        staged.add(digest, frame, flags, raw_length, stored_length)
        self._write_staged(staged, roll=False)

    def _write_staged(self, staged: _StagedFrames, *, roll: bool = True) -> None:
        """Append the staged frames to the active pack with one write, locate each there (indexed at
        flush), empty ``staged``, and roll to a new pack when this one is full (unless ``roll`` is
        False: the caller rolls). A failed or short write fails the store, as for any pack write."""
        if not staged.frames:
            return
        data = staged.frames
        offset = self._pack_sizes[self._active_id]
        try:
            written = os.write(self._active_fd, data)
        except OSError as error:
            self._fail(f"pack write failed: {error.strerror}")
            raise DurabilityError(f"cannot append to pack {self._active_id}: {error.strerror}") from error
        if written != len(data):
            self._fail("short write to a pack")
            raise DurabilityError(f"short write to pack {self._active_id} (disk full?)")
        pack_id = self._active_id
        core = native.core()
        located = None if core is None else core.pack_locate(
            staged.entries, pack_id, offset, ChunkLocation, self._unindexed, self._locations, FLAG_RECORD,
            blake3.blake3)
        if located is not None:  # the loop below, compiled (ADR 0092)
            offset, records, raw_change, stored_change = located
            self.counters["raw_bytes"] += raw_change
            self.counters["stored_bytes"] += stored_change
        else:
            offset, records = self._locate_staged(staged, pack_id, offset)
        self._records_indexed += records
        self._indexed_end[pack_id] = max(self._indexed_end.get(pack_id, 0), offset)
        self._pack_sizes[pack_id] = offset
        self._active_dirty = True
        staged.clear()
        if roll and offset >= self.pack_bytes_max:
            self._roll_active_pack()

    def _locate_staged(self, staged: _StagedFrames, pack_id: int, offset: int) -> tuple[int, int]:
        """Locate the frames of ``staged`` just written at ``offset`` of ``pack_id`` (the reference of
        the core's ``pack_locate``): their index entries, encoded, wait for the flush; returns the end of
        the last frame and the number of block records."""
        records = 0
        written: list[tuple[bytes, ChunkLocation]] = []
        for digest, flags, raw_length, stored_length in staged.entries:  # _add_location, per batch
            location = ChunkLocation(pack_id, offset, flags, raw_length, stored_length)
            offset += _FRAME_HEADER.size + stored_length
            written.append((digest, location))
            if flags & FLAG_RECORD:
                records += 1
            else:
                self._locate_chunk(digest, location)
        self._unindexed += _encode_entries(written)
        return offset, records

    def _is_present(self, location: ChunkLocation) -> bool:
        """Whether the indexed frame can exist: its pack is remote, or local and long enough.
        A chunk whose pack was lost or cut short is stored again instead of being deduplicated away."""
        if location.pack_id in self._remote:
            return True
        size = self._pack_sizes.get(location.pack_id)
        return size is not None and location.end <= size

    def _roll_active_pack(self) -> None:
        self.flush()
        old_id = self._active_id
        os.close(self._active_fd)
        self._active_fd = -1
        self._seal(old_id)
        self._start_active_pack(old_id)

    def _seal(self, pack_id: int) -> None:
        """Append the seal trailer (body length and BLAKE3 of the body) to a fully indexed pack."""
        path = self.directory / pack_file_name(pack_id)
        body_length = self._pack_sizes[pack_id]
        hasher = blake3.blake3()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
        with open(path, "ab") as handle:
            handle.write(seal_trailer(body_length, hasher.digest()))
            handle.flush()
            os.fdatasync(handle.fileno())
        self._sealed.add(pack_id)
        self._pack_sizes[pack_id] = body_length + _SEAL_TRAILER.size

    # ---- compaction -----------------------------------------------------------------------------

    def compact(self, is_live: Callable[[bytes, ChunkLocation, bytes], bool], garbage_fraction_min: float,
                on_step: Callable[[str], None] | None = None) -> CompactionResult:
        """Rewrite the local sealed packs whose garbage is at least ``garbage_fraction_min`` of their
        frame bytes: their live frames are copied as they are (same bytes, no re-compression) into the
        active pack, then the packs are deleted. ``is_live(digest, location, stored_bytes)`` says whether
        a frame is still referenced (the caller's mark phase); it must not change while this runs.

        Crash-safe in this order (``on_step`` is called after each, for kill -9 tests):
        1. "copied": live frames appended to the active pack (a crash here: the copies are a torn or
           recovered tail, the old packs are untouched);
        2. "flushed": the active pack synced, then the copies' index entries appended and synced (the last
           entry of a digest wins: reads now use the copies);
        3. "indexed": index.log rewritten atomically without any entry of the compacted packs or of
           garbage (a crash here leaves old pack files nobody references: the next compaction deletes
           them as all garbage);
        4. "deleted": the old pack files removed, the directory synced.
        """
        step = on_step or (lambda name: None)
        with self._lock:
            self._refuse_if_failed()
            result = CompactionResult()
            chosen: list[int] = []
            garbage: set[bytes] = set()
            for pack_id in sorted(self._sealed - self._remote - self._missing):
                path = self.pack_path(pack_id)
                data = path.read_bytes()
                known = sorted(loc.offset for loc in self._locations.values() if loc.pack_id == pack_id)
                live: list[tuple[bytes, ChunkLocation]] = []
                dead: list[bytes] = []
                live_bytes = total = 0
                for location, _problem in walk_frames(pack_id, data, known):
                    if location is None:
                        continue  # a damaged frame: never copied, never counted live
                    digest = bytes(data[location.offset : location.offset + DIGEST_BYTES])
                    size = location.end - location.offset
                    total += size
                    current = self._locations.get(digest)
                    if not location.flags & FLAG_RECORD and current != location:
                        continue  # a stale copy: the index locates this digest elsewhere
                    body = data[location.offset + _FRAME_HEADER.size : location.end]
                    if is_live(digest, location, body):
                        live.append((digest, location))
                        live_bytes += size
                    else:
                        dead.append(digest)
                result.packs_examined += 1
                pack_size = len(data)
                if pack_size == 0 or (pack_size - live_bytes) / pack_size < garbage_fraction_min:
                    continue
                chosen.append(pack_id)
                garbage.update(dead)
                result.bytes_before += pack_size
                for digest, location in live:
                    frame = data[location.offset : location.end]
                    self._write_frame(digest, frame, location.flags, location.raw_length,
                                      location.stored_length)
                    result.live_frames_copied += 1
                    result.live_bytes_copied += len(frame)
                    if self._pack_sizes[self._active_id] >= self.pack_bytes_max:
                        self._roll_active_pack()
                result.garbage_frames_dropped += len(dead)
            if not chosen:
                return result
            step("copied")
            self.flush()
            step("flushed")
            for digest in garbage:
                location = self._locations.get(digest)
                if location is not None and location.pack_id in chosen:
                    del self._locations[digest]
                    self.counters["raw_bytes"] -= location.raw_length
                    self.counters["stored_bytes"] -= location.stored_length
            kept_records = [(digest, location) for digest, location in self._record_entries()
                            if location.pack_id not in chosen]
            self._write_index(((digest, location) for digest, location in self._locations.items()
                               if location.pack_id not in chosen), kept_records)
            self._records_indexed = len(kept_records)
            step("indexed")
            for pack_id in chosen:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.pack_path(pack_id))
                self._sealed.discard(pack_id)
                self._pack_sizes.pop(pack_id, None)
                self._last_access.pop(pack_id, None)
            fsync_directory(self.directory)
            step("deleted")
            result.packs_rewritten = len(chosen)
            return result

    def _write_index(self, chunks: Iterable[tuple[bytes, ChunkLocation]],
                     records: Iterable[tuple[bytes, ChunkLocation]]) -> None:
        """Replace index.log with these entries in pack order (pack id, then offset), never in the order
        of the chunk map: a chunk located first may sit at the end of a pack, and an index cut after its
        entry would pass for one naming the whole pack (``_load_index``)."""
        entries = sorted([*chunks, *records], key=lambda entry: (entry[1].pack_id, entry[1].offset))
        header = _INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, b"\0" * 6)
        payload = b"".join(_encode_entry(digest, location)  # one entry per frame: repeats dropped
                           for number, (digest, location) in enumerate(entries)
                           if number == 0 or entries[number - 1][1] != location)
        write_atomically(self.directory / "index.log", header + payload, mode=_FILE_MODE)
        self._entries_unordered.clear()

    def _record_entries(self) -> list[tuple[bytes, ChunkLocation]]:
        """The block-record entries of index.log (not kept in memory), read from the disk."""
        return [(digest, location) for digest, location in self._index_entries()
                if location.flags & FLAG_RECORD]

    def _index_entries(self) -> Iterator[tuple[bytes, ChunkLocation]]:
        """The entries of index.log as they are on disk (a compaction keeps the record entries it does
        not rewrite: they are not in memory). Flushed first, so nothing appended is missed."""
        self.flush()
        with open(self.directory / "index.log", "rb") as handle:
            handle.read(_INDEX_HEADER.size)
            while len(raw := handle.read(_INDEX_ENTRY.size)) == _INDEX_ENTRY.size:
                decoded = _decode_entry(raw)
                if decoded is not None:
                    yield decoded

    def unreferenced_packs(self) -> list[int]:
        """Local sealed packs no index entry points into (left by a compaction that crashed)."""
        with self._lock:
            return sorted(self._sealed - self._remote - set(self._indexed_end))

    def flush(self) -> None:
        """Sync the active pack, then append and sync the index entries of the newly written chunks."""
        with self._lock:
            self._refuse_if_failed()
            try:
                if self._active_dirty and self._active_fd >= 0:
                    os.fdatasync(self._active_fd)
                    self._active_dirty = False
                if self._unindexed:
                    self._append_encoded_entries(bytes(self._unindexed))
                    del self._unindexed[:]
            except OSError as error:
                # Never retry a failed sync on the same file (fsyncgate): refuse writes from now on.
                self._fail(f"sync failed: {error.strerror}")
                raise DurabilityError(f"cannot make packs durable: {error.strerror}") from error

    def _append_index(self, entries: list[tuple[bytes, ChunkLocation]]) -> None:
        self._append_encoded_entries(_encode_entries(entries))

    def _append_encoded_entries(self, payload: bytes) -> None:
        """Append index entries (encoded) to index.log and sync it (with its header if it is new)."""
        path = self.directory / "index.log"
        is_new = not path.exists()
        with open(path, "ab") as handle:
            if is_new or handle.tell() == 0:
                payload = _INDEX_HEADER.pack(INDEX_MAGIC, FORMAT_VERSION, b"\0" * 6) + payload
            handle.write(payload)
            handle.flush()
            os.fdatasync(handle.fileno())
        if is_new:
            fsync_directory(self.directory)

    def _fail(self, reason: str) -> None:
        self._failure = reason

    def _refuse_if_failed(self) -> None:
        if self._failure is not None:
            raise DurabilityError(f"pack store refuses writes after an earlier failure ({self._failure})")

    # ---- reading --------------------------------------------------------------------------------

    def locate(self, digest: bytes) -> ChunkLocation | None:
        return self._locations.get(digest)

    def has(self, digests: Sequence[bytes]) -> set[bytes]:
        """The digests stored here whose pack still exists (a chunk of a lost pack is not held)."""
        found = set()
        for digest in digests:
            location = self._locations.get(digest)
            if location is not None and self._is_present(location):
                found.add(digest)
        return found

    def is_local(self, digest: bytes) -> bool:
        """Whether ``digest`` is stored in a pack on this disk (not in the cold tier, not unknown)."""
        location = self._locations.get(digest)
        return location is not None and location.pack_id not in self._remote

    def get_chunk(self, digest: bytes) -> bytes:
        location = self._locations.get(digest)
        if location is None:
            raise BlockNotFoundError(f"no chunk {digest.hex()[:16]} in the pack store")
        frame = self._read_range(location.pack_id, location.offset, location.end - location.offset)
        return self.verify_frame(digest, location, frame)

    def verify_frame(self, digest: bytes, location: ChunkLocation, frame: bytes) -> bytes:
        """The chunk from its whole frame as read from wherever the pack lives, fully verified."""
        where = f"pack {location.pack_id} offset {location.offset}"
        if len(frame) != location.end - location.offset:
            raise IntegrityError(
                f"chunk {digest.hex()[:16]} at {where} is missing (pack shorter than its index)"
            )
        header_digest, flags, raw_length, stored_length = parse_frame_header(
            frame[: _FRAME_HEADER.size], where
        )
        if (header_digest, flags, raw_length, stored_length) != (
            digest,
            location.flags,
            location.raw_length,
            location.stored_length,
        ):
            raise IntegrityError(
                f"frame at {where} does not match the pack index entry for {digest.hex()[:16]}"
            )
        self._last_access[location.pack_id] = self.clock()
        return decode_chunk(digest, flags, frame[_FRAME_HEADER.size :], raw_length, where)

    def _read_range(self, pack_id: int, offset: int, length: int) -> bytes:
        if pack_id in self._remote:
            if self.remote_reader is None:
                raise BackendError(f"pack {pack_id} is in the cold tier; read it through TieredChunkStore")
            return self.remote_reader(pack_id, offset, length)
        try:
            fd = os.open(self._directory_prefix + pack_file_name(pack_id), os.O_RDONLY)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    # ---- tiers support --------------------------------------------------------------------------

    def sealed_packs(self) -> dict[int, tuple[float, float | None]]:
        """Local sealed packs: id -> (sealed-at time from the file's mtime, last read time or None)."""
        with self._lock:
            result = {}
            for pack_id in sorted(self._sealed - self._remote):
                mtime = (self.directory / pack_file_name(pack_id)).stat().st_mtime
                result[pack_id] = (mtime, self._last_access.get(pack_id))
            return result

    def pack_path(self, pack_id: int) -> Path:
        return self.directory / pack_file_name(pack_id)

    def sample_remote(self, read_data_fraction: float) -> list[tuple[bytes, ChunkLocation]]:
        """A random ``read_data_fraction`` of the chunks that live in cold packs, for scrubbing."""
        salt = os.urandom(8)
        threshold = int(read_data_fraction * (1 << 64))
        return [
            (digest, location)
            for digest, location in list(self._locations.items())
            if location.pack_id in self._remote
            and (
                read_data_fraction == 1.0
                or int.from_bytes(blake3.blake3(salt + digest).digest()[:8], "little") < threshold
            )
        ]

    def note_access(self, pack_id: int) -> None:
        self._last_access[pack_id] = self.clock()

    def remote_pack_ids(self) -> list[int]:
        return sorted(self._remote)

    def is_remote(self, pack_id: int) -> bool:
        return pack_id in self._remote

    def mark_remote(self, pack_id: int) -> None:
        """Record durably that a sealed pack now lives in the cold tier, then drop the local copy."""
        with self._lock:
            assert pack_id in self._sealed, "only sealed packs move to the cold tier"
            remote = [(member, self._pack_sizes[member]) for member in sorted(self._remote | {pack_id})]
            write_atomically(self.directory / "remote.list", msgspec.msgpack.encode(remote), mode=_FILE_MODE)
            self._remote.add(pack_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pack_path(pack_id))

    def adopt_remote(self, pack_id: int, data: bytes) -> int:
        """Take a pack found in the cold tier but missing from ``remote.list`` (the list was lost or
        damaged) back into the store: record it as remote and index every verified frame of it that
        the pack index does not locate. Returns the number of frames (re)indexed."""
        with self._lock:
            if pack_id not in self._remote:
                if pack_file_name(pack_id) in os.listdir(self.directory):
                    return 0  # the local copy is authoritative (a crash between upload and record)
                self._pack_sizes[pack_id] = len(data)
                self._sealed.add(pack_id)
                remote = [(member, self._pack_sizes[member]) for member in sorted(self._remote | {pack_id})]
                encoded = msgspec.msgpack.encode(remote)
                write_atomically(self.directory / "remote.list", encoded, mode=_FILE_MODE)
                self._remote.add(pack_id)
                self._missing.discard(pack_id)
                self._open_problems = [problem for problem in self._open_problems
                                       if not problem.startswith(f"pack {pack_id} (")]
            return self._index_pack_bytes(pack_id, data)

    def _index_pack_bytes(self, pack_id: int, data: bytes) -> int:
        known = sorted(loc.offset for loc in self._locations.values() if loc.pack_id == pack_id)
        found: list[tuple[bytes, ChunkLocation]] = []
        for location, problem in walk_frames(pack_id, data, known):
            if location is None:
                self._open_problems.append(f"cold pack {pack_id}: {problem}")
                continue
            start = location.offset
            digest = data[start : start + DIGEST_BYTES]
            if location.flags & FLAG_RECORD and location.end <= self._indexed_end.get(pack_id, 0):
                continue  # a record the index names (the index names a prefix of each pack)
            current = self._locations.get(digest)
            if current is not None and self._is_present(current):
                continue
            try:
                decode_chunk(digest, location.flags, data[start + _FRAME_HEADER.size : location.end],
                             location.raw_length, f"pack {pack_id} offset {start}")
            except IntegrityError as error:
                self._open_problems.append(f"cold pack {pack_id}: {error.message}")
                continue
            self._add_location(digest, location)
            found.append((digest, location))
        if found:
            self._append_index(found)
        return len(found)

    def reindex_remote_pack(self, pack_id: int, data: bytes) -> int:
        """Index the verified frames of a cold pack the pack index lost (after an index rebuild)."""
        with self._lock:
            return self._index_pack_bytes(pack_id, data)

    @property
    def index_was_rebuilt(self) -> bool:
        return self.counters["index_rebuilds"] > 0

    def note_problem(self, problem: str) -> None:
        """Record a problem found at open by a layer above (reported by scrub until the next open)."""
        self._open_problems.append(problem)

    # ---- checking and stats --------------------------------------------------------------------

    def scrub(
        self, read_data_fraction: float, remote_exists: Callable[[int], bool] | None = None
    ) -> list[str]:
        """Structure (every indexed chunk inside an existing pack, seals intact) and a sample of the data."""
        if not 0.0 <= read_data_fraction <= 1.0:
            raise FormatError(f"read_data_fraction must be within [0, 1], got {read_data_fraction}")
        problems = list(self._open_problems)
        sizes = self._current_pack_sizes(remote_exists, problems)
        salt = os.urandom(8)
        threshold = int(read_data_fraction * (1 << 64))
        for digest, location in list(self._locations.items()):
            if location.pack_id not in sizes:
                continue  # its pack is missing: reported once above
            size = sizes[location.pack_id]
            if size is not None and location.end > size:
                problems.append(
                    f"chunk {digest.hex()[:16]} indexed in pack {location.pack_id} "
                    f"at offset {location.offset} but missing from the pack"
                )
                continue
            if location.pack_id in self._remote and self.remote_reader is None:
                continue  # the tier layer samples cold chunks itself (sample_remote)
            sample = int.from_bytes(blake3.blake3(salt + digest).digest()[:8], "little")
            if sample < threshold or read_data_fraction == 1.0:
                try:
                    self.get_chunk(digest)
                except (IntegrityError, BlockNotFoundError) as error:
                    problems.append(str(error))
        return problems

    def _current_pack_sizes(
        self, remote_exists: Callable[[int], bool] | None, problems: list[str]
    ) -> dict[int, int | None]:
        """Sizes of the packs the index refers to (None: remote, size unknown); missing packs are problems."""
        sizes: dict[int, int | None] = {}
        for pack_id in sorted({location.pack_id for location in self._locations.values()}):
            if pack_id in self._remote:
                if remote_exists is not None and not remote_exists(pack_id):
                    problems.append(f"pack {pack_id} is recorded in the cold tier but missing there")
                else:
                    sizes[pack_id] = None
                continue
            try:
                sizes[pack_id] = self.pack_path(pack_id).stat().st_size
            except FileNotFoundError:
                problems.append(f"pack {pack_id} is referenced by the index but its file is missing")
        for pack_id in sorted(self._sealed - self._remote):
            problems.extend(self._check_seal(pack_id, sizes.get(pack_id)))
        return sizes

    def _check_seal(self, pack_id: int, size: int | None) -> list[str]:
        if size is None:
            return []
        seal = self._read_seal(pack_id, size)
        if seal is None:
            return [f"sealed pack {pack_id} lost its seal trailer"]
        hasher = blake3.blake3()
        with open(self.pack_path(pack_id), "rb") as handle:
            remaining = seal[0]
            while remaining > 0:
                block = handle.read(min(1 << 20, remaining))
                if not block:
                    break
                hasher.update(block)
                remaining -= len(block)
        if hasher.digest() != seal[1]:
            return [f"sealed pack {pack_id} fails its BLAKE3 seal (bytes changed since sealing)"]
        return []

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            raw = self.counters["raw_bytes"]
            stored = self.counters["stored_bytes"]
            offered = self.counters["offered_bytes"]
            bytes_cold = sum(self._pack_sizes.get(pack_id, 0) for pack_id in self._remote)
            return {
                "bytes_warm": sum(self._pack_sizes.values()) - bytes_cold,
                "bytes_cold": bytes_cold,
                "chunks": len(self._locations),
                "raw_bytes": raw,
                "stored_bytes": stored,
                "packs": len(self._pack_sizes),
                "packs_sealed": len(self._sealed),
                "packs_remote": len(self._remote),
                "packs_missing": len(self._missing),
                "records": self.record_count(),
                "compression_ratio": raw / stored if stored else 1.0,
                "dedup_ratio": offered / raw if raw and offered else 1.0,
                **self.counters,
            }

    def close(self) -> None:
        with self._lock:
            try:
                if self._failure is None:
                    self.flush()
            finally:
                if self._active_fd >= 0:
                    os.close(self._active_fd)
                    self._active_fd = -1


def records_of_pack(data: bytes, pack_id: int, known_offsets: list[int], where: str
                    ) -> tuple[list[bytes], list[str]]:
    """The verified block records in one pack's bytes, and the problems met. A damaged frame is skipped
    and named: the walk resumes at the next offset in ``known_offsets``, so one bad frame never hides
    the records after it."""
    records: list[bytes] = []
    problems: list[str] = []
    for location, problem in walk_frames(pack_id, data, known_offsets):
        if location is None:
            problems.append(f"{where}: {problem}")
            continue
        if not location.flags & FLAG_RECORD:
            continue
        start = location.offset
        try:
            records.append(decode_chunk(data[start : start + DIGEST_BYTES], location.flags,
                                        data[start + _FRAME_HEADER.size : location.end],
                                        location.raw_length, f"{where} offset {start}"))
        except IntegrityError as error:
            problems.append(f"block record {error.message}")
    return records, problems


def walk_frames(pack_id: int, data: bytes, known_offsets: list[int]
                 ) -> Iterator[tuple[ChunkLocation | None, str | None]]:
    """The frames of one pack's bytes by their headers (data not verified), skipping damage.

    Where a frame header fails its check the walk resumes at the next offset in ``known_offsets``
    (the pack index's frames), so damage costs the frames it hit and nothing after them."""
    end = len(data)
    if end >= _PACK_HEADER.size + _SEAL_TRAILER.size:
        magic, body_length, _ = _SEAL_TRAILER.unpack_from(data, end - _SEAL_TRAILER.size)
        if magic == SEAL_MAGIC and body_length == end - _SEAL_TRAILER.size:
            end = body_length
    offset = _PACK_HEADER.size
    if len(data) < _PACK_HEADER.size or data[:8] != PACK_MAGIC:
        yield None, f"pack {pack_id} has a damaged header"
    while offset + _FRAME_HEADER.size <= end:
        where = f"pack {pack_id} offset {offset}"
        try:
            _, flags, raw_length, stored_length = parse_frame_header(
                data[offset : offset + _FRAME_HEADER.size], where)
            location = ChunkLocation(pack_id, offset, flags, raw_length, stored_length)
            if location.end > end:
                raise IntegrityError(f"frame at {where} runs past the end of the pack")
        except IntegrityError as error:
            yield None, error.message
            following = bisect.bisect_right(known_offsets, offset)
            if following == len(known_offsets):
                return
            offset = known_offsets[following]
            continue
        yield location, None
        offset = location.end


def _check_version(version: int, what: str) -> None:
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersionError(
            f"{what} has format version {version}; this reader knows {sorted(READABLE_VERSIONS)}"
        )


def _read_head(path: Path, length: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(length)


__all__ = [
    "FRAME_HEADER_BYTES",
    "ChunkLocation",
    "CompactionResult",
    "PackStore",
    "check_chunk_input",
    "check_record_input",
    "decode_chunk",
    "encode_chunk",
    "pack_file_name",
    "pack_header",
    "records_of_pack",
    "seal_trailer",
    "walk_frames",
]
