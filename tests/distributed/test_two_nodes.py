"""Several nodes, one store (docs/adr/0070-scale-out.md), on real PostgreSQL + pgvector, S3 (SeaweedFS)
and Redis: a block acknowledged by node A is readable, listed, searchable and exported through node
B once applied; two nodes writing one id with different content give a recorded conflict, never a
silent overwrite; a poisoned shared-cache entry never reaches a reader.

Two engines run in this one process, each with its own data_dir (lock, write-ahead log, node id),
sharing the servers exactly as two `maif serve` processes on two machines would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from maif.errors import BlockNotFoundError, CredentialsError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.signing import generate_signing_key
from maif.storage.engine import MAIFStorage, create_maif_storage

T = TypeVar("T")


def node_config(tmp_path: Path, name: str, postgres: str, bucket: str, endpoint: str,
                redis: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"data_dir": str(tmp_path / name), "node_id": name, "postgres_url": postgres,
                              "s3_endpoint": endpoint, "s3_bucket": bucket, "tier_interval_s": 0}
    if redis is not None:
        config["redis_url"] = redis
    return config


@pytest.fixture
def two_nodes(tmp_path: Path, fresh_postgres_url: str, fresh_s3_bucket: str, s3_settings: Any,
              redis_url: str) -> Callable[[Callable[[MAIFStorage, MAIFStorage], Awaitable[T]]], T]:
    def run(body: Callable[[MAIFStorage, MAIFStorage], Awaitable[T]]) -> T:
        async def main() -> T:
            a = await create_maif_storage(node_config(tmp_path, "node-a", fresh_postgres_url, fresh_s3_bucket,
                                                      s3_settings.endpoint, redis_url))
            try:
                b = await create_maif_storage(node_config(tmp_path, "node-b", fresh_postgres_url,
                                                          fresh_s3_bucket, s3_settings.endpoint, redis_url))
                try:
                    return await body(a, b)
                finally:
                    await b.close()
            finally:
                await a.close()

        return asyncio.run(main())

    return run


def corpus(count: int) -> list[MAIFBlock]:
    rng = np.random.default_rng(7)
    blocks = []
    for number in range(count):
        if number % 5 == 4:
            vector = rng.standard_normal(32).astype(np.float32)
            blocks.append(MAIFBlock(id=f"e{number}", block_type=MAIFBlockType.EMBEDDING,
                                    data=vector.tobytes(), metadata={"dtype": "float32"},
                                    agent_id="agent-a", timestamp=1000.0 + number))
        else:
            blocks.append(MAIFBlock(id=f"t{number}", data=os.urandom(500 + number * 997 % 300_000),
                                    agent_id="agent-a", metadata={"n": number}, timestamp=1000.0 + number))
    return blocks


async def applied(storage: MAIFStorage) -> None:
    await storage._wait_applied()


def test_a_block_acknowledged_on_one_node_is_served_by_the_other(two_nodes: Any, tmp_path: Path) -> None:
    blocks = corpus(40)

    async def body(a: MAIFStorage, b: MAIFStorage) -> None:
        receipts = await a.write_blocks(blocks)
        assert [receipt.block_id for receipt in receipts] == [block.id for block in blocks]
        await applied(a)
        for block in blocks:
            assert await b.read_block(block.id) == block
        listed = [summary.block_id for summary in await b.list_blocks(agent_id="agent-a", limit=100)]
        assert listed == [block.id for block in blocks]
        target = blocks[9]
        hits = await b.semantic_search(np.frombuffer(target.data, dtype="<f4"), limit=1)
        assert hits and hits[0].block_id == target.id
        key = generate_signing_key()
        await b.export(tmp_path / "from-b.maif", [block.id for block in blocks], key)
        imported = await create_maif_storage({"data_dir": str(tmp_path / "embedded")})
        try:
            assert await imported.import_maif(tmp_path / "from-b.maif", [key.public_key()]) == len(blocks)
            assert await imported.read_block(blocks[3].id) == blocks[3]
        finally:
            await imported.close()
        report = await b.check(1.0)
        assert report.ok, report.problems

    two_nodes(body)


def test_same_id_different_content_on_two_nodes_is_a_recorded_conflict(two_nodes: Any) -> None:
    first = MAIFBlock(id="shared", data=b"written by node a", agent_id="agent-a")
    second = MAIFBlock(id="shared", data=b"written by node b", agent_id="agent-b")

    async def body(a: MAIFStorage, b: MAIFStorage) -> None:
        await a.write_block(first)
        await applied(a)
        await b.write_block(second)
        await applied(b)
        assert await a.read_block("shared") == first
        assert await b.read_block("shared") == first  # the index, not b's own unapplied copy, decides
        assert (await b.get_stats())["conflicts_total"] == 1
        conflicts = await b._backends.index.conflicts("shared")  # type: ignore[attr-defined]
        assert len(conflicts) == 1 and conflicts[0]["node_id"] == "node-b"
        await a.write_block(MAIFBlock(id="shared", data=b"a again", agent_id="agent-a"))  # its own: applies
        await applied(a)
        assert (await b.read_block("shared")).data == b"a again"
        await b.delete_block("shared")
        await applied(b)
        with pytest.raises(BlockNotFoundError):
            await a.read_block("shared")

    two_nodes(body)


def test_a_poisoned_shared_cache_entry_never_reaches_a_reader(two_nodes: Any) -> None:
    block = MAIFBlock(id="cached", data=os.urandom(4000), agent_id="agent-a")

    async def body(a: MAIFStorage, b: MAIFStorage) -> None:
        await a.write_block(block)
        await applied(a)
        assert await b.read_block(block.id) == block  # fills Redis
        shared = b._backends.shared_cache
        assert shared is not None
        assert await shared.get(block.id) is not None
        forged = MAIFBlock(id="cached", data=b"forged bytes", agent_id="agent-a")
        from maif.format.codec import encode_block

        await shared.put(block.id, encode_block(forged))
        b._backends.cache = type(b._backends.cache)(1 << 20)  # an empty hot cache: Redis is asked
        assert await b.read_block(block.id) == block
        assert b._shared_cache_rejects == 1

    two_nodes(body)


def test_wrong_s3_credentials_are_a_typed_error(tmp_path: Path, fresh_postgres_url: str, fresh_s3_bucket: str,
                                                s3_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    config = node_config(tmp_path, "node-x", fresh_postgres_url, fresh_s3_bucket, s3_settings.endpoint, None)
    with pytest.raises(CredentialsError) as caught:
        asyncio.run(create_maif_storage(config))
    assert "not-the-secret" not in caught.value.diagnostics()


def test_a_lost_postgresql_index_is_rebuilt_from_the_records_in_s3(two_nodes: Any,
                                                                   fresh_postgres_url: str) -> None:
    """The shared index is derived state (ADR 0043): emptied behind MAIF's back (a restored backup, an
    operator's DELETE), it is rebuilt from the block records in the pack objects by repair()."""
    import asyncpg

    blocks = corpus(30)

    async def body(a: MAIFStorage, b: MAIFStorage) -> None:
        await a.write_blocks(blocks[:15])
        await b.write_blocks(blocks[15:])
        await applied(a)
        await applied(b)
        connection = await asyncpg.connect(fresh_postgres_url)
        try:
            await connection.execute("DELETE FROM maif.blocks")
            await connection.execute("DELETE FROM maif.vectors")
        finally:
            await connection.close()
        assert await b.list_blocks(agent_id="agent-a", limit=100) == []
        report = await b.repair()  # one node rebuilds what every node wrote
        assert any("re-indexed" in line or "rebuilt" in line for line in report.repaired), report.repaired
        listed = [summary.block_id for summary in await a.list_blocks(agent_id="agent-a", limit=100)]
        assert listed == [block.id for block in blocks]
        for block in blocks:
            assert await a.read_block(block.id) == block
        target = blocks[9]
        hits = await a.semantic_search(np.frombuffer(target.data, dtype="<f4"), limit=1)
        assert hits[0].block_id == target.id

    two_nodes(body)
