"""Model-based test: a Hypothesis state machine drives the engine and a dict with the same operations.

Writes (single and batched, with overwrites of the same id), reads, filtered listings and close+reopen
must give the same answers as the model: a plain ``dict[block_id, MAIFBlock]`` where the last write wins.
Two variants: the durable local backends, and in-memory backends (where reopening replays the whole log).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from maif.errors import BlockNotFoundError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import block_digest
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage

T = TypeVar("T")

BLOCK_IDS = [f"id-{n}" for n in range(8)]
AGENTS = ["alpha", "beta"]


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from([0, 1, 100, 3000, 40_000, 90_000]))
    seed = draw(st.integers(0, 3))  # few seeds: identical payloads exercise deduplication
    return random.Random(seed).randbytes(size)


blocks = st.builds(
    MAIFBlock,
    id=st.sampled_from(BLOCK_IDS),
    block_type=st.sampled_from([MAIFBlockType.TEXT, MAIFBlockType.IMAGE, "CUST"]),
    data=payloads(),
    metadata=st.dictionaries(st.sampled_from(["k", "lang", "n"]), st.integers(-5, 5) | st.text(max_size=5),
                             max_size=2),
    timestamp=st.sampled_from([1.0, 2.5, 2.5, 1e9]),  # ties: the order falls back to the block id
    agent_id=st.sampled_from(AGENTS),
    parents=st.lists(st.sampled_from(BLOCK_IDS), max_size=2).map(tuple),
)


class EngineVersusDict(RuleBasedStateMachine):
    local_backends = True

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.data_dir = Path(tempfile.mkdtemp(prefix="maif-stateful-"))
        self.model: dict[str, MAIFBlock] = {}
        self.storage: MAIFStorage | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def open(self) -> MAIFStorage:
        backends = None if self.local_backends else Backends(
            MemoryChunkStore(), MemoryMetadataIndex(), MemoryVectorIndex(), LRUHotCache(1 << 16))
        config = {"data_dir": str(self.data_dir), "batch_timeout_ms": 0.5, "max_memory_mb": 8}
        return self.run(create_maif_storage(config, backends=backends))

    @initialize()
    def start(self) -> None:
        self.storage = self.open()

    @property
    def store(self) -> MAIFStorage:
        assert self.storage is not None
        return self.storage

    @rule(block=blocks)
    def write(self, block: MAIFBlock) -> None:
        receipt = self.run(self.store.write_block(block))
        assert receipt.block_id == block.id and receipt.digest == block_digest(block)
        self.model[block.id] = block

    @rule(batch=st.lists(blocks, min_size=1, max_size=6))
    def write_many(self, batch: list[MAIFBlock]) -> None:
        receipts = self.run(self.store.write_blocks(batch))
        assert [r.lsn for r in receipts] == list(range(receipts[0].lsn, receipts[0].lsn + len(batch)))
        for block in batch:
            self.model[block.id] = block

    @rule(block_id=st.sampled_from(BLOCK_IDS))
    def read(self, block_id: str) -> None:
        if block_id in self.model:
            assert self.run(self.store.read_block(block_id)) == self.model[block_id]
        else:
            with pytest.raises(BlockNotFoundError):
                self.run(self.store.read_block(block_id))

    @rule(agent_id=st.none() | st.sampled_from(AGENTS), limit=st.integers(1, 10))
    def list_blocks(self, agent_id: str | None, limit: int) -> None:
        expected = sorted((b for b in self.model.values() if agent_id in (None, b.agent_id)),
                          key=lambda b: (b.timestamp, b.id))
        found = self.run(self.store.list_blocks(agent_id=agent_id, limit=limit))
        assert [(s.block_id, s.digest) for s in found] == [(b.id, block_digest(b)) for b in expected[:limit]]

    @rule(parent=st.sampled_from(BLOCK_IDS))
    def children(self, parent: str) -> None:
        expected = {b.id for b in self.model.values() if parent in b.parents}
        found = self.run(self.store.list_blocks(parent=parent, limit=100))
        assert {s.block_id for s in found} == expected

    @precondition(lambda self: self.storage is not None)
    @rule()
    def reopen(self) -> None:
        self.run(self.store.close())
        self.storage = self.open()

    def teardown(self) -> None:
        try:
            if self.storage is not None:
                self.run(self.storage.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.data_dir, ignore_errors=True)


class EngineWithMemoryBackendsVersusDict(EngineVersusDict):
    local_backends = False


_SETTINGS = settings(max_examples=25, stateful_step_count=25, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TestEngineLocal = EngineVersusDict.TestCase
TestEngineLocal.settings = _SETTINGS
TestEngineMemory = EngineWithMemoryBackendsVersusDict.TestCase
TestEngineMemory.settings = _SETTINGS
