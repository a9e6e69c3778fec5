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
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from maif import limits
from maif.config import StorageConfig
from maif.errors import ConfigError, MAIFError
from maif.storage.applier import Applier, LogItem
from maif.storage.health import Health
from maif.storage.sharedlog import (
    PartitionApplier,
    PendingPositions,
    SharedLog,
    SharedLogCommitter,
    check_config,
    log_key,
)

if TYPE_CHECKING:
    from maif.storage.engine import Backends

KAFKA = "Kafka"  # the component named in errors, health() and metrics
_log = logging.getLogger(__name__)
_CONSUMER_POLL_MS = 200
_SESSION_TIMEOUT_MS = 6_000  # a member that dies loses its partitions to the others after this
_PRODUCE_BATCH_BYTES = 1 << 20
_OFFSET_COMMIT_INTERVAL_S = 1.0
_APPLY_LINGER_S = 0.05  # a trickle is applied in batches: each apply is an S3 PUT + PostgreSQL statements


def group_of(config: StorageConfig) -> str:
    return config.kafka_group or f"maif-{config.kafka_topic}"


# ---- writing -----------------------------------------------------------------------------------------

class KafkaCommitter(SharedLogCommitter):
    """The Kafka path's committer (:class:`~maif.storage.sharedlog.SharedLogCommitter`): one produce
    round per group (``send`` for every record), then the broker's acknowledgement (acks=all) of each."""

    task_name = "maif-kafka-committer"
    component = KAFKA
    timeout_key = "kafka_write_timeout_s"

    def __init__(self, producer: Any, topic: str, brokers: Sequence[str], *, batch_size: int,
                 batch_timeout_ms: float, write_timeout_s: float, health: Health,
                 on_commit: Callable[[int, int, Any], None]) -> None:
        super().__init__(f"Kafka ({', '.join(brokers)})", batch_size=batch_size,
                         batch_timeout_ms=batch_timeout_ms, write_timeout_s=write_timeout_s, health=health,
                         on_commit=on_commit)
        self._producer = producer
        self._topic = topic

    async def _send(self, items: list[LogItem], payloads: list[bytes]) -> list[tuple[int, int]]:
        from aiokafka.errors import KafkaError

        deadline = time.monotonic() + self._write_timeout_s
        try:
            async with asyncio.timeout(self._write_timeout_s):
                futures = [await self._producer.send(self._topic, payload, key=log_key(item))
                           for item, payload in zip(items, payloads, strict=True)]
        except (KafkaError, TimeoutError) as error:
            raise self.unavailable("sending records", error) from error
        # Not cancelled when late: a record the producer still holds may reach the log later, and must
        # then be applied like any other (acknowledged or not, it is a valid write).
        return await self._acknowledged(
            futures, deadline, lambda _, metadata: (int(metadata.partition), int(metadata.offset)),
            cancel_late=False)


# ---- applying ----------------------------------------------------------------------------------------

class LogConsumer:
    """One member of the store's consumer group: applies the records of the partitions it is assigned.

    On assignment each partition is sought to its position in PostgreSQL (Kafka's committed offset,
    which is never ahead of it, when PostgreSQL cannot be read then). Each partition's batch goes
    through ``applier`` (:class:`~maif.storage.sharedlog.PartitionApplier`: applied, flushed, then its
    position moved); the Kafka offset commit after it is advisory.
    """

    def __init__(self, config: StorageConfig, backends: Backends, applier: PartitionApplier) -> None:
        self._config = config
        self._brokers = config.kafka_broker_list
        self._topic = config.kafka_topic
        self._backends = backends
        self.applier = applier
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None
        self.assigned: list[int] = []
        self._uncommitted: dict[Any, int] = {}  # partition -> next offset, applied but not committed
        self._committed_at = 0.0

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
        self.applier.stopping.set()
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
        while not self.applier.stopping.is_set():
            try:
                batches = await self._fetch()
                attempts = 0
            except Exception as error:  # noqa: BLE001 - the broker or the network: wait, fetch again
                attempts += 1
                _log.warning("Kafka log: fetching records failed (%r); retrying", error)
                await self.applier.sleep(self.applier.backoff_s(attempts))
                continue
            for partition, records in batches.items():
                if not await self._apply_partition(partition, records):
                    if self.applier.failure is not None:
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

    async def _apply_partition(self, partition: Any, records: Sequence[Any]) -> bool:
        """Apply one partition's batch and move its position; False when this consumer must stop."""
        decode = self.applier.decode
        items = [item for item in (decode(record.value, f"partition {record.partition} offset "
                                                        f"{record.offset}", record.offset + 1)
                                   for record in records) if item is not None]
        next_offset = records[-1].offset + 1
        if not await self.applier.apply(partition.partition, items, next_offset):
            return False
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

class KafkaLog(SharedLog):
    """The producer, the committer, this node's consumer and the watch over this node's pending writes."""

    component = KAFKA

    def __init__(self, config: StorageConfig, backends: Backends, producer: Any,
                 committer: KafkaCommitter, consumer: LogConsumer) -> None:
        super().__init__(config, backends, committer, consumer.applier)
        self.producer = producer
        self.consumer = consumer

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
            partition_applier = PartitionApplier(
                KAFKA, config, backends, applier, maintenance,
                on_applied=lambda partition, position: log.positions_applied({partition: position}))
            consumer = LogConsumer(config, backends, partition_applier)
            log = cls(config, backends, producer, committer, consumer)
            await consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return log

    def _stop_steps(self) -> list[Callable[[], Any]]:
        return [self.consumer.stop, self.producer.stop]

    def stats(self) -> dict[str, Any]:
        return {
            "kafka_topic": self._config.kafka_topic,
            "kafka_group": group_of(self._config),
            "kafka_partitions_assigned": list(self.consumer.assigned),
            **self.applier_stats("kafka"),
            "kafka_produce_groups_total": self.committer.groups_total,
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
