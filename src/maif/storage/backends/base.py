"""The storage backend interfaces: one async ABC per job, each with capability flags.

The engine talks only to these classes; every implementation (memory, local, and later Redis,
PostgreSQL, S3, ...) passes the shared conformance suite in :mod:`maif.testing.conformance`.

    ChunkStore      content-addressed chunks (BLAKE3 digest -> bytes) in append-only pack files
    MetadataIndex   one BlockRecord per block, queryable by agent, type, time and parent
    VectorIndex     embeddings searchable by cosine similarity, with string filters
    HotCache        an in-process cache bounded in bytes (synchronous: it never waits on I/O)
    SharedCache     a cache several processes share (Redis), checked against digests on read
    ObjectStore     the cold tier: whole objects by key (a local directory now; S3 later)

Failures of the world (disk, server) raise :class:`maif.errors.BackendError`; corrupted data raises
:class:`maif.errors.IntegrityError`; use after ``close`` raises :class:`maif.errors.StoreClosedError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from maif import limits
from maif.errors import FormatError, LimitExceededError
from maif.storage.chunking import chunk_digest
from maif.storage.records import BlockRecord


@dataclass(frozen=True)
class Capabilities:
    """What a backend promises, so the engine and the tests can adapt without isinstance checks.

    durable                   data survives a process crash once ``flush`` returned
    shared_between_processes  several processes may open the same store at once
    filtered_search           the vector index filters natively (else: over-fetch, then filter)
    """

    durable: bool
    shared_between_processes: bool
    filtered_search: bool = False


class ChunkStore(ABC):
    """Content-addressed chunks kept in append-only pack files (never a file per chunk)."""

    capabilities: Capabilities

    @abstractmethod
    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        """Store ``(digest, data)`` pairs where digest = BLAKE3(data).

        Idempotent and deduplicating by digest; compresses with zstd when it pays. Returns the number
        of NEW stored bytes (after compression). Durable only after :meth:`flush`.
        """

    async def put_chunk_data(self, pieces: Sequence[bytes | memoryview]) -> tuple[list[bytes], int]:
        """Store each of ``pieces`` as a chunk addressed by its BLAKE3 digest, computed by this call;
        returns ``(digests in order, NEW stored bytes)``. The applier's path: it hashes each chunk once
        where :meth:`put_chunks` hashes it again to check the digest it was given. This default does
        exactly that (so a wrapper around ``put_chunks`` sees the call); a store may hash only once.
        A chunk over ``limits.chunk_bytes_max`` is refused (LimitExceededError) before any is stored."""
        for data in pieces:
            if len(data) > limits.chunk_bytes_max:
                raise LimitExceededError("chunk size", len(data), limits.chunk_bytes_max)
        digests = [chunk_digest(data) for data in pieces]
        added = await self.put_chunks([(digest, bytes(data)) for digest, data in zip(digests, pieces,
                                                                                      strict=True)])
        return digests, added

    @abstractmethod
    async def get_chunk(self, digest: bytes) -> bytes:
        """The chunk's bytes, verified against its BLAKE3 digest (IntegrityError if they differ).

        Raises :class:`maif.errors.BlockNotFoundError` when no chunk has that digest.
        """

    @abstractmethod
    async def has_chunks(self, digests: Sequence[bytes]) -> set[bytes]:
        """The subset of ``digests`` this store holds."""

    @abstractmethod
    async def flush(self) -> None:
        """Make every stored chunk durable: pack data synced first, then the pack index."""

    @abstractmethod
    async def scrub(self, read_data_fraction: float) -> list[str]:
        """Check the store like ``restic check``; returns the problems found (empty when healthy).

        Structure is always checked; ``read_data_fraction`` (0.0 to 1.0) of the chunks are also read
        back and verified against their digests.
        """

    @abstractmethod
    async def put_records(self, records: Sequence[bytes]) -> int:
        """Store encoded :class:`BlockRecord` s: the authoritative copy of every block's record.

        They live beside the chunks (in the same packs, moving between the same tiers), addressed by
        :func:`maif.storage.packs.record_digest`, a digest domain-separated from payload chunks so no
        payload can pose as a record. The metadata index is derived state rebuilt from them.
        Idempotent; durable only after :meth:`flush`. Returns the NEW stored bytes.
        """

    @abstractmethod
    def scan_records(self) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        """Every stored record, verified, in batches (a pack at a time), each with the problems met
        (a damaged frame, a missing pack): damage costs what it hit and is named, never more."""

    @abstractmethod
    async def stats(self) -> dict[str, int | float]:
        """Counters: chunks, stored and raw bytes, packs, dedup hits, records, ..."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and release resources; later calls raise StoreClosedError. Safe to call twice."""


def check_get_many(block_ids: Sequence[str]) -> None:
    if len(block_ids) > limits.index_get_many_max:
        raise LimitExceededError("block ids per lookup", len(block_ids), limits.index_get_many_max)


class MetadataIndex(ABC):
    """One :class:`BlockRecord` per block id, with the log position applied so far."""

    capabilities: Capabilities

    @abstractmethod
    async def put(self, records: Sequence[BlockRecord], *, applied_lsn: int | None = None,
                  newer_only: bool = False) -> None:
        """Upsert records by block_id (idempotent); with ``applied_lsn``, store it in the same transaction.

        A record with ``deleted`` set is a tombstone: the block's record goes, and the tombstone's LSN is
        kept so that no older record of the block is indexed again.
        With ``newer_only`` a record replaces an existing one only when its ``lsn`` is higher, and is
        skipped when a tombstone of a higher LSN exists (a rebuild streams records in any order and the
        last writer by LSN must win)."""

    @abstractmethod
    async def get(self, block_id: str) -> BlockRecord | None:
        """The record of ``block_id``, or None."""

    async def get_many(self, block_ids: Sequence[str]) -> dict[str, BlockRecord]:
        """The records of those of ``block_ids`` that have one (at most ``limits.index_get_many_max``
        ids per call). This default asks :meth:`get` once per id; a server-backed index answers in one
        round trip."""
        check_get_many(block_ids)
        found: dict[str, BlockRecord] = {}
        for block_id in dict.fromkeys(block_ids):
            record = await self.get(block_id)
            if record is not None:
                found[block_id] = record
        return found

    @abstractmethod
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
        """Records matching every given filter, ordered by (timestamp, block_id).

        ``since`` is inclusive and ``until`` exclusive (Unix seconds); ``parent`` selects the children
        of a block; ``after`` is the block_id of the last record of the previous page (keyset paging).
        """

    @abstractmethod
    async def applied_lsn(self) -> int:
        """The highest log sequence number whose records are in this index (0 when empty)."""

    @abstractmethod
    async def set_applied_lsn(self, lsn: int) -> None:
        """Record that the log has been applied up to ``lsn``."""

    @abstractmethod
    async def flush(self) -> None:
        """Make every put durable."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and release resources. Safe to call twice."""

    @abstractmethod
    async def count(self, block_type: str | None = None) -> int:
        """Number of records (of ``block_type`` only, when given)."""


class VectorIndex(ABC):
    """Embeddings (float32) by block id, searchable by cosine similarity with string filters."""

    capabilities: Capabilities

    @abstractmethod
    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        """Add ``(block_id, vector, filterable attributes)``; re-adding an id replaces it."""

    @abstractmethod
    async def search(
        self,
        query: np.ndarray,
        limit: int,
        *,
        score_threshold: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``limit`` most similar ``(block_id, cosine similarity)``, best first.

        Only items whose attributes equal every ``filters`` entry, and whose similarity is at least
        ``score_threshold`` when given.
        """

    @abstractmethod
    async def remove(self, block_ids: Sequence[str]) -> int:
        """Forget the vectors of ``block_ids`` (ids without one are ignored); returns how many went."""

    @abstractmethod
    async def clear(self) -> None:
        """Forget every vector (and the dimension): the start of a rebuild."""

    @abstractmethod
    async def flush(self) -> None:
        """Persist the index (and the id mapping) durably."""

    @abstractmethod
    async def close(self) -> None:
        """Flush and release resources. Safe to call twice."""

    @abstractmethod
    async def count(self) -> int:
        """Number of vectors."""

    @property
    def dimensions(self) -> int | None:
        """The dimension every vector in the index has, or None while the index is empty."""
        return None


class HotCache(ABC):
    """A cache bounded in BYTES. Synchronous on purpose: it is in-process and never waits on I/O."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The cached value, or None (counts a hit or a miss)."""

    @abstractmethod
    def put(self, key: str, value: bytes) -> None:
        """Cache ``value``, evicting least recently used entries to stay within the byte bound."""

    @abstractmethod
    def discard(self, key: str) -> None:
        """Forget ``key`` if cached."""

    @abstractmethod
    def stats(self) -> dict[str, int | float]:
        """hits, misses, hit_rate, entries, bytes, capacity_bytes, evictions."""


class SharedCache(ABC):
    """A cache several processes share (Redis): the tier between each process's HotCache and the warm
    store. Asynchronous (it crosses the network). Bounded by the server (``maxmemory`` with an LRU
    policy) and by ``value_bytes_max`` per entry. Values are only hints: the engine checks every value
    it gets against the block's digest from the metadata index, so a poisoned or stale entry can never
    return wrong bytes, and an unreachable cache is a miss, never an error for the reader.
    """

    capabilities: Capabilities

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The cached value, or None (a miss, or the cache is unreachable: counted in stats)."""

    @abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Cache ``value`` (best effort: failures are counted, never raised)."""

    @abstractmethod
    async def discard(self, key: str) -> None:
        """Forget ``key`` (best effort, like put)."""

    @abstractmethod
    async def stats(self) -> dict[str, int | float]:
        """hits, misses, errors, puts, ..."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Safe to call twice."""


class ObjectStore(ABC):
    """Whole objects by key: the cold tier. Keys are relative, '/'-separated, no '..' segments."""

    capabilities: Capabilities

    @abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically (readers see the old object or the new, never a mix)."""

    @abstractmethod
    async def get(self, key: str) -> bytes:
        """The object's bytes; BlockNotFoundError when absent."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of the object from ``offset`` (fewer at its end). Backends with ranged reads
        (a local file, S3 Range requests) override this; the default reads the whole object."""
        data = await self.get(key)
        return data[offset : offset + length]

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key``; deleting an absent key is not an error."""

    @abstractmethod
    async def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""

    @abstractmethod
    async def close(self) -> None:
        """Release resources. Safe to call twice."""


def check_object_key(key: str) -> str:
    """An ObjectStore key: non-empty '/'-separated segments of [A-Za-z0-9._-], none '.' or '..'."""
    if not isinstance(key, str) or not key:
        raise FormatError("object key must be a non-empty string")
    if len(key.encode("utf-8")) > limits.object_key_bytes_max:
        raise LimitExceededError("object key length", len(key.encode("utf-8")), limits.object_key_bytes_max)
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not all(
            c.isascii() and (c.isalnum() or c in "._-") for c in segment
        ):
            raise FormatError(f"object key {key[:80]!r} has an invalid segment {segment[:40]!r}")
    return key


__all__ = [
    "BlockRecord",
    "Capabilities",
    "ChunkStore",
    "HotCache",
    "MetadataIndex",
    "ObjectStore",
    "SharedCache",
    "VectorIndex",
    "check_object_key",
]
