"""HTTP service benchmark: a real server process, a real OIDC issuer, load from a separate process.

    .venv/bin/python benchmarks/service_bench.py [--phase-s 10] [--big-gib 1]

  fsync_peer          fdatasync rate of this disk (4 KiB appends) in the same run: the physical limit of
                      any durable, unbatched write path (each acknowledged write needs one sync unless
                      several writers share it).
  writes_small        256-byte JSON blocks at fixed offered loads (open loop: requests are sent on a
                      schedule, latency counts from the scheduled time, so a stalled server cannot hide its
                      queueing). Achieved writes/s, p50/p99 latency, errors.
  writes_1mib         1 MiB raw (application/octet-stream) blocks at fixed offered loads.
  reads_1mib          GET of the 1 MiB blocks by 8 concurrent clients: MiB/s.
  big_stream          one --big-gib GiB streamed upload then download: MiB/s each way.
  rss                 the server's RSS sampled every 0.25 s in every phase (max and median per phase).
  soak                with --soak-s S (600 for the 10-minute run): a steady mixed load for S seconds,
                      small writes at --soak-rate per second plus reads of earlier blocks at half that
                      rate, open loop, reported per --soak-window-s window (achieved rates, p50/p99,
                      errors, RSS median/max) with the RSS trend over the second half (MiB per minute,
                      least squares) and the store's own growth (blocks, chunk-index entries) beside it.
                      --soak-reads-only: 5,000 blocks first, then only reads at --soak-rate, so the
                      store does not grow and RSS growth left would be the service's own.

  audit_compare       with --audit-compare (alone): small writes at --compare-loads offered rates against
                      the real service and against benchmarks/unaudited_service.py (the same service with
                      the gate's audit records switched off), servers started in turn in the same run,
                      order audited, unaudited, audited, unaudited; achieved writes/s and p99 per load,
                      the medians per server, and audited/unaudited ratios of throughput at the highest
                      load (saturation) and of p99 at each load. Writes benchmarks/results/service_audit.json.
                      --baseline-src DIR adds the audited service run from another checkout's src (e.g.
                      before a change) as a third server in the same rotation.

Each run starts its own issuer and server on 127.0.0.1 (free ports) and writes
benchmarks/results/service.json (the soak alone, with --soak-only, writes service_soak.json).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from http_client import HTTPConnection

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
# The last ones find saturation (goal: >= 3000/s; offered 3000, a service that keeps up achieves just under).
SMALL_LOADS_PER_S = (100, 300, 600, 1000, 2000, 3000, 4500, 6000)
LARGE_LOADS_PER_S = (5, 20, 50)


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fsync_peer(directory: Path, seconds: float = 3.0) -> dict[str, float]:
    """Syncs per second and the p99 of one 4 KiB append + fdatasync (the goal's yardstick, issue 13)."""
    path = directory / "fsync-probe"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    block, deadline = os.urandom(4096), time.perf_counter() + seconds
    latencies_ms: list[float] = []
    try:
        while (started := time.perf_counter()) < deadline:
            os.write(descriptor, block)
            os.fdatasync(descriptor)
            latencies_ms.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(descriptor)
        path.unlink()
    latencies_ms.sort()
    return {
        "fsync_peer_syncs_per_s": round(len(latencies_ms) / seconds, 1),
        "fsync_peer_ms_p99": round(_percentile(latencies_ms, 0.99) or 0.0, 3),
    }


# ---- the load generator (runs in its own process) ---------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _open_loop(
    url: str,
    token: str,
    rate_per_s: float,
    seconds: float,
    payload_bytes: int,
    raw: bool,
    ids: list[str],
    connections: int = 64,
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    latencies_ms: list[float] = []
    errors = 0
    payload = os.urandom(payload_bytes)
    total = int(rate_per_s * seconds)
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/octet-stream" if raw else "application/json",
    }
    schedule: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        schedule.put_nowait(index)
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal errors
        connection = HTTPConnection(host, int(port))
        while not schedule.empty():
            index = schedule.get_nowait()
            scheduled = start + index / rate_per_s
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            data = payload[:-8] + index.to_bytes(8, "little")  # distinct blocks: no dedup shortcut
            body = data if raw else json.dumps({"payload_base64": base64.b64encode(data).decode()}).encode()
            try:
                status, answer = await connection.request("POST", "/v1/blocks", headers, body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                connection = HTTPConnection(host, int(port))
                continue
            if status != 201:
                errors += 1
                continue
            latencies_ms.append((time.perf_counter() - scheduled) * 1000)
            if len(ids) < 64:
                ids.append(json.loads(answer)["block_id"])

    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies_ms.sort()
    return {
        "offered_per_s": rate_per_s,
        "requests": total,
        "ok": len(latencies_ms),
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "achieved_writes_per_s": round(len(latencies_ms) / elapsed, 1),
        "latency_ms_p50": _percentile(latencies_ms, 0.50),
        "latency_ms_p99": _percentile(latencies_ms, 0.99),
    }


async def _reads(
    url: str, token: str, ids: list[str], seconds: float, concurrency: int = 8
) -> dict[str, Any]:
    import httpx

    done_bytes, requests = 0, 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as client:

        async def worker(offset: int) -> None:
            nonlocal done_bytes, requests
            index = offset
            while time.perf_counter() < deadline:
                response = await client.get(f"/v1/blocks/{ids[index % len(ids)]}")
                assert response.status_code == 200
                done_bytes += len(response.content)
                requests += 1
                index += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "read_mib_per_s": round(done_bytes / MiB / elapsed, 1),
        "reads_per_s": round(requests / elapsed, 1),
    }


async def _big(url: str, token: str, size_bytes: int) -> dict[str, Any]:
    import httpx

    sent, received = hashlib.sha256(), hashlib.sha256()

    async def body() -> Any:
        chunk = os.urandom(MiB)
        for index in range(size_bytes // MiB):
            piece = chunk[:-8] + index.to_bytes(8, "little")
            sent.update(piece)
            yield piece

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        start = time.perf_counter()
        response = await client.post(
            "/v1/blocks",
            content=body(),
            headers={"Content-Type": "application/octet-stream", "X-MAIF-Block-Id": f"big-{time.time_ns()}"},
        )
        upload_s = time.perf_counter() - start
        assert response.status_code == 201, response.text
        start = time.perf_counter()
        async with client.stream("GET", f"/v1/blocks/{response.json()['block_id']}") as download:
            async for piece in download.aiter_bytes():
                received.update(piece)
        download_s = time.perf_counter() - start
    assert sent.digest() == received.digest()
    return {
        "bytes": size_bytes,
        "upload_mib_per_s": round(size_bytes / MiB / upload_s, 1),
        "download_mib_per_s": round(size_bytes / MiB / download_s, 1),
    }


async def _soak(
    url: str, token: str, seconds: float, rate_per_s: float, window_s: float, reads_only: bool = False
) -> dict[str, Any]:
    """Small writes at ``rate_per_s`` and reads of written blocks at half that, open loop, per window;
    with ``reads_only``, 5,000 blocks are written first (not measured) and then only read, at
    ``rate_per_s``: the store stops growing, so any RSS growth left is the service's own."""
    import collections
    import random

    host, port = url.removeprefix("http://").split(":")
    written: collections.deque[str] = collections.deque(maxlen=10_000)
    events: list[tuple[float, str, float | None]] = []  # (scheduled offset s, kind, latency ms or None)
    payload = os.urandom(256)
    write_headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    read_headers = {"Authorization": f"Bearer {token}"}
    schedule: asyncio.Queue[tuple[float, str, int]] = asyncio.Queue()
    if reads_only:
        await _prefill(host, int(port), write_headers, payload, written)
        merged = [(index / rate_per_s, "read", index) for index in range(int(rate_per_s * seconds))]
    else:
        writes, reads = int(rate_per_s * seconds), int(rate_per_s / 2 * seconds)
        merged = sorted(
            [(index / rate_per_s, "write", index) for index in range(writes)]
            + [(index / (rate_per_s / 2), "read", index) for index in range(reads)]
        )
    for item in merged:
        schedule.put_nowait(item)
    start = time.perf_counter()
    chooser = random.Random(7)

    async def worker() -> None:
        connection = HTTPConnection(host, int(port))
        while not schedule.empty():
            offset, kind, index = schedule.get_nowait()
            scheduled = start + offset
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            if kind == "write":
                data = payload[:-8] + index.to_bytes(8, "little")
                body = json.dumps({"payload_base64": base64.b64encode(data).decode()}).encode()
                request = ("POST", "/v1/blocks", write_headers, body)
            elif written:
                request = ("GET", f"/v1/blocks/{written[chooser.randrange(len(written))]}", read_headers, b"")
            else:
                continue
            try:
                status, answer = await connection.request(*request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                events.append((offset, kind, None))
                connection = HTTPConnection(host, int(port))
                continue
            if status not in (200, 201):
                events.append((offset, kind, None))
                continue
            events.append((offset, kind, (time.perf_counter() - scheduled) * 1000))
            if kind == "write":
                written.append(json.loads(answer)["block_id"])

    await asyncio.gather(*(worker() for _ in range(64)))
    windows = []
    for window in range(int(seconds // window_s)):
        low, high = window * window_s, (window + 1) * window_s
        row: dict[str, Any] = {"window": window, "from_s": low}
        for kind in ("write", "read"):
            chosen = [latency for offset, name, latency in events if name == kind and low <= offset < high]
            ok = sorted(latency for latency in chosen if latency is not None)
            row[f"{kind}s_per_s"] = round(len(ok) / window_s, 1)
            row[f"{kind}_errors"] = len(chosen) - len(ok)
            row[f"{kind}_ms_p50"] = _percentile(ok, 0.50)
            row[f"{kind}_ms_p99"] = _percentile(ok, 0.99)
        windows.append(row)
    return {
        "seconds": seconds,
        "reads_only": reads_only,
        "offered_writes_per_s": 0 if reads_only else rate_per_s,
        "offered_reads_per_s": rate_per_s if reads_only else rate_per_s / 2,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "windows": windows,
    }


async def _prefill(host: str, port: int, headers: dict[str, str], payload: bytes, written: Any) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(5000):
        queue.put_nowait(index)

    async def worker() -> None:
        connection = HTTPConnection(host, port)
        while not queue.empty():
            index = queue.get_nowait()
            data = payload[:-8] + (10**9 + index).to_bytes(8, "little")
            body = json.dumps({"payload_base64": base64.b64encode(data).decode()}).encode()
            status, answer = await connection.request("POST", "/v1/blocks", headers, body)
            assert status == 201, answer
            written.append(json.loads(answer)["block_id"])

    await asyncio.gather(*(worker() for _ in range(16)))


def load_process(job: dict[str, Any], results: Any) -> None:
    """The load generator's entry point (a separate process, so the client's CPU is not the server's)."""
    kind = job["kind"]
    if kind == "writes":
        ids: list[str] = []
        outcome = asyncio.run(
            _open_loop(job["url"], job["token"], job["rate"], job["seconds"], job["bytes"], job["raw"], ids)
        )
        outcome["ids"] = ids
    elif kind == "reads":
        outcome = asyncio.run(_reads(job["url"], job["token"], job["ids"], job["seconds"]))
    elif kind == "soak":
        outcome = asyncio.run(
            _soak(job["url"], job["token"], job["seconds"], job["rate"], job["window_s"], job["reads_only"])
        )
    else:
        outcome = asyncio.run(_big(job["url"], job["token"], job["bytes"]))
    results.put(outcome)


# ---- the driver ---------------------------------------------------------------------------------------


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self.times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) * 1024)
                    self.times.append(time.perf_counter())
            self._stop.wait(0.25)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return {
            "rss_mib_max": round(max(self.samples) / MiB, 1),
            "rss_mib_median": round(statistics.median(self.samples) / MiB, 1),
        }

    def trend_mib_per_min(self, from_fraction: float = 0.5) -> float:
        """Least-squares slope of RSS over the samples after ``from_fraction`` of the run."""
        first = int(len(self.samples) * from_fraction)
        times, values = self.times[first:], [value / MiB for value in self.samples[first:]]
        return round(statistics.linear_regression(times, values).slope * 60, 3)

    def windows(self, start: float, window_s: float) -> list[dict[str, float]]:
        rows: dict[int, list[int]] = {}
        for moment, value in zip(self.times, self.samples, strict=True):
            rows.setdefault(int((moment - start) // window_s), []).append(value)
        return [
            {
                "rss_mib_median": round(statistics.median(values) / MiB, 1),
                "rss_mib_max": round(max(values) / MiB, 1),
            }
            for _, values in sorted(rows.items())
        ]


def _process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (all its threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_job(job: dict[str, Any], pid: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    cpu_s_before = _process_cpu_s(pid)
    with RssSampler(pid) as sampler:
        started = time.perf_counter()
        process = context.Process(target=load_process, args=(job, queue))
        process.start()
        outcome = queue.get(timeout=3600)
        process.join()
    outcome.update(sampler.summary())
    outcome["server_cpu_s"] = round(_process_cpu_s(pid) - cpu_s_before, 3)
    outcome["load_average_1m"] = os.getloadavg()[0]
    if job["kind"] == "writes" and outcome.get("ok"):
        outcome["server_cpu_ms_per_write"] = round(1000 * outcome["server_cpu_s"] / outcome["ok"], 3)
    if job["kind"] == "soak":
        outcome["rss_trend_mib_per_min_second_half"] = sampler.trend_mib_per_min()
        outcome["rss_mib_first_sample"] = round(sampler.samples[0] / MiB, 1)
        outcome["rss_mib_last_sample"] = round(sampler.samples[-1] / MiB, 1)
        for row, rss in zip(outcome["windows"], sampler.windows(started, job["window_s"]), strict=False):
            row.update(rss)
    return outcome


def _store_growth(server: Any, token: str) -> dict[str, Any]:
    import httpx

    figures = httpx.get(
        f"{server.url}/v1/stats", headers={"Authorization": f"Bearer {token}"}, timeout=60
    ).json()["storage"]
    return {key: figures.get(key) for key in ("blocks", "chunks", "bytes_warm", "bytes_hot", "wal_depth")}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--big-gib", type=float, default=1.0)
    parser.add_argument(
        "--soak-s", type=float, default=0.0, help="steady mixed load for this long (600: 10 min)"
    )
    parser.add_argument("--soak-rate", type=float, default=300.0, help="small writes per second in the soak")
    parser.add_argument("--soak-window-s", type=float, default=60.0)
    parser.add_argument("--soak-only", action="store_true", help="skip the phases; write service_soak.json")
    parser.add_argument(
        "--soak-reads-only", action="store_true", help="the soak only reads (5,000 blocks written first)"
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "service.json")
    parser.add_argument("--audit-compare", action="store_true", help="audited against unaudited only")
    parser.add_argument("--compare-loads", default="1000,3000", help="offered writes/s, comma-separated")
    parser.add_argument("--baseline-src", help="with --audit-compare: also the audited service from this src")
    arguments = parser.parse_args()
    if arguments.audit_compare and arguments.output.name == "service.json":
        arguments.output = arguments.output.with_name("service_audit.json")
    if arguments.soak_only and arguments.output.name == "service.json":
        suffix = "_reads_only" if arguments.soak_reads_only else ""
        arguments.output = arguments.output.with_name(f"service_soak{suffix}.json")
    sys.path.insert(0, str(REPO / "tests" / "service"))  # the conftest imports server_process
    fixtures = _load("maif_service_bench_fixtures", REPO / "tests" / "service" / "conftest.py")
    issuer = fixtures.security_fixtures.start_issuer(TOKEN_TTL="3600")
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "phase_s": arguments.phase_s,
        "load_average_1m_start": os.getloadavg()[0],
    }
    try:
        token = issuer.token("agent-1", "maif:read maif:write")
        with tempfile.TemporaryDirectory(dir=REPO / ".work") as scratch:
            directory = Path(scratch)
            results.update(fsync_peer(directory))
            if arguments.audit_compare:
                results["audit_compare"] = _audit_compare(fixtures, issuer, token, directory, arguments)
            else:
                _run_phases(results, arguments, fixtures, issuer, token, directory)
    finally:
        fixtures.security_fixtures.stop_issuer(issuer)
    results["load_average_1m_end"] = os.getloadavg()[0]
    if "writes_small" in results:
        results["goals"] = _goals(results)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def _goals(results: dict[str, Any]) -> dict[str, Any]:
    """Issue 13's service goals against this run: 1000 writes/s at p99 <= max(5 ms, 2x the fdatasync
    p99 of the same run), and saturation (the most writes/s achieved at any offered load) >= 3000/s."""
    bound_ms = max(5.0, 2 * results["fsync_peer_ms_p99"])
    at_1000 = next(phase for phase in results["writes_small"] if phase["offered_per_s"] == 1000)
    saturation = max(phase["achieved_writes_per_s"] for phase in results["writes_small"])
    return {
        "p99_bound_ms": bound_ms,
        "p99_ms_at_1000_per_s": at_1000["latency_ms_p99"],
        "p99_at_1000_met": at_1000["latency_ms_p99"] is not None and at_1000["latency_ms_p99"] <= bound_ms,
        "saturation_writes_per_s": saturation,
        "saturation_met": saturation >= 3000,
    }


def _run_phases(
    results: dict[str, Any], arguments: Any, fixtures: Any, issuer: Any, token: str, directory: Path
) -> None:
    server = fixtures.start_server(directory / "server", issuer, max_memory_mb=256)
    try:
        url = server.url
        results["rss_mib_idle"] = round(server.rss_bytes() / MiB, 1)
        if not arguments.soak_only:
            _phases(results, arguments, url, token, server)
        if arguments.soak_s > 0:
            results["soak_store_before"] = _store_growth(server, token)
            results["soak"] = run_job(
                {
                    "kind": "soak",
                    "url": url,
                    "token": token,
                    "seconds": arguments.soak_s,
                    "rate": arguments.soak_rate,
                    "window_s": arguments.soak_window_s,
                    "reads_only": arguments.soak_reads_only,
                },
                server.process.pid,
            )
            results["soak_store_after"] = _store_growth(server, token)
        results["rss_mib_end"] = round(server.rss_bytes() / MiB, 1)
        results["rss_mib_peak_whole_run"] = round(server.rss_bytes("VmHWM") / MiB, 1)
    finally:
        server.stop()


def _write_phases(
    url: str, token: str, seconds: float, payload_bytes: int, raw: bool, rates: tuple[int, ...], pid: int
) -> list[dict[str, Any]]:
    return [
        run_job(
            {
                "kind": "writes",
                "url": url,
                "token": token,
                "rate": rate,
                "seconds": seconds,
                "bytes": payload_bytes,
                "raw": raw,
            },
            pid,
        )
        for rate in rates
    ]


def _phases(results: dict[str, Any], arguments: Any, url: str, token: str, server: Any) -> None:
    pid = server.process.pid
    results["writes_small"] = _write_phases(url, token, arguments.phase_s, 256, False, SMALL_LOADS_PER_S, pid)
    large = _write_phases(url, token, arguments.phase_s, MiB, True, LARGE_LOADS_PER_S, pid)
    ids = [block_id for phase in large for block_id in phase.pop("ids")]
    for phase in results["writes_small"]:
        phase.pop("ids")
    results["writes_1mib"] = large
    results["reads_1mib"] = run_job(
        {"kind": "reads", "url": url, "token": token, "ids": ids, "seconds": arguments.phase_s},
        server.process.pid,
    )
    results["big_stream"] = run_job(
        {"kind": "big", "url": url, "token": token, "bytes": int(arguments.big_gib * 1024) * MiB},
        server.process.pid,
    )


def _median(runs: list[list[dict[str, Any]]], index: int, field: str) -> float:
    return statistics.median(run[index][field] for run in runs)


def _audit_compare(
    fixtures: Any, issuer: Any, token: str, directory: Path, arguments: Any
) -> dict[str, Any]:
    """Audited and unaudited servers in turn (ABAB; with --baseline-src, audited from that tree too:
    ABCABC), the same loads against each; ratios of medians."""
    loads = tuple(int(load) for load in arguments.compare_loads.split(","))
    unaudited = (str(REPO / "benchmarks" / "unaudited_service.py"),)
    service = ("-m", "maif.service")
    kinds: dict[str, tuple[tuple[str, ...], dict[str, str] | None]] = {
        "audited": (service, None),
        "unaudited": (unaudited, None),
    }
    if arguments.baseline_src:
        kinds["audited_baseline"] = (service, {"PYTHONPATH": arguments.baseline_src})
    rounds: dict[str, list[list[dict[str, Any]]]] = {kind: [] for kind in kinds}
    load_average_start = os.getloadavg()[0]
    for turn in range(2 * len(kinds)):
        kind = list(kinds)[turn % len(kinds)]
        launcher, environment = kinds[kind]
        server = fixtures.start_server(
            directory / f"{kind}-{turn}", issuer, max_memory_mb=256, launcher=launcher,
            environment=environment,
        )
        try:
            _write_phases(server.url, token, 2.0, 256, False, (300,), server.process.pid)  # warm-up
            pid = server.process.pid
            phases = _write_phases(server.url, token, arguments.phase_s, 256, False, loads, pid)
        finally:
            server.stop()
        for phase in phases:
            phase.pop("ids")
        rounds[kind].append(phases)
    summary: dict[str, Any] = {"loads_per_s": list(loads), "rounds": rounds}
    summary["load_average_1m_start"], summary["load_average_1m_end"] = load_average_start, os.getloadavg()[0]
    for kind, runs in rounds.items():
        summary[kind] = [
            {
                "offered_per_s": load,
                "achieved_writes_per_s": _median(runs, index, "achieved_writes_per_s"),
                "latency_ms_p99": _median(runs, index, "latency_ms_p99"),
                "server_cpu_ms_per_write": _median(runs, index, "server_cpu_ms_per_write"),
                "errors": sum(run[index]["errors"] for run in runs),
            }
            for index, load in enumerate(loads)
        ]
    audited, unaudited = summary["audited"], summary["unaudited"]
    summary["throughput_ratio_at_highest_load"] = (
        audited[-1]["achieved_writes_per_s"] / unaudited[-1]["achieved_writes_per_s"]
    )
    summary["audit_cost_fraction_of_throughput"] = 1 - summary["throughput_ratio_at_highest_load"]
    if "audited_baseline" in summary:
        baseline = summary["audited_baseline"]
        summary["baseline_throughput_ratio_at_highest_load"] = (
            baseline[-1]["achieved_writes_per_s"] / unaudited[-1]["achieved_writes_per_s"]
        )
        summary["audited_over_baseline_throughput_at_highest_load"] = (
            audited[-1]["achieved_writes_per_s"] / baseline[-1]["achieved_writes_per_s"]
        )
        summary["audited_over_baseline_p99_per_load"] = [
            a["latency_ms_p99"] / b["latency_ms_p99"] for a, b in zip(audited, baseline, strict=True)
        ]
    summary["p99_ratio_per_load"] = [
        a["latency_ms_p99"] / u["latency_ms_p99"] for a, u in zip(audited, unaudited, strict=True)
    ]
    return summary


if __name__ == "__main__":
    main()
