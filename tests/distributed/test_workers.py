"""`maif worker` processes sharing one task queue (NATS JetStream) and one store (PostgreSQL + S3), all real
(docs/adr/0074-distributed-agents.md): tasks are shared out by pulling, a slow worker takes fewer; a worker
SIGKILLed mid-task has its task delivered again and the result stored exactly once; the broker SIGKILLed
and restarted mid-run loses no accepted task and doubles no result; SIGTERM hands back what has not
started and exits 0; a message that is not a valid task, a task that always fails and a task that kills
every worker that runs it all end in the dead-letter stream with their reason, and the worker goes on.
Every stored result and dead-letter record is signed by the key of the worker that stored it and
verifies on another node with that public key, and with no other (docs/adr/0085).

"Stored exactly once" is read from PostgreSQL, which every node sees: the result block's row exists and
no conflicting version of it was ever applied (``maif.conflicts``, ADR 0070). PostgreSQL and S3 are fresh
for this module and shared by its tests, each of which has its own task stream (so its own block ids and
node ids) on the session's NATS, deleted after it; the test that kills the broker has a private one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from distributed_servers import fresh_bucket, fresh_database
from worker_nodes import REPO, WorkerCluster, terminate_all, work_tasks

from maif import limits
from maif.agents.queue import TaskQueue
from maif.agents.tasks import AgentTask
from maif.config import AgentConfig
from maif.errors import QueueFullError
from maif.format.signing import key_id


@pytest.fixture(scope="module")
def worker_store(postgres_admin_url: str, postgres_url: str, s3_settings: Any) -> Iterator[tuple[str, str]]:
    """(PostgreSQL URL, S3 bucket) of this module's shared store."""
    with fresh_database(postgres_admin_url, postgres_url) as url, fresh_bucket(s3_settings) as bucket:
        yield url, bucket


def make_cluster(tmp_path: Path, worker_store: tuple[str, str], s3_settings: Any,
                 nats_url: str) -> WorkerCluster:
    url, bucket = worker_store
    return WorkerCluster(tmp_path, url, s3_settings.endpoint, bucket, nats_url,
                         agent={"max_retries": 1, "task_ack_wait_s": 2, "task_sweep_interval_s": 0.5})


@pytest.fixture
def cluster(tmp_path: Path, worker_store: tuple[str, str], s3_settings: Any,
            services_env: dict[str, str]) -> Iterator[WorkerCluster]:
    made = make_cluster(tmp_path, worker_store, s3_settings, services_env["MAIF_STORAGE_NATS_URL"])
    try:
        yield made
    finally:
        made.stop_all()
        made.delete_streams()


@pytest.fixture
def cluster_with_private_broker(tmp_path: Path, worker_store: tuple[str, str], s3_settings: Any,
                                private_servers: Callable[..., Any]) -> Iterator[WorkerCluster]:
    servers = private_servers("nats")
    made = make_cluster(tmp_path, worker_store, s3_settings, servers.env()["MAIF_STORAGE_NATS_URL"])
    made.servers = servers  # type: ignore[attr-defined]
    try:
        yield made
    finally:
        made.stop_all()


def assert_exactly_once(cluster: WorkerCluster, tasks: list[AgentTask]) -> None:
    stored = cluster.stored_results()
    missing = [task.task_id for task in tasks if cluster.result_id(task.task_id) not in stored]
    assert not missing, f"results lost: {missing}"
    assert cluster.conflicts() == 0, "a task's result was applied twice with different contents"


def test_workers_share_the_queue_and_store_each_result_once(cluster: WorkerCluster) -> None:
    workers = [cluster.start(f"w{index}", agents=2, args=("--metrics-port", "0") if index == 0 else (),
                             wait=False) for index in range(3)]
    for worker in workers:
        worker.wait_ready()
    tasks = work_tasks(90, seconds=0.05)
    assert cluster.publish(tasks) == 90
    assert cluster.publish(tasks[:5]) == 0  # the same task ids again: stored once by the broker
    cluster.wait_for_results([task.task_id for task in tasks], 60)
    cluster.wait_until(lambda: cluster.stats()["totals"]["completed"] >= 90, 10, "heartbeats caught up")
    stats = cluster.stats()
    assert stats["workers"] == 3 and stats["queue_depth"] == 0 and stats["ack_pending"] == 0
    done_by = {beat["worker_id"]: beat["completed"] for beat in stats["per_worker"]}
    assert sum(done_by.values()) == 90 and all(count > 0 for count in done_by.values()), done_by
    assert_exactly_once(cluster, tasks)
    keys = [cluster.public_key(f"w{index}") for index in range(3)]
    signers = cluster.verify([cluster.result_id(task.task_id) for task in tasks], keys)
    assert Counter(signers.values()).keys() == {key_id(key).hex() for key in keys}, signers
    stranger = Ed25519PrivateKey.generate().public_key()
    refused = cluster.verify([cluster.result_id(tasks[0].task_id)], [stranger])
    assert next(iter(refused.values())).startswith("refused: SignatureError"), refused
    port = re.search(r"metrics on http://127.0.0.1:(\d+)/metrics", workers[0].output())
    assert port, workers[0].output()
    def scraped() -> str:
        return httpx.get(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=10).text
    cluster.wait_until(lambda: 'maif_worker_completed_tasks{worker="w2"}' in scraped(), 10, "metrics")
    metrics = scraped()
    assert "maif_queue_depth_tasks 0.0" in metrics and "maif_queue_workers 3.0" in metrics, metrics
    assert terminate_all(workers) == [0, 0, 0]


def test_a_worker_killed_mid_task_has_its_task_redelivered_and_stored_once(cluster: WorkerCluster) -> None:
    victim = cluster.start("victim", agents=1)
    tasks = work_tasks(4, prefix="k", seconds=1.0)
    cluster.publish(tasks)
    cluster.wait_until(lambda: any(pid == victim.popen.pid for _, pid in cluster.started()), 20,
                       "the victim started a task")
    victim.kill()  # SIGKILL mid-task: no ack, no nak
    killed_tasks = {task_id for task_id, pid in cluster.started() if pid == victim.popen.pid}
    survivor = cluster.start("survivor", agents=2)
    cluster.wait_for_results([task.task_id for task in tasks], 40)
    assert_exactly_once(cluster, tasks)
    rerun = {task_id for task_id, pid in cluster.started() if pid == survivor.popen.pid}
    assert killed_tasks & rerun, "the killed worker's task was not delivered again"
    signers = cluster.verify([cluster.result_id(task_id) for task_id in killed_tasks],
                             [cluster.public_key("survivor"), cluster.public_key("victim")])
    assert set(signers.values()) == {key_id(cluster.public_key("survivor")).hex()}, signers
    assert cluster.stats()["dead_letters"] == 0
    assert survivor.terminate() == 0


def test_broker_killed_and_restarted_mid_run_loses_and_doubles_nothing(
        cluster_with_private_broker: WorkerCluster) -> None:
    cluster = cluster_with_private_broker
    workers = [cluster.start(f"w{index}", agents=2, wait=False) for index in range(2)]
    for worker in workers:
        worker.wait_ready()
    tasks = work_tasks(60, prefix="b", seconds=0.1)
    cluster.publish(tasks)
    cluster.wait_until(lambda: len(cluster.stored_results()) >= 10, 30, "some results stored")
    cluster.servers.kill("nats")  # type: ignore[attr-defined]
    cluster.servers.start("nats")  # type: ignore[attr-defined]
    cluster.wait_for_results([task.task_id for task in tasks], 60)
    assert_exactly_once(cluster, tasks)
    cluster.wait_until(lambda: cluster.stats()["queue_depth"] == 0, 20, "every task acknowledged")
    assert all(worker.alive for worker in workers)
    assert terminate_all(workers) == [0, 0]


def test_sigterm_hands_back_unstarted_tasks_finishes_running_ones_and_exits_0(cluster: WorkerCluster) -> None:
    cluster.agent["task_ack_wait_s"] = 30  # a task handed back is delivered again at once, not after this
    worker = cluster.start("draining", agents=1)
    tasks = work_tasks(12, prefix="d", seconds=1.5)
    cluster.publish(tasks[:2])
    cluster.wait_until(lambda: any(pid == worker.popen.pid for _, pid in cluster.started()), 20,
                       "the worker started a task")
    cluster.publish(tasks[2:])  # pulled while the first batch runs: queued in the agent, not started
    cluster.wait_until(lambda: cluster.stats()["pending"] == 0, 10, "the worker pulled every task")
    assert worker.terminate(timeout_s=30) == 0
    started = {task_id for task_id, _ in cluster.started()}
    stored = {block_id.split(":")[1] for block_id in cluster.stored_results()}
    assert started and started <= stored, "a task that had started was not finished before exit"
    assert cluster.stats()["queue_depth"] == len(tasks) - len(stored) > 0
    successor = cluster.start("successor", agents=4)
    cluster.wait_for_results([task.task_id for task in tasks], 15)
    assert_exactly_once(cluster, tasks)
    assert successor.terminate() == 0


def test_poison_messages_are_dead_lettered_with_their_reason(cluster: WorkerCluster) -> None:
    worker = cluster.start("guard", agents=1)
    encode = msgspec.msgpack.encode
    cluster.publish_raw([
        b"\x93not a task",
        encode({"task_id": "schema", "task_type": "test_work"}),
        encode({"task_id": "unknown", "task_type": "format_disk", "input_data": {}}),
        b"\x80" + b"x" * limits.queue_task_bytes_max,
    ])
    cluster.publish([AgentTask("always-fails", "test_fail", {}), AgentTask("fine", "test_work", {})])
    cluster.wait_until(lambda: cluster.stats()["dead_letters"] == 5, 30, "five dead letters")
    reasons = [letter["reason"] for letter in cluster.dead_letters()]
    expected = ["not a task message", "missing required field", "unknown task type 'format_disk'", "exceeds",
                "always fails"]
    assert all(any(fragment in reason for reason in reasons) for fragment in expected), reasons
    record = f"{cluster.stream}:always-fails:0:dead-letter"
    assert record in cluster.stored_results()
    assert cluster.verify([record], [cluster.public_key("guard")]) == {
        record: key_id(cluster.public_key("guard")).hex()}
    cluster.wait_for_results(["fine"], 20)
    assert worker.alive

    cluster.publish([AgentTask("kills-workers", "test_crash", {})])
    restarts = 0

    def buried() -> bool:
        nonlocal restarts, worker
        if not worker.alive:  # killed by the task, as a supervisor would, restart it
            restarts += 1
            worker = cluster.start("guard", agents=1)
        return cluster.stats()["dead_letters"] == 6

    cluster.wait_until(buried, 60, "the killer task dead-lettered", poll_s=0.2)
    assert restarts == 2  # max_retries=1: two attempts, each killed its worker; the third delivery buried it
    assert "without an answer" in cluster.dead_letters()[-1]["reason"]
    assert cluster.stats()["queue_depth"] == 0
    assert worker.terminate() == 0


def test_a_slow_worker_takes_fewer_tasks(cluster: WorkerCluster) -> None:
    cluster.agent["batch_size"] = 1  # one slot each: a worker pulls only when it is free
    fast = cluster.start("fast", agents=1, env={"MAIF_TEST_WORK_DELAY_S": "0.02"}, wait=False)
    slow = cluster.start("slow", agents=1, env={"MAIF_TEST_WORK_DELAY_S": "1.0"}, wait=False)
    fast.wait_ready()
    slow.wait_ready()
    tasks = work_tasks(24, prefix="s")
    cluster.publish(tasks)
    cluster.wait_for_results([task.task_id for task in tasks], 60)
    ran = Counter(pid for _, pid in cluster.started())
    assert ran[slow.popen.pid] * 4 < ran[fast.popen.pid], ran
    assert_exactly_once(cluster, tasks)
    assert terminate_all([fast, slow]) == [0, 0]


def test_a_full_queue_refuses_a_submission_with_a_typed_error(services_env: dict[str, str]) -> None:
    config = AgentConfig(task_stream="FULL" + uuid.uuid4().hex[:8].upper(), task_stream_messages_max=2)

    async def scenario() -> None:
        queue = await TaskQueue.connect(services_env["MAIF_STORAGE_NATS_URL"], config)
        try:
            assert await queue.publish(AgentTask("a", "text_analysis", {}))
            assert await queue.publish(AgentTask("b", "text_analysis", {}))
            with pytest.raises(QueueFullError):
                await queue.publish(AgentTask("c", "text_analysis", {}))
            assert (await queue.stats())["queue_depth"] == 2
        finally:  # the shared broker keeps nothing of this test
            streams = (queue.stream, queue.dead_stream, queue.exhausted_stream, f"KV_{queue.stream}_WORKERS")
            for stream in streams:
                await queue._js.delete_stream(stream)
            await queue.close()

    asyncio.run(scenario())


def test_a_worker_whose_broker_is_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "worker.json"
    storage = {"data_dir": str(tmp_path), "nats_url": "nats://maif:pw@127.0.0.1:9"}
    config.write_text(json.dumps({"storage": storage, "agent": {"task_queue_connect_timeout_s": 1}}))
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    environment = {key: value for key, value in environment.items() if not key.startswith("MAIF_STORAGE_")}
    result = subprocess.run([sys.executable, "-m", "maif", "worker", "--config", str(config)],
                            capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NATS" in lines[0] and "nats_url" in lines[0], result.stderr
    assert "within 1 s" in lines[0], result.stderr
    assert "pw" not in result.stderr
