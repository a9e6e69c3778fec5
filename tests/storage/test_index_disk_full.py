"""A full disk under the SQLite metadata index is reported as a full disk, with the database's path, and
not as SQLite's follow-on "cannot rollback - no transaction is active" (issue 12, finding 10).

Two ways: a real full file system (a 1 MiB tmpfs; needs root, skipped otherwise), and a simulation
that makes the connection fail the way SQLite does on SQLITE_FULL: it rolls the transaction back itself,
then raises ``sqlite3.OperationalError("database or disk is full")``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from maif.errors import BackendError
from maif.format.block import MAIFBlock
from maif.storage.backends.memory import MemoryChunkStore, MemoryVectorIndex
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, create_maif_storage
from maif.storage.index import SqliteMetadataIndex
from maif.storage.records import BlockRecord


def record(block_id: str, lsn: int) -> BlockRecord:
    return BlockRecord(block_id=block_id, block_type="TEXT", agent_id="agent-" + "x" * 200, timestamp=1.0,
                       version="1.0", parents=("p",), metadata=b"", chunks=(os.urandom(32),),
                       payload_length=1, digest=os.urandom(32), lsn=lsn)


def assert_reports_a_full_disk(error: BackendError, path: Path) -> None:
    assert "disk is full" in error.message and str(path) in error.message, error.message
    assert "cannot rollback" not in error.message
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert "database or disk is full" in str(error.__cause__)
    assert error.hint is not None and str(path.parent) in error.hint


class FullDisk:
    """A connection whose writes fail like SQLite's on a full disk, until ``free()``."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self.full = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.full and sql.lstrip().upper().startswith("INSERT"):
            self._connection.execute("ROLLBACK")  # SQLite rolls back by itself on SQLITE_FULL
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # as the sqlite3 module sets them
            error.sqlite_errorname = "SQLITE_FULL"
            raise error
        return self._connection.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def test_a_simulated_full_disk_is_reported_as_such(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"

    async def main() -> None:
        index = SqliteMetadataIndex(path)
        await index.put([record("before", 1)], applied_lsn=1)
        real = index._connection
        assert real is not None
        full = FullDisk(real)
        index._connection = full  # type: ignore[assignment]
        with pytest.raises(BackendError) as caught:
            await index.put([record("lost", 2), record("lost-too", 3)], applied_lsn=3)
        assert_reports_a_full_disk(caught.value, path)
        assert not real.in_transaction
        full.full = False  # space freed: the index works on, holding exactly what was committed
        assert await index.applied_lsn() == 1 and await index.get("lost") is None
        await index.put([record("after", 4)], applied_lsn=4)
        assert await index.count() == 2 and await index.applied_lsn() == 4
        await index.close()

    asyncio.run(main())


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_real_full_disk_under_the_index_is_reported_as_such(small_tmpfs: Path) -> None:
    path = small_tmpfs / "index.sqlite"

    async def main() -> None:
        index = SqliteMetadataIndex(path)
        lsn = 0
        with pytest.raises(BackendError) as caught:
            for _ in range(10_000):  # 1 MiB holds a few hundred of these records
                batch = [record(f"b{lsn + offset}", lsn + offset) for offset in range(1, 101)]
                await index.put(batch, applied_lsn=batch[-1].lsn)
                lsn += 100
        assert_reports_a_full_disk(caught.value, path)
        assert await index.applied_lsn() == lsn  # every committed batch, nothing of the failed one
        assert await index.count() == lsn
        await index.close()

    asyncio.run(main())


def test_a_store_whose_index_disk_fills_says_so_and_keeps_serving_reads(tmp_path: Path,
                                                                        small_tmpfs: Path) -> None:
    """The log (on a roomy disk) acknowledges; the applier's index write fails on the full one; the store
    refuses further writes naming the full disk, and every acknowledged block still reads back."""
    index_path = small_tmpfs / "index.sqlite"

    async def main() -> None:
        backends = Backends(MemoryChunkStore(), SqliteMetadataIndex(index_path), MemoryVectorIndex(),
                            LRUHotCache(1 << 20))
        storage = await create_maif_storage({"data_dir": str(tmp_path / "store")}, backends=backends)
        acknowledged: list[MAIFBlock] = []
        try:
            with pytest.raises(BackendError) as caught:
                for batch_number in range(1000):
                    batch = [MAIFBlock(id=f"b{batch_number}-{i}-" + "x" * 200, data=b"d", agent_id="a" * 200)
                             for i in range(100)]
                    await storage.write_blocks(batch)
                    acknowledged.extend(batch)
                    await asyncio.sleep(0.01)  # let the applier run
            assert "disk is full" in caught.value.message and str(index_path) in caught.value.message
            assert "cannot rollback" not in caught.value.message
            for block in acknowledged[:: max(1, len(acknowledged) // 50)]:
                assert await storage.read_block(block.id) == block
        finally:
            await storage.close()

    asyncio.run(main())
