"""Cluster chaos campaign (issue 11): `maif worker` processes SIGKILLed at random and the NATS broker
SIGKILLed and restarted, while tasks flow; then every accepted task must have its result stored exactly once.

    .venv/bin/python scripts/cluster_chaos.py [--kills 100] [--broker-restarts 10] [--workers 3]
        [--seed 1] [--summary benchmarks/results/cluster_chaos.json]

Servers: the shared PostgreSQL and SeaweedFS of scripts/services (started if needed; a fresh database and
bucket for the run, dropped after) and a private NATS JetStream of its own (so it can be killed). Workers:
tests/distributed/worker_nodes.py's launcher (`python -m maif worker --handlers worker_handlers`), each
with its own data_dir and node id on the shared store; a killed worker is restarted at once with the same
directory, as a supervisor would. Tasks: ``test_work`` (sleeps 20 ms, one result block), published in
batches whenever the queue runs low (a publish during a broker outage waits and retries: an accepted task
is one the broker acknowledged).

Schedule (from ``--seed``): every 0.3-1.2 s, kill a random ready worker (SIGKILL, mid-task when it holds
any); every ``kills / broker_restarts`` kills, SIGKILL NATS and start it again. When both counts are
reached, publishing stops, the workers drain the queue, and the campaign checks, from PostgreSQL (what
every node sees): ``lost`` = accepted tasks without a result block, ``duplicated`` = conflicting second
versions of a result ever applied (``maif.conflicts``, ADR 0070; signature blocks included),
``dead_lettered`` = dead letters. All three must be 0. Every stored result must verify, read through a store
node of its own, with the public keys of the campaign's workers (``unsigned`` = those that do not; ADR
0085). Re-executions (a task started more than once: redelivered after a kill) are counted, not errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
sys.path.insert(0, str(ROOT / "src"))

from distributed_servers import (  # noqa: E402
    S3Settings,
    SharedServers,
    fresh_bucket,
    fresh_database,
    private_server_set,
    services_state_dir,
)
from worker_nodes import WorkerCluster, work_tasks  # noqa: E402

from maif.agents.provenance import WORKER_SIGNATURE_INFIX  # noqa: E402

SUMMARY = ROOT / "benchmarks" / "results" / "cluster_chaos.json"
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
DELAY = {"MAIF_TEST_WORK_DELAY_S": "0.02"}
LOW_WATER = 300
BATCH = 600


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--broker-restarts", type=int, default=10)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    options = parser.parse_args()
    shared = SharedServers(services_state_dir())
    env = shared.acquire()
    try:
        os.environ.update({key: env[key] for key in AWS_KEYS})
        admin_url = env["MAIF_SERVICES_POSTGRES_ADMIN_URL"]
        with fresh_database(admin_url, env["MAIF_STORAGE_POSTGRES_URL"]) as pg, \
                fresh_bucket(S3Settings.from_env(env)) as bucket, private_server_set(("nats",)) as nats, \
                tempfile.TemporaryDirectory(prefix="maif-chaos-") as directory:
            cluster = WorkerCluster(Path(directory), pg, env["MAIF_STORAGE_S3_ENDPOINT"], bucket,
                                    nats.env()["MAIF_STORAGE_NATS_URL"],
                                    agent={"max_retries": 20, "task_ack_wait_s": 2})
            try:
                summary = campaign(cluster, nats, options)
            finally:
                cluster.stop_all()
    finally:
        shared.release()
    options.summary.parent.mkdir(parents=True, exist_ok=True)
    options.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["passed"] else 1


def campaign(cluster: WorkerCluster, nats: object, options: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(options.seed)  # noqa: S311 - a reproducible schedule, not a secret
    started_at = time.monotonic()
    workers = {f"w{index}": cluster.start(f"w{index}", agents=2, env=DELAY)
               for index in range(options.workers)}
    accepted: list[str] = []
    kills = restarts = kills_mid_task = unexpected_exits = 0
    restart_every = max(1, options.kills // max(1, options.broker_restarts))
    while kills < options.kills or restarts < options.broker_restarts:
        if cluster.stats()["queue_depth"] < LOW_WATER:
            batch = work_tasks(BATCH, prefix=f"c{len(accepted)}-")
            cluster.publish(batch)
            accepted += [task.task_id for task in batch]
        time.sleep(rng.uniform(0.3, 1.2))
        ready = [name for name, process in workers.items()
                 if process.alive and "pulling from" in process.output()]
        if kills < options.kills and ready:
            name = rng.choice(ready)
            holding = any(beat["worker_id"] == name and beat["in_flight"] > 0
                          for beat in cluster.stats()["per_worker"])
            workers[name].kill()
            kills += 1
            kills_mid_task += holding
            workers[name] = cluster.start(name, agents=2, env=DELAY, wait=False)
        if restarts < options.broker_restarts and (kills % restart_every == 0 or kills >= options.kills):
            nats.kill("nats")  # type: ignore[attr-defined]
            nats.start("nats")  # type: ignore[attr-defined]
            restarts += 1
        for name, process in list(workers.items()):  # one that died on its own is a finding: counted
            if not process.alive:
                unexpected_exits += 1
                print(f"worker {name} exited {process.popen.returncode}:\n{process.output()[-2000:]}")
                workers[name] = cluster.start(name, agents=2, env=DELAY, wait=False)
    chaos_s = time.monotonic() - started_at
    cluster.wait_until(lambda: cluster.stats()["queue_depth"] == 0, 600, "the queue drained", poll_s=1.0)
    stored = cluster.stored_results()
    lost = [task_id for task_id in accepted if cluster.result_id(task_id) not in stored]
    runs: dict[str, int] = {}
    for task_id, _ in cluster.started():
        runs[task_id] = runs.get(task_id, 0) + 1
    stats = cluster.stats()
    keys = [cluster.public_key(name) for name in workers]
    signers = cluster.verify([cluster.result_id(task_id) for task_id in accepted if cluster.result_id(task_id)
                              in stored], keys)
    unsigned = {block_id: answer for block_id, answer in signers.items() if answer.startswith("refused")}
    summary: dict[str, object] = {
        "campaign": "cluster_chaos",
        "seed": options.seed,
        "workers": options.workers,
        "agents_per_worker": 2,
        "task": "test_work (20 ms sleep standing for a model call, one result block)",
        "worker_kills": kills,
        "worker_kills_while_holding_tasks": kills_mid_task,
        "broker_restarts": restarts,
        "worker_exits_not_caused_by_the_campaign": unexpected_exits,
        "tasks_accepted": len(accepted),
        "results_stored": sum(1 for task_id in accepted if cluster.result_id(task_id) in stored),
        "lost": len(lost),
        "duplicated": cluster.conflicts(),
        "dead_lettered": stats["dead_letters"],
        "unsigned": len(unsigned),
        "results_signed_by_two_workers": sum(1 for n in signatures_per_block(stored).values() if n > 1),
        "tasks_run_more_than_once": sum(1 for count in runs.values() if count > 1),
        "chaos_seconds": round(chaos_s, 1),
        "total_seconds": round(time.monotonic() - started_at, 1),
        "lost_sample": lost[:20],
        "unsigned_sample": dict(list(unsigned.items())[:5]),
    }
    summary["passed"] = (summary["lost"] == summary["duplicated"] == summary["dead_lettered"]
                         == summary["unsigned"] == 0 and unexpected_exits == 0)
    return summary


def signatures_per_block(stored: dict[str, int]) -> dict[str, int]:
    """Block id -> its worker signature blocks among the stored ids (one per signing key)."""
    counts: dict[str, int] = {}
    for stored_id in stored:
        signed, infix, _ = stored_id.rpartition(WORKER_SIGNATURE_INFIX)
        if infix:
            counts[signed] = counts.get(signed, 0) + 1
    return counts


if __name__ == "__main__":
    sys.exit(main())
