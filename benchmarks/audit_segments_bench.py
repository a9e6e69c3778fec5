"""Segmented audit log benchmark: what rolling over costs, and what auditing costs a request.

Measured in one run, on the same disk, with 16 appender threads (each append durable before it returns;
waiting appenders share one fdatasync, group commit):

* ``none``: the "request" alone (a fixed small CPU task standing in for a request's own work), no audit;
* ``single_file``: the same request plus one ``AuditLog.append`` (one file, as before segments);
* ``segmented``: the same plus ``SegmentedAuditLog.append`` with a small segment (``--segment-entries``),
  so rollovers (seal: checkpoint + sync; new segment: create + link entry + syncs + rename) happen often;
* ``single_thread``: one appender to the segmented log (no sharing of syncs), for comparison;
* ``deferred``: what the HTTP service does since ADR 0023: the decision's frame is written first
  (``append_deferred``), the request's work runs while the log's flusher syncs, and the request waits
  for its entry's durability only before it "responds" (the guarantee is the same: nothing is answered
  before its audit entry is on disk);
* verification of the whole segment directory, entries per second.

    .venv/bin/python benchmarks/audit_segments_bench.py [--appends 4000] [--segment-entries 1000]

Writes benchmarks/results/audit_segments.json. Never part of the test run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maif.security.audit import AuditLog
from maif.security.audit_chain import SegmentedAuditLog, verify_audit_chain
from maif.security.keys import MemorySigner

RESULTS = Path(__file__).parent / "results" / "audit_segments.json"
THREADS = 16


def request_work() -> None:
    digest = b"request"
    for _ in range(200):
        digest = hashlib.blake2b(digest).digest()


def event(number: int) -> dict[str, Any]:
    return {"actor": "agent-1", "action": "write", "resource": f"block/{number}", "decision": "allow"}


def audited_after(append: Callable[[dict[str, Any]], object]) -> Callable[[int], None]:
    """A request that does its work, then appends its audit entry and waits for it (before ADR 0023)."""

    def request(number: int) -> None:
        request_work()
        append(event(number))

    return request


def audited_deferred(log: AuditLog | SegmentedAuditLog) -> Callable[[int], None]:
    """A request whose decision is written first and whose entry's sync is awaited before it answers."""

    def request(number: int) -> None:
        ticket = log.append_deferred(event(number))
        request_work()
        ticket.wait()

    return request


def unaudited(number: int) -> None:
    request_work()


def run(appends: int, threads: int, request: Callable[[int], None]) -> float:
    """Requests per second over ``threads`` threads, each running ``request``."""
    per_thread = appends // threads

    def worker(base: int) -> None:
        for number in range(per_thread):
            request(base + number)

    workers = [threading.Thread(target=worker, args=(index * per_thread,)) for index in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return per_thread * threads / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=4000)
    parser.add_argument("--segment-entries", type=int, default=1000)
    arguments = parser.parse_args()
    signer = MemorySigner()
    results: dict[str, Any] = {"python": platform.python_version(), "threads": THREADS, **vars(arguments)}
    with tempfile.TemporaryDirectory(prefix="maif-audit-segments-") as scratch:
        folder = Path(scratch)
        results["none_requests_per_s"] = run(arguments.appends, THREADS, unaudited)
        with AuditLog.open(folder / "single.log", signer) as single:
            single_file = audited_after(single.append)
            results["single_file_requests_per_s"] = run(arguments.appends, THREADS, single_file)
        options = {"segment_entries_max": arguments.segment_entries}
        with SegmentedAuditLog.open(folder / "segmented", signer, **options) as log:
            results["segmented_requests_per_s"] = run(arguments.appends, THREADS, audited_after(log.append))
            results["segments_rolled"] = log.segment_number
        with SegmentedAuditLog.open(folder / "deferred", signer, **options) as log:
            results["deferred_requests_per_s"] = run(arguments.appends, THREADS, audited_deferred(log))
        results["none_again_requests_per_s"] = run(arguments.appends, THREADS, unaudited)
        with SegmentedAuditLog.open(folder / "one-thread", signer, **options) as log:
            one_thread = audited_after(log.append)
            results["single_thread_requests_per_s"] = run(arguments.appends // 4, 1, one_thread)
        started = time.perf_counter()
        report = verify_audit_chain(folder / "segmented", [signer.public_key])
        results["verify_entries_per_s"] = report.entries / (time.perf_counter() - started)
    segmented = results["segmented_requests_per_s"]
    results["segmented_over_single_file"] = segmented / results["single_file_requests_per_s"]
    unaudited_median = statistics.median(
        [results["none_requests_per_s"], results["none_again_requests_per_s"]]
    )
    results["segmented_over_no_audit"] = segmented / unaudited_median
    results["deferred_over_no_audit"] = results["deferred_requests_per_s"] / unaudited_median
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
