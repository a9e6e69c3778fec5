"""Agent runtime benchmark: overhead, scaling with in-process agents, and end-to-end with real handlers.

    .venv/bin/python benchmarks/agents_bench.py [--noop-tasks 200000] [--repeats 3]

  noop_overhead        one agent, a synchronous no-op handler (produces no block, so no store write):
                       tasks/s through submit_task -> queue -> batch -> handler -> bookkeeping. Target
                       >= 50k tasks/s. Peer in the same run: a bare asyncio.Queue put/get of the same
                       count (the floor of any asyncio queue-based runtime).
  io_scaling           1, 10, 100, 1000 agents, each running --io-tasks tasks of an async handler that
                       awaits asyncio.sleep(--io-sleep-ms) (an I/O call), batch_size 1 so each agent runs
                       one at a time. Ideal throughput = agents / sleep; efficiency = measured / ideal.
  end_to_end_text      a cluster of 4 agents, text_analysis (statistics, keywords, VADER, embedding) over
                       the demo corpus, blocks written durably to a real store: tasks/s and blocks/s;
                       the same with every block signed through the security manager (audited). The embedding
                       provider is the default one (the sentence model when the embeddings extra is
                       installed; MAIF_EMBEDDINGS=hashing selects the hashing method); its name is recorded.
Medians over --repeats are written to benchmarks/results/agents.json with the machine context.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from maif.agents import AgentTask, HandlerRegistry, MAIFAgent, maif_agent_cluster
from maif.agents.embeddings import HashingEmbedder, default_embedder

RESULTS = Path(__file__).resolve().parent / "results" / "agents.json"


def noop(task: AgentTask, inputs: Any) -> list[Any]:
    return []


async def noop_overhead(count: int) -> float:
    registry = HandlerRegistry()
    registry.register("noop", noop, cpu_bound=False)
    config = {"task_queue_size": count, "batch_size": 1024, "batch_timeout_ms": 0}
    agent = MAIFAgent("bench", storage=None, config=config, registry=registry)
    tasks = [AgentTask(f"t{index}", "noop", {}) for index in range(count)]
    started = time.perf_counter()
    await agent.start()
    for task in tasks:
        await agent.submit_task(task)
    await agent.stop()
    elapsed = time.perf_counter() - started
    assert (await agent.get_stats())["completed"] == count
    return count / elapsed


async def queue_peer(count: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue(count)
    started = time.perf_counter()

    async def consume() -> None:
        for _ in range(count):
            await queue.get()

    consumer = asyncio.create_task(consume())
    for index in range(count):
        await queue.put(index)
    await consumer
    return count / (time.perf_counter() - started)


async def io_scaling(agents: int, tasks_each: int, sleep_s: float) -> dict[str, float]:
    async def wait_io(task: AgentTask, inputs: Any) -> list[Any]:
        await asyncio.sleep(sleep_s)
        return []

    registry = HandlerRegistry()
    registry.register("io", wait_io)
    config = {"batch_size": 1, "batch_timeout_ms": 0, "task_queue_size": tasks_each}
    async with maif_agent_cluster(None, agents, config, registry=registry) as cluster:
        started = time.perf_counter()
        for index in range(agents * tasks_each):
            await cluster.submit_task_round_robin(AgentTask(f"t{index}", "io", {}))
        submitted_s = time.perf_counter() - started
        for agent in cluster.agents:
            await agent.drain()
        elapsed = time.perf_counter() - started
    throughput = agents * tasks_each / elapsed
    ideal = agents / sleep_s
    # The ideal elapsed time is tasks_each * sleep_s; submission (no await suspends it) delays the start.
    return {
        "tasks_per_s": round(throughput, 1),
        "ideal_tasks_per_s": ideal,
        "efficiency": round(throughput / ideal, 4),
        "submit_s": round(submitted_s, 4),
        "efficiency_after_submit": round(tasks_each * sleep_s / max(elapsed - submitted_s, 1e-9), 4),
    }


async def end_to_end(tasks_total: int, *, signed: bool, embedder: Any) -> dict[str, float]:
    from maif.agents.demo_issuer import DemoIssuer, bootstrap_agent
    from maif.cli.demo_full import corpus_texts
    from maif.storage import create_maif_storage

    texts = list(corpus_texts().values())
    with tempfile.TemporaryDirectory(prefix="maif-agents-bench-") as directory:
        storage = await create_maif_storage({"data_dir": f"{directory}/store"})
        manager = contexts = None
        ids = [f"bench-{index}" for index in range(4)]
        if signed:
            issuer = DemoIssuer()
            manager = issuer.security_manager(f"{directory}/security")
            contexts = {agent_id: await bootstrap_agent(manager, issuer, agent_id) for agent_id in ids}
        try:
            started = time.perf_counter()
            registry = HandlerRegistry.with_builtins(embedder)
            async with maif_agent_cluster(
                storage,
                4,
                {"batch_size": 32},
                registry=registry,
                security_manager=manager,
                contexts=contexts,
                agent_ids=ids,
            ) as cluster:
                for index in range(tasks_total):
                    task = AgentTask(f"t{index}", "text_analysis", {"text": texts[index % len(texts)]})
                    await cluster.submit_task_least_loaded(task, timeout=60)
            elapsed = time.perf_counter() - started
            stats = await cluster.get_cluster_stats()
        finally:
            await storage.close()
            if manager is not None:
                manager.close()
    assert stats["completed"] == tasks_total
    return {
        "tasks_per_s": round(tasks_total / elapsed, 1),
        "blocks_per_s": round(stats["blocks_written"] / elapsed, 1),
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median([run[key] for run in runs]) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noop-tasks", type=int, default=200_000)
    parser.add_argument("--io-tasks", type=int, default=20)
    parser.add_argument("--io-sleep-ms", type=float, default=20.0)
    parser.add_argument("--e2e-tasks", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    noop_runs = [asyncio.run(noop_overhead(args.noop_tasks)) for _ in range(args.repeats)]
    peer_runs = [asyncio.run(queue_peer(args.noop_tasks)) for _ in range(args.repeats)]
    scaling = {}
    for agents in (1, 10, 100, 1000):
        runs = [
            asyncio.run(io_scaling(agents, args.io_tasks, args.io_sleep_ms / 1000))
            for _ in range(args.repeats)
        ]
        scaling[str(agents)] = median_of(runs)
        print(f"io_scaling {agents}: {scaling[str(agents)]}", flush=True)
    embedder = default_embedder()
    embedder.embed(["warm-up"])  # a model loads once per process: not part of the measured work
    runs = {}
    for label, signed, provider in (
        ("plain", False, embedder),
        ("signed", True, embedder),
        ("hashing", False, HashingEmbedder()),
    ):
        runs[label] = median_of(
            [
                asyncio.run(end_to_end(args.e2e_tasks, signed=signed, embedder=provider))
                for _ in range(args.repeats)
            ]
        )
    noop_median, peer_median = statistics.median(noop_runs), statistics.median(peer_runs)
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "parameters": vars(args),
        "noop_overhead_tasks_per_s": round(noop_median, 1),
        "noop_target_tasks_per_s": 50_000,
        "noop_target_met": noop_median >= 50_000,
        "asyncio_queue_peer_items_per_s": round(peer_median, 1),
        "noop_vs_bare_queue_ratio": round(noop_median / peer_median, 4),
        "io_scaling": scaling,
        "embedding_provider": embedder.name,
        "end_to_end_text_analysis": runs["plain"],
        "end_to_end_text_analysis_signed": runs["signed"],
        "end_to_end_text_analysis_hashing_embedder": runs["hashing"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
