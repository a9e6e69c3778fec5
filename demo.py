#!/usr/bin/env python3
"""The seed's `python demo.py`, made true: its import lines and its Quick Start, on the embedded store.

    .venv/bin/python demo.py [--workdir DIR]      (no servers; DIR defaults to a fresh temporary directory)

1. The seed's Quick Start, verbatim, run as its own program: it submits a task, awaits ``agent.start()``
   and lets ``asyncio.run`` end. ``start`` runs the tasks accepted before it, so the task's blocks are
   durable before that program exits; they are read back here from the reopened store.
2. Storage: 100 blocks written concurrently, each acknowledged only once durable, read back bit-exact.
3. A cluster of 3 agents: tasks placed round-robin and least-loaded, each result awaited with
   ``agent.result(task_id)``, then a multimodal fusion of a text and an image embedding.
4. A full check of the store: every block read back and its digest verified.

Exit status 0 only if every step's own check held. Signatures, export to a signed .maif file, offline
verification and tamper detection are in the full demo, ``scripts/demo`` (``maif demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "src"
sys.path.insert(0, str(SOURCE))  # runs from a checkout even before `pip install -e .`

from maif_agent import AgentTask, MAIFAgent, maif_agent_cluster  # noqa: E402 - the seed's imports
from maif_core import MAIFBlock, MAIFBlockType, create_maif_storage  # noqa: E402

# The seed README's Quick Start, verbatim (its comments included; its blank lines without trailing spaces).
SEED_QUICK_START = """\
import asyncio
from maif_core import create_maif_storage, MAIFBlock, MAIFBlockType
from maif_agent import MAIFAgent, AgentTask

async def main():
    # Create high-performance storage
    storage = await create_maif_storage()

    # Create AI agent
    agent = MAIFAgent("my_agent", storage)

    # Submit tasks
    task = AgentTask("task_1", "text_analysis", {"text": "Hello MAIF!"})
    await agent.submit_task(task)

    # Process (runs in background)
    await agent.start()

asyncio.run(main())
"""


def run_seed_quick_start(data_dir: Path) -> None:
    print("1. The seed's Quick Start, run as its own program")
    env = {
        **os.environ,
        "MAIF_STORAGE_DATA_DIR": str(data_dir),  # where its create_maif_storage() puts ./maif-data
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run([sys.executable, "-c", SEED_QUICK_START], env=env, cwd=data_dir.parent, timeout=300)
    check(done.returncode == 0, f"the Quick Start exited with status {done.returncode}")
    print("   it exited with status 0")


async def read_back_quick_start(storage: Any) -> None:
    summaries = await storage.list_blocks(agent_id="my_agent", limit=100)
    check(summaries, "the Quick Start stored no block")
    for summary in summaries:
        block = await storage.read_block(summary.block_id)
        provenance = block.metadata["provenance"]
        check(provenance["task_id"] == "task_1", f"{block.id} names task {provenance['task_id']!r}")
        print(
            f"   stored before it exited: {block.id} ({summary.block_type}, {len(block.data)} bytes, "
            f"handler {provenance['handler']} {provenance['handler_version']}, log position {summary.lsn})"
        )
    print("   (it never closed its store: the write-ahead log held every acknowledged block, replayed"
          " at this open)")


async def storage_round_trip(storage: Any) -> None:
    print("2. Storage: 100 blocks written concurrently, read back")
    blocks = [
        MAIFBlock(
            id=f"perf_test_{index}",
            block_type=MAIFBlockType.TEXT,
            data=f"Performance test block {index} with some sample data".encode(),
            metadata={"test": True, "sequence": index},
            agent_id="demo_agent",
        )
        for index in range(100)
    ]
    receipts = await asyncio.gather(*(storage.write_block(block) for block in blocks))
    in_order = [receipt.block_id for receipt in receipts] == [block.id for block in blocks]
    check(in_order, "receipts out of order")
    for block in blocks:
        check((await storage.read_block(block.id)).data == block.data, f"{block.id} did not read back")
    print(f"   100 receipts (log positions {receipts[0].lsn}..{receipts[-1].lsn}), 100 blocks read back")


async def cluster_with_results(storage: Any) -> None:
    print("3. A cluster of 3 agents, every result awaited")
    async with maif_agent_cluster(storage, num_agents=3) as cluster:
        tasks = [
            AgentTask("text_1", "text_analysis", {"text": "MAIF makes what AI agents produce provable."}),
            AgentTask("image_1", "image_processing", {"image": _small_png()}),
            AgentTask("graph_1", "knowledge_extraction", {"text": "Ada Lovelace wrote to Charles Babbage."}),
            AgentTask("text_2", "text_analysis", {"text": "Security and trust are critical for AI systems."}),
        ]
        placed: dict[str, MAIFAgent] = {}
        for index, task in enumerate(tasks):
            submit = cluster.submit_task_round_robin if index % 2 == 0 else cluster.submit_task_least_loaded
            placed[task.task_id] = cluster.agent(await submit(task))
        embeddings: tuple[str, ...] = ()
        for task_id, agent in placed.items():
            outcome = await agent.result(task_id, timeout=120)
            positions = [receipt.lsn for receipt in outcome.receipts]
            print(f"   {task_id} on {agent.agent_id}: {', '.join(outcome.block_ids)} (log {positions})")
            for block_id in outcome.block_ids:
                block = await storage.read_block(block_id)
                if task_id in ("text_1", "image_1") and block.block_type == MAIFBlockType.EMBEDDING:
                    embeddings += (block_id,)
        fusion = AgentTask("fusion_1", "multimodal_fusion", {"text_weight": 0.5}, input_blocks=embeddings)
        agent = cluster.agent(await cluster.submit_task_least_loaded(fusion))
        outcome = await agent.result("fusion_1", timeout=120)
        fused = await storage.read_block(outcome.block_ids[0])
        check(set(fused.parents) == set(embeddings), "the fused embedding does not name its inputs")
        print(f"   fusion_1: {fused.id} fuses {', '.join(fused.parents)}")
    stats = await cluster.get_cluster_stats()
    check(stats["completed"] == len(tasks) + 1 and stats["dead_lettered"] == 0, f"cluster stats: {stats}")
    print(f"   cluster: {stats['completed']} tasks completed, {stats['blocks_written']} blocks written")


async def main(workdir: Path) -> None:
    data_dir = workdir / "maif-data"
    run_seed_quick_start(data_dir)
    async with await create_maif_storage({"data_dir": str(data_dir)}) as storage:
        await read_back_quick_start(storage)
        await storage_round_trip(storage)
        await cluster_with_results(storage)
        print("4. Checking the whole store")
        report = await storage.check(read_data_fraction=1.0)
        check(report.ok, f"store check found problems: {report.problems}")
        print(f"   {report.blocks_read} blocks read back, every digest verified")
    print(f"All checks held. The store: {data_dir}")


def check(condition: object, failure: str) -> None:
    if not condition:
        raise SystemExit(f"demo: FAILED: {failure}")


def _small_png() -> bytes:
    from PIL import Image

    picture = Image.new("RGB", (64, 48), (30, 90, 200))
    picture.paste((240, 200, 40), (16, 12, 48, 36))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="keep the store here (default: a temporary directory)")
    arguments = parser.parse_args()
    if arguments.workdir is not None:
        arguments.workdir.mkdir(parents=True, exist_ok=True)
        asyncio.run(main(arguments.workdir.resolve()))
    else:
        with tempfile.TemporaryDirectory(prefix="maif-demo-") as directory:
            asyncio.run(main(Path(directory)))
