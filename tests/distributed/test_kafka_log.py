"""The write-ahead log on the Kafka protocol (docs/adr/0073-kafka-log.md), against the real broker Tansu
(its topics in SeaweedFS), PostgreSQL + pgvector and S3 (SeaweedFS).

The point of this log: a block acknowledged by node A survives the total loss of A (its process
SIGKILLed, its data_dir deleted): node B applies it from the log. Also: a record on the topic that is
not a MAIF log record is skipped and counted, never stopping its partition; a crash between applying
a batch and recording its position re-applies it harmlessly; the broker SIGKILLed and restarted
mid-run gives writers a typed error (or a wait), never a lost acknowledged block; two members of one
group share the partitions, and the writing node's queries see the writes the other member applied.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
from kafka_node import block_of, ids_of

from maif import limits
from maif.errors import BackendUnavailableError, ConfigError, LimitExceededError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import encode_block
from maif.storage.engine import MAIFStorage, create_maif_storage

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "kafka_node.py"
WAIT_S = 60.0  # generous bounds for a loaded 2-core machine; the tests finish as soon as they can


def kafka_config(tmp_path: Path, name: str, env: dict[str, str], postgres: str, bucket: str,
                 topic: str, **extra: Any) -> dict[str, Any]:
    return {"data_dir": str(tmp_path / name), "node_id": name, "postgres_url": postgres,
            "s3_endpoint": env["MAIF_STORAGE_S3_ENDPOINT"], "s3_bucket": bucket,
            "kafka_brokers": env["MAIF_STORAGE_KAFKA_BROKERS"], "kafka_topic": topic,
            "kafka_partitions": 4, "tier_interval_s": 0, **extra}


@pytest.fixture
def config_of(tmp_path: Path, services_env: dict[str, str], fresh_postgres_url: str,
              fresh_s3_bucket: str) -> Callable[..., dict[str, Any]]:
    """``config_of(name, **extra)``: a node's configuration; every node of one test shares one topic."""
    topic = f"maif-test-{secrets.token_hex(6)}"

    def make(name: str, **extra: Any) -> dict[str, Any]:
        return kafka_config(tmp_path, name, services_env, fresh_postgres_url, fresh_s3_bucket, topic,
                            **extra)

    return make


async def wait_readable(storage: MAIFStorage, expected: dict[str, bytes]) -> None:
    """Until every block of ``expected`` (id -> payload) reads back from the shared index bit-exact."""
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


# ---- one node -----------------------------------------------------------------------------------------

def test_one_node_writes_through_the_kafka_log_and_applies_it(config_of: Callable[..., dict[str, Any]]
                                                              ) -> None:
    async def main() -> None:
        storage = await create_maif_storage(config_of("node-a"))
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
            stats = await storage.get_stats()
            assert stats["kafka_records_applied_total"] == 51 and stats["kafka_records_skipped_total"] == 0
            assert stats["kafka_pending_records"] == 0 and stats["health"]["status"] == "ok"
            assert sorted(stats["kafka_partitions_assigned"]) == [0, 1, 2, 3]
        finally:
            await storage.close()

    asyncio.run(main())


def test_the_kafka_log_needs_the_shared_backends_and_a_reachable_broker(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="postgres_url, s3_endpoint and s3_bucket"):
        asyncio.run(create_maif_storage({"data_dir": str(tmp_path / "a"), "kafka_brokers": "127.0.0.1:1"}))
    with pytest.raises(ConfigError, match="kafka_topic"):
        asyncio.run(create_maif_storage({"data_dir": str(tmp_path / "b"), "kafka_brokers": "127.0.0.1:1",
                                         "kafka_topic": "no spaces"}))


def test_an_unreachable_broker_at_start_is_one_line_naming_kafka(
        config_of: Callable[..., dict[str, Any]]) -> None:
    config = config_of("node-a", kafka_brokers=["127.0.0.1:1"], kafka_write_timeout_s=1.0)
    with pytest.raises(ConfigError) as caught:
        asyncio.run(create_maif_storage(config))
    assert "Kafka (kafka_brokers)" in caught.value.message and "\n" not in caught.value.message


# ---- the point of the log: the writing node lost entirely -------------------------------------------

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


def test_acknowledged_blocks_survive_the_loss_of_the_node_that_took_them(
        config_of: Callable[..., dict[str, Any]]) -> None:
    writer_config = config_of("node-a")
    node = start_node(writer_config, "write", "0", "20", "2048")
    try:
        lines = read_lines_until(node, lambda lines: sum(line.startswith("acked") for line in lines) >= 6)
    finally:
        sigkill(node)  # right after its acks: most of its writes were applied by nobody yet
    shutil.rmtree(writer_config["data_dir"])  # the node is gone, disk and all
    acked = [block_id for line in lines if line.startswith("acked") for block_id in line.split()[1:]]
    assert len(acked) >= 120

    async def main() -> None:
        storage = await create_maif_storage(config_of("node-b"))
        try:
            await wait_readable(storage, {block_id: block_of(block_id, 2048).data for block_id in acked})
            listed = await storage.list_blocks(limit=1000)
            ids = [summary.block_id for summary in listed]
            assert len(ids) == len(set(ids))
            # the only ids besides the acknowledged ones: the batch A was writing when killed
            assert set(ids) - set(acked) <= set(ids_of(len(acked) // 20, 20))
        finally:
            await storage.close()

    asyncio.run(main())


# ---- hostile or damaged records on the topic --------------------------------------------------------

def test_records_that_are_not_maif_log_records_are_skipped_and_counted(
        config_of: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "kafka_record_bytes_max", 64 * 1024)  # an "oversized" record is cheap
    config = config_of("node-a")
    good = MAIFBlock(id="after-the-garbage", data=b"still applied", agent_id="agent-x")
    embedding = MAIFBlock(id="e3", block_type=MAIFBlockType.EMBEDDING, agent_id="agent-x", data=_floats(3),
                          metadata={"dtype": "float32"})
    other_dimension = MAIFBlock(id="e5", block_type=MAIFBlockType.EMBEDDING, agent_id="agent-x",
                                data=_floats(5), metadata={"dtype": "float32"})

    async def main() -> None:
        from aiokafka import AIOKafkaProducer

        storage = await create_maif_storage(config)
        try:
            producer = AIOKafkaProducer(bootstrap_servers=config["kafka_brokers"], acks="all",
                                        max_request_size=1 << 20)
            await producer.start()
            try:
                # all keyed alike: one partition, the valid records after the bad ones
                for value in (b"\x00garbage that is no MAIF record", b"", os.urandom(65 * 1024),
                              encode_block(embedding), encode_block(other_dimension), encode_block(good)):
                    await producer.send_and_wait(config["kafka_topic"], value, key=b"agent-x")
            finally:
                await producer.stop()
            await wait_readable(storage, {good.id: good.data, embedding.id: embedding.data})
            stats = await storage.get_stats()
            assert stats["kafka_records_skipped_total"] == 4, stats["kafka_skipped_reasons"]
            reasons = " | ".join(stats["kafka_skipped_reasons"])
            assert "not a MAIF log record" in reasons and "an empty record" in reasons
            assert "above kafka_record_bytes_max" in reasons and "5 dimensions" in reasons
            assert stats["kafka_applier_failure"] is None and stats["health"]["status"] == "ok"
            await storage.write_block(MAIFBlock(id="later", data=b"the partition goes on",
                                                agent_id="agent-x"))
            assert [s.block_id for s in await storage.list_blocks(limit=10)] == [
                "after-the-garbage", "e3", "later"]
        finally:
            await storage.close()

    asyncio.run(main())


def _floats(count: int) -> bytes:
    import numpy as np

    return np.arange(1, count + 1, dtype="<f4").tobytes()


def test_a_crash_between_the_apply_and_its_position_reapplies_harmlessly(
        config_of: Callable[..., dict[str, Any]]) -> None:
    config = config_of("node-c")
    blocks = [block_of(block_id, 1024) for block_id in ids_of(0, 30)]

    async def produce() -> None:
        from aiokafka import AIOKafkaProducer

        from maif.storage.kafkalog import log_key

        producer = AIOKafkaProducer(bootstrap_servers=config["kafka_brokers"], acks="all")
        await producer.start()
        try:
            for block in blocks:
                from maif.storage.engine import log_item

                await producer.send_and_wait(config["kafka_topic"], encode_block(block),
                                             key=log_key(log_item(encode_block(block), 1)))
        finally:
            await producer.stop()

    node = start_node(config, "crash-before-position")  # creates the topic, joins the group
    try:
        read_lines_until(node, lambda lines: "opened" in lines)
        asyncio.run(produce())
        read_lines_until(node, lambda lines: any(line.startswith("applied") for line in lines))
        assert node.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if node.poll() is None:
            sigkill(node)

    async def main() -> None:
        # another group: it owns every partition at once instead of waiting out the dead member's session
        storage = await create_maif_storage(config_of("node-d", kafka_group="second-group"))
        try:
            index: Any = storage._backends.index
            assert await index.log_positions(config["kafka_topic"]) == {}  # the crash came before them
            await wait_readable(storage, {block.id: block.data for block in blocks})
            deadline = time.monotonic() + WAIT_S
            while sum((await index.log_positions(config["kafka_topic"])).values()) < len(blocks):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            stats = await storage.get_stats()
            assert stats["kafka_records_applied_total"] == len(blocks)  # every record once more
            assert stats["conflicts_total"] == 0
            listed = await storage.list_blocks(limit=100)
            assert [summary.block_id for summary in listed] == [block.id for block in blocks]
        finally:
            await storage.close()

    asyncio.run(main())


# ---- the broker killed and restarted mid-run -----------------------------------------------------------

def test_the_broker_killed_and_restarted_mid_run_loses_no_acknowledged_block(
        private_servers: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers = private_servers("postgres", "seaweedfs", "tansu")
    env = servers.env()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    config = kafka_config(tmp_path, "node-a", env, env["MAIF_STORAGE_POSTGRES_URL"],
                          env["MAIF_STORAGE_S3_BUCKET"], "maif-wal", kafka_write_timeout_s=2.0)
    acked: list[str] = []
    refusals: list[tuple[BaseException, float]] = []

    async def main() -> None:
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
            await asyncio.to_thread(servers.kill, "tansu")
            refused_before = len(refusals)
            while len(refusals) == refused_before:  # writers learn it within the bound
                await asyncio.sleep(0.05)
            assert storage.health()["degraded"].get("Kafka") is not None
            await asyncio.to_thread(servers.start, "tansu")
            await asyncio.wait_for(acked_after(24), WAIT_S)  # writes go on once the broker is back
            stop.set()
            await writer
            await wait_readable(storage, {block_id: block_of(block_id, 1024).data for block_id in acked})
            assert "Kafka" not in storage.health()["degraded"]
        finally:
            await storage.close()

    asyncio.run(main())
    assert refusals, "no write was refused while the broker was down"
    for error, waited_s in refusals:
        assert isinstance(error, BackendUnavailableError) and error.component == "Kafka", repr(error)
        assert waited_s < 2.0 * 2 + 5, f"a writer waited {waited_s:.1f} s"  # bounded: no hang


# ---- two members of one group -------------------------------------------------------------------------

def test_two_nodes_share_the_partitions_and_each_sees_what_the_other_applied(
        config_of: Callable[..., dict[str, Any]]) -> None:
    async def assignments(*stores: MAIFStorage) -> list[list[int]]:
        return [(await store.get_stats())["kafka_partitions_assigned"] for store in stores]

    async def main() -> None:
        a = await create_maif_storage(config_of("node-a"))
        try:
            b = await create_maif_storage(config_of("node-b"))
            try:
                deadline = time.monotonic() + WAIT_S
                while True:  # the group rebalances: both members get a share of the four partitions
                    shares = await assignments(a, b)
                    if all(shares) and sorted(shares[0] + shares[1]) == [0, 1, 2, 3]:
                        break
                    assert time.monotonic() < deadline, f"no balanced assignment: {shares}"
                    await asyncio.sleep(0.2)
                blocks = [block_of(block_id, 700) for block_id in ids_of(0, 40)]  # 8 agents: all partitions
                await asyncio.gather(*(a.write_block(block) for block in blocks))
                # A's query waits until the shared index holds all of them, B applying its share
                assert [s.block_id for s in await a.list_blocks(limit=100)] == [x.id for x in blocks]
                stats_a, stats_b = (await a.get_stats()), (await b.get_stats())
                assert stats_a["kafka_pending_records"] == 0
                assert stats_b["kafka_records_applied_total"] > 0  # B did apply some of A's writes
                assert stats_a["kafka_records_applied_total"] + stats_b["kafka_records_applied_total"] \
                    >= len(blocks)
                for block in blocks:
                    assert (await b.read_block(block.id)).data == block.data
            finally:
                await b.close()
        finally:
            await a.close()

    asyncio.run(main())
