"""The process the crash tests kill -9: it ingests deterministic blocks and reports each receipt once acked.

Two ways to run it:

    python crash_child.py ingest DATA_DIR SEED          receipts on stdout, one line per ack, flushed
    python crash_child.py zygote                        reads "run DATA_DIR SEED RECEIPTS_PATH" lines on
                                                        stdin, forks one ingesting child per line (imports
                                                        paid once) and answers "pid N"

A receipt line is ``index lsn digest_hex``; it is written (unbuffered) only after ``write_block`` or
``write_blocks`` returned, so every line names an acknowledged block. The parent rebuilds each block with
:func:`block_for` and demands it back bit-exact.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import struct
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the zygote forks: keep it single-threaded

import blake3

from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.engine import create_maif_storage

WRITERS = 8
BLOCKS_MAX = 200_000


def block_for(seed: int, index: int) -> MAIFBlock:
    """The block number ``index`` of run ``seed``: a pure function, so the parent can rebuild it."""
    shape = index % 17
    material = blake3.blake3(f"{seed}:{index}".encode())
    if shape == 0:  # an embedding, searchable
        vector = [((b % 200) - 100) / 100.0 + 0.001 for b in material.digest(8)]
        return MAIFBlock(id=f"s{seed}-{index}", block_type=MAIFBlockType.EMBEDDING,
                         data=struct.pack("<8f", *vector), agent_id=f"agent-{seed % 5}",
                         timestamp=1_700_000_000.0 + index)
    size = 70_000 + index * 13 % 90_000 if shape == 1 else 16 + (index * 7919) % 3000
    return MAIFBlock(id=f"s{seed}-{index}", data=material.digest(size), agent_id=f"agent-{seed % 5}",
                     metadata={"i": index, "seed": seed}, timestamp=1_700_000_000.0 + index,
                     parents=(f"s{seed}-{index - 1}",) if index % 5 == 0 and index else ())


async def ingest(data_dir: str, seed: int, receipts_fd: int) -> None:
    rng = random.Random(seed)
    config = {"data_dir": data_dir, "batch_timeout_ms": rng.choice([0.0, 1.0, 2.0]),
              "batch_size": rng.choice([8, 100, 1000]), "max_memory_mb": 16}
    next_index = 0

    def report(indices: list[int], receipts: list) -> None:
        lines = "".join(f"{i} {r.lsn} {r.digest.hex()}\n" for i, r in zip(indices, receipts, strict=True))
        os.write(receipts_fd, lines.encode())

    async with await create_maif_storage(config) as storage:
        async def writer(worker: int) -> None:
            nonlocal next_index
            local_rng = random.Random(seed * 1000 + worker)
            while next_index < BLOCKS_MAX:
                count = local_rng.choice([1, 1, 1, 3, 20])
                indices = list(range(next_index, next_index + count))
                next_index += count
                blocks = [block_for(seed, i) for i in indices]
                if count == 1:
                    receipts = [await storage.write_block(blocks[0])]
                else:
                    receipts = await storage.write_blocks(blocks)
                report(indices, receipts)

        await asyncio.gather(*(writer(worker) for worker in range(WRITERS)))
    os.write(receipts_fd, b"done\n")


def run_child(data_dir: str, seed: int, receipts_path: str) -> int:
    """The forked child's whole life; it must never return into the zygote's loop."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(receipts_path, os.O_WRONLY | os.O_APPEND)  # the parent created it empty
    except BaseException:
        return 2
    try:
        asyncio.run(ingest(data_dir, seed, fd))
    except BaseException as error:
        os.write(fd, f"error {error!r}\n".encode())
        return 1
    return 0


def zygote() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            return
        _, data_dir, seed, receipts_path = words
        pid = os.fork()
        if pid == 0:
            os._exit(run_child(data_dir, int(seed), receipts_path))
        sys.stdout.write(f"pid {pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1] == "zygote":
        zygote()
    else:
        asyncio.run(ingest(sys.argv[2], int(sys.argv[3]), sys.stdout.fileno()))
