"""Agent task submission and status over HTTP: one :class:`maif.agents.MAIFAgent` per calling agent.

A caller's tasks run in an agent named after the caller (its verified agent id), so every block a task
produces is owned by the caller. Input blocks are read through the gate first: a task may only read what
its submitter may read (the agent itself reads the store directly). Status comes from the agent's public
records (finished outcomes and dead letters, both bounded); a task not among them is "pending" (queued,
running, or finished so long ago it was forgotten).

Limits of this build: blocks produced by tasks are not signed (the agent would need the caller's registered
signing key) and carry no tenant label, so callers with a tenant are refused (fail closed) rather than
have their outputs land in the default tenant.
"""

from __future__ import annotations

import asyncio
from typing import Any

from maif import limits
from maif.errors import AgentError, QueueFullError
from maif.security.policy import Action, Resource
from maif.security.trust import SecurityContext
from maif.service.blocks import BlockService
from maif.service.problems import ServiceProblem
from maif.storage.engine import MAIFStorage


class TaskRunner:
    """The per-caller agents of one service (at most ``service_task_agents_max``)."""

    def __init__(self, storage: MAIFStorage, blocks: BlockService) -> None:
        self._storage = storage
        self._blocks = blocks
        self._agents: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def submit(self, context: SecurityContext, task: Any) -> bool:
        if context.tenant:
            raise ServiceProblem(
                403, "forbidden", "agent tasks are not available to tenant callers in this build"
            )
        await self._blocks.authorize(context, Action.WRITE, _task_resource(context, task.task_id))
        for block_id in task.input_blocks:
            await self._blocks.read_authorized(context, block_id)
        agent = await self._agent_for(context.agent_id)
        try:
            return bool(await agent.submit_task(task))
        except QueueFullError:
            raise
        except AgentError as error:
            raise ServiceProblem(400, "invalid-task", error.message) from None

    async def status(self, context: SecurityContext, task_id: str) -> dict[str, Any]:
        await self._blocks.authorize(context, Action.READ, _task_resource(context, task_id))
        agent = self._agents.get(context.agent_id)
        if agent is not None:
            for outcome in reversed(agent.outcomes):
                if outcome.task_id == task_id:
                    return {
                        "task_id": task_id,
                        "status": "done",
                        "block_ids": list(outcome.block_ids),
                        "attempts": outcome.attempts,
                        "reason": None,
                    }
            for dead in reversed(agent.dead_letters):
                if dead.task_id == task_id:
                    return {
                        "task_id": task_id,
                        "status": "failed",
                        "block_ids": [],
                        "attempts": dead.attempts,
                        "reason": dead.reason,
                    }
        return {"task_id": task_id, "status": "pending", "block_ids": [], "attempts": 0, "reason": None}

    async def _agent_for(self, agent_id: str) -> Any:
        from maif.agents.agent import MAIFAgent

        async with self._lock:
            agent = self._agents.get(agent_id)
            if agent is None:
                if len(self._agents) >= limits.service_task_agents_max:
                    raise QueueFullError("this service runs as many task agents as it may; try again later")
                agent = MAIFAgent(agent_id, self._storage)
                await agent.start()
                self._agents[agent_id] = agent
            return agent

    def figures(self) -> dict[str, int]:
        """Queue depth, in-flight tasks and the agents' counters, summed over this service's agents."""
        totals = dict.fromkeys(("queue_depth", "in_flight", "submitted", "completed", "retries"), 0)
        totals.update(agents=len(self._agents), dead_lettered=0, rejected_full=0)
        for agent in list(self._agents.values()):
            totals["queue_depth"] += agent.queue_depth
            totals["in_flight"] += agent.in_flight
            for name, value in agent.counters.items():
                totals[name] = totals.get(name, 0) + value
        return totals

    async def stop(self) -> None:
        """Drain every agent: accepted tasks run to completion before the store closes."""
        for agent in list(self._agents.values()):
            await agent.stop()
        self._agents.clear()


def _task_resource(context: SecurityContext, task_id: str) -> Resource:
    return Resource(f"task:{task_id}", owner=context.agent_id, tenant=context.tenant, kind="agent-task")


__all__ = ["TaskRunner"]
