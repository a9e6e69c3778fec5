"""Wrappers: retry with bounded backoff, injected latency and faults, stacked around any ChunkStore."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from maif.errors import BackendError, ConfigError, IntegrityError
from maif.storage.backends.base import ChunkStore
from maif.storage.backends.local import LocalChunkStore
from maif.storage.backends.memory import MemoryChunkStore
from maif.storage.backends.wrappers import (
    FaultInjectingChunkStore,
    LatencyChunkStore,
    RetryingChunkStore,
)
from maif.testing.conformance import ChunkStoreTests, chunk, run


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def transient(name: str, number: int) -> BaseException:
    return OSError(errno.EAGAIN, f"try again ({name} #{number})")


def test_transient_failures_are_retried_with_exponential_backoff() -> None:
    sleep = RecordingSleep()
    faulty = FaultInjectingChunkStore(MemoryChunkStore(), {"put_chunks": [1, 2, 3]}, error_factory=transient)
    store = RetryingChunkStore(faulty, attempts_max=4, base_delay_s=0.01, jitter=lambda: 1.0, sleep=sleep)
    digest, data = chunk(b"payload")
    assert run(store.put_chunks([(digest, data)])) == len(data)
    assert sleep.delays == [0.01, 0.02, 0.04]
    assert store.retries == 3 and faulty.injected == 3
    assert run(store.get_chunk(digest)) == data


def test_retries_are_bounded_and_the_last_error_surfaces() -> None:
    sleep = RecordingSleep()
    faulty = FaultInjectingChunkStore(
        MemoryChunkStore(), {"get_chunk": range(1, 100)}, error_factory=transient
    )
    store = RetryingChunkStore(faulty, attempts_max=3, base_delay_s=0.5, delay_s_max=0.6, jitter=lambda: 1.0,
                               sleep=sleep)
    with pytest.raises(OSError):
        run(store.get_chunk(b"\0" * 32))
    assert faulty.calls["get_chunk"] == 3 and sleep.delays == [0.5, 0.6]


def test_permanent_errors_are_not_retried() -> None:
    sleep = RecordingSleep()
    faulty = FaultInjectingChunkStore(MemoryChunkStore(), {"put_chunks": [1]})  # EIO: not transient
    store = RetryingChunkStore(faulty, sleep=sleep)
    with pytest.raises(OSError):
        run(store.put_chunks([chunk(b"x")]))
    with pytest.raises(IntegrityError):  # a refused chunk is an answer, not a hiccup
        run(store.put_chunks([(chunk(b"honest")[0], b"forged")]))
    assert sleep.delays == []


def test_flush_is_never_retried() -> None:
    """After a failed fsync the data may be gone: a retry that succeeds would lie (fsyncgate)."""
    sleep = RecordingSleep()
    faulty = FaultInjectingChunkStore(
        MemoryChunkStore(), {"flush": [1]}, error_factory=lambda name, n: BackendError("fsync failed")
    )
    store = RetryingChunkStore(faulty, sleep=sleep)
    with pytest.raises(BackendError):
        run(store.flush())
    assert faulty.calls["flush"] == 1 and sleep.delays == []


def test_latency_is_injected_per_method() -> None:
    sleep = RecordingSleep()
    store = LatencyChunkStore(MemoryChunkStore(), 0.005, per_method_delay_s={"flush": 0.2}, sleep=sleep)
    run(store.put_chunks([chunk(b"x")]))
    run(store.flush())
    assert sleep.delays == [0.005, 0.2]


def test_fault_injection_hits_only_the_chosen_calls() -> None:
    faulty = FaultInjectingChunkStore(MemoryChunkStore(), {"has_chunks": [2]})
    digest = chunk(b"x")[0]
    assert run(faulty.has_chunks([digest])) == set()
    with pytest.raises(OSError) as raised:
        run(faulty.has_chunks([digest]))
    assert raised.value.errno == errno.EIO
    assert run(faulty.has_chunks([digest])) == set()


def test_invalid_wrapper_settings_are_refused() -> None:
    with pytest.raises(ConfigError):
        RetryingChunkStore(MemoryChunkStore(), attempts_max=0)
    with pytest.raises(ConfigError):
        LatencyChunkStore(MemoryChunkStore(), -1.0)


class TestStackedWrappersConform(ChunkStoreTests):
    """Wrappers stacked around the local store still pass the whole conformance suite."""

    def make_store(self, directory: Path) -> ChunkStore:
        local = LocalChunkStore(directory / "packs", compression_threshold=self.compression_threshold)
        return RetryingChunkStore(LatencyChunkStore(FaultInjectingChunkStore(local, {}), 0.0))

    def reopen(self, store: ChunkStore, directory: Path) -> ChunkStore | None:
        return self.make_store(directory)

    @staticmethod
    def _local(store: ChunkStore) -> LocalChunkStore:
        while not isinstance(store, LocalChunkStore):
            store = store.inner  # type: ignore[attr-defined]
        return store

    def raw_corrupt(self, store: ChunkStore, digest: bytes) -> None:
        from test_backends_local import TestLocalChunkStore  # tests/storage is on sys.path

        TestLocalChunkStore().raw_corrupt(self._local(store), digest)

    def raw_stored_length(self, store: ChunkStore, digest: bytes) -> int:
        location = self._local(store).packs.locate(digest)
        assert location is not None
        return location.stored_length
