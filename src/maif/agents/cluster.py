"""A cluster of in-process agents over one store, with round-robin and least-loaded placement.

    async with maif_agent_cluster(storage, num_agents=4) as cluster:
        agent_id = await cluster.submit_task_least_loaded(task)

Least-loaded compares each agent's queue depth plus in-flight tasks and picks the smallest, ties going
to the agent after the last one chosen (so equal loads rotate instead of piling on agent 0). Leaving the
block calls :meth:`AgentCluster.shutdown_all`, which drains every agent. Agents share one thread pool of
``processing_threads`` workers, so the CPU is not oversubscribed by the number of agents.
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
        count = len(self.agents)
        order = [(self._next + offset) % count for offset in range(count)]
        chosen = min(order, key=lambda index: self.agents[index].load)
        self._next = (chosen + 1) % count
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
) -> AsyncIterator[AgentCluster]:
    """Start ``num_agents`` agents (ids ``agent-0`` ... unless ``agent_ids``); drain them all on exit.

    With a ``security_manager``, ``contexts`` maps each agent id to its security context.
    """
    if not 1 <= num_agents <= 100_000:
        raise AgentError("num_agents must be between 1 and 100000")
    section = config if isinstance(config, AgentConfig) else load_section(AgentConfig, config)
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


__all__ = ["AgentCluster", "maif_agent_cluster"]
