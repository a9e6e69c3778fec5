"""Model-based test: a Hypothesis state machine drives the engine and a dict with the same operations.

The model is a plain ``dict[block_id, MAIFBlock]`` where the last write wins and a deletion removes the
id, plus the LSN of each id's last write. Every operation must give the model's answer:

- writes, single and batched, including overwrites of the same id: EMBEDDING blocks overwritten by
  other embeddings and by non-embeddings, and the other way round; receipts carry the block digest and
  LSNs that only ever grow (also across reopen, crash and rebuilt indexes);
- deletes of present ids (DeleteReceipt) and of absent ids (BlockNotFoundError in both);
- reads (bit-exact, or BlockNotFoundError), with the tier that served them;
- listings with every filter (agent, type, since/until, parent), a ``limit`` and keyset paging with
  ``after`` (a cursor naming no block: BlockNotFoundError), compared summary field by field;
- semantic search: the model computes exact cosine top-k over its current EMBEDDING blocks (filters,
  score threshold). An index of at most ``EXACT_ROWS_MAX`` (2048) rows is scanned exactly by the faiss
  index (``FaissVectorIndex._search_locked``; the store never holds more than a few rows per block id
  here, tombstones included, before a compacting flush), so the comparison is exact, tie-aware:
  the hits are the model's top-k scores (within 1e-4) and every hit's score is the model's cosine for
  that id, which is also a current embedding id passing the filters (no deleted or overwritten-away id
  can appear). The vector pool is chosen so that distinct cosines differ by more than 2e-3 and none
  lies near a threshold (``test_vector_pool_has_no_near_ties``);
- ``repair()`` (every derived state rebuilt on demand); moving every sealed pack to the cold tier (a
  TieredChunkStore with TierPolicy(0, 0) and 32 KiB packs, so a store spans many packs); compaction;
  a forced checkpoint (with 16 KiB log segments, so the log recycles and the packs' block records
  become the only authoritative copy of old writes);
- clean close and reopen; and, on the durable local backends only: crash and reopen; a crash while a
  write or a deletion is in flight (it may survive or not, a batch as any prefix of itself, and nothing
  else may change; once acknowledged it must survive); a crash part-way through a migration to the
  cold tier, a compaction or a checkpoint (nothing may change); and damage to derived state
  (any of ``index.sqlite``, ``vectors/``, the pack index ``packs/index.log`` and the cold-tier list
  ``packs/remote.list`` deleted between a close or a crash and the reopen). After each
  reopen the whole state is compared (every id read, the full listing, a search per stored direction),
  and ``check(read_data_fraction=1.0)`` must be ``ok`` and count the model's blocks; it also runs
  every sixth step.

Two variants: the durable local backends, and in-memory backends (where reopening replays the whole
log; crash and damage rules do not apply to them).

What :func:`crash` models, and what it does not. It stands for a process killed (``kill -9``) while
the machine stays up: it cancels the engine's background tasks (committer, applier, tier loop, a pack
move, and a writer in flight), lets the calls already running in worker threads finish (a thread
cannot be stopped half-way in-process: so a crash falls *between* backend calls, never inside one,
e.g. between the pack flush and the vector flush of a checkpoint, or after a log append's sync but
before its writer is woken), then closes the log's, the active pack's and SQLite's descriptors and
releases the store lock WITHOUT any of what ``close()`` does first: no draining of queued writes, no
final apply, no checkpoint, no pack flush (unsynced frames stay in the page cache, as after a real
kill; pack-index entries held in memory are lost and must be recovered from the pack tails), no
vector-index save (its in-memory graph is lost), no tier ``_finish_move``. The crash points are the
event loop's turns: a rule crashes between two steps, or after a few turns of a write, migration,
compaction or checkpoint it started. Not modelled: a power loss or kernel crash (page-cache data never
synced would be lost too; the log's fdatasync is what makes acknowledged writes survive that); a death
in the middle of a system call, a torn write, or a thread stopped half-way through a backend call
(tests/storage/test_crash.py kills a real ingesting process with SIGKILL, tests/storage/test_faults.py
injects failing syncs and torn writes); SQLite connections closed here run SQLite's close-time
checkpoint of its own WAL, which a killed process would not (committed transactions are durable either
way, so the answers cannot differ).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import random
import shutil
import tempfile
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from maif.errors import BlockNotFoundError, DurabilityError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import block_digest
from maif.storage import faiss_vectors
from maif.storage.applier import type_name
from maif.storage.backends.local import (
    LocalChunkStore,
    LocalMetadataIndex,
    LocalObjectStore,
    LocalVectorIndex,
)
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.receipts import BlockSummary, SearchHit
from maif.storage.tiers import TieredChunkStore, TierPolicy

T = TypeVar("T")

BLOCK_IDS = [f"id-{n}" for n in range(8)]
AGENTS = ["alpha", "beta"]
DIMENSIONS = 8
PACK_BYTES = 32 * 1024
WAL_SEGMENT_BYTES = 16 * 1024
SCORE_TOLERANCE = 1e-4
THRESHOLDS = [-0.5, 0.0, 0.5, 0.9]

# Exact search: the faiss index scans exactly while it holds at most EXACT_ROWS_MAX rows (tombstones of
# overwritten and removed vectors included): a run of 30 steps writes at most 6 blocks a step (and a
# repair or rebuild starts from an empty index), so it never holds more than 180 rows.
assert faiss_vectors.EXACT_ROWS_MAX >= 30 * 6


def _vector_pools() -> tuple[list[np.ndarray], list[np.ndarray]]:
    generator = np.random.default_rng(0)
    base = generator.standard_normal((5, DIMENSIONS)).astype("<f4")
    stored = [*base, (base[0] * 2.5).astype("<f4")]  # same direction as base[0]: a tie of cosine 1
    queries = [*stored, *generator.standard_normal((2, DIMENSIONS)).astype("<f4"), (-base[1]).astype("<f4")]
    return stored, queries


STORED_VECTORS, QUERY_VECTORS = _vector_pools()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


@functools.cache
def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


_KINDS: dict[str, MAIFBlockType | str] = {"TEXT": MAIFBlockType.TEXT, "IMAG": MAIFBlockType.IMAGE,
                                          "CUST": "CUST", "EMBD": MAIFBlockType.EMBEDDING}


@dataclass(frozen=True)
class Spec:
    """A block to write, small enough that a failing example prints readably; ``build()`` makes it.
    ``payload`` is (size, seed) of random bytes, or for an EMBEDDING the index of a STORED_VECTORS row."""

    id: str
    kind: str
    payload: tuple[int, int]
    metadata: tuple[tuple[str, Any], ...]
    timestamp: float
    agent_id: str
    parents: tuple[str, ...]

    def build(self) -> MAIFBlock:
        data = STORED_VECTORS[self.payload[0]].tobytes() if self.kind == "EMBD" else payload(*self.payload)
        return MAIFBlock(id=self.id, block_type=_KINDS[self.kind], data=data, metadata=dict(self.metadata),
                         timestamp=self.timestamp, agent_id=self.agent_id, parents=self.parents)


block_ids = st.sampled_from(BLOCK_IDS)
timestamps = st.sampled_from([1.0, 2.5, 2.5, 1e9])  # ties: the order falls back to the block id
parent_lists = st.lists(block_ids, max_size=2).map(tuple)

blocks = st.builds(
    Spec,
    id=block_ids,
    kind=st.sampled_from(["TEXT", "IMAG", "CUST"]),
    # few seeds: identical payloads exercise deduplication
    payload=st.tuples(st.sampled_from([0, 1, 100, 3000, 40_000, 90_000]), st.integers(0, 3)),
    metadata=st.dictionaries(st.sampled_from(["k", "lang", "n"]), st.integers(-5, 5) | st.text(max_size=5),
                             max_size=2).map(lambda entries: tuple(sorted(entries.items()))),
    timestamp=timestamps,
    agent_id=st.sampled_from(AGENTS),
    parents=parent_lists,
)

embedding_blocks = st.builds(
    Spec,
    id=block_ids,
    kind=st.just("EMBD"),
    payload=st.tuples(st.integers(0, len(STORED_VECTORS) - 1), st.just(0)),
    metadata=st.sampled_from([(("dtype", "float32"),), (("dim", DIMENSIONS), ("dtype", "float32"))]),
    timestamp=timestamps,
    agent_id=st.sampled_from(AGENTS),
    parents=parent_lists,
)

any_blocks = st.one_of(blocks, embedding_blocks)
type_filters = st.none() | st.sampled_from(
    [MAIFBlockType.TEXT, MAIFBlockType.IMAGE, "IMAG", "CUST", MAIFBlockType.EMBEDDING])
time_bounds = st.none() | st.sampled_from([1.0, 2.5, 3.0, 1e9])
search_filters = st.none() | st.sampled_from(
    [{"agent_id": "alpha"}, {"agent_id": "beta"}, {"block_type": "EMBD"}, {"block_type": "TEXT"}])


# ---- the model's answers ----------------------------------------------------------------------------

def order(block: MAIFBlock) -> tuple[float, str]:
    return block.timestamp, block.id


def type_text(kind: MAIFBlockType | str | None) -> str | None:
    """A type filter as the FourCC text ``type_name`` gives a block."""
    return kind.value if isinstance(kind, MAIFBlockType) else kind


def expected_listing(model: dict[str, MAIFBlock], *, agent_id: str | None = None,
                     block_type: MAIFBlockType | str | None = None, since: float | None = None,
                     until: float | None = None, parent: str | None = None,
                     after: str | None = None) -> list[MAIFBlock]:
    wanted_type = type_text(block_type)
    chosen = sorted((block for block in model.values()
                     if agent_id in (None, block.agent_id)
                     and wanted_type in (None, type_name(block))
                     and (since is None or block.timestamp >= since)
                     and (until is None or block.timestamp < until)
                     and (parent is None or parent in block.parents)), key=order)
    if after is not None:
        cursor = order(model[after])
        chosen = [block for block in chosen if order(block) > cursor]
    return chosen


def summary_of(block: MAIFBlock, lsn: int) -> tuple[Any, ...]:
    return (block.id, type_name(block), block.agent_id, block.timestamp, block.version, tuple(block.parents),
            len(block.data), block_digest(block), lsn)


def as_tuple(summary: BlockSummary) -> tuple[Any, ...]:
    return (summary.block_id, summary.block_type, summary.agent_id, summary.timestamp, summary.version,
            tuple(summary.parents), summary.payload_length, summary.digest, summary.lsn)


def model_scores(model: dict[str, MAIFBlock], query: np.ndarray,
                 filters: dict[str, str] | None) -> dict[str, float]:
    """Exact cosine of ``query`` with every current EMBEDDING block passing ``filters``."""
    scores = {}
    for block in model.values():
        if block.block_type is not MAIFBlockType.EMBEDDING:
            continue
        attributes = {"agent_id": block.agent_id, "block_type": type_name(block)}
        if filters and any(attributes.get(key) != value for key, value in filters.items()):
            continue
        scores[block.id] = cosine(query, np.frombuffer(block.data, dtype="<f4"))
    return scores


def assert_search_matches(hits: list[SearchHit], model: dict[str, MAIFBlock], query: np.ndarray, limit: int,
                          threshold: float | None, filters: dict[str, str] | None) -> None:
    """Exact top-k, tie-aware: the engine may pick any of equally scored ids, nothing else."""
    scores = model_scores(model, query, filters)
    eligible = sorted((s for s in scores.values() if threshold is None or s >= threshold), reverse=True)
    found = [(hit.block_id, hit.score) for hit in hits]
    assert len({block_id for block_id, _ in found}) == len(found), f"an id twice: {found}"
    for hit in hits:
        assert hit.block_id in scores, f"{hit.block_id!r}: not a current embedding passing {filters}: {found}"
        assert abs(hit.score - scores[hit.block_id]) < SCORE_TOLERANCE, (hit, scores[hit.block_id])
        assert (hit.agent_id, hit.block_type) == (model[hit.block_id].agent_id, "EMBD")
    assert len(found) == min(limit, len(eligible)), (found, eligible, limit)
    for (block_id, score), expected in zip(found, eligible, strict=False):
        assert abs(score - expected) < SCORE_TOLERANCE, (found, eligible, block_id)
    stored = [block_id for block_id, score in scores.items() if score > 1 - SCORE_TOLERANCE]
    if stored and (threshold is None or threshold <= 1 - SCORE_TOLERANCE):  # a stored vector's direction
        assert found and found[0][0] in stored, (found, stored)


# ---- a simulated crash ------------------------------------------------------------------------------

async def crash(storage: MAIFStorage, executor: ThreadPoolExecutor, *also: asyncio.Task[Any]) -> None:
    """Stop ``storage`` the way a killed process stops, as far as one process can simulate it (see the
    module docstring): background tasks cancelled (and ``also``, e.g. a writer in flight), calls running
    in worker threads allowed to finish, then every descriptor closed and the lock released, with no
    drain, apply, checkpoint, flush or save. ``executor`` is the loop's default executor; it is shut
    down (the caller installs a new one)."""
    committer = storage._committer
    chunks = storage._backends.chunks
    moving = getattr(chunks, "_moving", None)
    tasks = [task for task in (*also, storage._tier_task, storage._applier_task, moving,
                               committer._task if committer is not None else None)
             if task is not None and not task.done()]
    if committer is not None:
        # The committer turns any exception of its append, cancellation included, into a failure of
        # that group's writers and goes on; told it is closing, it then returns instead of waiting.
        committer._closing = True
        committer._wakeup.set()
    for task in tasks:
        task.cancel()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, f"tasks ignored their cancellation: {pending}"
    if committer is not None:
        committer._executor.shutdown(wait=True)  # a log append in flight completes (sync included)
    executor.shutdown(wait=True)  # so do backend calls in flight (asyncio.to_thread)
    storage._closed = True
    if storage._wal is not None:
        storage._wal.close()  # the descriptor only: no sync
    warm = chunks.warm if isinstance(chunks, TieredChunkStore) else chunks
    assert isinstance(warm, LocalChunkStore)
    packs = warm.packs
    with packs._lock:  # PackStore.close() would flush first: append pending index entries, fdatasync
        if packs._active_fd >= 0:
            os.close(packs._active_fd)
            packs._active_fd = -1
    warm._closed = True
    index = storage._backends.index
    assert isinstance(index, LocalMetadataIndex)
    with index._lock:
        for connection in (index._reader, index._connection):
            if connection is not None:
                connection.close()  # nothing uncommitted: every _put commits within its worker call
        index._reader = index._connection = None
    vectors = storage._backends.vectors
    assert isinstance(vectors, LocalVectorIndex)
    vectors._closed = True  # never saved: the in-memory graph is lost, as in a killed process
    storage._release_store_lock()


def _quiet_about_crashed_writers(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The committer fails the writers of an append cancelled by :func:`crash` (DurabilityError); a
    writer that was cancelled itself never retrieves that: not worth a warning. Anything else is."""
    error = context.get("exception")
    if isinstance(error, DurabilityError) and "CancelledError" in error.message:
        return
    loop.default_exception_handler(context)


def local_backends(data_dir: Path) -> Backends:
    """The embedded backends with small packs, every sealed pack eligible for the cold tier at once."""
    warm = LocalChunkStore(data_dir / "packs", pack_bytes_max=PACK_BYTES)
    chunks = TieredChunkStore(warm, LocalObjectStore(data_dir / "cold"), TierPolicy(0.0, 0.0))
    return Backends(chunks, LocalMetadataIndex(data_dir / "index.sqlite"),
                    LocalVectorIndex(data_dir / "vectors"), LRUHotCache(1 << 20))


# ---- the state machine ------------------------------------------------------------------------------

class EngineVersusDict(RuleBasedStateMachine):
    durable = True  # the local backends; False: in-memory ones (crash and damage rules do not apply)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet_about_crashed_writers)
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="maif-stateful")
        self.loop.set_default_executor(self.executor)
        self.data_dir = Path(tempfile.mkdtemp(prefix="maif-stateful-"))
        self.model: dict[str, MAIFBlock] = {}
        self.lsns: dict[str, int] = {}  # block id -> LSN of its current version
        self.last_lsn = 0  # highest LSN handed out so far: every new one must be above it
        self.storage: MAIFStorage | None = None
        self.steps = 0
        self.check_due = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def open(self) -> MAIFStorage:
        backends = local_backends(self.data_dir) if self.durable else Backends(
            MemoryChunkStore(), MemoryMetadataIndex(), MemoryVectorIndex(), LRUHotCache(1 << 16))
        config = {"data_dir": str(self.data_dir), "batch_timeout_ms": 0.5, "max_memory_mb": 8,
                  "tier_interval_s": 0}
        with mock.patch.object(MAIFStorage, "wal_segment_bytes_max", WAL_SEGMENT_BYTES):  # read at open
            storage = self.run(create_maif_storage(config, backends=backends))
        self.check_due = True
        return storage

    @initialize()
    def start(self) -> None:
        self.storage = self.open()

    @property
    def store(self) -> MAIFStorage:
        assert self.storage is not None
        return self.storage

    def new_lsn(self, lsn: int) -> None:
        assert lsn > self.last_lsn, f"LSN {lsn} handed out again (last was {self.last_lsn})"
        self.last_lsn = lsn

    def remember(self, block: MAIFBlock, lsn: int) -> None:
        self.model[block.id] = block
        self.lsns[block.id] = lsn

    # ---- writing ------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """What the applier does every few seconds (and close does): apply, make durable, let the log
        forget. With 16 KiB log segments the log then recycles, and the packs' block records become the
        only authoritative copy of the older writes."""
        async def body() -> None:
            await self.store._wait_applied()
            await self.store._checkpoint(self.store._applied_lsn)

        self.run(body())

    @rule(spec=any_blocks, checkpoint=st.booleans())
    def write(self, spec: Spec, checkpoint: bool) -> None:
        block = spec.build()
        receipt = self.run(self.store.write_block(block))
        assert receipt.block_id == block.id and receipt.digest == block_digest(block)
        self.new_lsn(receipt.lsn)
        self.remember(block, receipt.lsn)
        if checkpoint:
            self.checkpoint()

    @rule(specs=st.lists(any_blocks, min_size=1, max_size=6), checkpoint=st.booleans())
    def write_many(self, specs: list[Spec], checkpoint: bool) -> None:
        batch = [spec.build() for spec in specs]
        receipts = self.run(self.store.write_blocks(batch))
        assert [r.lsn for r in receipts] == list(range(receipts[0].lsn, receipts[0].lsn + len(batch)))
        assert [(r.block_id, r.digest) for r in receipts] == [(b.id, block_digest(b)) for b in batch]
        self.new_lsn(receipts[0].lsn)
        self.last_lsn = receipts[-1].lsn
        for block, receipt in zip(batch, receipts, strict=True):
            self.remember(block, receipt.lsn)
        if checkpoint:
            self.checkpoint()

    @rule(block_id=block_ids, checkpoint=st.booleans())
    def delete(self, block_id: str, checkpoint: bool) -> None:
        if block_id in self.model:
            receipt = self.run(self.store.delete_block(block_id))
            assert receipt.block_id == block_id
            self.new_lsn(receipt.lsn)
            del self.model[block_id], self.lsns[block_id]
        else:
            with pytest.raises(BlockNotFoundError):
                self.run(self.store.delete_block(block_id))
        if checkpoint:
            self.checkpoint()

    # ---- reading ------------------------------------------------------------------------------------
    @rule(block_id=block_ids)
    def read(self, block_id: str) -> None:
        if block_id in self.model:
            block, tier = self.run(self.store.read_block_with_tier(block_id))
            assert block == self.model[block_id]
            assert tier in {"log", "hot", "warm", "cold"}
        else:
            with pytest.raises(BlockNotFoundError):
                self.run(self.store.read_block(block_id))

    @rule(agent_id=st.none() | st.sampled_from(AGENTS), block_type=type_filters, since=time_bounds,
          until=time_bounds, parent=st.none() | block_ids, limit=st.integers(1, 10),
          after=st.none() | block_ids)
    def list_blocks(self, agent_id: str | None, block_type: MAIFBlockType | str | None, since: float | None,
                    until: float | None, parent: str | None, limit: int, after: str | None) -> None:
        query = {"agent_id": agent_id, "block_type": block_type, "since": since, "until": until,
                 "parent": parent}
        if after is not None and after not in self.model:
            with pytest.raises(BlockNotFoundError):
                self.run(self.store.list_blocks(**query, limit=limit, after=after))
            return
        expected = expected_listing(self.model, **query, after=after)[:limit]
        found = self.run(self.store.list_blocks(**query, limit=limit, after=after))
        assert [as_tuple(s) for s in found] == [summary_of(b, self.lsns[b.id]) for b in expected]

    @rule(agent_id=st.none() | st.sampled_from(AGENTS), block_type=type_filters, since=time_bounds,
          parent=st.none() | block_ids, page=st.integers(1, 3))
    def list_in_pages(self, agent_id: str | None, block_type: MAIFBlockType | str | None,
                      since: float | None, parent: str | None, page: int) -> None:
        query = {"agent_id": agent_id, "block_type": block_type, "since": since, "parent": parent}
        found: list[BlockSummary] = []
        after = None
        while True:
            batch = self.run(self.store.list_blocks(**query, limit=page, after=after))
            found += batch
            if len(batch) < page:
                break
            after = batch[-1].block_id
        expected = expected_listing(self.model, **query)
        assert [as_tuple(s) for s in found] == [summary_of(b, self.lsns[b.id]) for b in expected]

    @rule(query=st.sampled_from(range(len(QUERY_VECTORS))), scale=st.sampled_from([1.0, 3.0]),
          limit=st.integers(1, 10), threshold=st.none() | st.sampled_from(THRESHOLDS),
          filters=search_filters)
    def search(self, query: int, scale: float, limit: int, threshold: float | None,
               filters: dict[str, str] | None) -> None:
        vector = QUERY_VECTORS[query] * np.float32(scale)
        hits = self.run(self.store.semantic_search(vector, limit, score_threshold=threshold, filters=filters))
        assert_search_matches(hits, self.model, vector, limit, threshold, filters)

    def verify_everything(self) -> None:
        """Every id read, the whole listing, and a search per stored direction."""
        for block_id in BLOCK_IDS:
            self.read(block_id)
        found = self.run(self.store.list_blocks(limit=100))
        expected = expected_listing(self.model)
        assert [as_tuple(s) for s in found] == [summary_of(b, self.lsns[b.id]) for b in expected]
        for vector in STORED_VECTORS[:5]:
            hits = self.run(self.store.semantic_search(vector, len(BLOCK_IDS)))
            assert_search_matches(hits, self.model, vector, len(BLOCK_IDS), None, None)

    # ---- maintenance --------------------------------------------------------------------------------
    @precondition(lambda self: self.durable)
    @rule()
    def migrate_to_cold(self) -> None:
        self.run(self.store._wait_applied())  # so that the applier seals no pack meanwhile
        self.run(self.store.migrate_tiers())
        chunks = self.store._backends.chunks
        assert isinstance(chunks, TieredChunkStore)
        assert chunks.warm.packs.sealed_packs() == {}, "TierPolicy(0, 0) moves every sealed pack"
        self.verify_everything()

    @rule(garbage_fraction_min=st.sampled_from([0.01, 0.2, 1.0]))
    def compact(self, garbage_fraction_min: float) -> None:
        report = self.run(self.store.compact(garbage_fraction_min))
        assert report.packs_rewritten <= report.packs_examined
        assert report.bytes_reclaimed >= 0
        self.verify_everything()

    @rule()
    def repair(self) -> None:
        """Rebuild every derived state on demand (``maif store check --repair``): nothing changes."""
        report = self.run(self.store.repair())
        assert report.ok, report.problems
        self.verify_everything()

    # ---- close, crash, damage -----------------------------------------------------------------------
    @rule(crashed=st.booleans())
    def reopen(self, crashed: bool) -> None:
        """Close and reopen; or, on the durable backends, crash and reopen: every acknowledged write
        survives either way."""
        if crashed and self.durable:
            self.crash_now()
        else:
            self.run(self.store.close())
        self.storage = self.open()
        self.verify_everything()

    def crash_now(self, *also: asyncio.Task[Any]) -> None:
        storage, self.storage = self.store, None
        self.run(crash(storage, self.executor, *also))
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="maif-stateful")
        self.loop.set_default_executor(self.executor)

    @precondition(lambda self: self.durable)
    @rule(specs=st.lists(any_blocks, min_size=1, max_size=4), delete_id=st.none() | block_ids,
          spins=st.integers(0, 8), pause=st.sampled_from([0.0, 0.0, 0.001, 0.005]))
    def crash_during_write(self, specs: list[Spec], delete_id: str | None, spins: int, pause: float) -> None:
        """Crash with a write (or a deletion) in flight: it may survive or not, and nothing else changes.
        A batch may survive as any prefix (a killed process can tear the log's tail between records)."""
        batch = [spec.build() for spec in specs]
        deleting = delete_id is not None and delete_id in self.model
        if deleting:
            assert delete_id is not None
            outcomes = [dict(self.model), {k: v for k, v in self.model.items() if k != delete_id}]
        else:
            outcomes = []
            for count in range(len(batch) + 1):
                outcome = dict(self.model)
                outcome.update({block.id: block for block in batch[:count]})
                outcomes.append(outcome)

        async def start_then_wait() -> tuple[asyncio.Task[Any], bool]:
            operation = self.store.delete_block(delete_id) if deleting else self.store.write_blocks(batch)
            task = asyncio.ensure_future(operation)
            for _ in range(spins):
                await asyncio.sleep(0)
            if pause:
                await asyncio.sleep(pause)
            acknowledged = task.done() and not task.cancelled() and task.exception() is None
            return task, acknowledged

        task, acknowledged = self.run(start_then_wait())
        self.crash_now(task)
        self.storage = self.open()
        observed = {}
        for block_id in BLOCK_IDS:
            with contextlib.suppress(BlockNotFoundError):
                observed[block_id] = self.run(self.store.read_block(block_id))
        allowed = outcomes[-1:] if acknowledged else outcomes
        assert observed in allowed, (f"after a crash with {'a deletion' if deleting else 'a write'} in "
                                     f"flight (acknowledged: {acknowledged}) the store holds "
                                     f"{sorted(observed)}; allowed: {[sorted(o) for o in allowed]}")
        self.model = observed
        summaries = self.run(self.store.list_blocks(limit=100))
        self.lsns = {summary.block_id: summary.lsn for summary in summaries}
        for lsn in self.lsns.values():  # the unacknowledged write's LSN, if it survived, is taken
            self.last_lsn = max(self.last_lsn, lsn)
        self.verify_everything()

    @precondition(lambda self: self.durable)
    @rule(operation=st.sampled_from(["migrate", "compact", "checkpoint"]), spins=st.integers(0, 12))
    def crash_during_maintenance(self, operation: str, spins: int) -> None:
        """Crash part-way through moving packs to the cold tier, a compaction, or a checkpoint (after
        ``spins`` turns of the event loop, each ending at one of its awaits): the answers never change."""
        async def start() -> asyncio.Task[Any]:
            store = self.store
            await store._wait_applied()
            if operation == "migrate":
                work: Coroutine[Any, Any, Any] = store.migrate_tiers()
            elif operation == "compact":
                work = store.compact(0.01)
            else:
                work = store._checkpoint(store._applied_lsn)
            task = asyncio.ensure_future(work)
            for _ in range(spins):
                await asyncio.sleep(0)
            return task

        self.crash_now(self.run(start()))
        self.storage = self.open()
        self.verify_everything()

    @precondition(lambda self: self.durable)
    @rule(damaged=st.sets(st.sampled_from(["index", "vectors", "pack index", "cold list"]), min_size=1),
          crashed=st.booleans())
    def damage_derived_state_and_reopen(self, damaged: set[str], crashed: bool) -> None:
        """Lose derived state while the store is shut (the metadata index, the vector index, the pack
        index, the list of packs moved cold): the same answers."""
        if crashed:
            self.crash_now()
        else:
            self.run(self.store.close())
            self.storage = None
        if "index" in damaged:
            for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
                (self.data_dir / name).unlink(missing_ok=True)
        if "vectors" in damaged:
            shutil.rmtree(self.data_dir / "vectors", ignore_errors=True)
        if "pack index" in damaged:
            (self.data_dir / "packs" / "index.log").unlink(missing_ok=True)
        if "cold list" in damaged:
            (self.data_dir / "packs" / "remote.list").unlink(missing_ok=True)
        self.storage = self.open()
        self.verify_everything()

    # ---- invariants ---------------------------------------------------------------------------------
    @invariant()
    def check_now_and_then(self) -> None:
        """``check()`` reads every block back (O(store)): every sixth step, and after every reopen."""
        self.steps += 1
        if self.storage is None or not (self.check_due or self.steps % 6 == 0):
            return
        self.check_due = False
        report = self.run(self.store.check(read_data_fraction=1.0))
        assert report.ok, report.problems
        assert report.blocks_checked == len(self.model), (report.blocks_checked, sorted(self.model))

    def teardown(self) -> None:
        try:
            if self.storage is not None:
                self.run(self.storage.close())
        finally:
            self.loop.close()
            self.executor.shutdown(wait=True)
            shutil.rmtree(self.data_dir, ignore_errors=True)


class EngineWithMemoryBackendsVersusDict(EngineVersusDict):
    durable = False


_SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TestEngineLocal = EngineVersusDict.TestCase
TestEngineLocal.settings = _SETTINGS
TestEngineMemory = EngineWithMemoryBackendsVersusDict.TestCase
TestEngineMemory.settings = _SETTINGS


def test_vector_pool_has_no_near_ties() -> None:
    """The search comparison is exact only if distinct cosines are far apart (more than the tolerance
    float32 arithmetic needs) and none sits on a score threshold."""
    for query in QUERY_VECTORS:
        scores = sorted({round(cosine(query, vector), 6) for vector in STORED_VECTORS})
        assert all(b - a > 2e-3 for a, b in itertools.pairwise(scores)), scores
        assert all(abs(score - threshold) > 2e-3 for score in scores for threshold in THRESHOLDS), scores


def test_crash_keeps_acknowledged_writes(tmp_path: Path) -> None:
    """The crash helper itself: a write acknowledged just before it survives; the store can reopen."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=2)
    loop.set_default_executor(executor)
    block = MAIFBlock(id="survivor", data=b"acknowledged", agent_id="alpha")
    config = {"data_dir": str(tmp_path), "tier_interval_s": 0}
    try:
        storage = loop.run_until_complete(create_maif_storage(config, backends=local_backends(tmp_path)))
        loop.run_until_complete(storage.write_block(block))
        loop.run_until_complete(crash(storage, executor))
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))

        async def reopened() -> MAIFBlock:
            async with await create_maif_storage(config, backends=local_backends(tmp_path)) as again:
                return await again.read_block("survivor")

        assert loop.run_until_complete(reopened()) == block
    finally:
        loop.close()


def test_lost_index_after_crash_keeps_no_stale_vector(tmp_path: Path) -> None:
    """Found by the state machine (fixed: a rebuilt metadata index makes the vector index rebuild): an
    embedding overwritten by another embedding, the store killed after the applier wrote the new
    record to the packs but before a checkpoint saved the vector index, then ``index.sqlite`` lost:
    search scored the OLD vector while check() said ok."""
    old, new = STORED_VECTORS[3], STORED_VECTORS[0]
    config = {"data_dir": str(tmp_path), "tier_interval_s": 0}
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=2)
    loop.set_default_executor(executor)

    def embedding(vector: np.ndarray) -> MAIFBlock:
        return MAIFBlock(id="e1", block_type=MAIFBlockType.EMBEDDING, data=vector.tobytes(),
                         metadata={"dtype": "float32"}, agent_id="alpha", timestamp=1.0)

    async def first() -> None:  # the old vector, saved by the checkpoint of a clean close
        async with await create_maif_storage(config, backends=local_backends(tmp_path)) as storage:
            await storage.write_block(embedding(old))

    async def second() -> MAIFStorage:  # the new vector, applied (its record is in a pack), then a crash
        storage = await create_maif_storage(config, backends=local_backends(tmp_path))
        await storage.write_block(embedding(new))
        await storage._wait_applied()
        return storage

    async def third() -> tuple[MAIFBlock, list[SearchHit], bool]:
        async with await create_maif_storage(config, backends=local_backends(tmp_path)) as storage:
            return (await storage.read_block("e1"), await storage.semantic_search(new, 1),
                    (await storage.check()).ok)

    try:
        loop.run_until_complete(first())
        storage = loop.run_until_complete(second())
        loop.run_until_complete(crash(storage, executor))
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        block, hits, ok = loop.run_until_complete(third())
    finally:
        loop.close()
    assert block == embedding(new) and ok  # both hold today
    assert [hit.block_id for hit in hits] == ["e1"]
    assert hits[0].score == pytest.approx(1.0, abs=SCORE_TOLERANCE), f"scored the old vector: {hits[0]}"
