"""A worker: agents in one process that pull tasks from the NATS JetStream queue and store their results
in the shared store (docs/adr/0074-distributed-agents.md). `maif worker` runs one; a distributed
``maif_agent_cluster`` may run one in-process.

Per delivered message, in order:

1. decode it (:func:`maif.agents.queue.decode_task`); not a valid task: dead letter with the reason, ack;
2. the task's first result block (``<task_stream>:<task>:0``) or its dead-letter record already stored
   (a previous delivery finished but its ack was lost): ack without running (checked for all the
   messages of one fetch together);
3. run it in the least-loaded agent (one attempt per delivery); while it runs, the worker tells the
   broker it is in progress every third of ``task_ack_wait_s``, so only a dead or hung worker's task is
   delivered again;
4. success: wait until the result is applied to the shared store (visible to every node), then ack;
   the tasks that finish while one such wait runs share the next one (:meth:`Worker._wait_applied`).
   Failure: nak with backoff (the next attempt may run on any worker) or, on the last attempt, store
   the dead-letter record, publish the dead letter, ack.

Every block a worker stores (results and dead-letter records) is signed by the worker's Ed25519 key
(``worker_key_file``; docs/adr/0085-signed-worker-results.md), its signature block written in the same
``write_blocks`` call; :func:`maif.agents.provenance.verify_worker_result` checks it on any node.

A task whose last delivery went unanswered (its worker was killed or hung) is found by the sweep every
worker runs every ``task_sweep_interval_s`` (:meth:`TaskQueue.sweep_exhausted`) and dead-lettered.

Pulling is the load balancing: a worker fetches only as many tasks as its agents have free slots
(``agents x batch_size`` tasks running at once), so a slow worker takes fewer. A finished task frees its
slot at once; it waits for the apply (and its ack) outside the slots, with at most ``task_queue_size``
tasks held in all.

Stopping (:meth:`Worker.stop`, SIGTERM in `maif worker`): no more pulls; tasks accepted but not started
are handed back at once (nak without delay); running tasks finish and are acknowledged; then the agents
stop and the worker returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from maif import limits
from maif.agents.agent import MAIFAgent
from maif.agents.handlers.registry import HandlerRegistry
from maif.agents.provenance import WorkerSigner, block_id_for, dead_letter_block_id
from maif.agents.queue import HEARTBEAT_INTERVAL_S, TaskQueue, decode_task
from maif.agents.tasks import AgentTask
from maif.config import AgentConfig, user_config_dir
from maif.errors import (
    AgentError,
    BackendUnavailableError,
    ConfigError,
    MAIFError,
    TaskFailedError,
    TaskMessageError,
)
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.signing import load_or_create_seed_key

log = logging.getLogger("maif.agents.worker")
_BACKOFF_BASE_S = 0.05


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def worker_key_file(config: AgentConfig) -> Path:
    """Where the worker's signing key is read (and created on first run)."""
    if config.worker_key_file is not None:
        return Path(config.worker_key_file).expanduser()
    return user_config_dir() / "worker.key"


def worker_signer(config: AgentConfig, data_dir: str | os.PathLike[str] | None) -> WorkerSigner:
    """The worker's signer, from ``worker_key_file``; a key file inside the store's ``data_dir`` is
    refused: a copy of the store (a backup, a stolen disk image) would carry the key that signs it."""
    path = worker_key_file(config)
    if data_dir is not None and Path(os.path.realpath(path)).is_relative_to(os.path.realpath(data_dir)):
        raise ConfigError(
            f"the worker key file {path} is inside the store's data_dir {data_dir}",
            hint=f"set agent.worker_key_file to a path outside it (default {user_config_dir()}/worker.key)",
        )
    return WorkerSigner(load_or_create_seed_key(path, "worker key"))


class Worker:
    """``agents`` agents over ``storage`` pulling from ``queue``; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        storage: Any,
        queue: TaskQueue,
        config: AgentConfig,
        *,
        agents: int = 1,
        worker_id: str | None = None,
        registry: HandlerRegistry | None = None,
        signer: WorkerSigner | None = None,
    ) -> None:
        """``signer`` defaults to :func:`worker_signer` of ``config`` (the key file, created if
        missing)."""
        if not 1 <= agents <= 100_000:
            raise AgentError("a worker runs between 1 and 100000 agents")
        self.storage = storage
        self.queue = queue
        self.config = config
        self.worker_id = worker_id or default_worker_id()
        self.namespace = config.task_stream
        self.capacity = min(agents * config.batch_size, limits.worker_in_flight_max)
        self.held_max = min(max(self.capacity, config.task_queue_size), limits.worker_in_flight_max)
        self._registry = registry or HandlerRegistry.with_builtins()
        store_directory = getattr(getattr(storage, "config", None), "data_dir", None)
        self.signer = signer or worker_signer(config, store_directory)
        self._executor = ThreadPoolExecutor(config.processing_threads, thread_name_prefix="maif-worker")
        one_attempt = msgspec.structs.replace(config, max_retries=0, task_queue_size=self.held_max)
        # Every agent of every worker of this queue is the one producer ``<task_stream>``, and results
        # are reproducible: a task run twice (its first worker killed after storing, before its store
        # applied) by a deterministic handler stores the same bytes, which the shared store takes as
        # the same write, not a conflict (ADR 0074). Which worker ran what is in the worker's heartbeat.
        self.agents = [
            MAIFAgent(
                self.namespace,
                storage,
                one_attempt,
                registry=self._registry,
                executor=self._executor,
                block_namespace=self.namespace,
                store_dead_letters=False,
                reproducible_results=True,
                block_signer=self.signer,
            )
            for _ in range(agents)
        ]
        self._held: dict[int, Any] = {}  # stream sequence -> message pulled and not yet answered
        self._apply_round: asyncio.Future[None] | None = None  # the next wait for the apply, not begun
        self._apply_rounds: asyncio.Task[None] | None = None
        # Of those, the ones that hold a slot: from the fetch (so a fetch in flight while the last one is
        # checked cannot take more than the free slots) until their agent has a result, or until they
        # are answered without running.
        self._slotted: set[int] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_agent = 0
        self.counters = dict.fromkeys(
            ("completed", "failed_attempts", "dead_lettered", "invalid", "already_done", "redeliveries",
             "handed_back", "pulls_failed"),
            0,
        )
        self._started_at = time.time()
        self._rate = (time.monotonic(), 0)
        self.tasks_per_s = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to drain and return (safe from a signal handler)."""
        self._stopping.set()

    @property
    def in_flight(self) -> int:
        return len(self._held)

    async def run(self) -> None:
        # A restarted worker first applies what its log still holds (results of tasks whose ack was
        # lost), so a redelivery finds them stored instead of running the task again.
        await self._wait_applied()
        for agent in self.agents:
            await agent.start()
        background = [
            asyncio.create_task(every(max(0.5, self.config.task_ack_wait_s / 3), self._keep_in_progress),
                                name="maif-worker-progress"),
            asyncio.create_task(every(HEARTBEAT_INTERVAL_S, self._put_heartbeat),
                                name="maif-worker-heartbeat"),
            asyncio.create_task(every(self.config.task_sweep_interval_s, self._sweep),
                                name="maif-worker-sweep"),
        ]
        try:
            await self._pull_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.gather(*(agent.stop() for agent in self.agents), return_exceptions=True)
            self._executor.shutdown(wait=True)
            await self.queue.delete_heartbeat(self.worker_id)

    async def _pull_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            free = min(self.capacity - len(self._slotted), self.held_max - len(self._held))
            if free <= 0:
                self._slot_freed.clear()
                await _first(self._slot_freed.wait(), self._stopping.wait())
                continue
            try:
                messages = await self.queue.pull(min(free, limits.queue_fetch_batch_max), timeout_s=1.0)
                failures = 0
            except BackendUnavailableError as error:
                self.counters["pulls_failed"] += 1
                failures += 1
                if failures == 1:
                    log.warning("worker %s: %s; retrying", self.worker_id, error.message)
                await _first(asyncio.sleep(min(2.0, 0.1 * failures)), self._stopping.wait())
                continue
            if not messages:
                continue
            for message in messages:
                self._held[message.metadata.sequence.stream] = message
                self._slotted.add(message.metadata.sequence.stream)
            handler = asyncio.create_task(self._handle_fetch(messages))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _drain(self) -> None:
        """Hand back what has not started, let what runs finish (each handler acks its own)."""
        for agent in self.agents:
            withdrawn = agent.withdraw_queued()
            self.counters["handed_back"] += len(withdrawn)
        if self._handlers:
            await asyncio.wait(set(self._handlers))

    # ---- the messages of one fetch -----------------------------------------------------------------
    async def _handle_fetch(self, messages: list[Any]) -> None:
        """Decode the messages, ask the store once which of their tasks are done, then handle each."""
        decoded: list[AgentTask | TaskMessageError] = []
        for message in messages:
            try:
                decoded.append(decode_task(message.data, self._registry))
            except TaskMessageError as error:
                decoded.append(error)
        try:
            done: set[str] | None = await self._stored_tasks([
                (task, int(message.metadata.num_delivered))
                for message, task in zip(messages, decoded, strict=True) if isinstance(task, AgentTask)
            ])
        except MAIFError as error:  # the store is away: each message asks again when it is handled
            log.warning("worker %s: checking %d tasks failed: %s", self.worker_id, len(messages),
                        error.message)
            done = None
        await asyncio.gather(*(
            self._handle(message, task,
                         None if done is None else isinstance(task, AgentTask) and task.task_id in done)
            for message, task in zip(messages, decoded, strict=True)
        ))

    async def _stored_tasks(self, tasks: list[tuple[AgentTask, int]]) -> set[str]:
        """The ids of ``tasks`` (with their delivery counts) whose result, or dead-letter record on a
        redelivery, is stored: one existence lookup for a whole fetch (``MAIFStorage.exists_many``: the
        log's map, then one index query)."""
        ids = [(task.task_id, block_id_for(self.namespace, task.task_id, 0)) for task, _ in tasks]
        ids += [(task.task_id, dead_letter_block_id(self.namespace, task.task_id))
                for task, deliveries in tasks if deliveries > 1]
        stored: set[str] = set()
        step = limits.index_get_many_max
        for start in range(0, len(ids), step):
            stored |= await self.storage.exists_many([block_id for _, block_id in ids[start : start + step]])
        return {task_id for task_id, block_id in ids if block_id in stored}

    # ---- one message -------------------------------------------------------------------------------
    async def _handle(self, message: Any, task: AgentTask | TaskMessageError, done: bool | None) -> None:
        sequence = message.metadata.sequence.stream
        try:
            await self._process(message, task, done)
        except Exception:  # a bug must not kill the worker: the message is delivered again later
            log.exception("worker %s: message %d failed unexpectedly", self.worker_id, sequence)
        finally:
            self._held.pop(sequence, None)
            self._free_slot(sequence)

    def _free_slot(self, sequence: int) -> None:
        self._slotted.discard(sequence)
        self._slot_freed.set()

    async def _process(self, message: Any, task: AgentTask | TaskMessageError, done: bool | None) -> None:
        """``done``: whether the task's result is already stored (None: not known yet, ask the store)."""
        deliveries = int(message.metadata.num_delivered)
        if deliveries > 1:
            self.counters["redeliveries"] += 1
        if isinstance(task, TaskMessageError):
            self.counters["invalid"] += 1
            await self._dead_letter(message, "", task.message, deliveries)
            return
        if done if done is not None else await self._already_stored(task, deliveries):
            self.counters["already_done"] += 1
            await _acked(message)
            return
        agent = self._least_loaded()
        try:
            try:
                await agent.submit_task(task)
                await agent.result(task.task_id)
            finally:
                self._free_slot(message.metadata.sequence.stream)
        except TaskFailedError as error:
            await self._failed_attempt(message, task, error.message, deliveries)
        except AgentError:  # withdrawn by a draining worker: back to the queue at once
            await _nakked(message, 0.0)
        else:
            await self._wait_applied()
            await _acked(message)
            self.counters["completed"] += 1
        finally:
            agent.forget(task.task_id)

    async def _failed_attempt(self, message: Any, task: AgentTask, reason: str, deliveries: int) -> None:
        self.counters["failed_attempts"] += 1
        if deliveries <= self.config.max_retries:
            delay = min(_BACKOFF_BASE_S * 2 ** (deliveries - 1), limits.agent_retry_backoff_s_max)
            await _nakked(message, delay)
            return
        await self._give_up(message, task, reason, deliveries)

    async def _give_up(self, message: Any, task: AgentTask, reason: str, deliveries: int) -> None:
        """Store the dead-letter record, publish the dead letter, then ack (in that order: a crash in
        between delivers the task again, and both steps are idempotent). The record is signed and dated
        by the task's submission time, like a result."""
        record = MAIFBlock(
            id=dead_letter_block_id(self.namespace, task.task_id),
            block_type=MAIFBlockType.METADATA,
            agent_id=self.agents[0].agent_id,
            metadata={"dead_letter": {"task_id": task.task_id, "task_type": task.task_type,
                                      "reason": reason[: limits.queue_dead_letter_reason_chars_max],
                                      "attempts": min(deliveries, self.config.max_retries + 1)}},
            timestamp=time.time() if task.submitted_at is None else task.submitted_at,
        )
        await self.storage.write_blocks([record, self.signer.signature_block(record)])
        await self._wait_applied()
        await self._dead_letter(message, task.task_id, reason, deliveries)

    async def _dead_letter(self, message: Any, task_id: str, reason: str, deliveries: int) -> None:
        await self.queue.dead_letter(message.data, reason, task_id=task_id, deliveries=deliveries,
                                     sequence=message.metadata.sequence.stream, worker=self.worker_id)
        await _acked(message)
        self.counters["dead_lettered"] += 1
        log.warning("worker %s: task %r dead-lettered: %s", self.worker_id, task_id, reason)

    async def _done(self, task_id: str) -> bool:
        return await self._stored(block_id_for(self.namespace, task_id, 0)) or await self._stored(
            dead_letter_block_id(self.namespace, task_id)
        )

    async def _already_stored(self, task: AgentTask, deliveries: int) -> bool:
        if await self._stored(block_id_for(self.namespace, task.task_id, 0)):
            return True
        return deliveries > 1 and await self._stored(dead_letter_block_id(self.namespace, task.task_id))

    async def _stored(self, block_id: str) -> bool:
        # The engine's existence check (its log map, then the shared index): no payload is read.
        return bool(await self.storage.exists(block_id))

    async def _wait_applied(self) -> None:
        """Results are acknowledged to the queue only once other nodes see them (ADR 0074).

        Callers whose writes are acknowledged join the next round, which begins (one
        ``storage.wait_applied()``) only after they joined, so it covers their writes; one waiter per
        round instead of one per task (each waiter is woken at every apply cycle)."""
        if self._apply_round is None:
            self._apply_round = asyncio.get_running_loop().create_future()
            if self._apply_rounds is None or self._apply_rounds.done():
                self._apply_rounds = asyncio.create_task(self._run_apply_rounds(), name="maif-worker-apply")
        await asyncio.shield(self._apply_round)

    async def _run_apply_rounds(self) -> None:
        while self._apply_round is not None:
            round_, self._apply_round = self._apply_round, None
            try:
                await self.storage.wait_applied()
            except asyncio.CancelledError:
                round_.cancel()
                raise
            except Exception as error:  # noqa: BLE001 - every waiter of the round gets it
                round_.set_exception(error)
            else:
                round_.set_result(None)

    def _least_loaded(self) -> MAIFAgent:
        from maif.agents.cluster import least_loaded  # cluster imports this module when distributed

        chosen = least_loaded(self.agents, self._next_agent)
        self._next_agent = (chosen + 1) % len(self.agents)
        return self.agents[chosen]

    # ---- keeping the broker informed ---------------------------------------------------------------
    async def _keep_in_progress(self) -> None:
        """Reset the ack timer of every task this worker holds, so only a dead worker's tasks return."""
        for message in list(self._held.values()):
            with contextlib.suppress(Exception):  # broker away: its ack timer decides
                await message.in_progress()

    async def _put_heartbeat(self) -> None:
        await self.queue.put_heartbeat(self.worker_id, self.heartbeat())

    async def _sweep(self) -> None:
        self.counters["dead_lettered"] += await self.queue.sweep_exhausted(self.worker_id, self._done)

    def heartbeat(self) -> dict[str, Any]:
        """This worker's load and counters, as published to the cluster (small and bounded)."""
        now, done = time.monotonic(), self.counters["completed"]
        last_at, last_done = self._rate
        if now - last_at >= 1.0:
            self.tasks_per_s = round((done - last_done) / (now - last_at), 3)
            self._rate = (now, done)
        return {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "agents": len(self.agents),
            "capacity": self.capacity,
            "in_flight": len(self._held),
            "tasks_per_s": self.tasks_per_s,
            "started_at": self._started_at,
            "at": time.time(),
            **self.counters,
        }


async def every(interval_s: float, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` every ``interval_s`` until cancelled; its MAIF errors (a broker away) are skipped.

    Cancellation is honoured even when a library turned it into an error on the way (nats-py answers a
    cancelled request with its TimeoutError, which ``body`` sees as BackendUnavailableError): the loop
    checks that it is being cancelled after each round instead of trusting the exception to arrive."""
    while True:
        with contextlib.suppress(MAIFError):
            await body()
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s)


async def _acked(message: Any) -> None:
    # A lost ack (broker away) means one more delivery, which step 3 answers without running the task.
    with contextlib.suppress(Exception):
        await message.ack()


async def _nakked(message: Any, delay_s: float) -> None:
    with contextlib.suppress(Exception):  # lost: the ack timer delivers it again
        await message.nak(delay=delay_s if delay_s > 0 else None)


async def _first(*awaitables: Any) -> None:
    """Wait until the first of ``awaitables`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["Worker", "default_worker_id", "every", "worker_key_file", "worker_signer"]
