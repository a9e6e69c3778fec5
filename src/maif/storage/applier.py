"""Applying committed log records to the backends, off the acknowledgement path.

A write is acknowledged once its log record is durable; everything else happens here, later, in batches:
split the payload into content-defined chunks -> ``ChunkStore.put_chunk_data`` (which hashes them) ->
the block's record, the authoritative copy, beside them (``ChunkStore.put_records``) -> ``MetadataIndex.put``
(derived: rebuildable from those records, see :mod:`maif.storage.rebuild`) -> ``VectorIndex.add``
for embeddings (``remove`` when a block id that held one is overwritten by another type).
A *checkpoint* then makes the applied state durable in the order
recovery relies on (chunks, vectors, then the index with the applied LSN) before the log may forget
the records: so ``MetadataIndex.applied_lsn`` never names a record whose chunks could be lost, and
replaying from it is always enough (every step is idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import encode_metadata
from maif.storage.backends.base import ChunkStore, MetadataIndex, VectorIndex
from maif.storage.chunking import chunk_min_bytes, split_views
from maif.storage.records import BlockRecord, encode_record, tombstone_record

# Fixed bookkeeping cost charged per block in memory accounting, on top of its encoded size.
ITEM_OVERHEAD_BYTES = 512


@dataclass(slots=True)
class LogItem:
    """One acknowledged (or being acknowledged) block on its way to the backends."""

    block: MAIFBlock
    encoded: bytes
    digest: bytes
    vector: np.ndarray | None
    lsn: int = 0
    deleted: bool = False  # a tombstone: ``block`` carries only the id of the block deleted
    position: tuple[int, int] | None = None  # (partition, offset) once in a Kafka-protocol log

    @property
    def cost_bytes(self) -> int:
        return len(self.encoded) + ITEM_OVERHEAD_BYTES


def type_name(block: MAIFBlock) -> str:
    """The block's FourCC as text (``MAIFBlock.type_name`` without its enum round trip: hot path)."""
    kind = block.block_type
    return kind.value if isinstance(kind, MAIFBlockType) else kind


def vector_attributes(block: MAIFBlock) -> dict[str, str]:
    """The attributes semantic search may filter on."""
    return {"agent_id": block.agent_id, "block_type": type_name(block)}


def record_of(item: LogItem, chunk_digests: tuple[bytes, ...]) -> BlockRecord:
    block = item.block
    return BlockRecord(block_id=block.id, block_type=type_name(block), agent_id=block.agent_id,
                       timestamp=block.timestamp, version=block.version, parents=block.parents,
                       metadata=encode_metadata(block.metadata), chunks=chunk_digests,
                       payload_length=len(block.data), digest=item.digest, lsn=item.lsn)


def _note_rejected(rejected: set[str], block_ids: Sequence[str], part_rejected: frozenset[str]) -> None:
    """After the put of a part: its rejected ids are rejected, the others it wrote no longer are (the
    last write of an id decides its vector)."""
    for block_id in block_ids:
        if block_id in part_rejected:
            rejected.add(block_id)
        else:
            rejected.discard(block_id)


class Applier:
    """Applies batches of log items to a chunk store, a metadata index and a vector index."""

    # Records per pipelined part of a batch (see apply): smaller parts overlap more of a batch, and
    # each costs a commit and three thread crossings.
    part_records_max = 256

    def __init__(self, chunks: ChunkStore, index: MetadataIndex, vectors: VectorIndex) -> None:
        self.chunks = chunks
        self.index = index
        self.vectors = vectors
        self.raw_payload_bytes_total = 0
        self.new_chunk_bytes_total = 0

    async def apply(self, items: Sequence[LogItem]) -> None:
        """Apply ``items`` (in LSN order); idempotent, so replaying a batch twice is harmless.

        A large batch goes in parts of at most ``part_records_max``, pipelined: the index put of one
        part (SQLite steps outside the GIL; PostgreSQL waits on the network) runs while the chunks and
        records of the next are written. Each part is indexed after its own chunks and records, the
        parts' puts go one after another in order (as separate puts of a batch each would), and this
        returns only once every part is indexed, or raises the first failure once nothing of the call
        still runs: to the caller, one batch as before."""
        lsns = [item.lsn for item in items]
        assert lsns == sorted(set(lsns)), "items out of order"  # strictly increasing, checked in C
        last_of: dict[str, LogItem] = {item.block.id: item for item in items}  # decides each id's vector
        rejected: set[str] = set()
        parts = max(1, -(-len(items) // self.part_records_max))
        step = max(1, -(-len(items) // parts))  # parts of equal size
        indexing: asyncio.Task[frozenset[str]] | None = None
        indexing_ids: Sequence[str] = ()
        try:
            for start in range(0, len(items), step):
                part = items[start:start + step]
                records = await self._store(part)
                if indexing is not None:
                    _note_rejected(rejected, indexing_ids, await indexing)
                indexing = asyncio.create_task(self._index(records))
                indexing_ids = [record.block_id for record in records]
            if indexing is not None:
                _note_rejected(rejected, indexing_ids, await indexing)
        finally:
            if indexing is not None and not indexing.done():  # a part's write failed (or we were
                await asyncio.wait({indexing})  # cancelled): the put in flight ends before we do
                if not indexing.cancelled():
                    indexing.exception()  # retrieved: the failure raised is the write's
        # A shared index may keep another node's version of a block id (a conflict, ADR 0070): then
        # that version's vector stays too.
        embeddings = [(block_id, item.vector, vector_attributes(item.block))
                      for block_id, item in last_of.items() if item.vector is not None
                      and block_id not in rejected]
        replaced = [block_id for block_id, item in last_of.items() if item.vector is None
                    and block_id not in rejected]
        if replaced:  # a block id that held an embedding and now holds another type loses its vector
            await self.vectors.remove(replaced)
        if embeddings:
            await self.vectors.add(embeddings)

    async def _store(self, items: Sequence[LogItem]) -> list[BlockRecord]:
        """Write the chunks of ``items`` and their block records to the chunk store; the records."""
        pieces: list[bytes | memoryview] = []
        piece_counts: list[int] = []
        small_max = 2 * chunk_min_bytes  # below it a payload is one chunk (split_views, without a call)
        for item in items:
            if item.deleted:
                continue
            data = item.block.data
            if 0 < len(data) < small_max:
                pieces.append(data)
                piece_counts.append(1)
            else:
                views = split_views(data)
                pieces.extend(bytes(view) for view in views)
                piece_counts.append(len(views))
            self.raw_payload_bytes_total += len(data)
        digests: list[bytes] = []
        if pieces:
            # The store addresses each chunk by the BLAKE3 digest it computes: hashed once here.
            digests, added = await self.chunks.put_chunk_data(pieces)
            assert len(digests) == len(pieces), "one digest per chunk"
            self.new_chunk_bytes_total += added
        records: list[BlockRecord] = []
        counts = iter(piece_counts)
        position = 0
        for item in items:
            if item.deleted:
                records.append(tombstone_record(item.block.id, item.lsn))
                continue
            count = next(counts)
            records.append(record_of(item, tuple(digests[position:position + count])))
            position += count
        # The authoritative copy of each record goes beside the chunks (durable with them at the
        # checkpoint, before the log forgets the records): the index is derived from it.
        await self.chunks.put_records([encode_record(record) for record in records])
        return records

    async def _index(self, records: list[BlockRecord]) -> frozenset[str]:
        """Index ``records``; the ids a shared index kept another node's version of."""
        await self.index.put(records)
        return getattr(self.index, "last_put_rejected", frozenset())

    async def flush(self) -> None:
        """Make the chunks and vectors applied so far durable (the index follows in :meth:`checkpoint`;
        a shared index's rows are durable at each put)."""
        await self.chunks.flush()
        await self.vectors.flush()

    async def checkpoint(self, applied_lsn: int) -> None:
        """Make everything applied up to ``applied_lsn`` durable, in recovery's order."""
        await self.flush()
        await self.index.set_applied_lsn(applied_lsn)
        await self.index.flush()


__all__ = ["ITEM_OVERHEAD_BYTES", "Applier", "LogItem", "record_of", "vector_attributes"]
