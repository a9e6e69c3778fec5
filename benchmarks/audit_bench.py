"""Audit log benchmark: durable appends per second, batch-root signing and offline verification.

Measured on the same disk, in the same run:

* peer (the physical limit of one-at-a-time durability): a bare loop that writes one 200-byte record
  and calls fdatasync, single thread: syncs per second;
* ``AuditLog.append`` with 1, 4 and 16 concurrent appender threads, each append durable (fdatasync)
  before it returns; group commit lets waiting appenders share one sync. Reported as appends/s, the
  syncs actually issued per append, and the ratio to the bare-fsync peer measured just before each run;
* batch-root signing: a checkpoint over a growing tree (incremental Merkle root + Ed25519 signature),
  and Ed25519 verification of those checkpoints, per second (CPU only, no disk);
* ``verify_audit_log`` (every frame digest, chain link, root and signature) in entries per second, and
  (to separate CPU from disk) one appender's rate with fdatasync disabled.

Each figure is the median of ``--repeats`` runs. On a shared machine the figures drift with other load
(the disk's sync rate most of all), which is why the peer is re-measured next to every run.

    .venv/bin/python benchmarks/audit_bench.py [--appends 2000] [--verify-entries 50000] [--repeats 3]

Writes benchmarks/results/audit.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from maif.format import merkle
from maif.security import audit
from maif.security.audit import (
    AuditLog,
    SignedCheckpoint,
    read_audit_log,
    verify_audit_log,
    verify_checkpoint,
)
from maif.security.keys import MemorySigner

RESULTS = Path(__file__).parent / "results" / "audit.json"


def event(worker: int, number: int) -> dict[str, Any]:
    return {
        "actor": f"agent-{worker}",
        "action": "write",
        "resource": f"block/{worker}/{number}",
        "decision": "allow",
        "reason": "trust level 3 >= 2",
        "scopes": ["maif:write"],
    }


def bare_fsync_rate(directory: Path, count: int) -> float:
    path = directory / "bare.bin"
    record = os.urandom(200)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(descriptor, record)
            os.fdatasync(descriptor)
        elapsed = time.perf_counter() - started
    finally:
        os.close(descriptor)
        path.unlink()
    return count / elapsed


def durable_append_rate(directory: Path, threads_count: int, total: int) -> dict[str, float]:
    path = directory / f"audit-{threads_count}.log"
    syncs = [0]
    real_fdatasync = os.fdatasync

    def counting_fdatasync(descriptor: int) -> None:
        syncs[0] += 1
        real_fdatasync(descriptor)

    os.fdatasync = counting_fdatasync  # type: ignore[assignment]
    try:
        with AuditLog.open(path, MemorySigner()) as log:
            per_thread = total // threads_count

            def work(worker: int) -> None:
                for number in range(per_thread):
                    log.append(event(worker, number))

            threads = [threading.Thread(target=work, args=(worker,)) for worker in range(threads_count)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            appended = log.size
    finally:
        os.fdatasync = real_fdatasync
        path.unlink()
    return {"appends_per_s": appended / elapsed, "syncs_per_append": syncs[0] / appended}


def signing_rates(count: int) -> dict[str, float]:
    """Batch-root signing: add an entry hash to the tree, take the root, sign it; then verify them all."""
    signer = MemorySigner()
    log_id = os.urandom(16)
    accumulator = audit._MerkleAccumulator()
    checkpoints = []
    started = time.perf_counter()
    for number in range(count):
        accumulator.push(merkle.hash_leaf(number.to_bytes(8, "little")))
        root, now = accumulator.root(), time.time()
        signature = signer.sign(audit.checkpoint_payload(log_id, number + 1, root, now, signer.key_id))
        checkpoints.append(SignedCheckpoint(log_id, number + 1, root, now, signer.key_id, signature))
    signed = time.perf_counter() - started
    trusted = [signer.public_key]
    started = time.perf_counter()
    for checkpoint in checkpoints:
        verify_checkpoint(checkpoint, trusted)
    verified = time.perf_counter() - started
    return {"batch_roots_signed_per_s": count / signed, "checkpoints_verified_per_s": count / verified}


def verification_rate(directory: Path, entries: int) -> dict[str, float]:
    path = directory / "verify.log"
    signer = MemorySigner()
    with AuditLog.open(path, signer, checkpoint_every_entries=1024, checkpoint_every_s=1e9) as log:
        # not durable-per-append here: this only builds the file to verify
        fdatasync, os.fdatasync = os.fdatasync, lambda descriptor: None  # type: ignore[assignment]
        try:
            started = time.perf_counter()
            for number in range(entries):
                log.append(event(number % 7, number))
            cpu_elapsed = time.perf_counter() - started
        finally:
            os.fdatasync = fdatasync
    size_bytes = path.stat().st_size
    started = time.perf_counter()
    report = verify_audit_log(path, [signer.public_key])
    elapsed = time.perf_counter() - started
    assert report.entries == entries and report.fully_signed
    started = time.perf_counter()
    records = sum(1 for _ in read_audit_log(path))
    read_elapsed = time.perf_counter() - started
    path.unlink()
    return {
        "verify_entries_per_s": entries / elapsed,
        "verify_mb_per_s": size_bytes / elapsed / 1e6,
        "read_records_per_s": records / read_elapsed,
        "bytes_per_entry": size_bytes / entries,
        "appends_per_s_without_sync": entries / cpu_elapsed,  # the CPU ceiling of one appender
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--verify-entries", type=int, default=50_000)
    parser.add_argument("--signatures", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(__file__).parent,
        help="where scratch logs go (must be on the disk you want to measure)",
    )
    arguments = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "parameters": vars(arguments) | {"dir": str(arguments.dir)},
    }
    with tempfile.TemporaryDirectory(dir=arguments.dir, prefix=".audit-bench-") as scratch:
        directory = Path(scratch)
        results["durable_appends"] = {}
        for threads_count in (1, 4, 16):
            runs = []
            for _ in range(arguments.repeats):
                # the peer is measured right before each run: the disk's speed drifts with other load
                peer = bare_fsync_rate(directory, 300)
                run = durable_append_rate(directory, threads_count, arguments.appends)
                run["peer_bare_fdatasync_per_s"] = peer
                run["ratio_to_bare_fdatasync"] = run["appends_per_s"] / peer
                runs.append(run)
            figures = median_of(runs)
            results["durable_appends"][f"threads_{threads_count}"] = figures
            print(
                f"{threads_count:2d} appenders: {figures['appends_per_s']:9.0f} appends/s "
                f"({figures['syncs_per_append']:.3f} syncs/append, {figures['ratio_to_bare_fdatasync']:.2f}x "
                f"bare fdatasync, which ran {figures['peer_bare_fdatasync_per_s']:.0f}/s)"
            )
        results["signing"] = median_of(
            [signing_rates(arguments.signatures) for _ in range(arguments.repeats)]
        )
        print(
            f"batch roots signed: {results['signing']['batch_roots_signed_per_s']:.0f}/s, "
            f"checkpoints verified: {results['signing']['checkpoints_verified_per_s']:.0f}/s"
        )
        results["verification"] = median_of(
            [verification_rate(directory, arguments.verify_entries) for _ in range(arguments.repeats)]
        )
        print(
            f"verify_audit_log: {results['verification']['verify_entries_per_s']:.0f} entries/s "
            f"({results['verification']['verify_mb_per_s']:.1f} MB/s)"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
