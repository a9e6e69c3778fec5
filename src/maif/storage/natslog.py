"""The write-ahead log on NATS JetStream (docs/adr/0084-nats-log.md), selected by ``log_backend = "nats"``.

With it a store's log is the JetStream stream ``nats_log_stream`` (file storage, limits retention,
subjects ``<stream>.<partition>`` for ``nats_log_partitions`` partitions, created if missing) instead
of ``data_dir/wal``, so an acknowledged write survives the total loss of the node that took it:

    writer node   write_block -> :class:`NatsCommitter` (concurrent writers grouped: every record of a
                  group published with async acks, then the stream's PubAck of each awaited) ->
                  acknowledged with the record's (partition, stream sequence) -> served from this
                  node's memory (read-your-writes) until the shared index holds it
    every node    :class:`PartitionOwner`: holds some partitions through PostgreSQL session advisory
                  locks (its fair share of the live nodes'), reads them with one ephemeral pull
                  consumer from their applied positions -> decoded (a record that is not a MAIF log
                  record is skipped, counted and logged) -> applied, flushed -> the partition's
                  position in PostgreSQL -> (every 10 s) the records below it purged from the stream

A record's partition is a hash of the same key the Kafka log uses (the agent id, else the block id; a
deletion like the block it deletes), so one agent's records keep their order in one partition. The
positions (next stream sequence to apply, per partition) are in PostgreSQL (``node_state`` under
``log:<stream>``), moved only forward and only after everything the records wrote is durable. Applying
is idempotent (:mod:`maif.storage.kafkalog` says why), so a batch applied twice (a crash between the
apply and the position, a partition changing hands) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import blake3
import msgspec

from maif import limits
from maif.config import StorageConfig
from maif.errors import ConfigError, FormatError, LimitExceededError, MAIFError
from maif.storage import sharedlog
from maif.storage.applier import Applier, LogItem
from maif.storage.health import Health
from maif.storage.sharedlog import PartitionApplier, SharedLog, SharedLogCommitter

if TYPE_CHECKING:
    from maif.storage.engine import Backends

NATS = "NATS"  # the component named in errors, health() and metrics
_log = logging.getLogger(__name__)
_REQUEST_TIMEOUT_S = 5.0
_LEASE_INTERVAL_S = 1.0  # how often a node re-counts the live nodes and takes or gives partitions
_FETCH_TIMEOUT_S = 0.2
_APPLY_LINGER_S = 0.05  # as the Kafka log's appliers (ADR 0073): each apply is an S3 PUT + statements
_PURGE_INTERVAL_S = 10.0  # how often a node drops the records it applied from the stream
_CONSUMER_INACTIVE_S = 30.0  # the server deletes a reader's consumer this long after its node is gone
_PUBLISH_HEADROOM_BYTES = 4096  # a message's subject and headers beside its payload, under max_payload
_MEMBER_LOCK = 2**31 - 1  # the shared advisory lock every live node of one stream holds
PARTITIONS_METADATA = "maif_partitions"  # the stream's metadata key naming its partition count


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a record keyed ``key``: stable across processes and versions."""
    return int.from_bytes(blake3.blake3(key).digest()[:8], "big") % partitions


def subject_of(stream: str, partition: int) -> str:
    return f"{stream}.{partition}"


def _server_of(url: str) -> str:
    """The server of ``nats_url`` for messages, never its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or 4222}"


# ---- writing -----------------------------------------------------------------------------------------

class NatsCommitter(SharedLogCommitter):
    """The NATS log's committer (:class:`~maif.storage.sharedlog.SharedLogCommitter`): every record of a
    group published with an async acknowledgement, then the stream's PubAck of each awaited (stored,
    and with ``sync_interval: always`` fsynced; ADR 0084). Late acknowledgements are cancelled, so the
    client forgets them (each holds a slot of its bounded async-publish window); a record the stream
    stored all the same is applied like any other."""

    task_name = "maif-nats-committer"
    component = NATS
    timeout_key = "nats_write_timeout_s"

    def __init__(self, jetstream: Any, stream: str, partitions: int, server: str, *, batch_size: int,
                 batch_timeout_ms: float, write_timeout_s: float, record_bytes_max: int, health: Health,
                 on_commit: Callable[[int, int, Any], None]) -> None:
        super().__init__(f"NATS ({server})", batch_size=batch_size, batch_timeout_ms=batch_timeout_ms,
                         write_timeout_s=write_timeout_s, health=health, on_commit=on_commit,
                         record_bytes_max=record_bytes_max)
        self._jetstream = jetstream
        self._stream = stream
        self._partitions = partitions

    async def _send(self, items: list[LogItem], payloads: list[bytes]) -> list[tuple[int, int]]:
        import nats.errors

        deadline = time.monotonic() + self._write_timeout_s
        messages = self._messages([partition_of(sharedlog.log_key(item), self._partitions) for item in items],
                                  payloads)
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self._write_timeout_s):
                for partition, indexes in messages:
                    data, headers = pack_records([payloads[index] for index in indexes])
                    futures.append(await self._jetstream.publish_async(
                        subject_of(self._stream, partition), data, stream=self._stream, headers=headers,
                        wait_stall=max(0.001, deadline - time.monotonic())))
        except (nats.errors.Error, OSError, TimeoutError) as error:
            for future in futures:
                future.add_done_callback(sharedlog.retrieve)
                future.cancel()
            raise self.unavailable("publishing records", error) from error
        acknowledged = await self._acknowledged(
            futures, deadline, lambda index, ack: (messages[index][0], int(ack.seq)), cancel_late=True)
        positions: list[tuple[int, int]] = [(0, 0)] * len(items)
        for (_, indexes), position in zip(messages, acknowledged, strict=True):
            for index in indexes:
                positions[index] = position
        return positions

    def _messages(self, partitions: list[int], payloads: list[bytes]) -> list[tuple[int, list[int]]]:
        """The group's records as messages: per partition, consecutive records packed into as few
        messages as fit the record bound (each a list of indexes into ``payloads``, in order). The
        server syncs each message (``sync_interval: always``): a message per record would cost an fsync
        per record, a message per partition costs one per partition a group touches."""
        bytes_max = limits.kafka_record_bytes_max
        if self._record_bytes_max is not None:
            bytes_max = min(bytes_max, self._record_bytes_max)
        open_messages: dict[int, tuple[list[int], int]] = {}  # partition -> (indexes, packed bytes)
        messages: list[tuple[int, list[int]]] = []
        for index, (partition, payload) in enumerate(zip(partitions, payloads, strict=True)):
            cost = len(payload) + _PACKED_RECORD_OVERHEAD_BYTES
            indexes, size = open_messages.get(partition, ([], _PACKED_RECORD_OVERHEAD_BYTES))
            if indexes and size + cost > bytes_max:
                indexes, size = [], _PACKED_RECORD_OVERHEAD_BYTES
            if not indexes:
                messages.append((partition, indexes))
            indexes.append(index)
            open_messages[partition] = (indexes, size + cost)
        return messages


_PACKED = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(list[bytes])
_PACKED_RECORD_OVERHEAD_BYTES = 5  # msgpack's header of a bin (or of the list), at most
RECORDS_HEADER = "Maif-Records"  # on a message that packs several records: how many
RECORD_BITS = 20  # a record's LSN: its message's stream sequence << RECORD_BITS | its index in it


def pack_records(payloads: list[bytes]) -> tuple[bytes, dict[str, str] | None]:
    """A message's data and headers: one record as it is (the local log's payload), several as a
    MessagePack list of them, with their count in the ``Maif-Records`` header."""
    if len(payloads) == 1:
        return payloads[0], None
    return _PACKED.encode(payloads), {RECORDS_HEADER: str(len(payloads))}


def unpack_records(data: bytes, count: str) -> list[bytes]:
    """The records of a message that packs several (``count`` from its header); MAIFError when the
    message is not what its header says: larger than the bound (checked before decoding), not a
    MessagePack list of byte strings, or not ``count`` of them."""
    if len(data) > limits.kafka_record_bytes_max:
        raise LimitExceededError("a packed NATS log message (bytes)", len(data),
                                 limits.kafka_record_bytes_max)
    try:
        records = _UNPACK.decode(data)
    except msgspec.DecodeError as error:
        raise FormatError(f"a packed message that does not decode ({error})") from None
    if str(len(records)) != count or len(records) >= 1 << RECORD_BITS:
        raise FormatError(f"a packed message of {len(records)} record(s); its header says {count[:20]!r}")
    return records


# ---- which node applies which partition --------------------------------------------------------------

class PartitionLeases:
    """The partitions this node applies, held as PostgreSQL session advisory locks on a connection of
    its own: a node that dies loses its session, so its locks, and the others take its partitions.

    Every live node holds the shared lock ``(space, _MEMBER_LOCK)``; :meth:`rebalance` counts them and
    takes free partitions up to this node's fair share (ceil(partitions / nodes)) or gives back what is
    above it, so two nodes split the partitions and a lone survivor takes them all.
    """

    def __init__(self, index: Any, stream: str, partitions: int) -> None:
        self._index = index
        self._space = int.from_bytes(blake3.blake3(b"maif-nats-log:" + stream.encode()).digest()[:4],
                                     "big") & 0x7FFFFFFF
        self._partitions = partitions
        self._connection: Any = None
        self.owned: set[int] = set()

    async def rebalance(self) -> bool:
        """Take or give partitions; True when the owned set changed. A lost connection gives up every
        partition (the server released the locks with the session)."""
        try:
            if self._connection is None or self._connection.is_closed():
                self.owned = set()
                self._connection = await self._index.session_connection()
                await self._connection.execute("SELECT pg_advisory_lock_shared($1, $2)", self._space,
                                               _MEMBER_LOCK)
            return await self._balance()
        except Exception as error:  # noqa: BLE001 - any failure: the session and its locks are suspect
            _log.warning("NATS log: the partition leases in PostgreSQL failed (%s); taking them again",
                         error.message if isinstance(error, MAIFError) else repr(error))
            await self.close()
            changed = bool(self.owned)
            self.owned = set()
            return changed

    async def _balance(self) -> bool:
        nodes = await self._connection.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND classid = $1::bigint::oid AND objid = $2::bigint::oid "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            self._space, _MEMBER_LOCK)
        share = math.ceil(self._partitions / max(1, int(nodes)))
        before = set(self.owned)
        for partition in sorted(self.owned, reverse=True)[:max(0, len(self.owned) - share)]:
            await self._connection.execute("SELECT pg_advisory_unlock($1, $2)", self._space, partition)
            self.owned.discard(partition)
        for partition in range(self._partitions):
            if len(self.owned) >= share:
                break
            if partition not in self.owned and await self._connection.fetchval(
                    "SELECT pg_try_advisory_lock($1, $2)", self._space, partition):
                self.owned.add(partition)
        return self.owned != before

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close(timeout=2)


# ---- applying ----------------------------------------------------------------------------------------

class PartitionOwner:
    """Applies the partitions this node holds (:class:`PartitionLeases`), in one task.

    It reads them with one ephemeral pull consumer (no acks: the positions in PostgreSQL are the truth)
    that starts at the lowest applied position of the partitions it filters; a record below its
    partition's position (applied already) is passed over. The consumer is made again whenever the
    held partitions change or it is gone (a server restart, the inactivity threshold). Each partition's
    batch goes through ``applier`` (applied, flushed, then its position moved). Leases are reconsidered
    between batches only, so a partition is never given up in the middle of its batch.
    """

    def __init__(self, config: StorageConfig, backends: Backends, jetstream: Any,
                 applier: PartitionApplier) -> None:
        self._stream = config.nats_log_stream
        self._backends = backends
        self._jetstream = jetstream
        self.applier = applier
        self.leases = PartitionLeases(backends.index, config.nats_log_stream, config.nats_log_partitions)
        self._positions: dict[int, int] = {}  # owned partition -> next stream sequence to apply
        self._subscription: Any = None
        self._consumer_name: str | None = None
        self._delivered = 0
        self._task: asyncio.Task[None] | None = None
        self._leased_at = 0.0
        self._purged_at = time.monotonic()
        self._purged: dict[int, int] = {}  # partition -> the position the stream was purged up to

    @property
    def owned(self) -> list[int]:
        return sorted(self.leases.owned)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="maif-nats-applier")

    async def stop(self) -> None:
        """Finish the batch being applied (or give up waiting for a server), give up the partitions."""
        self.applier.stopping.set()
        if self._task is not None:
            await self._task
        await self._drop_consumer()
        await self.leases.close()

    async def _run(self) -> None:
        attempts = 0
        while not self.applier.stopping.is_set():
            try:
                if time.monotonic() - self._leased_at >= _LEASE_INTERVAL_S or self._subscription is None:
                    await self._keep_leases()
                if self._subscription is None:
                    await self.applier.sleep(_LEASE_INTERVAL_S)
                    continue
                messages, broken = self._in_order(await self._fetch())
                attempts = 0
            except Exception as error:  # noqa: BLE001 - the server or the network: read again, later
                attempts += 1
                _log.warning("NATS log: reading stream %r failed (%r); retrying", self._stream, error)
                await self._drop_consumer()
                await self.applier.sleep(self.applier.backoff_s(attempts))
                continue
            if not await self._apply(messages):
                break
            if broken:  # read again from the positions: nothing skipped, nothing applied out of order
                await self._drop_consumer()
        if self.applier.failure is not None:
            await self.leases.close()  # the others take the partitions this node cannot apply

    def _in_order(self, messages: list[Any]) -> tuple[list[Any], bool]:
        """The leading run of ``messages`` whose consumer sequences follow on from the last one taken,
        and whether the run was cut. Without acknowledgements the consumer never redelivers, so a
        message lost in transit (delivered while the connection was down) shows as a gap, and a
        consumer that came back from a server restart with older state as a step back; either way the
        reader must start again from the applied positions."""
        for index, message in enumerate(messages):
            sequence = int(message.metadata.sequence.consumer)
            if sequence != self._delivered + 1:
                _log.warning("NATS log: consumer sequence %d after %d; reading again from the positions",
                          sequence, self._delivered)
                return messages[:index], True
            self._delivered = sequence
        return messages, False

    async def _keep_leases(self) -> None:
        """Rebalance the leases; read again from the positions when the held partitions changed, or
        when the consumer is gone."""
        self._leased_at = time.monotonic()
        if self._leased_at - self._purged_at >= _PURGE_INTERVAL_S:
            await self._purge_applied()
        changed = await self.leases.rebalance()
        if changed or (self._subscription is not None and not await self._consumer_alive()):
            await self._drop_consumer()
        if self._subscription is None and self.leases.owned:
            await self._make_consumer()

    async def _purge_applied(self) -> None:
        """Drop from the stream what this node applied (each held partition's records below its
        position, durable in PostgreSQL): the stream keeps the backlog not yet applied, as the local log
        recycles its segments after a checkpoint. A failure is left for the next round."""
        self._purged_at = time.monotonic()
        for partition, position in list(self._positions.items()):
            if partition in self.leases.owned and position > self._purged.get(partition, 1):
                try:
                    await self._jetstream.purge_stream(self._stream, seq=position,
                                                       subject=subject_of(self._stream, partition))
                except Exception as error:  # noqa: BLE001 - the records stay: retried next round
                    _log.debug("NATS log: purging applied records failed: %r", error)
                    return
                self._purged[partition] = position

    async def _consumer_alive(self) -> bool:
        """False when the consumer is gone, or delivered messages this reader never received (nothing
        waits in the subscription: they were lost in transit, and no later message shows the gap)."""
        from nats.js.errors import NotFoundError

        try:
            info = await self._subscription.consumer_info()
        except NotFoundError:
            return False
        delivered = int(getattr(info.delivered, "consumer_seq", 0) or 0)
        return delivered <= self._delivered or self._subscription.pending_msgs > 0

    async def _make_consumer(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        index: Any = self._backends.index
        applied = await index.log_positions(self._stream)
        owned = self.owned
        self._positions = {partition: max(1, applied.get(partition, 1)) for partition in owned}
        subjects = [subject_of(self._stream, partition) for partition in owned]
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=min(self._positions.values()),
            ack_policy=AckPolicy.NONE, inactive_threshold=_CONSUMER_INACTIVE_S, max_waiting=4,
            **({"filter_subject": subjects[0]} if len(subjects) == 1 else {"filter_subjects": subjects}))
        info = await self._jetstream.add_consumer(self._stream, config=config)
        self._consumer_name = info.name
        self._delivered = 0  # the consumer sequence of the last message taken from it
        self._subscription = await self._jetstream.pull_subscribe_bind(
            consumer=info.name, stream=self._stream, pending_bytes_limit=2 * limits.wal_group_bytes_max)

    async def _drop_consumer(self) -> None:
        subscription, self._subscription = self._subscription, None
        name, self._consumer_name = self._consumer_name, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        if name is not None:
            with contextlib.suppress(Exception):  # else the server deletes it once inactive
                await asyncio.wait_for(self._jetstream.delete_consumer(self._stream, name), 2.0)

    async def _fetch(self) -> list[Any]:
        """The next records of the held partitions; a short batch lingers a moment for more (as the
        Kafka log's appliers do)."""
        records_max = limits.engine_apply_batch_records_max
        try:
            messages: list[Any] = await self._subscription.fetch(records_max, timeout=_FETCH_TIMEOUT_S)
        except TimeoutError:  # nats' own TimeoutError too: nothing new
            return []
        if len(messages) < records_max:
            await asyncio.sleep(_APPLY_LINGER_S)
            with contextlib.suppress(TimeoutError):
                messages += await self._subscription.fetch(records_max - len(messages), timeout=0.01)
        return messages

    async def _apply(self, messages: Sequence[Any]) -> bool:
        """Apply the fetched records partition by partition; False when applying must stop."""
        batches: dict[int, list[LogItem | None]] = {}
        last: dict[int, int] = {}
        for message in messages:
            partition = int(message.subject.rsplit(".", 1)[1])
            sequence = int(message.metadata.sequence.stream)
            if partition not in self._positions or sequence < self._positions[partition]:
                continue  # applied already (the consumer starts at the lowest position it reads)
            batches.setdefault(partition, []).extend(self._records_of(message, sequence))
            last[partition] = sequence
        for partition, decoded in batches.items():
            items = [item for item in decoded if item is not None]
            if not await self.applier.apply(partition, items, last[partition] + 1):
                return False
            self._positions[partition] = last[partition] + 1
        return True


    def _records_of(self, message: Any, sequence: int) -> list[LogItem | None]:
        """The log items a message holds (None for each record skipped: counted and logged)."""
        where = f"subject {message.subject} sequence {sequence}"
        count = (message.headers or {}).get(RECORDS_HEADER)
        if count is None:
            return [self.applier.decode(message.data, where, sequence << RECORD_BITS)]
        try:
            records = unpack_records(message.data, count)
        except MAIFError as error:
            return [self.applier.skip(where, error.message)]
        return [self.applier.decode(record, f"{where} record {index}", (sequence << RECORD_BITS) | index)
                for index, record in enumerate(records)]


# ---- the whole log -----------------------------------------------------------------------------------

class NatsLog(SharedLog):
    """The connection, the committer, this node's partition owner and the watch over this node's
    pending writes."""

    component = NATS

    def __init__(self, config: StorageConfig, backends: Backends, client: Any, committer: NatsCommitter,
                 owner: PartitionOwner) -> None:
        super().__init__(config, backends, committer, owner.applier)
        self.client = client
        self.owner = owner

    @classmethod
    async def open(cls, config: StorageConfig, backends: Backends, applier: Applier,
                   maintenance: asyncio.Lock, on_commit: Callable[[int, int, Any], None]) -> NatsLog:
        """Reach the server (a ConfigError naming NATS and ``nats_url`` when it does not answer), create
        the stream if missing (ConfigError if it exists with other settings), start this node's
        partition owner."""
        sharedlog.check_config(config)
        assert config.nats_url is not None  # StorageConfig refuses log_backend "nats" without it
        server = _server_of(config.nats_url)
        client = await _connect(config.nats_url, server, config.nats_write_timeout_s)
        try:
            jetstream = client.jetstream(timeout=_REQUEST_TIMEOUT_S)
            await _ensure_stream(jetstream, config, server)
            committer = NatsCommitter(jetstream, config.nats_log_stream, config.nats_log_partitions, server,
                                      batch_size=config.batch_size, batch_timeout_ms=config.batch_timeout_ms,
                                      write_timeout_s=config.nats_write_timeout_s,
                                      record_bytes_max=int(client.max_payload) - _PUBLISH_HEADROOM_BYTES,
                                      health=backends.health, on_commit=on_commit)
            log: NatsLog
            partition_applier = PartitionApplier(
                NATS, config, backends, applier, maintenance,
                on_applied=lambda partition, position: log.positions_applied({partition: position}))
            owner = PartitionOwner(config, backends, jetstream, partition_applier)
            log = cls(config, backends, client, committer, owner)
            owner.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        return log

    def _stop_steps(self) -> list[Callable[[], Any]]:
        return [self.owner.stop, self._close_client]

    async def _close_client(self) -> None:
        # Not drain(): it waits for pull subscriptions that never finish (agents/queue.py found it).
        with contextlib.suppress(Exception):
            await self.client.flush(timeout=2)
        await self.client.close()

    def stats(self) -> dict[str, Any]:
        return {
            "nats_stream": self._config.nats_log_stream,
            "nats_partitions_owned": self.owner.owned,
            **self.applier_stats("nats"),
            "nats_publish_groups_total": self.committer.groups_total,
        }


async def _connect(url: str, server: str, timeout_s: float) -> Any:
    try:
        import nats.aio.client
        import nats.errors
    except ImportError as error:
        raise ConfigError(f'log_backend "nats" needs a library that is not installed ({error.name})',
                          hint="install the client libraries: pip install 'maif[distributed]'") from None
    client = nats.aio.client.Client()

    async def quiet(error: Exception) -> None:  # reconnection attempts are expected, not news
        del error

    try:
        await asyncio.wait_for(client.connect(url, error_cb=quiet, max_reconnect_attempts=-1,
                                              reconnect_time_wait=0.25,  # type: ignore[arg-type]
                                              connect_timeout=2, allow_reconnect=True),
                               max(timeout_s, 1.0) * 2)
    except (TimeoutError, OSError, nats.errors.Error) as error:
        with contextlib.suppress(Exception):
            await client.close()
        raise ConfigError(f"NATS (nats_url): cannot reach {server}: {str(error) or type(error).__name__}",
                          hint="start the server or correct nats_url") from None
    return client


async def _ensure_stream(jetstream: Any, config: StorageConfig, server: str) -> None:
    """Create the stream unless it exists; an existing one must have the settings this log relies on
    (never changed here: its partition count decides where each agent's records go)."""
    import nats.errors
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    name = config.nats_log_stream
    wanted = StreamConfig(name=name, subjects=[f"{name}.*"], storage=StorageType.FILE,
                          retention=RetentionPolicy.LIMITS, max_msg_size=-1,
                          metadata={PARTITIONS_METADATA: str(config.nats_log_partitions)})
    try:
        try:
            info = await jetstream.stream_info(name)
        except NotFoundError:
            await jetstream.add_stream(wanted)
            return
    except (TimeoutError, nats.errors.Error) as error:
        raise ConfigError(f"NATS (nats_url): {server} did not set up stream {name!r}: "
                          f"{str(error) or type(error).__name__}",
                          hint="is JetStream enabled on the server?") from None
    existing = info.config
    differences = [what for what, same in (
        ("subjects", list(existing.subjects or []) == wanted.subjects),
        ("storage", existing.storage == StorageType.FILE),
        ("retention", existing.retention == RetentionPolicy.LIMITS),
        ("partitions", (existing.metadata or {}).get(PARTITIONS_METADATA) == str(config.nats_log_partitions)),
    ) if not same]
    if differences:
        raise ConfigError(
            f"NATS stream {name!r} exists with other settings than this log needs ({', '.join(differences)}"
            f": subjects {existing.subjects}, storage {existing.storage}, retention {existing.retention}, "
            f"partitions {(existing.metadata or {}).get(PARTITIONS_METADATA)})",
            hint=f"use another nats_log_stream, or set nats_log_partitions to the stream's; subjects "
                 f"[{name}.*], file storage and limits retention are required")


__all__ = ["NATS", "NatsCommitter", "NatsLog", "PartitionLeases", "PartitionOwner", "partition_of"]
