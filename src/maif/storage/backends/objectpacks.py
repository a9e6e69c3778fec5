"""A chunk store several MAIF nodes share: packs as immutable objects, locations in a shared index.

When one machine is outgrown, every node keeps its own write-ahead log but stores chunks here, in an
:class:`~maif.storage.backends.base.ObjectStore` (S3 in production) that every node reads:

    objects   packs/<node id>/<UTC time>-<random>.pack   one object per apply batch (or per 64 MiB):
                                                         the pack format of docs/format/PACKS.md
                                                         (header with pack id 0, frames, seal trailer)
    locations digest -> (object key, frame offset, flags, raw length, stored length)   a LocationIndex
                                                         (PostgreSQL in production; first copy wins)

Write order, per batch: chunk frames and block-record frames are buffered in memory by ``put_chunks`` /
``put_records``; ``put_records`` (which ends every apply batch) and ``flush`` upload the buffer as one
object (a PUT, acknowledged durable by the object store), and only then add its locations to the
index. So a location always names bytes that exist, and another node that finds a block's record in
the metadata index (written after this) finds every chunk. Until the upload, this node serves its
own buffered chunks from memory (read-your-writes); a crash loses only the buffer, which the node's
write-ahead log replays.

Deduplication is by digest across every node: a chunk whose location exists is not stored again. Two
nodes storing the same new chunk at once both upload it; the first location wins and the other copy
is harmless garbage. Every read is verified (frame header against the location, BLAKE3 of the data).
"""

from __future__ import annotations

import asyncio
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import blake3

from maif import limits
from maif.errors import BlockNotFoundError, ConfigError, FormatError, IntegrityError, StoreClosedError
from maif.storage.backends.base import Capabilities, ChunkStore, ObjectStore
from maif.storage.packs import (
    FLAG_RECORD,
    FRAME_HEADER_BYTES,
    check_chunk_input,
    check_record_input,
    decode_chunk,
    encode_chunk,
    frame_header,
    pack_header,
    parse_frame_header,
    records_of_pack,
    seal_trailer,
)

_SCRUB_SAMPLE_SALT_BYTES = 8


@dataclass(frozen=True, slots=True)
class ObjectLocation:
    """Where one chunk's frame lives: object key, frame offset, and the lengths from its header."""

    key: str
    offset: int
    flags: int
    raw_length: int
    stored_length: int

    @property
    def frame_length(self) -> int:
        return FRAME_HEADER_BYTES + self.stored_length


class LocationIndex(ABC):
    """digest -> :class:`ObjectLocation`, shared by every node (the first location of a digest wins)."""

    @abstractmethod
    async def lookup(self, digests: Sequence[bytes]) -> dict[bytes, ObjectLocation]:
        """The locations known for ``digests`` (absent ones are left out)."""

    @abstractmethod
    async def add(self, entries: Sequence[tuple[bytes, ObjectLocation]]) -> None:
        """Record locations; a digest already located keeps its first location."""

    @abstractmethod
    async def count(self) -> tuple[int, int]:
        """(chunks, block records) located."""

    @abstractmethod
    async def sample(self, fraction: float) -> list[tuple[bytes, ObjectLocation]]:
        """A random ``fraction`` of the locations (for scrubbing)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Safe to call twice."""


class MemoryLocationIndex(LocationIndex):
    """Locations in a dict (tests; one process)."""

    def __init__(self) -> None:
        self.entries: dict[bytes, ObjectLocation] = {}

    async def lookup(self, digests: Sequence[bytes]) -> dict[bytes, ObjectLocation]:
        return {digest: self.entries[digest] for digest in digests if digest in self.entries}

    async def add(self, entries: Sequence[tuple[bytes, ObjectLocation]]) -> None:
        for digest, location in entries:
            self.entries.setdefault(digest, location)

    async def count(self) -> tuple[int, int]:
        records = sum(1 for location in self.entries.values() if location.flags & FLAG_RECORD)
        return len(self.entries) - records, records

    async def sample(self, fraction: float) -> list[tuple[bytes, ObjectLocation]]:
        salt = os.urandom(_SCRUB_SAMPLE_SALT_BYTES)
        threshold = int(fraction * (1 << 64))
        return [(digest, location) for digest, location in self.entries.items()
                if fraction >= 1.0 or int.from_bytes(blake3.blake3(salt + digest).digest()[:8], "little")
                < threshold]

    async def close(self) -> None:
        return None


class ObjectPackChunkStore(ChunkStore):
    """:class:`ChunkStore` over an ObjectStore of immutable packs and a shared LocationIndex."""

    capabilities = Capabilities(durable=True, shared_between_processes=True)

    def __init__(self, objects: ObjectStore, locations: LocationIndex, *, node_id: str,
                 compression_threshold: int = 4096, pack_bytes_max: int = limits.pack_bytes_max) -> None:
        if not node_id or "/" in node_id or not node_id.isprintable():
            raise ConfigError(f"node id {node_id!r} cannot name an object prefix")
        self.objects = objects
        self.locations = locations
        self.node_id = node_id
        self.compression_threshold = compression_threshold
        self.pack_bytes_max = pack_bytes_max
        self._lock = asyncio.Lock()  # one upload at a time; the buffer changes only under it
        self._frames: list[bytes] = []
        self._buffered: dict[bytes, tuple[int, bytes, int]] = {}  # digest -> (flags, stored, raw length)
        self._buffer_bytes = 0
        self._closed = False
        self.counters = {"objects_written": 0, "bytes_uploaded": 0, "dedup_hits": 0, "offered_bytes": 0,
                         "raw_bytes": 0, "stored_bytes": 0}

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("chunk store is closed")

    # ---- writing ---------------------------------------------------------------------------------

    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        self._check_open()
        for digest, data in chunks:
            check_chunk_input(digest, data)
        return await self._buffer([(digest, data, 0) for digest, data in chunks])

    async def put_records(self, records: Sequence[bytes]) -> int:
        """Buffer the records, then upload the batch: a record ends every apply batch."""
        self._check_open()
        entries = [(check_record_input(raw), raw, FLAG_RECORD) for raw in records]
        added = await self._buffer(entries)
        await self.flush()
        return added

    async def _buffer(self, entries: list[tuple[bytes, bytes, int]]) -> int:
        async with self._lock:
            wanted = [digest for digest, _, _ in entries if digest not in self._buffered]
            known = await self.locations.lookup(wanted) if wanted else {}
            added = 0
            for digest, data, extra_flags in entries:
                self.counters["offered_bytes"] += len(data)
                if digest in self._buffered or digest in known:
                    self.counters["dedup_hits"] += 1
                    continue
                flags, stored = encode_chunk(data, self.compression_threshold)
                flags |= extra_flags
                self._frames.append(frame_header(digest, flags, len(data), len(stored)) + stored)
                self._buffered[digest] = (flags, stored, len(data))
                self._buffer_bytes += FRAME_HEADER_BYTES + len(stored)
                self.counters["raw_bytes"] += len(data)
                self.counters["stored_bytes"] += len(stored)
                added += len(stored)
                if self._buffer_bytes >= self.pack_bytes_max:
                    await self._upload_locked()
            return added

    async def flush(self) -> None:
        """Upload the buffered frames as one pack object, then record their locations."""
        self._check_open()
        async with self._lock:
            await self._upload_locked()

    async def _upload_locked(self) -> None:
        if not self._frames:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        key = f"packs/{self.node_id}/{stamp}-{os.urandom(8).hex()}.pack"
        header = pack_header(0)
        entries: list[tuple[bytes, ObjectLocation]] = []
        offset = len(header)
        for frame in self._frames:
            digest = frame[:32]
            flags, stored, raw_length = self._buffered[digest]
            entries.append((digest, ObjectLocation(key, offset, flags, raw_length, len(stored))))
            offset += len(frame)
        body = header + b"".join(self._frames)
        data = body + seal_trailer(len(body), blake3.blake3(body).digest())
        await self.objects.put(key, data)  # durable once acknowledged; only then is it locatable
        await self.locations.add(entries)
        self.counters["objects_written"] += 1
        self.counters["bytes_uploaded"] += len(data)
        self._frames = []
        self._buffered = {}
        self._buffer_bytes = 0

    # ---- reading ---------------------------------------------------------------------------------

    async def get_chunk(self, digest: bytes) -> bytes:
        self._check_open()
        buffered = self._buffered.get(digest)
        if buffered is not None:
            flags, stored, raw_length = buffered
            return decode_chunk(digest, flags, stored, raw_length, "the upload buffer")
        location = (await self.locations.lookup([digest])).get(digest)
        if location is None:
            raise BlockNotFoundError(f"no chunk {digest.hex()[:16]} in the shared chunk store")
        return await self._read(digest, location)

    async def _read(self, digest: bytes, location: ObjectLocation) -> bytes:
        where = f"object {location.key} offset {location.offset}"
        try:
            frame = await self.objects.get_range(location.key, location.offset, location.frame_length)
        except BlockNotFoundError:
            raise IntegrityError(f"chunk {digest.hex()[:16]} at {where} is missing (object gone)") from None
        if len(frame) != location.frame_length:
            raise IntegrityError(f"chunk {digest.hex()[:16]} at {where} is missing (object too short)")
        header = parse_frame_header(frame[:FRAME_HEADER_BYTES], where)
        if header != (digest, location.flags, location.raw_length, location.stored_length):
            raise IntegrityError(f"frame at {where} does not match the location of {digest.hex()[:16]}")
        return decode_chunk(digest, location.flags, frame[FRAME_HEADER_BYTES:], location.raw_length, where)

    async def has_chunks(self, digests: Sequence[bytes]) -> set[bytes]:
        self._check_open()
        held = {digest for digest in digests if digest in self._buffered}
        rest = [digest for digest in digests if digest not in held]
        return held | set(await self.locations.lookup(rest)) if rest else held

    async def scan_records(self) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        """Records of every pack object of every node, one object at a time (then this node's buffer)."""
        self._check_open()
        for key in await self.objects.list("packs/"):
            try:
                data = await self.objects.get(key)
            except BlockNotFoundError:
                yield [], [f"pack object {key} vanished while it was being read"]
                continue
            yield records_of_pack(data, 0, [], f"pack object {key}")
        yield [raw for flags, raw, _ in self._buffered.values() if flags & FLAG_RECORD], []

    async def scrub(self, read_data_fraction: float) -> list[str]:
        self._check_open()
        if not 0.0 <= read_data_fraction <= 1.0:
            raise FormatError(f"read_data_fraction must be within [0, 1], got {read_data_fraction}")
        problems: list[str] = []
        if read_data_fraction == 0.0:
            return problems
        for digest, location in await self.locations.sample(read_data_fraction):
            try:
                await self._read(digest, location)
            except IntegrityError as error:
                problems.append(error.message)
        return problems

    async def stats(self) -> dict[str, int | float]:
        chunks, records = await self.locations.count()
        buffered_records = sum(1 for flags, _, _ in self._buffered.values() if flags & FLAG_RECORD)
        chunks += len(self._buffered) - buffered_records  # not uploaded yet, yet held (read-your-writes)
        records += buffered_records
        raw, stored, offered = (self.counters[k] for k in ("raw_bytes", "stored_bytes", "offered_bytes"))
        return {
            "chunks": chunks + records,
            "records": records,
            "bytes_warm": 0,
            "bytes_cold": 0,
            "bytes_shared": self.counters["bytes_uploaded"],
            "compression_ratio": raw / stored if stored else 1.0,
            "dedup_ratio": offered / raw if raw and offered else 1.0,
            **self.counters,
        }

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            await self.locations.close()
            await self.objects.close()


__all__ = ["LocationIndex", "MemoryLocationIndex", "ObjectLocation", "ObjectPackChunkStore"]
