"""Ingest benchmark: MAIF's durable write path against its peers, measured in the same run.

    .venv/bin/python benchmarks/ingest_bench.py [--blocks 100000] [--repeats 3] [--rss-blocks 1000000]

Peers (same machine, same disk, same run, 1 KiB incompressible records):
  raw_append         one write + one fdatasync per group of 1000 records: the physical limit of the log
  raw_append_groups_of_64  the same with groups of 64: the limit for 64 closed-loop writers
  fdatasync_latency  one 1 KiB append + fdatasync (p50/p99): the floor under any durable ack latency
  sqlite_full_1      SQLite, journal_mode=WAL, synchronous=FULL, one row per commit
  sqlite_full_1000   the same, 1000 rows per commit
  lmdb_sync_1000     LMDB with sync=True, 1000 puts per transaction
MAIF (durability "durable", default config unless stated):
  maif_batch_ack     write_blocks of 1000 blocks: blocks/s acknowledged (durable in the log)
  maif_batch_applied the same until close() returned: also chunked, indexed and checkpointed
  maif_concurrent_64 64 tasks calling write_block
  open_loop_<rate>   open loop: 1k, 2k, 5k, 10k single write_block/s offered, 3 s each; latency from the
                     scheduled instant to the ack (p50/p99) and the rate achieved; the highest rate whose
                     p99 stays within max(5 ms, 1.5x this run's fdatasync p99) is reported
  maif_read_hot      read_block of cached blocks;  maif_read_warm  blocks not cached (packs, OS cache warm)
  maif_ingest_rss    a subprocess ingests --rss-blocks small blocks (bulk_unsafe); its peak RSS
Medians over --repeats runs are written to benchmarks/results/ingest.json with the machine context.
The machine is shared: compare ratios against the peers of the same run rather than absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from maif.format.block import MAIFBlock
from maif.storage.engine import create_maif_storage

RECORD_BYTES = 1024
GROUP_RECORDS = 1000
RESULTS = Path(__file__).parent / "results" / "ingest.json"


def payloads(count: int) -> list[bytes]:
    seed = os.urandom(RECORD_BYTES)
    return [seed[:-8] + index.to_bytes(8, "little") for index in range(count)]


def blocks(count: int, prefix: str, first_timestamp: int = 0) -> list[MAIFBlock]:
    """``count`` blocks of 1 KiB, timestamps increasing from ``first_timestamp`` (as a store sees them)."""
    return [MAIFBlock(id=f"{prefix}{index}", data=data, agent_id="bench",
                      timestamp=float(first_timestamp + index))
            for index, data in enumerate(payloads(count))]


# ---- peers ---------------------------------------------------------------------------------------
def raw_append(directory: Path, count: int) -> float:
    data = payloads(count)
    fd = os.open(directory / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.perf_counter()
    for start in range(0, count, GROUP_RECORDS):
        os.write(fd, b"".join(data[start:start + GROUP_RECORDS]))
        os.fdatasync(fd)
    elapsed = time.perf_counter() - started
    os.close(fd)
    return count / elapsed


def raw_append_groups_of(directory: Path, count: int, group: int) -> float:
    """The physical limit for ``group`` closed-loop writers: one fdatasync per ``group`` records."""
    data = payloads(count)
    fd = os.open(directory / "raw64.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.perf_counter()
    for start in range(0, count, group):
        os.write(fd, b"".join(data[start:start + group]))
        os.fdatasync(fd)
    elapsed = time.perf_counter() - started
    os.close(fd)
    return count / elapsed


def fdatasync_latency(directory: Path, samples: int = 500) -> dict[str, float]:
    """One 1 KiB append + fdatasync, timed: the floor under any durable ack latency."""
    fd = os.open(directory / "sync.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    latencies = []
    record = os.urandom(RECORD_BYTES)
    for _ in range(samples):
        started = time.perf_counter()
        os.write(fd, record)
        os.fdatasync(fd)
        latencies.append(time.perf_counter() - started)
    os.close(fd)
    latencies.sort()
    return {"fdatasync_latency_ms_p50": latencies[samples // 2] * 1e3,
            "fdatasync_latency_ms_p99": latencies[int(samples * 0.99)] * 1e3}


def sqlite_full(directory: Path, count: int, per_commit: int) -> float:
    connection = sqlite3.connect(directory / f"peer-{per_commit}.sqlite", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE blocks (id TEXT PRIMARY KEY, data BLOB)")
    data = payloads(count)
    started = time.perf_counter()
    for start in range(0, count, per_commit):
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO blocks VALUES (?, ?)",
                               ((f"b{i}", data[i]) for i in range(start, min(count, start + per_commit))))
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def lmdb_sync(directory: Path, count: int, per_transaction: int) -> float:
    return lmdb_sync_timed(directory, count, per_transaction)[0]


def lmdb_sync_timed(directory: Path, count: int, per_transaction: int) -> tuple[float, float]:
    """LMDB's puts/s, and the CPU time of the putting thread per put in microseconds."""
    environment = lmdb.open(str(directory / "peer.lmdb"), map_size=4 << 30, sync=True, metasync=True)
    data = payloads(count)
    started, cpu_started = time.perf_counter(), time.thread_time()
    for start in range(0, count, per_transaction):
        with environment.begin(write=True) as transaction:
            for index in range(start, min(count, start + per_transaction)):
                transaction.put(f"b{index}".encode(), data[index])
    elapsed, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    environment.close()
    return count / elapsed, cpu / count * 1e6


# ---- MAIF ----------------------------------------------------------------------------------------
async def maif_batch(directory: Path, count: int) -> dict[str, float]:
    items = blocks(count, "b")
    storage = await create_maif_storage({"data_dir": str(directory)})
    started = time.perf_counter()
    for start in range(0, count, GROUP_RECORDS):
        await storage.write_blocks(items[start:start + GROUP_RECORDS])
    acknowledged = time.perf_counter() - started
    await storage.close()
    applied = time.perf_counter() - started
    return {"maif_batch_ack": count / acknowledged, "maif_batch_applied": count / applied}


async def maif_concurrent(directory: Path, count: int, writers: int = 64) -> dict[str, float]:
    queue = iter(blocks(count, "c"))
    storage = await create_maif_storage({"data_dir": str(directory)})

    async def writer() -> None:
        for block in queue:
            await storage.write_block(block)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - started
    stats = await storage.get_stats()
    await storage.close()
    return {"maif_concurrent_64": count / elapsed,
            "maif_concurrent_64_ack_latency_ms_p99": stats["ack_latency_ms_p99"]}


OPEN_LOOP_RATES = (1000, 2000, 5000, 10_000)
OPEN_LOOP_SECONDS = 3.0


async def maif_latency_at_rate(directory: Path, rate: float, duration_s: float) -> dict[str, float]:
    """Open loop: one write_block per 1/rate s, whatever the store does; latency counts from the
    scheduled instant (so a stalled store cannot hide its queue), to the durable ack."""
    count = int(rate * duration_s)
    items = blocks(count, "l")
    storage = await create_maif_storage({"data_dir": str(directory)})
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def one(block: MAIFBlock, scheduled: float) -> None:
        await storage.write_block(block)
        latencies.append(loop.time() - scheduled)

    tasks = []
    start = loop.time() + 0.01
    for index, block in enumerate(items):
        scheduled = start + index / rate
        if scheduled > loop.time():
            await asyncio.sleep(scheduled - loop.time())
        tasks.append(loop.create_task(one(block, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    await storage.close()
    latencies.sort()
    key = f"open_loop_{int(rate)}"
    return {f"{key}_latency_ms_p50": latencies[len(latencies) // 2] * 1e3,
            f"{key}_latency_ms_p99": latencies[int(len(latencies) * 0.99)] * 1e3,
            f"{key}_achieved_per_s": count / elapsed}


async def maif_reads(directory: Path, count: int) -> dict[str, float]:
    items = blocks(count, "r")
    async with await create_maif_storage({"data_dir": str(directory)}) as storage:
        for start in range(0, count, GROUP_RECORDS):
            await storage.write_blocks(items[start:start + GROUP_RECORDS])
    ids = [block.id for block in items]
    async with await create_maif_storage({"data_dir": str(directory)}) as storage:
        started = time.perf_counter()
        for block_id in ids:  # first reads: nothing cached, served from the packs
            await storage.read_block(block_id)
        warm = count / (time.perf_counter() - started)
        started = time.perf_counter()
        for block_id in ids:  # second reads: the hot cache
            await storage.read_block(block_id)
        hot = count / (time.perf_counter() - started)
        hit_rate = (await storage.get_stats())["cache_hit_rate"]
    return {"maif_read_warm": warm, "maif_read_hot": hot, "maif_read_cache_hit_rate": hit_rate}


_RSS_CHILD = """
import asyncio, sys
from maif.format.block import MAIFBlock
from maif.storage.engine import create_maif_storage
async def main(data_dir, count):
    config = {"data_dir": data_dir, "durability": "bulk_unsafe", "max_memory_mb": 64}
    async with await create_maif_storage(config) as storage:
        for start in range(0, count, 1000):
            await storage.write_blocks([MAIFBlock(id=f"m{i}", data=i.to_bytes(8, "little") * 12,
                                        timestamp=float(i)) for i in range(start, start + 1000)])
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across (v)fork and exec.
    status = open("/proc/self/status").read()
    print(int(status.split("VmHWM:")[1].split()[0]) * 1024)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def maif_ingest_rss(directory: Path, count: int) -> dict[str, float]:
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(directory), str(count)], check=True,
                            capture_output=True, text=True).stdout
    elapsed = time.perf_counter() - started
    return {"maif_ingest_rss_mb": int(output.strip()) / 2**20, "maif_ingest_rss_blocks": count,
            "maif_ingest_rss_max_memory_mb": 64, "maif_ingest_bulk_blocks_per_s": count / elapsed}


# ---- driver --------------------------------------------------------------------------------------
def in_fresh_directory(function: Callable[[Path], Any]) -> Any:
    directory = Path(tempfile.mkdtemp(prefix="maif-bench-", dir=os.environ.get("MAIF_BENCH_DIR")))
    try:
        return function(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def one_run(count: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    figures["raw_append"] = in_fresh_directory(lambda d: raw_append(d, count))
    figures["raw_append_groups_of_64"] = in_fresh_directory(lambda d: raw_append_groups_of(d, count, 64))
    figures.update(in_fresh_directory(fdatasync_latency))
    figures["sqlite_full_1"] = in_fresh_directory(lambda d: sqlite_full(d, min(count, 2000), 1))
    figures["sqlite_full_1000"] = in_fresh_directory(lambda d: sqlite_full(d, count, 1000))
    figures["lmdb_sync_1000"] = in_fresh_directory(lambda d: lmdb_sync(d, count, 1000))
    figures.update(in_fresh_directory(lambda d: asyncio.run(maif_batch(d, count))))
    figures.update(in_fresh_directory(lambda d: asyncio.run(maif_concurrent(d, min(count, 50_000)))))
    for rate in OPEN_LOOP_RATES:
        figures.update(in_fresh_directory(
            lambda d, rate=rate: asyncio.run(maif_latency_at_rate(d, rate, OPEN_LOOP_SECONDS))))
    figures.update(in_fresh_directory(lambda d: asyncio.run(maif_reads(d, min(count, 20_000)))))
    return figures


def reads_only(count: int, repeats: int, output: Path) -> None:
    runs = [in_fresh_directory(lambda d: asyncio.run(maif_reads(d, count))) for _ in range(repeats)]
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    result = {"benchmark": "reads", "record_bytes": RECORD_BYTES, "blocks": count, "repeats": repeats,
              "medians": medians, "runs": runs,
              "targets_met": {"read_hot_200k": medians["maif_read_hot"] >= 200_000,
                              "read_warm_50k": medians["maif_read_warm"] >= 50_000},
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg()}}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-blocks", type=int, default=1_000_000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--switch-interval-s", type=float, default=None,
                        help="sys.setswitchinterval for this process (default: Python's 0.005)")
    parser.add_argument("--reads-only", action="store_true",
                        help="only the read figures over --blocks blocks (results/reads.json)")
    arguments = parser.parse_args()
    if arguments.switch_interval_s is not None:
        sys.setswitchinterval(arguments.switch_interval_s)
    if arguments.reads_only:
        reads_only(arguments.blocks, arguments.repeats, arguments.output.with_name("reads.json"))
        return
    runs = []
    for repeat in range(arguments.repeats):
        runs.append(one_run(arguments.blocks))
        print(f"run {repeat + 1}: " + json.dumps({k: round(v, 2) for k, v in runs[-1].items()}), flush=True)
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    medians.update(in_fresh_directory(lambda d: maif_ingest_rss(d, arguments.rss_blocks)))
    ratios = {
        "batch_ack_vs_lmdb_sync_1000": medians["maif_batch_ack"] / medians["lmdb_sync_1000"],
        "batch_applied_vs_lmdb_sync_1000": medians["maif_batch_applied"] / medians["lmdb_sync_1000"],
        "batch_ack_vs_raw_append": medians["maif_batch_ack"] / medians["raw_append"],
        "batch_ack_vs_sqlite_full_1000": medians["maif_batch_ack"] / medians["sqlite_full_1000"],
        "concurrent_64_vs_sqlite_full_1": medians["maif_concurrent_64"] / medians["sqlite_full_1"],
        "concurrent_64_vs_raw_append_groups_of_64": medians["maif_concurrent_64"]
        / medians["raw_append_groups_of_64"],
    }
    # the issue-13 goal for single writes: p99 <= max(5 ms, 1.5x this run's fdatasync p99)
    bound_ms = max(5.0, 1.5 * medians["fdatasync_latency_ms_p99"])
    open_loop = {str(rate): {figure: medians[f"open_loop_{rate}_{figure}"]
                             for figure in ("latency_ms_p50", "latency_ms_p99", "achieved_per_s")}
                 for rate in OPEN_LOOP_RATES}
    holding = [rate for rate in OPEN_LOOP_RATES if open_loop[str(rate)]["latency_ms_p99"] <= bound_ms
               and open_loop[str(rate)]["achieved_per_s"] >= 0.98 * rate]
    targets = {
        "open_loop_5000_p99_within_bound": 5000 in holding,
        "batch_ack_blocks_per_s_300k": medians["maif_batch_ack"] >= 300_000,
        "batch_ack_1_1x_lmdb": ratios["batch_ack_vs_lmdb_sync_1000"] >= 1.1,
        "concurrent_64_blocks_per_s_50k": medians["maif_concurrent_64"] >= 50_000,
        "read_hot_200k": medians["maif_read_hot"] >= 200_000,
        "read_warm_50k": medians["maif_read_warm"] >= 50_000,
        "ingest_rss_within_max_memory_plus_150mb": medians["maif_ingest_rss_mb"] <= 64 + 150,
    }
    result = {
        "benchmark": "ingest", "record_bytes": RECORD_BYTES, "blocks": arguments.blocks,
        "repeats": arguments.repeats, "switch_interval_s": sys.getswitchinterval(),
        "medians": medians, "ratios": ratios, "targets_met": targets,
        "open_loop": open_loop, "open_loop_p99_bound_ms": bound_ms,
        "open_loop_highest_rate_within_bound": max(holding, default=None),
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_at_end": os.getloadavg()},
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"medians": medians, "ratios": ratios, "targets_met": targets}, indent=2))


if __name__ == "__main__":
    main()
