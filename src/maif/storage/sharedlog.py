"""What the two shared write-ahead logs have in common: the Kafka-protocol topic
(:mod:`maif.storage.kafkalog`, docs/adr/0073-kafka-log.md) and the NATS JetStream stream
(:mod:`maif.storage.natslog`, docs/adr/0084-nats-log.md).

Each log is partitioned (a record's partition from :func:`log_key`: one agent's records stay in order
in one partition); each partition's applied position (the next offset or stream sequence to apply) is
kept in PostgreSQL (``node_state`` under ``log:<name>``), moved only forward and only after what the
records wrote is durable. This module holds the pieces whose logic does not depend on the broker:

- :func:`check_config`: a shared log needs the shared backends;
- :class:`PendingPositions`: this node's acknowledged writes by log position, until applied
  (read-your-writes);
- :class:`PartitionApplier`: decode records (hostile bytes are skipped, counted and logged), apply a
  partition's batch through :class:`~maif.storage.applier.Applier`, flush, then move the position;
  wait with backoff while a server is out, stop for good on any other failure;
- :class:`SharedLog`: the committer, the appliers, and the watch that tells the engine when this
  node's writes are in the shared index, whoever applied them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from maif import limits
from maif.config import StorageConfig
from maif.errors import BackendUnavailableError, ConfigError, LimitExceededError, MAIFError
from maif.storage.applier import Applier, LogItem
from maif.storage.backends.wrappers import RetryPolicy
from maif.storage.health import Health
from maif.storage.wal import Committer

if TYPE_CHECKING:
    from maif.storage.engine import Backends

_log = logging.getLogger(__name__)
_SKIPPED_REASONS_KEPT = 16  # the latest reasons for skipped records, for stats


def check_config(config: StorageConfig) -> None:
    """A shared log needs the shared backends: the records it carries are applied by any node, so what
    they are applied into must be shared too."""
    if config.postgres_url is None or config.s3_endpoint is None or config.s3_bucket is None:
        key = "kafka_brokers" if config.log == "kafka" else f'log_backend "{config.log}"'
        raise ConfigError(
            f"{key} needs the shared backends (postgres_url, s3_endpoint and s3_bucket): any node "
            "applies the records of the shared log, so the index and the chunks must be shared too",
            hint=f"set postgres_url, s3_endpoint and s3_bucket, or remove {key.split()[0]} to keep a "
                 "local log")


def log_key(item: LogItem) -> bytes:
    """The record's key: its agent id (one agent's records stay in order in one partition), else the
    block id. A deletion's item carries the agent id of the block it deletes."""
    block = item.block
    return (block.agent_id or block.id).encode("utf-8")


def check_record_sizes(payloads: Sequence[bytes], log: str, server_bytes_max: int | None = None) -> None:
    """Refuse, before the broker sees it, a record larger than a shared log's record may be
    (``limits.kafka_record_bytes_max``, or less when the server says so: ``server_bytes_max``)."""
    bytes_max = limits.kafka_record_bytes_max
    if server_bytes_max is not None:
        bytes_max = min(bytes_max, server_bytes_max)
    for payload in payloads:
        if len(payload) > bytes_max:
            raise LimitExceededError(f"an encoded block for the {log} log (bytes)", len(payload), bytes_max,
                                     hint="store larger payloads in a store with a local log, or split them")


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done callback: whatever became of a future nobody awaits is retrieved, never reported as an
    unhandled exception."""
    if not future.cancelled():
        future.exception()


# ---- writing -----------------------------------------------------------------------------------------

class SharedLogCommitter(Committer):
    """A shared log's committer (:class:`maif.storage.wal.Committer`, like the local log's): writers
    queued while a round is in flight form the next round; a subclass sends the round (:meth:`_send`)
    and waits for the broker's acknowledgement of every record (:meth:`_acknowledged`), and ``append``
    resolves once it has them. ``on_commit(first, last, items)`` runs before the writers wake, with each
    item's ``position`` (partition, offset) set. A round not acknowledged within ``write_timeout_s``
    fails its writers and every queued one with BackendUnavailableError (component: the log's); its
    records may still reach the log later (then they are applied like any other), but none was
    acknowledged.

    The numbers it hands out (the receipts' ``lsn``) are this node's, not durable: they order the node's
    acknowledged writes for queries that must see them; the log's own order is (partition, offset).
    """

    component = "log"
    timeout_key = "kafka_write_timeout_s"

    def __init__(self, where: str, *, batch_size: int, batch_timeout_ms: float, write_timeout_s: float,
                 health: Health, on_commit: Callable[[int, int, Any], None],
                 record_bytes_max: int | None = None) -> None:
        super().__init__(first_lsn=1, batch_size=batch_size, batch_timeout_ms=batch_timeout_ms,
                         on_commit=on_commit)
        self._where = where  # the broker, for messages: "Kafka (host:port, ...)", never credentials
        self._write_timeout_s = write_timeout_s
        self._health = health
        self._record_bytes_max = record_bytes_max

    def append(self, payloads: Sequence[bytes], context: Any) -> asyncio.Future[int]:
        """Queue records (refused at once when one is larger than a log record may be)."""
        check_record_sizes(payloads, self.component, self._record_bytes_max)
        return super().append(payloads, context)

    async def _write(self, group: list[Any]) -> None:
        items: list[LogItem] = [item for pending in group for item in pending.context]
        payloads = [payload for pending in group for payload in pending.framed]
        positions = await self._send(items, payloads)
        self._health.succeeded(self.component)
        for item, position in zip(items, positions, strict=True):
            item.position = position

    async def _send(self, items: list[LogItem], payloads: list[bytes]) -> list[tuple[int, int]]:
        """Send every record, then wait (bounded) for the broker's acknowledgement of each; each
        record's (partition, offset)."""
        raise NotImplementedError

    def _failure_of(self, error: BaseException) -> BaseException:
        if not isinstance(error, BackendUnavailableError):
            error = self.unavailable("sending records", error)
        self._health.failed(self.component, error.message)
        return error

    def unavailable(self, action: str, error: BaseException) -> BackendUnavailableError:
        reason = str(error) or type(error).__name__
        return BackendUnavailableError(f"{self._where} did not acknowledge: {action}: {reason}",
                                       component=self.component, retry_after_s=1.0,
                                       hint="nothing was acknowledged; retry once the broker answers")

    async def _acknowledged(self, futures: Sequence[asyncio.Future[Any]], deadline: float,
                            position_of: Callable[[int, Any], tuple[int, int]], *,
                            cancel_late: bool) -> list[tuple[int, int]]:
        """Wait until ``deadline`` (monotonic) for every record's acknowledgement; their positions
        (``position_of(index, result)``), or BackendUnavailableError. Late ones are cancelled when
        ``cancel_late`` (the client would hold them for ever), else left to the client; whatever becomes
        of them is retrieved, so it is never reported as unhandled."""
        for future in futures:
            future.add_done_callback(retrieve)
        _, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        if pending:
            if cancel_late:
                for future in pending:
                    future.cancel()
            raise self.unavailable(f"{len(pending)} of {len(futures)} record(s) not acknowledged within "
                                   f"{self._write_timeout_s:g} s ({self.timeout_key})",
                                   TimeoutError("timed out"))
        positions = []
        for index, future in enumerate(futures):
            failure = future.exception()
            if failure is not None:
                raise self.unavailable("sending records", failure) from failure
            positions.append(position_of(index, future.result()))
        return positions


# ---- read-your-writes until the shared index holds a write ------------------------------------------

class PendingPositions:
    """This node's acknowledged writes not yet in the shared index, by log position: per partition a
    heap by offset. Bounded by the engine's unapplied-bytes bound (each item is charged there)."""

    def __init__(self) -> None:
        self._by_partition: dict[int, list[tuple[int, int, LogItem]]] = {}
        self._sequences: dict[int, None] = {}  # insertion-ordered: the oldest outstanding first
        self.count = 0

    def add(self, item: LogItem) -> None:
        assert item.position is not None
        partition, offset = item.position
        heapq.heappush(self._by_partition.setdefault(partition, []), (offset, item.lsn, item))
        self._sequences[item.lsn] = None
        self.count += 1

    def applied(self, positions: dict[int, int]) -> list[LogItem]:
        """Remove and return the items below each partition's applied position (next offset)."""
        done: list[LogItem] = []
        for partition, position in positions.items():
            heap = self._by_partition.get(partition)
            while heap and heap[0][0] < position:
                done.append(heapq.heappop(heap)[2])
        for item in done:
            del self._sequences[item.lsn]
        self.count -= len(done)
        return done

    def oldest_sequence(self) -> int | None:
        return next(iter(self._sequences), None)


# ---- applying ----------------------------------------------------------------------------------------

class PartitionApplier:
    """Applies batches of a shared log's records into the backends, one partition's batch at a time.

    A batch is applied, flushed, and only then its partition's position moved in PostgreSQL (the same
    order as the local log's checkpoint). While a server is unavailable the same batch is retried with
    backoff (ADR 0072); any other failure stops applying for good (``failure``), as it stops the local
    applier. ``on_applied(partition, next_position)`` reports each applied batch to the engine.
    """

    def __init__(self, component: str, config: StorageConfig, backends: Backends, applier: Applier,
                 maintenance: asyncio.Lock, on_applied: Callable[[int, int], None]) -> None:
        self.component = component
        self.log_name = config.log_name
        self._backends = backends
        self._applier = applier
        self._maintenance = maintenance
        self._on_applied = on_applied
        self.stopping = asyncio.Event()
        self._backoff = RetryPolicy(base_delay_s=0.1, delay_s_max=5.0)
        self._dimensions: int | None = backends.vectors.dimensions
        self.failure: str | None = None
        self.waiting_for: BackendUnavailableError | None = None
        self.records_applied_total = 0
        self.records_skipped_total = 0
        self.skipped_reasons: deque[str] = deque(maxlen=_SKIPPED_REASONS_KEPT)

    async def sleep(self, delay_s: float) -> None:
        """Sleep, waking early when applying stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay_s)

    def backoff_s(self, attempts: int) -> float:
        return self._backoff.delay_s(min(attempts, 32))

    async def apply(self, partition: int, items: Sequence[LogItem], next_position: int) -> bool:
        """Apply one partition's batch and move its position; False when applying must stop."""
        attempts = 0
        while True:
            try:
                async with self._maintenance:
                    if items:
                        await self._applier.apply(list(items))
                        await self._applier.flush()
                    await self._backends.index.set_log_positions(  # type: ignore[attr-defined]
                        self.log_name, {partition: next_position})
                break
            except BackendUnavailableError as error:  # wait for the server; the same batch again
                attempts += 1
                self._note_waiting(error)
                if self.stopping.is_set():
                    return False  # not applied, position not moved: the next holder re-applies it
                await self.sleep(self.backoff_s(attempts))
            except Exception as error:  # noqa: BLE001 - a local failure stops applying; reads go on
                reason = error.message if isinstance(error, MAIFError) else repr(error)
                self.failure = f"applying the {self.component} log to the backends failed ({reason})"
                _log.error("%s log: %s; this node stops applying", self.component, self.failure)
                return False
        if self.waiting_for is not None:
            self._backends.health.succeeded(self.waiting_for.component)
            self.waiting_for = None
        if any(item.vector is not None for item in items):
            self._dimensions = self._backends.vectors.dimensions
        self.records_applied_total += len(items)
        self._on_applied(partition, next_position)
        return True

    def _note_waiting(self, error: BackendUnavailableError) -> None:
        if self.waiting_for is None:
            _log.warning("%s log: applying waits for %s (%s)", self.component, error.component, error.message)
        self.waiting_for = error
        self._backends.health.failed(error.component, error.message)

    def decode(self, value: bytes | None, where: str, sequence: int) -> LogItem | None:
        """The log item a record holds, or None (skipped, counted, logged) when it is not one this store
        can apply: empty, larger than the bound (checked before decoding), not a block or deletion
        record, or an embedding of another dimension than the store's vectors."""
        from maif.storage.engine import log_item

        if not value:
            return self.skip(where, "an empty record")
        if len(value) > limits.kafka_record_bytes_max:
            return self.skip(where, f"{len(value)} bytes, above kafka_record_bytes_max "
                                     f"({limits.kafka_record_bytes_max})")
        try:
            item = log_item(bytes(value), sequence)
        except Exception as error:  # noqa: BLE001 - hostile bytes: whatever fails, skip the record
            return self.skip(where, "not a MAIF log record: "
                                     + (error.message if isinstance(error, MAIFError) else repr(error)))
        if item.vector is not None:
            dimensions = int(item.vector.shape[0])
            if self._dimensions is None:
                self._dimensions = dimensions
            elif dimensions != self._dimensions:
                return self.skip(where, f"an embedding of {dimensions} dimensions; the store's vectors "
                                         f"have {self._dimensions}")
        return item

    def skip(self, where: str, reason: str) -> LogItem | None:
        """Count and log a record that is not applied; None, for ``decode`` (and callers) to return."""
        self.records_skipped_total += 1
        line = f"{where}: {reason[:300]}"
        self.skipped_reasons.append(line)
        _log.warning("%s log %r: record skipped (%s)", self.component, self.log_name, line)
        return None


# ---- the whole log -----------------------------------------------------------------------------------

class SharedLog:
    """A shared log as the engine sees it: its committer (the write path), this node's applier, and the
    watch over this node's writes until the shared index holds them. A subclass opens the broker's side
    and names what :meth:`close` stops after the committer (``_stop_steps``)."""

    component = "log"  # the component named in errors, health() and metrics

    def __init__(self, config: StorageConfig, backends: Backends, committer: Committer,
                 applier: PartitionApplier) -> None:
        self._config = config
        self._backends = backends
        self.committer = committer
        self.applier = applier
        self.pending = PendingPositions()
        self._pending_added = asyncio.Event()
        self._on_visible: Callable[[list[LogItem]], Any] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def failure(self) -> str | None:
        """Why this node stopped applying the log (None: it applies)."""
        return self.applier.failure

    @property
    def waiting_for(self) -> BackendUnavailableError | None:
        """The server this node's applying waits for, if any."""
        return self.applier.waiting_for

    def start(self, on_visible: Callable[[list[LogItem]], Any]) -> None:
        """Start the committer and the watch; ``on_visible(items)`` gets this node's writes once the
        shared index holds them (applied here or by another node)."""
        self._on_visible = on_visible
        self.committer.start()
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"maif-{self.component.lower()}-watch")

    def track(self, item: LogItem) -> None:
        self.pending.add(item)
        self._pending_added.set()

    def positions_applied(self, positions: dict[int, int]) -> None:
        done = self.pending.applied(positions)
        if done and self._on_visible is not None:
            self._on_visible(done)

    async def _watch(self) -> None:
        """While this node has writes not yet applied, poll the shared positions: another node may be
        the one applying their partitions."""
        index: Any = self._backends.index
        while True:
            if not self.pending.count:
                self._pending_added.clear()
                await self._pending_added.wait()
                continue
            try:
                self.positions_applied(await index.log_positions(self._config.log_name))
            except MAIFError as error:  # the applier notes the outage; keep trying
                _log.debug("%s log: reading the applied positions failed: %s", self.component,
                           error.message)
            await asyncio.sleep(limits.kafka_pending_positions_poll_s)

    def _stop_steps(self) -> list[Callable[[], Any]]:
        raise NotImplementedError

    async def close(self) -> None:
        """Stop taking writes (queued ones are sent first), then the subclass's steps and the watch;
        each even when an earlier step fails, the first failure propagates."""
        errors: list[BaseException] = []
        for step in [self.committer.close, *self._stop_steps(), self._stop_watch]:
            try:
                await step()
            except Exception as error:  # noqa: BLE001 - release the rest, then re-raise
                errors.append(error)
        if errors:
            raise errors[0]

    async def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task

    def applier_stats(self, prefix: str) -> dict[str, Any]:
        """The stats every shared log reports, under ``prefix`` ("kafka" or "nats")."""
        return {
            f"{prefix}_records_applied_total": self.applier.records_applied_total,
            f"{prefix}_records_skipped_total": self.applier.records_skipped_total,
            f"{prefix}_skipped_reasons": list(self.applier.skipped_reasons),
            f"{prefix}_pending_records": self.pending.count,
            f"{prefix}_applier_failure": self.applier.failure,
        }

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError


__all__ = ["PartitionApplier", "PendingPositions", "SharedLog", "SharedLogCommitter", "check_config",
           "check_record_sizes", "log_key", "retrieve"]
