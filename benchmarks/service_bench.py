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

Each run starts its own issuer and server on 127.0.0.1 (free ports) and writes
benchmarks/results/service.json. The issue asks for a 10-minute run; the default here is shorter
(about 2 minutes): pass --phase-s 60 for a longer one.
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

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
SMALL_LOADS_PER_S = (100, 300, 600, 1000)
LARGE_LOADS_PER_S = (5, 20, 50)


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fsync_peer(directory: Path, seconds: float = 3.0) -> float:
    path = directory / "fsync-probe"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    count, block, deadline = 0, os.urandom(4096), time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            os.write(descriptor, block)
            os.fdatasync(descriptor)
            count += 1
    finally:
        os.close(descriptor)
        path.unlink()
    return count / seconds


# ---- the load generator (runs in its own process) ---------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class _Connection:
    """A minimal HTTP/1.1 keep-alive client connection (asyncio streams): httpx costs the load process
    about a millisecond of CPU per request, which on this 2-core machine starves the server under test."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload


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
        connection = _Connection(host, int(port))
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
                connection = _Connection(host, int(port))
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
    else:
        outcome = asyncio.run(_big(job["url"], job["token"], job["bytes"]))
    results.put(outcome)


# ---- the driver ---------------------------------------------------------------------------------------


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append(int(line.split()[1]) * 1024)
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


def run_job(job: dict[str, Any], pid: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with RssSampler(pid) as sampler:
        process = context.Process(target=load_process, args=(job, queue))
        process.start()
        outcome = queue.get(timeout=3600)
        process.join()
    outcome.update(sampler.summary())
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--big-gib", type=float, default=1.0)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "service.json")
    arguments = parser.parse_args()
    fixtures = _load("maif_service_bench_fixtures", REPO / "tests" / "service" / "conftest.py")
    issuer = fixtures.security_fixtures.start_issuer(TOKEN_TTL="3600")
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "phase_s": arguments.phase_s,
    }
    try:
        token = issuer.token("agent-1", "maif:read maif:write")
        with tempfile.TemporaryDirectory(dir=REPO / ".work") as scratch:
            directory = Path(scratch)
            results["fsync_peer_syncs_per_s"] = round(fsync_peer(directory), 1)
            server = fixtures.start_server(directory / "server", issuer, max_memory_mb=256)
            try:
                url = server.url
                results["rss_mib_idle"] = round(server.rss_bytes() / MiB, 1)
                results["writes_small"] = [
                    run_job(
                        {
                            "kind": "writes",
                            "url": url,
                            "token": token,
                            "rate": rate,
                            "seconds": arguments.phase_s,
                            "bytes": 256,
                            "raw": False,
                        },
                        server.process.pid,
                    )
                    for rate in SMALL_LOADS_PER_S
                ]
                large = [
                    run_job(
                        {
                            "kind": "writes",
                            "url": url,
                            "token": token,
                            "rate": rate,
                            "seconds": arguments.phase_s,
                            "bytes": MiB,
                            "raw": True,
                        },
                        server.process.pid,
                    )
                    for rate in LARGE_LOADS_PER_S
                ]
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
                results["rss_mib_end"] = round(server.rss_bytes() / MiB, 1)
                results["rss_mib_peak_whole_run"] = round(server.rss_bytes("VmHWM") / MiB, 1)
            finally:
                server.stop()
    finally:
        fixtures.security_fixtures.stop_issuer(issuer)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
