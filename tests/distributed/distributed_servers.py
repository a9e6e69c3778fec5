"""Real PostgreSQL + pgvector, SeaweedFS (S3) and Redis for the distributed tests, and isolation on them.

The servers are started and stopped only through scripts/servers/distributed.sh (see its header for ports,
state and credentials). This module drives it:

- ``SharedServers``: the session's servers in the shared state directory (default .work/services,
  ``MAIF_TEST_SERVICES_DIR`` overrides). Concurrent pytest sessions share them: each holds a lease while it
  runs, and the last one to leave stops the servers that a test session started, by their recorded PIDs,
  never servers a person started by hand. ``MAIF_TEST_SERVICES_KEEP=1`` keeps them running (faster reruns).
- ``ServerSet``: one set of servers under one state directory; also a private set on free ports for tests
  that kill and restart servers (the ``private_servers`` fixture), so they never disturb the shared ones.
- ``fresh_database``, ``fresh_bucket``, ``fresh_key_prefix``: a unique database (with pgvector), bucket or
  Redis key prefix for one test, removed afterwards.

The conftest turns these into fixtures. Everything here is synchronous (async clients run under
``asyncio.run``), like the conformance suite, so fixtures hand out plain values.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "servers" / "distributed.sh"
DEFAULT_STATE_DIR = REPO / ".work" / "services"
SERVERS = ("postgres", "seaweedfs", "redis", "tansu", "nats")
# A cold start (installs included) takes ~10 s here; the bound leaves room for a loaded 2-core machine.
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 120
# Ports the servers use, by script variable; SeaweedFS's also need port + 10000 (gRPC) free.
PORT_KEYS = {
    "postgres": ("MAIF_PG_PORT",),
    "seaweedfs": ("MAIF_S3_PORT", "MAIF_WEED_MASTER_PORT", "MAIF_WEED_VOLUME_PORT", "MAIF_WEED_FILER_PORT"),
    "redis": ("MAIF_REDIS_PORT",),
    "tansu": ("MAIF_KAFKA_PORT",),
    "nats": ("MAIF_NATS_PORT", "MAIF_NATS_MONITOR_PORT"),
}


class ServersUnavailableError(RuntimeError):
    """The servers could not be installed or started; the message says what is missing."""


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 server is and the credentials it accepts (the AWS_* values of ``distributed.sh env``)."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    bucket: str  # the default bucket (MAIF_STORAGE_S3_BUCKET); tests that write use fresh_s3_bucket

    @classmethod
    def from_env(cls, env: dict[str, str]) -> S3Settings:
        return cls(
            endpoint=env["MAIF_STORAGE_S3_ENDPOINT"],
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region=env["AWS_DEFAULT_REGION"],
            bucket=env["MAIF_STORAGE_S3_BUCKET"],
        )

    def client_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Arguments for aiobotocore ``session.create_client("s3", **kwargs)``: path-style addressing."""
        from botocore.config import Config

        kwargs: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "region_name": self.region,
            "config": Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}
            ),
        }
        kwargs.update(overrides)
        return kwargs


def parse_env(text: str) -> dict[str, str]:
    """``export KEY=VALUE`` lines (the output of ``distributed.sh env``) as a dict."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            env[key] = value
    return env


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


class ServerSet:
    """The servers of one state directory, driven through scripts/servers/distributed.sh."""

    def __init__(
        self,
        state_dir: Path,
        *,
        servers: Sequence[str] = SERVERS,
        ports: dict[str, int] | None = None,
        pkgs_dir: Path | None = None,
    ) -> None:
        unknown = set(servers) - set(SERVERS)
        assert not unknown, f"unknown servers {sorted(unknown)}"
        self.state_dir = Path(state_dir)
        self.servers = tuple(servers)
        self.ports = dict(ports or {})
        self.pkgs_dir = pkgs_dir

    def _run(
        self, command: str, servers: Sequence[str] | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["MAIF_SERVICES"] = " ".join(servers or self.servers)
        env.update({key: str(port) for key, port in self.ports.items()})
        if self.pkgs_dir is not None:
            env["MAIF_SERVICES_PKGS"] = str(self.pkgs_dir)
        try:
            return subprocess.run(
                ["bash", str(SCRIPT), command, str(self.state_dir)],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ServersUnavailableError(
                f"{SCRIPT.relative_to(REPO)} {command} {self.state_dir} did not finish in {timeout:.0f}s:\n"
                f"{error.stderr or ''}"
            ) from error

    def start(self, *servers: str) -> dict[str, tuple[str, int]]:
        """Start (idempotently); ``{server: ("started" | "running", pid)}``."""
        result = self._run("start", servers, START_TIMEOUT_S)
        if result.returncode != 0:
            raise ServersUnavailableError(
                f"the distributed test servers did not start "
                f"({SCRIPT.relative_to(REPO)} start {self.state_dir}, exit {result.returncode}):\n"
                f"{result.stderr.strip()}"
            )
        outcome: dict[str, tuple[str, int]] = {}
        for line in result.stdout.splitlines():
            words = line.split()
            if len(words) == 3 and words[0] in SERVERS and words[1] in ("started", "running"):
                outcome[words[0]] = (words[1], int(words[2]))
        return outcome

    def stop(self, *servers: str) -> str:
        """Stop the servers (all of this set by default) by their recorded PIDs; the script's report."""
        result = self._run("stop", servers, STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise RuntimeError(f"stopping {servers or self.servers} failed:\n{result.stderr}")
        return result.stdout

    def status(self) -> dict[str, str]:
        """``{server: "up" | "down" | "not-ready"}``."""
        result = self._run("status", None, 60)
        return {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if line.strip()}

    def env(self) -> dict[str, str]:
        """The ``distributed.sh env`` values: MAIF_STORAGE_*, AWS_*, MAIF_SERVICES_*."""
        result = self._run("env", None, 60)
        if result.returncode != 0:
            raise ServersUnavailableError(result.stderr.strip())
        return parse_env(result.stdout)

    def pid(self, server: str) -> int | None:
        """The PID recorded for ``server`` (None when it is not running)."""
        try:
            pid = int((self.state_dir / server / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def kill(self, server: str) -> int:
        """SIGKILL the server's recorded PID and its child processes (a crash); wait until all are gone."""
        pid = self.pid(server)
        assert pid is not None, f"{server} is not running in {self.state_dir}"
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(victim) for victim in victims):
            assert time.monotonic() < deadline, f"{server} processes {victims} survived SIGKILL for 30 s"
            time.sleep(0.05)
        return pid


def services_state_dir() -> Path:
    """The shared servers' state directory (``MAIF_TEST_SERVICES_DIR``, default ``.work/services``)."""
    return Path(os.environ.get("MAIF_TEST_SERVICES_DIR") or DEFAULT_STATE_DIR)


@contextlib.contextmanager
def private_server_set(servers: Sequence[str] = SERVERS) -> Iterator[ServerSet]:
    """Servers of their own (free ports, a temporary state directory beside the shared one, the shared
    package cache), started; stopped by PID and removed afterwards. Tests that kill servers use these.
    ServersUnavailableError when they cannot start."""
    shared = services_state_dir()
    root = shared.parent / "services-private"
    root.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="set-", dir=root))
    server_set = ServerSet(state, servers=servers, ports=free_ports(servers), pkgs_dir=shared / "pkgs")
    try:
        server_set.start()
        yield server_set
    finally:
        server_set.stop()
        shutil.rmtree(state, ignore_errors=True)


def free_ports(servers: Sequence[str]) -> dict[str, int]:
    """Ports for a private server set, below the ephemeral range; SeaweedFS's with port + 10000 free too."""
    chosen: dict[str, int] = {}
    taken: set[int] = set()
    rng = secrets.SystemRandom()
    for server in servers:
        for key in PORT_KEYS[server]:
            for _ in range(200):
                port = rng.randrange(20000, 22700)
                wanted = [port, port + 10000] if server == "seaweedfs" else [port]
                if taken.isdisjoint(wanted) and all(_port_free(p) for p in wanted):
                    break
            else:
                raise ServersUnavailableError("no free port pair found for a private server set")
            taken.update(wanted)
            chosen[key] = port
    return chosen


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class SharedServers:
    """The servers of the shared state directory, leased by every pytest session that uses them.

    ``acquire`` starts them (idempotently) and takes a lease; ``release`` drops the lease, and when no live
    session holds one, stops the servers that a test session started (recorded in ``test-started``), by
    PID. Servers already running when a session arrived and not started by tests are left alone.
    """

    def __init__(self, state_dir: Path) -> None:
        self.servers = ServerSet(state_dir)
        self.state_dir = Path(state_dir)
        self.lease = self.state_dir / "test-leases" / f"{os.getpid()}-{_process_start_time(os.getpid())}"
        self.started_file = self.state_dir / "test-started"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "test-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _started_by_tests(self) -> dict[str, int]:
        try:
            lines = self.started_file.read_text().splitlines()
        except FileNotFoundError:
            return {}
        return {line.split()[0]: int(line.split()[1]) for line in lines if len(line.split()) == 2}

    def acquire(self) -> dict[str, str]:
        with self._locked():
            outcome = self.servers.start()
            started = self._started_by_tests()
            started.update({server: pid for server, (how, pid) in outcome.items() if how == "started"})
            self.started_file.write_text("".join(f"{server} {pid}\n" for server, pid in started.items()))
            self.lease.parent.mkdir(exist_ok=True)
            self.lease.write_text(f"{os.getpid()}\n")
            return self.servers.env()

    def release(self, keep: bool = False) -> list[str]:
        """Drop this session's lease; the servers stopped (empty while other sessions still run)."""
        with self._locked():
            self.lease.unlink(missing_ok=True)
            for other in self.lease.parent.glob("*-*"):
                pid, _, start_time = other.name.partition("-")
                if not pid.isdigit() or _process_start_time(int(pid)) != start_time:
                    other.unlink(missing_ok=True)  # its session died without releasing
            if keep or any(self.lease.parent.glob("*-*")):
                return []
            stopped = []
            for server, pid in self._started_by_tests().items():
                if self.servers.pid(server) == pid:  # still the process a test session started
                    self.servers.stop(server)
                    stopped.append(server)
            self.started_file.unlink(missing_ok=True)
            return stopped


# ---- per-test isolation --------------------------------------------------------------------------


def unique_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.contextmanager
def fresh_database(admin_url: str, owner_url: str) -> Iterator[str]:
    """A new database owned by ``owner_url``'s user, with the pgvector extension; dropped afterwards.

    Yields ``owner_url`` pointed at it. The extension is created by the superuser (pgvector is not a
    trusted extension), as a managed PostgreSQL service would have it.
    """
    import asyncpg

    name = unique_name("maif_t_")
    owner = urlsplit(owner_url).username
    assert owner, "the owner URL names no user"

    async def create() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        finally:
            await admin.close()
        inside = await asyncpg.connect(with_database(admin_url, name))
        try:
            await inside.execute("CREATE EXTENSION vector")
        finally:
            await inside.close()

    async def drop() -> None:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield with_database(owner_url, name)
    finally:
        asyncio.run(drop())


async def empty_and_delete_bucket(client: Any, bucket: str) -> None:
    """Delete every object and unfinished multipart upload of ``bucket``, then the bucket."""
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            await client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    for upload in uploads.get("Uploads", []):
        await client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    await client.delete_bucket(Bucket=bucket)


@contextlib.contextmanager
def fresh_bucket(s3: S3Settings) -> Iterator[str]:
    """A new, empty bucket; emptied and deleted afterwards."""
    from aiobotocore.session import get_session

    name = unique_name("maif-t-")

    async def create() -> None:
        async with get_session().create_client("s3", **s3.client_kwargs()) as client:
            await client.create_bucket(Bucket=name)

    async def delete() -> None:
        async with get_session().create_client("s3", **s3.client_kwargs()) as client:
            await empty_and_delete_bucket(client, name)

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(delete())


@contextlib.contextmanager
def fresh_key_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix (``maif-t-<hex>:``); every key under it is deleted afterwards."""
    import redis.asyncio as redis

    prefix = unique_name("maif-t-") + ":"

    async def delete() -> None:
        client = redis.from_url(redis_url)
        try:
            batch = []
            async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.unlink(*batch)
                    batch.clear()
            if batch:
                await client.unlink(*batch)
        finally:
            await client.aclose()

    try:
        yield prefix
    finally:
        asyncio.run(delete())
