"""Task handlers the worker tests and scripts/cluster_chaos.py load with `maif worker --handlers
worker_handlers` (this directory on PYTHONPATH).

- ``test_work``: touches ``<MAIF_TEST_STARTED_DIR>/<task>.<pid>`` when it starts (so a test knows which
  worker runs what), sleeps ``input_data["seconds"]`` (default MAIF_TEST_WORK_DELAY_S, else 10 ms: a
  stand-in for a model call), and produces one TEXT block whose bytes derive from the task alone;
- ``test_fail``: always raises (a task that fails on every attempt);
- ``test_crash``: ends the worker process at once (a poison task that kills whoever runs it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from maif.agents.tasks import AgentTask, BlockDraft
from maif.format.block import MAIFBlockType


async def work(task: AgentTask, inputs: Any) -> list[BlockDraft]:
    started = os.environ.get("MAIF_TEST_STARTED_DIR")
    if started:
        Path(started, f"{task.task_id}.{os.getpid()}").touch()
    seconds = float(task.input_data.get("seconds", os.environ.get("MAIF_TEST_WORK_DELAY_S", "0.01")))
    await asyncio.sleep(seconds)
    return [BlockDraft(MAIFBlockType.TEXT, f"result of {task.task_id}".encode(), role="result")]


def fail(task: AgentTask, inputs: Any) -> list[BlockDraft]:
    raise RuntimeError(f"task {task.task_id} always fails")


def crash(task: AgentTask, inputs: Any) -> list[BlockDraft]:
    os._exit(17)


def register(registry: Any) -> None:
    registry.register("test_work", work)
    registry.register("test_fail", fail, cpu_bound=False)
    registry.register("test_crash", crash, cpu_bound=False)
