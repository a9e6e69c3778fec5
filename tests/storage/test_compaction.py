"""Deletion and compaction: tombstones through the log, space given back by mark and sweep, shared
chunks kept while any block refers to them, and a compaction killed (kill -9, a real process) at each
of its steps loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from maif.errors import BlockNotFoundError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.backends.local import (
    LocalChunkStore,
    LocalMetadataIndex,
    LocalObjectStore,
    LocalVectorIndex,
)
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.tiers import TieredChunkStore, TierPolicy

T = TypeVar("T")
PACK_BYTES = 128 * 1024
ROOT = Path(__file__).resolve().parents[2]


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def backends(data_dir: Path) -> Backends:
    warm = LocalChunkStore(data_dir / "packs", pack_bytes_max=PACK_BYTES)
    return Backends(TieredChunkStore(warm, LocalObjectStore(data_dir / "cold"), TierPolicy(0.0, 0.0)),
                    LocalMetadataIndex(data_dir / "index.sqlite"), LocalVectorIndex(data_dir / "vectors"),
                    LRUHotCache(1 << 20))


def with_store(data_dir: Path, body: Callable[[MAIFStorage], Awaitable[T]]) -> T:
    async def main() -> T:
        config = {"data_dir": str(data_dir), "tier_interval_s": 0}
        async with await create_maif_storage(config, backends=backends(data_dir)) as storage:
            return await body(storage)

    return run(main())


def corpus(seed: int, count: int = 120) -> list[MAIFBlock]:
    """Blocks of 6-30 KB; every tenth shares one payload (dedup), every seventh is an embedding."""
    rng = random.Random(seed)
    shared = rng.randbytes(12_000)
    blocks = []
    for number in range(count):
        if number % 7 == 6:
            vector = np.asarray([rng.uniform(-1, 1) for _ in range(8)], dtype=np.float32)
            blocks.append(MAIFBlock(id=f"b{number}", block_type=MAIFBlockType.EMBEDDING,
                                    data=vector.tobytes(), metadata={"dtype": "float32"}, agent_id="a",
                                    timestamp=float(number)))
        else:
            data = shared if number % 10 == 0 else rng.randbytes(rng.randint(6_000, 30_000))
            blocks.append(MAIFBlock(id=f"b{number}", data=data, agent_id="a", timestamp=float(number)))
    return blocks


def test_delete_hides_the_block_everywhere_and_survives_reopen(tmp_path: Path) -> None:
    blocks = corpus(1, 30)
    embedded = blocks[6]

    async def body(storage: MAIFStorage) -> None:
        await storage.write_blocks(blocks)
        receipt = await storage.delete_block("b3")
        assert receipt.block_id == "b3" and receipt.lsn == 31
        await storage.delete_block(embedded.id)
        with pytest.raises(BlockNotFoundError):
            await storage.read_block("b3")  # from the log map, before it is applied
        with pytest.raises(BlockNotFoundError):
            await storage.delete_block("b3")
        with pytest.raises(BlockNotFoundError):
            await storage.delete_block("never-written")
        listed = {summary.block_id for summary in await storage.list_blocks(limit=100)}
        assert listed == {block.id for block in blocks} - {"b3", embedded.id}
        query = np.frombuffer(embedded.data, dtype="<f4")
        assert embedded.id not in {hit.block_id for hit in await storage.semantic_search(query, limit=30)}
        assert (await storage.check()).ok

    with_store(tmp_path, body)

    async def after(storage: MAIFStorage) -> None:
        with pytest.raises(BlockNotFoundError):
            await storage.read_block("b3")
        assert await storage.read_block("b4") == blocks[4]
        await storage.write_block(MAIFBlock(id="b3", data=b"born again", agent_id="a"))
        assert (await storage.read_block("b3")).data == b"born again"
        report = await storage.repair()  # a rebuild from the packs must not bring the old b3 back
        assert report.ok, report.problems
        assert (await storage.read_block("b3")).data == b"born again"
        with pytest.raises(BlockNotFoundError):
            await storage.read_block(embedded.id)

    with_store(tmp_path, after)


def test_a_rebuilt_index_keeps_deleted_blocks_deleted(tmp_path: Path) -> None:
    blocks = corpus(2, 40)

    async def body(storage: MAIFStorage) -> None:
        await storage.write_blocks(blocks)
        for block in blocks[:20]:
            await storage.delete_block(block.id)

    with_store(tmp_path, body)
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    for segment in (tmp_path / "wal").glob("*.wal"):
        segment.unlink()  # as if every segment had been recycled: only the packs remain

    async def after(storage: MAIFStorage) -> set[str]:
        return {summary.block_id for summary in await storage.list_blocks(limit=100)}

    assert with_store(tmp_path, after) == {block.id for block in blocks[20:]}


def test_compaction_reclaims_space_and_keeps_shared_chunks(tmp_path: Path) -> None:
    blocks = corpus(3)
    doomed = [block for block in blocks if block.id != "b0" and int(block.id[1:]) < 90]
    kept = [block for block in blocks if block not in doomed]
    assert any(block.data == blocks[0].data for block in doomed), "a deleted block shares b0's payload"

    async def body(storage: MAIFStorage) -> tuple[Any, int, int]:
        await storage.write_blocks(blocks)
        for block in doomed:
            await storage.delete_block(block.id)
        await storage._wait_applied()
        before = (await storage.get_stats())["bytes_warm"]
        report = await storage.compact()
        after = (await storage.get_stats())["bytes_warm"]
        for block in kept:
            assert await storage.read_block(block.id) == block
        check = await storage.check(1.0)
        assert check.ok, check.problems
        return report, before, after

    report, before, after = with_store(tmp_path, body)
    assert report.packs_rewritten >= 3
    assert report.bytes_reclaimed > 0 and after < before * 0.6, (before, after, report)
    again = with_store(tmp_path, lambda storage: storage.compact())
    assert again.packs_rewritten == 0  # nothing left worth rewriting

    async def reopened(storage: MAIFStorage) -> None:
        for block in kept:
            assert await storage.read_block(block.id) == block
        assert (await storage.check(1.0)).ok

    with_store(tmp_path, reopened)


_CHILD = textwrap.dedent("""
    import asyncio, os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_compaction import backends, corpus
    from maif.storage.engine import create_maif_storage

    async def main():
        data_dir, step = sys.argv[1], sys.argv[2]
        def on_step(name):
            if name == step:
                os.kill(os.getpid(), signal.SIGKILL)
        config = {{"data_dir": data_dir, "tier_interval_s": 0}}
        from pathlib import Path
        async with await create_maif_storage(config, backends=backends(Path(data_dir))) as storage:
            await storage.compact(on_step=on_step)
    asyncio.run(main())
""")


@pytest.mark.parametrize("step", ["copied", "flushed", "indexed", "deleted"])
def test_compaction_killed_at_each_step_loses_nothing(tmp_path: Path, step: str) -> None:
    blocks = corpus(4)
    doomed = {block.id for block in blocks if int(block.id[1:]) % 3 != 0}

    async def prepare(storage: MAIFStorage) -> None:
        await storage.write_blocks(blocks)
        for block_id in sorted(doomed):
            await storage.delete_block(block_id)

    with_store(tmp_path, prepare)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD.format(tests=str(Path(__file__).parent)), str(tmp_path), step],
        cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]

    async def verify(storage: MAIFStorage) -> Any:
        for block in blocks:
            if block.id in doomed:
                with pytest.raises(BlockNotFoundError):
                    await storage.read_block(block.id)
            else:
                assert await storage.read_block(block.id) == block
        report = await storage.check(1.0)
        assert report.ok, report.problems
        return await storage.compact()  # finishes the job: leftovers of the killed run are collected

    finished = with_store(tmp_path, verify)
    assert finished.packs_rewritten >= 0

    async def final(storage: MAIFStorage) -> None:
        for block in blocks:
            if block.id not in doomed:
                assert await storage.read_block(block.id) == block
        assert (await storage.check(1.0)).ok
        packs = storage._backends.chunks.warm.packs  # type: ignore[attr-defined]
        assert packs.unreferenced_packs() == []

    with_store(tmp_path, final)
    assert os.listdir(tmp_path / "packs")
