"""The local (durable, embedded) backends pass the shared conformance suite, including reopen."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif.storage.backends.base import ChunkStore, MetadataIndex, ObjectStore, VectorIndex
from maif.storage.backends.local import (
    LocalChunkStore,
    LocalMetadataIndex,
    LocalObjectStore,
    LocalVectorIndex,
)
from maif.storage.backends.memory import MemoryMetadataIndex
from maif.storage.packs import pack_file_name
from maif.storage.records import BlockRecord, tombstone_record
from maif.testing.conformance import (
    ChunkStoreTests,
    MetadataIndexTests,
    ObjectStoreTests,
    VectorIndexTests,
    flip_byte,
    make_record,
    run,
)

FRAME_HEADER_BYTES = 48


class TestLocalChunkStore(ChunkStoreTests):
    def make_store(self, directory: Path) -> ChunkStore:
        return LocalChunkStore(directory / "packs", compression_threshold=self.compression_threshold)

    def reopen(self, store: ChunkStore, directory: Path) -> ChunkStore | None:
        return self.make_store(directory)

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        assert isinstance(store, LocalChunkStore)
        location = store.packs.locate(digest)
        assert location is not None
        pack = store.packs.directory / pack_file_name(location.pack_id)
        flip_byte(pack, location.offset + FRAME_HEADER_BYTES + location.stored_length // 2)

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        assert isinstance(store, LocalChunkStore)
        location = store.packs.locate(digest)
        assert location is not None
        return location.stored_length


class TestLocalChunkStoreWithTinyPacks(TestLocalChunkStore):
    """The same suite with packs sealed every ~100 KB, so chunks spread over many sealed packs."""

    def make_store(self, directory: Path) -> ChunkStore:
        return LocalChunkStore(
            directory / "packs", compression_threshold=self.compression_threshold, pack_bytes_max=100_000
        )


class TestLocalMetadataIndex(MetadataIndexTests):
    def make_index(self, directory: Path) -> MetadataIndex:
        return LocalMetadataIndex(directory / "index.sqlite")

    def reopen(self, index: MetadataIndex, directory: Path) -> MetadataIndex | None:
        return self.make_index(directory)

    def test_the_loop_thread_reader_sees_exactly_what_get_sees(self, tmp_path: Path) -> None:
        import asyncio

        from maif.errors import StoreClosedError
        from maif.testing.conformance import make_record

        async def scenario() -> None:
            index = LocalMetadataIndex(tmp_path / "index.sqlite")
            assert index.get_nowait("block-0001") is None  # the reader opens before anything was written
            await index.put([make_record(1), make_record(2)])
            assert index.get_nowait("block-0001") == await index.get("block-0001") is not None
            await index.put([make_record(1, agent_id="someone-else")])  # committed writes are visible
            assert index.get_nowait("block-0001") == await index.get("block-0001")
            assert index.get_nowait("block-0001").agent_id == "someone-else"  # type: ignore[union-attr]
            await index.close()
            with pytest.raises(StoreClosedError):
                index.get_nowait("block-0002")

        asyncio.run(scenario())


class TestLocalVectorIndex(VectorIndexTests):
    def make_index(self, directory: Path) -> VectorIndex:
        return LocalVectorIndex(directory / "vectors")

    def reopen(self, index: VectorIndex, directory: Path) -> VectorIndex | None:
        return self.make_index(directory)


class TestLocalObjectStore(ObjectStoreTests):
    def make_store(self, directory: Path) -> ObjectStore:
        return LocalObjectStore(directory / "cold")


# ---- model check: SQLite answers every query exactly as the in-memory reference does ----


RECORDS = st.lists(
    st.builds(
        lambda number, agent, kind, second, parents: make_record(
            number,
            agent_id=f"a{agent}",
            block_type=kind,
            timestamp=float(second),
            parents=tuple(f"block-{p:04d}" for p in parents),
        ),
        st.integers(0, 60),
        st.integers(0, 2),
        st.sampled_from(["TEXT", "IMAG", "EMBD"]),
        st.integers(0, 10),
        st.lists(st.integers(0, 60), max_size=3, unique=True),
    ),
    max_size=40,
)
QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "agent_id": st.sampled_from(["a0", "a1", "a2", "a9"]),
        "block_type": st.sampled_from(["TEXT", "IMAG", "EMBD"]),
        "since": st.integers(0, 10).map(float),
        "until": st.integers(0, 11).map(float),
        "parent": st.integers(0, 60).map(lambda p: f"block-{p:04d}"),
        "limit": st.integers(0, 50),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=RECORDS, queries=st.lists(QUERIES, min_size=1, max_size=5))
def test_sqlite_index_agrees_with_the_memory_model(
    tmp_path_factory: pytest.TempPathFactory, records: list, queries: list
) -> None:
    async def scenario() -> None:
        sqlite = LocalMetadataIndex(tmp_path_factory.mktemp("model") / "index.sqlite")
        model = MemoryMetadataIndex()
        try:
            for record in records:  # one put per record: later versions of an id replace earlier ones
                await sqlite.put([record])
                await model.put([record])
            assert await sqlite.count() == await model.count()
            for query in queries:
                assert await sqlite.query(**query) == await model.query(**query), query
                page = await model.query(limit=3, **{k: v for k, v in query.items() if k != "limit"})
                if page:
                    after = page[-1].block_id
                    assert await sqlite.query(after=after, **query) == await model.query(after=after, **query)
        finally:
            await sqlite.close()

    run(scenario())


WRITES_AND_DELETIONS = st.lists(
    st.one_of(RECORDS.map(lambda records: ("write", records)),
              st.integers(0, 60).map(lambda number: ("delete", number))),
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=WRITES_AND_DELETIONS, queries=st.lists(QUERIES, min_size=1, max_size=5))
def test_one_batched_put_indexes_as_one_put_per_record(
    tmp_path_factory: pytest.TempPathFactory, steps: list, queries: list
) -> None:
    """The SQLite index writes a batch run by run (multi-row statements); it must still answer as if each
    record were put alone, in order: a later write of an id wins, with its own parents, and a deletion in the
    middle of a batch removes only what came before it."""
    batch: list[BlockRecord] = []
    for kind, value in steps:
        batch.extend(value if kind == "write" else [tombstone_record(f"block-{value:04d}", len(batch) + 1)])

    async def scenario() -> None:
        sqlite = LocalMetadataIndex(tmp_path_factory.mktemp("batched") / "index.sqlite")
        model = MemoryMetadataIndex()
        try:
            await sqlite.put(batch)
            for record in batch:
                await model.put([record])
            assert await sqlite.count() == await model.count()
            for query in queries:
                assert await sqlite.query(**query) == await model.query(**query), query
            for number in range(61):  # every parent link, each rebuilt from the last write of its child
                parent = f"block-{number:04d}"
                assert await sqlite.query(parent=parent) == await model.query(parent=parent), parent
        finally:
            await sqlite.close()

    run(scenario())


def test_a_batch_wider_than_one_statement_indexes_as_one_put_per_record(tmp_path: Path) -> None:
    """The SQLite index binds up to 256 rows per statement: a batch of 1300 records, every id written
    several times (with other parents each time) across statement boundaries and a deletion in
    between and one at the end, answers every count, query and parent link as the model fed one
    record at a time."""
    numbers = [(step * 7) % 311 for step in range(1300)]
    writes = [make_record(number, agent_id=f"a{position % 3}", timestamp=float(position % 50),
                          parents=tuple(f"block-{(number + offset) % 311:04d}"
                                        for offset in range(position % 4)))
              for position, number in enumerate(numbers)]
    batch = [*writes[:600], tombstone_record("block-0021", 0), *writes[600:],
             tombstone_record("block-0100", 0)]
    batch = [msgspec.structs.replace(record, lsn=position + 1) for position, record in enumerate(batch)]

    async def scenario() -> None:
        sqlite = LocalMetadataIndex(tmp_path / "index.sqlite")
        model = MemoryMetadataIndex()
        try:
            await sqlite.put(batch)
            for record in batch:
                await model.put([record])
            assert await sqlite.count() == await model.count() == 311 - 1
            for agent in ("a0", "a1", "a2"):
                query = {"agent_id": agent, "limit": 400}
                assert await sqlite.query(**query) == await model.query(**query)
            for number in range(311):
                query = {"parent": f"block-{number:04d}", "limit": 400}
                assert await sqlite.query(**query) == await model.query(**query)
        finally:
            await sqlite.close()

    run(scenario())
