"""The runtime's promises: drain loses nothing, retries, dead letters, backpressure, priorities,
batching, idempotence and load balancing. (The seed's Quick Start and result(): test_quickstart.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from maif.agents import AgentTask, BlockDraft, HandlerRegistry, MAIFAgent, maif_agent_cluster
from maif.errors import AgentError, QueueFullError
from maif.format.block import MAIFBlockType

FAST = {"batch_timeout_ms": 1.0, "max_retries": 2}


def recording_registry(
    log: list[str], *, fail_times: dict[str, int] | None = None, gate: asyncio.Event | None = None
) -> HandlerRegistry:
    failures = dict(fail_times or {})

    async def note(task: AgentTask, inputs: Any) -> list[BlockDraft]:
        if gate is not None:
            await gate.wait()
        if failures.get(task.task_id, 0) > 0:
            failures[task.task_id] -= 1
            raise RuntimeError(f"planned failure of {task.task_id}")
        log.append(task.task_id)
        return [BlockDraft(MAIFBlockType.TEXT, task.task_id.encode(), {"n": len(log)})]

    registry = HandlerRegistry()
    registry.register("note", note, name="test.note", version="7")
    return registry


def test_stop_drains_every_accepted_task(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        log: list[str] = []
        agent = MAIFAgent("drainer", storage, {**FAST, "batch_size": 7}, registry=recording_registry(log))
        for index in range(50):
            assert await agent.submit_task(AgentTask(f"t{index}", "note", {}))
        await agent.start()
        await agent.stop()
        assert sorted(log) == sorted(f"t{index}" for index in range(50))
        stored = await storage.list_blocks(agent_id="drainer", limit=100)
        assert len(stored) == 50
        with pytest.raises(AgentError):
            await agent.submit_task(AgentTask("late", "note", {}))
        stats = await agent.get_stats()
        assert stats["completed"] == 50 and stats["batches"] >= 8  # batch_size 7 bounds every batch

    with_store(body)


def test_retries_then_success_and_dead_letter_with_reason(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        log: list[str] = []
        registry = recording_registry(log, fail_times={"flaky": 2, "doomed": 99})
        async with MAIFAgent("retrier", storage, FAST, registry=registry, backoff_base_s=0.001) as agent:
            await agent.submit_task(AgentTask("flaky", "note", {}))
            await agent.submit_task(AgentTask("doomed", "note", {}))
        assert log == ["flaky"]
        [dead] = list(agent.dead_letters)
        assert dead.task_id == "doomed" and dead.attempts == 3 and "planned failure of doomed" in dead.reason
        record = await storage.read_block(dead.record_block_id)
        assert record.metadata["dead_letter"]["reason"] == dead.reason
        flaky = await storage.read_block("retrier:flaky:0")
        assert flaky.metadata["provenance"]["attempt"] == 3
        stats = await agent.get_stats()
        assert stats["retries"] == 4 and stats["dead_lettered"] == 1 and stats["completed"] == 1

    with_store(body)


def test_backpressure_refuses_or_waits(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        log: list[str] = []
        gate = asyncio.Event()
        agent = MAIFAgent(
            "bp", storage, {**FAST, "task_queue_size": 3}, registry=recording_registry(log, gate=gate)
        )
        for index in range(3):
            await agent.submit_task(AgentTask(f"q{index}", "note", {}))
        with pytest.raises(QueueFullError):
            await agent.submit_task(AgentTask("over", "note", {}))
        with pytest.raises(QueueFullError):
            await agent.submit_task(AgentTask("over", "note", {}), timeout=0.05)
        # start() returns once the queued tasks have run, and they wait for the gate: start it in the
        # background. Its dispatcher takes a batch off the queue, making room for the waiting submitter.
        starting = asyncio.create_task(agent.start())
        assert await agent.submit_task(AgentTask("waited", "note", {}), timeout=5)
        assert not starting.done()
        gate.set()
        await starting
        await agent.stop()
        assert sorted(log) == ["q0", "q1", "q2", "waited"]
        assert (await agent.get_stats())["rejected_full"] == 2

    with_store(body)


def test_priorities_and_idempotent_ids(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        log: list[str] = []
        agent = MAIFAgent("prio", storage, {**FAST, "batch_size": 1}, registry=recording_registry(log))
        await agent.submit_task(AgentTask("low", "note", {}, priority=1))
        await agent.submit_task(AgentTask("high", "note", {}, priority=9))
        await agent.submit_task(AgentTask("mid", "note", {}, priority=5))
        assert not await agent.submit_task(AgentTask("high", "note", {}, priority=9))  # queued: not twice
        await agent.start()
        await agent.drain()
        assert not await agent.submit_task(AgentTask("low", "note", {}))  # finished: not twice
        await agent.stop()
        assert log == ["high", "mid", "low"]
        assert (await agent.get_stats())["duplicates"] == 2

    with_store(body)


def test_unknown_task_type_is_refused_at_submit(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        agent = MAIFAgent("x", storage, registry=HandlerRegistry())
        with pytest.raises(AgentError, match="no handler"):
            await agent.submit_task(AgentTask("t", "nothing", {}))

    with_store(body)


def test_round_robin_and_least_loaded_distribution(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        log: list[str] = []
        gate = asyncio.Event()
        registry = recording_registry(log, gate=gate)
        async with maif_agent_cluster(storage, 4, FAST, registry=registry) as cluster:
            chosen = [await cluster.submit_task_round_robin(AgentTask(f"r{i}", "note", {})) for i in range(8)]
            assert chosen == [f"agent-{i % 4}" for i in range(8)]
            # Load agent-0 heavily; least-loaded must avoid it until the others catch up.
            for index in range(6):
                await cluster.agent("agent-0").submit_task(AgentTask(f"heavy{index}", "note", {}))
            picks = [await cluster.submit_task_least_loaded(AgentTask(f"l{i}", "note", {})) for i in range(9)]
            assert "agent-0" not in picks[:9]
            loads = {agent.agent_id: agent.load for agent in cluster.agents}
            assert loads["agent-1"] == loads["agent-2"] == loads["agent-3"] == 5
            gate.set()
        stats = await cluster.get_cluster_stats()
        assert stats["completed"] == 8 + 6 + 9 and stats["queue_depth"] == 0

    with_store(body)


def test_no_retries_means_one_attempt_then_dead_letter(with_store: Any) -> None:
    def broken(task: AgentTask, inputs: Any) -> list[BlockDraft]:
        calls.append(task.task_id)
        raise ValueError("bad input")

    calls: list[str] = []
    registry = HandlerRegistry()
    registry.register("broken", broken, cpu_bound=False)

    async def body(storage: Any) -> None:
        async with MAIFAgent("once", storage, {**FAST, "max_retries": 0}, registry=registry) as agent:
            await agent.submit_task(AgentTask("b", "broken", {}))
        assert calls == ["b"]
        [dead] = list(agent.dead_letters)
        assert dead.attempts == 1 and dead.reason == "ValueError: bad input"

    with_store(body)


def test_unencodable_input_is_dead_lettered_not_crashing(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        log: list[str] = []
        async with MAIFAgent(
            "enc", storage, {**FAST, "max_retries": 1}, registry=recording_registry(log), backoff_base_s=0.001
        ) as agent:
            await agent.submit_task(AgentTask("weird", "note", {"x": object()}))
            await agent.submit_task(AgentTask("fine", "note", {}))
        assert [d.task_id for d in agent.dead_letters] == ["weird"]
        assert "not MessagePack-encodable" in agent.dead_letters[0].reason
        assert (await agent.get_stats())["completed"] == 1

    with_store(body)


def test_malformed_tasks_are_refused_with_agent_errors() -> None:
    with pytest.raises(AgentError):
        AgentTask("", "note", {})
    with pytest.raises(AgentError):
        AgentTask("t", "note", "not a dict")  # type: ignore[arg-type]
    with pytest.raises(AgentError):
        AgentTask("t", "note", {}, priority="high")  # type: ignore[arg-type]
    with pytest.raises(AgentError):
        AgentTask("t" * 129, "note", {})


def test_drain_before_start_is_refused_not_hung(with_store: Any) -> None:
    async def body(storage: Any) -> None:
        agent = MAIFAgent("idle", storage, registry=recording_registry([]))
        await agent.submit_task(AgentTask("t", "note", {}))
        with pytest.raises(AgentError, match="not running"):
            await agent.drain()
        await agent.stop()  # stop() starts the dispatcher to drain what was accepted
        assert (await agent.get_stats())["completed"] == 1

    with_store(body)


def test_reproducible_results_are_the_same_bytes_and_withdrawn_tasks_go_back(with_store: Any) -> None:
    """A worker's agents (ADR 0074): two runs of one task by different agent objects, at different times,
    store byte-identical blocks (so a re-run after a kill is the same write), and draining hands back the
    tasks not yet started while the running one finishes."""
    from maif.format.codec import block_digest

    async def body(storage: Any) -> None:
        task = AgentTask("same", "text_analysis", {"text": "one two three"}, submitted_at=1_700_000_000.0)
        digests = []
        for attempt in range(2):
            agent = MAIFAgent("Q", storage, FAST, block_namespace="Q", reproducible_results=True,
                              store_dead_letters=False)
            async with agent:
                await agent.submit_task(task)
                outcome = await agent.result("same")
            digests.append([block_digest(await storage.read_block(block)) for block in outcome.block_ids])
            assert outcome.block_ids[0] == "Q:same:0"
            await asyncio.sleep(0.01 * (attempt + 1))
        assert digests[0] == digests[1]

        gate = asyncio.Event()
        log: list[str] = []
        agent = MAIFAgent("g", storage, {"batch_size": 1, "batch_timeout_ms": 1.0},
                          registry=recording_registry(log, gate=gate))
        await agent.start()
        for name in ("first", "second", "third"):
            await agent.submit_task(AgentTask(name, "note", {}))
        while agent.in_flight == 0:
            await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(agent.result("second"))
        await asyncio.sleep(0)  # result() is waiting
        withdrawn = agent.withdraw_queued()
        assert [task.task_id for task in withdrawn] == ["second", "third"]
        with pytest.raises(AgentError, match="withdrawn"):
            await waiting
        gate.set()
        await agent.result("first")
        assert not await agent.submit_task(AgentTask("first", "note", {}))  # remembered: not run twice
        agent.forget("first")  # a worker forgets once the queue has the answer
        assert await agent.submit_task(AgentTask("first", "note", {}))
        await agent.stop()
        assert log == ["first", "first"]

    with_store(body)
