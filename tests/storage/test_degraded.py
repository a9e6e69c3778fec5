"""Degraded mode without servers: a metadata index that can be switched "down" (it raises
BackendUnavailableError, as the PostgreSQL backend does when its server is unreachable) behind the
same retry wrapper the scaled-out store uses; the engine reports the outage to the store's Health.
The real servers killed with SIGKILL are in tests/distributed/test_server_faults.py; these pin the
engine's rules quickly and exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from maif.errors import BackendError, BackendUnavailableError, CredentialsError, StoreDegradedError
from maif.format.block import MAIFBlock
from maif.service.problems import on_maif_error
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.backends.wrappers import RetryingMetadataIndex, RetryPolicy, is_retriable
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.health import Health
from maif.storage.records import BlockRecord


class SwitchableIndex(MemoryMetadataIndex):
    """A memory index whose server can be "down": every call then raises BackendUnavailableError."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    def _gate(self) -> None:
        if self.down:
            self.refused += 1
            raise BackendUnavailableError("test index unreachable", component="testdb", retry_after_s=2.5)

    async def put(self, records: Sequence[BlockRecord], *, applied_lsn: int | None = None,
                  newer_only: bool = False) -> None:
        self._gate()
        await super().put(records, applied_lsn=applied_lsn, newer_only=newer_only)

    async def get(self, block_id: str) -> BlockRecord | None:
        self._gate()
        return await super().get(block_id)

    async def query(self, **filters: Any) -> list[BlockRecord]:
        self._gate()
        return await super().query(**filters)

    async def set_applied_lsn(self, lsn: int) -> None:
        self._gate()
        await super().set_applied_lsn(lsn)


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def open_store(tmp_path: Path) -> tuple[MAIFStorage, SwitchableIndex, Health]:
    health = Health()
    inner = SwitchableIndex()
    index = RetryingMetadataIndex(inner, RetryPolicy(attempts_max=2, sleep=no_sleep))
    backends = Backends(MemoryChunkStore(), index, MemoryVectorIndex(), LRUHotCache(1 << 20), health=health)
    storage = await create_maif_storage({"data_dir": str(tmp_path), "max_memory_mb": 8}, backends=backends)
    return storage, inner, health


def block(number: int) -> MAIFBlock:
    return MAIFBlock(id=f"b{number:06d}", data=bytes([number % 251]) * 64 * 1024, agent_id="a")


def test_writes_are_acknowledged_up_to_the_bound_then_refused_and_applied_on_return(tmp_path: Path) -> None:
    async def main() -> None:
        storage, index, health = await open_store(tmp_path)
        try:
            await storage.write_blocks([block(0)])
            assert len(await storage.list_blocks(limit=10)) == 1
            index.down = True
            acked: list[MAIFBlock] = []
            with pytest.raises(StoreDegradedError) as refused:
                for number in range(1, 10_000):
                    item = block(number)
                    await storage.write_block(item)
                    acked.append(item)
            error = refused.value
            assert error.component == "testdb" and error.retry_after_s == 2.5
            assert "nothing written" in error.message and "8.0 MiB" in error.message
            assert 64 <= len(acked) <= 128  # 8 MiB of 64 KiB blocks were acknowledged into the log
            state = storage.health()
            assert state["status"] == "degraded" and state["applier_waiting_for"] == "testdb"
            assert state["degraded"]["testdb"]["reason"] == "test index unreachable"
            assert await storage.read_block(acked[-1].id) == acked[-1]  # served from the log
            with pytest.raises(BackendUnavailableError):  # a query cannot see the backlog yet
                await storage.list_blocks(limit=10)
            index.down = False
            for _ in range(300):  # the applier retries after its backoff (at most 5 s)
                if storage.health()["applier_waiting_for"] is None:
                    break
                await asyncio.sleep(0.05)
            listed = await storage.list_blocks(limit=1000)
            assert [summary.block_id for summary in listed] == [block(0).id] + [item.id for item in acked]
            assert storage.health()["status"] == "ok" and health.degraded_seconds()["testdb"] > 0
            await storage.write_block(block(99_999))  # writable again
        finally:
            await storage.close()

    asyncio.run(main())


def test_close_while_down_leaves_the_backlog_in_the_log(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The applier cannot wait for ever at close; the records stay in the log (replayed at the next
    open of a durable store; tests/distributed covers that with real servers)."""
    import maif.storage.engine as engine

    monkeypatch.setattr(engine, "_CLOSE_UNAVAILABLE_WAIT_S", 0.5)

    async def main() -> None:
        storage, index, _ = await open_store(tmp_path)
        await storage.write_blocks([block(1)])
        await storage.list_blocks(limit=1)
        index.down = True
        await storage.write_blocks([block(2), block(3)])
        await asyncio.wait_for(storage.close(), 30)
        stats = await storage.get_stats()
        assert stats["wal_last_lsn"] == 3 and stats["wal_applied_lsn"] == 1

    asyncio.run(main())


def test_a_permanent_backend_error_still_stops_the_applier(tmp_path: Path) -> None:
    """Only "server unavailable" is waited out; any other failure (a disk, a bug) stops writes."""
    async def main() -> None:
        storage, index, _ = await open_store(tmp_path)
        try:
            async def broken(*args: Any, **kwargs: Any) -> None:
                raise BackendError("disk on fire")

            index.put = broken  # type: ignore[method-assign]
            await storage.write_block(block(1))
            with pytest.raises(BackendError, match="disk on fire"):
                await storage.list_blocks(limit=1)
            assert storage.health()["status"] == "failed"
            with pytest.raises(BackendError):
                await storage.write_block(block(2))
        finally:
            await storage.close()

    asyncio.run(main())


def test_retry_policy_backoff_is_capped_exponential_with_jitter() -> None:
    low = RetryPolicy(base_delay_s=0.1, delay_s_max=1.0, jitter=lambda: 0.0)
    high = RetryPolicy(base_delay_s=0.1, delay_s_max=1.0, jitter=lambda: 1.0)
    assert [low.delay_s(n) for n in (1, 2, 3, 4, 5, 9)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert [high.delay_s(n) for n in (1, 2, 3, 4, 5, 9)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    drawn = {RetryPolicy(base_delay_s=0.1).delay_s(3) for _ in range(50)}
    assert len(drawn) > 10 and all(0.2 <= value <= 0.4 for value in drawn)  # spread, within bounds


def test_flush_is_retried_only_when_a_server_did_not_answer() -> None:
    unavailable = BackendUnavailableError("down", component="s3")
    assert is_retriable("flush", unavailable) and is_retriable("put", unavailable)
    assert not is_retriable("flush", BackendError("fsync failed"))  # fsyncgate: never
    assert is_retriable("put", BackendError("hiccup"))


def test_unavailable_and_degraded_errors_are_503_with_retry_after() -> None:
    async def main() -> None:
        degraded = await on_maif_error(None, StoreDegradedError("full", component="postgresql",  # type: ignore[arg-type]
                                                                retry_after_s=2.2))
        assert degraded.status_code == 503 and degraded.headers["retry-after"] == "3"
        assert b"urn:maif:problem:degraded" in degraded.body
        unavailable = await on_maif_error(None, BackendUnavailableError("gone", component="s3"))  # type: ignore[arg-type]
        assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "1"
        assert b"backend-unavailable" in unavailable.body

    asyncio.run(main())


class FlakyBatchIndex(MemoryMetadataIndex):
    """A memory index whose batch lookup fails ``failures`` times first, with ``error``."""

    def __init__(self, error: BaseException, failures: int) -> None:
        super().__init__()
        self.error = error
        self.failures = failures
        self.calls = 0

    async def get_many(self, block_ids: Sequence[str]) -> dict[str, BlockRecord]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await super().get_many(block_ids)


def index_record(block_id: str, lsn: int) -> BlockRecord:
    return BlockRecord(block_id=block_id, block_type="TEXT", agent_id="a", timestamp=1.0, version="",
                       parents=(), metadata=b"", chunks=(), payload_length=0, digest=bytes(32), lsn=lsn)


def test_batch_lookup_is_retried_through_an_outage_and_answers_like_the_index() -> None:
    async def main() -> None:
        inner = FlakyBatchIndex(BackendUnavailableError("index restarting", component="testdb"), failures=2)
        await inner.put([index_record("x", 1), index_record("y", 2)], applied_lsn=2)
        policy = RetryPolicy(attempts_max=3, sleep=no_sleep)
        found = await RetryingMetadataIndex(inner, policy).get_many(["x", "missing", "y"])
        assert found == await MemoryMetadataIndex.get_many(inner, ["x", "missing", "y"])
        assert set(found) == {"x", "y"} and found["y"].lsn == 2
        assert inner.calls == 3 and policy.retries == 2

    asyncio.run(main())


def test_batch_lookup_gives_up_after_its_attempts_and_never_retries_a_permanent_error() -> None:
    async def main() -> None:
        down = FlakyBatchIndex(BackendUnavailableError("index down", component="testdb"), failures=10)
        with pytest.raises(BackendUnavailableError):
            await RetryingMetadataIndex(down, RetryPolicy(attempts_max=3, sleep=no_sleep)).get_many(["x"])
        assert down.calls == 3
        refused = FlakyBatchIndex(CredentialsError("password authentication failed"), failures=10)
        with pytest.raises(CredentialsError):
            await RetryingMetadataIndex(refused, RetryPolicy(attempts_max=3, sleep=no_sleep)).get_many(["x"])
        assert refused.calls == 1  # refused credentials will be refused again: never retried

    asyncio.run(main())
