"""The backends a configuration with server URLs asks for (docs/adr/0070-scale-out.md).

    postgres_url               metadata index in PostgreSQL, vectors in pgvector
    + s3_endpoint, s3_bucket   chunks in S3 as immutable pack objects located through PostgreSQL:
                               several nodes (each its own data_dir and log) serve one store
    s3_* without postgres_url  S3 is the cold tier of the local packs (one node)
    qdrant_url                 vectors in Qdrant (a server URL; "local" = qdrant-client's embedded
                               local mode under data_dir/qdrant, one process, for trying it out)
    redis_url                  a cache shared by the nodes, every value checked against its digest

Every server is reached once at open so a wrong URL fails at start, in one line naming the server and
its configuration key (a ConfigError); refused credentials are a CredentialsError. Client libraries
come with the extra ``maif[distributed]``; asking for a server without them is a ConfigError saying
so. No message carries a password or a secret-bearing URL (each backend redacts its own).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from maif.config import StorageConfig
from maif.errors import BackendError, ConfigError, CredentialsError
from maif.storage.backends.base import ChunkStore, MetadataIndex, SharedCache, VectorIndex
from maif.storage.health import Health

NODE_FILE = "NODE"
_REQUIREMENT_HINT = "install the client libraries: pip install 'maif[distributed]'"


def wants_servers(config: StorageConfig) -> bool:
    return any(getattr(config, key) is not None
               for key in ("postgres_url", "s3_endpoint", "s3_bucket", "qdrant_url", "redis_url"))


def node_id_of(config: StorageConfig) -> str:
    """This node's id: ``node_id`` from the configuration, else a random id kept in ``data_dir/NODE``."""
    if config.node_id is not None:
        if not config.node_id or len(config.node_id) > 64 or not all(
                character.isalnum() or character in "-_." for character in config.node_id):
            raise ConfigError(f"node_id {config.node_id[:80]!r} must be 1-64 characters of [A-Za-z0-9._-]")
        return config.node_id
    path = Path(config.data_dir) / NODE_FILE
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text().strip()
        if stored:
            return stored
    path.parent.mkdir(parents=True, exist_ok=True)
    node = f"node-{secrets.token_hex(6)}"
    temporary = path.with_name(NODE_FILE + ".tmp")
    temporary.write_text(node + "\n")
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return node


async def open_backends(config: StorageConfig, cache_bytes: int) -> Any:
    """The :class:`~maif.storage.engine.Backends` for a configuration that names servers, each reached
    once; on any failure everything opened so far is closed again."""
    from maif.storage.cache import LRUHotCache
    from maif.storage.engine import Backends

    if (config.s3_endpoint is None) != (config.s3_bucket is None):
        raise ConfigError("s3_endpoint and s3_bucket go together: set both or neither")
    node = node_id_of(config)
    health = Health()
    opened: list[Any] = []
    try:
        index: MetadataIndex | None = None
        vectors: VectorIndex | None = None
        chunks: ChunkStore | None = None
        if config.postgres_url is not None:
            postgres = _module("maif.storage.backends.postgres")
            index = await _reach(postgres.PostgresMetadataIndex(config.postgres_url, node_id=_writer_of(
                config, node), health=health).open(),
                                 "PostgreSQL", "postgres_url", opened)
            if config.qdrant_url is None:
                vectors = await _reach(postgres.PgVectorIndex(config.postgres_url, node_id=node,
                                                              health=health).open(),
                                       "PostgreSQL (pgvector)", "postgres_url", opened)
        if config.qdrant_url is not None:
            vectors = await _open_qdrant(config, opened)
        if config.s3_endpoint is not None and config.s3_bucket is not None:
            s3 = _module("maif.storage.backends.s3")
            objects = s3.S3ObjectStore(endpoint_url=config.s3_endpoint, bucket=config.s3_bucket,
                                       health=health)
            await _reach(objects.open(), "S3", "s3_endpoint", opened, closer=objects)
            if config.postgres_url is not None:
                from maif.storage.backends.objectpacks import ObjectPackChunkStore

                postgres = _module("maif.storage.backends.postgres")
                locations = postgres.PostgresLocationIndex(config.postgres_url, node_id=node, health=health)
                await _reach(locations.open(), "PostgreSQL", "postgres_url", opened, closer=locations)
                chunks = ObjectPackChunkStore(objects, locations, node_id=node,
                                              compression_threshold=config.compression_threshold)
            else:
                chunks = _local_chunks_with_cold(config, objects)
        shared: SharedCache | None = None
        if config.redis_url is not None:
            redis_cache = _module("maif.storage.backends.redis_cache")
            shared = redis_cache.RedisSharedCache(
                config.redis_url, prefix=f"maif:{config.s3_bucket or 'store'}:", health=health)
            opened.append(shared)
        # What no server replaces stays embedded under data_dir.
        from maif.storage.backends import local

        data_dir = Path(config.data_dir)
        if chunks is None:
            chunks = _local_chunks_with_cold(config, local.LocalObjectStore(data_dir / "cold"))
            opened.append(chunks)
        if vectors is None:
            vectors = local.LocalVectorIndex(data_dir / "vectors")
            opened.append(vectors)
        if index is None:
            index = local.LocalMetadataIndex(data_dir / "index.sqlite")
            opened.append(index)
        index, vectors, chunks = _retrying(config, index, vectors, chunks)
        return Backends(chunks=chunks, index=index, vectors=vectors, cache=LRUHotCache(cache_bytes),
                        shared_cache=shared, health=health)
    except BaseException:
        for backend in reversed(opened):
            with contextlib.suppress(Exception):
                await backend.close()
        raise


def _writer_of(config: StorageConfig, node: str) -> str:
    """Who the index rows name as their writer (ADR 0070's cross-node conflicts). With a shared log
    (Kafka, ADR 0073; NATS, ADR 0084) the log itself is the one writer: it orders every write of a key,
    and whichever node applies a record must be able to replace the rows an earlier record of the same
    log wrote."""
    if config.log != "local":
        return f"log.{config.log_name}"
    return node


def _retrying(config: StorageConfig, index: MetadataIndex, vectors: VectorIndex,
              chunks: ChunkStore) -> tuple[MetadataIndex, VectorIndex, ChunkStore]:
    """Each backend that talks to a server behind a retry wrapper; the embedded ones as they are (their
    failures are not a server's hiccup)."""
    from maif.storage.backends.wrappers import (
        RetryingChunkStore,
        RetryingMetadataIndex,
        RetryingVectorIndex,
        RetryPolicy,
    )

    if config.postgres_url is not None:
        index = RetryingMetadataIndex(index, RetryPolicy())
    if config.qdrant_url is not None or config.postgres_url is not None:
        vectors = RetryingVectorIndex(vectors, RetryPolicy())
    if config.s3_endpoint is not None:
        chunks = RetryingChunkStore(chunks, policy=RetryPolicy())  # shared packs, or S3 the cold tier
    return index, vectors, chunks


def _module(name: str) -> Any:
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(f"a distributed backend needs a library that is not installed ({error.name})",
                          hint=_REQUIREMENT_HINT) from None


async def _reach(opening: Any, server: str, key: str, opened: list[Any], *, closer: Any = None) -> Any:
    """Await a backend's open; an unreachable server becomes a ConfigError naming it and its key."""
    try:
        backend = await opening
    except CredentialsError:
        if closer is not None:
            opened.append(closer)
        raise
    except BackendError as error:
        if closer is not None:
            opened.append(closer)
        raise ConfigError(f"{server} ({key}): {error.message}", hint=error.hint) from error
    opened.append(closer if closer is not None else backend)
    return backend


async def _open_qdrant(config: StorageConfig, opened: list[Any]) -> VectorIndex:
    qdrant = _module("maif.storage.backends.qdrant")
    assert config.qdrant_url is not None
    if config.qdrant_url == "local":
        index = qdrant.QdrantVectorIndex(path=str(Path(config.data_dir) / "qdrant"))
    else:
        index = qdrant.QdrantVectorIndex(url=config.qdrant_url, api_key=os.environ.get("QDRANT_API_KEY"))
    await _reach(index.open(), "Qdrant", "qdrant_url", opened, closer=index)
    return index  # type: ignore[no-any-return]


def _local_chunks_with_cold(config: StorageConfig, cold: Any) -> ChunkStore:
    """The local packs (warm) with S3 as their cold tier: one node, sealed packs move to the bucket."""
    from maif.storage.backends.local import LocalChunkStore
    from maif.storage.tiers import TieredChunkStore, TierPolicy

    warm = LocalChunkStore(Path(config.data_dir) / "packs",
                           compression_threshold=config.compression_threshold)
    policy = TierPolicy(cold_after_age_s=config.cold_after_age_s, cold_after_idle_s=config.cold_after_idle_s)
    return TieredChunkStore(warm, cold, policy)


__all__ = ["NODE_FILE", "node_id_of", "open_backends", "wants_servers"]
