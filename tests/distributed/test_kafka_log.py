"""The write-ahead log on the Kafka protocol (docs/adr/0073-kafka-log.md), against the real broker Tansu
(its topics in SeaweedFS), PostgreSQL + pgvector and S3 (SeaweedFS).

The point of this log: a block acknowledged by node A survives the total loss of A (its process
SIGKILLed, its data_dir deleted): node B applies it from the log. Also: a record on the topic that is
not a MAIF log record is skipped and counted, never stopping its partition; a crash between applying
a batch and recording its position re-applies it harmlessly; the broker SIGKILLed and restarted
mid-run gives writers a typed error (or a wait), never a lost acknowledged block.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from maif.errors import ConfigError
from maif.format.block import MAIFBlock
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
