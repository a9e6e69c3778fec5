"""Storage backends: the async ABCs (:mod:`.base`), the in-memory and local-disk implementations
(:mod:`.memory`, :mod:`.local`), cross-cutting wrappers (:mod:`.wrappers`: retry, latency, faults),
and the distributed ones (extra ``maif[distributed]``): :mod:`.postgres` (metadata index, pgvector),
:mod:`.s3` (objects), :mod:`.objectpacks` (chunks shared by several nodes), :mod:`.redis_cache`
(shared cache), :mod:`.qdrant` (vectors).

Import implementations from their modules (``from maif.storage.backends.local import LocalChunkStore``)
so that importing the interfaces never pulls in SQLite or usearch.
"""

from maif.storage.backends.base import (
    Capabilities,
    ChunkStore,
    HotCache,
    MetadataIndex,
    ObjectStore,
    SharedCache,
    VectorIndex,
)

__all__ = ["Capabilities", "ChunkStore", "HotCache", "MetadataIndex", "ObjectStore", "SharedCache",
           "VectorIndex"]
