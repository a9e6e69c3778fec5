"""The I/O-bound task handler of benchmarks/cluster_bench.py, loaded by `maif worker --handlers
cluster_handlers`: ``model_call`` awaits one HTTP request to MAIF_BENCH_MODEL_URL, a local stub that
answers after 20 ms and stands for a remote model API, then stores the answer as one TEXT block.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from maif.agents.tasks import AgentTask, BlockDraft
from maif.format.block import MAIFBlockType

_client: httpx.AsyncClient | None = None


async def model_call(task: AgentTask, inputs: Any) -> list[BlockDraft]:
    global _client
    if _client is None:  # one pooled client per worker process, created on its event loop
        _client = httpx.AsyncClient(limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000),
                                    timeout=30.0)
    response = await _client.post(os.environ["MAIF_BENCH_MODEL_URL"], content=task.task_id.encode())
    response.raise_for_status()
    return [BlockDraft(MAIFBlockType.TEXT, response.content + b" " + task.task_id.encode(), role="answer")]


def register(registry: Any) -> None:
    registry.register("model_call", model_call)
