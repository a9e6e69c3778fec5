"""The conformance suite every storage backend passes, shipped inside the package.

Each backend's test file subclasses the base classes here and supplies a factory, in the style of
zarr's ``StoreTests`` and restic's backend test suite::

    class TestLocalChunkStore(ChunkStoreTests):
        def make_store(self, directory): return LocalChunkStore(directory / "packs")
        def reopen(self, store, directory): return LocalChunkStore(directory / "packs")
        def raw_corrupt(self, store, digest): ...   # flip a stored byte, bypassing the API

The ``raw_*`` helpers deliberately bypass the API under test, so a test can damage or inspect what
is really stored and check that the API notices. ``reopen`` returns None for a volatile backend; the
durability tests then skip. The tests drive the async API with ``asyncio.run`` (no plugin needed).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import blake3
import numpy as np
import pytest

from maif import limits
from maif.errors import (
    BlockNotFoundError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    StoreClosedError,
)
from maif.storage.backends.base import ChunkStore, HotCache, MetadataIndex, ObjectStore, VectorIndex
from maif.storage.packs import record_digest
from maif.storage.records import BlockRecord, encode_record

ResultT = TypeVar("ResultT")


def run(coroutine: Awaitable[ResultT]) -> ResultT:
    """Run one coroutine to completion on a fresh event loop."""

    async def _wrapper() -> ResultT:
        return await coroutine

    return asyncio.run(_wrapper())


BackendT = TypeVar("BackendT", ChunkStore, MetadataIndex, VectorIndex, ObjectStore)


def run_with(backend: Callable[[], BackendT], body: Callable[[BackendT], Awaitable[Any]]) -> Any:
    """Make a backend with ``backend()``, run ``body`` on it in a fresh event loop, and close it."""

    async def scenario() -> Any:
        opened = backend()
        try:
            return await body(opened)
        finally:
            await opened.close()

    return run(scenario())


def chunk(data: bytes) -> tuple[bytes, bytes]:
    """A ``(BLAKE3 digest, data)`` pair ready for ``put_chunks``."""
    return blake3.blake3(data).digest(), data


def random_bytes(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# ---- ChunkStore --------------------------------------------------------------------------------


class ChunkStoreTests:
    """Behaviour every :class:`ChunkStore` must show. Subclasses implement the four hooks."""

    compression_threshold = 4096

    def make_store(self, directory: Path) -> ChunkStore:
        raise NotImplementedError

    def reopen(self, store: ChunkStore, directory: Path) -> ChunkStore | None:
        """A new instance over the same storage after ``close`` (None: the backend is volatile)."""
        return None

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        """Flip one stored byte of the chunk's data, bypassing the API."""
        raise NotImplementedError

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        """How many bytes the chunk's data occupies in storage (after compression), bypassing the API."""
        raise NotImplementedError

    def _with_store(self, tmp_path: Path, body: Callable[[ChunkStore], Awaitable[Any]]) -> Any:
        return run_with(lambda: self.make_store(tmp_path), body)

    def test_round_trip_of_varied_chunks(self, tmp_path: Path) -> None:
        chunks = [chunk(b""), chunk(b"x"), chunk(b"text " * 5000), chunk(random_bytes(300_000, 1))]

        async def body(store: ChunkStore) -> None:
            await store.put_chunks(chunks)
            for digest, data in chunks:
                assert await store.get_chunk(digest) == data

        self._with_store(tmp_path, body)

    def test_put_deduplicates_by_digest(self, tmp_path: Path) -> None:
        chunks = [chunk(random_bytes(10_000, seed)) for seed in range(5)]

        async def body(store: ChunkStore) -> None:
            first = await store.put_chunks(chunks)
            assert first >= 5 * 10_000
            assert await store.put_chunks(chunks) == 0
            assert await store.put_chunks([chunks[0], chunk(b"new")]) == len(b"new")
            stats = await store.stats()
            assert stats["chunks"] == 6
            assert stats["dedup_hits"] == 6

        self._with_store(tmp_path, body)

    def test_duplicates_within_one_call_are_stored_once(self, tmp_path: Path) -> None:
        data = random_bytes(20_000, 7)

        async def body(store: ChunkStore) -> None:
            assert await store.put_chunks([chunk(data), chunk(data), chunk(data)]) == len(data)
            assert (await store.stats())["chunks"] == 1

        self._with_store(tmp_path, body)

    def test_digest_that_does_not_match_the_data_is_refused(self, tmp_path: Path) -> None:
        forged = (blake3.blake3(b"honest").digest(), b"forged")

        async def body(store: ChunkStore) -> None:
            with pytest.raises(IntegrityError):
                await store.put_chunks([forged])
            assert await store.has_chunks([forged[0]]) == set()

        self._with_store(tmp_path, body)

    def test_malformed_digest_and_oversized_chunk_are_refused(self, tmp_path: Path) -> None:
        async def body(store: ChunkStore) -> None:
            with pytest.raises(FormatError):
                await store.put_chunks([(b"short", b"data")])
            oversized = b"\0" * (limits.chunk_bytes_max + 1)
            with pytest.raises(LimitExceededError):
                await store.put_chunks([chunk(oversized)])

        self._with_store(tmp_path, body)

    def test_put_chunk_data_addresses_each_chunk_by_its_blake3_digest(self, tmp_path: Path) -> None:
        pieces = [random_bytes(10_000, 11), b"small", random_bytes(10_000, 11), b"text " * 5000]

        async def body(store: ChunkStore) -> None:
            assert (await store.put_chunks([chunk(b"small")])) == len(b"small")
            digests, added = await store.put_chunk_data(
                [pieces[0], memoryview(pieces[1]), pieces[2], pieces[3]])
            assert digests == [blake3.blake3(piece).digest() for piece in pieces]
            # "small" was stored before and the second 10 KB piece repeats the first: neither is new
            assert added == self.raw_stored_length(store, digests[0]) + self.raw_stored_length(
                store, digests[3])
            for digest, piece in zip(digests, pieces, strict=True):
                assert await store.get_chunk(digest) == piece
            assert await store.put_chunk_data(pieces) == (digests, 0)
            assert (await store.stats())["chunks"] == 3

        self._with_store(tmp_path, body)

    def test_put_chunk_data_refuses_an_oversized_chunk_and_stores_nothing(self, tmp_path: Path) -> None:
        async def body(store: ChunkStore) -> None:
            oversized = b"\0" * (limits.chunk_bytes_max + 1)
            with pytest.raises(LimitExceededError):
                await store.put_chunk_data([b"before", oversized])
            assert await store.has_chunks([blake3.blake3(b"before").digest()]) == set()

        self._with_store(tmp_path, body)

    def test_missing_chunk_is_not_found(self, tmp_path: Path) -> None:
        async def body(store: ChunkStore) -> None:
            with pytest.raises(BlockNotFoundError):
                await store.get_chunk(blake3.blake3(b"absent").digest())

        self._with_store(tmp_path, body)

    def test_has_chunks_returns_the_held_subset(self, tmp_path: Path) -> None:
        held = [chunk(b"a" * 100), chunk(b"b" * 100)]
        absent = blake3.blake3(b"c").digest()

        async def body(store: ChunkStore) -> None:
            await store.put_chunks(held)
            assert await store.has_chunks([held[0][0], absent, held[1][0]]) == {held[0][0], held[1][0]}

        self._with_store(tmp_path, body)

    def test_compression_only_when_it_pays(self, tmp_path: Path) -> None:
        compressible = chunk(b"agent output line\n" * 4000)
        incompressible = chunk(random_bytes(72_000, 3))
        small = chunk(b"tiny " * 10)  # below the threshold: stored as is even though it would shrink

        async def body(store: ChunkStore) -> None:
            await store.put_chunks([compressible, incompressible, small])
            assert self.raw_stored_length(store, compressible[0]) < len(compressible[1]) // 10
            assert self.raw_stored_length(store, incompressible[0]) == len(incompressible[1])
            assert self.raw_stored_length(store, small[0]) == len(small[1])
            assert await store.get_chunk(compressible[0]) == compressible[1]

        self._with_store(tmp_path, body)

    def test_flipped_byte_is_refused_on_read_and_found_by_scrub(self, tmp_path: Path) -> None:
        victim, bystander = chunk(random_bytes(50_000, 4)), chunk(b"compressible " * 3000)

        async def body(store: ChunkStore) -> None:
            await store.put_chunks([victim, bystander])
            await store.flush()
            assert await store.scrub(1.0) == []
            self.raw_corrupt(store, victim[0])
            with pytest.raises(IntegrityError):
                await store.get_chunk(victim[0])
            assert await store.get_chunk(bystander[0]) == bystander[1]
            problems = await store.scrub(1.0)
            assert any(victim[0].hex()[:16] in problem for problem in problems), problems

        self._with_store(tmp_path, body)

    def test_corrupted_compressed_chunk_is_refused(self, tmp_path: Path) -> None:
        victim = chunk(b"very compressible " * 2000)

        async def body(store: ChunkStore) -> None:
            await store.put_chunks([victim])
            self.raw_corrupt(store, victim[0])
            with pytest.raises(IntegrityError):
                await store.get_chunk(victim[0])

        self._with_store(tmp_path, body)

    def test_scrub_refuses_a_fraction_outside_zero_to_one(self, tmp_path: Path) -> None:
        async def body(store: ChunkStore) -> None:
            for fraction in (-0.1, 1.5):
                with pytest.raises(FormatError):
                    await store.scrub(fraction)
            assert await store.scrub(0.0) == []

        self._with_store(tmp_path, body)

    def test_concurrent_writers_share_chunks(self, tmp_path: Path) -> None:
        shared = [chunk(random_bytes(8_000, seed)) for seed in range(20)]

        async def body(store: ChunkStore) -> None:
            added = await asyncio.gather(*(store.put_chunks(shared[i:] + shared[:i]) for i in range(8)))
            assert sum(added) == sum(len(data) for _, data in shared)
            for digest, data in shared:
                assert await store.get_chunk(digest) == data

        self._with_store(tmp_path, body)

    def test_closed_store_refuses_calls_and_closes_twice(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            store = self.make_store(tmp_path)
            await store.close()
            await store.close()
            with pytest.raises(StoreClosedError):
                await store.put_chunks([chunk(b"late")])
            with pytest.raises(StoreClosedError):
                await store.get_chunk(blake3.blake3(b"late").digest())

        run(scenario())

    def test_flushed_chunks_survive_reopen(self, tmp_path: Path) -> None:
        chunks = [chunk(random_bytes(40_000, seed)) for seed in range(10)] + [chunk(b"z" * 90_000)]

        async def scenario() -> None:
            store = self.make_store(tmp_path)
            await store.put_chunks(chunks)
            await store.flush()
            await store.close()
            reopened = self.reopen(store, tmp_path)
            if reopened is None:
                pytest.skip("volatile backend")
            try:
                for digest, data in chunks:
                    assert await reopened.get_chunk(digest) == data
                assert await reopened.put_chunks(chunks) == 0
                assert await reopened.scrub(1.0) == []
            finally:
                await reopened.close()

        run(scenario())


    def test_records_round_trip_and_survive_reopen(self, tmp_path: Path) -> None:
        records = [encode_record(make_record(number)) for number in range(50)]
        payload = chunk(records[0])  # the same bytes as a payload: a different address, both kept

        async def scenario() -> None:
            store = self.make_store(tmp_path)
            assert await store.put_records(records) > 0
            await store.put_records(records[:10])  # again (a replay): harmless, found once or more
            await store.put_chunks([payload])
            assert await store.get_chunk(payload[0]) == records[0]  # a payload is never a record
            await store.flush()
            found = [raw async for batch, problems in store.scan_records() for raw in batch]
            assert set(found) == set(records) and len(found) >= 50
            assert (await store.stats())["records"] >= 50
            assert await store.has_chunks([record_digest(raw) for raw in records]) <= {
                record_digest(raw) for raw in records}
            await store.close()
            reopened = self.reopen(store, tmp_path)
            if reopened is None:
                return
            try:
                again = [raw async for batch, problems in reopened.scan_records() for raw in batch]
                assert set(again) == set(records)
            finally:
                await reopened.close()

        run(scenario())

    def test_oversized_record_is_refused(self, tmp_path: Path) -> None:
        async def body(store: ChunkStore) -> None:
            with pytest.raises(LimitExceededError):
                await store.put_records([b"x" * (limits.chunk_bytes_max + 1)])

        self._with_store(tmp_path, body)


# ---- MetadataIndex -----------------------------------------------------------------------------


def make_record(number: int, **changes: Any) -> BlockRecord:
    """A deterministic record: agents a0/a1 and types TEXT/IMAG alternate, 1 s apart, chained parents."""
    fields: dict[str, Any] = {
        "block_id": f"block-{number:04d}",
        "block_type": "TEXT" if number % 2 == 0 else "IMAG",
        "agent_id": f"a{number % 2}",
        "timestamp": 1_700_000_000.0 + number,
        "version": "1.0",
        "parents": (f"block-{number - 1:04d}",) if number else (),
        "metadata": b"\x81\xa1k\xa1v",
        "chunks": (blake3.blake3(str(number).encode()).digest(),),
        "payload_length": number * 10,
        "digest": blake3.blake3(f"block {number}".encode()).digest(),
        "lsn": number + 1,
    }
    fields.update(changes)
    return BlockRecord(**fields)


class MetadataIndexTests:
    """Behaviour every :class:`MetadataIndex` must show."""

    def make_index(self, directory: Path) -> MetadataIndex:
        raise NotImplementedError

    def reopen(self, index: MetadataIndex, directory: Path) -> MetadataIndex | None:
        return None

    def _with_index(self, tmp_path: Path, body: Callable[[MetadataIndex], Awaitable[Any]]) -> Any:
        return run_with(lambda: self.make_index(tmp_path), body)

    def test_records_round_trip_exactly(self, tmp_path: Path) -> None:
        records = [make_record(n) for n in range(5)] + [
            make_record(9, parents=("x", "y", "z"), metadata=b"", chunks=(), agent_id="", timestamp=-1.5)
        ]

        async def body(index: MetadataIndex) -> None:
            await index.put(records)
            for record in records:
                assert await index.get(record.block_id) == record
            assert await index.get("absent") is None
            assert await index.count() == 6

        self._with_index(tmp_path, body)

    def test_get_many_returns_the_records_that_exist(self, tmp_path: Path) -> None:
        records = [make_record(n) for n in range(5)]

        async def body(index: MetadataIndex) -> None:
            await index.put(records)
            await index.put([make_record(3, deleted=True, lsn=10)])  # a tombstone: no record
            asked = ["block-0000", "absent", "block-0003", "block-0004", "block-0000"]
            assert await index.get_many(asked) == {"block-0000": records[0], "block-0004": records[4]}
            assert await index.get_many([]) == {}
            with pytest.raises(LimitExceededError):
                await index.get_many([f"id-{n}" for n in range(limits.index_get_many_max + 1)])

        self._with_index(tmp_path, body)

    def test_put_is_an_idempotent_upsert(self, tmp_path: Path) -> None:
        async def body(index: MetadataIndex) -> None:
            await index.put([make_record(1)])
            await index.put([make_record(1)])
            changed = make_record(1, agent_id="other", parents=("p",))
            await index.put([changed])
            assert await index.count() == 1
            assert await index.get("block-0001") == changed
            assert [r.block_id for r in await index.query(parent="p")] == ["block-0001"]
            assert await index.query(parent="block-0000") == []  # the old edge is gone

        self._with_index(tmp_path, body)

    def test_query_filters_and_orders_by_time(self, tmp_path: Path) -> None:
        records = [make_record(n) for n in range(20)]

        async def body(index: MetadataIndex) -> None:
            await index.put(list(reversed(records)))
            assert [r.block_id for r in await index.query(limit=3)] == [r.block_id for r in records[:3]]
            by_agent = await index.query(agent_id="a1", limit=100)
            assert [r.block_id for r in by_agent] == [r.block_id for r in records if r.agent_id == "a1"]
            by_type = await index.query(block_type="TEXT", agent_id="a0")
            assert len(by_type) == 10 and all(r.block_type == "TEXT" for r in by_type)
            window = await index.query(since=records[5].timestamp, until=records[8].timestamp)
            assert [r.block_id for r in window] == [r.block_id for r in records[5:8]]
            assert [r.block_id for r in await index.query(parent="block-0006")] == ["block-0007"]
            assert await index.query(agent_id="nobody") == []
            assert await index.query(limit=0) == []

        self._with_index(tmp_path, body)

    def test_keyset_paging_visits_every_record_once(self, tmp_path: Path) -> None:
        records = [make_record(n, timestamp=1000.0 + n // 3) for n in range(25)]  # ties broken by id

        async def body(index: MetadataIndex) -> None:
            await index.put(records)
            seen: list[str] = []
            after = None
            while page := await index.query(limit=4, after=after):
                seen.extend(r.block_id for r in page)
                after = page[-1].block_id
            assert seen == sorted(r.block_id for r in records)
            with pytest.raises(BlockNotFoundError):
                await index.query(after="no-such-block")

        self._with_index(tmp_path, body)

    def test_query_limit_is_bounded(self, tmp_path: Path) -> None:
        async def body(index: MetadataIndex) -> None:
            with pytest.raises(LimitExceededError):
                await index.query(limit=limits.engine_list_limit_max + 1)
            with pytest.raises(FormatError):
                await index.query(limit=-1)

        self._with_index(tmp_path, body)

    def test_applied_lsn_moves_with_the_records_and_never_back(self, tmp_path: Path) -> None:
        async def body(index: MetadataIndex) -> None:
            assert await index.applied_lsn() == 0
            await index.put([make_record(1), make_record(2)], applied_lsn=7)
            assert await index.applied_lsn() == 7
            await index.set_applied_lsn(9)
            assert await index.applied_lsn() == 9
            await index.set_applied_lsn(3)
            assert await index.applied_lsn() == 9
            with pytest.raises(FormatError):
                await index.set_applied_lsn(-1)

        self._with_index(tmp_path, body)

    def test_records_and_lsn_survive_reopen(self, tmp_path: Path) -> None:
        records = [make_record(n) for n in range(50)]

        async def scenario() -> None:
            index = self.make_index(tmp_path)
            await index.put(records, applied_lsn=50)
            await index.flush()
            await index.close()
            reopened = self.reopen(index, tmp_path)
            if reopened is None:
                pytest.skip("volatile backend")
            try:
                assert await reopened.count() == 50
                assert await reopened.applied_lsn() == 50
                assert await reopened.get("block-0042") == records[42]
            finally:
                await reopened.close()

        run(scenario())

    def test_newer_only_put_keeps_the_highest_lsn_and_count_by_type(self, tmp_path: Path) -> None:
        async def body(index: MetadataIndex) -> None:
            await index.put([make_record(1, lsn=50, agent_id="new")])
            await index.put([make_record(1, lsn=10, agent_id="old", parents=("x",))], newer_only=True)
            kept = await index.get("block-0001")
            assert kept is not None and kept.agent_id == "new"
            assert await index.query(parent="x") == []
            await index.put([make_record(1, lsn=60, agent_id="newest")], newer_only=True)
            newest = await index.get("block-0001")
            assert newest is not None and newest.agent_id == "newest"
            await index.put([make_record(number) for number in range(2, 8)])
            assert await index.count() == 7
            assert await index.count("TEXT") == 3 and await index.count("IMAG") == 4
            assert await index.count("EMBD") == 0

        self._with_index(tmp_path, body)

    def test_closed_index_refuses_calls(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            index = self.make_index(tmp_path)
            await index.close()
            await index.close()
            with pytest.raises(StoreClosedError):
                await index.get("block-0001")

        run(scenario())


# ---- VectorIndex -------------------------------------------------------------------------------


def clustered_vectors(count: int, dimensions: int, seed: int, clusters: int = 8) -> np.ndarray:
    """Deterministic float32 vectors around ``clusters`` random centres (like real embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimensions)).astype(np.float32)
    members = rng.integers(0, clusters, count)
    return (centres[members] + 0.3 * rng.standard_normal((count, dimensions))).astype(np.float32)


class VectorIndexTests:
    """Behaviour every :class:`VectorIndex` must show."""

    def make_index(self, directory: Path) -> VectorIndex:
        raise NotImplementedError

    def reopen(self, index: VectorIndex, directory: Path) -> VectorIndex | None:
        return None

    def _with_index(self, tmp_path: Path, body: Callable[[VectorIndex], Awaitable[Any]]) -> Any:
        return run_with(lambda: self.make_index(tmp_path), body)

    @staticmethod
    def _items(vectors: np.ndarray) -> list[tuple[str, np.ndarray, dict[str, str]]]:
        return [
            (f"v{i}", vector, {"agent_id": f"a{i % 5}", "block_type": "EMBD"})
            for i, vector in enumerate(vectors)
        ]

    def test_each_vector_finds_itself_first(self, tmp_path: Path) -> None:
        vectors = clustered_vectors(500, 32, seed=1)

        async def body(index: VectorIndex) -> None:
            await index.add(self._items(vectors))
            assert await index.count() == 500
            for i in range(0, 500, 25):
                hits = await index.search(vectors[i], 5)
                assert hits[0][0] == f"v{i}" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
                assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)

        self._with_index(tmp_path, body)

    def test_filters_return_only_matching_items(self, tmp_path: Path) -> None:
        vectors = clustered_vectors(400, 16, seed=2)

        async def body(index: VectorIndex) -> None:
            await index.add(self._items(vectors))
            await index.add([("rare", vectors[0] * -1.0, {"agent_id": "loner"})])
            hits = await index.search(vectors[3], 10, filters={"agent_id": "a2"})
            assert len(hits) == 10 and all(int(block_id[1:]) % 5 == 2 for block_id, _ in hits)
            rare = await index.search(vectors[0], 3, filters={"agent_id": "loner"})
            assert [block_id for block_id, _ in rare] == ["rare"]  # found although it is the farthest
            assert await index.search(vectors[0], 3, filters={"agent_id": "nobody"}) == []

        self._with_index(tmp_path, body)

    def test_score_threshold_cuts_results(self, tmp_path: Path) -> None:
        base = np.array([1.0, 0.0, 0.0], dtype=np.float32)
        items: list[tuple[str, np.ndarray, dict[str, str]]] = [
            ("same", base, {}),
            ("near", np.array([1.0, 0.2, 0.0], dtype=np.float32), {}),
            ("orthogonal", np.array([0.0, 1.0, 0.0], dtype=np.float32), {}),
            ("opposite", -base, {}),
        ]

        async def body(index: VectorIndex) -> None:
            await index.add(items)
            hits = await index.search(base, 10, score_threshold=0.5)
            assert [block_id for block_id, _ in hits] == ["same", "near"]
            everything = await index.search(base, 10)
            assert everything[-1][0] == "opposite" and everything[-1][1] == pytest.approx(-1.0, abs=1e-4)

        self._with_index(tmp_path, body)

    def test_re_adding_an_id_replaces_its_vector(self, tmp_path: Path) -> None:
        async def body(index: VectorIndex) -> None:
            await index.add(
                [
                    ("x", np.array([1, 0], dtype=np.float32), {"agent_id": "old"}),
                    ("y", np.array([0.7, 0.7], dtype=np.float32), {}),
                ]
            )
            await index.add([("x", np.array([0, 1], dtype=np.float32), {"agent_id": "new"})])
            assert await index.count() == 2
            hits = await index.search(np.array([0, 1], dtype=np.float32), 1)
            assert hits[0][0] == "x" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
            assert (
                await index.search(np.array([0, 1], dtype=np.float32), 5, filters={"agent_id": "old"}) == []
            )

        self._with_index(tmp_path, body)

    def test_an_id_given_twice_in_one_add_keeps_only_its_last_vector_also_after_reopen(
        self, tmp_path: Path
    ) -> None:
        first, last = np.array([1, 0, 0], dtype=np.float32), np.array([0, 0, 1], dtype=np.float32)

        async def check(index: VectorIndex) -> None:
            assert await index.count() == 2
            hits = await index.search(first, 5)
            assert sorted(block_id for block_id, _ in hits) == ["x", "y"]  # no stale "x" vector
            best_id, best_score = (await index.search(last, 1))[0]
            assert best_id == "x" and best_score == pytest.approx(1.0, abs=1e-4)

        async def scenario() -> None:
            index = self.make_index(tmp_path)
            await index.add([("x", first, {}), ("y", np.array([1, 1, 0], dtype=np.float32), {}),
                             ("x", np.array([0, 1, 0], dtype=np.float32), {}), ("x", last, {})])
            await check(index)
            await index.flush()
            await index.close()
            reopened = self.reopen(index, tmp_path)
            if reopened is not None:
                try:
                    await check(reopened)
                finally:
                    await reopened.close()

        run(scenario())

    def test_hostile_vectors_and_queries_are_refused(self, tmp_path: Path) -> None:
        async def body(index: VectorIndex) -> None:
            await index.add([("a", np.ones(8, dtype=np.float32), {})])
            bad_vectors = [
                np.ones(9, dtype=np.float32),
                np.zeros(8, dtype=np.float32),
                np.array([np.nan] * 8, dtype=np.float32),
                np.ones((2, 4), dtype=np.float32),
            ]
            for bad in bad_vectors:
                with pytest.raises(FormatError):
                    await index.add([("b", bad, {})])
                with pytest.raises(FormatError):
                    await index.search(bad, 3)
            with pytest.raises(LimitExceededError):
                await index.add([("c", np.ones(limits.vector_dimensions_max + 1, dtype=np.float32), {})])
            too_many = {f"k{i}": "v" for i in range(limits.vector_filter_fields_max + 1)}
            with pytest.raises(LimitExceededError):
                await index.search(np.ones(8, dtype=np.float32), 3, filters=too_many)
            with pytest.raises(FormatError):
                await index.add([("d", np.ones(8, dtype=np.float32), {"k": 1})])  # type: ignore[dict-item]
            with pytest.raises(LimitExceededError):
                await index.search(np.ones(8, dtype=np.float32), limits.engine_search_limit_max + 1)
            assert await index.count() == 1

        self._with_index(tmp_path, body)

    def test_empty_index_and_zero_limit_return_nothing(self, tmp_path: Path) -> None:
        async def body(index: VectorIndex) -> None:
            assert await index.search(np.ones(4, dtype=np.float32), 5) == []
            await index.add([("a", np.ones(4, dtype=np.float32), {})])
            assert await index.search(np.ones(4, dtype=np.float32), 0) == []

        self._with_index(tmp_path, body)

    def test_remove_and_clear_forget_vectors_also_after_reopen(self, tmp_path: Path) -> None:
        vectors = clustered_vectors(40, 8, seed=9)

        async def scenario() -> None:
            index = self.make_index(tmp_path)
            await index.add(self._items(vectors))
            assert await index.remove(["v3", "v4", "absent"]) == 2
            assert await index.count() == 38
            assert all(hit[0] not in {"v3", "v4"} for hit in await index.search(vectors[3], 40))
            await index.flush()
            await index.close()
            durable = self.reopen(index, tmp_path)
            reopened = durable if durable is not None else self.make_index(tmp_path)
            try:
                if durable is not None:
                    assert await reopened.count() == 38
                await reopened.clear()
                assert await reopened.count() == 0 and reopened.dimensions is None
                await reopened.add([("other", np.ones(3, dtype=np.float32), {})])  # a new dimension
                await reopened.flush()
            finally:
                await reopened.close()
            last = self.reopen(reopened, tmp_path)
            if last is not None:
                try:
                    assert await last.count() == 1 and last.dimensions == 3
                finally:
                    await last.close()

        run(scenario())

    def test_flushed_vectors_survive_reopen(self, tmp_path: Path) -> None:
        vectors = clustered_vectors(300, 24, seed=5)

        async def scenario() -> None:
            index = self.make_index(tmp_path)
            await index.add(self._items(vectors))
            await index.flush()
            await index.close()
            reopened = self.reopen(index, tmp_path)
            if reopened is None:
                pytest.skip("volatile backend")
            try:
                assert await reopened.count() == 300
                hits = await reopened.search(vectors[7], 3, filters={"agent_id": "a2"})
                assert hits[0][0] == "v7"
                await reopened.add([("late", vectors[0], {})])  # keys keep growing after reopen
                assert await reopened.count() == 301
            finally:
                await reopened.close()

        run(scenario())


# ---- HotCache ----------------------------------------------------------------------------------


class HotCacheTests:
    """Behaviour every :class:`HotCache` must show; ``make_cache`` receives the byte capacity."""

    def make_cache(self, capacity_bytes: int) -> HotCache:
        raise NotImplementedError

    def test_get_returns_what_put_stored_and_counts(self) -> None:
        cache = self.make_cache(1 << 20)
        assert cache.get("k") is None
        cache.put("k", b"value")
        assert cache.get("k") == b"value"
        stats = cache.stats()
        assert (stats["hits"], stats["misses"], stats["entries"]) == (1, 1, 1)
        assert stats["hit_rate"] == pytest.approx(0.5)

    def test_bytes_never_exceed_capacity_and_lru_is_evicted(self) -> None:
        cache = self.make_cache(10_000)
        for i in range(100):
            cache.put(f"k{i}", bytes(1000))
            if i == 50:
                assert cache.get("k49") is not None  # refreshed: survives longer than k48
            assert cache.stats()["bytes"] <= 10_000
        assert cache.get("k99") is not None
        assert cache.get("k0") is None
        assert cache.stats()["evictions"] > 0

    def test_recently_used_entry_survives_eviction(self) -> None:
        cache = self.make_cache(4 * 1200)
        for key in ("a", "b", "c"):
            cache.put(key, bytes(1000))
        assert cache.get("a") is not None
        cache.put("d", bytes(1000))
        cache.put("e", bytes(1000))
        assert cache.get("a") is not None
        assert cache.get("b") is None

    def test_oversized_value_is_not_cached_and_replaces_nothing(self) -> None:
        cache = self.make_cache(5000)
        cache.put("small", b"s")
        cache.put("huge", bytes(6000))
        assert cache.get("huge") is None
        assert cache.get("small") == b"s"

    def test_overwrite_and_discard_keep_the_byte_count_exact(self) -> None:
        cache = self.make_cache(1 << 20)
        cache.put("k", bytes(5000))
        first = cache.stats()["bytes"]
        cache.put("k", bytes(100))
        assert cache.stats()["bytes"] == first - 4900
        assert cache.stats()["entries"] == 1
        cache.discard("k")
        cache.discard("k")
        assert cache.stats()["bytes"] == 0 and cache.get("k") is None

    def test_many_tiny_entries_are_bounded_too(self) -> None:
        cache = self.make_cache(64 * 1024)
        for i in range(100_000):
            cache.put(str(i), b"")
        assert cache.stats()["bytes"] <= 64 * 1024
        assert cache.stats()["entries"] < 1000


# ---- ObjectStore -------------------------------------------------------------------------------


class ObjectStoreTests:
    """Behaviour every :class:`ObjectStore` must show."""

    def make_store(self, directory: Path) -> ObjectStore:
        raise NotImplementedError

    def _with_store(self, tmp_path: Path, body: Callable[[ObjectStore], Awaitable[Any]]) -> Any:
        return run_with(lambda: self.make_store(tmp_path), body)

    def test_put_get_exists_delete(self, tmp_path: Path) -> None:
        data = random_bytes(100_000, 9)

        async def body(store: ObjectStore) -> None:
            assert not await store.exists("packs/a.pack")
            await store.put("packs/a.pack", data)
            assert await store.exists("packs/a.pack")
            assert await store.get("packs/a.pack") == data
            assert await store.get_range("packs/a.pack", 1000, 50) == data[1000:1050]
            assert await store.get_range("packs/a.pack", len(data) - 10, 50) == data[-10:]
            await store.put("packs/a.pack", b"replaced")
            assert await store.get("packs/a.pack") == b"replaced"
            await store.delete("packs/a.pack")
            await store.delete("packs/a.pack")
            assert not await store.exists("packs/a.pack")
            with pytest.raises(BlockNotFoundError):
                await store.get("packs/a.pack")

        self._with_store(tmp_path, body)

    def test_list_by_prefix_is_sorted(self, tmp_path: Path) -> None:
        async def body(store: ObjectStore) -> None:
            for key in ("packs/b", "packs/a", "other/c", "packsx"):
                await store.put(key, key.encode())
            assert await store.list("packs/") == ["packs/a", "packs/b"]
            assert await store.list() == ["other/c", "packs/a", "packs/b", "packsx"]

        self._with_store(tmp_path, body)

    def test_hostile_keys_are_refused(self, tmp_path: Path) -> None:
        hostile = [
            "",
            "../escape",
            "a/../../b",
            "/absolute",
            "a//b",
            "a/./b",
            "back\\slash",
            "nul\0byte",
            "x" * (limits.object_key_bytes_max + 1),
        ]

        async def body(store: ObjectStore) -> None:
            for key in hostile:
                with pytest.raises((FormatError, LimitExceededError)):
                    await store.put(key, b"data")
            assert await store.list() == []

        self._with_store(tmp_path, body)
        assert not (tmp_path.parent / "escape").exists()

    def test_closed_store_refuses_calls(self, tmp_path: Path) -> None:
        async def scenario() -> None:
            store = self.make_store(tmp_path)
            await store.close()
            await store.close()
            with pytest.raises(StoreClosedError):
                await store.put("k", b"v")

        run(scenario())


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of a file in place (a raw helper for corruption tests)."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        original = handle.read(1)
        assert len(original) == 1, f"{path} has no byte at offset {offset}"
        handle.seek(offset)
        handle.write(bytes([original[0] ^ 0xFF]))
        handle.flush()
        os.fsync(handle.fileno())


__all__ = [
    "ChunkStoreTests",
    "HotCacheTests",
    "MetadataIndexTests",
    "ObjectStoreTests",
    "VectorIndexTests",
    "chunk",
    "clustered_vectors",
    "flip_byte",
    "make_record",
    "random_bytes",
    "run",
]
