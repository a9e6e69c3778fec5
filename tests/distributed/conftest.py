"""Fixtures for the distributed tests: real PostgreSQL + pgvector, SeaweedFS (S3) and Redis on 127.0.0.1.

The first test that asks for a server starts all three through scripts/servers/distributed.sh (idempotent:
servers already running are reused) in .work/services (``MAIF_TEST_SERVICES_DIR`` overrides). At the end of
the session they are stopped by PID, if a test session started them and no other session still uses them
(``MAIF_TEST_SERVICES_KEEP=1`` keeps them running). A server that cannot be installed or started fails the
tests with the script's message saying what is missing; nothing is skipped.

Fixtures (all synchronous, plain values; drive the async clients with ``asyncio.run``):

- ``services_env`` (session) -> dict[str, str]: MAIF_STORAGE_POSTGRES_URL, MAIF_STORAGE_REDIS_URL,
  MAIF_STORAGE_S3_ENDPOINT, MAIF_STORAGE_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
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

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from distributed_servers import (
    DEFAULT_STATE_DIR,
    SERVERS,
    S3Settings,
    ServerSet,
    ServersUnavailableError,
    SharedServers,
    free_ports,
    fresh_bucket,
    fresh_database,
    fresh_key_prefix,
)

STATE_DIR = Path(os.environ.get("MAIF_TEST_SERVICES_DIR") or DEFAULT_STATE_DIR)
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
    made: list[ServerSet] = []
    root = STATE_DIR.parent / "services-private"

    def make(*servers: str) -> ServerSet:
        wanted = servers or SERVERS
        root.mkdir(parents=True, exist_ok=True)
        state = Path(tempfile.mkdtemp(prefix="set-", dir=root))
        server_set = ServerSet(state, servers=wanted, ports=free_ports(wanted), pkgs_dir=STATE_DIR / "pkgs")
        made.append(server_set)
        try:
            server_set.start()
        except ServersUnavailableError as error:
            failure = str(error)
        else:
            return server_set
        pytest.fail(failure, pytrace=False)

    yield make
    for server_set in made:
        server_set.stop()
        shutil.rmtree(server_set.state_dir, ignore_errors=True)
