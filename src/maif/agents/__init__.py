"""The agent runtime: agents, tasks, clusters, handlers, provenance and embeddings."""

from maif.agents.agent import MAIFAgent
from maif.agents.cluster import AgentCluster, maif_agent_cluster
from maif.agents.handlers.registry import Handler, HandlerRegistry
from maif.agents.tasks import AgentTask, BlockDraft, DeadLetter, TaskOutcome

__all__ = [
    "AgentCluster",
    "AgentTask",
    "BlockDraft",
    "DeadLetter",
    "Handler",
    "HandlerRegistry",
    "MAIFAgent",
    "TaskOutcome",
    "maif_agent_cluster",
]
