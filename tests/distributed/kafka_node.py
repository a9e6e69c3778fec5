"""A library node for test_kafka_log.py (and scripts/kafka_campaign.py), in its own process so its parent
can SIGKILL it.

    python kafka_node.py CONFIG_JSON write FIRST_BATCH BATCH_BLOCKS BLOCK_BYTES
        writes batches of BATCH_BLOCKS blocks concurrently (ids of :func:`ids_of`), from batch FIRST_BATCH
        on, until killed; after each batch is acknowledged (the broker acknowledged every record),
        prints one line, flushed: ``acked <id> <id> ...``; a write refused with a MAIF error prints
        ``refused <batch> <error class>`` and the node tries the next batch.
    python kafka_node.py CONFIG_JSON crash-before-position
        joins the store's consumer group and applies what it is assigned, but SIGKILLs itself right
        before the first applied position would be recorded in PostgreSQL (after the rows, chunks and
        vectors are durable): a crash between the apply and the offset commit.

Payloads are a function of the block id (:func:`block_of`), so the parent checks bytes it never saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from typing import Any

WRITER_AGENTS = 8  # the blocks of a batch spread over this many agent ids (so over partitions)


def ids_of(batch: int, batch_blocks: int) -> list[str]:
    return [f"b{batch:06d}-{number:03d}" for number in range(batch_blocks)]


def block_of(block_id: str, size: int) -> Any:
    """The block ``block_id`` names: pseudo-random payload seeded by the id, its agent by its number."""
    from maif.format.block import MAIFBlock

    number = int(block_id.rsplit("-", 1)[1])
    return MAIFBlock(id=block_id, data=random.Random(block_id).randbytes(size),
                     agent_id=f"agent-{number % WRITER_AGENTS}")


async def write_until_killed(config: dict[str, Any], first_batch: int, batch_blocks: int,
                             block_bytes: int) -> None:
    from maif.errors import MAIFError
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    batch = first_batch
    while True:  # until SIGKILL: never closed
        ids = ids_of(batch, batch_blocks)
        try:
            await asyncio.gather(*(storage.write_block(block_of(block_id, block_bytes)) for block_id in ids))
        except MAIFError as error:
            print("refused", batch, type(error).__name__, flush=True)
            await asyncio.sleep(0.2)
        else:
            print("acked", *ids, flush=True)  # after the ack, never before
        batch += 1


async def crash_before_position(config: dict[str, Any]) -> None:
    from maif.storage.backends.postgres import PostgresMetadataIndex
    from maif.storage.engine import create_maif_storage

    async def die(*_: Any, **__: Any) -> None:
        print("applied, dying before the position", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    PostgresMetadataIndex.set_log_positions = die  # type: ignore[method-assign]
    await create_maif_storage(config)
    print("opened", flush=True)
    await asyncio.sleep(3600)


def main(arguments: list[str]) -> None:
    config = json.loads(arguments[0])
    if arguments[1] == "write":
        asyncio.run(write_until_killed(config, int(arguments[2]), int(arguments[3]), int(arguments[4])))
    elif arguments[1] == "crash-before-position":
        asyncio.run(crash_before_position(config))
    else:
        raise SystemExit(f"unknown command {arguments[1]!r}: write or crash-before-position")


if __name__ == "__main__":
    main(sys.argv[1:])
