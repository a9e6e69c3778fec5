"""Fixtures for the distributed tests: real PostgreSQL + pgvector, SeaweedFS (S3), Redis, the Kafka-protocol
broker Tansu (topics stored in SeaweedFS) and NATS JetStream, on 127.0.0.1.

The first test that asks for a server starts all five through scripts/servers/distributed.sh (idempotent:
servers already running are reused) in .work/services (``MAIF_TEST_SERVICES_DIR`` overrides). At the end of
the session they are stopped by PID, if a test session started them and no other session still uses them
(``MAIF_TEST_SERVICES_KEEP=1`` keeps them running). A server that cannot be installed or started fails the
tests with the script's message saying what is missing; nothing is skipped.

Fixtures (all synchronous, plain values; drive the async clients with ``asyncio.run``):

- ``services_env`` (session) -> dict[str, str]: MAIF_STORAGE_POSTGRES_URL, MAIF_STORAGE_REDIS_URL,
  MAIF_STORAGE_S3_ENDPOINT, MAIF_STORAGE_S3_BUCKET, MAIF_STORAGE_KAFKA_BROKERS, MAIF_STORAGE_NATS_URL,
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_DEFAULT_REGION, MAIF_SERVICES_POSTGRES_ADMIN_URL, MAIF_SERVICES_STATE_DIR. While the session runs,
  the three AWS_* values are also set in ``os.environ`` (the standard AWS credential chain); the
  MAIF_STORAGE_* values are not, so the rest of the suite keeps its embedded stores.
- ``postgres_url`` (session) -> str: the shared ``maif`` database, as the unprivileged ``maif`` user.
- ``postgres_admin_url`` (session) -> str: the superuser on the ``postgres`` database.
- ``fresh_postgres_url`` -> str: a new database for this test (owner ``maif``, with pgvector), dropped after.
- ``s3_settings`` (session) -> S3Settings: endpoint, access_key_id, secret_access_key, region, bucket;
  ``.client_kwargs()`` for aiobotocore ``create_client("s3", ...)``.
- ``fresh_s3_bucket`` -> str: a new bucket for this test, emptied and deleted after.
- ``redis_url`` (session) -> str;  ``fresh_redis_prefix`` -> str: a unique key prefix, its keys deleted after.
- ``private_servers`` -> factory ``(*servers) -> ServerSet``: a separate set on free ports in its own state
  directory, for tests that kill (``.kill(server)``, SIGKILL) and restart (``.start(server)``) servers;
  stopped and removed after the test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from distributed_servers import (
    SERVERS,
    S3Settings,
    ServerSet,
    ServersUnavailableError,
    SharedServers,
    fresh_bucket,
    fresh_database,
    fresh_key_prefix,
    private_server_set,
    services_state_dir,
)
from serve_nodes import oidc_issuer_running

STATE_DIR = services_state_dir()
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def services_env() -> Iterator[dict[str, str]]:
    shared = SharedServers(STATE_DIR)
    try:
        env = shared.acquire()
    except ServersUnavailableError as error:
        failure = str(error)
    else:
        failure = ""
    if failure:
        pytest.fail(failure, pytrace=False)  # outside the except: no chained traceback noise
    # the S3 credentials go where the standard AWS chain finds them; MAIF_STORAGE_* stay out of os.environ,
    # since MAIF's config would apply them to every store the rest of the suite opens
    saved = {key: os.environ.get(key) for key in AWS_KEYS}
    os.environ.update({key: env[key] for key in AWS_KEYS})
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shared.release(keep=os.environ.get("MAIF_TEST_SERVICES_KEEP") == "1")


@pytest.fixture(scope="session")
def postgres_url(services_env: dict[str, str]) -> str:
    return services_env["MAIF_STORAGE_POSTGRES_URL"]


@pytest.fixture(scope="session")
def postgres_admin_url(services_env: dict[str, str]) -> str:
    return services_env["MAIF_SERVICES_POSTGRES_ADMIN_URL"]


@pytest.fixture
def fresh_postgres_url(postgres_admin_url: str, postgres_url: str) -> Iterator[str]:
    with fresh_database(postgres_admin_url, postgres_url) as url:
        yield url


@pytest.fixture(scope="session")
def s3_settings(services_env: dict[str, str]) -> S3Settings:
    return S3Settings.from_env(services_env)


@pytest.fixture
def fresh_s3_bucket(s3_settings: S3Settings) -> Iterator[str]:
    with fresh_bucket(s3_settings) as bucket:
        yield bucket


@pytest.fixture(scope="session")
def redis_url(services_env: dict[str, str]) -> str:
    return services_env["MAIF_STORAGE_REDIS_URL"]


@pytest.fixture
def fresh_redis_prefix(redis_url: str) -> Iterator[str]:
    with fresh_key_prefix(redis_url) as prefix:
        yield prefix


@pytest.fixture
def private_servers() -> Iterator[Callable[..., ServerSet]]:
    with contextlib.ExitStack() as stack:

        def make(*servers: str) -> ServerSet:
            try:
                return stack.enter_context(private_server_set(servers or SERVERS))
            except ServersUnavailableError as error:
                failure = str(error)
            pytest.fail(failure, pytrace=False)

        yield make


@pytest.fixture(scope="session")
def oidc_issuer() -> Iterator[Any]:
    """The real OIDC issuer the `maif serve` nodes of these tests trust."""
    yield from oidc_issuer_running()
