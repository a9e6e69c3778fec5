"""A cluster of in-process agents over one store, with round-robin and least-loaded placement.

    async with maif_agent_cluster(storage, num_agents=4) as cluster:
        agent_id = await cluster.submit_task_least_loaded(task)

Least-loaded compares each agent's queue depth plus in-flight tasks and picks the smallest, ties going
to the agent after the last one chosen (so equal loads rotate instead of piling on agent 0). Leaving the
block calls :meth:`AgentCluster.shutdown_all`, which drains every agent. Agents share one thread pool of
``processing_threads`` workers, so the CPU is not oversubscribed by the number of agents.

Distributed mode (``nats_url=...``, docs/adr/0074-distributed-agents.md): the cluster is every `maif
worker` process pulling from the NATS JetStream task queue, on any machine. ``submit_task*`` publishes
the task into the queue (True/False as for one agent; the agent that runs it is chosen by pulling, so
they return the stream name); ``get_cluster_stats`` aggregates the queue's state and every live worker's
heartbeat. With a ``storage`` and ``num_agents >= 1`` this process also runs a worker of ``num_agents``
agents; ``num_agents=0`` only submits. Leaving the block stops that worker (tasks it had not started go
back to the queue); accepted tasks stay in the queue for the other workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from maif.agents.agent import MAIFAgent
from maif.agents.handlers.registry import HandlerRegistry
from maif.agents.tasks import AgentTask
from maif.config import AgentConfig, ConfigSource, load_section
from maif.errors import AgentError


def least_loaded(agents: list[MAIFAgent], start: int) -> int:
    """The index of the agent with the least queue depth + in-flight work; ties go to the first one
    from ``start`` on, so equal loads rotate."""
    count = len(agents)
    best = start % count
    best_load = agents[best].load
    for offset in range(1, count):
        if best_load == 0:  # an idle agent: none can be less loaded (stops the scan of 1000s of agents)
            break
        index = (start + offset) % count
        load = agents[index].load
        if load < best_load:
            best, best_load = index, load
    return best


class AgentCluster:
    """The manager :func:`maif_agent_cluster` yields."""

    def __init__(self, agents: list[MAIFAgent], executor: ThreadPoolExecutor) -> None:
        if not agents:
            raise AgentError("a cluster needs at least one agent")
        self.agents = agents
        self._executor = executor
        self._next = 0

    def agent(self, agent_id: str) -> MAIFAgent:
        for candidate in self.agents:
            if candidate.agent_id == agent_id:
                return candidate
        raise AgentError(f"no agent {agent_id!r} in this cluster")

    async def submit_task_round_robin(self, task: AgentTask, *, timeout: float | None = None) -> str:
        """Give the task to the next agent in turn; returns that agent's id."""
        agent = self.agents[self._next % len(self.agents)]
        self._next = (self._next + 1) % len(self.agents)
        await agent.submit_task(task, timeout=timeout)
        return agent.agent_id

    async def submit_task_least_loaded(self, task: AgentTask, *, timeout: float | None = None) -> str:
        """Give the task to the agent with the least queue depth + in-flight work; returns its id."""
        chosen = least_loaded(self.agents, self._next)
        self._next = (chosen + 1) % len(self.agents)
        await self.agents[chosen].submit_task(task, timeout=timeout)
        return self.agents[chosen].agent_id

    async def get_cluster_stats(self) -> dict[str, Any]:
        per_agent = [await agent.get_stats() for agent in self.agents]
        totals = {
            key: sum(stats[key] for stats in per_agent)
            for key in (
                "submitted",
                "completed",
                "retries",
                "dead_lettered",
                "blocks_written",
                "queue_depth",
                "in_flight",
                "duplicates",
                "rejected_full",
            )
        }
        return {"agents": len(self.agents), **totals, "per_agent": per_agent}

    async def shutdown_all(self) -> None:
        """Drain and stop every agent, then the shared thread pool."""
        await asyncio.gather(*(agent.stop() for agent in self.agents))
        self._executor.shutdown(wait=True)


class DistributedAgentCluster:
    """The manager :func:`maif_agent_cluster` yields with ``nats_url``: submissions go to the queue."""

    def __init__(self, queue: Any, worker: Any = None) -> None:
        self.queue = queue
        self.worker = worker
        self._worker_run: asyncio.Task[None] | None = None

    async def submit_task(self, task: AgentTask, *, timeout: float | None = None) -> bool:
        """Publish ``task``: True once the broker stored it durably, False for a task id published
        within the duplicate window. QueueFullError when the stream is full; BackendUnavailableError
        when the broker stays unreachable for ``timeout`` seconds (default 30)."""
        if not isinstance(task, AgentTask):
            raise AgentError(f"submit_task needs an AgentTask, got {type(task).__name__}")
        return bool(await self.queue.publish(task, timeout_s=30.0 if timeout is None else timeout))

    async def submit_task_round_robin(self, task: AgentTask, *, timeout: float | None = None) -> str:
        """Publish into the queue (workers pull, which balances the load); returns the stream name."""
        await self.submit_task(task, timeout=timeout)
        return str(self.queue.stream)

    submit_task_least_loaded = submit_task_round_robin

    async def get_cluster_stats(self) -> dict[str, Any]:
        from maif.agents.queue import cluster_stats

        return await cluster_stats(self.queue)

    async def shutdown_all(self) -> None:
        """Stop this process's worker (if any) and disconnect; queued tasks stay for other workers."""
        try:
            if self.worker is not None and self._worker_run is not None:
                self.worker.stop()
                await self._worker_run
        finally:
            await self.queue.close()


@asynccontextmanager
async def _distributed_cluster(
    storage: Any, num_agents: int, section: AgentConfig, nats_url: str, registry: HandlerRegistry | None
) -> AsyncIterator[DistributedAgentCluster]:
    from maif.agents.queue import TaskQueue
    from maif.agents.worker import Worker

    if num_agents and storage is None:
        raise AgentError("agents in this process need a storage; pass num_agents=0 to only submit")
    queue = await TaskQueue.connect(nats_url, section)
    try:  # the worker's key file may be refused
        worker = Worker(storage, queue, section, agents=num_agents, registry=registry) if num_agents else None
    except BaseException:
        await queue.close()
        raise
    cluster = DistributedAgentCluster(queue, worker)
    try:
        if worker is not None:
            cluster._worker_run = asyncio.create_task(worker.run(), name="maif-cluster-worker")
        yield cluster
    finally:
        await cluster.shutdown_all()


@asynccontextmanager
async def maif_agent_cluster(
    storage: Any,
    num_agents: int,
    config: ConfigSource | AgentConfig = None,
    *,
    registry: HandlerRegistry | None = None,
    security_manager: Any = None,
    contexts: Mapping[str, Any] | None = None,
    agent_ids: list[str] | None = None,
    nats_url: str | None = None,
) -> AsyncIterator[Any]:
    """Start ``num_agents`` agents (ids ``agent-0`` ... unless ``agent_ids``); drain them all on exit.

    With a ``security_manager``, ``contexts`` maps each agent id to its security context. With
    ``nats_url`` the cluster is distributed (see the module docstring) and yields a
    :class:`DistributedAgentCluster`.
    """
    section = config if isinstance(config, AgentConfig) else load_section(AgentConfig, config)
    if nats_url is not None:
        if not 0 <= num_agents <= 100_000:
            raise AgentError("num_agents must be between 0 and 100000")
        if security_manager is not None or agent_ids is not None:
            raise AgentError("a distributed cluster's agents are named and keyed by their workers")
        async with _distributed_cluster(storage, num_agents, section, nats_url, registry) as distributed:
            yield distributed
        return
    if not 1 <= num_agents <= 100_000:
        raise AgentError("num_agents must be between 1 and 100000")
    ids = agent_ids or [f"agent-{index}" for index in range(num_agents)]
    if len(ids) != num_agents:
        raise AgentError("agent_ids must name exactly num_agents agents")
    shared_registry = registry or HandlerRegistry.with_builtins()
    executor = ThreadPoolExecutor(section.processing_threads, thread_name_prefix="maif-cluster")
    agents = [
        MAIFAgent(
            agent_id,
            storage,
            section,
            registry=shared_registry,
            executor=executor,
            security_manager=security_manager,
            security_context=(contexts or {}).get(agent_id) if security_manager else None,
        )
        for agent_id in ids
    ]
    cluster = AgentCluster(agents, executor)
    try:
        for agent in agents:
            await agent.start()
        yield cluster
    finally:
        await cluster.shutdown_all()


__all__ = ["AgentCluster", "DistributedAgentCluster", "least_loaded", "maif_agent_cluster"]
