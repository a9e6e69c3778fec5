"""The write-ahead log on NATS JetStream (docs/adr/0084-nats-log.md), against a real NATS server (2.15,
JetStream file storage), PostgreSQL + pgvector and S3 (SeaweedFS).

The point of this log: a block acknowledged by node A survives the total loss of A (its process
SIGKILLed, its data_dir deleted): node B applies it from the stream. Also: a message on the log's
subjects that is not a MAIF log record is skipped and counted, never stopping its partition; a crash
between applying a batch and recording its position re-applies it harmlessly; the server SIGKILLed and
restarted mid-run gives writers a typed error (or a bounded wait), never a lost acknowledged block; two
nodes split the partitions through PostgreSQL advisory locks, and a killed holder's partitions are taken
over by the survivor.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kafka_node
import pytest
from kafka_node import WAIT_S, block_of, ids_of, read_lines_until, sigkill, start_node, wait_readable

from maif import limits
from maif.errors import ConfigError
from maif.format.block import MAIFBlock
from maif.format.codec import encode_block
from maif.storage import natslog
from maif.storage.engine import MAIFStorage, create_maif_storage
from maif.storage.natslog import NATS, partition_of, subject_of
from maif.storage.sharedlog import log_key

PARTITIONS = 4


def nats_config(tmp_path: Path, name: str, env: dict[str, str], postgres: str, bucket: str, stream: str,
                **extra: Any) -> dict[str, Any]:
    return {"data_dir": str(tmp_path / name), "node_id": name, "postgres_url": postgres,
            "s3_endpoint": env["MAIF_STORAGE_S3_ENDPOINT"], "s3_bucket": bucket, "log_backend": "nats",
            "nats_url": env["MAIF_STORAGE_NATS_URL"], "nats_log_stream": stream,
            "nats_log_partitions": PARTITIONS, "tier_interval_s": 0, **extra}


async def _delete_stream(url: str, stream: str) -> None:
    import nats

    client = await nats.connect(url)
    try:
        with_timeout = client.jetstream(timeout=5)
        await with_timeout.delete_stream(stream)
    except Exception:
        pass
    finally:
        await client.close()


@pytest.fixture
def config_of(tmp_path: Path, services_env: dict[str, str], fresh_postgres_url: str,
              fresh_s3_bucket: str) -> Iterator[Callable[..., dict[str, Any]]]:
    """``config_of(name, **extra)``: a node's configuration; every node of one test shares one stream,
    deleted after the test."""
    stream = f"MAIF_TEST_{secrets.token_hex(6)}"

    def make(name: str, **extra: Any) -> dict[str, Any]:
        return nats_config(tmp_path, name, services_env, fresh_postgres_url, fresh_s3_bucket, stream, **extra)

    yield make
    asyncio.run(_delete_stream(services_env["MAIF_STORAGE_NATS_URL"], stream))


async def publish_raw(config: dict[str, Any], messages: list[tuple[str, bytes]],
                      headers: dict[str, str] | None = None) -> None:
    """Publish to the log's stream behind the store's back: (subject, payload) pairs, each acknowledged,
    each with ``headers``."""
    import nats

    client = await nats.connect(config["nats_url"])
    try:
        jetstream = client.jetstream(timeout=5)
        for subject, payload in messages:
            await jetstream.publish(subject, payload, headers=headers)
    finally:
        await client.close()


async def stream_messages(config: dict[str, Any]) -> int:
    import nats

    client = await nats.connect(config["nats_url"])
    try:
        info = await client.jetstream(timeout=5).stream_info(config["nats_log_stream"])
        return int(info.state.messages)
    finally:
        await client.close()


def subject_for(config: dict[str, Any], block: MAIFBlock) -> str:
    from maif.storage.engine import log_item

    return subject_of(config["nats_log_stream"],
                      partition_of(log_key(log_item(encode_block(block), 1)), PARTITIONS))


# ---- one node -----------------------------------------------------------------------------------------

def test_one_node_writes_through_the_nats_log_and_applies_it(config_of: Callable[..., dict[str, Any]]
                                                             ) -> None:
    stats = asyncio.run(kafka_node.write_read_and_delete_on_one_node(config_of("node-a")))
    assert stats["nats_records_applied_total"] == 51 and stats["nats_records_skipped_total"] == 0
    assert stats["nats_pending_records"] == 0 and stats["nats_publish_groups_total"] >= 1
    assert stats["nats_partitions_owned"] == list(range(PARTITIONS))
    from maif.service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.observe_storage(stats)
    exposition = metrics.render().decode()
    assert "maif_storage_nats_records_applied_total 51.0" in exposition
    assert "maif_storage_nats_pending_records 0.0" in exposition


def test_the_nats_log_is_chosen_explicitly_and_needs_the_shared_backends_and_a_server(
        tmp_path: Path, config_of: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match='log_backend "nats" needs nats_url'):
        asyncio.run(create_maif_storage({"data_dir": str(tmp_path / "a"), "log_backend": "nats"}))
    with pytest.raises(ConfigError, match="postgres_url, s3_endpoint and s3_bucket"):
        asyncio.run(create_maif_storage({"data_dir": str(tmp_path / "b"), "log_backend": "nats",
                                         "nats_url": "nats://127.0.0.1:1"}))
    with pytest.raises(ConfigError, match="nats_log_stream"):
        asyncio.run(create_maif_storage(config_of("node-c", nats_log_stream="no.dots")))
    with pytest.raises(ConfigError) as caught:
        asyncio.run(create_maif_storage(config_of("node-d", nats_url="nats://127.0.0.1:1",
                                                  nats_write_timeout_s=1.0)))
    assert caught.value.message.startswith("NATS (nats_url)") and "\n" not in caught.value.message


def test_an_existing_stream_with_other_settings_is_refused_not_changed(
        config_of: Callable[..., dict[str, Any]]) -> None:
    async def main() -> None:
        storage = await create_maif_storage(config_of("node-a"))  # creates the stream, 4 partitions
        await storage.close()
        with pytest.raises(ConfigError, match="partitions"):
            await create_maif_storage(config_of("node-b", nats_log_partitions=PARTITIONS * 2))
        storage = await create_maif_storage(config_of("node-c"))  # as it was: still opens
        await storage.close()

    asyncio.run(main())


def test_acknowledged_blocks_survive_the_total_loss_of_the_writing_node(
        config_of: Callable[..., dict[str, Any]]) -> None:
    kafka_node.lose_the_writing_node(config_of)  # the point of this log


# ---- hostile or damaged messages on the log's subjects ------------------------------------------------

def test_messages_that_are_not_maif_log_records_are_skipped_and_counted(
        config_of: Callable[..., dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "kafka_record_bytes_max", 64 * 1024)  # an "oversized" record is cheap
    monkeypatch.setattr(natslog, "_PURGE_INTERVAL_S", 0.0)  # applied records leave the stream at once
    config = config_of("node-a")
    good = MAIFBlock(id="after-the-garbage", data=b"still applied", agent_id="agent-x")
    packed_good = MAIFBlock(id="packed-with-garbage", data=b"applied too", agent_id="agent-x")
    subject = subject_for(config, good)
    garbage = b"\x00garbage that is no MAIF record"

    async def main() -> None:
        storage = await create_maif_storage(config)
        try:
            await publish_raw(config, [(subject, value) for value in (
                garbage, b"", os.urandom(65 * 1024), encode_block(good))])
            # messages that say they pack several records: not MessagePack; a count that lies; one good
            # record packed with garbage (only the garbage is skipped)
            await publish_raw(config, [(subject, garbage)], {natslog.RECORDS_HEADER: "2"})
            await publish_raw(config, [(subject, natslog.pack_records([garbage, garbage, garbage])[0])],
                              {natslog.RECORDS_HEADER: "2"})
            data, headers = natslog.pack_records([garbage, encode_block(packed_good)])
            await publish_raw(config, [(subject, data)], headers)
            await wait_readable(storage, {good.id: good.data, packed_good.id: packed_good.data})
            kafka_node.assert_skipped(await storage.get_stats(), "nats", 6, "not a MAIF log record",
                                      "an empty record", "above kafka_record_bytes_max", "does not decode",
                                      "its header says '2'", "record 0: not a MAIF log record")
            await storage.write_block(MAIFBlock(id="later", data=b"the partition goes on",
                                                agent_id="agent-x"))
            assert [s.block_id for s in await storage.list_blocks(limit=10)] == [
                "after-the-garbage", "packed-with-garbage", "later"]
            deadline = time.monotonic() + WAIT_S  # the skipped and the applied alike: purged once applied
            while await stream_messages(config) > 0:
                assert time.monotonic() < deadline, "applied records were never purged from the stream"
                await asyncio.sleep(0.2)
        finally:
            await storage.close()

    asyncio.run(main())


def test_a_crash_between_the_apply_and_its_position_reapplies_once(
        config_of: Callable[..., dict[str, Any]]) -> None:
    config = config_of("node-c")
    blocks = [block_of(block_id, 1024) for block_id in ids_of(0, 30)]
    node = start_node(config, "crash-before-position")  # creates the stream, holds every partition
    try:
        read_lines_until(node, lambda lines: "opened" in lines)
        asyncio.run(publish_raw(config, [(subject_for(config, block), encode_block(block))
                                         for block in blocks]))
        read_lines_until(node, lambda lines: any(line.startswith("applied") for line in lines))
        assert node.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if node.poll() is None:
            sigkill(node)

    # the dead node's locks died with its session: node D takes every partition at once
    asyncio.run(kafka_node.reapplied_once(config_of("node-d"), config["nats_log_stream"], "nats", blocks))


# ---- the server killed and restarted mid-run ----------------------------------------------------------

def test_nats_killed_and_restarted_mid_run_loses_no_acknowledged_block(
        private_servers: Callable[..., Any], tmp_path: Path, services_env: dict[str, str],
        fresh_postgres_url: str, fresh_s3_bucket: str) -> None:
    servers = private_servers("nats")  # its own NATS (the project's configuration); shared PG and S3
    env = servers.env()
    monitor = json.loads(urllib.request.urlopen(
        f"http://127.0.0.1:{servers.ports['MAIF_NATS_MONITOR_PORT']}/varz", timeout=10).read())
    assert monitor["jetstream"]["config"].get("sync_always") is True  # a PubAck means fsynced
    private_nats = {**services_env, "MAIF_STORAGE_NATS_URL": env["MAIF_STORAGE_NATS_URL"]}
    config = nats_config(tmp_path, "node-a", private_nats, fresh_postgres_url, fresh_s3_bucket, "MAIF_WAL",
                         nats_write_timeout_s=2.0)
    asyncio.run(kafka_node.write_through_a_broker_outage(config, servers, "nats", NATS))


# ---- two nodes: the partitions split, a killed holder's taken over ------------------------------------

def test_two_nodes_split_the_partitions_and_a_killed_holders_are_taken_over(
        config_of: Callable[..., dict[str, Any]]) -> None:
    async def owned(store: MAIFStorage) -> list[int]:
        return list((await store.get_stats())["nats_partitions_owned"])

    async def until(condition: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not await condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    other = start_node(config_of("node-b"), "apply")
    try:
        read_lines_until(other, lambda lines: "opened" in lines)

        async def main() -> None:
            a = await create_maif_storage(config_of("node-a"))
            try:
                async def split() -> bool:
                    return len(await owned(a)) == PARTITIONS // 2

                await until(split, "the partitions were not split between the two nodes")
                lines = read_lines_until(other, lambda lines: any(
                    len(line.split()) == 1 + PARTITIONS // 2 and line.startswith("owned") for line in lines))
                theirs = {int(p) for p in lines[-1].split()[1:]}
                assert theirs.isdisjoint(await owned(a)), "one partition held by both nodes"
                blocks = [block_of(block_id, 700) for block_id in ids_of(0, 40)]  # 8 agents: all partitions
                await asyncio.gather(*(a.write_block(block) for block in blocks))
                # A's query waits until the shared index holds all of them, B applying its half
                assert [s.block_id for s in await a.list_blocks(limit=100)] == [x.id for x in blocks]
                applied_here = (await a.get_stats())["nats_records_applied_total"]
                assert 0 < applied_here < len(blocks)  # B applied the rest

                await asyncio.to_thread(sigkill, other)  # its PostgreSQL session, and locks, die with it

                async def all_mine() -> bool:
                    return await owned(a) == list(range(PARTITIONS))

                await until(all_mine, "the killed node's partitions were not taken over")
                later = [block_of(block_id, 700) for block_id in ids_of(1, 40)]
                await asyncio.gather(*(a.write_block(block) for block in later))
                await wait_readable(a, {block.id: block.data for block in later})
                assert (await a.get_stats())["nats_records_applied_total"] == applied_here + len(later)
            finally:
                await a.close()

        asyncio.run(main())
    finally:
        if other.poll() is None:
            sigkill(other)


# ---- the reader's order check (no server needed) ---------------------------------------------------------

def test_the_reader_cuts_a_fetch_at_a_gap_or_a_step_back_in_consumer_sequences() -> None:
    """A consumer that survived a server restart with older state delivers again from an earlier
    sequence (seen in scripts/kafka_campaign.py --log nats); a message lost in transit leaves a gap.
    Either way only the run before it is taken, and the reader starts again from the positions."""
    from types import SimpleNamespace

    def messages(*sequences: int) -> list[Any]:
        return [SimpleNamespace(metadata=SimpleNamespace(sequence=SimpleNamespace(consumer=number)))
                for number in sequences]

    reader = SimpleNamespace(_delivered=0)
    taken, cut = natslog.PartitionOwner._in_order(reader, messages(1, 2, 3))  # type: ignore[arg-type]
    assert (len(taken), cut, reader._delivered) == (3, False, 3)
    taken, cut = natslog.PartitionOwner._in_order(reader, messages(4, 5, 2, 3, 4))  # type: ignore[arg-type]
    assert (len(taken), cut, reader._delivered) == (2, True, 5)
    taken, cut = natslog.PartitionOwner._in_order(reader, messages(7, 8))  # type: ignore[arg-type]
    assert (len(taken), cut, reader._delivered) == (0, True, 5)
