"""Distributed benchmark: MAIF's embedded store against MAIF scaled out on real servers, in the same run.

    .venv/bin/python benchmarks/distributed_bench.py [--quick] [--output PATH]

Servers: a private set started for this run by scripts/servers/distributed.sh (through the driver the
distributed tests use, tests/distributed/distributed_servers.py) on free ports of 127.0.0.1, in a fresh
state directory under .work/bench-services/, with the package cache of .work/services/pkgs: PostgreSQL +
pgvector (metadata index, chunk locations, vectors), SeaweedFS S3 (chunk packs) and Redis (shared cache).
They are stopped by PID at the end, also on an error or Ctrl-C; if they cannot start, the script's
message is printed and the exit status is 1. Every measurement that writes gets a fresh database and
bucket (so a fresh Redis key prefix); every node has its own data_dir (write-ahead log) and node_id.

  ingest          write_blocks of BATCH_BLOCKS blocks (~1 KiB of text each), one node: blocks/s
                  acknowledged (durable in the node's log) and applied (``_wait_applied``: chunks uploaded,
                  metadata committed), embedded against distributed, alternating, medians of repeats
  write_latency   open loop: single write_block calls scheduled at a fixed rate; latency from the
                  scheduled instant to the ack (a stalled store cannot hide its queue), embedded and
                  distributed, alternating; the achieved rate and how late the generator itself was
                  beside them; medians over the repeats of each run's percentiles
  reads           distributed: a writer node writes blocks and closes; node B, never having seen them,
                  reads each once (cold: PostgreSQL record + S3 range read) and again (warm: the record +
                  B's hot cache); node C then reads them (Redis: B's reads filled the shared cache).
                  The embedded store's first (packs) and second (hot cache) reads beside them
  vectors         the VectorIndex backends used directly (add/search, not through the engine): recall@10
                  against exact numpy brute force and single-query search latency on clustered 384-d
                  float32 vectors (vector_bench.make_data). pgvector (PgVectorIndex) at MAIF's default
                  ef_search and two others on the same graph; usearch (LocalVectorIndex, the embedded
                  default); Qdrant local mode (brute force in Python: a smaller N, said in the JSON).
                  pgvector keeps its HNSW graph up to date on every insert, at a few hundred vectors/s here
                  (falling as the graph grows), so only a prefix goes through add() with the index in place
                  (its rate is reported); then MAIF's HNSW index is dropped, the rest added, and the index
                  created again with MAIF's own DDL (same m, ef_construction): pgvector's bulk build
  two_nodes       aggregate ingest of one node (N blocks) against two nodes (N/2 each, concurrently), each
                  node a separate process (multiprocessing, spawn) on the same servers
  visibility      node A (this process) writes one block; node B (another process) polls read_block every
                  POLL_INTERVAL_S; the delay from A's ack to B's first successful read, one block at a time

Each section carries the load average (os.getloadavg) at its start and end: the machine is shared.
Results (parameters, versions, goals met or missed) go to benchmarks/results/distributed_bench.json,
rewritten after every section; --quick (small sizes, a smoke run) writes distributed_bench_quick.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import operator
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "distributed"))
from distributed_servers import (  # the server driver lives beside the distributed tests
    SERVERS,
    S3Settings,
    ServerSet,
    ServersUnavailableError,
    free_ports,
    fresh_bucket,
    fresh_database,
)

from maif.errors import BlockNotFoundError
from maif.format.block import MAIFBlock
from maif.storage import MAIFStorage, create_maif_storage
from maif.storage.backends.base import VectorIndex
from maif.storage.backends.local import LocalVectorIndex
from maif.storage.backends.postgres import PgVectorIndex
from maif.storage.backends.qdrant import QdrantVectorIndex
from vector_bench import exact_top_k, make_data

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).parent / "results"
SERVICES_ROOT = REPO / ".work" / "bench-services"
PACKAGE_CACHE = REPO / ".work" / "services" / "pkgs"
RECORD_BYTES = 1024
BATCH_BLOCKS = 1000
VECTOR_BATCH = 1000
PGVECTOR_SEED_VECTORS = 1000  # the first add creates the table and MAIF's HNSW index
PGVECTOR_EF_SEARCHES = (40, 100, 200)  # 100 is MAIF's default (HNSW_EF_SEARCH)
TOP_K = 10
POLL_INTERVAL_S = 0.001
VISIBILITY_TIMEOUT_S = 30.0
CHILD_TIMEOUT_S = 600.0
WORDS = ("agent", "tool", "call", "result", "plan", "step", "memory", "observation", "reward", "context",
         "token", "prompt", "answer", "retrieved", "document", "summary", "error", "retry", "user", "goal")
GOALS = {  # name: (figure, comparison, bound)
    "ingest_applied_distributed_vs_embedded": ("ingest.ratio_applied_distributed_vs_embedded", ">=", 0.5),
    "ingest_ack_distributed_vs_embedded": ("ingest.ratio_ack_distributed_vs_embedded", ">=", 0.5),
    "pgvector_recall_at_10": ("vectors.pgvector.default.recall_at_10", ">=", 0.95),
    "two_nodes_vs_one_applied": ("two_nodes.ratio_applied_two_vs_one", ">=", 1.6),
    "visibility_delay_s_p99": ("visibility.delay_s_p99", "<=", 1.0),
}
FULL = {"ingest_blocks": 20_000, "repeats": 3, "latency_rate_per_s": 1000, "latency_duration_s": 5.0,
        "read_blocks": 2000, "vectors": 100_000, "vector_queries": 300, "qdrant_vectors": 20_000,
        "pgvector_incremental_vectors": 5000, "two_nodes_blocks": 20_000, "visibility_samples": 300}
QUICK = {"ingest_blocks": 4000, "repeats": 3, "latency_rate_per_s": 1000, "latency_duration_s": 1.5,
         "read_blocks": 300, "vectors": 10_000, "vector_queries": 100, "qdrant_vectors": 3000,
         "pgvector_incremental_vectors": 1000, "two_nodes_blocks": 4000, "visibility_samples": 50}


# ---- helpers -------------------------------------------------------------------------------------
def corpus(count: int, prefix: str, seed: int = 7) -> list[MAIFBlock]:
    """``count`` blocks of ~RECORD_BYTES of agent-like text, each unique (no deduplication)."""
    rng = random.Random(seed)
    blocks = []
    for number in range(count):
        text = f"{prefix}{number}: " + " ".join(rng.choices(WORDS, k=RECORD_BYTES // 5))
        blocks.append(MAIFBlock(id=f"{prefix}{number}", data=text.encode()[:RECORD_BYTES], agent_id="bench",
                                timestamp=float(number)))
    return blocks


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def with_load(measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The figures of ``measure`` with the load average at its start and end beside them."""
    start = load_average()
    figures = measure()
    return {**figures, "load_average_start": start, "load_average_end": load_average()}


def latency_summary(samples_s: Sequence[float], unit: str = "ms") -> dict[str, Any]:
    scale = 1e3 if unit == "ms" else 1.0
    values = np.asarray(samples_s, dtype=np.float64) * scale
    return {"samples": len(values), f"latency_{unit}_p50": float(np.percentile(values, 50)),
            f"latency_{unit}_p99": float(np.percentile(values, 99)),
            f"latency_{unit}_max": float(values.max())}


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]
            if isinstance(runs[0][key], int | float)}


def ratios(tops: Sequence[dict[str, Any]], bottoms: Sequence[dict[str, Any]], key: str) -> list[float]:
    """``key`` of each repeat of one configuration over the same repeat of the other (run side by side)."""
    return [top[key] / bottom[key] for top, bottom in zip(tops, bottoms, strict=True)]


def figure(result: dict[str, Any], dotted: str) -> Any:
    value: Any = result
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def goals(result: dict[str, Any]) -> dict[str, Any]:
    met: dict[str, Any] = {}
    for name, (dotted, comparison, bound) in GOALS.items():
        measured = figure(result, dotted)
        compare = operator.ge if comparison == ">=" else operator.le
        passed = None if measured is None else bool(compare(measured, bound))
        met[name] = {"figure": dotted, "goal": f"{comparison} {bound}", "measured": measured, "met": passed}
    return met


# ---- servers -------------------------------------------------------------------------------------
@contextlib.contextmanager
def private_servers() -> Iterator[tuple[ServerSet, dict[str, str]]]:
    """A private PostgreSQL + SeaweedFS + Redis on free ports; stopped by PID and removed afterwards."""
    SERVICES_ROOT.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="run-", dir=SERVICES_ROOT))
    servers = ServerSet(state, ports=free_ports(SERVERS), pkgs_dir=PACKAGE_CACHE)
    try:
        servers.start()
        env = servers.env()
        # S3 credentials through the standard AWS chain (every node, children included, reads them there)
        os.environ.update({key: env[key] for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                     "AWS_DEFAULT_REGION")})
        yield servers, env
    finally:
        with contextlib.suppress(Exception):
            servers.stop()
        stop_unrecorded_postgres(state)
        shutil.rmtree(state, ignore_errors=True)


def stop_unrecorded_postgres(state: Path) -> None:
    """distributed.sh records PostgreSQL's PID only once ``pg_ctl start -w`` succeeded: a start that timed
    out leaves a running postmaster that ``stop`` does not know. Stop it by the PID in its own
    postmaster.pid, when that process runs the cached PostgreSQL binary (never another process)."""
    try:
        pid = int((state / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        running = Path(f"/proc/{pid}/exe").resolve()
    except (OSError, ValueError, IndexError):
        return
    if not running.is_relative_to(PACKAGE_CACHE.resolve()):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def fresh_store(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The server settings of one new, empty shared store: a new database (with pgvector) and bucket."""
    with (fresh_database(env["MAIF_SERVICES_POSTGRES_ADMIN_URL"], env["MAIF_STORAGE_POSTGRES_URL"]) as url,
          fresh_bucket(S3Settings.from_env(env)) as bucket):
        yield {"postgres_url": url, "s3_endpoint": env["MAIF_STORAGE_S3_ENDPOINT"], "s3_bucket": bucket,
               "redis_url": env["MAIF_STORAGE_REDIS_URL"]}


def node(store: dict[str, Any] | None, data_dir: Path, node_id: str) -> dict[str, Any]:
    """One node's configuration: embedded when ``store`` is None, else a node of that shared store."""
    if store is None:
        return {"data_dir": str(data_dir)}
    return {**store, "data_dir": str(data_dir), "node_id": node_id}


def server_versions(servers: ServerSet, env: dict[str, str]) -> dict[str, Any]:
    import asyncpg
    import redis.asyncio as redis

    async def ask() -> dict[str, Any]:
        connection = await asyncpg.connect(env["MAIF_STORAGE_POSTGRES_URL"])
        try:
            postgres = await connection.fetchval("SELECT current_setting('server_version')")
            pgvector = await connection.fetchval(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        finally:
            await connection.close()
        client = redis.from_url(env["MAIF_STORAGE_REDIS_URL"])
        try:
            redis_version = (await client.info("server"))["redis_version"]
        finally:
            await client.aclose()
        return {"postgresql": postgres, "pgvector": pgvector, "redis": redis_version}

    versions = asyncio.run(ask())
    weed = (servers.state_dir / "seaweedfs" / "exe").read_text().strip()
    output = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=60, check=False)
    versions["seaweedfs"] = output.stdout.strip().splitlines()[0] if output.stdout.strip() else None
    for package in ("asyncpg", "aiobotocore", "redis", "qdrant-client", "usearch", "numpy"):
        versions[f"python_{package}"] = metadata.version(package)
    versions["python"] = platform.python_version()
    versions.update(source_state())
    return versions


def source_state() -> dict[str, Any]:
    """The commit measured, and any uncommitted change under src/ (the working tree is what ran)."""
    def git(*arguments: str) -> str:
        done = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.rstrip()  # not strip(): porcelain lines begin with a status column

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"maif_commit": git("rev-parse", "HEAD"), "maif_src_uncommitted": changed}


# ---- 1. batch ingest -----------------------------------------------------------------------------
async def ingest_once(config: dict[str, Any], blocks: list[MAIFBlock]) -> dict[str, float]:
    storage = await create_maif_storage(config)
    try:
        started = time.perf_counter()
        for start in range(0, len(blocks), BATCH_BLOCKS):
            await storage.write_blocks(blocks[start:start + BATCH_BLOCKS])
        acknowledged_s = time.perf_counter() - started
        await storage._wait_applied()
        applied_s = time.perf_counter() - started
    finally:
        await storage.close()
    return {"ack_blocks_per_s": len(blocks) / acknowledged_s, "applied_blocks_per_s": len(blocks) / applied_s}


def ingest_run(env: dict[str, str], workdir: Path, blocks: list[MAIFBlock],
               distributed: bool) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="ingest-", dir=workdir))
    try:
        if not distributed:
            return with_load(lambda: asyncio.run(ingest_once(node(None, data_dir, ""), blocks)))
        with fresh_store(env) as store:
            return with_load(lambda: asyncio.run(ingest_once(node(store, data_dir, "ingest"), blocks)))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def measure_ingest(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    blocks = corpus(sizes["ingest_blocks"], "b")
    runs: dict[str, list[dict[str, Any]]] = {"embedded": [], "distributed": []}
    for _ in range(sizes["repeats"]):  # alternating, so a load change hits both alike
        runs["embedded"].append(ingest_run(env, workdir, blocks, distributed=False))
        runs["distributed"].append(ingest_run(env, workdir, blocks, distributed=True))
    embedded, distributed = medians(runs["embedded"]), medians(runs["distributed"])
    ack_ratio = distributed["ack_blocks_per_s"] / embedded["ack_blocks_per_s"]
    applied_ratio = distributed["applied_blocks_per_s"] / embedded["applied_blocks_per_s"]
    return {"blocks": len(blocks), "batch_blocks": BATCH_BLOCKS, "record_bytes": RECORD_BYTES,
            "embedded": embedded, "distributed": distributed, "ratio_ack_distributed_vs_embedded": ack_ratio,
            "ratio_applied_distributed_vs_embedded": applied_ratio,
            "ratio_applied_per_repeat": ratios(runs["distributed"], runs["embedded"], "applied_blocks_per_s"),
            "runs": runs}


# ---- 2. single-write latency, open loop ------------------------------------------------------------
async def open_loop(config: dict[str, Any], blocks: list[MAIFBlock], rate_per_s: float) -> dict[str, Any]:
    storage = await create_maif_storage(config)
    loop = asyncio.get_running_loop()
    latencies_s: list[float] = []
    send_lag_s: list[float] = []

    async def one(block: MAIFBlock, scheduled: float) -> None:
        await storage.write_block(block)
        latencies_s.append(loop.time() - scheduled)

    try:
        tasks = []
        start = loop.time() + 0.05
        for number, block in enumerate(blocks):
            scheduled = start + number / rate_per_s
            if scheduled > loop.time():
                await asyncio.sleep(scheduled - loop.time())
            send_lag_s.append(loop.time() - scheduled)
            tasks.append(loop.create_task(one(block, scheduled)))
        await asyncio.gather(*tasks)
        acknowledged_s = loop.time() - start
        await storage._wait_applied()
        drain_s = loop.time() - start - acknowledged_s
    finally:
        await storage.close()
    return {"offered_per_s": rate_per_s, "achieved_per_s": len(blocks) / acknowledged_s,
            **latency_summary(latencies_s), "send_lag_ms_p99": float(np.percentile(send_lag_s, 99) * 1e3),
            "applied_after_last_ack_s": drain_s}


def measure_write_latency(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    rate = sizes["latency_rate_per_s"]
    blocks = corpus(int(rate * sizes["latency_duration_s"]), "l")
    runs: dict[str, list[dict[str, Any]]] = {"embedded": [], "distributed": []}
    for _ in range(sizes["repeats"]):  # alternating, so a load change hits both alike
        for label, repeats in runs.items():
            repeats.append(latency_run(env, workdir, blocks, rate, distributed=label == "distributed"))
    return {"duration_s": sizes["latency_duration_s"], "embedded": medians(runs["embedded"]),
            "distributed": medians(runs["distributed"]), "runs": runs,
            "note": "latency from the scheduled send instant to the ack (open loop); the figures are medians "
                    "over the repeats of each run's own percentiles"}


def latency_run(env: dict[str, str], workdir: Path, blocks: list[MAIFBlock], rate_per_s: float,
                distributed: bool) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="latency-", dir=workdir))
    try:
        if not distributed:
            return with_load(lambda: asyncio.run(open_loop(node(None, data_dir, ""), blocks, rate_per_s)))
        with fresh_store(env) as store:
            config = node(store, data_dir, "latency")
            return with_load(lambda: asyncio.run(open_loop(config, blocks, rate_per_s)))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# ---- 3. warm and cold reads ----------------------------------------------------------------------
async def read_pass(storage: MAIFStorage, ids: Sequence[str]) -> dict[str, Any]:
    latencies_s = []
    tiers: Counter[str] = Counter()
    for block_id in ids:
        started = time.perf_counter()
        _, tier = await storage.read_block_with_tier(block_id)
        latencies_s.append(time.perf_counter() - started)
        tiers[tier] += 1
    return {**latency_summary(latencies_s), "served_by": dict(tiers)}


async def write_and_close(config: dict[str, Any], blocks: list[MAIFBlock]) -> None:
    async with await create_maif_storage(config) as storage:
        for start in range(0, len(blocks), BATCH_BLOCKS):
            await storage.write_blocks(blocks[start:start + BATCH_BLOCKS])
        await storage._wait_applied()


async def distributed_reads(store: dict[str, Any], workdir: Path, blocks: list[MAIFBlock]) -> dict[str, Any]:
    ids = [block.id for block in blocks]
    random.Random(3).shuffle(ids)
    await write_and_close(node(store, workdir / "reads-writer", "writer"), blocks)
    result: dict[str, Any] = {}
    async with await create_maif_storage(node(store, workdir / "reads-b", "reader-b")) as reader:
        result["cold_fresh_node"] = load_stamped(await read_pass(reader, ids))
        result["warm_same_node_second_read"] = load_stamped(await read_pass(reader, ids))
    async with await create_maif_storage(node(store, workdir / "reads-c", "reader-c")) as other:
        result["fresh_node_after_another_node_read"] = load_stamped(await read_pass(other, ids))
    return result


def load_stamped(figures: dict[str, Any]) -> dict[str, Any]:
    """A read pass is short: the load average at its end stands beside its figures."""
    return {**figures, "load_average_end": load_average()}


async def embedded_reads(workdir: Path, blocks: list[MAIFBlock]) -> dict[str, Any]:
    ids = [block.id for block in blocks]
    random.Random(3).shuffle(ids)
    config = node(None, workdir / "reads-embedded", "")
    await write_and_close(config, blocks)
    async with await create_maif_storage(config) as storage:  # reopened: its hot cache is empty
        first = load_stamped(await read_pass(storage, ids))
        second = load_stamped(await read_pass(storage, ids))
    return {"first_read_after_reopen": first, "second_read": second}


def measure_reads(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    blocks = corpus(sizes["read_blocks"], "r")
    directory = Path(tempfile.mkdtemp(prefix="reads-", dir=workdir))
    try:
        with fresh_store(env) as store:
            distributed = with_load(lambda: asyncio.run(distributed_reads(store, directory, blocks)))
        embedded = with_load(lambda: asyncio.run(embedded_reads(directory, blocks)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return {"blocks": len(blocks), "order": "shuffled, one read at a time", "distributed": distributed,
            "embedded": embedded,
            "note": "served_by is read_block_with_tier's answer: hot = this process's cache, shared = "
                    "Redis, warm = the chunk store (S3 packs when distributed, local packs when embedded)"}


# ---- 4. vectors ----------------------------------------------------------------------------------
async def add_range(index: VectorIndex, data: np.ndarray, start: int, stop: int) -> float:
    """Add vectors ``start..stop`` as v<number> in batches; the seconds it took."""
    began = time.perf_counter()
    for first in range(start, stop, VECTOR_BATCH):
        last = min(stop, first + VECTOR_BATCH)
        await index.add([(f"v{number}", data[number], {}) for number in range(first, last)])
    return time.perf_counter() - began


async def search_figures(index: VectorIndex, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    latencies_s = []
    found = 0
    for query, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        hits = await index.search(query, TOP_K)
        latencies_s.append(time.perf_counter() - started)
        found += len({int(block_id[1:]) for block_id, _ in hits} & set(expected.tolist()))
    return {"recall_at_10": found / (len(queries) * TOP_K), **latency_summary(latencies_s)}


async def pgvector_build(url: str, data: np.ndarray, incremental: int) -> dict[str, Any]:
    """MAIF's add() for a prefix (HNSW maintained per insert), then a bulk load and MAIF's CREATE INDEX."""
    import asyncpg

    index = PgVectorIndex(url, node_id="bench-vectors")
    try:
        seeded = PGVECTOR_SEED_VECTORS
        await add_range(index, data, 0, seeded)  # creates the table and its HNSW index
        incremental_s = await add_range(index, data, seeded, seeded + incremental)
        table = f'"{index.schema}".vectors'
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(f'DROP INDEX "{index.schema}".vectors_hnsw')
            bulk_rows_s = await add_range(index, data, seeded + incremental, len(data))
            await connection.execute("SET maintenance_work_mem = '1GB'")  # the graph fits: the fast build
            began = time.perf_counter()
            await connection.execute(  # the DDL of PgVectorIndex._create_table
                f"CREATE INDEX vectors_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
                f"WITH (m = {index.hnsw_m}, ef_construction = {index.hnsw_ef_construction})")
            create_index_s = time.perf_counter() - began
        finally:
            await connection.close()
    finally:
        await index.close()
    return {"incremental_add_vectors": incremental,
            "incremental_add_vectors_per_s": incremental / incremental_s,
            "incremental_add_index_size": f"{PGVECTOR_SEED_VECTORS}..{PGVECTOR_SEED_VECTORS + incremental}",
            "bulk_rows_s": bulk_rows_s, "create_index_s": create_index_s, "hnsw_m": index.hnsw_m,
            "hnsw_ef_construction": index.hnsw_ef_construction, "maintenance_work_mem": "1GB"}


async def pgvector_search(url: str, queries: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    rows = {}
    for ef_search in PGVECTOR_EF_SEARCHES:
        index = PgVectorIndex(url, node_id="bench-vectors", hnsw_ef_search=ef_search)
        try:
            rows[f"ef_search_{ef_search}"] = await search_figures(index, queries, truth)
        finally:
            await index.close()
    return {"default": {"ef_search": 100, **rows["ef_search_100"]}, "sweep": rows}


async def local_figures(index: VectorIndex, data: np.ndarray, queries: np.ndarray,
                        truth: np.ndarray) -> dict[str, Any]:
    try:
        build_s = await add_range(index, data, 0, len(data))
        flush_began = time.perf_counter()
        await index.flush()
        flush_s = time.perf_counter() - flush_began
        return {"vectors": len(data), "build_s": build_s, "add_vectors_per_s": len(data) / build_s,
                "flush_s": flush_s, **await search_figures(index, queries, truth)}
    finally:
        await index.close()


async def qdrant_figures(directory: Path, data: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    index = QdrantVectorIndex(path=str(directory))
    await index.open()
    return await local_figures(index, data, queries, exact_top_k(data, queries))


def measure_vectors(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    data, queries = make_data(sizes["vectors"], sizes["vector_queries"])
    truth = exact_top_k(data, queries)
    result: dict[str, Any] = {
        "vectors": len(data), "dimensions": data.shape[1], "queries": len(queries), "top_k": TOP_K,
        "data": "vector_bench.make_data: 1000 clusters, noise 2.0; ground truth exact cosine (numpy)",
        "how": "VectorIndex backends used directly (add/search), not through the engine; one query at a time"}
    incremental = sizes["pgvector_incremental_vectors"]
    with fresh_database(env["MAIF_SERVICES_POSTGRES_ADMIN_URL"], env["MAIF_STORAGE_POSTGRES_URL"]) as url:
        build = with_load(lambda: asyncio.run(pgvector_build(url, data, incremental)))
        search = with_load(lambda: asyncio.run(pgvector_search(url, queries, truth)))
    result["pgvector"] = {"vectors": len(data), "build": build, **search}
    usearch_dir = Path(tempfile.mkdtemp(prefix="usearch-", dir=workdir))
    try:
        result["usearch"] = with_load(lambda: asyncio.run(local_figures(
            LocalVectorIndex(usearch_dir), data, queries, truth)))
    finally:
        shutil.rmtree(usearch_dir, ignore_errors=True)
    subset = data[:sizes["qdrant_vectors"]]
    qdrant_dir = Path(tempfile.mkdtemp(prefix="qdrant-", dir=workdir))
    try:
        result["qdrant_local"] = with_load(lambda: asyncio.run(qdrant_figures(qdrant_dir, subset, queries)))
    finally:
        shutil.rmtree(qdrant_dir, ignore_errors=True)
    result["qdrant_local"]["note"] = (f"local mode is brute force in Python: {len(subset)} of the vectors "
                                      "(the first ones), ground truth recomputed on that subset")
    return result


# ---- 5. two nodes against one --------------------------------------------------------------------
def ingest_child(config: dict[str, Any], count: int, prefix: str, messages: Any, go: Any) -> None:
    """One node in its own process: open, report ready, wait for go, ingest, report its instants."""
    try:
        messages.put(("done", asyncio.run(_ingest_child(config, count, prefix, messages, go))))
    except BaseException as error:
        messages.put(("error", f"{prefix}: {error!r}"))
        raise


async def _ingest_child(config: dict[str, Any], count: int, prefix: str, messages: Any,
                        go: Any) -> dict[str, float]:
    blocks = corpus(count, prefix)
    async with await create_maif_storage(config) as storage:
        messages.put(("ready", prefix))
        await asyncio.to_thread(go.wait)
        started = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes on one machine
        for start in range(0, count, BATCH_BLOCKS):
            await storage.write_blocks(blocks[start:start + BATCH_BLOCKS])
        acknowledged = time.monotonic()
        await storage._wait_applied()
        applied = time.monotonic()
    return {"started": started, "acknowledged": acknowledged, "applied": applied, "blocks": count}


@contextlib.contextmanager
def children(targets: Sequence[tuple[Callable[..., None], tuple[Any, ...]]]) -> Iterator[Any]:
    """Start one spawned process per (target, arguments); the shared message queue. Joined (or
    terminated, on an error) on exit."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    go = context.Event()
    processes = [context.Process(target=target, args=(*arguments, messages, go))
                 for target, arguments in targets]
    try:
        for process in processes:
            process.start()
        yield messages, go
    except BaseException:
        for process in processes:
            if process.is_alive():
                process.terminate()  # by its PID; a node that is killed loses nothing it acknowledged
        raise
    finally:
        for process in processes:
            process.join(timeout=CHILD_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()


def expect(messages: Any, kind: str, count: int) -> list[Any]:
    answers: list[Any] = []
    while len(answers) < count:
        got, payload = messages.get(timeout=CHILD_TIMEOUT_S)
        if got == "error":
            raise RuntimeError(f"a node process failed: {payload}")
        if got == kind:
            answers.append(payload)
    return answers


def nodes_run(env: dict[str, str], workdir: Path, node_count: int, total_blocks: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"nodes{node_count}-", dir=workdir))
    try:
        with fresh_store(env) as store:
            targets = [(ingest_child, (node(store, directory / f"n{n}", f"node-{n}"),
                                       total_blocks // node_count, f"n{n}-")) for n in range(node_count)]
            with children(targets) as (messages, go):
                expect(messages, "ready", node_count)
                load_start = load_average()
                go.set()
                reports = expect(messages, "done", node_count)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    started = min(report["started"] for report in reports)
    blocks = sum(report["blocks"] for report in reports)
    return {"ack_blocks_per_s": blocks / (max(report["acknowledged"] for report in reports) - started),
            "applied_blocks_per_s": blocks / (max(report["applied"] for report in reports) - started),
            "load_average_start": load_start, "load_average_end": load_average()}


def measure_two_nodes(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    total = sizes["two_nodes_blocks"]
    runs: dict[str, list[dict[str, Any]]] = {"one_node": [], "two_nodes": []}
    for _ in range(sizes["repeats"]):
        runs["one_node"].append(nodes_run(env, workdir, 1, total))
        runs["two_nodes"].append(nodes_run(env, workdir, 2, total))
    one, two = medians(runs["one_node"]), medians(runs["two_nodes"])
    return {"blocks": total, "batch_blocks": BATCH_BLOCKS, "one_node": one, "two_nodes": two,
            "ratio_ack_two_vs_one": two["ack_blocks_per_s"] / one["ack_blocks_per_s"],
            "ratio_applied_two_vs_one": two["applied_blocks_per_s"] / one["applied_blocks_per_s"],
            "ratio_applied_per_repeat": ratios(runs["two_nodes"], runs["one_node"], "applied_blocks_per_s"),
            "ratio_ack_per_repeat": ratios(runs["two_nodes"], runs["one_node"], "ack_blocks_per_s"),
            "note": "each node a spawned process; aggregate = all blocks / (last node done - first start)",
            "runs": runs}


# ---- 6. cross-node visibility --------------------------------------------------------------------
def visibility_reader(config: dict[str, Any], count: int, messages: Any, go: Any) -> None:
    try:
        asyncio.run(_visibility_reader(config, count, messages))
    except BaseException as error:
        messages.put(("error", f"reader: {error!r}"))
        raise


async def _visibility_reader(config: dict[str, Any], count: int, messages: Any) -> None:
    """Node B: poll for vis-0, vis-1, ... in turn; report when each first reads successfully."""
    async with await create_maif_storage(config) as storage:
        messages.put(("ready", None))
        for number in range(count):
            deadline = time.monotonic() + VISIBILITY_TIMEOUT_S
            while True:
                try:
                    await storage.read_block(f"vis-{number}")
                except BlockNotFoundError:
                    if time.monotonic() > deadline:
                        messages.put(("seen", (number, None)))
                        break
                    await asyncio.sleep(POLL_INTERVAL_S)
                    continue
                messages.put(("seen", (number, time.monotonic())))
                break


async def visibility_writer(config: dict[str, Any], count: int, messages: Any) -> dict[str, Any]:
    """Node A: write vis-<n>, note the ack instant, wait for B to report it; a short random pause."""
    rng = random.Random(5)
    blocks = corpus(count, "vis-")
    delays_s: list[float] = []
    missed = 0
    async with await create_maif_storage(config) as storage:
        for block in blocks:
            await asyncio.sleep(rng.uniform(0.005, 0.02))  # B is polling in its steady state
            await storage.write_block(block)
            acknowledged = time.monotonic()
            [(_, seen)] = await asyncio.to_thread(expect, messages, "seen", 1)
            if seen is None:
                missed += 1
            else:
                delays_s.append(seen - acknowledged)
    return {**latency_summary(delays_s, unit="s"), "not_visible_within_timeout": missed}


def measure_visibility(env: dict[str, str], workdir: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    count = sizes["visibility_samples"]
    directory = Path(tempfile.mkdtemp(prefix="visibility-", dir=workdir))
    try:
        with fresh_store(env) as store:
            reader = node(store, directory / "b", "node-b")
            with children([(visibility_reader, (reader, count))]) as (messages, _):
                expect(messages, "ready", 1)
                figures = with_load(lambda: asyncio.run(visibility_writer(
                    node(store, directory / "a", "node-a"), count, messages)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    renamed = {key.replace("latency_s_", "delay_s_"): value for key, value in figures.items()}
    return {**renamed, "poll_interval_s": POLL_INTERVAL_S,
            "note": "delay from node A's ack to node B's first successful read_block; B in another "
                    "process, one block at a time"}


# ---- driver --------------------------------------------------------------------------------------
SECTIONS: list[tuple[str, Callable[[dict[str, str], Path, dict[str, Any]], dict[str, Any]]]] = [
    ("ingest", measure_ingest), ("write_latency", measure_write_latency), ("reads", measure_reads),
    ("two_nodes", measure_two_nodes), ("visibility", measure_visibility), ("vectors", measure_vectors),
]


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"distributed_bench ({result['mode']}), {result['elapsed_s']:.0f} s, "
             f"load average at end {result['machine']['load_average_end']}"]
    shown = {
        "ingest applied blocks/s embedded": "ingest.embedded.applied_blocks_per_s",
        "ingest applied blocks/s distributed": "ingest.distributed.applied_blocks_per_s",
        "write p99 ms embedded": "write_latency.embedded.latency_ms_p99",
        "write p99 ms distributed": "write_latency.distributed.latency_ms_p99",
        "read p50 ms cold (fresh node)": "reads.distributed.cold_fresh_node.latency_ms_p50",
        "read p50 ms warm (same node)": "reads.distributed.warm_same_node_second_read.latency_ms_p50",
        "pgvector search p50 ms": "vectors.pgvector.default.latency_ms_p50",
        "usearch recall@10": "vectors.usearch.recall_at_10",
        "two nodes applied blocks/s": "two_nodes.two_nodes.applied_blocks_per_s",
        "visibility p50 s": "visibility.delay_s_p50",
    }
    for label, dotted in shown.items():
        value = figure(result, dotted)
        lines.append(f"  {label:40} {value:12.4g}" if isinstance(value, float | int) else f"  {label:40} -")
    for name, goal in result["goals"].items():
        verdict = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        measured = goal["measured"]
        shown_value = f"{measured:.3g}" if isinstance(measured, float | int) else "-"
        lines.append(f"  goal {name:40} {goal['goal']:>8}  measured {shown_value:>8}  {verdict}")
    return lines


def run(sizes: dict[str, Any], mode: str, output: Path) -> dict[str, Any]:
    began = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "distributed", "mode": mode, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "parameters": sizes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_start": load_average()},
    }

    def save() -> None:
        result["elapsed_s"] = time.perf_counter() - began
        result["machine"]["load_average_end"] = load_average()
        result["goals"] = goals(result)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")

    with private_servers() as (servers, env):
        result["servers"] = {"host": "127.0.0.1", "private_set": True,
                             "started_s": time.perf_counter() - began}
        result["versions"] = server_versions(servers, env)
        workdir = Path(tempfile.mkdtemp(prefix="nodes-", dir=servers.state_dir))
        for name, measure in SECTIONS:
            section_began = time.perf_counter()
            result[name] = measure(env, workdir, sizes)
            result[name]["section_s"] = time.perf_counter() - section_began
            save()
            print(f"{name}: done in {result[name]['section_s']:.0f} s", flush=True)
    save()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of 1-2 minutes")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: results/distributed_bench.json (--quick: ..._quick.json)")
    arguments = parser.parse_args()
    output = arguments.output or RESULTS_DIR / ("distributed_bench_quick.json" if arguments.quick
                                                else "distributed_bench.json")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unwinds: servers stopped
    try:
        result = run(QUICK if arguments.quick else FULL, "quick" if arguments.quick else "full", output)
    except ServersUnavailableError as error:
        print(f"distributed_bench: {error}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(summary_lines(result)))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
