"""The small-block write and full-verify loops of format_bench.py alone, for a profiler.

    py-spy record -r 500 -o docs/benchmarks/format-small-write-after.svg -- \
        .venv/bin/python benchmarks/profile_format.py write
    py-spy record -r 500 -o docs/benchmarks/format-small-verify-after.svg -- \
        .venv/bin/python benchmarks/profile_format.py verify

Writes (and for ``verify``, first writes and then verifies five times) 100k blocks of 1 KiB in a
temporary directory. Prints the best wall-clock and per-CPU-second rates of the profiled phase. Run
against another commit's code to compare in the same run (docs/benchmarks/README.md):

    git archive 6b33d50 src | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/profile_format.py write

Never part of the test run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.format.block import MAIFBlock
from maif.format.container import ContainerWriter
from maif.format.verify import verify_container

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
BLOCK_COUNT = 100_000


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of ``action``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - start, time.process_time() - start_cpu


def write(path: Path, blocks: list[MAIFBlock]) -> None:
    path.unlink(missing_ok=True)
    with ContainerWriter.create(path) as writer:
        for block in blocks:
            writer.add(block)
        writer.commit([KEY])


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "write"
    blocks = [MAIFBlock(data=os.urandom(1024), agent_id="agent-1") for _ in range(BLOCK_COUNT)]
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "small.maif"
        if mode == "write":
            runs = [timed(lambda: write(path, blocks)) for _ in range(5)]
        else:
            write(path, blocks)
            runs = [timed(lambda: verify_container(path, [KEY.public_key()], full=True)) for _ in range(5)]
    wall, cpu = min(run[0] for run in runs), min(run[1] for run in runs)
    print(f"{mode}: {BLOCK_COUNT / wall:,.0f} blocks/s, {BLOCK_COUNT / cpu:,.0f} blocks per CPU-second "
          f"(best of 5; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
