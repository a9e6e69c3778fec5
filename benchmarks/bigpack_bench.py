"""`maif pack` / `verify` / `unpack` of large files (issue 13): peak RSS and throughput beside references.

Three incompressible files (default 3 x 1 GiB, like video or model weights) are packed into one signed
container with the default 64 MiB parts, verified in full, and unpacked with ``--trust``; each command
runs in its own child process (``python -m maif ... --quiet``) whose peak resident set (VmHWM) is
recorded. Measured in the same run, on the same disk:

* copy reference: reading the inputs and writing them once more with an fsync per file (what any
  pack or unpack must at least do), as ``cp`` would;
* hash reference: BLAKE3 of the inputs from the page cache, all cores (what a verify must at least do).

Each command's rate is also given as a ratio to its reference. Median of ``--repeats`` runs; the
1-minute load average is recorded, since the 2-core machine is shared.

    .venv/bin/python benchmarks/bigpack_bench.py [--files 3] [--file-mib 1024] [--repeats 3]

Writes benchmarks/results/bigpack.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import blake3

RESULTS = Path(__file__).parent / "results" / "bigpack.json"
MiB = 1 << 20
_CHILD = """
import runpy, sys
sys.argv = ["maif", *sys.argv[1:]]
try:
    runpy.run_module("maif", run_name="__main__")
except SystemExit as exit:
    if exit.code:
        raise
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def make_inputs(directory: Path, count: int, size_bytes: int) -> list[Path]:
    """Incompressible files: a 64 MiB random buffer, each 64 MiB piece made unique by its first bytes."""
    buffer = bytearray(os.urandom(64 * MiB))
    paths = []
    for number in range(count):
        path = directory / f"weights-{number}.bin"
        with open(path, "wb") as handle:
            for piece in range(size_bytes // len(buffer)):
                buffer[:16] = (number * 1_000_003 + piece).to_bytes(16, "little")
                handle.write(buffer)
            handle.write(buffer[: size_bytes % len(buffer)])
        paths.append(path)
    return paths


def run_maif(arguments: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `maif` command in a child process."""
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, *arguments, "--quiet"], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if completed.returncode:
        raise SystemExit(f"maif {arguments[0]} failed: {completed.stderr[-2000:]}")
    return seconds, int(completed.stdout.split()[-1]) / 1024


def copy_seconds(inputs: list[Path], directory: Path) -> float:
    start = time.perf_counter()
    for path in inputs:
        target = directory / path.name
        with open(path, "rb") as source, open(target, "wb") as destination:
            shutil.copyfileobj(source, destination, 16 * MiB)
            destination.flush()
            os.fsync(destination.fileno())
    seconds = time.perf_counter() - start
    for path in inputs:
        (directory / path.name).unlink()
    return seconds


def hash_seconds(inputs: list[Path]) -> float:
    start = time.perf_counter()
    for path in inputs:
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        hasher.update_mmap(path)
        hasher.digest()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--file-mib", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0]}
    }
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as name:
        directory = Path(name)
        (directory / "in").mkdir()
        inputs = make_inputs(directory / "in", arguments.files, arguments.file_mib * MiB)
        total = sum(path.stat().st_size for path in inputs)
        keys = directory / "keys"
        subprocess.run(
            [sys.executable, "-m", "maif", "keygen", "-o", str(keys)], check=True, capture_output=True
        )
        container, out = directory / "big.maif", directory / "out"
        runs: dict[str, list[tuple[float, float]]] = {"pack": [], "verify": [], "unpack": []}
        copies, hashes = [], []
        for _ in range(arguments.repeats):
            copies.append(copy_seconds(inputs, directory))
            hashes.append(hash_seconds(inputs))
            pack = ["pack", str(directory / "in"), "-o", str(container), "--key", str(keys / "maif.key")]
            runs["pack"].append(run_maif([*pack, "--force"]))
            runs["verify"].append(run_maif(["verify", str(container), "--trust", str(keys / "maif.pub")]))
            shutil.rmtree(out, ignore_errors=True)
            runs["unpack"].append(
                run_maif(["unpack", str(container), "-o", str(out), "--trust", str(keys / "maif.pub")])
            )
        for path in inputs:
            assert (out / "in" / path.name).stat().st_size == path.stat().st_size
        copy_rate = total / statistics.median(copies)
        hash_rate = total / statistics.median(hashes)
        results["input_bytes"] = total
        results["container_bytes"] = container.stat().st_size
        results["references"] = {"copy_with_fsync_bytes_per_s": copy_rate, "blake3_bytes_per_s": hash_rate}
        for command, measured in runs.items():
            rate = total / statistics.median(seconds for seconds, _ in measured)
            reference = hash_rate if command == "verify" else copy_rate
            results[command] = {
                "bytes_per_s": rate,
                "ratio_to_reference": rate / reference,
                "reference": "blake3" if command == "verify" else "copy_with_fsync",
                "peak_rss_mb": max(peak for _, peak in measured),
            }
        results["target_peak_rss_mb"] = 200
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
