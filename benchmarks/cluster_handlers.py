"""The I/O-bound task handler of benchmarks/cluster_bench.py, loaded by `maif worker --handlers
cluster_handlers`: ``model_call`` awaits one HTTP request to MAIF_BENCH_MODEL_URL, a local stub that
answers after 20 ms and stands for a remote model API (through benchmarks/http_client.py: httpx's pool
cost ~1 ms of the worker's CPU per request with 1000 connections), then stores the answer as one TEXT block.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from http_client import HTTPPool
from maif.agents.tasks import AgentTask, BlockDraft
from maif.format.block import MAIFBlockType

_pool: HTTPPool | None = None


async def model_call(task: AgentTask, inputs: Any) -> list[BlockDraft]:
    global _pool
    if _pool is None:  # one pool per worker process, created on its event loop
        _pool = HTTPPool(os.environ["MAIF_BENCH_MODEL_URL"], connections_max=2000)
    status, answer = await asyncio.wait_for(_pool.request("POST", _pool.path, task.task_id.encode()), 30.0)
    if status != 200:
        raise RuntimeError(f"the model API stub answered {status}")
    return [BlockDraft(MAIFBlockType.TEXT, answer + b" " + task.task_id.encode(), role="answer")]


def register(registry: Any) -> None:
    registry.register("model_call", model_call)
