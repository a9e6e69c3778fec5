"""The storage engine end to end: read-your-writes, replay, queries, search, stats, check, export/import."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from maif import limits
from maif.config import StorageConfig
from maif.errors import (
    ArgumentValueError,
    BlockNotFoundError,
    ConfigError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    StoreClosedError,
)
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import block_digest
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def memory_backends() -> Backends:
    return Backends(MemoryChunkStore(), MemoryMetadataIndex(), MemoryVectorIndex(), LRUHotCache(1 << 22))


async def open_store(data_dir: Path, *, local: bool = False, **settings: Any) -> MAIFStorage:
    config = {"data_dir": str(data_dir), **settings}
    return await create_maif_storage(config, backends=None if local else memory_backends())


def with_store(data_dir: Path, body: Callable[[MAIFStorage], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        async with await open_store(data_dir, **options) as storage:
            return await body(storage)

    return run(main())


def embedding(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_write_then_read_is_bit_exact_with_receipt_digest(tmp_path: Path) -> None:
    block = MAIFBlock(id="b1", data=os.urandom(3000), agent_id="agent-7", metadata={"lang": "en", "n": 3},
                      parents=("p0",), version="2.1")

    async def body(storage: MAIFStorage) -> None:
        receipt = await storage.write_block(block)
        assert receipt.block_id == "b1" and receipt.lsn == 1 and receipt.digest == block_digest(block)
        first_read, tier = await storage.read_block_with_tier("b1")
        assert first_read == block and tier in ("log", "warm")  # "log" until the applier ran
        await storage.list_blocks()  # waits for the applier: later reads come from the backends
        assert (await storage.read_block_with_tier("b1"))[1] in ("warm", "hot")
        assert await storage.read_block_with_tier("b1") == (block, "hot")

    with_store(tmp_path, body)


def test_unknown_block_is_a_typed_error(tmp_path: Path) -> None:
    async def body(storage: MAIFStorage) -> None:
        with pytest.raises(BlockNotFoundError):
            await storage.read_block("missing")

    with_store(tmp_path, body)


def test_batch_write_gets_consecutive_lsns_and_one_sync(tmp_path: Path) -> None:
    blocks = [MAIFBlock(id=f"k{i}", data=bytes([i]) * 100) for i in range(50)]

    async def body(storage: MAIFStorage) -> None:
        syncs_before = (await storage.get_stats())["wal_syncs_total"]
        receipts = await storage.write_blocks(blocks)
        assert [r.lsn for r in receipts] == list(range(1, 51))
        assert (await storage.get_stats())["wal_syncs_total"] == syncs_before + 1
        assert [await storage.read_block(b.id) for b in blocks] == blocks
        assert await storage.write_blocks([]) == []

    with_store(tmp_path, body)


def test_concurrent_writers_share_group_commits(tmp_path: Path) -> None:
    async def body(storage: MAIFStorage) -> None:
        blocks = [MAIFBlock(id=f"c{i}", data=os.urandom(64)) for i in range(300)]
        receipts = await asyncio.gather(*(storage.write_block(b) for b in blocks))
        assert sorted(r.lsn for r in receipts) == list(range(1, 301))
        stats = await storage.get_stats()
        assert stats["wal_groups_total"] < 300 and stats["writes_total"] == 300
        assert stats["ack_latency_ms_p99"] >= stats["ack_latency_ms_p50"] > 0

    with_store(tmp_path, body)


def test_overwrite_last_writer_wins_across_reopen(tmp_path: Path) -> None:
    first = MAIFBlock(id="same", data=b"v1", agent_id="a")
    second = MAIFBlock(id="same", data=b"v2", agent_id="b")

    async def write(storage: MAIFStorage) -> None:
        await storage.write_block(first)
        assert await storage.read_block("same") == first
        await storage.list_blocks()
        await storage.read_block("same")  # now cached
        await storage.write_block(second)
        assert await storage.read_block("same") == second  # the cache entry was dropped

    with_store(tmp_path, write, local=True)

    async def reread(storage: MAIFStorage) -> None:
        assert await storage.read_block("same") == second
        assert [s.agent_id for s in await storage.list_blocks()] == ["b"]

    with_store(tmp_path, reread, local=True)


@pytest.mark.parametrize("local", [False, True], ids=["memory-backends", "local-backends"])
def test_reopen_replays_the_log(tmp_path: Path, local: bool) -> None:
    blocks = [MAIFBlock(id=f"r{i}", data=os.urandom(i * 7000), agent_id=f"a{i % 3}") for i in range(30)]
    with_store(tmp_path, lambda storage: storage.write_blocks(blocks), local=local)

    async def check(storage: MAIFStorage) -> None:
        for block in blocks:
            assert await storage.read_block(block.id) == block
        assert len(await storage.list_blocks(limit=1000)) == 30

    with_store(tmp_path, check, local=local)


def test_large_payload_is_chunked_and_deduplicated(tmp_path: Path) -> None:
    payload = os.urandom(600_000)

    async def body(storage: MAIFStorage) -> None:
        await storage.write_block(MAIFBlock(id="big1", data=payload))
        await storage.write_block(MAIFBlock(id="big2", data=payload + b"tail"))
        await storage.list_blocks()
        assert (await storage.read_block("big2")).data == payload + b"tail"
        stats = await storage.get_stats()
        assert stats["dedup_ratio"] > 1.5

    with_store(tmp_path, body, local=True)


def test_list_blocks_filters_and_pages(tmp_path: Path) -> None:
    blocks = [MAIFBlock(id=f"l{i:02d}", data=b"x", agent_id="even" if i % 2 == 0 else "odd",
                        timestamp=1000.0 + i, parents=("root",) if i < 3 else ())
              for i in range(20)]

    async def body(storage: MAIFStorage) -> None:
        await storage.write_blocks(blocks)
        evens = await storage.list_blocks(agent_id="even")
        assert [s.block_id for s in evens] == [f"l{i:02d}" for i in range(0, 20, 2)]
        window = await storage.list_blocks(since=1005.0, until=1008.0)
        assert [s.block_id for s in window] == ["l05", "l06", "l07"]
        children = await storage.list_blocks(parent="root")
        assert {s.block_id for s in children} == {"l00", "l01", "l02"}
        page1 = await storage.list_blocks(limit=7)
        page2 = await storage.list_blocks(limit=7, after=page1[-1].block_id)
        assert [s.block_id for s in page1 + page2] == [b.id for b in blocks[:14]]
        assert await storage.list_blocks(block_type=MAIFBlockType.EMBEDDING) == []
        with pytest.raises(ConfigError):
            await storage.list_blocks(limit=0)

    with_store(tmp_path, body)


def test_semantic_search_finds_nearest_with_filters(tmp_path: Path) -> None:
    vectors = {"east": (1.0, 0.0, 0.0), "north": (0.0, 1.0, 0.0), "north-east": (0.7, 0.7, 0.0)}

    async def body(storage: MAIFStorage) -> None:
        for name, vector in vectors.items():
            await storage.write_block(MAIFBlock(id=name, block_type=MAIFBlockType.EMBEDDING,
                                                data=embedding(*vector), agent_id=f"agent-{name}"))
        seed_form = json.dumps({"vector": [0.0, 0.0, 1.0]}).encode()
        await storage.write_block(MAIFBlock(id="up", block_type="EMBD", data=seed_form, agent_id="json"))
        hits = await storage.semantic_search([0.9, 0.1, 0.0], limit=2)
        assert [h.block_id for h in hits] == ["east", "north-east"]
        assert hits[0].agent_id == "agent-east" and hits[0].block_type == "EMBD"
        assert 0.99 < hits[0].score <= 1.0 + 1e-6
        only = await storage.semantic_search([1, 0, 0], filters={"agent_id": "agent-north"})
        assert [h.block_id for h in only] == ["north"]
        strict = await storage.semantic_search([0, 0, 1], score_threshold=0.9)
        assert [h.block_id for h in strict] == ["up"]
        with pytest.raises(ConfigError):
            await storage.semantic_search([float("nan"), 0, 0])

    with_store(tmp_path, body)


def test_malformed_embedding_is_refused_before_it_reaches_the_log(tmp_path: Path) -> None:
    async def body(storage: MAIFStorage) -> None:
        with pytest.raises(FormatError):
            await storage.write_block(MAIFBlock(id="bad", block_type="EMBD", data=b"not a vector"))
        assert (await storage.get_stats())["wal_last_lsn"] == 0
        with pytest.raises(BlockNotFoundError):
            await storage.read_block("bad")

    with_store(tmp_path, body)


@pytest.mark.parametrize("local", [False, True])
def test_an_embedding_of_another_dimension_is_refused_and_the_store_keeps_working(
    tmp_path: Path, local: bool
) -> None:
    async def main() -> None:
        async with await open_store(tmp_path, local=local) as storage:
            await storage.write_block(MAIFBlock(id="e4", block_type="EMBD", data=embedding(1, 0, 0, 0)))
            with pytest.raises(FormatError, match="4-dimensional"):
                await storage.write_block(MAIFBlock(id="e3", block_type="EMBD", data=embedding(1, 2, 3)))
            await storage.write_block(MAIFBlock(id="after", data=b"still writable"))
            assert (await storage.read_block("after")).data == b"still writable"
            assert [hit.block_id for hit in await storage.semantic_search([1, 0, 0, 0], limit=1)] == ["e4"]
        if local:  # the dimension is remembered across a reopen
            async with await open_store(tmp_path, local=True) as storage:
                with pytest.raises(FormatError, match="4-dimensional"):
                    await storage.write_block(MAIFBlock(id="e2", block_type="EMBD", data=embedding(1, 2)))

    run(main())


def test_stats_report_the_documented_keys(tmp_path: Path) -> None:
    async def body(storage: MAIFStorage) -> dict[str, Any]:
        await storage.write_blocks([MAIFBlock(id=f"s{i}", data=b"a" * 5000) for i in range(10)])
        await storage.list_blocks()
        await storage.read_block("s1")
        await storage.read_block("s1")
        return await storage.get_stats()

    stats = with_store(tmp_path, body, durability="bulk_unsafe")
    for key in ("writes_total", "writes_per_s", "ack_latency_ms_p50", "ack_latency_ms_p99", "cache_hit_rate",
                "compression_ratio", "dedup_ratio", "bytes_hot", "bytes_warm", "bytes_cold", "wal_depth"):
        assert key in stats, key
    assert stats["writes_total"] == 10 and stats["wal_depth"] == 0 and stats["blocks"] == 10
    assert stats["durability"] == "bulk_unsafe" and stats["wal_fsync"] is False
    assert stats["wal_syncs_total"] == 0
    assert stats["cache_hit_rate"] == pytest.approx(0.5)


def test_the_kafka_log_without_the_shared_backends_is_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the shared backends"):
        run(create_maif_storage({"data_dir": str(tmp_path), "kafka_brokers": ["127.0.0.1:1"]}))


@pytest.mark.parametrize(("settings", "named"), [
    ({"postgres_url": "postgresql://maif:s3cret-pw@127.0.0.1:1/maif"}, "postgres_url"),
    ({"qdrant_url": "http://127.0.0.1:1"}, "qdrant_url"),
    ({"s3_endpoint": "http://127.0.0.1:1", "s3_bucket": "maif"}, "s3_endpoint"),
    ({"s3_endpoint": "http://127.0.0.1:1"}, "s3_bucket"),
])
def test_an_unreachable_server_is_one_config_error_naming_it(tmp_path: Path, settings: dict[str, str],
                                                             named: str, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Nothing listens on port 1: the open fails at once, naming the setting, never the password."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "maif-test")  # credentials exist; the server does not
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "maif-test-secret")
    with pytest.raises(ConfigError) as caught:
        run(create_maif_storage({"data_dir": str(tmp_path), **settings}))
    assert named in caught.value.diagnostics()
    assert "s3cret-pw" not in caught.value.diagnostics() and "s3cret-pw" not in repr(caught.value)

    async def reopen() -> None:  # the failed open released the lock and everything it had opened
        storage = await create_maif_storage({"data_dir": str(tmp_path)})
        await storage.close()

    run(reopen())


def test_config_from_a_json_file_and_a_typed_section(tmp_path: Path) -> None:
    path = tmp_path / "maif.json"
    path.write_text(json.dumps({"storage": {"data_dir": str(tmp_path / "d"), "batch_size": 10}}))

    async def main() -> None:
        storage = await create_maif_storage(str(path), backends=memory_backends())
        assert storage.config.batch_size == 10
        await storage.close()
        typed = StorageConfig(data_dir=str(tmp_path / "e"))
        storage = await create_maif_storage(typed, backends=memory_backends())
        await storage.close()

    run(main())
    assert (tmp_path / "d" / "wal").is_dir() and (tmp_path / "e" / "wal").is_dir()


def test_closed_store_refuses_everything(tmp_path: Path) -> None:
    async def main() -> None:
        storage = await open_store(tmp_path)
        await storage.write_block(MAIFBlock(id="x", data=b"1"))
        await storage.close()
        await storage.close()  # idempotent
        with pytest.raises(StoreClosedError):
            await storage.write_block(MAIFBlock(id="y", data=b"2"))
        with pytest.raises(StoreClosedError):
            await storage.read_block("x")

    run(main())


def test_backpressure_bounds_unapplied_bytes(tmp_path: Path) -> None:
    """Writers wait for the applier: unapplied bytes never exceed the bound (one batch may fill it)."""

    class SlowChunks(MemoryChunkStore):
        async def put_chunks(self, chunks: Any) -> int:
            await asyncio.sleep(0.01)
            return await super().put_chunks(chunks)

    async def main() -> None:
        backends = memory_backends()
        backends.chunks = SlowChunks()
        config = {"data_dir": str(tmp_path), "max_memory_mb": 1}
        storage = await create_maif_storage(config, backends=backends)
        bound = storage._inflight_bytes_max
        peak = 0

        async def writer(start: int) -> None:
            nonlocal peak
            for i in range(start, start + 40):
                batch = [MAIFBlock(id=f"w{i}-{j}", data=os.urandom(20_000)) for j in range(8)]
                await storage.write_blocks(batch)
                peak = max(peak, storage._inflight_bytes)

        await asyncio.gather(*(writer(k * 1000) for k in range(4)))
        assert 0 < peak <= bound
        assert (await storage.read_block("w3039-7")).data
        await storage.close()

    run(main())


def test_check_finds_missing_and_corrupt_chunks(tmp_path: Path) -> None:
    async def main() -> None:
        backends = memory_backends()
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends)
        await storage.write_blocks([MAIFBlock(id=f"h{i}", data=os.urandom(2000)) for i in range(20)])
        healthy = await storage.check(read_data_fraction=1.0)
        assert healthy.ok and healthy.blocks_checked == 20 and healthy.blocks_read == 20
        record = await backends.index.get("h3")
        assert record is not None
        chunk_map = backends.chunks.chunks  # raw access: damage the store behind the API
        digest = record.chunks[0]
        chunk_map.pop(digest)
        report = await storage.check(read_data_fraction=0.0)
        assert not report.ok and any("h3" in problem for problem in report.problems)
        with pytest.raises((BlockNotFoundError, IntegrityError)):
            await storage.read_block("h3")
        await storage.close()

    run(main())


_RSS_CHILD = """
import asyncio, sys
from maif.format.block import MAIFBlock
from maif.storage.engine import create_maif_storage

async def main(data_dir, count):
    config = {"data_dir": data_dir, "durability": "bulk_unsafe", "max_memory_mb": 64}
    peak_unapplied = 0
    async with await create_maif_storage(config) as storage:
        for start in range(0, count, 1000):
            await storage.write_blocks([MAIFBlock(id=f"m{i}", data=i.to_bytes(8, "little") * 12,
                                                  timestamp=float(i)) for i in range(start, start + 1000)])
            peak_unapplied = max(peak_unapplied, storage._inflight_bytes)
        bound = storage._inflight_bytes_max
        await storage.list_blocks(limit=1)  # waits until everything acknowledged is applied
        blocks = (await storage.get_stats())["blocks"]
    # VmHWM (this process's own peak), not ru_maxrss: Linux carries the parent's peak into ru_maxrss
    # across (v)fork and exec, so under a large pytest parent ru_maxrss reports the parent's memory.
    peak_rss_mb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024
    print(peak_rss_mb, peak_unapplied, bound, blocks)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_memory_stays_bounded_while_ingesting_many_small_blocks(tmp_path: Path) -> None:
    """200k small blocks in bulk mode: peak RSS within max_memory_mb + 240 MB (the million: benchmarks)."""
    import subprocess
    import sys

    count = 200_000

    def ingest(directory: Path) -> tuple[int, ...]:
        output = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(directory), str(count)],
                                check=True, capture_output=True, text=True, timeout=600).stdout
        return tuple(int(word) for word in output.split())

    peak_rss_mb, peak_unapplied, bound, blocks = ingest(tmp_path / "d")
    assert blocks == count
    assert peak_unapplied <= bound
    # Measured: 179-223 MB when block records joined the packs; 254-258 MB in ten runs on 2026-12-04 (at
    # 0d68a0d too, so not a change of that day; it passed under load and failed on a quieter machine).
    # Most of it is the pack store's per-chunk index (ADR 0030; ~170 B of Python objects per chunk)
    # interleaved with each batch's short-lived objects: CPython's allocator then holds 124 arenas
    # (130 MB) for 55 MB of live objects, and malloc_trim returns nothing. 240 MB over the budget keeps
    # a margin over that spread and still catches a leak of a few hundred bytes per block.
    assert peak_rss_mb <= 64 + 240, f"peak RSS {peak_rss_mb} MB"


def test_exists_and_wait_applied_are_public(tmp_path: Path) -> None:
    """The queue workers (ADR 0074) ask whether a result is stored and wait until every node sees it."""

    async def body(storage: MAIFStorage) -> None:
        assert not await storage.exists("a")
        await storage.write_block(MAIFBlock(id="a", data=b"x"))  # no agent id: still a block
        assert await storage.exists("a")  # acknowledged, perhaps not yet applied
        await storage.wait_applied()
        assert await storage.exists("a")
        await storage.delete_block("a")
        assert not await storage.exists("a")
        with pytest.raises(ArgumentValueError):
            await storage.exists("")

    with_store(tmp_path / "d", body)


def test_exists_many_answers_like_exists_for_a_batch(tmp_path: Path) -> None:
    """One lookup for a whole fetch of tasks (ADR 0074): acknowledged, applied, deleted and absent ids."""

    async def body(storage: MAIFStorage) -> None:
        await storage.write_blocks([MAIFBlock(id=f"b{n}", data=b"x") for n in range(5)])
        await storage.wait_applied()
        await storage.delete_block("b1")
        await storage.write_block(MAIFBlock(id="late", data=b"y"))  # acknowledged, perhaps unapplied
        asked = ["b0", "b1", "b2", "absent", "late", "b0"]
        assert await storage.exists_many(asked) == {"b0", "b2", "late"}
        assert await storage.exists_many(asked) == {block_id for block_id in asked
                                                    if await storage.exists(block_id)}
        assert await storage.exists_many([]) == set()
        with pytest.raises(LimitExceededError):
            await storage.exists_many([f"b{n}" for n in range(limits.index_get_many_max + 1)])
        with pytest.raises(ArgumentValueError):
            await storage.exists_many(["b0", ""])

    with_store(tmp_path / "d", body)


def test_import_takes_a_block_larger_than_the_readers_default_budget(tmp_path: Path) -> None:
    """ContainerReader.block() refuses over 64 MiB unless granted more; import verifies the container
    first, then grants the format's limit, so any block the store holds comes back in (a regression of
    the hostile-file budget, found when it landed)."""
    from maif import limits
    from maif.format.signing import generate_signing_key

    key = generate_signing_key()
    large = MAIFBlock(id="large", data=os.urandom(limits.materialized_payload_bytes_max + 4096))
    container = tmp_path / "large.maif"

    async def export(storage: MAIFStorage) -> None:
        await storage.write_block(large)
        await storage.export(container, None, key)

    with_store(tmp_path / "source", export, local=True)

    async def import_into(storage: MAIFStorage) -> None:
        assert await storage.import_maif(container, [key.public_key()]) == 1
        assert (await storage.read_block("large")).data == large.data

    with_store(tmp_path / "target", import_into, local=True)


def test_export_import_round_trip_verifies(tmp_path: Path) -> None:
    from maif.errors import SignatureError
    from maif.format.container import verify_container
    from maif.format.signing import generate_signing_key

    key = generate_signing_key()
    stranger = generate_signing_key()
    originals = [MAIFBlock(id=f"x{i}", data=os.urandom(100 + i * 997), agent_id="exporter",
                           metadata={"i": i}, parents=(f"x{i - 1}",) if i else (), timestamp=50.0 + i)
                 for i in range(25)]
    container = tmp_path / "out.maif"

    async def export(storage: MAIFStorage) -> None:
        await storage.write_blocks(originals)
        version = await storage.export(container, None, key)
        assert version.block_count == 25
        subset = await storage.export(tmp_path / "subset.maif", ["x3", "x7"], key)
        assert subset.block_count == 2

    with_store(tmp_path / "source", export, local=True)
    report = verify_container(container, [key.public_key()])
    assert report.ok and report.block_count == 25

    async def import_into(storage: MAIFStorage) -> None:
        with pytest.raises(SignatureError):
            await storage.import_maif(container, [stranger.public_key()])  # untrusted signer: refused
        assert await storage.list_blocks() == []
        assert await storage.import_maif(container, [key.public_key()]) == 25
        for block in originals:
            assert await storage.read_block(block.id) == block

    with_store(tmp_path / "target", import_into)

    tampered = bytearray(container.read_bytes())
    tampered[200] ^= 0x01
    (tmp_path / "tampered.maif").write_bytes(bytes(tampered))

    async def refuse(storage: MAIFStorage) -> None:
        with pytest.raises((SignatureError, IntegrityError, FormatError)):
            await storage.import_maif(tmp_path / "tampered.maif", [key.public_key()])
        assert await storage.list_blocks() == []

    with_store(tmp_path / "third", refuse)


def test_read_reports_the_tier_that_served_it(tmp_path: Path) -> None:
    import time

    from maif.storage.backends.local import LocalChunkStore, LocalMetadataIndex, LocalObjectStore
    from maif.storage.tiers import TieredChunkStore, TierPolicy

    async def main() -> None:
        chunks = TieredChunkStore(LocalChunkStore(tmp_path / "packs", pack_bytes_max=64 * 1024),
                                  LocalObjectStore(tmp_path / "cold"), TierPolicy(0.0, 0.0))
        backends = Backends(chunks, LocalMetadataIndex(tmp_path / "index.sqlite"), MemoryVectorIndex(),
                            LRUHotCache(1 << 20))
        async with await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends) as storage:
            originals = [MAIFBlock(id=f"t{i}", data=os.urandom(30_000)) for i in range(12)]
            await storage.write_blocks(originals)
            await storage.list_blocks()
            await chunks.flush()
            moved = await chunks.migrate(now=time.time() + 60)
            assert moved, "sealed packs should have gone cold"
            tiers = {await storage.read_block_with_tier(b.id) == (b, "cold") for b in originals[:3]}
            assert tiers == {True}
            assert await storage.read_block_with_tier("t0") == (originals[0], "hot")
            assert (await storage.check(read_data_fraction=1.0)).ok

    run(main())


def test_the_tier_policy_runs_in_the_background_and_reads_stay_transparent(tmp_path: Path) -> None:
    import asyncio

    from maif.storage.backends.local import LocalChunkStore, LocalMetadataIndex, LocalObjectStore
    from maif.storage.tiers import TieredChunkStore, TierPolicy

    async def main() -> None:
        chunks = TieredChunkStore(LocalChunkStore(tmp_path / "packs", pack_bytes_max=64 * 1024),
                                  LocalObjectStore(tmp_path / "cold"), TierPolicy(0.0, 0.0))
        backends = Backends(chunks, LocalMetadataIndex(tmp_path / "index.sqlite"), MemoryVectorIndex(),
                            LRUHotCache(1 << 16))
        config = {"data_dir": str(tmp_path), "tier_interval_s": 0.05}
        async with await create_maif_storage(config, backends=backends) as storage:
            originals = [MAIFBlock(id=f"t{i}", data=os.urandom(30_000)) for i in range(12)]
            await storage.write_blocks(originals)
            await storage.list_blocks()  # waits until applied
            for _ in range(200):
                if (await storage.get_stats())["packs_moved_cold_total"]:
                    break
                await asyncio.sleep(0.05)
            stats = await storage.get_stats()
            assert stats["packs_moved_cold_total"] > 0 and stats["bytes_cold"] > 0
            assert stats["tier_failure"] is None
            for block in originals:
                assert (await storage.read_block(block.id)) == block
            assert (await storage.check(read_data_fraction=1.0)).ok

    run(main())


def test_the_default_backends_are_tiered(tmp_path: Path) -> None:
    from maif.config import StorageConfig
    from maif.storage.engine import default_backends
    from maif.storage.tiers import TieredChunkStore

    backends = default_backends(StorageConfig(data_dir=str(tmp_path)))
    assert isinstance(backends.chunks, TieredChunkStore)
    run(backends.close())


def test_cancelled_writer_does_not_corrupt_the_accounting(tmp_path: Path) -> None:
    async def body(storage: MAIFStorage) -> None:
        task = asyncio.get_running_loop().create_task(storage.write_block(MAIFBlock(id="maybe", data=b"x")))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await storage.write_block(MAIFBlock(id="after", data=b"y"))
        await storage.list_blocks()
        assert storage._inflight_bytes == 0
        # The cancelled record was queued before the cancel: it may commit; if it did, it reads back.
        if (await storage.get_stats())["wal_last_lsn"] == 2:
            assert (await storage.read_block("maybe")).data == b"x"

    with_store(tmp_path, body)


def test_undecodable_hot_cache_entry_falls_back_to_the_backends(tmp_path: Path) -> None:
    async def main() -> None:
        backends = memory_backends()
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends)
        block = MAIFBlock(id="k", data=b"payload", metadata={"tags": ["a", "b"], "raw": b"\x00"})
        await storage.write_block(block)
        await storage.list_blocks()
        assert await storage.read_block_with_tier("k") == (block, "warm")
        assert await storage.read_block_with_tier("k") == (block, "hot")
        backends.cache.put("k", b"\xc1 not msgpack")
        assert await storage.read_block_with_tier("k") == (block, "warm")
        await storage.close()

    run(main())


def test_checkpoints_recycle_applied_segments_and_lsns_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MAIFStorage, "wal_segment_bytes_max", 8192)
    written = [MAIFBlock(id=f"seg{i}", data=os.urandom(3000)) for i in range(40)]

    async def write(storage: MAIFStorage) -> None:
        for block in written:  # one group each, so segments rotate
            await storage.write_block(block)
        assert (await storage.get_stats())["wal_segments"] > 10

    with_store(tmp_path, write, local=True)  # close() checkpoints, then deletes applied segments
    assert len(list((tmp_path / "wal").iterdir())) == 1

    async def reopen(storage: MAIFStorage) -> None:
        stats = await storage.get_stats()
        assert stats["wal_checkpoint_lsn"] == 40 and stats["wal_segments"] == 1
        assert (await storage.write_block(MAIFBlock(id="next", data=b"n"))).lsn == 41
        for block in written:
            assert await storage.read_block(block.id) == block

    with_store(tmp_path, reopen, local=True)

    # Volatile (memory) backends: the log is the whole store, so no segment is ever deleted.
    async def write_one_by_one(storage: MAIFStorage) -> None:  # one group each, so segments rotate
        for block in written:
            await storage.write_block(block)

    with_store(tmp_path / "volatile", write_one_by_one)
    assert len(list((tmp_path / "volatile" / "wal").iterdir())) > 10

    async def memory_reopen(storage: MAIFStorage) -> None:
        assert len(await storage.list_blocks(limit=100)) == 40

    with_store(tmp_path / "volatile", memory_reopen)


def test_small_warm_reads_run_on_the_loop_and_large_or_cold_ones_in_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from maif import limits
    from maif.storage.backends.local import LocalChunkStore, LocalMetadataIndex, LocalObjectStore
    from maif.storage.tiers import TieredChunkStore, TierPolicy

    hops: list[str] = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(function: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(function, "__name__", repr(function)))
        return await real_to_thread(function, *args, **kwargs)

    async def main() -> None:
        chunks = TieredChunkStore(LocalChunkStore(tmp_path / "packs", pack_bytes_max=64 * 1024),
                                  LocalObjectStore(tmp_path / "cold"), TierPolicy(0.0, 0.0))
        backends = Backends(chunks, LocalMetadataIndex(tmp_path / "index.sqlite"), MemoryVectorIndex(),
                            LRUHotCache(1))  # no hot cache: every read below goes to the backends
        async with await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends) as storage:
            small = [MAIFBlock(id=f"s{i}", data=os.urandom(2000 + i)) for i in range(50)]
            large = MAIFBlock(id="large", data=os.urandom(limits.engine_inline_read_bytes_max + 1))
            await storage.write_blocks([*small, large])
            await storage.list_blocks()  # applied: reads now come from the index and the packs
            monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
            for block in small:
                assert await storage.read_block_with_tier(block.id) == (block, "warm")
            assert hops == [], f"small warm reads hopped to threads: {hops}"
            assert await storage.read_block_with_tier(large.id) == (large, "warm")
            assert hops, "a block above the inline bound is read through worker threads"
            monkeypatch.setattr(asyncio, "to_thread", real_to_thread)
            await chunks.flush()
            assert await chunks.migrate(now=time.time() + 60)
            cold = [await storage.read_block_with_tier(block.id) for block in small[:5]]
            assert {tier for _, tier in cold} <= {"cold", "warm"} and [b for b, _ in cold] == small[:5]
            assert "cold" in {tier for _, tier in cold}  # cold packs are read by the async path

    run(main())
