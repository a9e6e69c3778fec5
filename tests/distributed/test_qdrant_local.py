"""QdrantVectorIndex in qdrant-client's LOCAL mode (``path=``): no Qdrant server can be installed where
MAIF is built, so the server mode (``url=``, the ``qdrant_url`` key) is NOT exercised here; local mode
shares the client API and the payload filtering, not the server's HNSW index or its network behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maif.errors import BackendUnavailableError, ConfigError, StoreClosedError
from maif.storage.backends.base import VectorIndex
from maif.storage.backends.qdrant import ForeignCollectionError, QdrantVectorIndex, attribute_pair, point_id
from maif.testing.conformance import VectorIndexTests, clustered_vectors, run


class TestQdrantLocalVectorIndex(VectorIndexTests):
    def make_index(self, directory: Path) -> VectorIndex:
        return QdrantVectorIndex(path=str(directory / "qdrant"))

    def reopen(self, index: VectorIndex, directory: Path) -> VectorIndex | None:
        return self.make_index(directory)


class TestQdrantInMemoryVectorIndex(VectorIndexTests):
    def make_index(self, directory: Path) -> VectorIndex:
        return QdrantVectorIndex(path=":memory:")


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    normalized = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ normalized.T
    return np.argsort(-scores, axis=1)[:, :k]


def test_recall_and_filtered_recall_match_exact_search() -> None:
    """In memory: local mode on a directory commits every point in its own SQLite transaction (several
    ms each), too slow for thousands of vectors in a test; the search code is the same."""
    vectors = clustered_vectors(3000, 64, seed=11)
    rng = np.random.default_rng(12)
    queries = vectors[rng.choice(len(vectors), 25, replace=False)] + 0.05 * rng.standard_normal((25, 64))
    groups = [f"g{i % 7}" for i in range(len(vectors))]

    async def scenario() -> None:
        index = QdrantVectorIndex(path=":memory:")
        try:
            items = [(f"v{i}", vectors[i], {"group": groups[i]}) for i in range(len(vectors))]
            for start in range(0, len(items), 500):
                await index.add(items[start : start + 500])
            assert await index.count() == len(vectors) and index.dimensions == 64
            found = 0
            for query, truth in zip(queries, exact_top(vectors, queries, 10), strict=True):
                hits = await index.search(query.astype(np.float32), 10)
                found += len({f"v{i}" for i in truth} & {block_id for block_id, _ in hits})
            assert found / (25 * 10) >= 0.99  # local mode searches exactly
            members = np.flatnonzero(np.array(groups) == "g3")
            found = 0
            for query, truth in zip(queries, exact_top(vectors[members], queries, 10), strict=True):
                hits = await index.search(query.astype(np.float32), 10, filters={"group": "g3"})
                assert all(int(block_id[1:]) % 7 == 3 for block_id, _ in hits)
                found += len({f"v{members[i]}" for i in truth} & {block_id for block_id, _ in hits})
            assert found / (25 * 10) >= 0.99
        finally:
            await index.close()

    run(scenario())


def test_attribute_names_and_values_cannot_be_confused() -> None:
    base = np.ones(4, dtype=np.float32)

    async def scenario() -> None:
        index = QdrantVectorIndex(path=":memory:")
        try:
            await index.add([("a", base, {"x=y": "z"}), ("b", base, {"x": "y=z"}), ("c", base, {"x": ""})])
            assert [hit[0] for hit in await index.search(base, 5, filters={"x=y": "z"})] == ["a"]
            assert [hit[0] for hit in await index.search(base, 5, filters={"x": "y=z"})] == ["b"]
            assert [hit[0] for hit in await index.search(base, 5, filters={"x": ""})] == ["c"]
            assert await index.search(base, 5, filters={"x": "y"}) == []
            assert attribute_pair("x=y", "z") != attribute_pair("x", "y=z")
        finally:
            await index.close()

    run(scenario())


def test_point_ids_are_deterministic_and_the_block_id_is_in_the_payload(tmp_path: Path) -> None:
    assert point_id("block-1") == point_id("block-1") != point_id("block-2")

    async def scenario() -> None:
        index = QdrantVectorIndex(path=str(tmp_path / "qdrant"))
        try:
            await index.add([("block-1", np.ones(3, dtype=np.float32), {"agent_id": "a"})])
            client = index._client
            [point] = await client.retrieve(index.collection, ids=[point_id("block-1")], with_payload=True)
            assert point.payload["block_id"] == "block-1"
            assert point.payload["attributes"] == {"agent_id": "a"}
        finally:
            await index.close()

    run(scenario())


def test_a_foreign_collection_is_refused_and_left_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        from qdrant_client import AsyncQdrantClient
        from qdrant_client.models import Distance, PointStruct, VectorParams

        path = str(tmp_path / "qdrant")
        other = AsyncQdrantClient(path=path)
        await other.create_collection("euclid", vectors_config=VectorParams(size=3, distance=Distance.EUCLID))
        await other.create_collection("theirs", vectors_config=VectorParams(size=3, distance=Distance.COSINE))
        await other.upsert("theirs", points=[PointStruct(id=1, vector=[1.0, 0.0, 0.0], payload={"x": 1})])
        await other.close()
        for collection in ("euclid", "theirs"):
            index = QdrantVectorIndex(path=path, collection=collection)
            try:
                with pytest.raises(ForeignCollectionError):
                    await index.add([("b", np.ones(3, dtype=np.float32), {})])
            finally:
                await index.close()
        check = AsyncQdrantClient(path=path)
        try:
            assert (await check.count("theirs")).count == 1
        finally:
            await check.close()

    run(scenario())


def test_a_second_process_on_one_local_directory_gets_a_backend_error(tmp_path: Path) -> None:
    from maif.errors import BackendError

    async def scenario() -> None:
        first = QdrantVectorIndex(path=str(tmp_path / "qdrant"))
        second = QdrantVectorIndex(path=str(tmp_path / "qdrant"))
        try:
            await first.open()
            with pytest.raises(BackendError):
                await second.open()
        finally:
            await first.close()
            await second.close()

    run(scenario())


def test_closed_index_refuses_calls_and_bad_configuration_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        index = QdrantVectorIndex(path=str(tmp_path / "qdrant"))
        await index.close()
        await index.close()
        with pytest.raises(StoreClosedError):
            await index.count()

    run(scenario())
    for arguments in [
        {},
        {"url": "http://127.0.0.1:6333", "path": "x"},
        {"url": "ftp://host"},
        {"path": "x", "collection": "bad/name"},
    ]:
        with pytest.raises(ConfigError):
            QdrantVectorIndex(**arguments)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        QdrantVectorIndex(url="http://user:s3cret@127.0.0.1:6333")
    assert "s3cret" not in str(caught.value)


def test_a_qdrant_server_nobody_answers_is_unavailable_not_a_crash() -> None:
    """The server path's error mapping, against a port nothing listens on (no Qdrant server can be
    installed here): a typed, retryable BackendUnavailableError naming the component."""
    import socket

    with socket.socket() as probe:  # a free port, closed again: connections to it are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    index = QdrantVectorIndex(url=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendUnavailableError) as raised:
        run(index.open())
    assert raised.value.component == "qdrant" and f"127.0.0.1:{port}" in raised.value.message
    run(index.close())
