"""Security manager benchmark: bootstrap latency, authorisation decisions, batch-root signing.

Measured in one run, against a real OIDC issuer (scripts/servers/oidc.sh, started and stopped here) and
the real KeyStore and AuditLog on this machine's disk:

* bootstrap latency with a cached JWKS: ``bootstrap_trust`` to OAUTH_VERIFIED (token verification in a
  worker thread, context minting, one durable audit append), median and p99 in ms; next to it the two
  parts measured alone: ``TokenVerifier.verify`` and one bare ``AuditLog.append``;
* authorisation decisions per second on a cached context: the policy decision alone (``Gate.evaluate``:
  seal check + classification + policy) and the full audited ``Gate.authorize`` with 1 and 8 threads
  (each decision durable in the audit log before it returns; group commit shares syncs), and
  ``Gate.authorize_many`` over batches of 1000 resources (one audit entry per batch); the peer for the
  audited figures is a bare write+fdatasync loop on the same disk;
* batch-root signing: blocks per second signed by hashing each block (``block_digest``), building an
  RFC 9162 Merkle root and signing the root once with ``sign_maif_block`` (audited), for batch sizes 1,
  64 and 1024; verification likewise (recompute root, ``verify_maif_block_signature``); the peer is raw
  Ed25519 sign/verify per second (one signature per block).

Each figure is the median of ``--repeats`` runs.

    .venv/bin/python benchmarks/security_bench.py [--bootstraps 200] [--decisions 200000] [--repeats 3]

Writes benchmarks/results/security.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.format import merkle
from maif.format.block import MAIFBlock
from maif.format.codec import block_digest
from maif.security.manager import SecurityManager, create_maif_security_manager
from maif.security.policy import Action, Resource

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "security.json"
OIDC_SCRIPT = REPO / "scripts" / "servers" / "oidc.sh"
OIDC_DIR = REPO / ".work" / "oidc"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch_token(issuer: str) -> str:
    body = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "scope": "maif:read maif:write", "resource": "urn:maif:store"}
    ).encode()
    request = urllib.request.Request(f"{issuer}/token", data=body, method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"agent-1:agent-1-secret").decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["access_token"])


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_ms(action: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def bootstrap_latency(manager: SecurityManager, token: str, count: int) -> dict[str, float]:
    loop = asyncio.new_event_loop()
    try:
        samples = timed_ms(lambda: loop.run_until_complete(manager.bootstrap_trust("agent-1", token)), count)
    finally:
        loop.close()
    verify = timed_ms(lambda: manager.token_verifier.verify(token), count)
    append = timed_ms(lambda: manager.audit_log.append({"action": "bench", "decision": "allow"}), count)
    return {
        "bootstrap_ms_p50": statistics.median(samples),
        "bootstrap_ms_p99": percentile(samples, 0.99),
        "token_verify_ms_p50": statistics.median(verify),
        "audit_append_ms_p50": statistics.median(append),
    }


def decisions_per_s(manager: SecurityManager, token: str, count: int, audited_count: int) -> dict[str, float]:
    context = asyncio.run(manager.bootstrap_trust("agent-1", token))
    resource = Resource("block-1", owner="agent-1")
    start = time.perf_counter()
    for _ in range(count):
        manager.gate.evaluate(context, Action.WRITE, resource)
    evaluate_rate = count / (time.perf_counter() - start)
    results = {"policy_decisions_per_s": evaluate_rate, "policy_decision_us": 1e6 / evaluate_rate}
    for threads in (1, 8):
        per_thread = audited_count // threads

        def work(per_thread: int = per_thread) -> None:
            for _ in range(per_thread):
                manager.gate.authorize(context, Action.WRITE, resource)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        results[f"audited_decisions_per_s_threads_{threads}"] = (
            per_thread * threads / (time.perf_counter() - start)
        )
    batch = [Resource(f"block-{index}", owner="agent-1") for index in range(1000)]
    rounds = max(1, audited_count // 200)
    start = time.perf_counter()
    for _ in range(rounds):
        manager.gate.authorize_many(context, Action.WRITE, batch)
    results["audited_batch_1000_decisions_per_s"] = rounds * len(batch) / (time.perf_counter() - start)
    return results


def bare_fdatasync_per_s(directory: Path, count: int = 500) -> float:
    path = directory / "fsync-peer"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for _ in range(count):
            os.write(descriptor, b"x" * 200)
            os.fdatasync(descriptor)
        return count / (time.perf_counter() - start)
    finally:
        os.close(descriptor)


def batch_signing(
    manager: SecurityManager, token: str, batch_sizes: list[int], batches: int
) -> dict[str, Any]:
    context = asyncio.run(manager.bootstrap_trust("agent-1", token))
    results: dict[str, Any] = {}
    for size in batch_sizes:
        blocks = [
            MAIFBlock(f"b-{index}", data=secrets.token_bytes(256), agent_id="agent-1")
            for index in range(size)
        ]

        def root_of(blocks: list[MAIFBlock] = blocks) -> bytes:
            return merkle.root(merkle.leaf_hashes_of([block_digest(block) for block in blocks]))

        start = time.perf_counter()
        envelopes = [manager.sign_maif_block(root_of(), context) for _ in range(batches)]
        sign_elapsed = time.perf_counter() - start
        start = time.perf_counter()
        for envelope in envelopes:
            ok, _ = manager.verify_maif_block_signature(root_of(), envelope, "agent-1")
            assert ok
        verify_elapsed = time.perf_counter() - start
        results[f"batch_{size}"] = {
            "signed_blocks_per_s": size * batches / sign_elapsed,
            "verified_blocks_per_s": size * batches / verify_elapsed,
        }
    return results


def raw_ed25519(count: int = 5000) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    message = secrets.token_bytes(32)
    start = time.perf_counter()
    signature = b""
    for _ in range(count):
        signature = key.sign(message)
    sign_rate = count / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(count):
        public.verify(signature, message)
    return {
        "peer_ed25519_signs_per_s": sign_rate,
        "peer_ed25519_verifies_per_s": count / (time.perf_counter() - start),
    }


def one_run(issuer: str, token: str, arguments: argparse.Namespace, directory: Path) -> dict[str, Any]:
    config = {"oauth_providers": {issuer: {"client_id": "maif"}}}
    with create_maif_security_manager(
        config, data_dir=directory, master_key=secrets.token_bytes(32)
    ) as manager:
        manager.keystore.create_key("agent-1")
        manager.token_verifier.verify(token)  # warm the JWKS cache: the figures are for a cached JWKS
        return {
            "bootstrap": bootstrap_latency(manager, token, arguments.bootstraps),
            "authorization": decisions_per_s(
                manager, token, arguments.decisions, arguments.audited_decisions
            ),
            "batch_signing": batch_signing(manager, token, [1, 64, 1024], arguments.batches),
            "peer_bare_fdatasync_per_s": bare_fdatasync_per_s(directory),
            **raw_ed25519(),
        }


def median_of(runs: list[Any]) -> Any:
    """Element-wise median of nested dicts of numbers."""
    if isinstance(runs[0], dict):
        return {key: median_of([run[key] for run in runs]) for key in runs[0]}
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstraps", type=int, default=200)
    parser.add_argument("--decisions", type=int, default=200_000)
    parser.add_argument("--audited-decisions", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    port = free_port()
    subprocess.run([str(OIDC_SCRIPT), "start", str(OIDC_DIR), str(port)], check=True, capture_output=True)
    issuer = f"http://127.0.0.1:{port}"
    try:
        token = fetch_token(issuer)
        runs = []
        for _ in range(arguments.repeats):
            with tempfile.TemporaryDirectory(dir=REPO / ".work") as directory:
                runs.append(one_run(issuer, token, arguments, Path(directory)))
    finally:
        subprocess.run([str(OIDC_SCRIPT), "stop", str(OIDC_DIR), str(port)], check=True)
    result = median_of(runs)
    batch = result["batch_signing"]
    result["ratios"] = {
        "batch_1024_signing_vs_one_ed25519_per_block": batch["batch_1024"]["signed_blocks_per_s"]
        / result["peer_ed25519_signs_per_s"],
        "batch_1024_verification_vs_one_ed25519_per_block": batch["batch_1024"]["verified_blocks_per_s"]
        / result["peer_ed25519_verifies_per_s"],
        "audited_decisions_threads_1_vs_bare_fdatasync": result["authorization"][
            "audited_decisions_per_s_threads_1"
        ]
        / result["peer_bare_fdatasync_per_s"],
    }
    document = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "parameters": vars(arguments),
        **result,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
