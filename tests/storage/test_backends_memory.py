"""The in-memory backends pass the shared conformance suite."""

from __future__ import annotations

from pathlib import Path

from maif.storage.backends.base import ChunkStore, HotCache, MetadataIndex, ObjectStore, VectorIndex
from maif.storage.backends.memory import (
    MemoryChunkStore,
    MemoryHotCache,
    MemoryMetadataIndex,
    MemoryObjectStore,
    MemoryVectorIndex,
)
from maif.testing.conformance import (
    ChunkStoreTests,
    HotCacheTests,
    MetadataIndexTests,
    ObjectStoreTests,
    VectorIndexTests,
)


class TestMemoryChunkStore(ChunkStoreTests):
    def make_store(self, directory: Path) -> ChunkStore:
        return MemoryChunkStore(compression_threshold=self.compression_threshold)

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        assert isinstance(store, MemoryChunkStore)
        flags, stored, raw_length = store.chunks[digest]
        damaged = bytes([stored[len(stored) // 2] ^ 0x01])
        store.chunks[digest] = (
            flags,
            stored[: len(stored) // 2] + damaged + stored[len(stored) // 2 + 1 :],
            raw_length,
        )

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        assert isinstance(store, MemoryChunkStore)
        return len(store.chunks[digest][1])


class TestMemoryMetadataIndex(MetadataIndexTests):
    def make_index(self, directory: Path) -> MetadataIndex:
        return MemoryMetadataIndex()


class TestMemoryVectorIndex(VectorIndexTests):
    def make_index(self, directory: Path) -> VectorIndex:
        return MemoryVectorIndex()


class TestMemoryHotCache(HotCacheTests):
    def make_cache(self, capacity_bytes: int) -> HotCache:
        return MemoryHotCache(capacity_bytes)


class TestMemoryObjectStore(ObjectStoreTests):
    def make_store(self, directory: Path) -> ObjectStore:
        return MemoryObjectStore()
