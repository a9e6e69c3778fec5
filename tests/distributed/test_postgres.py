"""PostgresMetadataIndex, PgVectorIndex and PostgresLocationIndex against a real PostgreSQL with pgvector
(started by the suite): the shared conformance suites (the location index under ObjectPackChunkStore), a
model check against the in-memory index, migrations and the layout guard, per-node applied LSNs, cross-node
conflicts (also racing), credentials that never leak, and pgvector recall and filters."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif.errors import BackendError, FormatError, StoreClosedError, UnsupportedVersionError
from maif.storage.backends import postgres as postgres_backend
from maif.storage.backends.base import ChunkStore, MetadataIndex, VectorIndex
from maif.storage.backends.local import LocalObjectStore
from maif.storage.backends.memory import MemoryMetadataIndex
from maif.storage.backends.objectpacks import ObjectLocation, ObjectPackChunkStore
from maif.storage.backends.postgres import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ForeignSchemaError,
    PgVectorIndex,
    PostgresCredentialsError,
    PostgresLocationIndex,
    PostgresMetadataIndex,
    migration_lock_key,
)
from maif.storage.records import BlockRecord, decode_record, tombstone_record
from maif.testing.conformance import (
    ChunkStoreTests,
    MetadataIndexTests,
    VectorIndexTests,
    clustered_vectors,
    make_record,
    run,
)

PASSWORD = "pw-Sup3r-s3cret-do-not-echo"


class TestPostgresMetadataIndex(MetadataIndexTests):
    @pytest.fixture(autouse=True)
    def _database(self, fresh_postgres_url: str) -> None:
        self.url = fresh_postgres_url

    def make_index(self, directory: Path) -> MetadataIndex:
        return PostgresMetadataIndex(self.url, node_id="node-a")

    def reopen(self, index: MetadataIndex, directory: Path) -> MetadataIndex | None:
        return self.make_index(directory)


class TestPgVectorIndex(VectorIndexTests):
    @pytest.fixture(autouse=True)
    def _database(self, fresh_postgres_url: str) -> None:
        self.url = fresh_postgres_url

    def make_index(self, directory: Path) -> VectorIndex:
        return PgVectorIndex(self.url, node_id="node-a")

    def reopen(self, index: VectorIndex, directory: Path) -> VectorIndex | None:
        return self.make_index(directory)


class TestObjectPackChunkStoreOnPostgresLocations(ChunkStoreTests):
    """Pack objects in a local directory, their locations in PostgreSQL; reopen is another node."""

    @pytest.fixture(autouse=True)
    def _database(self, fresh_postgres_url: str) -> None:
        self.url = fresh_postgres_url

    def make_store(self, directory: Path) -> ChunkStore:
        return ObjectPackChunkStore(LocalObjectStore(directory / "objects"),
                                    PostgresLocationIndex(self.url, node_id="n1"), node_id="n1",
                                    compression_threshold=self.compression_threshold)

    def reopen(self, store: ChunkStore, directory: Path) -> ChunkStore | None:
        return ObjectPackChunkStore(LocalObjectStore(directory / "objects"),
                                    PostgresLocationIndex(self.url, node_id="n2"), node_id="n2",
                                    compression_threshold=self.compression_threshold)

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        assert isinstance(store, ObjectPackChunkStore) and isinstance(store.objects, LocalObjectStore)
        buffered = store._buffered.get(digest)
        if buffered is not None:  # not uploaded yet: damage the buffer
            flags, stored, raw_length = buffered
            damaged = bytearray(stored)
            damaged[len(damaged) // 2] ^= 0x01
            store._buffered[digest] = (flags, bytes(damaged), raw_length)
            return
        key, offset, length = located(self.url, digest)
        path = store.objects.root / key
        data = bytearray(path.read_bytes())
        data[offset + 48 + length // 2] ^= 0x01
        path.write_bytes(bytes(data))

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        assert isinstance(store, ObjectPackChunkStore)
        buffered = store._buffered.get(digest)
        return len(buffered[1]) if buffered is not None else located(self.url, digest)[2]


def located(url: str, digest: bytes) -> tuple[str, int, int]:
    """(object key, frame offset, stored length) of a chunk, read from the table behind the index's back
    (on a thread with its own event loop: the hooks are synchronous and called inside a running one)."""

    async def read() -> Any:
        async with raw(url) as connection:
            return await connection.fetchrow("SELECT object_key, frame_offset, stored_length "
                                             "FROM maif.chunk_locations WHERE digest = $1", digest)

    with ThreadPoolExecutor(1) as thread:
        row = thread.submit(asyncio.run, read()).result()
    assert row is not None, digest.hex()
    return row[0], row[1], row[2]


# ---- helpers -------------------------------------------------------------------------------------


@asynccontextmanager
async def raw(url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection, to look at (or damage) the database behind the index's back."""
    connection = await asyncpg.connect(url)
    try:
        yield connection
    finally:
        await connection.close()


async def opened(index: Any) -> Any:
    return await index.open()


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = (parts.username or "postgres")
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def all_text(error: BaseException) -> str:
    """The error, its hint and every chained cause, as one string."""
    parts = []
    current: BaseException | None = error
    while current is not None:
        parts.append(f"{type(current).__name__}: {current} {getattr(current, 'hint', '')}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def fails(coroutine: Awaitable[Any], kind: type[BaseException]) -> BaseException:
    async def scenario() -> BaseException:
        with pytest.raises(kind) as caught:
            await coroutine
        return caught.value

    return run(scenario())


# ---- migrations and the layout guard -------------------------------------------------------------


def test_migrations_are_applied_once_and_recorded(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        first = await opened(PostgresMetadataIndex(fresh_postgres_url, node_id="a"))
        second = await opened(PgVectorIndex(fresh_postgres_url, node_id="b"))
        try:
            assert first.migrations_applied == list(range(1, SCHEMA_VERSION + 1))
            assert second._db.migrations_applied == []
            assert first.store_id == second.store_id is not None
        finally:
            await first.close()
            await second.close()
        async with raw(fresh_postgres_url) as connection:
            rows = await connection.fetch("SELECT version, applied_by FROM maif.maif_schema ORDER BY version")
            assert [(row[0], row[1]) for row in rows] == [(v, "a") for v in range(1, SCHEMA_VERSION + 1)]

    run(scenario())


def test_a_version_1_database_migrates_to_version_2_at_open(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = make_record(1)

    async def scenario() -> None:
        with monkeypatch.context() as patched:  # this code as it was at version 1
            patched.setattr(postgres_backend, "MIGRATIONS", MIGRATIONS[:1])
            patched.setattr(postgres_backend, "SCHEMA_VERSION", 1)
            first = await opened(PostgresMetadataIndex(fresh_postgres_url, node_id="old"))
            assert first.migrations_applied == [1]
            await first.close()
        async with raw(fresh_postgres_url) as connection:  # a row written by version 1 (no node_id)
            await connection.execute(
                "INSERT INTO maif.blocks (block_id, block_type, agent_id, timestamp, version, parents, "
                "metadata, chunks, payload_length, digest, lsn) VALUES ($1, 'TEXT', 'a1', 1.0, '1', "
                "'\\x90', '\\x80', '\\x90', 0, $2, 1)", old.block_id, old.digest)
        locations = await opened(PostgresLocationIndex(fresh_postgres_url, node_id="b"))
        b = await opened(PostgresMetadataIndex(fresh_postgres_url, node_id="b"))
        try:
            assert locations.migrations_applied == [2] and b.migrations_applied == []
            assert await writer_of(fresh_postgres_url, old.block_id) == ""
            rewritten = version(1, "b", lsn=3)
            await b.put([rewritten])  # a row from before has no known writer: any node replaces it
            assert await b.get(old.block_id) == rewritten and b.conflicts_total == 0
            assert await locations.count() == (0, 0)
        finally:
            await locations.close()
            await b.close()
        async with raw(fresh_postgres_url) as connection:
            assert [row[0] for row in await connection.fetch(
                "SELECT version FROM maif.maif_schema ORDER BY version")] == [1, 2]

    run(scenario())


def test_concurrent_opens_migrate_exactly_once(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        indexes: list[Any] = [PostgresMetadataIndex(fresh_postgres_url, node_id=f"n{i}") for i in range(4)]
        indexes += [PgVectorIndex(fresh_postgres_url, node_id=f"v{i}") for i in range(2)]
        try:
            await asyncio.gather(*(index.open() for index in indexes))
            applied = [index._db.migrations_applied for index in indexes]
            assert sorted(map(len, applied)) == [0] * 5 + [SCHEMA_VERSION]
            assert len({index.store_id for index in indexes}) == 1
        finally:
            for index in indexes:
                await index.close()
        async with raw(fresh_postgres_url) as connection:
            assert await connection.fetchval("SELECT count(*) FROM maif.maif_schema") == SCHEMA_VERSION

    run(scenario())


def test_an_open_waits_for_the_migration_lock_and_gives_up_after_its_timeout(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        async with raw(fresh_postgres_url) as holder:
            await holder.execute("SELECT pg_advisory_lock($1)", migration_lock_key("maif"))
            impatient = PostgresMetadataIndex(fresh_postgres_url, lock_timeout_s=0.3)
            with pytest.raises(BackendError, match="waiting for the lock"):
                await impatient.open()
            await impatient.close()
            patient = PostgresMetadataIndex(fresh_postgres_url)
            waiting = asyncio.ensure_future(patient.open())
            await asyncio.sleep(0.5)
            assert not waiting.done()  # the holder could be another node half-way through a migration
            await holder.execute("SELECT pg_advisory_unlock($1)", migration_lock_key("maif"))
            await asyncio.wait_for(waiting, 10)
            assert patient.migrations_applied == list(range(1, SCHEMA_VERSION + 1))
            await patient.close()

    run(scenario())


def test_a_newer_schema_version_is_refused_by_both_indexes(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        index = await opened(PostgresMetadataIndex(fresh_postgres_url))
        await index.put([make_record(1)])
        await index.close()
        async with raw(fresh_postgres_url) as connection:
            await connection.execute(
                "INSERT INTO maif.maif_schema (version, description, applied_by) VALUES ($1, 'future', 'x')",
                SCHEMA_VERSION + 1)
        for newer in (PostgresMetadataIndex(fresh_postgres_url), PgVectorIndex(fresh_postgres_url)):
            with pytest.raises(UnsupportedVersionError) as caught:
                await newer.open()
            message = str(caught.value)
            assert f"version {SCHEMA_VERSION + 1}" in message and f"up to {SCHEMA_VERSION}" in message
            assert "upgrade MAIF" in message
            await newer.close()
        async with raw(fresh_postgres_url) as connection:  # nothing was touched
            assert await connection.fetchval("SELECT count(*) FROM maif.blocks") == 1

    run(scenario())


@pytest.mark.parametrize("foreign_sql", [
    "CREATE TABLE maif.users (id integer PRIMARY KEY, name text); INSERT INTO maif.users VALUES (1, 'ann')",
    "CREATE TABLE maif.maif_schema (version varchar PRIMARY KEY); INSERT INTO maif.maif_schema VALUES ('1')",
])
def test_a_foreign_layout_is_refused_and_left_untouched(fresh_postgres_url: str, foreign_sql: str) -> None:
    async def scenario() -> None:
        async with raw(fresh_postgres_url) as connection:
            await connection.execute("CREATE SCHEMA maif")
            await connection.execute(foreign_sql)
        for index in (PostgresMetadataIndex(fresh_postgres_url), PgVectorIndex(fresh_postgres_url)):
            with pytest.raises(ForeignSchemaError) as caught:
                await index.open()
            assert "refused" in str(caught.value) and caught.value.schema == "maif"
            with pytest.raises(ForeignSchemaError):
                await index.count()  # every call refuses, nothing is retried into the schema
            await index.close()
        async with raw(fresh_postgres_url) as connection:
            tables = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'maif'")
            assert len(tables) == 1 and tables[0][0] in ("users", "maif_schema")

    run(scenario())


def test_a_damaged_layout_and_another_store_are_refused(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        index = await opened(PostgresMetadataIndex(fresh_postgres_url, store_id="store-one"))
        await index.close()
        other = PostgresMetadataIndex(fresh_postgres_url, store_id="store-two")
        with pytest.raises(ForeignSchemaError, match="store-one"):
            await other.open()
        await other.close()
        adopting = await opened(PostgresMetadataIndex(fresh_postgres_url))
        assert adopting.store_id == "store-one"
        await adopting.close()
        async with raw(fresh_postgres_url) as connection:
            await connection.execute("DROP TABLE maif.tombstones")
        damaged = PostgresMetadataIndex(fresh_postgres_url)
        with pytest.raises(ForeignSchemaError, match="lacks tables tombstones"):
            await damaged.open()
        await damaged.close()

    run(scenario())


def test_a_different_schema_is_a_different_store(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        first = await opened(PostgresMetadataIndex(fresh_postgres_url, schema="maif_one"))
        second = await opened(PostgresMetadataIndex(fresh_postgres_url, schema="maif_two"))
        await first.put([make_record(1)], applied_lsn=3)
        assert await second.count() == 0 and await second.applied_lsn() == 0
        assert first.store_id != second.store_id
        await first.close()
        await second.close()

    run(scenario())


# ---- several nodes, one index --------------------------------------------------------------------


def test_applied_lsn_is_kept_per_node_and_records_are_shared(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        node_a = PostgresMetadataIndex(fresh_postgres_url, node_id="node-a")
        node_b = PostgresMetadataIndex(fresh_postgres_url, node_id="node-b")
        try:
            await node_a.put([make_record(1)], applied_lsn=5)
            assert await node_b.applied_lsn() == 0
            await node_b.put([make_record(2)], applied_lsn=9)
            await node_b.set_applied_lsn(4)  # never back
            assert (await node_a.applied_lsn(), await node_b.applied_lsn()) == (5, 9)
            assert await node_b.get("block-0001") == make_record(1)  # written through node A
            assert await node_a.count() == await node_b.count() == 2
        finally:
            await node_a.close()
            await node_b.close()
        reopened = PostgresMetadataIndex(fresh_postgres_url, node_id="node-a")
        assert await reopened.applied_lsn() == 5
        await reopened.close()

    run(scenario())


def test_concurrent_writers_on_overlapping_ids_keep_the_newest(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        nodes = [PostgresMetadataIndex(fresh_postgres_url, node_id=f"n{i}", pool_max=3) for i in range(3)]
        try:
            batches = [[make_record(n, lsn=100 * k + n) for n in range(0, 300, 1 + k)] for k in range(6)]
            await asyncio.gather(*(nodes[k % 3].put(batch, newer_only=True)
                                   for k, batch in enumerate(batches)))
            for n in range(0, 300, 7):
                newest = max(100 * k + n for k in range(6) if n % (1 + k) == 0)
                kept = await nodes[0].get(f"block-{n:04d}")
                assert kept is not None and kept.lsn == newest
        finally:
            for node in nodes:
                await node.close()

    run(scenario())


# ---- two nodes writing the same block id (ADR 0070) ---------------------------------------------


def version(number: int, tag: str, **changes: Any) -> BlockRecord:
    """Block "block-NNNN" with content ``tag``: the digest differs per tag."""
    return make_record(number, digest=blake3.blake3(f"{number} {tag}".encode()).digest(), **changes)


async def conflict_rows(url: str) -> list[Any]:
    async with raw(url) as connection:
        return list(await connection.fetch("SELECT block_id, node_id, lsn, digest, record, existing_node_id, "
                                           "existing_digest FROM maif.conflicts ORDER BY id"))


async def writer_of(url: str, block_id: str) -> str | None:
    async with raw(url) as connection:
        value = await connection.fetchval("SELECT node_id FROM maif.blocks WHERE block_id = $1", block_id)
        return None if value is None else str(value)


def test_another_nodes_version_of_a_block_is_a_recorded_conflict_never_an_overwrite(
    fresh_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = fresh_postgres_url
    first, second = version(7, "from a", lsn=3), version(7, "from b", lsn=40)

    async def scenario() -> None:
        a = PostgresMetadataIndex(url, node_id="a")
        b = PostgresMetadataIndex(url, node_id="b")
        try:
            await a.put([first])
            with caplog.at_level(logging.WARNING, logger=postgres_backend.__name__):
                await b.put([second, make_record(8)], applied_lsn=41)
            assert await a.get(first.block_id) == first and await writer_of(url, first.block_id) == "a"
            assert await b.get("block-0008") == make_record(8)  # the rest of the batch is applied
            assert await b.applied_lsn() == 41  # moved with the conflict row
            assert (a.conflicts_total, b.conflicts_total) == (0, 1)
            rows = await conflict_rows(url)
            assert len(rows) == 1
            block_id, node, lsn, digest, record, existing_node, existing_digest = rows[0]
            assert (block_id, node, lsn, existing_node) == (first.block_id, "b", 40, "a")
            assert (bytes(digest), bytes(existing_digest)) == (second.digest, first.digest)
            assert decode_record(bytes(record)) == second
            listed = await a.conflicts(first.block_id)
            assert listed == [{"block_id": first.block_id, "node_id": "b", "lsn": 40,
                               "digest": second.digest.hex(), "existing_node_id": "a",
                               "existing_digest": first.digest.hex(),
                               "created_at": listed[0]["created_at"]}]
            assert "T" in listed[0]["created_at"] and await a.conflicts("block-0008") == []
            warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
            assert "'block-0007'" in warning and "'a'" in warning and "'b'" in warning

            mine = version(7, "a again", lsn=5)
            await a.put([mine])  # its own row: applied
            assert await b.get(mine.block_id) == mine
            await b.put([version(7, "a again", lsn=44)])  # the same digest: applied, nothing changes
            assert await a.get(mine.block_id) == mine and await writer_of(url, mine.block_id) == "a"
            assert b.conflicts_total == 1 and len(await conflict_rows(url)) == 1
            await b.put([tombstone_record(mine.block_id, 45)])  # a deletion from any node deletes
            assert await a.get(mine.block_id) is None
            third = version(7, "b after the delete", lsn=46)
            await b.put([third])  # the row is gone: applied, now b's
            assert await a.get(third.block_id) == third and await writer_of(url, third.block_id) == "b"
            await a.put([version(7, "a on b's", lsn=6)])  # the other way round: a conflict too
            assert a.conflicts_total == 1 and await a.get(third.block_id) == third
            assert [row["node_id"] for row in await b.conflicts()] == ["b", "a"]
            assert len(await b.conflicts(limit=1)) == 1
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_deletion_then_a_write_in_one_batch_replaces_another_nodes_row(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        a = PostgresMetadataIndex(fresh_postgres_url, node_id="a")
        b = PostgresMetadataIndex(fresh_postgres_url, node_id="b")
        try:
            await a.put([version(1, "a", parents=("p-a",))])
            rewritten = version(1, "b", lsn=9, parents=("p-b",))
            await b.put([tombstone_record("block-0001", 8), rewritten])
            assert await a.get("block-0001") == rewritten and b.conflicts_total == 0
            assert await a.query(parent="p-b") == [rewritten] and await a.query(parent="p-a") == []
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_conflict_committed_after_the_writers_snapshot_is_still_caught(fresh_postgres_url: str) -> None:
    """Node a's insert commits while node b's upsert waits for it: b's statement snapshot predates the
    row, so only ON CONFLICT (not a read) can see it. b records the conflict, never overwrites."""
    mine = version(3, "a", lsn=2)

    async def scenario() -> None:
        b = await opened(PostgresMetadataIndex(fresh_postgres_url, node_id="b"))
        try:
            async with raw(fresh_postgres_url) as node_a:
                transaction = node_a.transaction()
                await transaction.start()
                await node_a.execute(
                    "INSERT INTO maif.blocks (block_id, block_type, agent_id, timestamp, version, parents, "
                    "metadata, chunks, payload_length, digest, lsn, node_id) VALUES "
                    "($1, 'TEXT', 'a1', 1.0, '1', '\\x90', '\\x80', '\\x90', 0, $2, 2, 'a')",
                    mine.block_id, mine.digest)
                writing = asyncio.ensure_future(b.put([version(3, "b", lsn=7)]))
                await asyncio.sleep(0.5)
                assert not writing.done()  # waiting on a's uncommitted row
                await transaction.commit()
                await asyncio.wait_for(writing, 10)
            kept = await b.get(mine.block_id)
            assert kept is not None and kept.digest == mine.digest and b.conflicts_total == 1
            assert [(r["node_id"], r["existing_node_id"]) for r in await b.conflicts()] == [("b", "a")]
        finally:
            await b.close()

    run(scenario())


def test_nodes_racing_on_a_new_block_id_leave_one_version_and_one_conflict(fresh_postgres_url: str) -> None:
    rounds = 20

    async def scenario() -> None:
        a = await opened(PostgresMetadataIndex(fresh_postgres_url, node_id="a", pool_max=2))
        b = await opened(PostgresMetadataIndex(fresh_postgres_url, node_id="b", pool_max=2))
        try:
            for number in range(rounds):
                ours, theirs = version(number, "a", lsn=number + 1), version(number, "b", lsn=number + 1)
                await asyncio.gather(a.put([ours]), b.put([theirs]))
                kept = await a.get(ours.block_id)
                assert kept in (ours, theirs)
                winner = "a" if kept == ours else "b"
                assert await writer_of(fresh_postgres_url, ours.block_id) == winner
                listed = await a.conflicts(ours.block_id)
                assert len(listed) == 1, (number, listed)  # never zero: no silent overwrite, no drop
                assert listed[0]["existing_node_id"] == winner != listed[0]["node_id"]
                assert listed[0]["existing_digest"] == kept.digest.hex()
            assert a.conflicts_total + b.conflicts_total == rounds
            assert len(await conflict_rows(fresh_postgres_url)) == rounds
        finally:
            await a.close()
            await b.close()

    run(scenario())


def test_a_failure_before_the_conflict_is_recorded_leaves_the_applied_lsn_behind(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upsert commits first; the applied LSN moves only with the conflict rows, so a crash in between
    makes the node replay the batch, which finds the conflict again."""

    async def scenario() -> None:
        a = PostgresMetadataIndex(fresh_postgres_url, node_id="a")
        b = PostgresMetadataIndex(fresh_postgres_url, node_id="b")
        try:
            await a.put([version(1, "a")])
            batch = [version(1, "b", lsn=5), make_record(2, lsn=6)]
            with monkeypatch.context() as patched:
                patched.setattr(b, "_sql_conflicts", "SELECT 1/0")
                with pytest.raises(BackendError):
                    await b.put(batch, applied_lsn=6)
            assert await b.applied_lsn() == 0 and b.conflicts_total == 0
            assert await b.get("block-0002") == make_record(2, lsn=6)  # the upsert itself committed
            await b.put(batch, applied_lsn=6)  # the replay
            assert await b.applied_lsn() == 6 and b.conflicts_total == 1
            assert len(await conflict_rows(fresh_postgres_url)) == 1
        finally:
            await a.close()
            await b.close()

    run(scenario())


# ---- shared chunk locations ----------------------------------------------------------------------


def test_two_nodes_share_chunks_and_deduplicate_through_postgres(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        node_a = ObjectPackChunkStore(LocalObjectStore(tmp_path),
                                      PostgresLocationIndex(fresh_postgres_url, node_id="a"), node_id="a")
        node_b = ObjectPackChunkStore(LocalObjectStore(tmp_path),
                                      PostgresLocationIndex(fresh_postgres_url, node_id="b"), node_id="b")
        try:
            data = os.urandom(50_000)
            digest = blake3.blake3(data).digest()
            await node_a.put_chunks([(digest, data)])
            assert await node_a.get_chunk(digest) == data  # read-your-writes from the buffer
            assert digest not in await node_b.has_chunks([digest])  # not uploaded yet: not visible
            await node_a.put_records([b"a record ends the batch"])
            assert await node_b.get_chunk(digest) == data
            assert await node_b.put_chunks([(digest, data)]) == 0  # stored once across nodes
            await node_b.flush()
            assert [key.split("/")[1] for key in await node_a.objects.list("packs/")] == ["a"]
            assert await node_b.locations.count() == (1, 1)
            # both upload the same new chunk at once: the first location wins, both read it
            shared = os.urandom(30_000)
            shared_digest = blake3.blake3(shared).digest()
            await asyncio.gather(node_a.put_chunks([(shared_digest, shared)]),
                                 node_b.put_chunks([(shared_digest, shared)]))
            await asyncio.gather(node_a.flush(), node_b.flush())
            assert len(await node_a.objects.list("packs/")) == 3
            assert await node_a.locations.count() == (2, 1)
            assert await node_a.get_chunk(shared_digest) == await node_b.get_chunk(shared_digest) == shared
            async with raw(fresh_postgres_url) as connection:
                writers = dict(await connection.fetch("SELECT digest, node_id FROM maif.chunk_locations"))
            assert writers[digest] == "a" and writers[shared_digest] in ("a", "b")
            located_everywhere = await node_b.locations.sample(1.0)
            assert sorted(entry[0] for entry in located_everywhere) == sorted(writers)
            assert await node_b.locations.sample(0.0) == []
            assert len(await node_b.locations.sample(0.5)) <= 3
            with pytest.raises(FormatError):
                await node_b.locations.sample(1.5)
        finally:
            await node_a.close()
            await node_b.close()

    run(scenario())


def test_a_location_batch_is_one_statement_and_the_first_location_wins(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = asyncpg.connection.Connection.execute

    async def counting(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(query)
        return await original(self, query, *args, **kwargs)

    async def scenario() -> None:
        index = await opened(PostgresLocationIndex(fresh_postgres_url, node_id="n"))
        try:
            digests = [blake3.blake3(str(n).encode()).digest() for n in range(3000)]
            entries = [(digest, ObjectLocation("packs/n/one.pack", 16 + n, n % 4, n, n)) for n, digest
                       in enumerate(digests)]
            monkeypatch.setattr(asyncpg.connection.Connection, "execute", counting)
            await index.add([*entries, (digests[0], ObjectLocation("packs/n/later.pack", 99, 0, 1, 1))])
            monkeypatch.undo()
            assert len(calls) == 1, calls
            await index.add([(digests[1], ObjectLocation("packs/m/other.pack", 7, 0, 1, 1))])
            found = await index.lookup([*digests[:3], b"\x00" * 32])
            assert found == dict(entries[:3])  # the first location of each digest, absent ones left out
            assert await index.count() == (1500, 1500)  # flags & 2: block records
        finally:
            await index.close()
        with pytest.raises(StoreClosedError):
            await index.lookup(digests[:1])

    run(scenario())


def test_a_batch_of_4096_records_takes_a_few_statements(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []  # round trips: execute, and fetch (a plain put's upsert returns its conflicts)
    originals = {name: getattr(asyncpg.connection.Connection, name) for name in ("execute", "fetch")}

    def counting(name: str) -> Any:
        async def call(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(query)
            return await originals[name](self, query, *args, **kwargs)

        return call

    async def scenario() -> None:
        index = await opened(PostgresMetadataIndex(fresh_postgres_url))
        records = [make_record(n, parents=(f"p{n}", f"q{n}")) for n in range(4096)]
        for name in originals:
            monkeypatch.setattr(asyncpg.connection.Connection, name, counting(name))
        await index.put(records, applied_lsn=4096)
        assert len(calls) == 1, calls  # rows, their edges and the applied LSN: one atomic statement
        await index.put([*records[:2000], tombstone_record("block-0007", 9000)], applied_lsn=5000,
                        newer_only=True)
        monkeypatch.undo()
        assert len(calls) == 1 + 4, calls  # BEGIN, the tombstone, the rows, COMMIT
        assert await index.count() == 4095
        assert [r.block_id for r in await index.query(parent="q42")] == ["block-0042"]
        await index.close()

    run(scenario())


def test_a_put_larger_than_one_statement_is_split_and_stays_atomic(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_backend, "_STATEMENT_ROWS_MAX", 2)
    records = [make_record(n) for n in range(7)] + [tombstone_record("block-0003", 50)]

    async def scenario() -> None:
        index = PostgresMetadataIndex(fresh_postgres_url)
        model = MemoryMetadataIndex()
        for target in (index, model):
            await target.put(records, applied_lsn=8)
        assert await index.query() == await model.query() and await index.applied_lsn() == 8
        with pytest.raises(BackendError):  # a failure in the last statement undoes the first ones
            await index.put([make_record(n, block_id=f"new-{n}") for n in range(5)]
                            + [make_record(9, block_id="new-9", lsn=2**63)], applied_lsn=99)
        assert await index.count() == 6 and await index.applied_lsn() == 8
        await index.close()

    run(scenario())


# ---- the model check: PostgreSQL answers exactly as the in-memory reference ----------------------


OPERATIONS = st.lists(
    st.one_of(
        st.builds(
            lambda number, lsn, agent, second, parents: make_record(
                number, lsn=lsn, agent_id=agent, timestamp=float(second),
                parents=tuple(f"block-{p:04d}" for p in parents)),
            st.integers(0, 12), st.integers(1, 30), st.sampled_from(["a0", "a1", "a\x00", "a\x01b", "é"]),
            st.integers(0, 5), st.lists(st.integers(0, 12), max_size=3),
        ),
        st.builds(lambda number, lsn: tombstone_record(f"block-{number:04d}", lsn),
                  st.integers(0, 12), st.integers(1, 30)),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(OPERATIONS, st.booleans()), min_size=1, max_size=4),
       queries=st.lists(st.fixed_dictionaries({}, optional={
           "agent_id": st.sampled_from(["a0", "a1", "a\x00", "a\x01b"]),
           "since": st.integers(0, 5).map(float),
           "parent": st.integers(0, 12).map(lambda p: f"block-{p:04d}"),
           "limit": st.integers(0, 20)}), min_size=1, max_size=3))
def test_postgres_index_agrees_with_the_memory_model(
    fresh_postgres_url: str, batches: list[tuple[list[BlockRecord], bool]], queries: list[dict[str, Any]]
) -> None:
    async def scenario() -> None:
        async with raw(fresh_postgres_url) as connection:
            if await connection.fetchval("SELECT to_regclass('maif.blocks')") is not None:
                await connection.execute("TRUNCATE maif.blocks, maif.parents, maif.tombstones")
        index = PostgresMetadataIndex(fresh_postgres_url, pool_max=2)
        model = MemoryMetadataIndex()
        try:
            for records, newer_only in batches:  # whole batches: duplicates, tombstones, ties within one
                await index.put(records, newer_only=newer_only)
                await model.put(records, newer_only=newer_only)
            assert await index.count() == await model.count()
            for block_id in {f"block-{n:04d}" for n in range(13)}:
                assert await index.get(block_id) == await model.get(block_id), block_id
            for query in queries:
                assert await index.query(**query) == await model.query(**query), query
            everything = await model.query(limit=1000)
            assert await index.query(limit=1000) == everything
            if everything:
                after = everything[len(everything) // 2].block_id
                assert await index.query(after=after) == await model.query(after=after)
        finally:
            await index.close()

    run(scenario())


def test_ids_and_attributes_holding_nul_round_trip_in_code_point_order(fresh_postgres_url: str) -> None:
    ids = ["a", "a\x00", "a\x00\x00", "a\x01", "a\x01\x02", "a\x02", "a\x00z", "ab", "é", "\U0001f600"]

    async def scenario() -> None:
        index = PostgresMetadataIndex(fresh_postgres_url)
        records = [make_record(0, block_id=block_id, agent_id=block_id, timestamp=1.0, parents=(block_id,),
                               version="v\x00") for block_id in ids]
        await index.put(records)
        assert [r.block_id for r in await index.query()] == sorted(ids)
        for record in records:
            assert await index.get(record.block_id) == record
            assert await index.query(agent_id=record.agent_id) == [record]
            assert await index.query(parent=record.block_id) == [record]
        await index.close()
        vectors = PgVectorIndex(fresh_postgres_url)
        await vectors.add([(block_id, np.ones(4, dtype=np.float32) + i, {"k\x00": block_id})
                           for i, block_id in enumerate(ids)])
        for block_id in ids:
            assert [hit[0] for hit in await vectors.search(np.ones(4), 5, filters={"k\x00": block_id})] \
                == [block_id]
        assert await vectors.remove(["a\x00", "a\x01"]) == 2
        await vectors.close()

    run(scenario())


# ---- errors: typed, naming the server and the config key, never the password ---------------------


def test_an_unreachable_server_names_host_port_and_config_key_but_not_the_password() -> None:
    port = closed_port()
    url = f"postgresql://maif:{PASSWORD}@127.0.0.1:{port}/maif"
    for index in (PostgresMetadataIndex(url, connect_timeout_s=3), PgVectorIndex(url, connect_timeout_s=3)):
        error = fails(index.open(), BackendError)
        assert f"127.0.0.1:{port}" in str(error) and "postgres_url" in str(error)
        assert "unreachable" in str(error)
        assert PASSWORD not in all_text(error)
        run(index.close())
    error = fails(PostgresMetadataIndex(url, connect_timeout_s=3).get("x"), BackendError)  # lazily too
    assert PASSWORD not in all_text(error)


async def fake_server_refusing_passwords(received: list[bytes]) -> asyncio.Server:
    """A server that speaks just enough of PostgreSQL's protocol to ask for a cleartext password and
    refuse it (SQLSTATE 28P01), recording what it was sent."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = struct.unpack(">I", await reader.readexactly(4))[0]
                body = await reader.readexactly(length - 4)
                if struct.unpack(">I", body[:4])[0] == 80877103:  # SSLRequest: not here
                    writer.write(b"N")
                    continue
                break
            writer.write(b"R" + struct.pack(">II", 8, 3))  # AuthenticationCleartextPassword
            await writer.drain()
            kind = await reader.readexactly(1)
            length = struct.unpack(">I", await reader.readexactly(4))[0]
            received.append(kind + await reader.readexactly(length - 4))
            fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"maif\"\0\0"
            writer.write(b"E" + struct.pack(">I", 4 + len(fields)) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(session, "127.0.0.1", 0)


def test_a_wrong_password_is_a_typed_error_that_never_echoes_it() -> None:
    async def scenario() -> None:
        received: list[bytes] = []
        server = await fake_server_refusing_passwords(received)
        port = server.sockets[0].getsockname()[1]
        try:
            encoded = PASSWORD.replace("-", "%2D")  # percent-encoded in the URL: redacted all the same
            for index in (PostgresMetadataIndex(f"postgresql://maif:{PASSWORD}@127.0.0.1:{port}/maif"),
                          PgVectorIndex(f"postgresql://maif:{encoded}@127.0.0.1:{port}/maif")):
                with pytest.raises(PostgresCredentialsError) as caught:
                    await index.open()
                text = all_text(caught.value)
                assert PASSWORD not in text and encoded not in text
                assert f"127.0.0.1:{port}" in str(caught.value) and "postgres_url" in str(caught.value)
                assert "'maif'" in str(caught.value)  # the user is named, the password is not
                await index.close()
        finally:
            server.close()
            await server.wait_closed()
        assert any(PASSWORD.encode() in message for message in received)  # it was really sent and refused

    run(scenario())


def test_a_wrong_password_on_the_real_server(postgres_url: str) -> None:
    if not urlsplit(postgres_url).password:
        pytest.skip("the server in use trusts local connections: no password to get wrong")
    url = with_password(postgres_url, PASSWORD)
    error = fails(PostgresMetadataIndex(url).open(), PostgresCredentialsError)
    assert PASSWORD not in all_text(error) and "postgres_url" in str(error)


def test_query_failures_are_backend_errors_and_closed_indexes_refuse(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        index = await opened(PostgresMetadataIndex(fresh_postgres_url))
        vectors = await opened(PgVectorIndex(fresh_postgres_url))
        async with raw(fresh_postgres_url) as connection:
            await connection.execute("DROP TABLE maif.blocks CASCADE")
        with pytest.raises(BackendError, match="read a block record"):
            await index.get("block-0001")
        await index.close()
        with pytest.raises(StoreClosedError):
            await index.count()
        await vectors.close()
        await vectors.close()
        for call in (vectors.add([("x", np.ones(3), {})]), vectors.search(np.ones(3), 3), vectors.count(),
                     vectors.remove(["x"]), vectors.clear(), vectors.flush()):
            with pytest.raises(StoreClosedError):
                await call

    run(scenario())


def test_invalid_configuration_is_refused_before_connecting() -> None:
    from maif.errors import ConfigError

    for bad in ("host=127.0.0.1 password=x", "mysql://x@y/z", 42):
        with pytest.raises(ConfigError) as caught:
            PostgresMetadataIndex(bad)  # type: ignore[arg-type]
        assert "password=x" not in str(caught.value)
    with pytest.raises(ConfigError):
        PostgresMetadataIndex("postgresql://h/d", schema="Robert'); DROP TABLE students;--")
    with pytest.raises(ConfigError):
        PostgresMetadataIndex("postgresql://h/d", pool_min=5, pool_max=2)
    with pytest.raises(ConfigError):
        PgVectorIndex("postgresql://h/d", hnsw_m=16, hnsw_ef_construction=8)


# ---- pgvector: recall, filters, several nodes ----------------------------------------------------


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query_units = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(query_units @ units.T), axis=1)[:, :k]


@pytest.fixture
def loaded_vectors(fresh_postgres_url: str) -> tuple[str, np.ndarray]:
    vectors = clustered_vectors(5000, 64, seed=11, clusters=20)

    async def load() -> None:
        index = PgVectorIndex(fresh_postgres_url)
        for start in range(0, len(vectors), 1000):
            await index.add([(f"v{i}", vectors[i], {"group": f"g{i % 10}", "rare": str(i == 4321)})
                             for i in range(start, start + 1000)])
        await index.close()

    run(load())
    return fresh_postgres_url, vectors


def test_recall_at_10_is_at_least_095_against_exact_search(loaded_vectors: tuple[str, np.ndarray]) -> None:
    url, vectors = loaded_vectors
    rng = np.random.default_rng(12)
    queries = (vectors[rng.integers(0, len(vectors), 200)]
               + 0.3 * rng.standard_normal((200, vectors.shape[1]))).astype(np.float32)
    truth = exact_top(vectors, queries, 10)

    async def scenario() -> float:
        index = await opened(PgVectorIndex(url))
        async with raw(url) as connection:  # the HNSW index is really what answers
            plan = await connection.fetch(
                "EXPLAIN SELECT block_id FROM maif.vectors ORDER BY embedding <=> $1::vector LIMIT 10",
                "[" + ",".join(map(str, queries[0].tolist())) + "]")
            assert any("vectors_hnsw" in row[0] for row in plan), plan
        found = 0
        for query, expected in zip(queries, truth, strict=True):
            hits = await index.search(query, 10)
            found += len({block_id for block_id, _ in hits} & {f"v{i}" for i in expected})
        await index.close()
        return found / truth.size

    recall = run(scenario())
    print(f"pgvector recall@10 = {recall:.4f} (5000 x 64, 200 queries, ef_search 100)")
    assert recall >= 0.95


@pytest.mark.parametrize("iterative_scan", [True, False], ids=["pgvector-0.8", "older-pgvector"])
def test_filtered_search_returns_only_matching_items_and_finds_a_rare_one(
    loaded_vectors: tuple[str, np.ndarray], iterative_scan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, vectors = loaded_vectors
    group = np.array([i % 10 == 3 for i in range(len(vectors))])
    if not iterative_scan:  # as on a server whose pgvector predates hnsw.iterative_scan
        monkeypatch.setattr(postgres_backend, "_version_tuple", lambda version: (0, 7, 4))

    async def scenario() -> None:
        index = await opened(PgVectorIndex(url))
        assert index.iterative_scan is iterative_scan
        recall_hits = 0
        for q in range(0, 5000, 250):
            hits = await index.search(vectors[q], 10, filters={"group": "g3"})
            assert len(hits) == 10 and all(int(block_id[1:]) % 10 == 3 for block_id, _ in hits)
            nearest = exact_top(vectors[group], vectors[q:q + 1], 10)[0]
            truth = {f"v{np.flatnonzero(group)[i]}" for i in nearest}
            recall_hits += len(truth & {block_id for block_id, _ in hits})
        assert recall_hits / (20 * 10) >= 0.95
        rare = await index.search(-vectors[4321], 3, filters={"rare": "True"})  # the farthest, still found
        assert [block_id for block_id, _ in rare] == ["v4321"]
        assert await index.search(vectors[0], 5, filters={"group": "g3", "rare": "True"}) == []
        everything = await index.search(vectors[0], 600, filters={"group": "g1"})
        assert len(everything) == 500 and len({block_id for block_id, _ in everything}) == 500
        await index.close()

    run(scenario())


def test_vectors_added_through_one_node_are_searchable_through_another(fresh_postgres_url: str) -> None:
    async def scenario() -> None:
        node_b = await opened(PgVectorIndex(fresh_postgres_url, node_id="b"))  # opened while empty
        node_a = PgVectorIndex(fresh_postgres_url, node_id="a")
        await node_a.add([("x", np.array([1, 0, 0], dtype=np.float32), {"agent_id": "a"})])
        hits = await node_b.search(np.array([1, 0, 0], dtype=np.float32), 1)
        assert hits[0][0] == "x" and node_b.dimensions == 3
        await node_b.clear()  # a rebuild through node B
        await node_a.add([("y", np.ones(5, dtype=np.float32), {})])  # node A learns the new dimension
        assert node_a.dimensions == 5 and await node_b.count() == 1 and node_b.dimensions == 5
        await node_a.close()
        await node_b.close()

    run(scenario())


def test_vectors_beyond_the_hnsw_limit_are_searched_exactly(fresh_postgres_url: str) -> None:
    vectors = clustered_vectors(50, 2100, seed=3)

    async def scenario() -> None:
        index = PgVectorIndex(fresh_postgres_url)
        await index.add([(f"v{i}", vector, {}) for i, vector in enumerate(vectors)])
        truth = exact_top(vectors, vectors[7:8], 5)[0]
        assert [block_id for block_id, _ in await index.search(vectors[7], 5)] == [f"v{i}" for i in truth]
        await index.close()

    run(scenario())
