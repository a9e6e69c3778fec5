"""MAIFAgent: a bounded, prioritised task queue drained in batches into signed, provenance-stamped blocks.

    storage = await create_maif_storage()
    async with MAIFAgent("my_agent", storage) as agent:
        await agent.submit_task(AgentTask("task_1", "text_analysis", {"text": "Hello MAIF!"}))
        outcome = await agent.result("task_1")   # optional: its stored blocks, durable by now
    # leaving the block drains: every accepted task has run (or been dead-lettered)

Semantics (docs/adr/0051-agent-runtime-semantics.md):
- ``submit_task`` accepts before or after ``start``. When the queue holds ``task_queue_size`` tasks it
  raises :class:`QueueFullError` at once (``timeout=None``), or waits up to ``timeout`` seconds for room.
- ``start`` runs the tasks accepted before it: it returns once each of them has finished (its blocks
  durable, or dead-lettered: then it raises :class:`TaskFailedError`), with the dispatcher left running
  for later tasks. So the seed's Quick Start (submit, ``await agent.start()``, end) stores its block.
- ``result(task_id)`` waits for a task and returns its :class:`TaskOutcome` (block ids and write
  receipts), or raises :class:`TaskFailedError` if it was dead-lettered.
- Higher ``priority`` runs first; equal priorities run in submission order.
- A task id already queued, running or finished is not run again (``submit_task`` returns False); the
  agent remembers the last ``limits.agent_remembered_task_ids_max`` finished ids. Block ids derive from
  the task id, so a re-run after that window replaces its blocks instead of duplicating them.
- The dispatcher takes up to ``batch_size`` tasks (waiting at most ``batch_timeout_ms`` for a batch to
  fill), runs them concurrently (CPU-bound handlers in a pool of ``processing_threads``), and writes every
  produced block of the batch with one ``write_blocks`` call (one log sync).
- A failing attempt is retried after 50 ms x 2^(attempt-1) (capped) up to ``max_retries`` retries; then a
  dead-letter record with the reason is kept and written as a METADATA block ``<agent>:<task>:dead-letter``.
- ``stop`` drains: it refuses new tasks, waits until every accepted task is done, then stops.
- An accepted task is never dropped quietly: while an agent holds unfinished tasks, a watcher task lives
  on the loop. If the loop shuts down first (``asyncio.run`` returning with tasks still queued, Ctrl-C),
  the watcher logs them, counts them in ``abandoned`` and, unless the program is already failing, makes
  ``asyncio.run`` raise ``SystemExit`` naming them (exit status 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from maif import limits, validation
from maif.agents.handlers.registry import Handler, HandlerRegistry
from maif.agents.provenance import block_id_for, dead_letter_block_id, signature_blocks, stamp
from maif.agents.tasks import AgentTask, DeadLetter, TaskOutcome
from maif.config import AgentConfig, ConfigSource, load_section
from maif.errors import AgentError, LimitExceededError, MAIFError, QueueFullError, TaskFailedError
from maif.format.block import MAIFBlock, MAIFBlockType

log = logging.getLogger("maif.agents")
_BACKOFF_BASE_S = 0.05
# Every live watcher (see MAIFAgent._watch): at loop shutdown a watcher waits for the other tasks to
# finish their own cancellation, but not for the other watchers, which are waiting too.
_WATCHERS: weakref.WeakSet[asyncio.Task[None]] = weakref.WeakSet()
_lost_task_reports: list[str] = []  # what the SystemExit at the end of asyncio.run will name


class MAIFAgent:
    """One agent: its queue, its dispatcher, its handlers, its key (through the security manager)."""

    def __init__(
        self,
        agent_id: str,
        storage: Any,
        config: ConfigSource | AgentConfig = None,
        *,
        registry: HandlerRegistry | None = None,
        security_manager: Any = None,
        security_context: Any = None,
        executor: ThreadPoolExecutor | None = None,
        backoff_base_s: float = _BACKOFF_BASE_S,
        block_namespace: str | None = None,
        store_dead_letters: bool = True,
        reproducible_results: bool = False,
        block_signer: Callable[[Sequence[MAIFBlock]], list[MAIFBlock]] | None = None,
    ) -> None:
        """``block_namespace`` (default: the agent id) begins the ids of the blocks a task produces
        (``<namespace>:<task>:<n>``): the agents of `maif worker` share one, so a task gets the same ids
        whichever agent runs it. ``store_dead_letters=False`` leaves storing a dead-letter record to
        the caller (a worker records one only after the task's last delivery). ``reproducible_results``
        leaves the attempt out of the provenance and dates results by the task's ``submitted_at``, so
        two runs of one task by a deterministic handler store the same bytes (ADR 0074).
        ``block_signer`` (a worker's :class:`~maif.agents.provenance.WorkerSigner`, ADR 0085) returns the
        signature blocks of the blocks it is given; it signs instead of a security manager."""
        if not isinstance(agent_id, str) or not 0 < len(agent_id.encode("utf-8", "replace")) <= 200:
            raise AgentError("agent_id must be a non-empty string of at most 200 bytes")
        if block_signer is not None and security_manager is not None:
            raise AgentError("give a block signer or a security manager, not both")
        if (security_manager is None) != (security_context is None):
            raise AgentError("give both a security manager and a security context, or neither")
        if security_context is not None and getattr(security_context, "agent_id", None) != agent_id:
            raise AgentError(
                f"the security context is not agent {agent_id!r}'s: an agent signs only as itself"
            )
        self.agent_id = agent_id
        self.block_namespace = agent_id if block_namespace is None else block_namespace
        self._store_dead_letters = store_dead_letters
        self._reproducible = reproducible_results
        self._block_signer = block_signer
        self.storage = storage
        self.config = config if isinstance(config, AgentConfig) else load_section(AgentConfig, config)
        self.registry = registry or HandlerRegistry.with_builtins()
        self.security_manager = security_manager
        self.security_context = security_context
        self._own_executor = executor is None
        self._executor = executor
        self._backoff_base_s = backoff_base_s
        self._heap: list[tuple[int, int, AgentTask]] = []
        self._sequence = itertools.count()
        self._not_empty = asyncio.Event()
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._states: dict[str, str] = {}  # queued / running
        self._finished: OrderedDict[str, str] = OrderedDict()  # task id -> "done" | "dead"
        # What result() answers from once a task has finished (the last agent_results_max tasks), and
        # the futures result()/start() wait on for unfinished ones (only ids someone waits for).
        self._results: OrderedDict[str, TaskOutcome | DeadLetter] = OrderedDict()
        self._waiters: dict[str, asyncio.Future[TaskOutcome | DeadLetter]] = {}
        self.dead_letters: deque[DeadLetter] = deque(maxlen=limits.agent_dead_letters_max)
        self.outcomes: deque[TaskOutcome] = deque(maxlen=limits.agent_latency_samples_max)
        self._in_flight = 0
        self._accepting = True
        self._dispatcher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._current_batch: list[AgentTask] = []
        self._counters = dict.fromkeys(
            (
                "submitted",
                "duplicates",
                "rejected_full",
                "completed",
                "retries",
                "dead_lettered",
                "blocks_written",
                "batches",
                "abandoned",
            ),
            0,
        )
        self._latencies_ms: deque[float] = deque(maxlen=limits.agent_latency_samples_max)
        self._enqueued_at: dict[str, float] = {}

    # ---- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the dispatcher and run the tasks accepted before this call.

        Returns once each task that was queued when ``start`` was called has finished: its blocks are
        durable, or it was dead-lettered, in which case this raises :class:`TaskFailedError` naming it
        (the agent keeps running). With nothing queued it returns as soon as the dispatcher runs; tasks
        submitted afterwards run in the background. Starting a running agent is a no-op.
        """
        if self._running:
            return
        backlog = [self._future_for(entry[2].task_id) for entry in self._heap]  # before any can finish
        await self._launch()
        if backlog:
            await self._finish_backlog(backlog)

    @property
    def _running(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    async def _launch(self) -> None:
        """Start the dispatcher (and the thread pool); returns once the dispatcher runs."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.config.processing_threads, thread_name_prefix=f"maif-agent-{self.agent_id}"
            )
        self._accepting = True
        running = asyncio.Event()
        self._dispatcher = asyncio.create_task(self._dispatch(running), name=f"maif-agent-{self.agent_id}")
        await running.wait()

    async def _finish_backlog(self, backlog: list[asyncio.Future[TaskOutcome | DeadLetter]]) -> None:
        """Wait until every task of the backlog has finished; raise if any was dead-lettered."""
        await asyncio.wait(backlog)  # unlike gather, never cancels the (shared) futures
        failed = [record for future in backlog if isinstance(record := future.result(), DeadLetter)]
        if failed:
            first = failed[0]
            raise TaskFailedError(
                f"{len(failed)} of the {len(backlog)} tasks accepted before start() failed after their "
                f"retries; first: task {first.task_id!r} after {first.attempts} attempts: {first.reason}",
                hint=f"agent {self.agent_id!r} keeps running; agent.dead_letters has every reason and "
                "each dead-letter record is stored",
            )

    async def stop(self) -> None:
        """Refuse new tasks, run every accepted one (retries and dead letters included), then stop."""
        self._accepting = False
        if self._heap and not self._running:
            await self._launch()
            self._accepting = False
        await self.drain()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def drain(self) -> None:
        """Wait until the queue is empty and nothing is in flight."""
        if self._heap and not self._running:
            raise AgentError(f"agent {self.agent_id!r} is not running: start() it before drain()")
        while self._heap or self._in_flight:
            self._idle.clear()
            await self._idle.wait()

    async def __aenter__(self) -> MAIFAgent:
        """Start the dispatcher (tasks queued before run in the background); leaving the block drains."""
        if not self._running:
            await self._launch()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ---- submission -------------------------------------------------------------------------------
    async def submit_task(self, task: AgentTask, *, timeout: float | None = None) -> bool:
        """Queue ``task``; False if its id is already queued, running or finished (not run twice).

        Raises QueueFullError when the queue is full (at once, or after waiting ``timeout`` seconds),
        AgentError when the agent is stopping or no handler serves the task type.
        """
        if not isinstance(task, AgentTask):
            raise AgentError(f"submit_task needs an AgentTask, got {type(task).__name__}")
        if not self._accepting:
            raise AgentError(f"agent {self.agent_id!r} is stopping and accepts no new tasks")
        if task.task_id in self._states or task.task_id in self._finished:
            self._counters["duplicates"] += 1
            return False
        self.registry.get(task.task_type)  # refuse unknown task types now, not after queueing
        if len(task.input_blocks) > limits.agent_input_blocks_max:
            raise LimitExceededError(
                "task input block count", len(task.input_blocks), limits.agent_input_blocks_max
            )
        if len(self._heap) >= self.config.task_queue_size:
            await self._wait_for_space(timeout)
            if task.task_id in self._states or task.task_id in self._finished:
                self._counters["duplicates"] += 1
                return False
        self._states[task.task_id] = "queued"
        self._enqueued_at[task.task_id] = time.perf_counter()
        heapq.heappush(self._heap, (-task.priority, next(self._sequence), task))
        self._counters["submitted"] += 1
        self._not_empty.set()
        if self._watcher is None or self._watcher.done():
            self._watch()
        return True

    async def result(self, task_id: str, *, timeout: float | None = None) -> TaskOutcome:
        """Wait until task ``task_id`` has finished and return its :class:`TaskOutcome`: the ids of the
        blocks it stored and their write receipts (durable when this returns).

        Raises TaskFailedError when the task was dead-lettered (the reason is in the message),
        TimeoutError when it has not finished after ``timeout`` seconds (it keeps running), and
        AgentError when this agent never accepted the id, has forgotten its outcome (it keeps the last
        ``limits.agent_results_max``), or holds it queued without running (start() it first).
        """
        validation.require_str("task_id", task_id, limits.task_id_chars_max * 4, allow_empty=False)
        timeout = validation.optional_float("timeout", timeout, 0.0)
        record = self._results.get(task_id)
        if record is None:
            record = await self._wait_for_result(task_id, timeout)
        if isinstance(record, DeadLetter):
            raise TaskFailedError(
                f"task {task_id!r} of agent {self.agent_id!r} failed after {record.attempts} attempts: "
                f"{record.reason}",
                hint=f"its dead-letter record is block {record.record_block_id!r}"
                if record.record_block_id
                else "its dead-letter record could not be stored; agent.dead_letters has it",
            )
        return record

    async def _wait_for_result(self, task_id: str, timeout: float | None) -> TaskOutcome | DeadLetter:
        if self._states.get(task_id) == "queued" and not self._running:
            await asyncio.sleep(0)  # a start() just scheduled (asyncio.create_task) launches in this turn
            if (record := self._results.get(task_id)) is not None:
                return record
        if task_id not in self._states:
            if task_id in self._finished:
                first_block = block_id_for(self.block_namespace, task_id, 0)
                raise AgentError(
                    f"agent {self.agent_id!r} no longer keeps the outcome of task {task_id!r}",
                    hint=f"it keeps the last {limits.agent_results_max}; its blocks are in the store "
                    f"({first_block!r}, then :1, ...)",
                )
            raise AgentError(f"agent {self.agent_id!r} never accepted task {task_id!r}")
        if self._states[task_id] == "queued" and not self._running:
            raise AgentError(
                f"agent {self.agent_id!r} is not running, so task {task_id!r} cannot finish",
                hint="await agent.start() (or use `async with agent`) first",
            )
        future = self._future_for(task_id)
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if not done:
            raise TimeoutError(f"task {task_id!r} of agent {self.agent_id!r} did not finish in {timeout} s")
        return future.result()

    def _future_for(self, task_id: str) -> asyncio.Future[TaskOutcome | DeadLetter]:
        """The one future that resolves when ``task_id`` (queued or running) finishes."""
        future = self._waiters.get(task_id)
        if future is None or future.cancelled():
            future = self._waiters[task_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, task_id: str) -> None:
        """Forget a finished task's id and outcome, so the same id may be submitted and run again (a
        worker does this once the queue has the task's acknowledgement or its next delivery is due)."""
        if task_id not in self._states:
            self._finished.pop(task_id, None)
            self._results.pop(task_id, None)

    def withdraw_queued(self) -> list[AgentTask]:
        """Take back every task accepted but not yet started (a draining worker hands them back to the
        queue); whoever waits on one in :meth:`result` gets AgentError. Running tasks are untouched."""
        withdrawn = [entry[2] for entry in sorted(self._heap)]
        self._heap.clear()
        for task in withdrawn:
            self._states.pop(task.task_id, None)
            self._enqueued_at.pop(task.task_id, None)
            future = self._waiters.pop(task.task_id, None)
            if future is not None and not future.done():
                future.set_exception(AgentError(f"task {task.task_id!r} was withdrawn before it started"))
        self._space.set()
        if not self._in_flight:
            self._idle.set()
        return withdrawn

    # ---- never dropping accepted work quietly (ADR 0051) ------------------------------------------
    def _watch(self) -> None:
        """Keep a watcher on the loop while this agent holds unfinished tasks."""
        watcher = asyncio.get_running_loop().create_task(
            self._watch_until_idle(asyncio.current_task()), name=f"maif-agent-{self.agent_id}-watcher"
        )
        self._watcher = watcher
        _WATCHERS.add(watcher)

    async def _watch_until_idle(self, owner: asyncio.Task[Any] | None) -> None:
        """Return once every accepted task has finished. Cancelled before (the loop is shutting down:
        ``asyncio.run`` returned or was interrupted), report the unfinished tasks loudly."""
        try:
            while self._states:
                self._idle.clear()
                await self._idle.wait()
        except asyncio.CancelledError:
            if self._states:
                await self._report_lost_tasks(owner)
            raise
        finally:
            self._watcher = None

    async def _report_lost_tasks(self, owner: asyncio.Task[Any] | None) -> None:
        lost = list(self._states)
        self._counters["abandoned"] += len(lost)
        message = (
            f"agent {self.agent_id!r}: the event loop ended before {len(lost)} accepted "
            f"task{'s' if len(lost) != 1 else ''} completed ({', '.join(lost[:5])}"
            f"{', ...' if len(lost) > 5 else ''}); their results are not (all) stored"
        )
        if owner is not None and owner.done() and (owner.cancelled() or owner.exception() is not None):
            log.error("%s", message)  # the program is already failing (an exception, Ctrl-C): its own
            return  # error sets the exit status, and a SystemExit here would hide its traceback
        # Recorded now: every watcher is cancelled in the same sweep, so all reports are in before the
        # first SystemExit below is raised.
        _lost_task_reports.append(message)
        me = asyncio.current_task()
        others = {task for task in asyncio.all_tasks() if task is not me and task not in _WATCHERS}
        if others:
            await asyncio.wait(others)  # the store's own tasks finish their cancellation first
        if not self._states:  # not a shutdown after all: the dispatcher finished the work meanwhile
            self._counters["abandoned"] -= len(lost)
            with contextlib.suppress(ValueError):
                _lost_task_reports.remove(message)
            return
        # Raised from a plain callback, SystemExit leaves asyncio.run (a task would only record it).
        asyncio.get_running_loop().call_soon(_exit_for_lost_tasks)

    async def _wait_for_space(self, timeout: float | None) -> None:
        if timeout is None or timeout <= 0:
            self._counters["rejected_full"] += 1
            raise QueueFullError(
                f"agent {self.agent_id!r} queue is full ({self.config.task_queue_size} tasks)",
                hint="retry later, pass timeout= to wait, or raise task_queue_size",
            )
        deadline = time.monotonic() + timeout
        while len(self._heap) >= self.config.task_queue_size:
            remaining = deadline - time.monotonic()
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), remaining if remaining > 0 else 0)
            except TimeoutError:
                self._counters["rejected_full"] += 1
                raise QueueFullError(f"agent {self.agent_id!r} queue stayed full for {timeout} s") from None
            if not self._accepting:
                raise AgentError(f"agent {self.agent_id!r} is stopping and accepts no new tasks")

    # ---- load and statistics ----------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._heap)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def counters(self) -> dict[str, int]:
        """Running totals since start: submitted, completed, retries, dead_lettered, rejected_full, ..."""
        return dict(self._counters)

    @property
    def load(self) -> int:
        """Queue depth plus in-flight work: what least-loaded balancing compares."""
        return len(self._heap) + self._in_flight

    async def get_stats(self) -> dict[str, Any]:
        latencies = sorted(self._latencies_ms)
        return {
            "agent_id": self.agent_id,
            "running": self._dispatcher is not None and not self._dispatcher.done(),
            "queue_depth": len(self._heap),
            "in_flight": self._in_flight,
            **self._counters,
            "mean_batch_size": round(self._counters["completed"] / self._counters["batches"], 3)
            if self._counters["batches"]
            else 0.0,
            "task_latency_ms_p50": _percentile(latencies, 0.50),
            "task_latency_ms_p99": _percentile(latencies, 0.99),
            "dead_letters": [
                {"task_id": d.task_id, "reason": d.reason, "attempts": d.attempts}
                for d in list(self.dead_letters)[-10:]
            ],
        }

    # ---- dispatching ------------------------------------------------------------------------------
    async def _dispatch(self, running: asyncio.Event) -> None:
        """Run batches until cancelled (by stop(), or by the loop shutting down: then the watcher
        reports whatever was left unfinished)."""
        running.set()
        while True:
            self._current_batch = await self._next_batch()  # popped tasks count as in flight
            try:
                await self._run_batch(self._current_batch)
            except Exception as error:  # a bug must not stop the agent or hang drain()
                log.exception("agent %s: batch failed unexpectedly", self.agent_id)
                for task in self._current_batch:
                    if self._states.get(task.task_id) == "running":
                        reason = f"internal error: {_reason(error)}"
                        await self._dead_letter(task, reason, 1, write_record=False)
            finally:
                self._in_flight -= len(self._current_batch)
                self._current_batch = []
                if not self._heap and not self._in_flight:
                    self._idle.set()

    async def _next_batch(self) -> list[AgentTask]:
        """Up to batch_size tasks: waits for the first, then at most batch_timeout_ms for the rest."""
        while not self._heap:
            self._not_empty.clear()
            await self._not_empty.wait()
        batch = self._current_batch = [self._pop()]
        deadline = time.monotonic() + self.config.batch_timeout_ms / 1000
        while len(batch) < self.config.batch_size:
            if self._heap:
                batch.append(self._pop())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._not_empty.clear()
            try:
                await asyncio.wait_for(self._not_empty.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _pop(self) -> AgentTask:
        task = heapq.heappop(self._heap)[2]
        self._states[task.task_id] = "running"
        self._in_flight += 1  # from the pop on, so drain() never sees a half-assembled batch as idle
        self._space.set()
        return task

    async def _run_batch(self, batch: list[AgentTask]) -> None:
        self._counters["batches"] += 1
        results: list[tuple[AgentTask, list[MAIFBlock], int] | None] = []
        simple = [task for task in batch if self._is_inline(task)]
        for task in simple:
            results.append(await self._attempts_inline(task))
        others = [task for task in batch if not self._is_inline(task)]
        if len(others) == 1:  # no Task object for the common single-task batch of a busy cluster
            results.append(await self._attempts(others[0]))
        elif others:
            results.extend(await asyncio.gather(*(self._attempts(task) for task in others)))
        produced = [item for item in results if item is not None]
        await self._persist(produced)

    def _is_inline(self, task: AgentTask) -> bool:
        handler = self.registry.get(task.task_type)
        return not handler.cpu_bound and not handler.is_async and not task.input_blocks

    async def _attempts_inline(self, task: AgentTask) -> tuple[AgentTask, list[MAIFBlock], int] | None:
        """Fast path for cheap synchronous handlers: no thread hop, no coroutine per task."""
        handler = self.registry.get(task.task_type)
        try:
            drafts = handler.function(task, ())
            return task, self._stamped(task, handler, drafts, (), 1), 1  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - the general path retries and records the reason
            if self.config.max_retries == 0:
                await self._dead_letter(task, _reason(error), 1)
                return None
            return await self._attempts(task, first_attempt=2)

    async def _attempts(
        self, task: AgentTask, first_attempt: int = 1
    ) -> tuple[AgentTask, list[MAIFBlock], int] | None:
        attempt, reason = first_attempt, ""
        if first_attempt > 1:
            self._counters["retries"] += 1
            await asyncio.sleep(self._backoff(first_attempt - 1))
        while True:
            try:
                return task, await self._attempt(task, attempt), attempt
            except Exception as error:  # noqa: BLE001 - a handler may raise anything; we record why
                reason = _reason(error)
            if attempt > self.config.max_retries:
                await self._dead_letter(task, reason, attempt)
                return None
            self._counters["retries"] += 1
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        return float(min(self._backoff_base_s * (2 ** (attempt - 1)), limits.agent_retry_backoff_s_max))

    async def _attempt(self, task: AgentTask, attempt: int) -> list[MAIFBlock]:
        handler = self.registry.get(task.task_type)
        inputs = [await self.storage.read_block(block_id) for block_id in task.input_blocks]
        if handler.is_async:
            drafts = await handler.function(task, inputs)  # type: ignore[misc]
        elif handler.cpu_bound:
            loop = asyncio.get_running_loop()
            drafts = await loop.run_in_executor(self._executor, handler.function, task, inputs)
        else:
            drafts = handler.function(task, inputs)
        return self._stamped(task, handler, drafts, inputs, attempt)

    def _stamped(
        self,
        task: AgentTask,
        handler: Handler,
        drafts: Sequence[Any],
        inputs: Sequence[MAIFBlock],
        attempt: int,
    ) -> list[MAIFBlock]:
        if not drafts:
            return []
        if self._reproducible:
            return stamp(self.agent_id, task, handler, drafts, inputs, None, namespace=self.block_namespace,
                         timestamp=task.submitted_at)
        return stamp(self.agent_id, task, handler, drafts, inputs, attempt, namespace=self.block_namespace)

    async def _persist(self, produced: list[tuple[AgentTask, list[MAIFBlock], int]]) -> None:
        blocks = [block for _, task_blocks, _ in produced for block in task_blocks]
        if blocks and (self.security_manager is not None or self._block_signer is not None):
            try:
                if self._block_signer is not None:  # a key in memory: 50 us a block, no thread hop
                    blocks += self._block_signer(blocks)
                else:  # the manager's gate appends to its audit log durably
                    blocks += await asyncio.to_thread(
                        signature_blocks, self.security_manager, self.security_context, blocks
                    )
            except MAIFError as error:  # an expired context or a revoked key: never store unsigned
                for task, _, attempts in produced:
                    await self._dead_letter(task, f"signing failed: {_reason(error)}", attempts)
                return
        receipts: dict[str, Any] = {}
        if blocks:
            receipts = await self._write_with_retries(blocks, [task for task, _, _ in produced])
        now = time.perf_counter()
        for task, task_blocks, attempts in produced:
            if self._states.get(task.task_id) != "running":
                continue  # dead-lettered because the batch write failed
            latency_ms = (now - self._enqueued_at.pop(task.task_id, now)) * 1000
            self._latencies_ms.append(latency_ms)
            ids = tuple(b.id for b in task_blocks)
            outcome = TaskOutcome(task.task_id, ids, attempts, latency_ms, tuple(receipts[i] for i in ids))
            self.outcomes.append(outcome)
            self._finish(task.task_id, outcome)
            self._counters["completed"] += 1
        self._counters["blocks_written"] += len(blocks)

    async def _write_with_retries(self, blocks: list[MAIFBlock], tasks: list[AgentTask]) -> dict[str, Any]:
        """The write receipts by block id; empty when the write failed for good (tasks dead-lettered)."""
        attempt = 1
        while True:
            try:
                return {receipt.block_id: receipt for receipt in await self.storage.write_blocks(blocks)}
            except MAIFError as error:
                if attempt > self.config.max_retries:
                    for task in tasks:
                        await self._dead_letter(
                            task, f"storing its blocks failed: {_reason(error)}", attempt, write_record=False
                        )
                    log.error("agent %s could not store a batch: %s", self.agent_id, error.message)
                    return {}
                self._counters["retries"] += 1
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1

    async def _dead_letter(
        self, task: AgentTask, reason: str, attempts: int, *, write_record: bool = True
    ) -> None:
        record_id: str | None = None
        if write_record and self._store_dead_letters and self.storage is not None:
            record_id = dead_letter_block_id(self.block_namespace, task.task_id)
            record = MAIFBlock(
                id=record_id,
                block_type=MAIFBlockType.METADATA,
                agent_id=self.agent_id,
                metadata={
                    "dead_letter": {
                        "task_id": task.task_id,
                        "task_type": task.task_type,
                        "reason": reason,
                        "attempts": attempts,
                    }
                },
            )
            try:
                await self.storage.write_block(record)
            except MAIFError as error:
                log.error(
                    "agent %s: dead-letter record for %s not stored: %s",
                    self.agent_id,
                    task.task_id,
                    error.message,
                )
                record_id = None
        dead = DeadLetter(task.task_id, task.task_type, reason, attempts, time.time(), record_id)
        self.dead_letters.append(dead)
        log.warning(
            "agent %s: task %s dead-lettered after %d attempts: %s", self.agent_id, task.task_id, attempts,
            reason,
        )
        self._enqueued_at.pop(task.task_id, None)
        self._finish(task.task_id, dead)
        self._counters["dead_lettered"] += 1

    def _finish(self, task_id: str, record: TaskOutcome | DeadLetter) -> None:
        self._states.pop(task_id, None)
        self._finished[task_id] = "dead" if isinstance(record, DeadLetter) else "done"
        if len(self._finished) > limits.agent_remembered_task_ids_max:
            self._finished.popitem(last=False)
        self._results[task_id] = record
        if len(self._results) > limits.agent_results_max:
            self._results.popitem(last=False)
        if self._waiters:
            future = self._waiters.pop(task_id, None)
            if future is not None and not future.done():
                future.set_result(record)


def _exit_for_lost_tasks() -> None:
    """End ``asyncio.run`` with exit status 1, naming every agent's lost tasks (once for them all)."""
    if not _lost_task_reports:
        return
    reports = "\n".join(f"maif: {report}" for report in _lost_task_reports)
    _lost_task_reports.clear()
    raise SystemExit(
        f"{reports}\n  hint: before the program ends, await agent.stop() (or leave "
        "`async with MAIFAgent(...)`), or await agent.result(task_id) for each task"
    )


def _reason(error: BaseException) -> str:
    message = error.message if isinstance(error, MAIFError) else str(error)
    return f"{type(error).__name__}: {message}"[:500]


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 3)


__all__ = ["MAIFAgent"]
