"""A library node for test_two_serves.py's crash test: it writes blocks against PostgreSQL + S3 (+ Redis)
and prints each acknowledged block id, so its parent can SIGKILL it mid-run and know exactly what was
acknowledged.

    python wal_writer_node.py CONFIG_JSON write BATCH_BLOCKS BLOCK_BYTES
        writes batches of BATCH_BLOCKS blocks (ids b000000-000, b000000-001, ...) until killed; after each
        batch is acknowledged (durable in this node's log), prints one line, flushed:
            acked <committed LSN> <applied LSN> <id> <id> ...
    python wal_writer_node.py CONFIG_JSON reopen
        opens the store (which replays the log from this node's last checkpoint), closes it (which applies
        and checkpoints everything), and prints one line: ``reopened <json>`` with what opening found in
        the log (records, last LSN, torn tail bytes) and what it repaired.

Payloads are a function of the block id (:func:`payload_of`), so the parent checks bytes it never saw.
The parent imports this module for that function, :func:`batch_ids` and :data:`WRITER_AGENT`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

WRITER_AGENT = "wal-writer"


def batch_ids(batch: int, batch_blocks: int) -> list[str]:
    """The ids of batch number ``batch``: they sort in the order the node writes them."""
    return [f"b{batch:06d}-{number:03d}" for number in range(batch_blocks)]


def payload_of(block_id: str, size: int) -> bytes:
    """The payload of ``block_id``: ``size`` pseudo-random (incompressible) bytes seeded by the id."""
    return random.Random(block_id).randbytes(size)


async def write_until_killed(config: dict[str, Any], batch_blocks: int, block_bytes: int) -> None:
    from maif.format.block import MAIFBlock
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    batch = 0
    while True:  # until SIGKILL: never closed, so whatever was not applied stays in the log only
        ids = batch_ids(batch, batch_blocks)
        blocks = [
            MAIFBlock(id=block_id, data=payload_of(block_id, block_bytes), agent_id=WRITER_AGENT)
            for block_id in ids
        ]
        await storage.write_blocks(blocks)
        # After the ack, never before: every id printed is durable in this node's log.
        stats = await storage.get_stats()
        print("acked", stats["wal_last_lsn"], stats["wal_applied_lsn"], *ids, flush=True)
        batch += 1


async def reopen(config: dict[str, Any]) -> None:
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    try:
        recovery = storage.recovery
        figures = {
            "log_records": recovery.records,
            "log_last_lsn": recovery.last_lsn,
            "torn_tail_bytes": recovery.torn_tail_bytes,
            "repairs": storage.repairs,
        }
    finally:
        await storage.close()
    print("reopened", json.dumps(figures), flush=True)


def main(arguments: list[str]) -> None:
    config = json.loads(arguments[0])
    if arguments[1] == "write":
        asyncio.run(write_until_killed(config, int(arguments[2]), int(arguments[3])))
    elif arguments[1] == "reopen":
        asyncio.run(reopen(config))
    else:
        raise SystemExit(f"unknown command {arguments[1]!r}: write or reopen")


if __name__ == "__main__":
    main(sys.argv[1:])
