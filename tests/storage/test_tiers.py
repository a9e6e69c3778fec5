"""Tiers: sealed packs move to the cold object store by policy; reads stay transparent and verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from maif.errors import BackendError, ConfigError, IntegrityError
from maif.storage.backends.local import LocalChunkStore, LocalObjectStore
from maif.storage.backends.memory import MemoryObjectStore
from maif.storage.packs import pack_file_name
from maif.storage.tiers import TieredChunkStore, TierPolicy, cold_key
from maif.testing.conformance import chunk, flip_byte, random_bytes, run

PACK_BYTES = 60_000


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_tiered(tmp_path: Path, clock: FakeClock, policy: TierPolicy) -> TieredChunkStore:
    warm = LocalChunkStore(tmp_path / "packs", pack_bytes_max=PACK_BYTES, clock=clock)
    return TieredChunkStore(warm, LocalObjectStore(tmp_path / "cold"), policy, clock=clock)


CHUNKS = [chunk(random_bytes(20_000, seed)) for seed in range(10)]


def test_policy_needs_age_and_idleness() -> None:
    policy = TierPolicy(cold_after_age_s=100, cold_after_idle_s=50)
    assert not policy.selects(sealed_at=0, last_read_at=None, now=99)
    assert policy.selects(sealed_at=0, last_read_at=None, now=100)
    assert not policy.selects(sealed_at=0, last_read_at=80, now=120)
    assert policy.selects(sealed_at=0, last_read_at=80, now=130)
    with pytest.raises(ConfigError):
        TierPolicy(cold_after_age_s=-1)


def test_old_sealed_packs_move_cold_and_reads_stay_transparent(tmp_path: Path) -> None:
    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(cold_after_age_s=3600, cold_after_idle_s=0))
        await store.put_chunks(CHUNKS)
        await store.flush()
        assert await store.migrate(now=clock.now - 9_000) == []  # too young yet
        moved = await store.migrate()
        assert moved and 0 not in moved
        for pack_id in moved:
            assert not (tmp_path / "packs" / pack_file_name(pack_id)).exists()
            assert (tmp_path / "cold" / cold_key(pack_id)).exists()
        tiers = set()
        for digest, data in CHUNKS:
            assert await store.get_chunk(digest) == data
            tiers.add(store.served_by(digest))
        assert tiers == {"warm", "cold"}  # the active pack never moves
        assert store.last_read_tier(CHUNKS[0][0]) == "cold"
        assert await store.scrub(1.0) == []
        stats = await store.stats()
        assert stats["cold_packs"] == len(moved)
        assert stats["bytes_cold"] >= len(moved) * PACK_BYTES and stats["bytes_warm"] > 0
        await store.close()

        reopened = make_tiered(tmp_path, clock, TierPolicy())
        for digest, data in CHUNKS:
            assert await reopened.get_chunk(digest) == data
        assert await reopened.put_chunks(CHUNKS) == 0  # dedup still knows cold chunks
        assert (await reopened.stats())["bytes_cold"] == stats["bytes_cold"]
        await reopened.close()

    run(scenario())


def test_recently_read_pack_stays_warm(tmp_path: Path) -> None:
    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(cold_after_age_s=0, cold_after_idle_s=600))
        await store.put_chunks(CHUNKS)
        await store.flush()
        await store.get_chunk(CHUNKS[0][0])  # pack 1 was just read
        moved = await store.migrate()
        assert 1 not in moved and moved
        await store.close()

    run(scenario())


def test_damaged_cold_pack_is_refused_and_reported(tmp_path: Path) -> None:
    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(cold_after_age_s=0, cold_after_idle_s=0))
        await store.put_chunks(CHUNKS)
        await store.flush()
        moved = await store.migrate()
        location = store.warm.packs.locate(CHUNKS[0][0])
        assert location is not None and location.pack_id in moved
        flip_byte(tmp_path / "cold" / cold_key(location.pack_id), location.offset + 48 + 100)
        with pytest.raises(IntegrityError):
            await store.get_chunk(CHUNKS[0][0])
        assert any(CHUNKS[0][0].hex()[:16] in problem for problem in await store.scrub(1.0))
        os.unlink(tmp_path / "cold" / cold_key(location.pack_id))
        problems = await store.scrub(0.0)
        assert any("missing there" in problem for problem in problems)
        with pytest.raises(IntegrityError):
            await store.get_chunk(CHUNKS[0][0])
        await store.close()

    run(scenario())


def test_crash_after_recording_the_move_removes_the_local_copy_on_open(tmp_path: Path) -> None:
    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(cold_after_age_s=0, cold_after_idle_s=0))
        await store.put_chunks(CHUNKS)
        await store.flush()
        local_copy = (tmp_path / "packs" / pack_file_name(1)).read_bytes()
        assert 1 in await store.migrate()
        await store.close()
        (tmp_path / "packs" / pack_file_name(1)).write_bytes(local_copy)  # the unlink never happened
        reopened = make_tiered(tmp_path, clock, TierPolicy())
        assert not (tmp_path / "packs" / pack_file_name(1)).exists()
        assert all([await reopened.get_chunk(digest) == data for digest, data in CHUNKS])
        await reopened.close()

    run(scenario())


def test_memory_object_store_works_as_the_cold_tier(tmp_path: Path) -> None:
    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        cold = MemoryObjectStore()
        warm = LocalChunkStore(tmp_path / "packs", pack_bytes_max=PACK_BYTES, clock=clock)
        store = TieredChunkStore(warm, cold, TierPolicy(0, 0), clock=clock)
        await store.put_chunks(CHUNKS)
        await store.flush()
        assert await store.migrate()
        assert await cold.list("packs/")
        for digest, data in CHUNKS:
            assert await store.get_chunk(digest) == data
        await store.close()

    run(scenario())


def test_many_concurrent_cold_reads_complete(tmp_path: Path) -> None:
    """More concurrent cold reads than executor threads: none may wait on another for a worker."""
    import asyncio

    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(0, 0))
        await store.put_chunks(CHUNKS)
        await store.flush()
        await store.migrate()
        cold = [
            item for item in CHUNKS if store.warm.packs.is_remote(store.warm.packs.locate(item[0]).pack_id)
        ]  # type: ignore[union-attr]
        results = await asyncio.wait_for(
            asyncio.gather(*(store.get_chunk(digest) for digest, _ in cold * 8)), timeout=60
        )
        assert results == [data for _, data in cold * 8]
        await store.close()

    run(scenario())


def test_warm_store_alone_refuses_cold_chunks_with_a_typed_error(tmp_path: Path) -> None:
    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(0, 0))
        await store.put_chunks(CHUNKS)
        await store.flush()
        await store.migrate()
        with pytest.raises(BackendError):
            await store.warm.get_chunk(CHUNKS[0][0])
        await store.close()

    run(scenario())


def test_object_store_ignores_a_partial_write_left_by_a_crash(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = LocalObjectStore(tmp_path / "cold")
        await store.put("packs/a", b"complete")
        (tmp_path / "cold" / "packs" / "b~partial").write_bytes(b"torn")
        assert await store.list() == ["packs/a"]
        assert not await store.exists("packs/b")
        await store.close()

    run(scenario())


# ---- issue 12: concurrent migrations ------------------------------------------------------------------


class SlowObjectStore(LocalObjectStore):
    """A local cold tier whose puts take a while (so a migration can be caught mid-move), and that can
    be told to fail every put with a given exception."""

    def __init__(self, root: Path, delay_s: float = 0.0) -> None:
        super().__init__(root)
        self.delay_s = delay_s
        self.failure: BaseException | None = None
        self.puts = 0

    async def put(self, key: str, data: bytes) -> None:
        import asyncio

        self.puts += 1
        await asyncio.sleep(self.delay_s)
        if self.failure is not None:
            raise self.failure
        await super().put(key, data)


def test_concurrent_migrations_move_each_pack_once_without_failing(tmp_path: Path) -> None:
    import asyncio

    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        store = make_tiered(tmp_path, clock, TierPolicy(0, 0))
        await store.put_chunks(CHUNKS)
        await store.flush()
        sealed = set(store.warm.packs.sealed_packs())
        assert len(sealed) >= 2
        results = await asyncio.gather(*(store.migrate() for _ in range(4)))
        moved = [pack_id for result in results for pack_id in result]
        assert sorted(moved) == sorted(sealed)  # each pack once, by whichever migration got it first
        assert await store.migrate() == []
        for digest, data in CHUNKS:
            assert await store.get_chunk(digest) == data
        assert not [path for path in (tmp_path / "cold").rglob("*") if "~" in path.name]
        await store.close()

    run(scenario())


def test_concurrent_puts_of_one_key_never_fail_or_leave_a_torn_object(tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> None:
        store = LocalObjectStore(tmp_path / "cold")
        versions = [bytes([n]) * (50_000 + n) for n in range(8)]
        for _ in range(5):
            await asyncio.gather(*(store.put("packs/same", version) for version in versions))
            assert await store.get("packs/same") in versions
        assert await store.list() == ["packs/same"]
        assert not [path for path in (tmp_path / "cold").rglob("*") if "~" in path.name]
        await store.close()

    run(scenario())


def test_a_cancelled_migration_finishes_the_pack_it_was_moving(tmp_path: Path) -> None:
    import asyncio

    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        warm = LocalChunkStore(tmp_path / "packs", pack_bytes_max=PACK_BYTES, clock=clock)
        cold = SlowObjectStore(tmp_path / "cold", delay_s=0.3)
        store = TieredChunkStore(warm, cold, TierPolicy(0, 0), clock=clock)
        await store.put_chunks(CHUNKS)
        await store.flush()
        first = min(warm.packs.sealed_packs())
        migration = asyncio.ensure_future(store.migrate())
        await asyncio.sleep(0.1)  # inside the first pack's upload
        migration.cancel()
        with pytest.raises(asyncio.CancelledError):
            await migration
        cold.delay_s = 0.0
        moved_later = await store.migrate()  # waits for the cancelled move, then moves the rest
        assert warm.packs.is_remote(first) and first not in moved_later
        assert not (tmp_path / "packs" / pack_file_name(first)).exists()
        for digest, data in CHUNKS:
            assert await store.get_chunk(digest) == data
        await store.close()

    run(scenario())


def test_close_waits_for_a_pack_move_in_progress(tmp_path: Path) -> None:
    import asyncio

    clock = FakeClock(os.path.getmtime(tmp_path) + 10_000)

    async def scenario() -> None:
        warm = LocalChunkStore(tmp_path / "packs", pack_bytes_max=PACK_BYTES, clock=clock)
        store = TieredChunkStore(warm, SlowObjectStore(tmp_path / "cold", delay_s=0.3), TierPolicy(0, 0),
                                 clock=clock)
        await store.put_chunks(CHUNKS)
        await store.flush()
        first = min(warm.packs.sealed_packs())
        migration = asyncio.ensure_future(store.migrate())
        await asyncio.sleep(0.1)
        migration.cancel()
        await store.close()  # must not close the pack store beneath the upload still running
        assert migration.cancelled()
        reopened = make_tiered(tmp_path, clock, TierPolicy(0, 0))
        assert reopened.warm.packs.is_remote(first)
        assert (tmp_path / "cold" / cold_key(first)).exists()
        assert not (tmp_path / "packs" / pack_file_name(first)).exists()
        for digest, data in CHUNKS:
            assert await reopened.get_chunk(digest) == data
        await reopened.close()

    run(scenario())


def _tiered_engine_backends(tmp_path: Path, cold: LocalObjectStore) -> object:
    from maif.storage.backends.local import LocalMetadataIndex
    from maif.storage.backends.memory import MemoryVectorIndex
    from maif.storage.cache import LRUHotCache
    from maif.storage.engine import Backends

    chunks = TieredChunkStore(LocalChunkStore(tmp_path / "packs", pack_bytes_max=64 * 1024), cold,
                              TierPolicy(0.0, 0.0))
    return Backends(chunks, LocalMetadataIndex(tmp_path / "index.sqlite"), MemoryVectorIndex(),
                    LRUHotCache(1 << 16))


def test_migrations_racing_the_tier_loop_and_writers_lose_nothing(tmp_path: Path) -> None:
    """Two migrate_tiers() at once, again and again, while the background loop migrates every 10 ms and
    writers and readers run: no failure anywhere, every acknowledged block readable, cold reads work."""
    import asyncio

    from maif.format.block import MAIFBlock
    from maif.storage.engine import create_maif_storage

    written: list[MAIFBlock] = []

    async def scenario() -> None:
        backends = _tiered_engine_backends(tmp_path, LocalObjectStore(tmp_path / "cold"))
        config = {"data_dir": str(tmp_path), "tier_interval_s": 0.01}
        async with await create_maif_storage(config, backends=backends) as storage:  # type: ignore[arg-type]
            writing = True

            async def writer(number: int) -> None:
                for i in range(60):
                    block = MAIFBlock(id=f"w{number}-{i}", data=os.urandom(12_000) * 2)
                    await storage.write_block(block)
                    written.append(block)

            async def reader() -> None:
                while writing:
                    for block in written[-20:]:
                        assert await storage.read_block(block.id) == block
                    await asyncio.sleep(0)

            async def migrator() -> None:
                while writing:
                    await asyncio.gather(storage.migrate_tiers(), storage.migrate_tiers())
                    await asyncio.sleep(0.002)

            tasks = [asyncio.ensure_future(task) for task in (reader(), migrator())]
            await asyncio.gather(*(writer(number) for number in range(4)))
            writing = False
            await asyncio.gather(*tasks)
            await asyncio.gather(storage.migrate_tiers(), storage.migrate_tiers())
            stats = await storage.get_stats()
            assert stats["tier_failure"] is None and stats["packs_moved_cold_total"] > 3
            tiers = [(await storage.read_block_with_tier(block.id))[1] for block in written]
            assert "cold" in tiers
            for block in written:
                assert await storage.read_block(block.id) == block
        backends = _tiered_engine_backends(tmp_path, LocalObjectStore(tmp_path / "cold"))
        async with await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends) as storage:  # type: ignore[arg-type]
            for block in written:
                assert await storage.read_block(block.id) == block
            assert (await storage.check(read_data_fraction=1.0)).ok

    run(scenario())
    assert len(written) == 240


@pytest.mark.parametrize("failure", [BackendError("the cold tier is down"), OSError(5, "I/O error")])
def test_a_failing_migration_never_stops_writers_the_applier_or_close(
    tmp_path: Path, failure: BaseException
) -> None:
    import asyncio

    from maif.format.block import MAIFBlock
    from maif.storage.engine import create_maif_storage

    async def scenario() -> None:
        cold = SlowObjectStore(tmp_path / "cold")
        cold.failure = failure
        backends = _tiered_engine_backends(tmp_path, cold)
        config = {"data_dir": str(tmp_path), "tier_interval_s": 0.01}
        storage = await create_maif_storage(config, backends=backends)  # type: ignore[arg-type]
        blocks = [MAIFBlock(id=f"b{i}", data=os.urandom(30_000)) for i in range(40)]
        for block in blocks:
            await storage.write_block(block)
            await asyncio.sleep(0.002)
        with pytest.raises((BackendError, OSError)):
            await storage.migrate_tiers()
        for _ in range(100):
            if cold.puts >= 3:
                break
            await asyncio.sleep(0.01)
        stats = await storage.get_stats()
        assert stats["tier_failure"] is not None and stats["packs_moved_cold_total"] == 0
        await storage.write_block(MAIFBlock(id="after", data=b"still writable"))
        for block in blocks:
            assert await storage.read_block(block.id) == block
        await storage.close()  # the tier task's failures never escape from close
        assert storage._tier_task is not None and storage._tier_task.done()

    run(scenario())
