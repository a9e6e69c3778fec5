"""The storage engine: validate -> write-ahead log (group commit, fdatasync) -> ack -> apply in background.

:func:`create_maif_storage` opens (or creates) a store and returns a :class:`MAIFStorage`::

    async with await create_maif_storage({"data_dir": "./maif-data"}) as storage:
        receipt = await storage.write_block(MAIFBlock(data=b"hello", agent_id="agent-1"))
        block = await storage.read_block(receipt.block_id)

Acknowledged means durable: ``write_block`` returns only after the block's log record is on disk
(``fdatasync``), sharing the sync with every concurrent writer (:class:`maif.storage.wal.GroupCommitter`).
Applying to the backends (chunks, metadata index, vector index) runs in a background task; until a
block is applied it is served from a bounded in-memory map (read-your-writes), and writers wait when
the applier falls behind by more than that bound (backpressure). Opening a store replays the log from
the last checkpoint, so a crash at any instant loses nothing that was acknowledged.

Writing a block id that already exists replaces it (last writer, by log order, wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3
import msgspec
import numpy as np

from maif import limits
from maif.config import ConfigSource, StorageConfig, load_section
from maif.errors import (
    BackendError,
    BackendUnavailableError,
    BlockNotFoundError,
    DurabilityError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
    StorageError,
    StoreClosedError,
    StoreDegradedError,
)
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import CODEC_VERSION, decode_block, decode_metadata, encode_block, encode_blocks
from maif.storage import arguments
from maif.storage.applier import Applier, LogItem, type_name
from maif.storage.backends.base import ChunkStore, HotCache, MetadataIndex, SharedCache, VectorIndex
from maif.storage.backends.wrappers import RetryPolicy
from maif.storage.engine_stats import LatencyReservoir
from maif.storage.health import Health
from maif.storage.lock import StoreLock, acquire_store_lock
from maif.storage.receipts import BlockSummary, CheckReport, DeleteReceipt, SearchHit, WriteReceipt
from maif.storage.records import BlockRecord
from maif.storage.wal import (
    FileOps,
    GroupCommitter,
    RecoveryReport,
    WriteAheadLog,
    oldest_segment_lsn,
)
from maif.validation import require_instance

if TYPE_CHECKING:
    from maif.storage.compaction import CompactionReport
    from maif.storage.sharedlog import SharedLog
    from maif.storage.wal import Committer

_CHECKPOINT_RECORDS = 200_000  # applied records between checkpoints (bounds replay time after a crash)
_CHECKPOINT_INTERVAL_S = 5.0
_APPLY_LINGER_S = 0.005
# While a server is unavailable the applier retries its batch with capped, jittered backoff; a close
# waits this long for the server before leaving the rest in the log (applied when the store reopens);
# a query waits this long for the applier before it is refused with BackendUnavailableError.
_CLOSE_UNAVAILABLE_WAIT_S = 10.0
_QUERY_UNAVAILABLE_WAIT_S = 2.0


_log = logging.getLogger(__name__)

class Backends:
    """The four backends one engine drives; defaults are the embedded local ones under data_dir."""

    def __init__(self, chunks: ChunkStore, index: MetadataIndex, vectors: VectorIndex,
                 cache: HotCache, shared_cache: SharedCache | None = None,
                 health: Health | None = None) -> None:
        self.chunks = chunks
        self.index = index
        self.vectors = vectors
        self.cache = cache
        self.shared_cache = shared_cache  # several nodes' cache (Redis); every value digest-checked
        self.health = health or Health()  # fed by the retry wrappers around server backends

    @property
    def durable(self) -> bool:
        return all(backend.capabilities.durable for backend in (self.chunks, self.index, self.vectors))

    async def close(self) -> None:
        """Close every backend even when one fails; the first failure propagates."""
        errors: list[BaseException] = []
        closers: list[Any] = [self.vectors, self.chunks, self.index]
        if self.shared_cache is not None:
            closers.append(self.shared_cache)
        for backend in closers:
            try:
                await backend.close()
            except Exception as error:  # noqa: BLE001 - close the others, then re-raise
                errors.append(error)
        if errors:
            raise errors[0]


def _cache_bytes(config: StorageConfig) -> int:
    """The hot cache's share of ``max_memory_mb``: a quarter (another quarter bounds unapplied writes)."""
    return max(1, config.max_memory_mb * 1024 * 1024 // 4)


def default_backends(config: StorageConfig) -> Backends:
    """The embedded defaults: packs (warm) migrating to a local cold directory, SQLite metadata, faiss
    HNSW vectors (float16 walk, float32 ranking; ADR 0091), an LRU cache."""
    from maif.storage.backends import local  # imported here: SQLite/faiss only when used
    from maif.storage.cache import LRUHotCache

    data_dir = Path(config.data_dir)
    cache_bytes = _cache_bytes(config)
    from maif.storage.tiers import TieredChunkStore, TierPolicy

    policy = TierPolicy(cold_after_age_s=config.cold_after_age_s, cold_after_idle_s=config.cold_after_idle_s)
    warm = local.LocalChunkStore(data_dir / "packs", compression_threshold=config.compression_threshold)
    try:
        # Built in this order so that a failure leaves only the pack store's descriptors to release:
        # the object store and the vector index hold none, and the SQLite index is built last.
        cold = local.LocalObjectStore(data_dir / "cold")
        vectors = local.LocalVectorIndex(data_dir / "vectors")
        index = local.LocalMetadataIndex(data_dir / "index.sqlite")
    except BaseException:
        with contextlib.suppress(Exception):  # its descriptors are closed even when its final flush fails
            warm.packs.close()
        raise
    return Backends(chunks=TieredChunkStore(warm, cold, policy), index=index, vectors=vectors,
                    cache=LRUHotCache(cache_bytes))


async def create_maif_storage(config: ConfigSource | StorageConfig = None, *,
                              backends: Backends | None = None,
                              wal_file_ops: FileOps | None = None, repair: bool = False) -> MAIFStorage:
    """Open the store described by ``config`` (None: embedded default under ./maif-data).

    ``config`` is a dict, a JSON/TOML path, or a :class:`StorageConfig`. ``backends`` and
    ``wal_file_ops`` replace the defaults (tests inject faults through them).

    A damaged write-ahead log (not a torn tail) makes this raise WALCorruptionError. ``repair=True`` is
    the explicit decision to go on: the damaged segments are copied to ``wal/quarantine/``, the log is
    cut at the damage, every record after it that still validates is written again (new LSNs, in its
    old order, durable before this returns), and ``storage.recovery`` says what was lost and kept
    (``check()`` reports it too). It also rebuilds every derived state.

    The data directory is locked first (:mod:`maif.storage.lock`; another open store on it, in any
    process or in this one, makes this raise StoreLockedError), before any backend is built: the local
    chunk store recovers pack tails as it opens, and the log lives in data_dir whatever the backends.
    The store owns ``backends`` from this call on: a failed open closes them, like the ones it builds,
    and releases the lock.
    """
    arguments.open_options(backends, wal_file_ops)  # config is checked where it is read (load_section)
    require_instance("repair", repair, bool)
    store_lock: StoreLock | None = None
    try:
        section = config if isinstance(config, StorageConfig) else load_section(StorageConfig, config)
        if section.log != "local":
            from maif.storage.sharedlog import check_config

            check_config(section)
        store_lock = await asyncio.to_thread(acquire_store_lock, section.data_dir)
        if backends is None:
            from maif.storage import distributed

            if distributed.wants_servers(section):
                backends = await distributed.open_backends(section, _cache_bytes(section))
            else:
                backends = default_backends(section)
        storage = MAIFStorage(section, backends, wal_file_ops, store_lock=store_lock, repair=repair)
    except BaseException:
        await _release_failed_open(backends, store_lock)
        raise
    try:
        await storage._open()
    except BaseException:
        await storage._abort_open()
        raise
    return storage


async def _release_failed_open(backends: Backends | None, store_lock: StoreLock | None) -> None:
    """Close what an open that failed before the engine existed had acquired; the open's own error is
    the one that propagates (a failure here is logged)."""
    try:
        if backends is not None:
            await backends.close()
    except Exception as error:  # noqa: BLE001 - the open's error matters more
        _log.warning("closing the backends of a failed open failed: %r", error)
    finally:
        if store_lock is not None:
            store_lock.release()


class MAIFStorage:
    """A durable block store; create it with :func:`create_maif_storage`, use it with ``async with``."""

    wal_segment_bytes_max = limits.wal_segment_bytes_max  # class attribute so tests can rotate often

    def __init__(self, config: StorageConfig, backends: Backends, wal_file_ops: FileOps | None, *,
                 store_lock: StoreLock | None = None, repair: bool = False) -> None:
        self.config = config
        self._backends = backends
        self._store_lock = store_lock  # the data directory's lock; released once the backends are closed
        # The backends' same-thread read paths, when they have them (see read_block_with_tier).
        self._index_get_nowait = getattr(backends.index, "get_nowait", None)
        # Other processes write the same index: cached blocks are checked against its record first.
        self._shared_index = backends.index.capabilities.shared_between_processes
        self._shared_cache_rejects = 0
        self._chunk_get_nowait = getattr(backends.chunks, "get_chunk_nowait", None)
        self._applier = Applier(backends.chunks, backends.index, backends.vectors)
        self._file_ops = wal_file_ops
        self._wal: WriteAheadLog | None = None
        # The log: the local write-ahead log's group committer, or a shared log's (Kafka, ADR 0073;
        # NATS JetStream, ADR 0084);
        # both queue records and resolve once they are durable, then call _on_commit.
        self._committer: Committer | None = None
        self._shared_log: SharedLog | None = None  # a shared log (Kafka or NATS), None with the local log
        self._notify_tasks: set[asyncio.Task[None]] = set()
        self._unapplied: dict[str, LogItem] = {}
        self._apply_queue: deque[LogItem] = deque()
        self._inflight_bytes = 0  # queued for the log or waiting to be applied
        self._inflight_bytes_max = max(limits.engine_unapplied_bytes_min,
                                       config.max_memory_mb * 1024 * 1024 // 4)
        self._work_ready = asyncio.Event()
        self._space_ready = asyncio.Event()
        self._applied = asyncio.Condition()
        self._applier_task: asyncio.Task[None] | None = None
        self._tier_task: asyncio.Task[None] | None = None
        self._tier_failure: str | None = None
        self._packs_moved_cold = 0
        self._applier_failure: str | None = None
        # Set while the applier waits for a server (BackendUnavailableError): writes are still logged
        # and acknowledged until the unapplied bytes reach their bound, then refused (StoreDegradedError).
        self._blocked: BackendUnavailableError | None = None
        self._blocked_since = 0.0
        self._blocked_attempts = 0
        self._server_backoff = RetryPolicy(base_delay_s=0.1, delay_s_max=5.0)  # its delays only
        self._close_requested = asyncio.Event()
        self._committed_lsn = 0
        self._applied_lsn = 0
        self._checkpoint_lsn = 0
        self._apply_generation = 0
        self._closed = False
        self._closing = False
        self._latency = LatencyReservoir(limits.engine_latency_samples_max)
        self._vector_dimensions: int | None = None  # every EMBEDDING block must match, once known
        self._writes_total = 0
        self._deletes_total = 0
        self._compactions_total = 0
        self._bytes_reclaimed_total = 0
        self._reads_total = 0
        self._opened_at = time.monotonic()
        self.recovery = RecoveryReport()
        self.repairs: list[str] = []  # what opening (or repair()) rebuilt or found lost, one line each
        # An explicit repair at open (create_maif_storage(repair=True)): of a corrupt write-ahead log
        # (quarantine, salvage), and a rebuild of every derived state.
        self._repair = repair
        self._maintenance = asyncio.Lock()  # the applier and repair() never run at once
        self._vectors_stale = False  # set when open rebuilt the metadata index: vectors follow

    # ---- lifecycle --------------------------------------------------------------------------------
    async def _open(self) -> None:
        data_dir = Path(self.config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.config.log != "local":
            await self._open_shared_log()
            return
        self._checkpoint_lsn = await self._backends.index.applied_lsn()
        from maif.storage import rebuild

        await rebuild.heal_before_replay(self, force=self._repair,
                                         oldest_logged=oldest_segment_lsn(data_dir / "wal"))
        loop = asyncio.get_running_loop()
        self._wal, self.recovery = await loop.run_in_executor(None, lambda: WriteAheadLog.open(
            data_dir / "wal", durable=self.config.durability == "durable",
            min_next_lsn=self._checkpoint_lsn + 1, file_ops=self._file_ops,
            segment_bytes_max=self.wal_segment_bytes_max, repair=self._repair))
        await self._replay()
        await rebuild.heal_after_replay(self, force=self._repair)
        for line in self.repairs:
            _log.warning("store %s repaired at open: %s", self.config.data_dir, line)
        self._vector_dimensions = self._backends.vectors.dimensions
        wal = self._wal
        assert wal is not None
        self._committed_lsn = self._applied_lsn = wal.next_lsn - 1
        self._committer = GroupCommitter(wal, batch_size=self.config.batch_size,
                                         batch_timeout_ms=self.config.batch_timeout_ms,
                                         on_commit=self._on_commit)
        self._committer.start()
        self._applier_task = loop.create_task(self._apply_loop(), name="maif-applier")
        if self.config.tier_interval_s > 0 and hasattr(self._backends.chunks, "migrate"):
            self._tier_task = loop.create_task(self._tier_loop(), name="maif-tiers")
        self._space_ready.set()
        if self.recovery.corruption is not None:
            await self._finish_wal_repair()

    async def _open_shared_log(self) -> None:
        """The log is shared: a Kafka topic (ADR 0073) or a NATS JetStream stream (ADR 0084). Nothing to
        replay here; this node applies its share of the log from the positions recorded in PostgreSQL,
        whoever wrote the records."""
        log_class: Any
        if self.config.log == "nats":
            from maif.storage.natslog import NatsLog as log_class
        else:
            from maif.storage.kafkalog import KafkaLog as log_class

        self._vector_dimensions = self._backends.vectors.dimensions
        self._shared_log = await log_class.open(self.config, self._backends, self._applier,
                                                self._maintenance, on_commit=self._on_commit)
        self._committer = self._shared_log.committer
        self._shared_log.start(on_visible=self._on_log_visible)
        self._space_ready.set()

    def _on_log_visible(self, items: list[LogItem]) -> None:
        """This node's writes that the shared index now holds (applied by any node): stop serving them
        from memory; queries wait for the oldest still pending."""
        shared = self._shared_log
        assert shared is not None
        oldest = shared.pending.oldest_sequence()
        applied_lsn = self._committed_lsn if oldest is None else oldest - 1
        self._finish_applied(items, max(self._applied_lsn, applied_lsn))
        task = asyncio.get_running_loop().create_task(self._notify_applied())
        self._notify_tasks.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._notify_tasks.discard)

    async def _finish_wal_repair(self) -> None:
        """Write again what a repair of the log salvaged: new records (new LSNs) in their old order,
        durable before the open returns; then the log may forget its salvage file."""
        report, wal = self.recovery, self._wal
        assert wal is not None
        new_lsns: list[int] = []  # the first and last LSN of each append
        unusable: list[tuple[int, int]] = []
        batch: list[LogItem] = []
        batch_bytes = 0
        for old_lsn, payload in [*report.salvaged, (0, b"")]:  # (0, b""): the end, append the rest
            if batch and (not old_lsn or len(batch) >= limits.engine_apply_batch_records_max
                          or batch_bytes + len(payload) > limits.wal_group_bytes_max // 2):
                first_lsn = await self._append_items(batch)  # one group, within the torn-tail bound
                new_lsns += [first_lsn, first_lsn + len(batch) - 1]
                batch, batch_bytes = [], 0
            if not old_lsn:
                break
            try:
                item = log_item(payload, 0)
                self._check_vector_dimensions([item])
            except MAIFError as error:  # validated by its CRC, yet not a record this store can apply
                _log.warning("salvaged log record %d dropped: %s", old_lsn, error.message)
                unusable.append((old_lsn, old_lsn))
                continue
            batch.append(item)
            batch_bytes += len(payload)
        await asyncio.get_running_loop().run_in_executor(None, wal.salvage_reappended)
        if new_lsns:
            report.reappended_lsns = (new_lsns[0], new_lsns[-1])
        report.lost_lsns = sorted(report.lost_lsns + unusable)
        report.salvaged = []  # durable in the log again: not kept in memory for the life of the store
        _log.warning("store %s: %s", self.config.data_dir, report.repair_summary() or report.corruption)

    async def _replay(self) -> None:
        """Re-apply every logged record after the checkpoint, in bounded batches, then checkpoint."""
        assert self._wal is not None
        batch: list[LogItem] = []
        last = self._checkpoint_lsn
        for lsn, payload in self._wal.replay(self._checkpoint_lsn):
            batch.append(log_item(payload, lsn))
            last = lsn
            if len(batch) >= limits.engine_apply_batch_records_max:
                await self._applier.apply(batch)
                batch = []
        if batch:
            await self._applier.apply(batch)
        if last > self._checkpoint_lsn:
            await self._checkpoint(last)

    async def _abort_open(self) -> None:
        """Release everything a failed open acquired, each step even when an earlier one fails; the
        open's own error is the one that propagates (a failure here is logged)."""
        steps: list[Any] = [self._committer.close if self._committer is not None else None,
                            self._wal.close if self._wal is not None else None,
                            self._shared_log.close if self._shared_log is not None else None,
                            self._backends.close]
        for task in (self._tier_task, self._applier_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        try:
            for step in steps:
                if step is None:
                    continue
                try:
                    result = step()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception as error:  # noqa: BLE001 - release the rest, keep the open's error
                    _log.warning("releasing a failed open of %s: %r", self.config.data_dir, error)
        finally:
            self._release_store_lock()

    def _release_store_lock(self) -> None:
        lock, self._store_lock = self._store_lock, None
        if lock is not None:
            lock.release()

    async def close(self) -> None:
        """Finish queued writes, apply everything, checkpoint, and release every resource."""
        if self._closed or self._closing:
            return
        self._closing = True
        self._close_requested.set()
        if self._tier_task is not None:
            self._tier_task.cancel()
            await asyncio.wait([self._tier_task])  # raises nothing: a tier failure never stops the close
            if not self._tier_task.cancelled():
                self._tier_task.exception()
        try:
            if self._shared_log is not None:
                await self._close_shared_log()
                return
            assert self._committer is not None and self._wal is not None
            await self._committer.close()
            self._work_ready.set()
            if self._applier_task is not None:
                await self._applier_task
            if (self._applier_failure is None and self._blocked is None
                    and self._applied_lsn > self._checkpoint_lsn):
                await self._checkpoint(self._applied_lsn)
        finally:
            self._closed = True
            try:
                if self._wal is not None:
                    self._wal.close()
                await self._backends.close()
            finally:
                self._release_store_lock()  # last: no other opener may start while the backends flush

    async def _close_shared_log(self) -> None:
        """Send what is queued, give the appliers a bounded time to apply this node's writes (they
        are durable in the log either way: any node applies them), then stop the log."""
        shared = self._shared_log
        assert shared is not None
        try:
            await shared.committer.close()
            deadline = time.monotonic() + _CLOSE_UNAVAILABLE_WAIT_S
            async with self._applied:
                while shared.pending.count and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._applied.wait(), deadline - time.monotonic())
            if shared.pending.count:
                _log.warning("store %s closes with %d acknowledged write(s) not yet applied: they are in "
                             "the %s log; the store's other nodes (or this one, reopened) apply them",
                             self.config.data_dir, shared.pending.count, shared.component)
        finally:
            await shared.close()

    async def __aenter__(self) -> MAIFStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- writing ----------------------------------------------------------------------------------
    async def write_block(self, block: MAIFBlock) -> WriteReceipt:
        """Make ``block`` durable; returns once its log record is on disk (group-committed)."""
        block = arguments.block(block)
        return (await self.write_blocks((block,)))[0]

    async def write_blocks(self, blocks: Sequence[MAIFBlock]) -> list[WriteReceipt]:
        """Make every block durable with one log append and one sync; receipts in the same order."""
        blocks = arguments.blocks(blocks)
        started_ns = time.perf_counter_ns()
        self._check_writable()
        items = [_item_of(block, encoded, 0, digest)
                 for block, (encoded, digest) in zip(blocks, encode_blocks(blocks), strict=True)]
        if not items:
            return []
        self._check_vector_dimensions(items)
        first_lsn = await self._append_items(items)
        self._latency.add_ns(time.perf_counter_ns() - started_ns)
        self._writes_total += len(items)
        return [WriteReceipt(item.block.id, item.digest, first_lsn + offset)
                for offset, item in enumerate(items)]

    async def delete_block(self, block_id: str) -> DeleteReceipt:
        """Delete a block: a tombstone goes through the log like a write (durable when this returns);
        reads then raise BlockNotFoundError, listings and search leave it out, and its chunks become
        garbage for :meth:`compact` once no other block shares them. BlockNotFoundError when absent."""
        block_id = arguments.block_id(block_id)
        self._check_writable()
        agent_id = await self._agent_of(block_id)
        if agent_id is None:
            raise BlockNotFoundError(f"no block with id {block_id!r}")
        payload = encode_tombstone(block_id)
        # The agent id only keys the deletion in a Kafka-protocol log, like the block it deletes (same
        # partition, so it follows the write); the log record holds the block id alone.
        item = LogItem(MAIFBlock(id=block_id, data=b"", agent_id=agent_id), payload,
                       blake3.blake3(payload).digest(), None, deleted=True)
        lsn = await self._append_items([item])
        self._deletes_total += 1
        return DeleteReceipt(block_id, lsn)

    async def exists(self, block_id: str) -> bool:
        """Whether ``block_id`` names a block: stored, or acknowledged and not yet applied, and not
        deleted. Reads no payload (the log's map, then the index)."""
        return await self._agent_of(arguments.block_id(block_id)) is not None

    async def exists_many(self, block_ids: Sequence[str]) -> set[str]:
        """Those of ``block_ids`` that name a block (as :meth:`exists`), at most
        ``limits.index_get_many_max`` per call: the log's map first, then ONE index lookup for the rest
        (one round trip to a shared index instead of one per id)."""
        self._check_open()
        wanted = [arguments.block_id(block_id) for block_id in block_ids]
        if len(wanted) > limits.index_get_many_max:
            raise LimitExceededError("block ids per lookup", len(wanted), limits.index_get_many_max)
        found: set[str] = set()
        rest: list[str] = []
        for block_id in dict.fromkeys(wanted):
            item = self._unapplied.get(block_id)
            if item is None:
                rest.append(block_id)
            elif not item.deleted:
                found.add(block_id)
        if rest and self._index_get_nowait is not None:
            found.update(block_id for block_id in rest if self._index_get_nowait(block_id) is not None)
        elif rest:
            found.update(await self._backends.index.get_many(rest))
        return found

    async def wait_applied(self) -> None:
        """Return once every write this node has acknowledged is applied, so every node (and every
        query) sees it; bounded like queries are (BackendUnavailableError while a server is out)."""
        self._check_open()
        await self._wait_applied()

    async def _agent_of(self, block_id: str) -> str | None:
        """The agent id of the block ``block_id`` names, None when there is no such block."""
        item = self._unapplied.get(block_id)
        if item is not None:
            return None if item.deleted else item.block.agent_id
        if self._index_get_nowait is not None:
            record = self._index_get_nowait(block_id)
        else:
            record = await self._backends.index.get(block_id)
        return None if record is None else record.agent_id

    async def _append_items(self, items: list[LogItem]) -> int:
        """Log ``items`` with one append (group-committed), waiting for room first; their first LSN."""
        cost = sum(item.cost_bytes for item in items)
        waited_since = time.monotonic()
        while self._inflight_bytes and self._inflight_bytes + cost > self._inflight_bytes_max:
            if self._blocked is not None:
                raise self._degraded_refusal()
            self._space_ready.clear()
            if self._shared_log is None:
                await self._space_ready.wait()
            else:  # whoever applies this node's writes may be out: wait bounded, then refuse
                remaining = self.config.log_write_timeout_s - (time.monotonic() - waited_since)
                if remaining <= 0:
                    raise self._log_backlog_refusal()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._space_ready.wait(), remaining)
            self._check_writable()
        assert self._committer is not None
        self._inflight_bytes += cost
        try:
            # A cancelled caller cancels only this future: the committer still writes the queued records
            # (it sets results only on futures not done), and the applier releases their bytes.
            first_lsn = await self._committer.append([item.encoded for item in items], items)
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._release(cost)  # never committed: nothing will be applied for these bytes
            raise
        return first_lsn

    def _degraded_refusal(self) -> StoreDegradedError:
        """The error for a write that finds the unapplied bytes at their bound while a server is out."""
        blocked = self._blocked
        assert blocked is not None
        waited = time.monotonic() - self._blocked_since
        return StoreDegradedError(
            f"{blocked.component} has been unavailable for {waited:.0f} s and the "
            f"{self._inflight_bytes / 2**20:.1f} MiB of acknowledged writes waiting for it reached this "
            f"node's bound ({self._inflight_bytes_max / 2**20:.1f} MiB, a quarter of max_memory_mb): "
            f"write refused, nothing written ({blocked.message})",
            component=blocked.component, retry_after_s=max(1.0, blocked.retry_after_s),
            hint="retry later; every acknowledged write is in the local log and is applied when the "
                 "server answers again")

    def _log_backlog_refusal(self) -> StoreDegradedError:
        """A write refused because this node's writes in the shared log wait for their apply past the
        unapplied-bytes bound for longer than the log's write timeout."""
        waiting = self._log_waiting_for()
        log = self._shared_log.component if self._shared_log is not None else "shared"
        return StoreDegradedError(
            f"{self._inflight_bytes / 2**20:.1f} MiB of this node's acknowledged writes are in the {log} "
            f"log but not applied yet (bound {self._inflight_bytes_max / 2**20:.1f} MiB) and none was "
            f"applied for {self.config.log_write_timeout_s:g} s: write refused, nothing written "
            f"({waiting.message})", component=waiting.component, retry_after_s=waiting.retry_after_s,
            hint=f"retry later; every acknowledged write is in the {log} log and is applied once the "
                 "appliers can reach the backends")

    def _log_waiting_for(self) -> BackendUnavailableError:
        """What applying this node's writes in the shared log waits for, as an error to raise."""
        down = self._backends.health.down()
        shared = self._shared_log
        if shared is not None and shared.waiting_for is not None:
            return shared.waiting_for
        if down:
            name, outage = sorted(down.items())[0]
            return BackendUnavailableError(f"{name} is unavailable: {outage.reason}", component=name)
        log = shared.component if shared is not None else "shared"
        return BackendUnavailableError(
            f"the store's appliers (the nodes applying the {log} log's partitions) have not applied this "
            "node's writes yet", component=f"{log} appliers", retry_after_s=1.0)

    def _check_vector_dimensions(self, items: Sequence[LogItem]) -> None:
        """Refuse, before the log, an embedding the vector index could not hold.

        The index takes its dimension from the first vector; a later vector of another dimension
        would fail in the background applier, after the ack, and stop the store for every writer.
        """
        for item in items:
            if item.vector is None:
                continue
            dimensions = int(item.vector.shape[0])
            if self._vector_dimensions is None:
                self._vector_dimensions = dimensions
            elif dimensions != self._vector_dimensions:
                raise FormatError(
                    f"embedding block {item.block.id!r} has {dimensions} dimensions; this store's vector "
                    f"index holds {self._vector_dimensions}-dimensional vectors",
                    hint="use one embedding model per store",
                )

    def _check_writable(self) -> None:
        if self._closed or self._closing:
            raise StoreClosedError("the store is closed")
        if self._wal is not None and self._wal.failure is not None:
            raise DurabilityError(self._wal.failure, hint="reads still work; reopen the store to recover")
        if self._applier_failure is not None:
            raise BackendError(self._applier_failure, hint="reads still work; reopen the store to recover")
        if self._shared_log is not None and self._shared_log.failure is not None:
            raise BackendError(self._shared_log.failure,
                               hint="reads still work; reopen the store to recover")

    def _on_commit(self, first_lsn: int, last_lsn: int, items: list[LogItem]) -> None:
        """Runs after the sync, before the writers wake: make the blocks readable and queue them."""
        for offset, item in enumerate(items):
            item.lsn = first_lsn + offset
            self._unapplied[item.block.id] = item
            self._backends.cache.discard(item.block.id)
            if self._shared_log is not None:
                self._shared_log.track(item)  # applied by whichever node owns its partition
        if self._shared_log is None:
            self._apply_queue.extend(items)
        self._committed_lsn = last_lsn
        self._work_ready.set()

    def _release(self, cost: int) -> None:
        self._inflight_bytes -= cost
        assert self._inflight_bytes >= 0
        self._space_ready.set()

    # ---- applying ----------------------------------------------------------------------------------
    async def _apply_loop(self) -> None:
        last_checkpoint = time.monotonic()
        while True:
            if not self._apply_queue:
                if self._closing and self._committer_idle():
                    return
                self._work_ready.clear()
                await self._work_ready.wait()
                continue
            if len(self._apply_queue) < limits.engine_apply_batch_records_max and not self._closing:
                # Linger briefly so a trickle of small groups becomes one batch: each backend call
                # crosses to a worker thread, and fewer, larger crossings keep the GIL with the writers.
                await asyncio.sleep(_APPLY_LINGER_S)
            batch = [self._apply_queue.popleft()
                     for _ in range(min(len(self._apply_queue), limits.engine_apply_batch_records_max))]
            try:
                async with self._maintenance:
                    await self._applier.apply(batch)
                if (batch[-1].lsn - self._checkpoint_lsn >= _CHECKPOINT_RECORDS
                        or time.monotonic() - last_checkpoint >= _CHECKPOINT_INTERVAL_S):
                    await self._checkpoint(batch[-1].lsn)
                    last_checkpoint = time.monotonic()
            except BackendUnavailableError as error:  # a server is out: keep the batch, wait, retry
                self._apply_queue.extendleft(reversed(batch))
                if not await self._wait_for_server(error):
                    return  # closing: the rest stays in the log, applied when the store reopens
                continue
            except Exception as error:  # noqa: BLE001 - any other failure stops applying; reads go on
                await self._fail_applier(error)
                return
            if self._blocked is not None:
                _log.warning("store %s: %s answers again after %.1f s; applying the backlog",
                             self.config.data_dir, self._blocked.component,
                             time.monotonic() - self._blocked_since)
                self._backends.health.succeeded(self._blocked.component)
                self._blocked = None
            await self._mark_applied(batch)

    async def _wait_for_server(self, error: BackendUnavailableError) -> bool:
        """Note the outage (writers over the bound are refused from now on), then wait a jittered,
        growing delay before the next attempt; False when the store is closing and has waited long
        enough (every record not applied stays in the log and is replayed at the next open)."""
        now = time.monotonic()
        if self._blocked is None:
            self._blocked_since = now
            self._blocked_attempts = 0
            _log.warning("store %s: applying waits for %s (%s); writes are logged and acknowledged "
                         "up to %.1f MiB meanwhile", self.config.data_dir, error.component, error.message,
                         self._inflight_bytes_max / 2**20)
        self._blocked = error
        self._blocked_attempts += 1
        self._backends.health.failed(error.component, error.message)
        self._space_ready.set()  # writers waiting for room re-check: over the bound they are refused
        async with self._applied:
            self._applied.notify_all()
        if self._closing and now - self._blocked_since >= _CLOSE_UNAVAILABLE_WAIT_S:
            _log.warning("store %s closes with %d acknowledged records not applied (%s unavailable): "
                         "they stay in the local log and are applied when the store reopens",
                         self.config.data_dir, len(self._apply_queue), error.component)
            return False
        delay = self._server_backoff.delay_s(min(self._blocked_attempts, 32))
        if self._closing:
            await asyncio.sleep(min(delay, 0.5))  # closing: try every half second until the wait ends
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_requested.wait(), delay)
        return True

    def _committer_idle(self) -> bool:
        return self._committer is None or self._committer.idle

    async def _mark_applied(self, batch: list[LogItem]) -> None:
        self._finish_applied(batch, batch[-1].lsn)
        await self._notify_applied()

    def _finish_applied(self, batch: list[LogItem], applied_lsn: int) -> None:
        """``batch`` is in the backends: readers find it there from now on; wake whoever waits."""
        for item in batch:
            if self._unapplied.get(item.block.id) is item:
                del self._unapplied[item.block.id]
        self._applied_lsn = applied_lsn
        self._apply_generation += 1
        self._release(sum(item.cost_bytes for item in batch))

    async def _notify_applied(self) -> None:
        async with self._applied:
            self._applied.notify_all()

    async def _fail_applier(self, error: Exception) -> None:
        """Keep serving reads (unapplied blocks stay in memory); refuse writes until reopened.

        Never retried here: a failed flush may have lost dirty pages, and a retry could report success
        for data that is gone. Reopening replays the log from the last good checkpoint instead.
        """
        reason = error.message if isinstance(error, MAIFError) else repr(error)
        self._applier_failure = (f"applying the log to the backends failed ({reason}); the store "
                                 "refuses writes from now on")
        self._space_ready.set()
        async with self._applied:
            self._applied.notify_all()

    async def _checkpoint(self, lsn: int) -> None:
        assert self._wal is not None
        try:
            await self._applier.checkpoint(lsn)
        except OSError as error:
            raise BackendError(f"checkpoint at LSN {lsn} failed: {error.strerror or error}",
                               hint="the log still holds every record; reopen the store to replay it"
                               ) from error
        self._checkpoint_lsn = lsn
        if self._backends.durable:
            # The log may forget records only once backends that survive a crash hold them; with
            # in-memory backends the log is the whole store and is replayed in full on open.
            wal = self._wal
            await asyncio.get_running_loop().run_in_executor(None, wal.recycle, lsn)

    async def _wait_applied(self) -> None:
        """Queries see every acknowledged write: wait until the applier has caught up."""
        target = self._committed_lsn
        progress = self._applied_lsn
        deadline = time.monotonic() + (_QUERY_UNAVAILABLE_WAIT_S if self._shared_log is None
                                       else self.config.log_write_timeout_s)
        async with self._applied:
            while self._applied_lsn < target and self._applier_failure is None:
                blocked = self._blocked
                if self._shared_log is not None:
                    # Another node may be the one applying, so the wait is always bounded: by
                    # the log's write timeout without progress.
                    if self._applied_lsn > progress:
                        progress = self._applied_lsn
                        deadline = time.monotonic() + self.config.log_write_timeout_s
                    blocked = self._log_waiting_for()
                if blocked is not None and time.monotonic() >= deadline:
                    raise BackendUnavailableError(
                        f"this query must see every acknowledged write, and applying them waits for "
                        f"{blocked.component}: {blocked.message}", component=blocked.component,
                        retry_after_s=blocked.retry_after_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._applied.wait(), max(0.0, deadline - time.monotonic())
                                           if blocked is not None else None)
        if self._applier_failure is not None and self._applied_lsn < target:
            raise BackendError(self._applier_failure)

    # ---- reading -----------------------------------------------------------------------------------
    async def read_block(self, block_id: str) -> MAIFBlock:
        """The block, bit-exact as written (read-your-writes); BlockNotFoundError when absent."""
        block_id = arguments.block_id(block_id)
        return (await self.read_block_with_tier(block_id))[0]

    async def read_block_with_tier(self, block_id: str) -> tuple[MAIFBlock, str]:
        """The block and which tier served it: "log" (not yet applied), "hot", "shared" (the Redis cache of
        a scaled-out store), "warm" (local packs, or the shared pack objects) or "cold"."""
        block_id = arguments.block_id(block_id)
        self._check_open()
        self._reads_total += 1
        item = self._unapplied.get(block_id)
        if item is not None:
            if item.deleted:
                raise BlockNotFoundError(f"no block with id {block_id!r} (deleted)")
            return item.block, "log"
        if not self._shared_index:
            cached = self._backends.cache.get(block_id)
            if cached is not None:
                block = _from_cache(cached)
                if block is not None and block.id == block_id:
                    return block, "hot"
                self._backends.cache.discard(block_id)
        generation = self._apply_generation
        try:
            if self._index_get_nowait is not None:  # on this thread: nothing can be applied meanwhile
                record = self._index_get_nowait(block_id)
            else:
                record = await self._backends.index.get(block_id)
            if record is None:
                item = self._unapplied.get(block_id)  # applied-then-overwritten while we waited
                if item is not None and not item.deleted:
                    return item.block, "log"
                raise BlockNotFoundError(f"no block with id {block_id!r}")
            if self._shared_index:
                return await self._read_shared(record)
            block, _ = await self._assemble(record)
        except OSError as error:
            raise BackendError(f"reading block {block_id!r} failed: {error.strerror or error}") from error
        if generation == self._apply_generation and block_id not in self._unapplied:
            self._backends.cache.put(block_id, _cache_value(block))
        return block, self._tier_of(record)

    async def _read_shared(self, record: BlockRecord) -> tuple[MAIFBlock, str]:
        """A read when other nodes write the same store: the index record is the truth, so the hot
        cache is keyed by (id, digest) and the shared cache's value must hash to the record's digest;
        a stale or poisoned entry is a miss, never wrong bytes."""
        key = f"{record.block_id}\x00{record.digest.hex()}"
        cached = self._backends.cache.get(key)
        if cached is not None:
            block = _from_cache(cached)
            if block is not None and block.id == record.block_id:
                return block, "hot"
        shared = self._backends.shared_cache
        if shared is not None:
            value = await shared.get(record.block_id)
            if value is not None and blake3.blake3(value).digest() == record.digest:
                try:
                    block = decode_block(value)
                except MAIFError:
                    block = None
                if block is not None and block.id == record.block_id:
                    self._backends.cache.put(key, _cache_value(block))
                    return block, "shared"
            if value is not None:
                self._shared_cache_rejects += 1
                await shared.discard(record.block_id)
        block, encoded = await self._assemble(record)
        self._backends.cache.put(key, _cache_value(block))
        if shared is not None:
            await shared.put(record.block_id, encoded)
        return block, self._tier_of(record)

    async def _assemble(self, record: BlockRecord) -> tuple[MAIFBlock, bytes]:
        """The block from its chunks, verified against its digest. A small block's local chunks are read
        on this thread (limits.engine_inline_read_bytes_max); anything else through the backend."""
        chunks = self._backends.chunks
        small = record.payload_length <= limits.engine_inline_read_bytes_max
        nowait = self._chunk_get_nowait if small else None
        parts = []
        for digest in record.chunks:
            piece = nowait(digest) if nowait is not None else None
            parts.append(piece if piece is not None else await chunks.get_chunk(digest))
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(payload) != record.payload_length:
            raise IntegrityError(f"block {record.block_id!r}: payload is {len(payload)} bytes, the index "
                                 f"says {record.payload_length}")
        block = MAIFBlock(id=record.block_id, block_type=record.block_type, data=payload,
                          metadata=decode_metadata(record.metadata) if record.metadata else {},
                          timestamp=record.timestamp, agent_id=record.agent_id, version=record.version,
                          parents=record.parents)
        encoded = encode_block(block)
        if blake3.blake3(encoded).digest() != record.digest:
            raise IntegrityError(f"block {record.block_id!r} does not match its recorded digest")
        return block, encoded

    def _tier_of(self, record: BlockRecord) -> str:
        tier_of = getattr(self._backends.chunks, "last_read_tier", None)
        if tier_of is None or not record.chunks:
            return "warm"
        return str(tier_of(record.chunks[0]))

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("the store is closed")

    async def list_blocks(self, *, agent_id: str | None = None, block_type: MAIFBlockType | str | None = None,
                          since: float | None = None, until: float | None = None, parent: str | None = None,
                          limit: int = 100, after: str | None = None) -> list[BlockSummary]:
        """Summaries of matching blocks ordered by (timestamp, block_id); ``after`` pages on."""
        agent_id, type_name, since, until, parent, limit, after = arguments.list_query(
            agent_id, block_type, since, until, parent, limit, after)
        self._check_open()
        await self._wait_applied()
        records = await self._backends.index.query(agent_id=agent_id, block_type=type_name, since=since,
                                                   until=until, parent=parent, limit=limit, after=after)
        return [BlockSummary(r.block_id, r.block_type, r.agent_id, r.timestamp, r.version, r.parents,
                             r.payload_length, r.digest, r.lsn) for r in records]

    async def semantic_search(self, query_vector: Sequence[float] | np.ndarray, limit: int = 10,
                              score_threshold: float | None = None,
                              filters: dict[str, str] | None = None) -> list[SearchHit]:
        """EMBEDDING blocks most similar (cosine) to ``query_vector``; filters on agent_id/block_type."""
        query, limit, score_threshold, filters = arguments.search(query_vector, limit, score_threshold,
                                                                  filters)
        self._check_open()
        await self._wait_applied()
        found = await self._backends.vectors.search(query, limit, score_threshold=score_threshold,
                                                    filters=filters)
        hits: list[SearchHit] = []
        for block_id, score in found:
            record = await self._backends.index.get(block_id)
            if record is not None and record.block_type == MAIFBlockType.EMBEDDING.value:
                hits.append(SearchHit(block_id, float(score), record.agent_id, record.block_type))
        return hits

    # ---- statistics, check, export/import ------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """What works now, without asking any server: ``status`` "ok", "degraded" (a server is out;
        reads of what it holds fail, writes are acknowledged into the local log up to
        ``unapplied_bytes_max``, then refused with StoreDegradedError) or "failed" (the log or the
        applier failed: writes refused until reopened); ``degraded`` names each unavailable component,
        for how long and why; ``degraded_seconds_total`` sums every outage per component."""
        now = time.monotonic()
        health = self._backends.health
        failure = ((self._wal.failure if self._wal is not None else None) or self._applier_failure
                   or (self._shared_log.failure if self._shared_log is not None else None))
        down = health.down()
        return {
            "status": "failed" if failure else "degraded" if down else "ok",
            "failure": failure,
            "degraded": {name: {"for_s": round(now - outage.since, 3), "reason": outage.reason}
                         for name, outage in sorted(down.items())},
            "degraded_seconds_total": health.degraded_seconds(),
            "applier_waiting_for": self._blocked.component if self._blocked is not None else None,
            "unapplied_bytes": self._inflight_bytes,
            "unapplied_bytes_max": self._inflight_bytes_max,
        }

    async def get_stats(self) -> dict[str, Any]:
        """Counters and gauges (see docs/ARCHITECTURE.md, "storage engine", for each key)."""
        from maif.storage.engine_stats import collect_stats

        return await collect_stats(self)

    async def migrate_tiers(self) -> list[int]:
        """Move the sealed packs the tier policy selects to the cold tier now; returns their ids.

        The background task does this every ``tier_interval_s``; reads stay transparent either way and
        :meth:`read_block_with_tier` says which tier served a block.
        """
        self._check_open()
        migrate = getattr(self._backends.chunks, "migrate", None)
        if migrate is None:
            return []
        moved: list[int] = await migrate()
        self._packs_moved_cold += len(moved)
        return moved

    async def _tier_loop(self) -> None:
        """Run the tier policy periodically; a failure is reported in stats, never stops the store."""
        while True:
            await asyncio.sleep(self.config.tier_interval_s)
            try:
                await self.migrate_tiers()
                self._tier_failure = None
            except Exception as error:  # noqa: BLE001 - whatever fails, the loop (and the store) go on
                self._tier_failure = error.message if isinstance(error, MAIFError) else repr(error)
                _log.warning("moving packs to the cold tier failed (will retry): %s", self._tier_failure)

    async def check(self, read_data_fraction: float = 0.0) -> CheckReport:
        """Scrub like ``restic check``: structure always, ``read_data_fraction`` of blocks read back."""
        from maif.storage.engine_io import check_store

        read_data_fraction = arguments.read_data_fraction(read_data_fraction)
        self._check_open()
        await self._wait_applied()
        return await check_store(self, read_data_fraction)

    async def compact(self, garbage_fraction_min: float = 0.2, *,
                      on_step: Callable[[str], None] | None = None) -> CompactionReport:
        """Reclaim the space of deleted and overwritten blocks (mark and sweep, :mod:`.compaction`):
        every sealed local pack whose dead bytes are at least ``garbage_fraction_min`` of it is
        rewritten without them. Crash-safe at every step; ``on_step`` names each step (tests)."""
        from maif.storage.compaction import compact_store

        garbage_fraction_min, on_step = arguments.compaction(garbage_fraction_min, on_step)
        self._check_writable()
        await self._wait_applied()
        async with self._maintenance:
            report = await compact_store(self, garbage_fraction_min, on_step)
        self._compactions_total += 1
        self._bytes_reclaimed_total += report.bytes_reclaimed
        return report

    async def repair(self) -> CheckReport:
        """Rebuild every piece of derived state from the authoritative data, then :meth:`check`.

        Writes the record of every indexed block the chunk store lacks, re-indexes every stored record
        (the highest LSN of each block wins), rebuilds the vector index; ``maif store check --repair``.
        What it did is in the report's ``repaired`` lines. Writes wait while it runs.
        """
        from maif.storage import rebuild

        self._check_writable()
        await self._wait_applied()
        async with self._maintenance:
            integrity = getattr(self._backends.index, "integrity_problems", None)
            reset = getattr(self._backends.index, "reset", None)
            damage = await integrity() if integrity is not None and reset is not None else []
            if damage:  # pages SQLite cannot read: start it afresh, the records below refill it
                assert reset is not None
                await reset("; ".join(damage[:3]))
                self.repairs.append(f"metadata index failed SQLite's quick_check ({damage[0]}): moved "
                                    "to quarantine/ and rebuilt")
            else:
                written = await rebuild.backfill_records(self._backends)
                if written:
                    self.repairs.append(f"{written} block record(s) restored from the metadata index")
            read, _, problems = await rebuild.rebuild_index(self._backends)
            if damage:
                await self._backends.index.set_applied_lsn(self._applied_lsn)
                await self._backends.index.flush()
            self.repairs.append(f"metadata index re-checked against {read} stored block record(s)")
            self.repairs.extend(problems)
            added, problems = await rebuild.rebuild_vectors(self)
            self.repairs.append(f"vector index rebuilt with {added} vector(s)")
            self.repairs.extend(problems)
        return await self.check()

    async def export(self, path: str | os.PathLike[str], selection: Sequence[str] | None,
                     signing_key: Any) -> Any:
        """Write the selected blocks (None: all) to a signed .maif container; returns its VersionInfo."""
        from maif.storage.engine_io import export_blocks

        path, selection, signing_key = arguments.export(path, selection, signing_key)
        self._check_open()
        await self._wait_applied()
        return await export_blocks(self, Path(path), selection, signing_key)

    async def import_maif(self, path: str | os.PathLike[str], trusted_keys: Sequence[Any]) -> int:
        """Verify a .maif container against ``trusted_keys`` and write its blocks; returns the count."""
        from maif.storage.engine_io import import_blocks

        path, trusted_keys = arguments.import_maif(path, trusted_keys)
        self._check_writable()
        return await import_blocks(self, Path(path), trusted_keys)


_cache_encoder = msgspec.msgpack.Encoder()
_cache_decoder = msgspec.msgpack.Decoder(tuple[str, str, bytes, dict[str, Any], float, str, str, list[str]])


def _cache_value(block: MAIFBlock) -> bytes:
    """The hot cache's private form of a block: a MessagePack tuple, about 4x cheaper to decode than the
    canonical codec (whose hostile-input checks the digest-verified block does not need twice)."""
    return _cache_encoder.encode((block.id, type_name(block), block.data, block.metadata, block.timestamp,
                                  block.agent_id, block.version, list(block.parents)))


def _from_cache(raw: bytes) -> MAIFBlock | None:
    """The cached block, or None when the entry does not decode (then the backends answer)."""
    try:
        block_id, kind, data, metadata, timestamp, agent_id, version, parents = _cache_decoder.decode(raw)
        return MAIFBlock(id=block_id, block_type=kind, data=data, metadata=metadata, timestamp=timestamp,
                         agent_id=agent_id, version=version, parents=tuple(parents))
    except (msgspec.DecodeError, MAIFError):
        return None


_TOMBSTONE_TAG = 0xD7  # first byte of a deletion's log record; a block's record starts with its codec version
assert _TOMBSTONE_TAG != CODEC_VERSION
_tombstone_encoder = msgspec.msgpack.Encoder()
_tombstone_decoder = msgspec.msgpack.Decoder(tuple[str, float])


def encode_tombstone(block_id: str) -> bytes:
    """The log record of a deletion: the tag byte, then MessagePack (block id, time of deletion)."""
    return bytes([_TOMBSTONE_TAG]) + _tombstone_encoder.encode((block_id, time.time()))


def log_item(payload: bytes, lsn: int) -> LogItem:
    """The log item a record of the write-ahead log holds: a block, or a deletion."""
    if payload[:1] == bytes([_TOMBSTONE_TAG]):
        try:
            block_id, _ = _tombstone_decoder.decode(payload[1:])
        except msgspec.DecodeError as error:
            raise FormatError(f"log record {lsn}: a deletion record that does not decode") from error
        return LogItem(MAIFBlock(id=block_id, data=b""), payload, blake3.blake3(payload).digest(), None,
                       lsn, deleted=True)
    return _item_of(decode_block(payload), payload, lsn)


_EMBEDDING = MAIFBlockType.EMBEDDING  # looked up once: an enum member lookup costs per block


def _item_of(block: MAIFBlock, encoded: bytes, lsn: int, digest: bytes | None = None) -> LogItem:
    """The log item of ``block`` encoded as ``encoded`` (``digest``: its BLAKE3 when already known)."""
    vector = None
    if block.block_type is _EMBEDDING:
        from maif.storage.vectors import embedding_of

        vector = embedding_of(block)
    if digest is None:
        digest = blake3.blake3(encoded).digest()
    return LogItem(block, encoded, digest, vector, lsn)


__all__ = ["Backends", "MAIFStorage", "StorageError", "create_maif_storage", "default_backends"]
