"""Compaction benchmark: space given back after deletes, how fast, and what it costs concurrent writers.

    .venv/bin/python benchmarks/compaction_bench.py [--blocks 2000] [--repeats 3] [--pack-mib 4]

Per repeat, one base store is written: --blocks blocks of mixed sizes (60 % 256 B-4 KiB, 30 % 16-64 KiB,
10 % 128-512 KiB, incompressible), 10 % of them reusing one of 20 shared payloads (deduplicated chunks).
For each deleted fraction (10, 50, 90 %, chosen at random, shared payloads included), a copy of the base
has that fraction deleted, then:
  quiet   compact() (default garbage_fraction_min 0.2) with nothing else running: bytes on disk of packs/
          before and after (apparent size and allocated blocks, like du), reclaimed bytes against the ideal
          (the stored frames of the chunks that only deleted blocks referred to), compaction time, MB/s
          (pack bytes rewritten per second, and reclaimed bytes per second); survivors are read back.
  writers the same store copied before compaction: 8 tasks keep calling write_block (4 KiB blocks); their
          acknowledged writes/s and p99 ack latency over a window as long as the quiet compaction (at
          least 1 s) without compaction, then while compact() runs.
Medians of --repeats runs go to benchmarks/results/compaction.json with the machine context.
Packs are --pack-mib MiB (the engine default is 64 MiB) so a store of this size spans many sealed packs:
compaction rewrites sealed packs only, never the active one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from maif.format.block import MAIFBlock
from maif.storage.backends.local import (
    LocalChunkStore,
    LocalMetadataIndex,
    LocalObjectStore,
    LocalVectorIndex,
)
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.tiers import TieredChunkStore, TierPolicy

RESULTS = Path(__file__).parent / "results" / "compaction.json"
FRACTIONS = (0.1, 0.5, 0.9)
SHARED_PAYLOADS = 20
WRITERS = 8
WRITER_BLOCK_BYTES = 4096
FRAME_HEADER_BYTES = 48
MiB = 1024 * 1024


def corpus(count: int, seed: int) -> list[MAIFBlock]:
    rng = random.Random(seed)
    shared = [rng.randbytes(rng.choice([rng.randint(256, 4096), rng.randint(16_384, 65_536)]))
              for _ in range(SHARED_PAYLOADS)]
    blocks = []
    for number in range(count):
        if rng.random() < 0.1:
            data = rng.choice(shared)
        else:
            draw = rng.random()
            size = (rng.randint(256, 4096) if draw < 0.6 else rng.randint(16_384, 65_536) if draw < 0.9
                    else rng.randint(131_072, 524_288))
            data = rng.randbytes(size)
        blocks.append(MAIFBlock(id=f"b{number}", data=data, agent_id="bench", timestamp=float(number)))
    return blocks


def backends(data_dir: Path, pack_bytes_max: int) -> Backends:
    warm = LocalChunkStore(data_dir / "packs", pack_bytes_max=pack_bytes_max)
    return Backends(TieredChunkStore(warm, LocalObjectStore(data_dir / "cold"), TierPolicy()),
                    LocalMetadataIndex(data_dir / "index.sqlite"), LocalVectorIndex(data_dir / "vectors"),
                    LRUHotCache(64 * MiB))


async def open_store(data_dir: Path, pack_bytes_max: int) -> MAIFStorage:
    return await create_maif_storage({"data_dir": str(data_dir), "tier_interval_s": 0},
                                     backends=backends(data_dir, pack_bytes_max))


def disk_usage(directory: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under ``directory``, like ``du -b`` and ``du``."""
    apparent = allocated = 0
    for path in directory.rglob("*"):
        if path.is_file():
            status = path.stat()
            apparent += status.st_size
            allocated += status.st_blocks * 512
    return apparent, allocated


async def build_base(data_dir: Path, blocks: list[MAIFBlock], pack_bytes_max: int) -> dict[str, Any]:
    """Write the corpus; returns each block's chunks and each chunk's frame size (for the ideal)."""
    async with await open_store(data_dir, pack_bytes_max) as storage:
        started = time.perf_counter()
        for start in range(0, len(blocks), 50):
            await storage.write_blocks(blocks[start:start + 50])
        await storage._wait_applied()
        elapsed = time.perf_counter() - started
        packs = storage._backends.chunks.warm.packs  # type: ignore[attr-defined]
        chunks_of: dict[str, list[bytes]] = {}
        frame_bytes: dict[bytes, int] = {}
        for block in blocks:
            record = await storage._backends.index.get(block.id)
            assert record is not None
            chunks_of[block.id] = list(record.chunks)
            for digest in record.chunks:
                location = packs.locate(digest)
                frame_bytes[digest] = FRAME_HEADER_BYTES + location.stored_length
    return {"chunks_of": chunks_of, "frame_bytes": frame_bytes, "write_s": elapsed,
            "logical_bytes": sum(len(block.data) for block in blocks)}


def ideal_reclaim(base: dict[str, Any], deleted: set[str]) -> int:
    """Stored bytes of the chunk frames that only deleted blocks refer to."""
    live = {digest for block_id, chunks in base["chunks_of"].items() if block_id not in deleted
            for digest in chunks}
    dead = {digest for block_id in deleted for digest in base["chunks_of"][block_id]} - live
    return sum(base["frame_bytes"][digest] for digest in dead)


async def delete_fraction(data_dir: Path, deleted: list[str], pack_bytes_max: int) -> float:
    async with await open_store(data_dir, pack_bytes_max) as storage:
        started = time.perf_counter()
        await asyncio.gather(*(storage.delete_block(block_id) for block_id in deleted))
        return time.perf_counter() - started


async def quiet_compaction(data_dir: Path, survivors: list[MAIFBlock], pack_bytes_max: int) -> dict[str, Any]:
    async with await open_store(data_dir, pack_bytes_max) as storage:
        before = disk_usage(data_dir / "packs")
        started = time.perf_counter()
        report = await storage.compact()
        elapsed = time.perf_counter() - started
        after = disk_usage(data_dir / "packs")
        sample = random.Random(1).sample(survivors, min(200, len(survivors)))
        for block in sample:
            assert await storage.read_block(block.id) == block, block.id
    return {"packs_bytes_before": before[0], "packs_bytes_after": after[0],
            "packs_allocated_before": before[1], "packs_allocated_after": after[1],
            "reclaimed_bytes": before[0] - after[0], "compaction_s": elapsed,
            "packs_examined": report.packs_examined, "packs_rewritten": report.packs_rewritten,
            "rewritten_pack_bytes": report.bytes_before, "live_bytes_copied": report.bytes_after,
            "report_bytes_reclaimed": report.bytes_reclaimed,
            "rewrite_mb_per_s": report.bytes_before / MiB / elapsed if elapsed else 0.0,
            "reclaim_mb_per_s": report.bytes_reclaimed / MiB / elapsed if elapsed else 0.0}


async def writers_during_compaction(data_dir: Path, window_s: float, pack_bytes_max: int) -> dict[str, Any]:
    """Writes/s and p99 ack latency of WRITERS closed-loop writers without, then during, compaction."""
    async with await open_store(data_dir, pack_bytes_max) as storage:
        acks: list[tuple[float, float]] = []  # (ack instant, latency)
        stop = asyncio.Event()

        async def writer(worker: int) -> None:
            payload = os.urandom(WRITER_BLOCK_BYTES)
            number = 0
            while not stop.is_set():
                block = MAIFBlock(id=f"w{worker}-{number}", data=payload[:-8] + number.to_bytes(8, "little"),
                                  agent_id="writer")
                started = time.perf_counter()
                await storage.write_block(block)
                now = time.perf_counter()
                acks.append((now, now - started))
                number += 1

        tasks = [asyncio.create_task(writer(worker)) for worker in range(WRITERS)]
        await asyncio.sleep(0.3)  # warm-up, not measured
        quiet_start = time.perf_counter()
        await asyncio.sleep(window_s)
        quiet_end = compaction_start = time.perf_counter()
        report = await storage.compact()
        compaction_end = time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)

    def window(start: float, end: float) -> tuple[float, float]:
        latencies = sorted(latency for instant, latency in acks if start <= instant < end)
        if not latencies:
            return 0.0, float("nan")
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        return len(latencies) / (end - start), p99 * 1e3

    quiet_rate, quiet_p99 = window(quiet_start, quiet_end)
    busy_rate, busy_p99 = window(compaction_start, compaction_end)
    return {"writes_per_s_without_compaction": quiet_rate, "writes_per_s_during_compaction": busy_rate,
            "ack_p99_ms_without_compaction": quiet_p99, "ack_p99_ms_during_compaction": busy_p99,
            "compaction_s_with_writers": compaction_end - compaction_start,
            "packs_rewritten_with_writers": report.packs_rewritten,
            "write_rate_during_vs_without": busy_rate / quiet_rate if quiet_rate else float("nan")}


def one_repeat(directory: Path, blocks: list[MAIFBlock], pack_bytes_max: int, seed: int) -> dict[str, Any]:
    base_dir = directory / "base"
    base = asyncio.run(build_base(base_dir, blocks, pack_bytes_max))
    figures: dict[str, Any] = {"base_write_s": base["write_s"], "logical_bytes": base["logical_bytes"],
                               "base_packs_bytes": disk_usage(base_dir / "packs")[0]}
    rng = random.Random(seed)
    for fraction in FRACTIONS:
        label = f"delete_{round(fraction * 100)}pct"
        deleted = rng.sample([block.id for block in blocks], round(len(blocks) * fraction))
        gone = set(deleted)
        quiet_dir, busy_dir = directory / f"{label}-quiet", directory / f"{label}-writers"
        shutil.copytree(base_dir, quiet_dir)
        delete_s = asyncio.run(delete_fraction(quiet_dir, deleted, pack_bytes_max))
        shutil.copytree(quiet_dir, busy_dir)
        survivors = [block for block in blocks if block.id not in gone]
        quiet = asyncio.run(quiet_compaction(quiet_dir, survivors, pack_bytes_max))
        ideal = ideal_reclaim(base, gone)
        quiet.update({"deleted_blocks": len(deleted), "delete_s": delete_s, "ideal_reclaim_bytes": ideal,
                      "reclaimed_vs_ideal": quiet["reclaimed_bytes"] / ideal if ideal else float("nan")})
        shutil.rmtree(quiet_dir)
        window_s = max(1.0, quiet["compaction_s"])
        busy = asyncio.run(writers_during_compaction(busy_dir, window_s, pack_bytes_max))
        shutil.rmtree(busy_dir)
        figures[label] = {**quiet, **busy}
    shutil.rmtree(base_dir)
    return figures


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    medians: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            medians[key] = median_of([run[key] for run in runs])
        else:
            medians[key] = statistics.median(run[key] for run in runs)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pack-mib", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    pack_bytes_max = int(arguments.pack_mib * MiB)
    load_start = os.getloadavg()
    blocks = corpus(arguments.blocks, arguments.seed)
    runs = []
    for repeat in range(arguments.repeats):
        directory = Path(tempfile.mkdtemp(prefix="maif-compaction-", dir=os.environ.get("MAIF_BENCH_DIR")))
        try:
            runs.append(one_repeat(directory, blocks, pack_bytes_max, arguments.seed + repeat))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        print(f"run {repeat + 1}: " + json.dumps({label: {k: round(v, 3) for k, v in figures.items()}
                                                   if isinstance(figures, dict) else round(figures, 3)
                                                   for label, figures in runs[-1].items()}), flush=True)
    medians = median_of(runs)
    result = {
        "benchmark": "compaction", "blocks": arguments.blocks, "repeats": arguments.repeats,
        "pack_bytes_max": pack_bytes_max, "writers": WRITERS, "writer_block_bytes": WRITER_BLOCK_BYTES,
        "garbage_fraction_min": 0.2, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "medians": medians, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_at_start": load_start,
                    "load_average_at_end": os.getloadavg()},
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"medians": medians}, indent=2))


if __name__ == "__main__":
    main()
