"""The seed's ``maif_agent`` module, kept so that code written against the seed's README runs unchanged.

The seed imported ``from maif_agent import MAIFAgent, AgentTask, maif_agent_cluster``. These are the very
objects :mod:`maif` exports; new code imports from ``maif``. The seed's Quick Start (submit a task, then
``await agent.start()`` as the last line of ``main``) stores the task's blocks: ``start`` runs the tasks
accepted before it (docs/adr/0051-agent-runtime-semantics.md).
"""

from __future__ import annotations

from maif import AgentTask, MAIFAgent, maif_agent_cluster

__all__ = ["AgentTask", "MAIFAgent", "maif_agent_cluster"]
