"""Container format benchmark: every target of the format brief, each beside its physical reference.

Measured in the same run, on the same disk:

* references: raw BLAKE3 throughput (all cores, one large buffer), page-cache read speed (reading a
  cached file into a reused buffer), durable write speed (write + fdatasync of the same volume);
* small blocks: N blocks of 1 KiB (default 100k): blocks/s written with ``add_many`` (CPU only, and
  durable with the commit's fdatasync; also with one ``add`` per block), blocks/s verified in full and
  quick mode, per-block overhead in bytes;
* large blocks: a >= 1 GiB file of 16 MiB incompressible blocks: durable write GB/s, and verified
  sequential read GB/s from the page cache (every payload's chained BLAKE3 digest checked), each also as
  a ratio to its physical reference;
* peak RSS of a child process that writes, then verifies and reads, a 4 GiB file (``--big``);
* ``python -c "import maif"`` wall time, next to ``python -c pass``.

Each figure is the median of ``--repeats`` runs. ``MAIF_PURE_PYTHON=1`` measures the pure-Python
reference instead of the compiled core (ADR 0090); ``--output`` writes elsewhere than the default.
The 2-core machine is shared with other work, so the 1-minute load average is recorded with the results.

    .venv/bin/python benchmarks/format_bench.py [--small-blocks 100000] [--large-mib 1024] [--repeats 3]
        [--big]

Writes benchmarks/results/format.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.format import native
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.verify import verify_container

RESULTS = Path(__file__).parent / "results" / "format.json"
MiB = 1 << 20
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


# ---- physical references --------------------------------------------------------------------------


def blake3_bytes_per_s(buffer: bytes) -> float:
    return len(buffer) / timed(lambda: blake3.blake3(buffer, max_threads=blake3.blake3.AUTO).digest())


def durable_write_bytes_per_s(directory: Path, chunk: bytes, total_bytes: int) -> float:
    path = directory / "reference-write.bin"

    def run() -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _ in range(total_bytes // len(chunk)):
                os.write(descriptor, chunk)
            os.fdatasync(descriptor)
        finally:
            os.close(descriptor)

    seconds = timed(run)
    path.unlink()
    return total_bytes / seconds


def page_cache_read_bytes_per_s(path: Path) -> float:
    buffer = bytearray(16 * MiB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        handle.readinto(view)  # warm the first chunk
        handle.seek(0)
        start = time.perf_counter()
        total = 0
        while count := handle.readinto(view):
            total += count
        return total / (time.perf_counter() - start)


# ---- small blocks ---------------------------------------------------------------------------------


def small_blocks(directory: Path, count: int, repeats: int) -> dict[str, Any]:
    """Wall-clock rates, plus rates per CPU-second of this process (less distorted by a busy machine).

    Blocks are written with ``add_many`` (the batch API), and, for comparison, one ``add`` call each."""
    blocks = [MAIFBlock(data=os.urandom(1024), agent_id="agent-1") for _ in range(count)]
    path = directory / "small.maif"
    cpu_process, durable_wall, one_by_one_wall = [], [], []

    def write(batch: bool) -> tuple[float, float]:
        path.unlink(missing_ok=True)
        writer = ContainerWriter.create(path)
        start, start_cpu = time.perf_counter(), time.process_time()
        if batch:
            writer.add_many(blocks)
        else:
            for block in blocks:
                writer.add(block)
        writer.commit([KEY])
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        writer.close()
        return wall, cpu

    for _ in range(repeats):
        one_by_one_wall.append(write(batch=False)[0])
        wall, cpu = write(batch=True)
        durable_wall.append(wall)
        cpu_process.append(cpu)
    public = [KEY.public_key()]
    verify_rates = {}
    for mode, full in (("full", True), ("quick", False)):
        walls, cpus = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            _require_ok(verify_container(path, public, full=full))
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
        verify_rates[f"verify_{mode}_blocks_per_s"] = count / statistics.median(walls)
        verify_rates[f"verify_{mode}_blocks_per_cpu_s"] = count / statistics.median(cpus)
    return {
        "blocks": count,
        "payload_bytes": 1024,
        "write_durable_blocks_per_s": count / statistics.median(durable_wall),
        "write_durable_blocks_per_cpu_s": count / statistics.median(cpu_process),
        "write_durable_one_add_per_block_blocks_per_s": count / statistics.median(one_by_one_wall),
        **verify_rates,
        "overhead_bytes_per_block": (path.stat().st_size - count * 1024) / count,
        "targets": {
            "write_blocks_per_s": 250_000,
            "verify_full_blocks_per_s": 300_000,
            "overhead_bytes_per_block": 96,
        },
    }


def _require_ok(report: Any) -> None:
    assert report.ok, report.problems[:3]


# ---- large blocks ---------------------------------------------------------------------------------


def write_large(path: Path, block_bytes: int, total_bytes: int) -> float:
    payload = os.urandom(block_bytes)
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    with ContainerWriter.create(path) as writer:
        for index in range(total_bytes // block_bytes):
            # a different block each time without a new 16 MiB allocation: vary the id only
            writer.add(MAIFBlock(id=f"large-{index}", data=payload))
        writer.commit([KEY])
    return time.perf_counter() - start


def read_large_verified(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    with ContainerReader.open(path) as reader:
        for _, payload in reader.iter_payloads(verify=True):
            total += len(payload)
    return time.perf_counter() - start, total


def large_blocks(directory: Path, total_mib: int, repeats: int) -> dict[str, Any]:
    """Container and reference measured alternately, so both see the same (shared, noisy) disk."""
    path = directory / "large.maif"
    total = total_mib * MiB
    chunk = os.urandom(16 * MiB)
    write_ratios, write_rates, reference_rates = [], [], []
    for _ in range(repeats):
        reference_rates.append(durable_write_bytes_per_s(directory, chunk, total))
        write_rates.append(total / write_large(path, 16 * MiB, total))
        write_ratios.append(write_rates[-1] / reference_rates[-1])
    read_large_verified(path)  # warm the page cache
    read_rates, page_cache_rates, read_ratios = [], [], []
    for _ in range(repeats):
        page_cache_rates.append(page_cache_read_bytes_per_s(path))
        read_rates.append(total / read_large_verified(path)[0])
        read_ratios.append(read_rates[-1] / page_cache_rates[-1])
    _require_ok(verify_container(path, [KEY.public_key()], full=True))
    return {
        "file_bytes": path.stat().st_size,
        "block_bytes": 16 * MiB,
        "durable_write_bytes_per_s": statistics.median(write_rates),
        "reference_durable_write_bytes_per_s": statistics.median(reference_rates),
        "durable_write_ratio_to_disk": statistics.median(write_ratios),
        "verified_read_bytes_per_s": statistics.median(read_rates),
        "reference_page_cache_read_bytes_per_s": statistics.median(page_cache_rates),
        "verified_read_ratio_to_page_cache_read": statistics.median(read_ratios),
        "targets": {"durable_write_bytes_per_s": 1e9, "verified_read_bytes_per_s": 3e9},
    }


# ---- RSS and import time --------------------------------------------------------------------------

_RSS_CHILD = """
import os, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from maif.format import native
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.verify import verify_container
path, total, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
if mode == "write":
    payload = os.urandom(16 << 20)
    with ContainerWriter.create(path) as writer:
        for index in range(total // len(payload)):
            writer.add(MAIFBlock(id=f"b{index}", data=payload))
        writer.commit([key])
else:
    assert verify_container(path, [key.public_key()], full=True).ok
    with ContainerReader.open(path) as reader:
        for _, view in reader.iter_payloads():
            pass
# VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork and exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def child_peak_rss_mb(path: Path, total_bytes: int, mode: str) -> float:
    output = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(path), str(total_bytes), mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.split()[-1]) / 1024  # VmHWM is in KiB


def rss(directory: Path, total_mib: int) -> dict[str, Any]:
    path = directory / "rss.maif"
    path.unlink(missing_ok=True)
    written = child_peak_rss_mb(path, total_mib * MiB, "write")
    read = child_peak_rss_mb(path, total_mib * MiB, "read")
    path.unlink()
    return {
        "file_bytes": total_mib * MiB,
        "write_peak_rss_mb": written,
        "verify_and_read_peak_rss_mb": read,
        "target_mb": 150,
    }


def import_seconds(repeats: int) -> dict[str, Any]:
    def run(code: str) -> float:
        return timed(lambda: subprocess.run([sys.executable, "-c", code], check=True))

    return {
        "import_maif_s": median_of(max(repeats, 5), lambda: run("import maif")),
        "python_startup_s": median_of(max(repeats, 5), lambda: run("pass")),
        "target_s": 0.150,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small-blocks", type=int, default=100_000)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="also measure peak RSS on a 4 GiB file")
    parser.add_argument("--big-mib", type=int, default=4096)
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "compiled_core": not native.pure_python(),  # MAIF_PURE_PYTHON=1 measures the reference
            "load_average_1min_at_start": os.getloadavg()[0],
        },
    }
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as name:
        directory = Path(name)
        buffer = os.urandom(256 * MiB)
        reference_blake3 = median_of(arguments.repeats, lambda: blake3_bytes_per_s(buffer))
        buffer = b""  # free the 256 MiB before the container runs
        results["small"] = small_blocks(directory, arguments.small_blocks, arguments.repeats)
        results["large"] = large_blocks(directory, arguments.large_mib, arguments.repeats)
        results["large"]["verified_read_ratio_to_blake3"] = (
            results["large"]["verified_read_bytes_per_s"] / reference_blake3
        )
        results["references"] = {
            "blake3_bytes_per_s": reference_blake3,
            "page_cache_read_bytes_per_s": results["large"]["reference_page_cache_read_bytes_per_s"],
            "durable_write_bytes_per_s": results["large"]["reference_durable_write_bytes_per_s"],
        }
        (directory / "large.maif").unlink()
        if arguments.big:
            results["rss"] = rss(directory, arguments.big_mib)
    results["import"] = import_seconds(arguments.repeats)
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    results["machine"]["bench_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
