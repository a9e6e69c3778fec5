"""Injected faults (ENOSPC, EIO, fsync failure, torn writes, failing backends): typed errors, no lost acks."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from maif.errors import BackendError, DurabilityError, MAIFError
from maif.format.block import MAIFBlock
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.backends.wrappers import FaultInjectingChunkStore
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.wal import FileOps


class FaultyOps(FileOps):
    """Real system calls until armed; then the chosen call fails (after a partial write, for writes)."""

    def __init__(self) -> None:
        self.sync_errno: int | None = None
        self.write_errno: int | None = None
        self.syncs_attempted = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs_attempted += 1
        if self.sync_errno is not None:
            raise OSError(self.sync_errno, os.strerror(self.sync_errno))
        super().fdatasync(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.write_errno is not None:
            super().write(fd, bytes(data)[: max(1, len(data) // 3)])  # torn: a prefix reached the file
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        return super().write(fd, data)


def memory_backends(chunks: MemoryChunkStore | FaultInjectingChunkStore | None = None) -> Backends:
    return Backends(chunks or MemoryChunkStore(), MemoryMetadataIndex(), MemoryVectorIndex(),
                    LRUHotCache(1 << 20))


def blocks(prefix: str, count: int, size: int = 500) -> list[MAIFBlock]:
    return [MAIFBlock(id=f"{prefix}{i}", data=os.urandom(size), agent_id="faulty") for i in range(count)]


async def reopen_and_expect(data_dir: Path, expected: list[MAIFBlock], *, local: bool) -> MAIFStorage:
    storage = await create_maif_storage({"data_dir": str(data_dir)},
                                        backends=None if local else memory_backends())
    for block in expected:
        assert await storage.read_block(block.id) == block
    return storage


@pytest.mark.parametrize("local", [False, True], ids=["memory-backends", "local-backends"])
def test_fsync_failure_refuses_writes_serves_reads_and_loses_nothing(tmp_path: Path, local: bool) -> None:
    async def main() -> None:
        ops = FaultyOps()
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, wal_file_ops=ops,
                                            backends=None if local else memory_backends())
        acknowledged = blocks("ok", 20)
        await storage.write_blocks(acknowledged[:10])
        for block in acknowledged[10:]:
            await storage.write_block(block)
        ops.sync_errno = errno.EIO
        with pytest.raises(DurabilityError, match="sync failed"):
            await storage.write_block(MAIFBlock(id="lost", data=b"never acknowledged"))
        attempts = ops.syncs_attempted
        ops.sync_errno = None  # even if the disk "recovers", the same file is never trusted again
        with pytest.raises(DurabilityError, match="refuses writes") as refused:
            await storage.write_blocks(blocks("later", 3))
        assert refused.value.hint and "reopen" in refused.value.hint
        assert ops.syncs_attempted == attempts, "fsync must not be retried after a failure"
        for block in acknowledged:
            assert await storage.read_block(block.id) == block
        assert (await storage.get_stats())["wal_failure"]
        await storage.close()
        storage = await reopen_and_expect(tmp_path, acknowledged, local=local)
        await storage.write_block(MAIFBlock(id="after-reopen", data=b"fine"))
        await storage.close()

    asyncio.run(main())


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_failed_torn_log_write_is_typed_and_recovery_truncates_it(tmp_path: Path, code: int) -> None:
    async def main() -> None:
        ops = FaultyOps()
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, wal_file_ops=ops, backends=None)
        acknowledged = blocks("a", 30)
        await storage.write_blocks(acknowledged)
        ops.write_errno = code
        with pytest.raises(DurabilityError, match=os.strerror(code)):
            await storage.write_blocks(blocks("torn", 10, size=2000))
        with pytest.raises(DurabilityError):
            await storage.write_block(MAIFBlock(id="refused", data=b"x"))
        await storage.close()
        storage = await reopen_and_expect(tmp_path, acknowledged, local=True)
        assert storage.recovery.torn_tail_bytes > 0
        # Complete records of the failed group may survive (the writer got an error: outcome unknown,
        # as in any database); the cut one is gone, and the log continues after what survived.
        survivors = (await storage.get_stats())["wal_last_lsn"] - 30
        assert 0 <= survivors < 10
        receipt = await storage.write_block(MAIFBlock(id="next", data=b"continues"))
        assert receipt.lsn == 31 + survivors
        await storage.close()

    asyncio.run(main())


def test_backend_put_failure_stops_applying_but_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        chunks = FaultInjectingChunkStore(MemoryChunkStore(), {"put_chunks": [2]})
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, backends=memory_backends(chunks))
        first = blocks("first", 5)
        await storage.write_blocks(first)
        await storage.list_blocks()  # applied
        second = blocks("second", 5)
        await storage.write_blocks(second)  # acknowledged: it is in the log
        with pytest.raises(BackendError, match="applying the log"):
            await storage.list_blocks()
        for block in first + second:  # the unapplied ones come from the in-memory log map
            assert await storage.read_block(block.id) == block
        with pytest.raises(BackendError, match="refuses writes"):
            await storage.write_block(MAIFBlock(id="refused", data=b"x"))
        assert (await storage.get_stats())["applier_failure"]
        await storage.close()
        storage = await reopen_and_expect(tmp_path, first + second, local=False)
        await storage.close()

    asyncio.run(main())


def test_backend_flush_failure_during_checkpoint_is_not_retried(tmp_path: Path) -> None:
    async def main() -> None:
        chunks = FaultInjectingChunkStore(MemoryChunkStore(), {"flush": [1, 2, 3]})
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, backends=memory_backends(chunks))
        acknowledged = blocks("f", 10)
        await storage.write_blocks(acknowledged)
        with pytest.raises(MAIFError):
            await storage.close()  # the final checkpoint's flush fails: reported, not swallowed
        assert chunks.calls["flush"] == 1
        storage = await reopen_and_expect(tmp_path, acknowledged, local=False)
        await storage.close()

    asyncio.run(main())


def test_read_failure_in_a_backend_is_a_typed_error(tmp_path: Path) -> None:
    async def main() -> None:
        chunks = FaultInjectingChunkStore(MemoryChunkStore(), {"get_chunk": [1]})
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, backends=memory_backends(chunks))
        (block,) = blocks("r", 1)
        await storage.write_block(block)
        await storage.list_blocks()
        with pytest.raises(BackendError, match=r"Input/output error|injected"):
            await storage.read_block(block.id)
        assert await storage.read_block(block.id) == block  # the next call reaches the data
        await storage.close()

    asyncio.run(main())


def test_fsync_failure_fails_every_concurrent_writer_in_the_group(tmp_path: Path) -> None:
    async def main() -> None:
        ops = FaultyOps()
        storage = await create_maif_storage({"data_dir": str(tmp_path)}, wal_file_ops=ops,
                                            backends=memory_backends())
        await storage.write_block(MAIFBlock(id="before", data=b"ok"))
        ops.sync_errno = errno.EIO
        results = await asyncio.gather(*(storage.write_block(b) for b in blocks("g", 40)),
                                       return_exceptions=True)
        assert all(isinstance(result, DurabilityError) for result in results)
        assert (await storage.read_block("before")).data == b"ok"
        await storage.close()

    asyncio.run(main())


def test_corrupt_acknowledged_log_record_stops_the_open(tmp_path: Path) -> None:
    from maif.errors import IntegrityError
    from maif.storage.wal import SEGMENT_HEADER_BYTES, segment_name

    async def main() -> None:
        config = {"data_dir": str(tmp_path)}
        storage = await create_maif_storage(config, backends=memory_backends())
        for block in blocks("c", 40):
            await storage.write_block(block)
        await storage.close()
        segment = tmp_path / "wal" / segment_name(1)
        damaged = bytearray(segment.read_bytes())
        damaged[SEGMENT_HEADER_BYTES + 100] ^= 0x40  # inside the first record, 39 acknowledged ones follow
        segment.write_bytes(bytes(damaged))
        # In-memory backends replay the whole log, so the damage is read; it is not within the torn-tail
        # window only because that window is patched small here (the rule itself: test_wal.py).
        from maif import limits

        original = limits.wal_group_bytes_max
        limits.wal_group_bytes_max = 1024
        try:
            with pytest.raises(IntegrityError, match="corrupt at offset"):
                await create_maif_storage(config, backends=memory_backends())
        finally:
            limits.wal_group_bytes_max = original

    asyncio.run(main())
