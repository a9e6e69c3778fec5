"""The distributed agent task queue on NATS JetStream (docs/adr/0074-distributed-agents.md).

    queue = await TaskQueue.connect(storage_config.nats_url, agent_config)
    await queue.publish(AgentTask("t1", "text_analysis", {"text": "hello"}))   # True; False: a duplicate
    messages = await queue.pull(8, timeout_s=1.0)                           # a worker's side

What lives on the broker, all named after ``agent.task_stream`` (default MAIF_TASKS):

- the stream ``<stream>`` (subject ``<stream>.tasks``): work-queue retention (a task is deleted once a
  worker acknowledges it), file storage, bounded by ``task_stream_messages_max`` and
  ``task_stream_bytes_max`` with discard=new (a publish into a full stream is refused: QueueFullError),
  messages at most ``limits.queue_task_bytes_max``, and a duplicate window: a task id published again
  within it is stored once (a publisher retrying after a lost acknowledgement);
- the durable pull consumer ``workers``: explicit acknowledgement, ``task_ack_wait_s``, and
  ``max_deliver = max_retries + 1`` (each delivery is one attempt). A task whose last attempt died
  without an answer (its worker killed or hung) is no longer delivered but stays in the stream; the
  broker's MAX_DELIVERIES advisory for it is kept in the stream ``<stream>_EXHAUSTED``, and
  :meth:`TaskQueue.sweep_exhausted`, which every worker runs every few seconds, dead-letters and deletes
  such tasks (so a task that kills its workers stops, and nothing is left behind unseen);
- the stream ``<stream>_DEAD`` (subject ``<stream>.dead``): dead letters, the original message as body
  and the reason in headers, keeping the newest ``dead_letter_messages_max`` (limits retention, discard
  old);
- the key-value bucket ``<stream>_WORKERS``: one heartbeat per live worker (its load and counters), each
  expiring after ``limits`` of silence, the bucket bounded in bytes.

A task on the wire is MessagePack (:class:`TaskMessage`); :func:`decode_task` is the only way a message
becomes an :class:`AgentTask`, and refuses (TaskMessageError) anything malformed, oversized or of an
unknown type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from maif import limits
from maif.agents.handlers.registry import HandlerRegistry
from maif.agents.tasks import AgentTask
from maif.config import AgentConfig
from maif.errors import (
    AgentError,
    BackendUnavailableError,
    CredentialsError,
    LimitExceededError,
    MAIFError,
    QueueFullError,
    TaskMessageError,
)

CONSUMER = "workers"
DUPLICATE_WINDOW_S = 120.0
HEARTBEAT_INTERVAL_S = 2.0
HEARTBEAT_EXPIRY_S = 10.0
_REQUEST_TIMEOUT_S = 5.0
_STREAM_FULL_CODES = frozenset({10077, 10078, 10047})  # max messages / max bytes / insufficient resources
_MESSAGE_TOO_LARGE_CODE = 10054

# Headers of a dead letter (the body is the original message, as it was on the queue).
REASON_HEADER = "Maif-Reason"
TASK_ID_HEADER = "Maif-Task-Id"
DELIVERIES_HEADER = "Maif-Deliveries"
WORKER_HEADER = "Maif-Worker"


class TaskMessage(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A task as it travels on the queue."""

    task_id: str
    task_type: str
    input_data: dict[str, Any]
    priority: int = 1
    input_blocks: tuple[str, ...] = ()
    submitted_at: float = 0.0


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(TaskMessage)


def encode_task(task: AgentTask) -> bytes:
    """The task as a queue message; LimitExceededError above ``limits.queue_task_bytes_max``."""
    submitted_at = time.time() if task.submitted_at is None else task.submitted_at
    message = TaskMessage(
        task.task_id, task.task_type, task.input_data, task.priority, task.input_blocks, submitted_at
    )
    try:
        data = _ENCODER.encode(message)
    except (TypeError, msgspec.EncodeError) as error:
        raise AgentError(
            f"task {task.task_id!r}: input_data is not MessagePack-encodable: {error}"
        ) from None
    if len(data) > limits.queue_task_bytes_max:
        raise LimitExceededError("encoded task", len(data), limits.queue_task_bytes_max)
    return data


def decode_task(data: bytes, registry: HandlerRegistry) -> AgentTask:
    """The task a queue message holds; TaskMessageError (the reason) when it is not a valid task."""
    if len(data) > limits.queue_task_bytes_max:
        raise TaskMessageError(f"task message of {len(data)} bytes exceeds {limits.queue_task_bytes_max}")
    try:
        message = _DECODER.decode(data)
    except msgspec.DecodeError as error:
        raise TaskMessageError(f"not a task message: {error}") from None
    try:
        task = AgentTask(
            message.task_id, message.task_type, message.input_data, message.priority, message.input_blocks,
            message.submitted_at,
        )
    except AgentError as error:
        raise TaskMessageError(f"invalid task: {error.message}") from None
    if len(task.input_blocks) > limits.agent_input_blocks_max:
        raise TaskMessageError(
            f"task {task.task_id!r} names {len(task.input_blocks)} input blocks, more than "
            f"{limits.agent_input_blocks_max}"
        )
    try:
        registry.get(task.task_type)
    except AgentError:
        raise TaskMessageError(f"task {task.task_id!r} has unknown task type {task.task_type!r}") from None
    return task


class TaskQueue:
    """One connection to the broker: publish tasks, pull them, dead-letter them, read the queue's state."""

    def __init__(self, client: Any, config: AgentConfig) -> None:
        self._client = client
        self._js = client.jetstream(timeout=_REQUEST_TIMEOUT_S)
        self.config = config
        self.stream = config.task_stream
        self.dead_stream = f"{config.task_stream}_DEAD"
        self.task_subject = f"{config.task_stream}.tasks"
        self.dead_subject = f"{config.task_stream}.dead"
        self.max_deliver = config.max_retries + 1
        self.exhausted_stream = f"{config.task_stream}_EXHAUSTED"
        self._subscription: Any = None
        self._sweeper: Any = None
        self._heartbeats: Any = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    @classmethod
    async def connect(cls, nats_url: str | None, config: AgentConfig) -> TaskQueue:
        """Connect and make sure the streams, consumer and heartbeat bucket exist (idempotent).

        BackendUnavailableError (component "nats", naming the storage key ``nats_url``) when the broker
        does not answer within ``config.task_queue_connect_timeout_s``; CredentialsError when it refuses
        the credentials. After the first connection the client reconnects on its own, for ever.
        """
        import nats
        import nats.aio.client

        if not nats_url:
            raise AgentError("the distributed task queue needs the storage setting nats_url")
        timeout_s = config.task_queue_connect_timeout_s
        client = nats.aio.client.Client()

        async def quiet(error: Exception) -> None:  # reconnection attempts are expected, not news
            del error

        try:
            await asyncio.wait_for(
                client.connect(
                    nats_url,
                    error_cb=quiet,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.25,  # type: ignore[arg-type]  # float works; its hint is int
                    connect_timeout=2,
                    allow_reconnect=True,
                ),
                timeout_s,
            )
        except (TimeoutError, OSError, nats.errors.Error) as error:
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(error, nats.errors.AuthorizationError):
                raise CredentialsError("NATS refused the credentials in nats_url") from None
            raise BackendUnavailableError(
                f"NATS (storage setting nats_url) did not answer within {timeout_s:g} s",
                component="nats",
                hint="start it (scripts/services start) or correct nats_url",
            ) from None
        queue = cls(client, config)
        try:
            await queue._declare()
        except BaseException:
            await queue.close()
            raise
        return queue

    async def close(self) -> None:
        """Send what is buffered (the last acks), then disconnect. Not ``drain()``: it waits for pull
        subscriptions that never empty."""
        with contextlib.suppress(Exception):
            await self._client.flush(timeout=2)
        with contextlib.suppress(Exception):
            await self._client.close()

    async def __aenter__(self) -> TaskQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _declare(self) -> None:
        from nats.js.api import (
            AckPolicy,
            ConsumerConfig,
            DiscardPolicy,
            KeyValueConfig,
            RetentionPolicy,
            StorageType,
            StreamConfig,
        )

        config = self.config
        await self._ensure_stream(
            StreamConfig(
                name=self.stream,
                subjects=[self.task_subject],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                discard=DiscardPolicy.NEW,
                max_msgs=config.task_stream_messages_max,
                max_bytes=config.task_stream_bytes_max,
                max_msg_size=limits.queue_task_bytes_max + 1024,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
        await self._ensure_stream(
            StreamConfig(
                name=self.dead_stream,
                subjects=[self.dead_subject],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                discard=DiscardPolicy.OLD,
                max_msgs=config.dead_letter_messages_max,
                max_msg_size=limits.queue_task_bytes_max + 4096,
                duplicate_window=DUPLICATE_WINDOW_S,
            )
        )
        consumer = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.task_ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=limits.worker_in_flight_max,
            filter_subject=self.task_subject,
        )
        await self._guard(self._js.add_consumer(self.stream, consumer), "create the workers' consumer")
        await self._ensure_stream(
            StreamConfig(
                name=self.exhausted_stream,
                subjects=[f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{CONSUMER}"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_msgs=config.dead_letter_messages_max,
            )
        )
        sweeper = ConsumerConfig(durable_name="sweeper", ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0)
        await self._guard(self._js.add_consumer(self.exhausted_stream, sweeper), "create the sweeper")
        bucket = KeyValueConfig(
            bucket=f"{self.stream}_WORKERS",
            history=1,
            ttl=HEARTBEAT_EXPIRY_S,
            max_value_size=limits.worker_heartbeat_bytes_max,
            max_bytes=limits.cluster_workers_max * limits.worker_heartbeat_bytes_max,
            storage=StorageType.MEMORY,
        )
        self._heartbeats = await self._guard(self._js.create_key_value(config=bucket), "create the bucket")

    async def _ensure_stream(self, config: Any) -> None:
        from nats.js.errors import NotFoundError

        try:
            await self._js.stream_info(config.name)
        except NotFoundError:
            await self._guard(self._js.add_stream(config), f"create stream {config.name}")
            return
        await self._guard(self._js.update_stream(config), f"update stream {config.name}")

    async def _guard(self, operation: Any, what: str) -> Any:
        """Await a broker call, converting its failures to MAIF errors at this boundary."""
        import nats

        try:
            return await operation
        except nats.js.errors.APIError as error:
            if error.err_code in _STREAM_FULL_CODES:
                raise QueueFullError(
                    f"the task stream {self.stream} is full ({error.description})",
                    hint="retry later (workers drain it), or raise task_stream_messages_max / "
                    "task_stream_bytes_max",
                ) from None
            raise AgentError(f"NATS refused to {what}: {error.description} (code {error.err_code})") from None
        except (TimeoutError, nats.errors.Error, OSError) as error:
            raise BackendUnavailableError(
                f"NATS (nats_url) did not answer to {what}: {type(error).__name__}", component="nats"
            ) from None

    # ---- submitting --------------------------------------------------------------------------------
    async def publish(self, task: AgentTask, *, timeout_s: float = 30.0) -> bool:
        """Put ``task`` on the queue: True once the broker stored it, False when the same task id was
        published within the duplicate window. While the broker is unreachable it retries for up to
        ``timeout_s`` (the same message id, so a retry after a lost acknowledgement stores nothing
        twice), then raises BackendUnavailableError; QueueFullError when the stream is full."""
        data = encode_task(task)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ack = await self._guard(
                    self._js.publish(self.task_subject, data, headers={"Nats-Msg-Id": task.task_id}),
                    "store a task",
                )
                return not ack.duplicate
            except BackendUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    # ---- consuming ---------------------------------------------------------------------------------
    async def pull(self, count: int, *, timeout_s: float) -> list[Any]:
        """Up to ``count`` delivered messages (fewer, or none after ``timeout_s``); never raises for an
        empty queue. BackendUnavailableError while the broker is away."""
        import nats

        if self._subscription is None:
            self._subscription = await self._guard(
                self._js.pull_subscribe_bind(CONSUMER, self.stream), "bind to the workers' consumer"
            )
        try:
            return list(await self._subscription.fetch(max(1, count), timeout=timeout_s))
        except TimeoutError:  # nats.errors.TimeoutError too: nothing to deliver
            if not self._client.is_connected:
                raise BackendUnavailableError("NATS (nats_url) is unreachable", component="nats") from None
            return []
        except (nats.errors.Error, OSError) as error:
            raise BackendUnavailableError(
                f"NATS (nats_url) did not deliver: {type(error).__name__}", component="nats"
            ) from None

    async def dead_letter(self, data: bytes, reason: str, *, task_id: str, deliveries: int,
                          sequence: int, worker: str) -> None:
        """Publish a dead letter (the original message and why); idempotent per queue sequence."""
        headers = {
            "Nats-Msg-Id": f"dead:{self.stream}:{sequence}",
            REASON_HEADER: " ".join(reason[: limits.queue_dead_letter_reason_chars_max].split()),
            TASK_ID_HEADER: task_id[: limits.task_id_chars_max],
            DELIVERIES_HEADER: str(deliveries),
            WORKER_HEADER: worker,
        }
        await self._guard(self._js.publish(self.dead_subject, data, headers=headers), "store a dead letter")

    async def sweep_exhausted(self, worker: str, done: Callable[[str], Awaitable[bool]],
                              count_max: int = 256) -> int:
        """Dead-letter and delete the tasks the broker gave up on (their last delivery went unanswered);
        how many were dead-lettered. A task whose result ``done(task_id)`` finds stored (its answers were
        what got lost) is only deleted. The broker's MAX_DELIVERIES advisories are kept in the stream
        ``<S>_EXHAUSTED`` (so none is missed while no worker runs) and taken from it like tasks; handling
        one is idempotent (the dead letter's id is the task's sequence; a task already gone is skipped)."""
        import nats
        from nats.js.errors import NotFoundError

        if self._sweeper is None:
            self._sweeper = await self._guard(
                self._js.pull_subscribe_bind("sweeper", self.exhausted_stream), "bind to the advisories")
        try:
            advisories = await self._sweeper.fetch(count_max, timeout=0.5)
        except TimeoutError:
            return 0
        except (nats.errors.Error, OSError) as error:
            raise BackendUnavailableError(f"NATS did not deliver advisories: {type(error).__name__}",
                                          component="nats") from None
        swept = 0
        for advisory in advisories:
            try:
                sequence = int(json.loads(advisory.data)["stream_seq"])
                message = await self._js.get_msg(self.stream, sequence)
            except (ValueError, KeyError, TypeError, NotFoundError):
                await advisory.ack()  # not an advisory we understand, or the task is gone already
                continue
            except (TimeoutError, nats.errors.Error) as error:
                raise BackendUnavailableError(f"NATS did not answer a sweep: {type(error).__name__}",
                                              component="nats") from None
            task_id = _task_id_of(message.data or b"")
            if not (task_id and await done(task_id)):
                reason = (f"delivered {self.max_deliver} times without an answer (each worker that took it "
                          "died, hung or lost the broker before it acknowledged)")
                await self.dead_letter(message.data or b"", reason, task_id=task_id,
                                       deliveries=self.max_deliver, sequence=sequence, worker=worker)
                swept += 1
            with contextlib.suppress(NotFoundError):
                await self._js.delete_msg(self.stream, sequence)
            await advisory.ack()
        return swept

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        """The oldest ``count`` dead letters still kept: task id, reason, deliveries, worker, size."""
        from nats.js.api import DeliverPolicy

        letters: list[dict[str, Any]] = []
        subscription = await self._guard(
            self._js.pull_subscribe(self.dead_subject, stream=self.dead_stream,
                                    config=_ephemeral(DeliverPolicy.ALL)),
            "read dead letters",
        )
        try:
            while len(letters) < count:
                try:
                    batch = await subscription.fetch(min(256, count - len(letters)), timeout=1.0)
                except Exception:  # noqa: BLE001 - a timeout: nothing more to read
                    break
                for message in batch:
                    headers = message.headers or {}
                    letters.append({
                        "task_id": headers.get(TASK_ID_HEADER, ""),
                        "reason": headers.get(REASON_HEADER, ""),
                        "deliveries": int(headers.get(DELIVERIES_HEADER, "0") or 0),
                        "worker": headers.get(WORKER_HEADER, ""),
                        "bytes": len(message.data),
                    })
                if not batch or batch[-1].metadata.num_pending == 0:
                    break  # the last one kept: no need to wait for the fetch to time out
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        return letters

    # ---- state -------------------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """The queue as the broker sees it: tasks waiting, delivered but unacknowledged, redelivered,
        and dead letters kept."""
        stream = await self._guard(self._js.stream_info(self.stream), "describe the task stream")
        consumer = await self._guard(self._js.consumer_info(self.stream, CONSUMER), "describe the consumer")
        dead = await self._guard(self._js.stream_info(self.dead_stream), "describe the dead letters")
        return {
            "queue_depth": int(stream.state.messages),
            "queue_bytes": int(stream.state.bytes),
            "pending": int(consumer.num_pending),
            "ack_pending": int(consumer.num_ack_pending),
            "redelivered": int(consumer.num_redelivered),
            "dead_letters": int(dead.state.messages),
        }

    async def put_heartbeat(self, worker_id: str, heartbeat: dict[str, Any]) -> None:
        data = json.dumps(heartbeat, separators=(",", ":")).encode()
        if len(data) > limits.worker_heartbeat_bytes_max:
            raise LimitExceededError("worker heartbeat", len(data), limits.worker_heartbeat_bytes_max)
        await self._guard(self._heartbeats.put(_kv_key(worker_id), data), "store a heartbeat")

    async def delete_heartbeat(self, worker_id: str) -> None:
        with contextlib.suppress(MAIFError):
            await self._guard(self._heartbeats.delete(_kv_key(worker_id)), "delete a heartbeat")

    async def heartbeats(self) -> list[dict[str, Any]]:
        """The latest heartbeat of every live worker (expired ones are gone)."""
        import nats

        # The keys from the bucket's stream subjects: kv.keys() would leave an ordered consumer on the
        # broker behind every call.
        bucket = f"{self.stream}_WORKERS"
        info = await self._guard(self._js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>"),
                                 "list heartbeats")
        keys = [subject.split(".", 2)[2] for subject in (info.state.subjects or {})]
        beats: list[dict[str, Any]] = []
        for key in keys[: limits.cluster_workers_max]:
            try:
                entry = await self._heartbeats.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue
            except (TimeoutError, nats.errors.Error) as error:
                raise BackendUnavailableError(f"NATS did not return a heartbeat: {type(error).__name__}",
                                              component="nats") from None
            if entry.value:
                with contextlib.suppress(ValueError):
                    beats.append(json.loads(entry.value))
        return beats


_WORKER_TOTALS = ("in_flight", "capacity", "agents", "completed", "failed_attempts", "dead_lettered",
                  "invalid", "already_done", "redeliveries", "tasks_per_s")


async def cluster_stats(queue: TaskQueue) -> dict[str, Any]:
    """The whole cluster from the broker: the queue's state, every live worker's heartbeat, and totals
    over the workers (tasks/s is the sum of the workers' last-interval rates)."""
    state = await queue.stats()
    workers = sorted(await queue.heartbeats(), key=lambda beat: str(beat.get("worker_id", "")))
    totals = {key: round(sum(float(beat.get(key, 0) or 0) for beat in workers), 3) for key in _WORKER_TOTALS}
    return {"mode": "distributed", "stream": queue.stream, "workers": len(workers), **state,
            "totals": totals, "per_worker": workers}


def _task_id_of(data: bytes) -> str:
    """The task id of a message, if it has one (for a dead letter's header), else ""."""
    try:
        message = msgspec.msgpack.decode(data[: limits.queue_task_bytes_max])
    except msgspec.DecodeError:
        return ""
    task_id = message.get("task_id") if isinstance(message, dict) else None
    return task_id[: limits.task_id_chars_max] if isinstance(task_id, str) else ""


def _ephemeral(deliver_policy: Any) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig

    return ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=deliver_policy, inactive_threshold=30.0)


def _kv_key(worker_id: str) -> str:
    """A worker id as a key-value key (letters, digits, '-', '_', '=', '.' and '/' only)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_=/") else "_" for c in worker_id)[:200]


__all__ = ["CONSUMER", "TaskMessage", "TaskQueue", "cluster_stats", "decode_task", "encode_task"]
