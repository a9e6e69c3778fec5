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
    """The block's FourCC as text (``MAIFBlock.type_name`` without its enum round trip: hot path).
    ``_value_`` is the member's value as a plain attribute: ``.value`` goes through a Python-level
    descriptor, 0.1 us per block of the applier's time on the event loop."""
    kind = block.block_type
    return kind._value_ if isinstance(kind, MAIFBlockType) else kind


def vector_attributes(block: MAIFBlock) -> dict[str, str]:
    """The attributes semantic search may filter on."""
    return {"agent_id": block.agent_id, "block_type": type_name(block)}


def record_of(item: LogItem, chunk_digests: tuple[bytes, ...]) -> BlockRecord:
    block = item.block
    return BlockRecord(block_id=block.id, block_type=type_name(block), agent_id=block.agent_id,
                       timestamp=block.timestamp, version=block.version, parents=block.parents,
                       metadata=encode_metadata(block.metadata), chunks=chunk_digests,
                       payload_length=len(block.data), digest=item.digest, lsn=item.lsn)


class Applier:
    """Applies batches of log items to a chunk store, a metadata index and a vector index."""

    def __init__(self, chunks: ChunkStore, index: MetadataIndex, vectors: VectorIndex) -> None:
        self.chunks = chunks
        self.index = index
        self.vectors = vectors
        self.raw_payload_bytes_total = 0
        self.new_chunk_bytes_total = 0

    async def apply(self, items: Sequence[LogItem]) -> None:
        """Apply ``items`` (in LSN order); idempotent, so replaying a batch twice is harmless."""
        lsns = [item.lsn for item in items]
        assert lsns == sorted(set(lsns)), "items out of order"  # strictly increasing, checked in C
        pieces: list[bytes | memoryview] = []
        piece_counts: list[int] = []
        last_of: dict[str, LogItem] = {}  # the last write of each block id in this batch decides its vector
        small_max = 2 * chunk_min_bytes  # below it a payload is one chunk (split_views, without a call)
        for item in items:
            last_of[item.block.id] = item
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
        # checkpoint, before the log forgets the records): the index below is derived from it.
        await self.chunks.put_records([encode_record(record) for record in records])
        await self.index.put(records)
        # A shared index may keep another node's version of a block id (a conflict, ADR 0070): then
        # that version's vector stays too.
        rejected: frozenset[str] = getattr(self.index, "last_put_rejected", frozenset())
        embeddings = [(block_id, item.vector, vector_attributes(item.block))
                      for block_id, item in last_of.items() if item.vector is not None
                      and block_id not in rejected]
        replaced = [block_id for block_id, item in last_of.items() if item.vector is None
                    and block_id not in rejected]
        if replaced:  # a block id that held an embedding and now holds another type loses its vector
            await self.vectors.remove(replaced)
        if embeddings:
            await self.vectors.add(embeddings)

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
