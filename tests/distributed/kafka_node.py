"""A library node for test_kafka_log.py, test_nats_log.py (and scripts/kafka_campaign.py), in its own
process so its parent can SIGKILL it. The configuration chooses the shared log (Kafka or NATS).

    python kafka_node.py CONFIG_JSON write FIRST_BATCH BATCH_BLOCKS BLOCK_BYTES
        writes batches of BATCH_BLOCKS blocks concurrently (ids of :func:`ids_of`), from batch FIRST_BATCH
        on, until killed; after each batch is acknowledged (the broker acknowledged every record),
        prints one line, flushed: ``acked <id> <id> ...``; a write refused with a MAIF error prints
        ``refused <batch> <error class>`` and the node tries the next batch.
    python kafka_node.py CONFIG_JSON crash-before-position
        joins the store's consumer group and applies what it is assigned, but SIGKILLs itself right
        before the first applied position would be recorded in PostgreSQL (after the rows, chunks and
        vectors are durable): a crash between the apply and the offset commit.
    python kafka_node.py CONFIG_JSON apply
        opens the store (so applies its share of the log's partitions) and prints ``opened``, then
        ``owned <partition> ...`` whenever its share changes, until killed.

Payloads are a function of the block id (:func:`block_of`), so the parent checks bytes it never saw.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WRITER_AGENTS = 8  # the blocks of a batch spread over this many agent ids (so over partitions)
NODE_SCRIPT = Path(__file__).resolve()
WAIT_S = 60.0  # the parent's bounds, generous for a loaded 2-core machine; tests finish as soon as they can


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


async def apply_until_killed(config: dict[str, Any]) -> None:
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    print("opened", flush=True)
    owned = None
    while True:  # until SIGKILL: never closed
        stats = await storage.get_stats()
        share = stats.get("nats_partitions_owned", stats.get("kafka_partitions_assigned"))
        if share != owned:
            owned = share
            print("owned", *share, flush=True)
        await asyncio.sleep(0.1)


# ---- the parent's side -----------------------------------------------------------------------------

async def wait_readable(storage: Any, expected: dict[str, bytes]) -> None:
    """Until every block of ``expected`` (id -> payload) reads back from the shared index bit-exact."""
    import blake3

    from maif.format.codec import encode_block

    deadline = time.monotonic() + WAIT_S
    missing = dict(expected)
    while missing:
        for block_id in list(missing):
            record = await storage._backends.index.get(block_id)
            if record is not None:
                block = await storage.read_block(block_id)
                assert block.data == missing.pop(block_id), f"{block_id}: wrong bytes"
                assert record.digest == blake3.blake3(encode_block(block)).digest()
        assert time.monotonic() < deadline, f"not applied within {WAIT_S} s: {sorted(missing)[:5]}"
        await asyncio.sleep(0.1)


def start_node(config: dict[str, Any], *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(NODE_SCRIPT), json.dumps(config), *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def read_lines_until(node: subprocess.Popen[str], done: Callable[[list[str]], bool]) -> list[str]:
    lines: list[str] = []
    assert node.stdout is not None
    deadline = time.monotonic() + WAIT_S
    while not done(lines):
        line = node.stdout.readline()
        if not line:
            raise AssertionError(f"node exited ({node.wait()}): {node.stderr.read() if node.stderr else ''}")
        lines.append(line.strip())
        assert time.monotonic() < deadline, "the node took too long"
    return lines


def sigkill(node: subprocess.Popen[str]) -> None:
    node.send_signal(signal.SIGKILL)
    node.wait(timeout=30)




async def write_read_and_delete_on_one_node(config: dict[str, Any]) -> dict[str, Any]:
    """One node writes 50 blocks concurrently through its shared log, reads them back at once (from its
    memory) and once applied (from the shared backends), deletes one, has an oversized block refused
    before the broker sees it; its stats at the end."""
    import pytest

    from maif import limits
    from maif.errors import LimitExceededError
    from maif.format.block import MAIFBlock
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    try:
        blocks = [MAIFBlock(id=f"k{number:03d}", data=os.urandom(512 + number),
                            agent_id=f"agent-{number % 5}") for number in range(50)]
        receipts = await asyncio.gather(*(storage.write_block(block) for block in blocks))
        assert [receipt.block_id for receipt in receipts] == [block.id for block in blocks]
        assert (await storage.read_block("k007")).data == blocks[7].data  # read-your-writes at once
        listed = await storage.list_blocks(limit=1000)  # waits for this node's writes to be applied
        assert [summary.block_id for summary in listed] == sorted(block.id for block in blocks)
        block, tier = await storage.read_block_with_tier("k011")
        assert tier != "log" and block.data == blocks[11].data  # served from the shared backends now
        await storage.delete_block("k000")
        assert len(await storage.list_blocks(limit=1000)) == 49
        with pytest.raises(LimitExceededError):  # refused before the broker sees it
            await storage.write_block(MAIFBlock(data=bytes(limits.kafka_record_bytes_max + 1)))
        stats: dict[str, Any] = await storage.get_stats()
        assert stats["health"]["status"] == "ok"
        return stats
    finally:
        await storage.close()


def lose_the_writing_node(config_of: Callable[..., dict[str, Any]]) -> None:
    """Node A (a process of its own) writes until it has acknowledged at least 120 blocks, is SIGKILLed
    and its data_dir deleted; node B applies every acknowledged block bit-exact from the log, none
    twice, and nothing but them and the batch A was writing when killed."""
    import shutil

    from maif.storage.engine import create_maif_storage

    writer_config = config_of("node-a")
    node = start_node(writer_config, "write", "0", "20", "2048")
    try:
        lines = read_lines_until(node, lambda lines: sum(line.startswith("acked") for line in lines) >= 6)
    finally:
        sigkill(node)  # right after its acks: most of its writes were applied by nobody yet
    # Acks the node printed after the sixth but before the kill are acknowledged writes too: without
    # them a batch acknowledged in that window looked like a second batch in flight (a flaky failure).
    assert node.stdout is not None
    lines += [line.strip() for line in node.stdout.read().splitlines()]
    shutil.rmtree(writer_config["data_dir"])  # the node is gone, disk and all
    acked = [block_id for line in lines if line.startswith("acked") for block_id in line.split()[1:]]
    assert len(acked) >= 120

    async def apply_on_another_node() -> None:
        storage = await create_maif_storage(config_of("node-b"))
        try:
            await wait_readable(storage, {block_id: block_of(block_id, 2048).data for block_id in acked})
            listed = await storage.list_blocks(limit=1000)
            ids = [summary.block_id for summary in listed]
            assert len(ids) == len(set(ids))
            # the only ids besides the acknowledged ones: the batch A was writing when killed
            assert set(ids) - set(acked) <= set(ids_of(len(acked) // 20, 20))
            assert (await storage.get_stats())["conflicts_total"] == 0
        finally:
            await storage.close()

    asyncio.run(apply_on_another_node())


async def reapplied_once(config: dict[str, Any], log: str, prefix: str, blocks: list[Any]) -> None:
    """After a node crashed between applying ``blocks`` and recording their positions: the node opened
    with ``config`` finds no position recorded, applies every block once more (bit-exact, each record
    once, no conflict), and lists them in order. ``log`` names the topic or stream, ``prefix`` its stats."""
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    try:
        index: Any = storage._backends.index
        assert await index.log_positions(log) == {}  # the crash came before them
        await wait_readable(storage, {block.id: block.data for block in blocks})
        deadline = time.monotonic() + WAIT_S
        while (await storage.get_stats())[f"{prefix}_records_applied_total"] < len(blocks):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # nothing more arrives: each record applied once here
        stats = await storage.get_stats()
        assert stats[f"{prefix}_records_applied_total"] == len(blocks)  # every record once more
        assert stats["conflicts_total"] == 0
        listed = await storage.list_blocks(limit=100)
        assert [summary.block_id for summary in listed] == [block.id for block in blocks]
    finally:
        await storage.close()


def assert_skipped(stats: dict[str, Any], prefix: str, count: int, *reasons: str) -> None:
    """A store's stats (``prefix``: "kafka" or "nats") say it skipped ``count`` records, for reasons that
    include each of ``reasons``, and still applies its log."""
    assert stats[f"{prefix}_records_skipped_total"] == count, stats[f"{prefix}_skipped_reasons"]
    text = " | ".join(stats[f"{prefix}_skipped_reasons"])
    for reason in reasons:
        assert reason in text, f"{reason!r} not among the reasons: {text}"
    assert stats[f"{prefix}_applier_failure"] is None and stats["health"]["status"] == "ok"

async def write_through_a_broker_outage(config: dict[str, Any], servers: Any, broker: str,
                                        component: str) -> None:
    """Writers keep writing while ``broker`` (a server of ``servers``) is SIGKILLed and started again:
    some writes are refused, each with BackendUnavailableError naming ``component`` and within a bound
    (no hang), health shows the outage while it lasts, writes go on after it, and every acknowledged
    block reads back bit-exact."""
    from maif.errors import BackendUnavailableError
    from maif.storage.engine import create_maif_storage

    acked: list[str] = []
    refusals: list[tuple[BaseException, float]] = []
    storage = await create_maif_storage(config)
    stop = asyncio.Event()

    async def write() -> None:
        batch = 0
        while not stop.is_set():
            ids = ids_of(batch, 8)
            started = time.monotonic()
            outcomes = await asyncio.gather(*(storage.write_block(block_of(block_id, 1024))
                                              for block_id in ids), return_exceptions=True)
            for block_id, outcome in zip(ids, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    refusals.append((outcome, time.monotonic() - started))
                else:
                    acked.append(block_id)
            batch += 1
            await asyncio.sleep(0.02)

    async def acked_after(count: int) -> None:
        target = len(acked) + count
        while len(acked) < target:
            await asyncio.sleep(0.05)

    try:
        writer = asyncio.create_task(write())
        await asyncio.wait_for(acked_after(24), WAIT_S)
        await asyncio.to_thread(servers.kill, broker)
        refused_before = len(refusals)
        while len(refusals) == refused_before:  # writers learn it within the bound
            await asyncio.sleep(0.05)
        assert storage.health()["degraded"].get(component) is not None
        await asyncio.to_thread(servers.start, broker)
        await asyncio.wait_for(acked_after(24), WAIT_S)  # writes go on once the broker is back
        stop.set()
        await writer
        await wait_readable(storage, {block_id: block_of(block_id, 1024).data for block_id in acked})
        assert component not in storage.health()["degraded"]
    finally:
        await storage.close()
    assert refusals, "no write was refused while the broker was down"
    timeout_s = config.get("kafka_write_timeout_s", config.get("nats_write_timeout_s"))
    for error, waited_s in refusals:
        assert isinstance(error, BackendUnavailableError) and error.component == component, repr(error)
        assert waited_s < timeout_s * 2 + 5, f"a writer waited {waited_s:.1f} s"  # bounded: no hang


def main(arguments: list[str]) -> None:
    config = json.loads(arguments[0])
    if arguments[1] == "write":
        asyncio.run(write_until_killed(config, int(arguments[2]), int(arguments[3]), int(arguments[4])))
    elif arguments[1] == "crash-before-position":
        asyncio.run(crash_before_position(config))
    elif arguments[1] == "apply":
        asyncio.run(apply_until_killed(config))
    else:
        raise SystemExit(f"unknown command {arguments[1]!r}: write, crash-before-position or apply")


if __name__ == "__main__":
    main(sys.argv[1:])
