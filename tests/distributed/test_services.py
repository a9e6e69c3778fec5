"""The distributed test servers and fixtures work, and the servers enforce their credentials."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as redis
from aiobotocore.session import get_session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from distributed_servers import (
    S3Settings,
    ServerSet,
    fresh_bucket,
    fresh_database,
    fresh_key_prefix,
    services_state_dir,
)
from pgvector.asyncpg import register_vector


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def test_env_points_maif_at_the_servers(services_env: dict[str, str]) -> None:
    for key in (
        "MAIF_STORAGE_POSTGRES_URL",
        "MAIF_STORAGE_REDIS_URL",
        "MAIF_STORAGE_S3_ENDPOINT",
        "MAIF_STORAGE_S3_BUCKET",
        "MAIF_STORAGE_KAFKA_BROKERS",
        "MAIF_STORAGE_NATS_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ):
        assert services_env[key], key
    for key in ("MAIF_STORAGE_POSTGRES_URL", "MAIF_STORAGE_REDIS_URL", "MAIF_STORAGE_S3_ENDPOINT",
                "MAIF_STORAGE_NATS_URL"):
        assert urlsplit(services_env[key]).hostname == "127.0.0.1", key
    assert services_env["MAIF_STORAGE_KAFKA_BROKERS"].startswith("127.0.0.1:")


# ---- PostgreSQL + pgvector -----------------------------------------------------------------------


def test_postgres_query_and_pgvector(fresh_postgres_url: str) -> None:
    async def scenario() -> tuple[str, int, str]:
        connection = await asyncpg.connect(fresh_postgres_url)
        try:
            await register_vector(connection)
            version = await connection.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            )
            await connection.execute("CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))")
            await connection.execute("CREATE INDEX ON items USING hnsw (embedding vector_cosine_ops)")
            await connection.executemany(
                "INSERT INTO items VALUES ($1, $2)",
                [(1, [1.0, 0.0, 0.0]), (2, [0.0, 1.0, 0.0]), (3, [0.7, 0.7, 0.0])],
            )
            nearest = await connection.fetchval(
                "SELECT id FROM items ORDER BY embedding <=> $1 LIMIT 1", [0.1, 0.9, 0.0]
            )
            user = await connection.fetchval("SELECT current_user")
            return version, nearest, user
        finally:
            await connection.close()

    version, nearest, user = asyncio.run(scenario())
    assert version.startswith("0.8")
    assert nearest == 2
    assert user == urlsplit(fresh_postgres_url).username


def test_postgres_refuses_a_wrong_password(postgres_url: str) -> None:
    async def connect() -> None:
        connection = await asyncpg.connect(with_password(postgres_url, "wrong"))
        await connection.close()

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(connect())


def test_fresh_database_is_dropped_afterwards(postgres_admin_url: str, postgres_url: str) -> None:
    with fresh_database(postgres_admin_url, postgres_url) as url:
        name = urlsplit(url).path.lstrip("/")

    async def exists() -> bool:
        connection = await asyncpg.connect(postgres_admin_url)
        try:
            return bool(
                await connection.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name)
            )
        finally:
            await connection.close()

    assert not asyncio.run(exists())


# ---- S3 (SeaweedFS) ------------------------------------------------------------------------------


def test_s3_put_get_and_ranged_get(s3_settings: S3Settings, fresh_s3_bucket: str) -> None:
    body = bytes(range(256)) * 64

    async def scenario() -> tuple[bytes, bytes]:
        async with get_session().create_client("s3", **s3_settings.client_kwargs()) as client:
            await client.put_object(Bucket=fresh_s3_bucket, Key="packs/one", Body=body)
            whole = await client.get_object(Bucket=fresh_s3_bucket, Key="packs/one")
            part = await client.get_object(Bucket=fresh_s3_bucket, Key="packs/one", Range="bytes=100-199")
            return await whole["Body"].read(), await part["Body"].read()

    whole, part = asyncio.run(scenario())
    assert whole == body
    assert part == body[100:200]


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param({"aws_secret_access_key": "wrong-secret"}, id="wrong-secret"),
        pytest.param({"aws_access_key_id": "unknown-key"}, id="unknown-key"),
        pytest.param(
            {"config": Config(signature_version=UNSIGNED, s3={"addressing_style": "path"})}, id="anonymous"
        ),
    ],
)
def test_s3_refuses_bad_credentials(s3_settings: S3Settings, fresh_s3_bucket: str, credentials: dict) -> None:
    async def scenario() -> None:
        async with get_session().create_client("s3", **s3_settings.client_kwargs()) as client:
            await client.put_object(Bucket=fresh_s3_bucket, Key="secret", Body=b"data")
        async with get_session().create_client("s3", **s3_settings.client_kwargs(**credentials)) as client:
            await client.get_object(Bucket=fresh_s3_bucket, Key="secret")

    with pytest.raises(ClientError) as refused:
        asyncio.run(scenario())
    assert refused.value.response["Error"]["Code"] in {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
    }


def test_fresh_bucket_is_deleted_afterwards(s3_settings: S3Settings) -> None:
    with fresh_bucket(s3_settings) as bucket:

        async def fill() -> None:
            async with get_session().create_client("s3", **s3_settings.client_kwargs()) as client:
                await client.put_object(Bucket=bucket, Key="a", Body=b"a")
                await client.create_multipart_upload(Bucket=bucket, Key="unfinished")

        asyncio.run(fill())

    async def names() -> list[str]:
        async with get_session().create_client("s3", **s3_settings.client_kwargs()) as client:
            return [entry["Name"] for entry in (await client.list_buckets())["Buckets"]]

    remaining = asyncio.run(names())
    assert bucket not in remaining
    assert s3_settings.bucket in remaining  # the default bucket the servers were started with


# ---- Redis ---------------------------------------------------------------------------------------


def test_redis_set_get(redis_url: str, fresh_redis_prefix: str) -> None:
    async def scenario() -> bytes | None:
        client = redis.from_url(redis_url)
        try:
            await client.set(f"{fresh_redis_prefix}block", b"\x00bytes", ex=60)
            return await client.get(f"{fresh_redis_prefix}block")
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == b"\x00bytes"


@pytest.mark.parametrize("password", ["wrong", None])
def test_redis_refuses_bad_credentials(redis_url: str, password: str | None) -> None:
    parts = urlsplit(redis_url)
    url = with_password(redis_url, password) if password else f"redis://{parts.hostname}:{parts.port}/0"

    async def scenario() -> None:
        client = redis.from_url(url)
        try:
            await client.get("anything")
        finally:
            await client.aclose()

    with pytest.raises(redis.AuthenticationError):
        asyncio.run(scenario())


def test_fresh_key_prefix_is_cleared_afterwards(redis_url: str) -> None:
    async def run(*commands: tuple) -> list:
        client = redis.from_url(redis_url)
        try:
            return [await client.execute_command(*command) for command in commands]
        finally:
            await client.aclose()

    with fresh_key_prefix(redis_url) as prefix:
        asyncio.run(run(*[("SET", f"{prefix}{i}", i) for i in range(2500)], ("SET", "maif-keep-me", 1)))
    assert asyncio.run(run(("KEYS", f"{prefix}*"), ("GET", "maif-keep-me"), ("DEL", "maif-keep-me"))) == [
        [],
        b"1",
        1,
    ]


# ---- Tansu (Kafka protocol) and NATS JetStream -------------------------------------------------------


def test_tansu_acknowledged_records_survive_a_broker_crash(private_servers: Callable[..., ServerSet]) -> None:
    """acks=all answered by Tansu means the records are in SeaweedFS: SIGKILL the broker, restart, read."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    servers = private_servers("seaweedfs", "tansu")
    brokers = servers.env()["MAIF_STORAGE_KAFKA_BROKERS"]
    topic = "maif-services-test"

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all")
        await producer.start()
        try:
            for number in range(20):
                await producer.send_and_wait(topic, b"record %d" % number, key=b"agent-a")
        finally:
            await producer.stop()

    async def consume() -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=brokers, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
        await consumer.start()
        got: list[bytes] = []
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while len(got) < 20 and asyncio.get_running_loop().time() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += [record.value for record in records]
        finally:
            await consumer.stop()
        return got

    asyncio.run(produce())
    servers.kill("tansu")
    assert servers.start("tansu")["tansu"][0] == "started"
    assert asyncio.run(consume()) == [b"record %d" % number for number in range(20)]


def test_nats_jetstream_takes_the_configured_user_and_refuses_others(services_env: dict[str, str]) -> None:
    import nats
    from nats.errors import NoServersError

    url = services_env["MAIF_STORAGE_NATS_URL"]

    async def publish() -> int:
        client = await nats.connect(url, max_reconnect_attempts=0)
        try:
            stream = f"SERVICES_TEST_{urlsplit(url).port}"
            jetstream = client.jetstream()
            await jetstream.add_stream(name=stream, subjects=[f"{stream}.>"])
            try:
                return (await jetstream.publish(f"{stream}.x", b"hello")).seq
            finally:
                await jetstream.delete_stream(stream)
        finally:
            await client.close()

    assert asyncio.run(publish()) >= 1

    async def intrude() -> None:
        client = await nats.connect(with_password(url, "wrong"), max_reconnect_attempts=0,
                                    allow_reconnect=False, connect_timeout=2)
        await client.close()

    with pytest.raises((NoServersError, nats.errors.Error)):
        asyncio.run(intrude())


# ---- private server sets (for fault tests) -------------------------------------------------------


def test_private_redis_can_be_killed_and_restarted(private_servers: Callable[..., ServerSet]) -> None:
    servers = private_servers("redis")
    url = servers.env()["MAIF_STORAGE_REDIS_URL"]

    async def command(*args: object) -> object:
        client = redis.from_url(url)
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()

    first = servers.pid("redis")
    asyncio.run(command("SET", "k", "v"))
    servers.kill("redis")
    assert servers.pid("redis") is None
    assert servers.start("redis")["redis"][0] == "started"
    assert servers.pid("redis") not in (None, first)
    assert asyncio.run(command("PING"))


def test_a_busy_default_port_is_replaced_by_a_free_one_that_is_kept(tmp_path: Path) -> None:
    """Two checkouts' test servers must not collide: with another process on the default Redis port, a
    new state directory gets a free port, and its next start keeps it."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 17379))
        holder.listen()
    except OSError:
        pass  # already held (e.g. by another checkout's Redis): the case under test
    servers = ServerSet(tmp_path / "state", servers=("redis",), pkgs_dir=services_state_dir() / "pkgs")
    saved = os.environ.pop("MAIF_REDIS_PORT", None)
    try:
        servers.start()
        port = int(urlsplit(servers.env()["MAIF_STORAGE_REDIS_URL"]).port or 0)
        assert port != 17379 and 22700 <= port < 32700
        servers.stop()
        servers.start()
        assert urlsplit(servers.env()["MAIF_STORAGE_REDIS_URL"]).port == port
    finally:
        servers.stop()
        holder.close()
        if saved is not None:
            os.environ["MAIF_REDIS_PORT"] = saved
