"""The shared-store chunk store (packs as immutable objects, locations in a shared index) passes the
conformance suite over a local directory of objects and in memory; two instances (two nodes) share
chunks and deduplicate across each other."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import blake3

from maif.storage.backends.base import ChunkStore
from maif.storage.backends.local import LocalObjectStore
from maif.storage.backends.memory import MemoryObjectStore
from maif.storage.backends.objectpacks import MemoryLocationIndex, ObjectPackChunkStore
from maif.testing.conformance import ChunkStoreTests


class TestObjectPackChunkStore(ChunkStoreTests):
    """Over a local directory of objects, so reopen (a new node instance) sees the same store."""

    def make_store(self, directory: Path) -> ChunkStore:
        self.locations = getattr(self, "locations", None) or MemoryLocationIndex()
        return ObjectPackChunkStore(LocalObjectStore(directory / "objects"), self.locations, node_id="n1",
                                    compression_threshold=self.compression_threshold)

    def reopen(self, store: ChunkStore, directory: Path) -> ChunkStore | None:
        assert isinstance(store, ObjectPackChunkStore)
        locations = MemoryLocationIndex()
        locations.entries = dict(store.locations.entries)  # type: ignore[attr-defined]
        return ObjectPackChunkStore(LocalObjectStore(directory / "objects"), locations, node_id="n2",
                                    compression_threshold=self.compression_threshold)

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        assert isinstance(store, ObjectPackChunkStore)
        if corrupt_buffered(store, digest):
            return
        location = store.locations.entries[digest]  # type: ignore[attr-defined]
        assert isinstance(store.objects, LocalObjectStore)
        path = store.objects.root / location.key
        data = bytearray(path.read_bytes())
        data[location.offset + 48 + location.stored_length // 2] ^= 0x01
        path.write_bytes(bytes(data))

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        return stored_length(store, digest)


def corrupt_buffered(store: ObjectPackChunkStore, digest: bytes) -> bool:
    """Flip a byte of a chunk still in the upload buffer (True), or leave it to the object (False)."""
    buffered = store._buffered.get(digest)
    if buffered is None:
        return False
    flags, stored, raw_length = buffered
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0x01
    store._buffered[digest] = (flags, bytes(damaged), raw_length)
    return True


def stored_length(store: ChunkStore, digest: bytes) -> int:
    assert isinstance(store, ObjectPackChunkStore)
    buffered = store._buffered.get(digest)
    if buffered is not None:
        return len(buffered[1])
    return int(store.locations.entries[digest].stored_length)  # type: ignore[attr-defined]


class TestObjectPackChunkStoreInMemory(ChunkStoreTests):
    def make_store(self, directory: Path) -> ChunkStore:
        return ObjectPackChunkStore(MemoryObjectStore(), MemoryLocationIndex(), node_id="n1",
                                    compression_threshold=self.compression_threshold)

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        assert isinstance(store, ObjectPackChunkStore) and isinstance(store.objects, MemoryObjectStore)
        if corrupt_buffered(store, digest):
            return
        location = store.locations.entries[digest]  # type: ignore[attr-defined]
        data = bytearray(store.objects.objects[location.key])
        data[location.offset + 48 + location.stored_length // 2] ^= 0x01
        store.objects.objects[location.key] = bytes(data)

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        return stored_length(store, digest)


def test_two_nodes_share_chunks_and_deduplicate_across_each_other(tmp_path: Path) -> None:
    async def scenario() -> None:
        locations = MemoryLocationIndex()
        node_a = ObjectPackChunkStore(LocalObjectStore(tmp_path), locations, node_id="a")
        node_b = ObjectPackChunkStore(LocalObjectStore(tmp_path), locations, node_id="b")
        data = os.urandom(50_000)
        digest = blake3.blake3(data).digest()
        await node_a.put_chunks([(digest, data)])
        assert await node_a.get_chunk(digest) == data  # read-your-writes from the buffer
        assert digest not in await node_b.has_chunks([digest])  # not uploaded yet: not visible
        await node_a.put_records([b"a record ends the batch"])
        assert await node_b.get_chunk(digest) == data
        assert await node_b.put_chunks([(digest, data)]) == 0  # stored once across nodes
        await node_b.flush()
        keys = await node_a.objects.list("packs/")
        assert len(keys) == 1 and keys[0].startswith("packs/a/")
        records = [raw async for batch, _ in node_b.scan_records() for raw in batch]
        assert records == [b"a record ends the batch"]
        await node_a.close()
        await node_b.close()

    asyncio.run(scenario())
