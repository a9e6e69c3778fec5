"""Agent cluster scaling (issue 11): 1, 2, 4, 8 `maif worker` processes on this machine, 10, 100 and 1000
agents in total, a CPU-bound and an I/O-bound task; one run, JSON in benchmarks/results/cluster_bench.json.

    .venv/bin/python benchmarks/cluster_bench.py [--tasks 3000] [--workers 1,2,4,8] [--agents 10,100,1000]
        [--kinds cpu,io]

- CPU-bound: the built-in ``text_analysis`` handler on a 2 KB text (tokenising, statistics, keywords, an
  embedding), run in the worker's thread pool.
- I/O-bound: ``model_call`` (benchmarks/cluster_handlers.py) awaits one HTTP request to
  benchmarks/model_api_stub.py, a local stub that answers after 20 ms: it stands for a remote model API.
- Every agent runs one task at a time (``batch_size`` 1), so "agents" is the concurrency; a worker holds
  ``agents / workers`` agents. Every task's result is a block in the shared store (PostgreSQL + S3), acked
  to the queue only once applied, exactly as in production.

Per run: the workers are started and ready, then ``--tasks`` tasks are published (concurrently, from this
process) and the clock runs from the first publish until PostgreSQL holds every result. Reported: tasks/s;
speedup and efficiency against one worker with the same agents (``tasks/s(k) / (k * tasks/s(1))``); for the
I/O-bound task the physical limit ``agents / 20 ms`` and the fraction of it reached, and the agent-scaling
efficiency from 10 to 1000 agents (``(tasks/s(1000) / tasks/s(10)) / 100``); and the broker's cost per
task: CPU seconds of the nats-server process (utime + stime from /proc) over the run, per task. This
machine has 2 cores shared by the workers, the broker, PostgreSQL, SeaweedFS and the publisher: more
workers than cores cannot add CPU, which is what the figures show; docs/benchmarks/cluster-model.md models
a cluster of many machines from the measured per-task costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
from worker_nodes import WorkerCluster  # noqa: E402

from maif.agents.tasks import AgentTask  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cluster_bench.json"
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
MODEL_DELAY_S = 0.020
TEXT = ("Agents turn tasks into signed blocks; each block says who made it, from what, when. " * 24)[:2048]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--agents", default="10,100,1000")
    parser.add_argument("--kinds", default="cpu,io", help="cpu, io or both")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args()
    shared = SharedServers(services_state_dir())
    env = shared.acquire()
    stub = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "model_api_stub.py")],
                            stdout=subprocess.PIPE, text=True)
    try:
        model_url = f"http://127.0.0.1:{int(stub.stdout.readline())}/v1/complete"  # type: ignore[union-attr]
        os.environ.update({key: env[key] for key in AWS_KEYS})
        admin_url = env["MAIF_SERVICES_POSTGRES_ADMIN_URL"]
        with fresh_database(admin_url, env["MAIF_STORAGE_POSTGRES_URL"]) as pg, \
                fresh_bucket(S3Settings.from_env(env)) as bucket, private_server_set(("nats",)) as nats:
            runs = []
            for workers in map(int, options.workers.split(",")):
                for agents in map(int, options.agents.split(",")):
                    runs += measure(workers, agents, options.tasks, pg, env, bucket, nats, model_url,
                                    options.kinds.split(","))
    finally:
        stub.kill()
        stub.wait()
        shared.release()
    document = {
        "benchmark": "cluster_bench",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "tasks_per_run": options.tasks,
        "io_task": f"model_call: one HTTP request to a local stub answering after "
                   f"{MODEL_DELAY_S * 1000:g} ms (stands for a remote model API)",
        "cpu_task": "text_analysis (built-in) on a 2 KB text",
        "runs": runs,
        "summary": summarise(runs),
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document["summary"], indent=2))
    return 0


def measure(workers: int, agents: int, count: int, pg: str, env: dict[str, str], bucket: str, nats: Any,
            model_url: str, kinds: list[str]) -> list[dict[str, Any]]:
    import tempfile

    per_worker = max(1, agents // workers)
    with tempfile.TemporaryDirectory(prefix="maif-cluster-bench-") as directory:
        cluster = WorkerCluster(Path(directory), pg, env["MAIF_STORAGE_S3_ENDPOINT"], bucket,
                                nats.env()["MAIF_STORAGE_NATS_URL"], handlers="cluster_handlers",
                                python_path=[ROOT / "benchmarks"],
                                agent={"batch_size": 1, "task_ack_wait_s": 60, "max_retries": 1,
                                       "processing_threads": 2})
        try:
            model = {"MAIF_BENCH_MODEL_URL": model_url}
            processes = [cluster.start(f"w{index}", agents=per_worker, env=model, wait=False)
                         for index in range(workers)]
            for process in processes:
                process.wait_ready(120)
            results = []
            for kind in kinds:
                results.append(run_once(cluster, nats, kind, workers, per_worker * workers, count))
                print(json.dumps(results[-1]), flush=True)
            for process in processes:
                process.terminate()
            return results
        finally:
            cluster.stop_all()


def run_once(cluster: WorkerCluster, nats: Any, kind: str, workers: int, agents: int,
             count: int) -> dict[str, Any]:
    prefix = f"{kind}-"
    if kind == "cpu":
        tasks = [AgentTask(f"{prefix}{n}", "text_analysis", {"text": f"{n} {TEXT}"}) for n in range(count)]
    else:
        tasks = [AgentTask(f"{prefix}{n}", "model_call", {}) for n in range(count)]
    wanted = {cluster.result_id(task.task_id) for task in tasks}
    broker_cpu_before = process_cpu_s(nats.pid("nats"))
    worker_pids = [process.popen.pid for process in cluster.processes if process.alive]
    workers_cpu_before = sum(process_cpu_s(pid) for pid in worker_pids)
    started = time.perf_counter()
    publish_s = asyncio.run(publish_all(cluster, tasks))
    cluster.wait_until(lambda: wanted <= set(cluster.stored_results()), 900, f"{count} {kind} results",
                       poll_s=0.05)
    elapsed = time.perf_counter() - started
    broker_cpu = process_cpu_s(nats.pid("nats")) - broker_cpu_before
    workers_cpu = sum(process_cpu_s(pid) for pid in worker_pids) - workers_cpu_before
    run: dict[str, Any] = {
        "kind": kind, "workers": workers, "agents": agents, "tasks": count,
        "seconds": round(elapsed, 3), "tasks_per_s": round(count / elapsed, 1),
        "publish_seconds": round(publish_s, 3),
        "broker_cpu_s": round(broker_cpu, 3), "broker_cpu_us_per_task": round(broker_cpu / count * 1e6, 1),
        "workers_cpu_s": round(workers_cpu, 3), "worker_cpu_us_per_task": round(workers_cpu / count * 1e6, 1),
    }
    if kind == "io":
        limit = agents / MODEL_DELAY_S
        run["physical_limit_tasks_per_s"] = round(limit, 1)
        run["fraction_of_limit"] = round(count / elapsed / limit, 4)
    return run


async def publish_all(cluster: WorkerCluster, tasks: list[AgentTask]) -> float:
    queue = await cluster.queue()
    started = time.perf_counter()
    try:
        for start in range(0, len(tasks), 256):
            await asyncio.gather(*(queue.publish(task) for task in tasks[start:start + 256]))
        return time.perf_counter() - started
    finally:
        await queue.close()


def process_cpu_s(pid: int | None) -> float:
    assert pid is not None, "nats-server is not running"
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_key = {(run["kind"], run["workers"], run["agents"]): run for run in runs}
    summary: dict[str, Any] = {"tasks_per_s": {}, "efficiency_vs_one_worker": {}, "io_agent_scaling": {}}
    for (kind, workers, agents), run in sorted(by_key.items()):
        name = f"{kind}/{workers}w/{agents}a"
        summary["tasks_per_s"][name] = run["tasks_per_s"]
        one = by_key.get((kind, 1, agents))
        if one:
            efficiency = run["tasks_per_s"] / (workers * one["tasks_per_s"])
            summary["efficiency_vs_one_worker"][name] = round(efficiency, 3)
    for workers in sorted({run["workers"] for run in runs}):
        low, high = by_key.get(("io", workers, 10)), by_key.get(("io", workers, 1000))
        if low and high:
            summary["io_agent_scaling"][f"{workers}w"] = {
                "tasks_per_s_10_agents": low["tasks_per_s"], "tasks_per_s_1000_agents": high["tasks_per_s"],
                "efficiency_10_to_1000_agents": round(high["tasks_per_s"] / low["tasks_per_s"] / 100, 4),
            }
    for key in ("broker_cpu_us_per_task", "worker_cpu_us_per_task"):
        for kind in ("cpu", "io"):
            costs = sorted(run[key] for run in runs if run["kind"] == kind)
            summary[f"{key}_median_{kind}"] = costs[len(costs) // 2] if costs else None
    return summary


if __name__ == "__main__":
    sys.exit(main())
