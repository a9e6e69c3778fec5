"""`maif worker` processes on one shared store (PostgreSQL + S3) and one NATS, for tests/distributed/
test_workers.py and scripts/cluster_chaos.py.

A :class:`WorkerCluster` names a fresh stream on the broker and writes each worker its own config
(data_dir, node id, signing key file beside its data_dir); :meth:`WorkerCluster.start` runs
``python -m maif worker`` with the test handlers (worker_handlers.py) and waits for its ready line. The
queue and the store are read with the library: :meth:`publish`, :meth:`stats`, :meth:`dead_letters`,
:meth:`verify` (the worker signatures, read through a store node of our own), and
:func:`stored_results` / :func:`conflicts` straight from PostgreSQL (what every node sees).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from maif.agents.provenance import verify_worker_result
from maif.agents.queue import TaskQueue, cluster_stats
from maif.agents.tasks import AgentTask
from maif.config import AgentConfig
from maif.errors import MAIFError
from maif.format.signing import load_or_create_seed_key

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 60.0


@dataclass
class WorkerProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while "pulling from" not in self.output():
            if self.popen.poll() is not None:
                raise AssertionError(f"worker {self.name} exited {self.popen.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready after {timeout_s} s:\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.send_signal(signal.SIGUSR1)  # the worker prints what it waits for
            time.sleep(2)
            raise AssertionError(f"worker {self.name} did not stop:\n{self.output()[-8000:]}") from None

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


def terminate_all(processes: Iterable[WorkerProcess]) -> list[int]:
    """SIGTERM to every process at once, then their exit codes (they drain in parallel)."""
    processes = list(processes)
    for process in processes:
        process.popen.send_signal(signal.SIGTERM)
    return [process.wait_exit() for process in processes]


@dataclass
class WorkerCluster:
    directory: Path
    postgres_url: str
    s3_endpoint: str
    s3_bucket: str
    nats_url: str
    agent: dict[str, Any] = field(default_factory=dict)
    stream: str = field(default_factory=lambda: "T" + uuid.uuid4().hex[:12].upper())
    processes: list[WorkerProcess] = field(default_factory=list)
    handlers: str = "worker_handlers"
    python_path: list[Path] = field(default_factory=list)

    @property
    def agent_config(self) -> AgentConfig:
        return AgentConfig(**{"task_stream": self.stream, **self.agent})

    def start(self, name: str, *, agents: int = 1, env: dict[str, str] | None = None,
              wait: bool = True, args: tuple[str, ...] = ()) -> WorkerProcess:
        node = self.directory / name
        node.mkdir(parents=True, exist_ok=True)
        config = node / "worker.json"
        config.write_text(json.dumps({
            "storage": {"data_dir": str(node / "data"), "node_id": self.node_id(name), "tier_interval_s": 0},
            "agent": {"task_stream": self.stream, "worker_key_file": str(self.key_file(name)), **self.agent},
        }))
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(HERE), *map(str, self.python_path)]),
            "MAIF_STORAGE_POSTGRES_URL": self.postgres_url,
            "MAIF_STORAGE_S3_ENDPOINT": self.s3_endpoint,
            "MAIF_STORAGE_S3_BUCKET": self.s3_bucket,
            "MAIF_STORAGE_NATS_URL": self.nats_url,
            "MAIF_TEST_STARTED_DIR": str(self.started_dir),
            **(env or {}),
        }
        log = node / f"worker-{len(self.processes)}.log"
        with log.open("wb") as output:
            popen = subprocess.Popen(
                [sys.executable, "-m", "maif", "worker", "--config", str(config), "--agents", str(agents),
                 "--worker-id", name, "--handlers", self.handlers, *args],
                stdout=output, stderr=subprocess.STDOUT, env=environment, cwd=node,
            )
        process = WorkerProcess(name, popen, log)
        self.processes.append(process)
        if wait:
            process.wait_ready()
        return process

    @property
    def started_dir(self) -> Path:
        path = self.directory / "started"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def started(self) -> list[tuple[str, int]]:
        """(task id, worker pid) for every time a test_work task began running."""
        pairs = []
        for marker in self.started_dir.iterdir():
            task_id, _, pid = marker.name.rpartition(".")
            pairs.append((task_id, int(pid)))
        return pairs

    def stop_all(self) -> None:
        for process in self.processes:
            if process.alive:
                process.kill()

    # ---- the queue and the store, from outside --------------------------------------------------------
    async def queue(self) -> TaskQueue:
        return await TaskQueue.connect(self.nats_url, self.agent_config)

    def publish(self, tasks: Iterable[AgentTask]) -> int:
        async def run() -> int:
            queue = await self.queue()
            try:
                return sum([await queue.publish(task) for task in tasks])
            finally:
                await queue.close()

        return asyncio.run(run())

    def publish_raw(self, messages: Iterable[bytes]) -> None:
        async def run() -> None:
            queue = await self.queue()
            try:
                for message in messages:
                    await queue._js.publish(queue.task_subject, message)
            finally:
                await queue.close()

        asyncio.run(run())

    def stats(self) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            queue = await self.queue()
            try:
                return await cluster_stats(queue)
            finally:
                await queue.close()

        return asyncio.run(run())

    def dead_letters(self) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            queue = await self.queue()
            try:
                return await queue.dead_letters(1000)
            finally:
                await queue.close()

        return asyncio.run(run())

    def node_id(self, name: str) -> str:
        """Unique to this cluster: clusters of one module share a store, and a node's log sequence
        numbers are counted per node id."""
        return f"{name}-{self.stream}"

    def delete_streams(self) -> None:
        """Remove this cluster's streams and heartbeat bucket from the broker (a shared one keeps
        nothing of a test)."""
        async def run() -> None:
            queue = await self.queue()
            try:
                for stream in (queue.stream, queue.dead_stream, queue.exhausted_stream,
                               f"KV_{queue.stream}_WORKERS"):
                    await queue._js.delete_stream(stream)
            finally:
                await queue.close()

        asyncio.run(run())

    def key_file(self, name: str) -> Path:
        return self.directory / name / "worker.key"

    def public_key(self, name: str) -> Ed25519PublicKey:
        """The public key of worker ``name`` (its key file exists once it has started)."""
        return load_or_create_seed_key(self.key_file(name), "worker key").public_key()

    def verify(self, block_ids: Iterable[str], trusted: list[Ed25519PublicKey]) -> dict[str, str]:
        """Block id -> the signer's key id, or ``"refused: <reason>"``, read through a store node of
        our own (another node than any worker) with :func:`verify_worker_result`."""
        from maif.storage.engine import create_maif_storage

        async def run() -> dict[str, str]:
            storage = await create_maif_storage({
                "data_dir": str(self.directory / "verifier"), "node_id": self.node_id("verifier"),
                "tier_interval_s": 0,
                "postgres_url": self.postgres_url, "s3_endpoint": self.s3_endpoint,
                "s3_bucket": self.s3_bucket})
            concurrent = asyncio.Semaphore(32)

            async def answer(block_id: str) -> str:
                async with concurrent:
                    try:
                        return (await verify_worker_result(storage, block_id, trusted)).signer_key_id
                    except MAIFError as error:
                        return f"refused: {type(error).__name__}: {error.message}"

            try:
                ids = list(block_ids)
                return dict(zip(ids, await asyncio.gather(*map(answer, ids)), strict=True))
            finally:
                await storage.close()

        return asyncio.run(run())

    def result_id(self, task_id: str) -> str:
        return f"{self.stream}:{task_id}:0"

    def stored_results(self) -> dict[str, int]:
        """Result block id -> rows in the shared index (one each, or the store lost or doubled one)."""
        return asyncio.run(_query_counts(self.postgres_url, f"{self.stream}:%"))

    def conflicts(self) -> int:
        return asyncio.run(_conflict_count(self.postgres_url, f"{self.stream}:%"))

    def wait_until(self, predicate: Any, timeout_s: float, what: str, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}:\n{p.output()[-3000:]}" for p in self.processes)
                raise AssertionError(f"not true after {timeout_s} s: {what}\n{logs}")
            time.sleep(poll_s)

    def wait_for_results(self, task_ids: Iterable[str], timeout_s: float) -> None:
        wanted = {self.result_id(task_id) for task_id in task_ids}
        missing: set[str] = set()

        def all_stored() -> bool:
            nonlocal missing
            missing = wanted - set(self.stored_results())
            return not missing

        try:
            self.wait_until(all_stored, timeout_s, f"{len(wanted)} results stored")
        except AssertionError as error:  # say which are missing and what the queue holds (diagnosis)
            try:
                queue: Any = self.stats()
            except Exception as stats_error:  # the broker may be the problem: keep the cause
                queue = f"unavailable ({stats_error!r})"
            raise AssertionError(f"{error}\nmissing: {sorted(missing)}\nqueue: {queue}\n"
                                 f"started: {self.started()}") from None


async def _query_counts(url: str, pattern: str) -> dict[str, int]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT block_id, count(*) AS n FROM maif.blocks WHERE block_id LIKE $1 GROUP BY block_id",
            pattern)
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await connection.close()
    return {row["block_id"]: int(row["n"]) for row in rows}


async def _conflict_count(url: str, pattern: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM maif.conflicts WHERE block_id LIKE $1",
                                             pattern))
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await connection.close()


def work_tasks(count: int, prefix: str = "w", seconds: float | None = None) -> list[AgentTask]:
    data: dict[str, Any] = {} if seconds is None else {"seconds": seconds}
    return [AgentTask(f"{prefix}{index}", "test_work", dict(data)) for index in range(count)]
