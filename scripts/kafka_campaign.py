"""Chaos campaign for the shared logs, the Kafka-protocol log (ADR 0073) or the NATS JetStream log (ADR
0084): broker restarts and node kills, then an audit.

    .venv/bin/python scripts/kafka_campaign.py [--log kafka|nats] [--rounds N] [--seed S] [--output PATH]

A private server set (PostgreSQL, SeaweedFS, and Tansu or NATS; free ports, stopped by PID at the end)
and WRITERS writer nodes (tests/distributed/kafka_node.py, separate processes, one log), each
writing batches of concurrent 1 KiB blocks and printing the ids the broker acknowledged. Each round,
after a random pause, one of:

  broker   SIGKILL Tansu or NATS (and its children), wait, start it again (writers get BackendUnavailableError
           or wait meanwhile, never a false ack)
  node     SIGKILL a random writer node, delete its data_dir (the node is gone, disk and all), start a
           new one in its place with fresh block ids

At least --broker-restarts-min of the rounds are broker restarts (the rest are drawn by the seed). Then
the writers are stopped (SIGKILL) and a fresh auditor node (Kafka: another group; NATS: the dead
writers' partition locks died with them; either way it applies every partition) waits until every
acknowledged block is readable from the shared index, bit-exact against its digest, and checks that no
id is listed twice. Results: benchmarks/results/kafka_campaign.json (nats_campaign.json with --log
nats): seed, rounds, kills, restarts, acknowledged, lost, duplicated, refused writes by error, durations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "distributed"))
from distributed_servers import private_server_set  # noqa: E402 - the test suite's server driver
from kafka_node import block_of  # noqa: E402 - ids and payloads the writer nodes use

NODE_SCRIPT = REPO / "tests" / "distributed" / "kafka_node.py"
WRITERS = 2
BATCH_BLOCKS = 10
BLOCK_BYTES = 1024
AUDIT_TIMEOUT_S = 300.0
NODE_LOGS: Path | None = None  # --node-logs: where each writer node's stderr goes (else nowhere)


class WriterNode:
    """One writer process; a thread collects the ids it reports acknowledged and its refusals."""

    def __init__(self, config: dict[str, Any], first_batch: int) -> None:
        self.config = config
        self.process = subprocess.Popen(
            [sys.executable, str(NODE_SCRIPT), json.dumps(config), "write", str(first_batch),
             str(BATCH_BLOCKS), str(BLOCK_BYTES)], stdout=subprocess.PIPE, stderr=self._stderr(config),
            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        self.acked: list[str] = []
        self.refused: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @staticmethod
    def _stderr(config: dict[str, Any]) -> Any:
        if NODE_LOGS is None:
            return subprocess.DEVNULL
        NODE_LOGS.mkdir(parents=True, exist_ok=True)
        return (NODE_LOGS / f"{config['node_id']}.log").open("a")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            words = line.split()
            if words and words[0] == "acked":
                self.acked.extend(words[1:])
            elif words and words[0] == "refused":
                self.refused[words[2]] = self.refused.get(words[2], 0) + 1

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        self._reader.join(timeout=10)


BROKERS = {"kafka": "tansu", "nats": "nats"}  # the server each log is on


def node_config(log: str, root: Path, env: dict[str, str], name: str,
                group: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "data_dir": str(root / name), "node_id": name, "postgres_url": env["MAIF_STORAGE_POSTGRES_URL"],
        "s3_endpoint": env["MAIF_STORAGE_S3_ENDPOINT"], "s3_bucket": env["MAIF_STORAGE_S3_BUCKET"],
        "tier_interval_s": 0}
    if log == "nats":
        config.update(log_backend="nats", nats_url=env["MAIF_STORAGE_NATS_URL"],
                      nats_log_stream="MAIF_CAMPAIGN", nats_log_partitions=4, nats_write_timeout_s=3.0)
        return config
    config.update(kafka_brokers=env["MAIF_STORAGE_KAFKA_BROKERS"], kafka_topic="maif-campaign",
                  kafka_partitions=4, kafka_write_timeout_s=3.0)
    if group is not None:
        config["kafka_group"] = group
    return config


async def audit(config: dict[str, Any], acked: list[str]) -> dict[str, Any]:
    """Wait until every acknowledged block reads back bit-exact; list every block once."""
    import blake3

    from maif.format.codec import encode_block
    from maif.storage.engine import create_maif_storage

    storage = await create_maif_storage(config)
    started = time.monotonic()
    missing = set(acked)
    wrong: list[str] = []
    try:
        while missing and time.monotonic() - started < AUDIT_TIMEOUT_S:
            for block_id in sorted(missing):
                record = await storage._backends.index.get(block_id)
                if record is None:
                    continue
                missing.discard(block_id)
                block = await storage.read_block(block_id)
                if block.data != block_of(block_id, BLOCK_BYTES).data or \
                        record.digest != blake3.blake3(encode_block(block)).digest():
                    wrong.append(block_id)
            if missing:
                await asyncio.sleep(0.5)
        listed: list[str] = []
        after: str | None = None
        while True:
            page = await storage.list_blocks(limit=1000, after=after)
            listed += [summary.block_id for summary in page]
            if len(page) < 1000:
                break
            after = page[-1].block_id
        stats = await storage.get_stats()
    finally:
        await storage.close()
    return {"lost": sorted(missing), "wrong_bytes": wrong, "listed": len(listed),
            "duplicated": len(listed) - len(set(listed)), "audit_s": round(time.monotonic() - started, 1),
            "records_skipped": stats.get("kafka_records_skipped_total",
                                         stats.get("nats_records_skipped_total"))}


def campaign(log: str, rounds: int, broker_restarts_min: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)  # noqa: S311 - a replayable chaos schedule, not a secret
    kinds = ["broker"] * broker_restarts_min + [rng.choice(["broker", "node"])
                                                for _ in range(max(0, rounds - broker_restarts_min))]
    rng.shuffle(kinds)
    started = time.monotonic()
    broker = BROKERS[log]
    with private_server_set(("postgres", "seaweedfs", broker)) as servers, \
            tempfile.TemporaryDirectory(prefix=f"{log}-campaign-") as workdir:
        env = servers.env()
        os.environ.update({key: env[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                     "AWS_DEFAULT_REGION")})
        root = Path(workdir)
        generation = 0
        nodes = [WriterNode(node_config(log, root, env, f"writer-{k}-0"), k * 1_000_000)
                 for k in range(WRITERS)]
        retired: list[WriterNode] = []
        events: list[dict[str, Any]] = []
        for number, kind in enumerate(kinds):
            time.sleep(rng.uniform(2.0, 5.0))
            if kind == "broker":
                servers.kill(broker)
                down_s = rng.uniform(0.5, 3.0)
                time.sleep(down_s)
                servers.start(broker)
                events.append({"round": number, "kind": "broker", "down_s": round(down_s, 2)})
            else:
                slot = rng.randrange(WRITERS)
                victim = nodes[slot]
                victim.kill()
                shutil.rmtree(victim.config["data_dir"], ignore_errors=True)
                retired.append(victim)
                generation += 1
                nodes[slot] = WriterNode(node_config(log, root, env, f"writer-{slot}-{generation}"),
                                         slot * 1_000_000 + generation * 10_000)
                events.append({"round": number, "kind": "node", "slot": slot,
                               "acked_by_victim": len(victim.acked)})
            print(f"round {number}: {kind}", flush=True)
        time.sleep(3.0)
        for writer in nodes:
            writer.kill()
        everyone = retired + nodes
        acked = [block_id for writer in everyone for block_id in writer.acked]
        refused: dict[str, int] = {}
        for writer in everyone:
            for error, count in writer.refused.items():
                refused[error] = refused.get(error, 0) + count
        audited = asyncio.run(audit(node_config(log, root, env, "auditor", group="auditor"), acked))
    return {"log": log, "seed": seed, "rounds": len(kinds), "broker_restarts": kinds.count("broker"),
            "node_kills": kinds.count("node"), "acknowledged": len(acked),
            "acknowledged_unique": len(set(acked)), "refused_batches_by_error": refused,
            "lost": len(audited["lost"]), "lost_ids": audited["lost"][:20],
            "wrong_bytes": len(audited["wrong_bytes"]), "duplicated_in_listing": audited["duplicated"],
            "listed": audited["listed"], "records_skipped": audited["records_skipped"],
            "audit_s": audited["audit_s"], "duration_s": round(time.monotonic() - started, 1),
            "events": events}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", choices=sorted(BROKERS), default="kafka")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--broker-restarts-min", type=int, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--node-logs", type=Path, default=None, help="keep each writer node's stderr here")
    arguments = parser.parse_args()
    global NODE_LOGS
    NODE_LOGS = arguments.node_logs
    output = arguments.output or REPO / "benchmarks" / "results" / f"{arguments.log}_campaign.json"
    result = campaign(arguments.log, arguments.rounds, arguments.broker_restarts_min, arguments.seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if key not in ("events", "lost_ids")}))
    if result["lost"] or result["wrong_bytes"] or result["duplicated_in_listing"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
