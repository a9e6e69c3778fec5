"""In-memory implementations of every backend ABC: for tests, models and the non-durable mode.

They keep exactly the semantics of the local backends (dedup, compression, BLAKE3 verification on
read, query order and paging, filters) and pass the same conformance suite; they only forget
everything when the process ends (``Capabilities.durable`` is False).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence

import blake3
import numpy as np

from maif.errors import BlockNotFoundError, FormatError, IntegrityError, StoreClosedError
from maif.storage.backends.base import (
    Capabilities,
    ChunkStore,
    MetadataIndex,
    ObjectStore,
    VectorIndex,
    check_object_key,
)
from maif.storage.cache import LRUHotCache
from maif.storage.index import check_query_limit
from maif.storage.packs import FLAG_RECORD, check_chunk_input, check_record_input, decode_chunk, encode_chunk
from maif.storage.records import BlockRecord
from maif.storage.vectors import check_attributes, check_search_limit, check_vector, matches, unit_vector

_VOLATILE = Capabilities(durable=False, shared_between_processes=False)


class _Closable:
    _closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{type(self).__name__} is closed")


class MemoryChunkStore(_Closable, ChunkStore):
    """Chunks in a dict, stored in the same (flags, stored bytes) form a pack frame holds."""

    capabilities = _VOLATILE

    def __init__(self, *, compression_threshold: int = 4096) -> None:
        self.compression_threshold = compression_threshold
        self.chunks: dict[bytes, tuple[int, bytes, int]] = {}  # digest -> (flags, stored, raw length)
        self._counters = {"dedup_hits": 0, "offered_bytes": 0, "raw_bytes": 0, "stored_bytes": 0}

    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        self._check_open()
        new_bytes = 0
        for digest, data in chunks:
            check_chunk_input(digest, data)
            self._counters["offered_bytes"] += len(data)
            if digest in self.chunks:
                self._counters["dedup_hits"] += 1
                continue
            flags, stored = encode_chunk(data, self.compression_threshold)
            self.chunks[digest] = (flags, stored, len(data))
            self._counters["raw_bytes"] += len(data)
            self._counters["stored_bytes"] += len(stored)
            new_bytes += len(stored)
        return new_bytes

    async def get_chunk(self, digest: bytes) -> bytes:
        self._check_open()
        entry = self.chunks.get(digest)
        if entry is None:
            raise BlockNotFoundError(f"no chunk {digest.hex()[:16]} in the memory store")
        flags, stored, raw_length = entry
        return decode_chunk(digest, flags, stored, raw_length, "memory")

    async def has_chunks(self, digests: Sequence[bytes]) -> set[bytes]:
        self._check_open()
        return {digest for digest in digests if digest in self.chunks}

    async def flush(self) -> None:
        self._check_open()

    async def scrub(self, read_data_fraction: float) -> list[str]:
        self._check_open()
        if not 0.0 <= read_data_fraction <= 1.0:
            raise FormatError(f"read_data_fraction must be within [0, 1], got {read_data_fraction}")
        salt = os.urandom(8)
        threshold = int(read_data_fraction * (1 << 64))
        problems = []
        for digest, (flags, stored, raw_length) in list(self.chunks.items()):
            sample = int.from_bytes(blake3.blake3(salt + digest).digest()[:8], "little")
            if read_data_fraction == 1.0 or sample < threshold:
                try:
                    decode_chunk(digest, flags, stored, raw_length, "memory")
                except Exception as error:  # noqa: BLE001 - every failure becomes a reported problem
                    problems.append(str(error))
        return problems

    async def put_records(self, records: Sequence[bytes]) -> int:
        self._check_open()
        new_bytes = 0
        for raw in records:
            digest = check_record_input(raw)
            if digest not in self.chunks:
                self.chunks[digest] = (FLAG_RECORD, bytes(raw), len(raw))
                new_bytes += len(raw)
        return new_bytes

    async def scan_records(self) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        self._check_open()
        records, problems = [], []
        for digest, (flags, stored, raw_length) in list(self.chunks.items()):
            if flags & FLAG_RECORD:
                try:
                    records.append(decode_chunk(digest, flags, stored, raw_length, "memory"))
                except IntegrityError as error:
                    problems.append(f"block record {error.message}")
        yield records, problems

    async def stats(self) -> dict[str, int | float]:
        raw, stored, offered = (self._counters[k] for k in ("raw_bytes", "stored_bytes", "offered_bytes"))
        return {
            "chunks": len(self.chunks),
            "records": sum(1 for flags, _, _ in self.chunks.values() if flags & FLAG_RECORD),
            "bytes_warm": self._counters["stored_bytes"],
            "bytes_cold": 0,
            "compression_ratio": raw / stored if stored else 1.0,
            "dedup_ratio": offered / raw if raw and offered else 1.0,
            **self._counters,
        }

    async def close(self) -> None:
        self._closed = True


def _query_order(record: BlockRecord) -> tuple[float, str]:
    return (record.timestamp, record.block_id)


class MemoryMetadataIndex(_Closable, MetadataIndex):
    """Records in a dict; queries scan them (fine for tests and small stores)."""

    capabilities = _VOLATILE

    def __init__(self) -> None:
        self.records: dict[str, BlockRecord] = {}
        self.tombstones: dict[str, int] = {}  # block id -> LSN of its deletion
        self._applied_lsn = 0

    async def put(self, records: Sequence[BlockRecord], *, applied_lsn: int | None = None,
                  newer_only: bool = False) -> None:
        self._check_open()
        if applied_lsn is not None and (not isinstance(applied_lsn, int) or applied_lsn < 0):
            raise FormatError(f"applied LSN must be a non-negative integer, got {applied_lsn!r}")
        for record in records:
            current = self.records.get(record.block_id)
            if record.deleted:
                if current is not None and (not newer_only or current.lsn < record.lsn):
                    del self.records[record.block_id]
                self.tombstones[record.block_id] = max(record.lsn, self.tombstones.get(record.block_id, 0))
                continue
            if newer_only and self.tombstones.get(record.block_id, 0) >= record.lsn:
                continue
            if not newer_only or current is None or record.lsn > current.lsn:
                self.records[record.block_id] = record
        if applied_lsn is not None:
            self._applied_lsn = max(self._applied_lsn, applied_lsn)

    async def get(self, block_id: str) -> BlockRecord | None:
        self._check_open()
        return self.records.get(block_id)

    async def query(
        self,
        *,
        agent_id: str | None = None,
        block_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        parent: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[BlockRecord]:
        self._check_open()
        check_query_limit(limit)
        cursor: tuple[float, str] | None = None
        if after is not None:
            if after not in self.records:
                raise BlockNotFoundError(f"paging cursor {after!r} names no block")
            cursor = _query_order(self.records[after])
        selected = [
            record
            for record in self.records.values()
            if (agent_id is None or record.agent_id == agent_id)
            and (block_type is None or record.block_type == block_type)
            and (since is None or record.timestamp >= since)
            and (until is None or record.timestamp < until)
            and (parent is None or parent in record.parents)
            and (cursor is None or _query_order(record) > cursor)
        ]
        selected.sort(key=_query_order)
        return selected[:limit]

    async def applied_lsn(self) -> int:
        self._check_open()
        return self._applied_lsn

    async def set_applied_lsn(self, lsn: int) -> None:
        await self.put([], applied_lsn=lsn)

    async def flush(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True

    async def count(self, block_type: str | None = None) -> int:
        self._check_open()
        if block_type is None:
            return len(self.records)
        return sum(1 for record in self.records.values() if record.block_type == block_type)


class MemoryVectorIndex(_Closable, VectorIndex):
    """Exact cosine search by brute force (numpy): the reference the HNSW index is measured against."""

    capabilities = Capabilities(durable=False, shared_between_processes=False, filtered_search=True)

    def __init__(self) -> None:
        self.items: dict[str, tuple[np.ndarray, dict[str, str]]] = {}
        self._ndim: int | None = None

    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        self._check_open()
        checked = [
            (block_id, check_vector(vector), check_attributes(attributes, "vector attributes"))
            for block_id, vector, attributes in items
        ]
        for block_id, vector, attributes in checked:
            check_vector(vector, self._ndim if self._ndim is not None else vector.shape[0])
            self._ndim = vector.shape[0]
            self.items[block_id] = (unit_vector(vector), attributes)

    async def remove(self, block_ids: Sequence[str]) -> int:
        self._check_open()
        return sum(1 for block_id in block_ids if self.items.pop(block_id, None) is not None)

    async def clear(self) -> None:
        self._check_open()
        self.items.clear()
        self._ndim = None

    async def search(
        self,
        query: np.ndarray,
        limit: int,
        *,
        score_threshold: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        self._check_open()
        check_search_limit(limit)
        wanted = check_attributes(filters, "search filters")
        vector = check_vector(query, self._ndim)
        candidates = [
            (block_id, unit) for block_id, (unit, attrs) in self.items.items() if matches(attrs, wanted)
        ]
        if not candidates or limit == 0:
            return []
        scores = np.stack([unit for _, unit in candidates]) @ unit_vector(vector)
        order = np.argsort(-scores, kind="stable")[:limit]
        hits = [(candidates[i][0], float(scores[i])) for i in order]
        return [hit for hit in hits if score_threshold is None or hit[1] >= score_threshold]

    async def flush(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True

    async def count(self) -> int:
        return len(self.items)

    @property
    def dimensions(self) -> int | None:
        return self._ndim


class MemoryObjectStore(_Closable, ObjectStore):
    """Objects in a dict; the reference ObjectStore."""

    capabilities = _VOLATILE

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes) -> None:
        self._check_open()
        self.objects[check_object_key(key)] = bytes(data)

    async def get(self, key: str) -> bytes:
        self._check_open()
        try:
            return self.objects[check_object_key(key)]
        except KeyError:
            raise BlockNotFoundError(f"no object {key!r}") from None

    async def exists(self, key: str) -> bool:
        self._check_open()
        return check_object_key(key) in self.objects

    async def delete(self, key: str) -> None:
        self._check_open()
        self.objects.pop(check_object_key(key), None)

    async def list(self, prefix: str = "") -> list[str]:
        self._check_open()
        return sorted(key for key in self.objects if key.startswith(prefix))

    async def close(self) -> None:
        self._closed = True


MemoryHotCache = LRUHotCache

__all__ = [
    "MemoryChunkStore",
    "MemoryHotCache",
    "MemoryMetadataIndex",
    "MemoryObjectStore",
    "MemoryVectorIndex",
]
