"""Where a vector search's time goes: the raw usearch walk, MAIF's search inline, and MAIF's search
through a worker thread (the path every search took before ADR 0033).

Same index, same queries, the three measured in turn ten times; the figure is the median of the ten
per-query means (the machine is shared, so single rounds move by 2x).

    .venv/bin/python benchmarks/vector_overhead_bench.py [--vectors 20000]

Writes benchmarks/results/vector_overhead_bench.json with the load average at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from maif.storage.vectors import UsearchVectorIndex, check_vector, quantise, unit_vector
from vector_bench import ADD_BATCH, make_data

ROUNDS = 10
TOP_K = 10


async def per_query_us(search: Callable[[np.ndarray], Awaitable[object]], queries: np.ndarray) -> float:
    started = time.perf_counter_ns()
    for query in queries:
        await search(query)
    return (time.perf_counter_ns() - started) / 1000 / len(queries)


async def scenario(directory: Path, data: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    index = UsearchVectorIndex(directory)
    for start in range(0, len(data), ADD_BATCH):
        await index.add([(f"v{n}", data[n], {}) for n in range(start, min(start + ADD_BATCH, len(data)))])
    graph = index._index  # the benchmark looks inside on purpose: the raw walk of the same graph
    assert graph is not None

    async def raw(query: np.ndarray) -> object:  # the walk MAIF asks for: 2 x limit candidates
        return graph.search(quantise(unit_vector(query), index.dtype), 2 * TOP_K, threads=1)

    async def inline(query: np.ndarray) -> object:
        return await index.search(query, TOP_K)

    async def thread_hop(query: np.ndarray) -> object:
        vector = unit_vector(check_vector(query))
        return await asyncio.to_thread(index._locked, index._search_locked, vector, TOP_K, None, {})

    paths = {"raw_walk": raw, "maif_inline": inline, "maif_thread_hop": thread_hop}
    rounds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(ROUNDS):
        for name, search in paths.items():
            rounds[name].append(await per_query_us(search, queries))
    await index.close()
    return {f"{name}_latency_us_mean_median": float(np.median(values)) for name, values in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description="raw usearch walk vs MAIF's search, inline and threaded")
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--output", type=Path,
                        default=Path(__file__).parent / "results" / "vector_overhead_bench.json")
    arguments = parser.parse_args()
    data, queries = make_data(arguments.vectors, arguments.queries)
    load_average_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as directory:
        figures = asyncio.run(scenario(Path(directory), data, queries))
    report = {
        "benchmark": "vector_overhead_bench",
        "machine": {"cpus": os.cpu_count(), "load_average_start": load_average_start,
                    "load_average_end": os.getloadavg()},
        "data": {"vectors": len(data), "queries": len(queries), "rounds": ROUNDS},
        **figures,
        "wrapper_us": (figures["maif_inline_latency_us_mean_median"]
                       - figures["raw_walk_latency_us_mean_median"]),
        "thread_hop_saved_us": (figures["maif_thread_hop_latency_us_mean_median"]
                                - figures["maif_inline_latency_us_mean_median"]),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
