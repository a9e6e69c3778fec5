"""The small-block write and full-verify loops of format_bench.py alone, for a profiler.

    py-spy record -r 500 -o docs/benchmarks/format-small-write-after.svg -- \
        .venv/bin/python benchmarks/profile_format.py write
    py-spy record -r 500 -o docs/benchmarks/format-small-verify-after.svg -- \
        .venv/bin/python benchmarks/profile_format.py verify

Writes (and for ``verify``, first writes and then verifies five times) 100k blocks of 1 KiB in a
temporary directory. Prints the wall-clock rate of the profiled phase; never part of the test run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.format.block import MAIFBlock
from maif.format.container import ContainerWriter
from maif.format.verify import verify_container

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
BLOCK_COUNT = 100_000


def write(path: Path, blocks: list[MAIFBlock]) -> float:
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    with ContainerWriter.create(path) as writer:
        for block in blocks:
            writer.add(block)
        writer.commit([KEY])
    return time.perf_counter() - start


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "write"
    blocks = [MAIFBlock(data=os.urandom(1024), agent_id="agent-1") for _ in range(BLOCK_COUNT)]
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "small.maif"
        if mode == "write":
            seconds = min(write(path, blocks) for _ in range(5))
        else:
            write(path, blocks)
            seconds = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                assert verify_container(path, [KEY.public_key()], full=True).ok
                seconds = min(seconds, time.perf_counter() - start)
    print(f"{mode}: {BLOCK_COUNT / seconds:,.0f} blocks/s (best of 5)")


if __name__ == "__main__":
    main()
