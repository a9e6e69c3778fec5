"""The store directory's lock (issue 12): one open store per data_dir, across and within processes, and
failed opens that release everything they acquired (the lock and every file descriptor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from maif.config import StorageConfig
from maif.errors import ConfigError, MAIFError, StoreLockedError
from maif.format.block import MAIFBlock
from maif.storage import engine
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage, default_backends
from maif.storage.lock import LOCK_FILE_NAME, acquire_store_lock
from maif.storage.wal import FileOps

T = TypeVar("T")

# A process that opens the store, writes a block, says so, then holds the store until killed.
HOLDER = """
import asyncio, sys
from maif.format.block import MAIFBlock
from maif.storage.engine import create_maif_storage

async def main():
    storage = await create_maif_storage({"data_dir": sys.argv[1]})
    await storage.write_block(MAIFBlock(id="from-the-holder", data=b"held"))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def memory_backends() -> Backends:
    return Backends(MemoryChunkStore(), MemoryMetadataIndex(), MemoryVectorIndex(), LRUHotCache(1 << 20))


def start_holder(data_dir: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line: list[str] = []
    reading = threading.Thread(target=lambda: line.append(holder.stdout.readline()))  # type: ignore[union-attr]
    reading.start()
    reading.join(timeout=60)
    if line != ["ready\n"]:
        holder.kill()
        raise AssertionError(f"the holder did not start: {line} {holder.communicate()[1][-2000:]}")
    return holder


def open_and_close(data_dir: Path, **options: Any) -> None:
    async def scenario() -> None:
        storage = await create_maif_storage({"data_dir": str(data_dir)}, **options)
        await storage.close()

    run(scenario())


def test_a_second_open_in_the_same_process_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = await create_maif_storage({"data_dir": str(tmp_path)})
        for backends in (None, memory_backends()):  # the log lives in data_dir whatever the backends
            with pytest.raises(StoreLockedError) as refused:
                await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends)
            assert refused.value.holder_pid == os.getpid()
            assert f"PID {os.getpid()}" in refused.value.message and "same process" in refused.value.message
        await first.write_block(MAIFBlock(id="still", data=b"works"))  # the refusal disturbed nothing
        await first.close()
        second = await create_maif_storage({"data_dir": str(tmp_path)})
        assert (await second.read_block("still")).data == b"works"
        await second.close()

    run(scenario())


def test_memory_backed_stores_on_one_directory_are_refused_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path)}, backends=memory_backends()):
            with pytest.raises(StoreLockedError):
                await create_maif_storage({"data_dir": str(tmp_path)}, backends=memory_backends())

    run(scenario())


def test_the_lock_file_is_owner_only_and_names_its_holder(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path)}):
            record = json.loads((tmp_path / LOCK_FILE_NAME).read_text())
            assert record["pid"] == os.getpid() and record["host"] and record["locked_at"]
            assert stat.S_IMODE((tmp_path / LOCK_FILE_NAME).stat().st_mode) == 0o600

    run(scenario())
    assert (tmp_path / LOCK_FILE_NAME).exists()  # left behind on purpose: the next opener reuses it
    open_and_close(tmp_path)


def test_the_lock_is_taken_before_any_backend_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local chunk store truncates pack tails as it opens: a refused opener must not get that far."""
    built: list[str] = []
    real_default_backends = engine.default_backends

    def recording_default_backends(config: StorageConfig) -> Backends:
        built.append(config.data_dir)
        return real_default_backends(config)

    monkeypatch.setattr(engine, "default_backends", recording_default_backends)

    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path)}):
            assert len(built) == 1
            pack_bytes = {path.name: path.read_bytes() for path in (tmp_path / "packs").iterdir()}
            with pytest.raises(StoreLockedError):
                await create_maif_storage({"data_dir": str(tmp_path)})
            assert len(built) == 1
            assert {path.name: path.read_bytes() for path in (tmp_path / "packs").iterdir()} == pack_bytes

    run(scenario())


def test_a_refused_open_closes_the_backends_it_was_given(tmp_path: Path) -> None:
    closed: list[str] = []

    class TrackedIndex(MemoryMetadataIndex):
        async def close(self) -> None:
            closed.append("index")
            await super().close()

    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path)}):
            backends = Backends(MemoryChunkStore(), TrackedIndex(), MemoryVectorIndex(), LRUHotCache(1 << 20))
            with pytest.raises(StoreLockedError):
                await create_maif_storage({"data_dir": str(tmp_path)}, backends=backends)
            assert closed == ["index"]

    run(scenario())


def test_a_failed_open_releases_the_lock(tmp_path: Path) -> None:
    class FailingOps(FileOps):
        def open_segment(self, path: Path, *, create: bool) -> int:
            raise OSError(5, "injected I/O error")

    async def scenario() -> None:
        for _ in range(3):  # the same failure each time, never StoreLockedError
            with pytest.raises((MAIFError, OSError)) as failed:
                await create_maif_storage({"data_dir": str(tmp_path)}, wal_file_ops=FailingOps())
            assert not isinstance(failed.value, StoreLockedError)
        with pytest.raises(ConfigError):
            await create_maif_storage({"data_dir": str(tmp_path), "qdrant_url": "http://localhost:1"})
        async with await create_maif_storage({"data_dir": str(tmp_path)}) as storage:
            await storage.write_block(MAIFBlock(id="fine", data=b"after the failures"))

    run(scenario())


def test_another_process_holding_the_store_is_named_and_its_death_frees_the_store(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(StoreLockedError) as refused:
            open_and_close(tmp_path)
        assert refused.value.holder_pid == holder.pid
        assert f"process {holder.pid}" in refused.value.message
        with pytest.raises(StoreLockedError):
            acquire_store_lock(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no close, no unlock; the kernel drops the lock
        holder.wait(timeout=60)
    assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] == holder.pid  # stale record

    async def reopen() -> None:
        async with await create_maif_storage({"data_dir": str(tmp_path)}) as storage:
            assert (await storage.read_block("from-the-holder")).data == b"held"
            assert json.loads((tmp_path / LOCK_FILE_NAME).read_text())["pid"] == os.getpid()

    run(reopen())


# ---- failed opens leak no file descriptor -------------------------------------------------------------


def open_descriptors() -> dict[str, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            found[name] = os.readlink(f"/proc/self/fd/{name}")
    return found


def build_store(data_dir: Path) -> None:
    async def scenario() -> None:
        async with await create_maif_storage({"data_dir": str(data_dir)}) as storage:
            await storage.write_blocks([MAIFBlock(id=f"b{i}", data=os.urandom(300)) for i in range(20)])

    run(scenario())


def _damage_the_log(data_dir: Path) -> None:
    segment = max((data_dir / "wal").glob("*.wal"))
    data = bytearray(segment.read_bytes())
    assert len(data) > 200, "the active segment should hold records"
    data[0] ^= 0xFF  # the segment header's magic, with records behind it: corruption, not a torn tail
    segment.write_bytes(bytes(data))


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _replace_with_file(path: Path) -> None:
    path.rename(path.with_name(path.name + ".moved"))
    path.write_bytes(b"a file where a directory belongs")


class _FailingOps(FileOps):
    def open_segment(self, path: Path, *, create: bool) -> int:
        raise OSError(5, "injected I/O error")


def _open(data_dir: Path) -> Awaitable[MAIFStorage]:
    return create_maif_storage({"data_dir": str(data_dir)})


def _open_with_bad_config_after_building_backends(data_dir: Path) -> Awaitable[MAIFStorage]:
    backends = default_backends(StorageConfig(data_dir=str(data_dir)))
    return create_maif_storage({"data_dir": str(data_dir), "kafka_brokers": ["127.0.0.1:1"]},
                               backends=backends)


def _open_with_log_io_errors(data_dir: Path) -> Awaitable[MAIFStorage]:
    return create_maif_storage({"data_dir": str(data_dir)}, wal_file_ops=_FailingOps())


def _nothing(data_dir: Path) -> None:
    pass


FAILED_OPENS: dict[str, tuple[Callable[[Path], None], Callable[[Path], Awaitable[MAIFStorage]]]] = {
    "bad config after the backends were built": (_nothing, _open_with_bad_config_after_building_backends),
    "corrupt write-ahead log": (_damage_the_log, _open),
    "log I/O error": (_nothing, _open_with_log_io_errors),
    "damaged pack directory": (lambda data_dir: _replace_with_directory(data_dir / "packs/index.log"), _open),
    "unusable vector directory": (lambda data_dir: _replace_with_file(data_dir / "vectors"), _open),
    "unusable metadata index": (lambda data_dir: _replace_with_directory(data_dir / "index.sqlite"), _open),
}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("kind", sorted(FAILED_OPENS))
def test_failed_opens_leak_no_file_descriptor(tmp_path: Path, kind: str) -> None:
    damage, attempt = FAILED_OPENS[kind]
    build_store(tmp_path)
    damage(tmp_path)

    async def scenario() -> None:
        await asyncio.sleep(0)
        before = open_descriptors()
        for _ in range(20):
            with pytest.raises((MAIFError, OSError)) as failed:
                storage = await attempt(tmp_path)
                await storage.close()  # pragma: no cover - reached only if the damage did not stop the open
            assert not isinstance(failed.value, StoreLockedError), failed.value  # the lock was released
        leaked = {fd: target for fd, target in open_descriptors().items() if fd not in before}
        assert leaked == {}, f"{kind}: {leaked}"

    run(scenario())


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_refused_opens_leak_no_file_descriptor(tmp_path: Path) -> None:
    build_store(tmp_path)

    async def scenario() -> None:
        before = open_descriptors()
        holder = await create_maif_storage({"data_dir": str(tmp_path)})
        for _ in range(20):
            with pytest.raises(StoreLockedError):
                await create_maif_storage({"data_dir": str(tmp_path)})
        await holder.close()
        leaked = {fd: target for fd, target in open_descriptors().items() if fd not in before}
        assert leaked == {}

    run(scenario())
