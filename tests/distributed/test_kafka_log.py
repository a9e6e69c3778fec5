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
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kafka_node
import pytest
from kafka_node import WAIT_S, block_of, ids_of, read_lines_until, sigkill, start_node, wait_readable

from maif import limits
from maif.errors import ConfigError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import encode_block
from maif.storage.engine import MAIFStorage, create_maif_storage
from maif.storage.kafkalog import KAFKA


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


# ---- one node -----------------------------------------------------------------------------------------

def test_one_node_writes_through_the_kafka_log_and_applies_it(config_of: Callable[..., dict[str, Any]]
                                                              ) -> None:
    stats = asyncio.run(kafka_node.write_read_and_delete_on_one_node(config_of("node-a")))
    assert stats["kafka_records_applied_total"] == 51 and stats["kafka_records_skipped_total"] == 0
    assert stats["kafka_pending_records"] == 0
    assert sorted(stats["kafka_partitions_assigned"]) == [0, 1, 2, 3]


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

def test_acknowledged_blocks_survive_the_loss_of_the_node_that_took_them(
        config_of: Callable[..., dict[str, Any]]) -> None:
    kafka_node.lose_the_writing_node(config_of)


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
            kafka_node.assert_skipped(await storage.get_stats(), "kafka", 4, "not a MAIF log record",
                                      "an empty record", "above kafka_record_bytes_max", "5 dimensions")
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

    # another group: it owns every partition at once instead of waiting out the dead member's session
    asyncio.run(kafka_node.reapplied_once(config_of("node-d", kafka_group="second-group"),
                                          config["kafka_topic"], "kafka", blocks))


# ---- the broker killed and restarted mid-run -----------------------------------------------------------

def test_the_broker_killed_and_restarted_mid_run_loses_no_acknowledged_block(
        private_servers: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    servers = private_servers("postgres", "seaweedfs", "tansu")
    env = servers.env()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    config = kafka_config(tmp_path, "node-a", env, env["MAIF_STORAGE_POSTGRES_URL"],
                          env["MAIF_STORAGE_S3_BUCKET"], "maif-wal", kafka_write_timeout_s=2.0)
    asyncio.run(kafka_node.write_through_a_broker_outage(config, servers, "tansu", KAFKA))


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
