"""The write-ahead log on the Kafka protocol (docs/adr/0073-kafka-log.md), selected by ``kafka_brokers``.

With it a store's log is a topic (``kafka_topic``, ``kafka_partitions`` partitions, created if missing)
instead of ``data_dir/wal``, so an acknowledged write survives the total loss of the node that took it:

    writer node   write_block -> :class:`KafkaCommitter` (concurrent writers grouped: one produce round
                  for many, acks=all) -> acknowledged with the record's (partition, offset) -> served
                  from this node's memory (read-your-writes) until the shared index holds it
    every node    :class:`LogConsumer`, one member of the consumer group ``kafka_group``: the records of
                  its partitions -> decoded (a record that is not a MAIF log record is skipped, counted
                  and logged) -> :class:`~maif.storage.applier.Applier` into the shared backends ->
                  flushed -> the partition's position in PostgreSQL -> the Kafka offset (advisory)

Records are keyed by agent id (the block id when there is none; a deletion like the block it deletes),
so one agent's records keep their order in one partition. The authoritative applied position of each
partition is in PostgreSQL (``node_state``, under ``log:<topic>``), moved only after everything the
records wrote is durable; a member that takes a partition seeks to it. Applying is idempotent (rows
upserted by block id and digest, pack objects under fresh keys, "first location wins"), so records
applied twice (a crash between the apply and the position, a rebalance) change nothing; nothing here
depends on the broker's idempotent producer or transactions (Tansu 0.6 answers InitProducerId with an
error).
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

KAFKA = "Kafka"  # the component named in errors, health() and metrics
_log = logging.getLogger(__name__)
_SKIPPED_REASONS_KEPT = 16  # the latest reasons for skipped records, for stats
_CONSUMER_POLL_MS = 200
_SESSION_TIMEOUT_MS = 6_000  # a member that dies loses its partitions to the others after this
_PRODUCE_BATCH_BYTES = 1 << 20
_OFFSET_COMMIT_INTERVAL_S = 1.0
_APPLY_LINGER_S = 0.05  # a trickle is applied in batches: each apply is an S3 PUT + PostgreSQL statements


def check_config(config: StorageConfig) -> None:
    """The Kafka-protocol log needs the shared backends: the records it carries are applied by any node,
    so what they are applied into must be shared too."""
    if config.postgres_url is None or config.s3_endpoint is None or config.s3_bucket is None:
        raise ConfigError(
            "kafka_brokers needs the shared backends (postgres_url, s3_endpoint and s3_bucket): any node "
            "applies the records of the shared log, so the index and the chunks must be shared too",
            hint="set postgres_url, s3_endpoint and s3_bucket, or remove kafka_brokers to keep a local log")


def group_of(config: StorageConfig) -> str:
    return config.kafka_group or f"maif-{config.kafka_topic}"


def log_key(item: LogItem) -> bytes:
    """The record's key: its agent id (one agent's records stay in order in one partition), else the
    block id. A deletion's item carries the agent id of the block it deletes."""
    block = item.block
    return (block.agent_id or block.id).encode("utf-8")


def _unavailable(action: str, error: BaseException, brokers: Sequence[str]) -> BackendUnavailableError:
    reason = str(error) or type(error).__name__
    return BackendUnavailableError(f"Kafka ({', '.join(brokers)}) did not acknowledge: {action}: {reason}",
                                   component=KAFKA, retry_after_s=1.0,
                                   hint="nothing was acknowledged; retry once the broker answers")


# ---- writing -----------------------------------------------------------------------------------------

class KafkaCommitter(Committer):
    """The Kafka path's committer (:class:`maif.storage.wal.Committer`, like the local log's): writers
    queued while a produce round is in flight form the next round, and ``append`` resolves once the
    broker acknowledged every record of it (acks=all); ``on_commit(first, last, items)`` runs before the
    writers wake, with each item's ``position`` (partition, offset) set. A round the broker does not
    acknowledge within ``write_timeout_s`` fails its writers and every queued one with
    BackendUnavailableError (component "Kafka"); its records may still reach the log later (then they
    are applied like any other), but none was acknowledged.

    The numbers it hands out (the receipts' ``lsn``) are this node's, not durable: they order the node's
    acknowledged writes for queries that must see them; the log's own order is (partition, offset).
    """

    task_name = "maif-kafka-committer"

    def __init__(self, producer: Any, topic: str, brokers: Sequence[str], *, batch_size: int,
                 batch_timeout_ms: float, write_timeout_s: float, health: Health,
                 on_commit: Callable[[int, int, Any], None]) -> None:
        super().__init__(first_lsn=1, batch_size=batch_size, batch_timeout_ms=batch_timeout_ms,
                         on_commit=on_commit)
        self._producer = producer
        self._topic = topic
        self._brokers = list(brokers)
        self._write_timeout_s = write_timeout_s
        self._health = health

    def append(self, payloads: Sequence[bytes], context: Any) -> asyncio.Future[int]:
        """Queue records (refused at once when one is larger than a log record may be)."""
        for payload in payloads:
            if len(payload) > limits.kafka_record_bytes_max:
                raise LimitExceededError("an encoded block for the Kafka log (bytes)", len(payload),
                                         limits.kafka_record_bytes_max,
                                         hint="store larger payloads in a store with a local log, or "
                                              "split them")
        return super().append(payloads, context)

    async def _write(self, group: list[Any]) -> None:
        items: list[LogItem] = [item for pending in group for item in pending.context]
        payloads = [payload for pending in group for payload in pending.framed]
        positions = await self._produce(items, payloads)
        self._health.succeeded(KAFKA)
        for item, position in zip(items, positions, strict=True):
            item.position = position

    def _failure_of(self, error: BaseException) -> BaseException:
        if not isinstance(error, BackendUnavailableError):
            error = _unavailable("producing records", error, self._brokers)
        self._health.failed(KAFKA, error.message)
        return error

    async def _produce(self, items: list[LogItem], payloads: list[bytes]) -> list[tuple[int, int]]:
        """Send every record, then wait (bounded) for the broker's acknowledgement of each."""
        from aiokafka.errors import KafkaError

        deadline = time.monotonic() + self._write_timeout_s
        try:
            async with asyncio.timeout(self._write_timeout_s):
                futures = [await self._producer.send(self._topic, payload, key=log_key(item))
                           for item, payload in zip(items, payloads, strict=True)]
        except (KafkaError, TimeoutError) as error:
            raise _unavailable("sending records", error, self._brokers) from error
        # Waited for without cancelling: a record the producer still holds may reach the log later, and
        # must then be applied like any other (acknowledged or not, it is a valid write). Whatever
        # becomes of the ones not waited for is retrieved, so it is never reported as unhandled.
        for future in futures:
            future.add_done_callback(_retrieve)
        _, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        if pending:
            raise _unavailable(f"{len(pending)} of {len(futures)} record(s) not acknowledged within "
                               f"{self._write_timeout_s:g} s (kafka_write_timeout_s)",
                               TimeoutError("timed out"), self._brokers)
        positions = []
        for future in futures:
            failure = future.exception()
            if failure is not None:
                raise _unavailable("producing records", failure, self._brokers) from failure
            metadata = future.result()
            positions.append((int(metadata.partition), int(metadata.offset)))
        return positions


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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

class LogConsumer:
    """One member of the store's consumer group: applies the records of the partitions it is assigned.

    On assignment each partition is sought to its position in PostgreSQL (Kafka's committed offset,
    which is never ahead of it, when PostgreSQL cannot be read then). A batch is applied, flushed, and
    only then its position moved (same order as the local log's checkpoint); the Kafka offset commit
    after it is advisory. While a server is unavailable the same batch is retried with backoff (ADR
    0072); any other failure of the backends stops this consumer (``failure``), as it stops the local
    applier. ``on_applied(partition, next_offset)`` reports each applied batch to the engine.
    """

    def __init__(self, config: StorageConfig, backends: Backends, applier: Applier,
                 maintenance: asyncio.Lock, on_applied: Callable[[int, int], None]) -> None:
        self._config = config
        self._brokers = config.kafka_broker_list
        self._topic = config.kafka_topic
        self._backends = backends
        self._applier = applier
        self._maintenance = maintenance
        self._on_applied = on_applied
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._backoff = RetryPolicy(base_delay_s=0.1, delay_s_max=5.0)
        self._dimensions: int | None = backends.vectors.dimensions
        self.failure: str | None = None
        self.waiting_for: BackendUnavailableError | None = None
        self.assigned: list[int] = []
        self._uncommitted: dict[Any, int] = {}  # partition -> next offset, applied but not committed
        self._committed_at = 0.0
        self.records_applied_total = 0
        self.records_skipped_total = 0
        self.skipped_reasons: deque[str] = deque(maxlen=_SKIPPED_REASONS_KEPT)

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._brokers, group_id=group_of(self._config), enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=1000, max_partition_fetch_bytes=limits.kafka_record_bytes_max + 65536,
            fetch_max_bytes=limits.wal_group_bytes_max)
        self._consumer.subscribe([self._topic], listener=_rebalance_listener(self))
        try:
            await self._consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            raise
        self._task = asyncio.get_running_loop().create_task(self._run(), name="maif-kafka-consumer")

    async def stop(self) -> None:
        """Finish the batch being applied (or give up waiting for a server), leave the group."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):  # leaving the group is a courtesy: the session expires
                await self._consumer.stop()

    async def seek_to_applied(self, partitions: Sequence[Any]) -> None:
        """Position newly assigned partitions where PostgreSQL says they are applied up to."""
        self.assigned = sorted(partition.partition for partition in partitions)
        if not partitions:
            return
        try:
            positions = await self._backends.index.log_positions(self._topic)  # type: ignore[attr-defined]
        except MAIFError as error:  # the committed offsets (never ahead of these) apply instead
            _log.warning("Kafka log: reading the applied positions failed (%s); partitions %s resume "
                         "from their committed offsets", error.message, self.assigned)
            return
        for partition in partitions:
            self._consumer.seek(partition, positions.get(partition.partition, 0))

    async def _run(self) -> None:
        attempts = 0
        while not self._stopping.is_set():
            try:
                batches = await self._fetch()
                attempts = 0
            except Exception as error:  # noqa: BLE001 - the broker or the network: wait, fetch again
                attempts += 1
                _log.warning("Kafka log: fetching records failed (%r); retrying", error)
                await self._sleep(self._backoff.delay_s(min(attempts, 32)))
                continue
            for partition, records in batches.items():
                if not await self._apply_partition(partition, records):
                    if self.failure is not None:
                        # Leave the group, so the partitions go to members that can apply them.
                        with contextlib.suppress(Exception):
                            await self._consumer.stop()
                    return
        await self._commit_offsets()

    async def _fetch(self) -> dict[Any, list[Any]]:
        """The next records by partition; a short batch lingers a moment and takes what arrived
        meanwhile, so a trickle of small groups is applied as one batch (one S3 PUT, one index
        transaction), as the local log's applier does (ADR 0073 says why longer here)."""
        records_max = limits.engine_apply_batch_records_max
        batches: dict[Any, list[Any]] = await self._consumer.getmany(timeout_ms=_CONSUMER_POLL_MS,
                                                                     max_records=records_max)
        taken = sum(len(records) for records in batches.values())
        if 0 < taken < records_max:
            await asyncio.sleep(_APPLY_LINGER_S)
            more = await self._consumer.getmany(timeout_ms=0, max_records=records_max - taken)
            for partition, records in more.items():
                batches.setdefault(partition, []).extend(records)
        return batches

    async def _sleep(self, delay_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def _apply_partition(self, partition: Any, records: Sequence[Any]) -> bool:
        """Apply one partition's batch and move its position; False when this consumer must stop."""
        items = [item for item in (self._decode(record) for record in records) if item is not None]
        next_offset = records[-1].offset + 1
        attempts = 0
        while True:
            try:
                async with self._maintenance:
                    if items:
                        await self._applier.apply(items)
                        await self._applier.flush()
                    await self._backends.index.set_log_positions(  # type: ignore[attr-defined]
                        self._topic, {partition.partition: next_offset})
                break
            except BackendUnavailableError as error:  # wait for the server; the same batch again
                attempts += 1
                self._note_waiting(error)
                if self._stopping.is_set():
                    return False  # not applied, position not moved: the next member re-applies it
                await self._sleep(self._backoff.delay_s(min(attempts, 32)))
            except Exception as error:  # noqa: BLE001 - a local failure stops applying; reads go on
                reason = error.message if isinstance(error, MAIFError) else repr(error)
                self.failure = f"applying the Kafka log to the backends failed ({reason})"
                _log.error("Kafka log: %s; this node stops applying", self.failure)
                return False
        if self.waiting_for is not None:
            self._backends.health.succeeded(self.waiting_for.component)
            self.waiting_for = None
        if any(item.vector is not None for item in items):
            self._dimensions = self._backends.vectors.dimensions
        self.records_applied_total += len(items)
        self._on_applied(partition.partition, next_offset)
        self._uncommitted[partition] = next_offset
        if time.monotonic() - self._committed_at >= _OFFSET_COMMIT_INTERVAL_S:
            await self._commit_offsets()
        return True

    async def _commit_offsets(self) -> None:
        """Commit the Kafka offsets applied since the last commit. Advisory (PostgreSQL holds the
        authoritative positions), so at most once a second: on Tansu each commit is an S3 write."""
        offsets, self._uncommitted = self._uncommitted, {}
        self._committed_at = time.monotonic()
        if offsets:
            with contextlib.suppress(Exception):  # e.g. a partition revoked meanwhile: harmless
                await self._consumer.commit(offsets)

    def _note_waiting(self, error: BackendUnavailableError) -> None:
        if self.waiting_for is None:
            _log.warning("Kafka log: applying waits for %s (%s)", error.component, error.message)
        self.waiting_for = error
        self._backends.health.failed(error.component, error.message)

    def _decode(self, record: Any) -> LogItem | None:
        """The log item a record holds, or None (skipped, counted, logged) when it is not one this store
        can apply: empty, larger than the bound, not a block or deletion record, or an embedding of
        another dimension than the store's vectors."""
        from maif.storage.engine import log_item

        value = record.value
        where = f"partition {record.partition} offset {record.offset}"
        if not value:
            return self._skip(where, "an empty record")
        if len(value) > limits.kafka_record_bytes_max:
            return self._skip(where, f"{len(value)} bytes, above kafka_record_bytes_max "
                                     f"({limits.kafka_record_bytes_max})")
        try:
            item = log_item(bytes(value), record.offset + 1)
        except Exception as error:  # noqa: BLE001 - hostile bytes: whatever fails, skip the record
            return self._skip(where, "not a MAIF log record: "
                                     + (error.message if isinstance(error, MAIFError) else repr(error)))
        if item.vector is not None:
            dimensions = int(item.vector.shape[0])
            if self._dimensions is None:
                self._dimensions = dimensions
            elif dimensions != self._dimensions:
                return self._skip(where, f"an embedding of {dimensions} dimensions; the store's vectors "
                                         f"have {self._dimensions}")
        return item

    def _skip(self, where: str, reason: str) -> LogItem | None:
        """Count and log a record that is not applied; None, for ``_decode`` to return."""
        self.records_skipped_total += 1
        line = f"{where}: {reason[:300]}"
        self.skipped_reasons.append(line)
        _log.warning("Kafka log topic %r: record skipped (%s)", self._topic, line)
        return None


def _rebalance_listener(consumer: LogConsumer) -> Any:
    """aiokafka's rebalance listener: newly assigned partitions seek to their applied positions."""
    from aiokafka import ConsumerRebalanceListener

    class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            return None

        async def on_partitions_assigned(self, assigned: Any) -> None:
            await consumer.seek_to_applied(list(assigned))

    return Rebalance()


# ---- the whole log -----------------------------------------------------------------------------------

class KafkaLog:
    """The producer, the committer, this node's consumer and the watch over this node's pending writes."""

    def __init__(self, config: StorageConfig, backends: Backends, producer: Any,
                 committer: KafkaCommitter, consumer: LogConsumer) -> None:
        self._config = config
        self._backends = backends
        self.producer = producer
        self.committer = committer
        self.consumer = consumer
        self.pending = PendingPositions()
        self._pending_added = asyncio.Event()
        self._on_visible: Callable[[list[LogItem]], Any] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, config: StorageConfig, backends: Backends, applier: Applier,
                   maintenance: asyncio.Lock, on_commit: Callable[[int, int, Any], None]) -> KafkaLog:
        """Reach the broker (a ConfigError naming Kafka and ``kafka_brokers`` when it does not answer),
        create the topic if missing, start this node's producer and consumer."""
        check_config(config)
        brokers = config.kafka_broker_list
        if not brokers:
            raise ConfigError("kafka_brokers is empty", hint='name at least one broker, e.g. "host:9092"')
        producer = await _start_producer(config, brokers)
        try:
            await _ensure_topic(config, brokers, producer)
            committer = KafkaCommitter(producer, config.kafka_topic, brokers, batch_size=config.batch_size,
                                       batch_timeout_ms=config.batch_timeout_ms,
                                       write_timeout_s=config.kafka_write_timeout_s,
                                       health=backends.health, on_commit=on_commit)
            log: KafkaLog
            consumer = LogConsumer(config, backends, applier, maintenance,
                                   on_applied=lambda partition, position: log.positions_applied(
                                       {partition: position}))
            log = cls(config, backends, producer, committer, consumer)
            await consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return log

    def start(self, on_visible: Callable[[list[LogItem]], Any]) -> None:
        """Start the committer and the watch; ``on_visible(items)`` gets this node's writes once the
        shared index holds them (applied here or by another node)."""
        self._on_visible = on_visible
        self.committer.start()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(), name="maif-kafka-watch")

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
                self.positions_applied(await index.log_positions(self._config.kafka_topic))
            except MAIFError as error:  # the consumer notes the outage; keep trying
                _log.debug("Kafka log: reading the applied positions failed: %s", error.message)
            await asyncio.sleep(limits.kafka_pending_positions_poll_s)

    async def close(self) -> None:
        """Stop taking writes (queued ones are produced first), stop the consumer, the watch, the
        producer; each even when an earlier step fails, the first failure propagates."""
        errors: list[BaseException] = []
        steps: list[Callable[[], Any]] = [self.committer.close, self.consumer.stop, self._stop_watch,
                                          self.producer.stop]
        for step in steps:
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

    def stats(self) -> dict[str, Any]:
        consumer = self.consumer
        return {
            "kafka_topic": self._config.kafka_topic,
            "kafka_group": group_of(self._config),
            "kafka_partitions_assigned": list(consumer.assigned),
            "kafka_records_applied_total": consumer.records_applied_total,
            "kafka_records_skipped_total": consumer.records_skipped_total,
            "kafka_skipped_reasons": list(consumer.skipped_reasons),
            "kafka_pending_records": self.pending.count,
            "kafka_produce_groups_total": self.committer.groups_total,
            "kafka_applier_failure": consumer.failure,
        }


async def _start_producer(config: StorageConfig, brokers: list[str]) -> Any:
    try:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError
    except ImportError as error:
        raise ConfigError(f"kafka_brokers needs a library that is not installed ({error.name})",
                          hint="install the client libraries: pip install 'maif[distributed]'") from None
    timeout_ms = int(config.kafka_write_timeout_s * 1000)
    # acks=all: acknowledged means every in-sync replica has it. No idempotent producer: Tansu 0.6
    # refuses InitProducerId, and applying is idempotent anyway (ADR 0073).
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", enable_idempotence=False,
                                request_timeout_ms=max(timeout_ms, 1000), max_batch_size=_PRODUCE_BATCH_BYTES,
                                max_request_size=limits.kafka_record_bytes_max + 65536, linger_ms=0,
                                client_id=f"maif-{config.kafka_topic}")
    try:
        await asyncio.wait_for(producer.start(), max(config.kafka_write_timeout_s, 1.0) * 2)
    except (KafkaError, OSError, TimeoutError) as error:
        with contextlib.suppress(Exception):
            await producer.stop()
        raise ConfigError(f"Kafka (kafka_brokers): cannot reach {', '.join(brokers)}: "
                          f"{str(error) or type(error).__name__}",
                          hint="start the broker or correct kafka_brokers") from error
    return producer


async def _ensure_topic(config: StorageConfig, brokers: list[str], producer: Any) -> None:
    """Create the topic with ``kafka_partitions`` partitions unless it exists; an existing topic keeps
    its partitions (keys map to partitions by count: changing it would split an agent's records)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=10_000)
    try:
        await admin.start()
        response = await admin.create_topics([NewTopic(config.kafka_topic, config.kafka_partitions, 1)])
        for _, code, *rest in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise ConfigError(f"Kafka (kafka_brokers): creating topic {config.kafka_topic!r} failed "
                                  f"(error {code}: {rest[0] if rest else ''})")
    except KafkaError as error:
        raise ConfigError(f"Kafka (kafka_brokers): creating topic {config.kafka_topic!r} failed: "
                          f"{error}") from error
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    partitions = await producer.partitions_for(config.kafka_topic)
    if partitions and len(partitions) != config.kafka_partitions:
        _log.warning("Kafka log topic %r has %d partitions (kafka_partitions says %d): kept as it is",
                     config.kafka_topic, len(partitions), config.kafka_partitions)


__all__ = ["KAFKA", "KafkaCommitter", "KafkaLog", "LogConsumer", "PendingPositions", "check_config",
           "log_key"]
