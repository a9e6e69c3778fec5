"""Storage backends: the async ABCs (:mod:`.base`), the in-memory and local-disk implementations
(:mod:`.memory`, :mod:`.local`) and cross-cutting wrappers (:mod:`.wrappers`: retry, latency, faults).

Import implementations from their modules (``from maif.storage.backends.local import LocalChunkStore``)
so that importing the interfaces never pulls in SQLite or usearch.
"""

from maif.storage.backends.base import (
    Capabilities,
    ChunkStore,
    HotCache,
    MetadataIndex,
    ObjectStore,
    VectorIndex,
)

__all__ = ["Capabilities", "ChunkStore", "HotCache", "MetadataIndex", "ObjectStore", "VectorIndex"]
