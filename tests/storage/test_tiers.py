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
