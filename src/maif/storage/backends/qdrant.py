"""The vector index on Qdrant: :class:`QdrantVectorIndex` (the ``qdrant_url`` configuration key).

Built on qdrant-client's ``AsyncQdrantClient`` in one of two modes:

- ``url=``: a Qdrant server, shared by every MAIF node (``shared_between_processes``). Nothing here has
  been run against a real Qdrant server: none can be installed on the machines this was built on, so
  the server mode is exercised only through the client API it shares with local mode.
- ``path=`` (a directory, persisted) or ``path=":memory:"``: qdrant-client's local mode, an exact
  (brute-force, numpy) search running inside this process, on the event loop. One process at a time
  may open a directory. For development and tests, and fine up to tens of thousands of vectors.

Layout: one collection (``collection``, default ``maif_vectors``) of unnamed dense vectors with cosine
distance, created on the first ``add`` with that vector's dimension (Qdrant persists the dimension);
``clear`` deletes the collection, so the next ``add`` may bring another dimension. Each block id maps
deterministically to a point id, the UUID5 of the block id in a MAIF namespace, so every node computes
the same point for a block and re-adding a block replaces its point. The payload holds::

    block_id          the block id (what search returns)
    attributes        {name: value}: the filterable attributes as given
    attribute_pairs   ["<len(name)>:<name>=<value>", ...]: one keyword per attribute, unambiguous for any
                      name or value, so a filter is a conjunction of exact keyword matches that Qdrant
                      evaluates natively (``filtered_search``); on a server it has a keyword index

An existing collection that is not laid out like this (another distance, named vectors, points without
a ``block_id``) is refused with :class:`ForeignCollectionError`, never written to.

Consistency: every write waits until Qdrant applied it (``wait=True``), so a search after ``add`` sees
the vectors (read-your-writes); ``flush`` has nothing left to do (Qdrant persists with its own WAL,
local mode on each write).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from maif.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ForeignStoreError,
    FormatError,
    StorageError,
    StoreClosedError,
)
from maif.storage.backends.base import Capabilities, VectorIndex
from maif.storage.vectors import check_attributes, check_search_limit, check_vector, unit_vector

BLOCK_ID_NAMESPACE = uuid.UUID("ec0ebfaf-1c94-4a3f-b285-cc134ad3db8d")
"""The UUID5 namespace of point ids. Fixed forever: changing it would orphan every stored point."""
PAIRS_FIELD = "attribute_pairs"
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_UPSERT_BATCH = 256  # points per request: far below a server's 32 MiB request limit at 4096 dimensions
_ID_BATCH = 1_000

_log = logging.getLogger(__name__)


class ForeignCollectionError(ForeignStoreError):
    """The Qdrant collection exists but is not laid out as a MAIF vector index (another distance, named
    or sparse vectors, points without MAIF's payload). Refused, never written to."""

    def __init__(self, message: str, *, server: str, collection: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.server = server
        self.collection = collection


def point_id(block_id: str) -> str:
    """The Qdrant point id of a block: the UUID5 of its id in :data:`BLOCK_ID_NAMESPACE`."""
    return str(uuid.uuid5(BLOCK_ID_NAMESPACE, block_id))


def attribute_pair(name: str, value: str) -> str:
    """One attribute as a keyword: the name's length makes ``name=value`` unambiguous for any strings."""
    return f"{len(name)}:{name}={value}"


def _redact(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:
        return "<unparsable URL>"


def _connection_failed(error: BaseException) -> bool:
    """A refused, dropped or timed-out connection (qdrant-client wraps httpx's in
    ResponseHandlingException)."""
    import httpx

    cause = getattr(error, "source", None) or error.__cause__ or error
    return isinstance(cause, httpx.TransportError | OSError | TimeoutError)


class QdrantVectorIndex(VectorIndex):
    """A :class:`VectorIndex` in a Qdrant collection: a server (``url``) or local mode (``path``)."""

    def __init__(
        self,
        *,
        url: str | None = None,
        path: str | None = None,
        collection: str = "maif_vectors",
        api_key: str | None = None,
        timeout_s: int = 10,
        hnsw_ef: int | None = None,
    ) -> None:
        if (url is None) == (path is None):
            raise ConfigError("QdrantVectorIndex needs exactly one of url= (qdrant_url) or path= (local)")
        if url is not None:
            try:
                parts = urlsplit(url)
                valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
            except ValueError:
                valid = False
            if not valid:
                raise ConfigError(f"qdrant_url must be an http:// or https:// URL, got {_redact(str(url))!r}")
            if parts.username or parts.password:
                raise ConfigError(f"qdrant_url {_redact(url)!r} embeds credentials: pass the API key apart")
        if not isinstance(collection, str) or not _COLLECTION_NAME.match(collection):
            raise ConfigError(f"the Qdrant collection name {str(collection)[:80]!r} must be 1-200 characters "
                              "of [A-Za-z0-9_-]")
        if hnsw_ef is not None and not 1 <= hnsw_ef <= 100_000:
            raise ConfigError("hnsw_ef must be within [1, 100000]")
        self.url = url
        self.path = str(path) if path is not None else None
        self.collection = collection
        self.hnsw_ef = hnsw_ef
        self.where = _redact(url) if url is not None else f"local Qdrant {self.path}"
        self.capabilities = Capabilities(
            durable=self.path != ":memory:",
            shared_between_processes=url is not None,
            filtered_search=True,
        )
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._client: Any = None
        self._ndim: int | None = None
        self._layout_checked = False
        self._closed = False

    # ---- connection and layout ---------------------------------------------------------------------

    async def _connected(self) -> Any:
        if self._closed:
            raise StoreClosedError("vector index is closed")
        if self._client is None:
            from qdrant_client import AsyncQdrantClient

            try:
                if self.url is not None:
                    client = AsyncQdrantClient(url=self.url, api_key=self._api_key, timeout=self._timeout_s,
                                               check_compatibility=False)
                elif self.path == ":memory:":
                    client = AsyncQdrantClient(location=":memory:")
                else:
                    client = AsyncQdrantClient(path=self.path)
            except Exception as error:
                raise self._translate(error, "open") from error
            self._client = client
        if not self._layout_checked:
            await self._load_layout()
        return self._client

    async def open(self) -> None:
        """Connect and check the collection's layout (at start-up, to fail fast); idempotent."""
        await self._connected()

    async def _load_layout(self) -> None:
        client = self._client
        try:
            if not await client.collection_exists(self.collection):
                self._ndim = None
                self._layout_checked = True
                return
            info = await client.get_collection(self.collection)
            sample, _ = await client.scroll(self.collection, limit=1, with_payload=True, with_vectors=False)
        except Exception as error:
            raise self._translate(error, "inspect the collection of") from error
        params = info.config.params
        vectors = params.vectors
        from qdrant_client.models import Distance, VectorParams

        cosine = isinstance(vectors, VectorParams) and vectors.distance == Distance.COSINE
        if not cosine or params.sparse_vectors:
            raise ForeignCollectionError(
                f"Qdrant collection {self.collection!r} at {self.where} is not a MAIF vector index "
                "(it needs one unnamed cosine vector): refused",
                server=self.where, collection=self.collection,
                hint="choose another collection name, or delete that collection",
            )
        if sample and not (isinstance(sample[0].payload, dict)
                           and isinstance(sample[0].payload.get("block_id"), str)
                           and isinstance(sample[0].payload.get(PAIRS_FIELD), list)):
            raise ForeignCollectionError(
                f"Qdrant collection {self.collection!r} at {self.where} holds points that are not MAIF's: "
                "refused", server=self.where, collection=self.collection,
            )
        self._ndim = int(vectors.size)
        self._layout_checked = True

    async def _ensure_collection(self, client: Any, ndim: int) -> None:
        from qdrant_client.models import Distance, PayloadSchemaType, VectorParams

        try:
            if not await client.collection_exists(self.collection):
                try:
                    await client.create_collection(
                        self.collection, vectors_config=VectorParams(size=ndim, distance=Distance.COSINE)
                    )
                except Exception:  # another node created it meanwhile: use theirs (checked below)
                    if not await client.collection_exists(self.collection):
                        raise
                if self.url is not None:  # local mode keeps no payload indexes
                    await client.create_payload_index(self.collection, PAIRS_FIELD,
                                                      field_schema=PayloadSchemaType.KEYWORD, wait=True)
        except Exception as error:
            raise self._translate(error, "create the collection of") from error
        self._layout_checked = False
        await self._load_layout()

    def _translate(self, error: Exception, action: str) -> StorageError:
        if isinstance(error, StorageError):
            return error
        detail = str(error).splitlines()[0][:200] if self.url is None else type(error).__name__
        status = getattr(error, "status_code", None)
        if status in (401, 403):
            return BackendError(f"Qdrant at {self.where} refused the API key: cannot {action} "
                                f"{self.collection!r}", hint="check the Qdrant API key")
        key = "qdrant_url" if self.url is not None else "the local Qdrant path"
        if status is not None:
            detail = f"HTTP {status}"
        if self.url is not None and (status in (500, 502, 503, 504) or _connection_failed(error)):
            return BackendUnavailableError(
                f"Qdrant at {self.where} ({key}) is unavailable: cannot {action} collection "
                f"{self.collection!r} ({detail})", component="qdrant")
        return BackendError(f"Qdrant at {self.where} ({key}) failed: cannot {action} collection "
                            f"{self.collection!r} ({detail})")

    # ---- the VectorIndex API -----------------------------------------------------------------------

    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        checked = [
            (block_id, unit_vector(check_vector(vector)), check_attributes(attributes, "vector attributes"))
            for block_id, vector, attributes in items
        ]
        for block_id, _, _ in checked:
            if not isinstance(block_id, str) or not block_id:
                raise FormatError("a vector's block id must be a non-empty string")
        if not checked:
            return
        client = await self._connected()
        ndim = self._ndim if self._ndim is not None else checked[0][1].shape[0]
        for _, vector, _ in checked:
            check_vector(vector, ndim)
        if self._ndim is None:
            await self._ensure_collection(client, ndim)
            if self._ndim != ndim:  # another node created it with another dimension meanwhile
                raise FormatError(f"vector has {ndim} dimensions; this index holds {self._ndim}-dimensional "
                                  "vectors")
        from qdrant_client.models import PointStruct

        latest = {block_id: (vector, attributes) for block_id, vector, attributes in checked}  # last wins
        points = [
            PointStruct(
                id=point_id(block_id),
                vector=vector.tolist(),
                payload={
                    "block_id": block_id,
                    "attributes": attributes,
                    PAIRS_FIELD: [attribute_pair(name, value) for name, value in attributes.items()],
                },
            )
            for block_id, (vector, attributes) in latest.items()
        ]
        try:
            for start in range(0, len(points), _UPSERT_BATCH):
                await client.upsert(self.collection, points=points[start : start + _UPSERT_BATCH], wait=True)
        except Exception as error:
            raise self._translate(error, "add vectors to") from error

    async def search(
        self,
        query: np.ndarray,
        limit: int,
        *,
        score_threshold: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        check_search_limit(limit)
        wanted = check_attributes(filters, "search filters")
        vector = unit_vector(check_vector(query))
        client = await self._connected()
        if self._ndim is None or limit == 0:
            return []
        check_vector(vector, self._ndim)
        from qdrant_client.models import FieldCondition, Filter, MatchValue, SearchParams

        query_filter = None
        if wanted:
            query_filter = Filter(must=[
                FieldCondition(key=PAIRS_FIELD, match=MatchValue(value=attribute_pair(name, value)))
                for name, value in wanted.items()
            ])
        try:
            response = await client.query_points(
                self.collection,
                query=vector.tolist(),
                limit=limit,
                query_filter=query_filter,
                score_threshold=score_threshold,
                search_params=SearchParams(hnsw_ef=self.hnsw_ef) if self.hnsw_ef else None,
                with_payload=["block_id"],
                with_vectors=False,
            )
        except Exception as error:
            raise self._translate(error, "search") from error
        hits = []
        for point in response.points:
            block_id = (point.payload or {}).get("block_id")
            score = float(point.score)
            if not isinstance(block_id, str) or (score_threshold is not None and score < score_threshold):
                continue
            hits.append((block_id, score))
        hits.sort(key=lambda hit: -hit[1])  # best first, whatever the transport did
        return hits[:limit]

    async def remove(self, block_ids: Sequence[str]) -> int:
        unique = list(dict.fromkeys(block_id for block_id in block_ids if isinstance(block_id, str)))
        if not unique:
            return 0
        client = await self._connected()
        if self._ndim is None:
            return 0
        from qdrant_client.models import PointIdsList

        removed = 0
        try:
            for start in range(0, len(unique), _ID_BATCH):
                ids = [point_id(block_id) for block_id in unique[start : start + _ID_BATCH]]
                present = await client.retrieve(self.collection, ids=ids, with_payload=False,
                                                with_vectors=False)
                if present:
                    await client.delete(self.collection, points_selector=PointIdsList(
                        points=[point.id for point in present]), wait=True)
                    removed += len(present)
        except Exception as error:
            raise self._translate(error, "remove vectors from") from error
        return removed

    async def clear(self) -> None:
        client = await self._connected()
        try:
            if await client.collection_exists(self.collection):
                await client.delete_collection(self.collection)
        except Exception as error:
            raise self._translate(error, "delete") from error
        self._ndim = None

    async def flush(self) -> None:
        await self._connected()  # every write waited for Qdrant to apply it (wait=True): nothing pending

    async def count(self) -> int:
        client = await self._connected()
        if self._ndim is None:
            return 0
        try:
            result = await client.count(self.collection, exact=True)
        except Exception as error:
            raise self._translate(error, "count") from error
        return int(result.count)

    @property
    def dimensions(self) -> int | None:
        return self._ndim

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as error:  # noqa: BLE001 - closing is best effort
                _log.debug("closing Qdrant client for %s: %s", self.where, type(error).__name__)


__all__ = ["BLOCK_ID_NAMESPACE", "ForeignCollectionError", "QdrantVectorIndex", "attribute_pair", "point_id"]
