"""Each server of a scaled-out store killed with SIGKILL mid-run, then restarted (issue 10, faults).

One private set of servers (PostgreSQL + pgvector, SeaweedFS S3, Redis) on free ports serves the
module; each test kills one of them while a node writes, and checks what the store promises:
- PostgreSQL or S3 down: writes are still acknowledged into the node's local log up to its bound,
  then refused with StoreDegradedError (typed, naming the server, with a retry delay); health names
  the server; when it returns every acknowledged write is applied, and nothing acknowledged is lost
  (checked bit-exact from a second node that never saw the writes);
- Redis down: reads fall back to the lower tier, the health report names it, writes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from distributed_servers import (
    S3Settings,
    ServerSet,
    ServersUnavailableError,
    fresh_bucket,
    fresh_database,
    private_server_set,
)
from serve_nodes import start_serve

from maif.errors import BackendUnavailableError, BlockNotFoundError, StoreDegradedError
from maif.format.block import MAIFBlock
from maif.storage.engine import MAIFStorage, create_maif_storage

BLOCK_BYTES = 16 * 1024
MAX_MEMORY_MB = 32  # the unapplied-writes bound is max(8 MiB, a quarter of this): 8 MiB, ~500 blocks
RECOVERY_DEADLINE_S = 90.0


@pytest.fixture(scope="module")
def servers() -> Iterator[ServerSet]:
    with contextlib.ExitStack() as stack:
        try:
            server_set = stack.enter_context(private_server_set(("postgres", "seaweedfs", "redis")))
        except ServersUnavailableError as error:
            failure = str(error)
        else:
            yield server_set
            return
    pytest.fail(failure, pytrace=False)


@pytest.fixture
def node_config(servers: ServerSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``node_config(name)``: the configuration of one node of a new store (a fresh database and
    bucket in the module's servers, all three servers running)."""
    servers.start()  # idempotent: whatever an earlier test killed runs again
    env = servers.env()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, env[key])
    admin, owner = env["MAIF_SERVICES_POSTGRES_ADMIN_URL"], env["MAIF_STORAGE_POSTGRES_URL"]
    with fresh_database(admin, owner) as postgres, fresh_bucket(S3Settings.from_env(env)) as bucket:

        def make(name: str) -> dict[str, Any]:
            return {
                "data_dir": str(tmp_path / name),
                "node_id": name,
                "tier_interval_s": 0,
                "postgres_url": postgres,
                "s3_endpoint": env["MAIF_STORAGE_S3_ENDPOINT"],
                "s3_bucket": bucket,
                "redis_url": env["MAIF_STORAGE_REDIS_URL"],
                "max_memory_mb": MAX_MEMORY_MB,
            }

        yield make
        servers.start()  # the database and bucket are dropped through their servers


def block(number: int, tag: str) -> MAIFBlock:
    return MAIFBlock(
        id=f"{tag}-{number:06d}", data=os.urandom(BLOCK_BYTES), agent_id="faults", metadata={"n": number}
    )


async def write_until_refused(
    storage: MAIFStorage, tag: str, component: str, acked: dict[str, MAIFBlock]
) -> StoreDegradedError:
    """Write batches of 16 until the store refuses one; every acknowledged block goes into ``acked``."""
    number = len(acked)
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while time.monotonic() < deadline:
        batch = [block(number + offset, tag) for offset in range(16)]
        try:
            await storage.write_blocks(batch)
        except StoreDegradedError as refusal:
            for refused in batch:  # a refused batch wrote nothing, not even in the local log
                assert refused.id not in acked
                with pytest.raises((BlockNotFoundError, BackendUnavailableError)):
                    await asyncio.wait_for(storage.read_block(refused.id), 30)
            return refusal
        acked.update((item.id, item) for item in batch)
        number += len(batch)
    raise AssertionError(f"with {component} down, writes were never refused ({len(acked)} acknowledged)")


async def wait_healthy(storage: MAIFStorage) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while storage.health()["applier_waiting_for"] is not None or storage.health()["status"] != "ok":
        assert time.monotonic() < deadline, f"the store did not recover: {storage.health()}"
        await asyncio.sleep(0.1)


async def assert_all_readable(config: dict[str, Any], acked: dict[str, MAIFBlock]) -> None:
    """A node that never saw the writes reads every acknowledged block, bit-exact."""
    async with await create_maif_storage(config) as reader:
        for block_id, expected in acked.items():
            assert await reader.read_block(block_id) == expected, block_id
        listed = await reader.list_blocks(agent_id="faults", limit=len(acked) + 100)
        assert {summary.block_id for summary in listed} == set(acked)


@pytest.mark.parametrize(("server", "component"), [("postgres", "postgresql"), ("seaweedfs", "s3")])
def test_a_killed_server_degrades_then_every_acknowledged_write_is_applied(
    servers: ServerSet, node_config: Any, server: str, component: str
) -> None:
    async def main() -> None:
        acked: dict[str, MAIFBlock] = {}
        storage = await create_maif_storage(node_config("writer"))
        try:
            first = [block(number, "before") for number in range(32)]
            await storage.write_blocks(first)
            acked.update((item.id, item) for item in first)
            assert len(await storage.list_blocks(agent_id="faults", limit=100)) == 32  # applied

            servers.kill(server)
            refusal = await write_until_refused(storage, "during", component, acked)
            assert refusal.component == component and refusal.retry_after_s >= 1
            assert "nothing written" in refusal.message
            health = storage.health()
            assert health["status"] == "degraded" and component in health["degraded"], health
            assert health["applier_waiting_for"] == component
            assert health["unapplied_bytes"] > health["unapplied_bytes_max"] // 2
            stats = await storage.get_stats()  # /metrics still has figures while degraded
            assert stats["health"]["degraded"].keys() == {component}
            during = [block_id for block_id in acked if block_id.startswith("during")]
            assert len(during) >= 256  # the bound held several MiB of acknowledged writes
            for block_id in during[:: max(1, len(during) // 20)]:  # read-your-writes from the log
                assert await storage.read_block(block_id) == acked[block_id]
            with pytest.raises(BackendUnavailableError):  # a query must see the backlog: refused
                await storage.list_blocks(agent_id="faults", limit=10)

            servers.start(server)
            await wait_healthy(storage)
            more = [block(number, "after") for number in range(32)]
            await storage.write_blocks(more)  # writable again
            acked.update((item.id, item) for item in more)
            assert len(await storage.list_blocks(agent_id="faults", limit=len(acked) + 100)) == len(acked)
            seconds = storage.health()["degraded_seconds_total"]
            assert seconds.get(component, 0) > 0, seconds
        finally:
            await storage.close()
        await assert_all_readable(node_config("reader"), acked)

    asyncio.run(main())


def test_a_node_closed_while_a_server_is_down_applies_its_log_when_reopened(
    servers: ServerSet, node_config: Any
) -> None:
    """Close cannot wait for ever: what it could not apply stays in the local log and is applied at
    the next open (the servers answer again by then)."""

    async def main() -> None:
        config = node_config("writer")
        storage = await create_maif_storage(config)
        blocks = [block(number, "kept") for number in range(64)]
        try:
            await storage.write_blocks(blocks[:8])
            assert len(await storage.list_blocks(agent_id="faults", limit=100)) == 8
            servers.kill("postgres")
            await storage.write_blocks(blocks[8:])
        finally:
            started = time.monotonic()
            await storage.close()
            assert time.monotonic() - started < 60
        servers.start("postgres")
        async with await create_maif_storage(config) as reopened:
            assert reopened.recovery.records >= 56
            for item in blocks:
                assert await reopened.read_block(item.id) == item
        await assert_all_readable(node_config("reader"), {item.id: item for item in blocks})

    asyncio.run(main())


def test_redis_killed_reads_fall_back_and_health_names_it(servers: ServerSet, node_config: Any) -> None:
    async def main() -> None:
        async with (
            await create_maif_storage(node_config("writer")) as writer,
            await create_maif_storage(node_config("other")) as other,
        ):
            blocks = [block(number, "cached") for number in range(20)]
            await writer.write_blocks(blocks)
            await writer.list_blocks(limit=1)  # waits until the writer applied them
            for item in blocks:  # fills the shared cache
                assert await other.read_block(item.id) == item
            servers.kill("redis")
            async with await create_maif_storage(node_config("cold")) as cold:  # an empty hot cache
                for item in blocks:  # Redis fails: every read is served by the lower tier, bit-exact
                    assert await cold.read_block(item.id) == item
                health = cold.health()
                assert health["status"] == "degraded" and "redis" in health["degraded"], health
            later = [block(number, "later") for number in range(20)]
            await writer.write_blocks(later)  # writes do not need the cache
            await writer.list_blocks(limit=1)
            for item in later:
                assert await other.read_block(item.id) == item
            servers.start("redis")
            deadline = time.monotonic() + RECOVERY_DEADLINE_S
            probes = 0
            while "redis" in other.health()["degraded"]:  # the breaker probes and closes again
                assert time.monotonic() < deadline, other.health()
                fresh = block(probes, "probe")  # not in other's own hot cache: a read asks Redis
                await writer.write_block(fresh)
                await writer.list_blocks(limit=1)
                assert await other.read_block(fresh.id) == fresh
                probes += 1
                await asyncio.sleep(0.2)
            assert other.health()["degraded_seconds_total"]["redis"] > 0

    asyncio.run(main())


@pytest.mark.parametrize(("server", "component"), [("seaweedfs", "s3"), ("postgres", "postgresql")])
def test_maif_serve_answers_503_with_retry_after_while_a_server_is_down(
        servers: ServerSet, node_config: Any, oidc_issuer: Any, tmp_path: Path, server: str,
        component: str) -> None:
    """The same through `maif serve`, whose block ids are immutable (an id that exists is a 409):
    - S3 down: 201 into the local log, then 503 "degraded" with Retry-After once the bound is reached;
    - PostgreSQL down: whether an id exists cannot be known without the shared index, so every write
      is refused at once, 503 "backend-unavailable" with Retry-After (never a 201 that could replace
      a block).
    /healthz and /metrics name the component; after the restart every acknowledged block is served,
    and nothing refused was stored."""
    config = node_config("served")
    environment = {f"MAIF_STORAGE_{key.upper()}": config[key]
                   for key in ("node_id", "postgres_url", "s3_endpoint", "s3_bucket", "redis_url")}
    process = start_serve(tmp_path / "served", oidc_issuer, environment, max_memory_mb=MAX_MEMORY_MB)
    token = oidc_issuer.token("agent-1", "maif:read maif:write")
    acked: dict[str, bytes] = {}
    try:
        with httpx.Client(base_url=process.url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as client:

            def write(block_id: str) -> httpx.Response:
                payload = os.urandom(BLOCK_BYTES)
                response = client.post("/v1/blocks", content=payload, headers={
                    "Content-Type": "application/octet-stream", "X-MAIF-Block-Id": block_id})
                if response.status_code == 201:
                    acked[block_id] = payload
                return response

            assert write("before").status_code == 201
            servers.kill(server)
            refused: list[str] = []
            for number in range(5000):
                response = write(f"during-{number:05d}")
                if response.status_code != 201:
                    refused.append(f"during-{number:05d}")
                    break
            assert refused, f"writes were never refused while {component} was down"
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            problem = response.json()
            if component == "s3":
                assert problem["type"] == "urn:maif:problem:degraded" and len(acked) >= 256, problem
            else:
                assert problem["type"] == "urn:maif:problem:backend-unavailable" and len(acked) == 1, problem
            assert component in problem["detail"] or "PostgreSQL" in problem["detail"], problem
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "degraded"
            assert component in health.json()["degraded"], health.json()
            metrics = client.get("/metrics").text
            assert f'maif_storage_degraded{{component="{component}"}} 1.0' in metrics
            assert f'maif_storage_degraded_seconds_total{{component="{component}"}}' in metrics

            servers.start(server)
            deadline = time.monotonic() + RECOVERY_DEADLINE_S
            while client.get("/healthz").json()["status"] != "ok":
                assert time.monotonic() < deadline, client.get("/healthz").json()
                assert write(f"probe-{time.monotonic_ns()}").status_code in (201, 503)  # a probe call
                time.sleep(0.2)
            for block_id, payload in acked.items():
                response = client.get(f"/v1/blocks/{block_id}")
                assert response.status_code == 200 and response.content == payload, block_id
            for block_id in refused:
                assert client.get(f"/v1/blocks/{block_id}").status_code == 404
    finally:
        assert process.stop() == 0
