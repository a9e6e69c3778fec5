"""Dedup benchmark: space MAIF's chunk store saves on an agent workload, next to restic on the same files.

The workload is generated deterministically with numpy (seed 7):
  - versioned documents: text-like documents, each saved in many versions with a few small edits
    (insertions, deletions, replacements) between versions, by several agents;
  - repeated images: incompressible image-like blobs, each stored again by several agents;
  - video segments: overlapping clips cut at arbitrary byte offsets from a few long recordings.

For each FastCDC parameter set (min/avg/max) and a fixed-size baseline, every artifact is split and
written to a fresh PackStore; "space saved" = 1 - (bytes on disk of packs + pack index) / logical
bytes. restic (repository v2, zstd "auto") backs up the same files written to a directory, and its
repository size is measured the same way. Throughput is the median of three runs.

    .venv/bin/python benchmarks/dedup_bench.py            (needs `restic` on PATH for the comparison)

Writes benchmarks/results/dedup_bench.json. Never part of the test run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import numpy as np

from maif.storage.chunking import chunk_avg_bytes, chunk_max_bytes, chunk_min_bytes, split_payload
from maif.storage.packs import PackStore

SEED = 7
AGENTS = 8
DOCUMENTS = 24
VERSIONS = 12
IMAGES = 20
IMAGE_COPIES = 4
RECORDINGS = 3
RECORDING_BYTES = 24 * 1024 * 1024
CLIPS_PER_RECORDING = 10
CDC_MINIMUMS = [4 * 1024, 8 * 1024, 16 * 1024, 64 * 1024]  # avg = 4x, max = 16x
FIXED_CHUNK_BYTES = 64 * 1024
RUNS = 3

Artifact = tuple[str, bytes]


def _text(rng: np.random.Generator, size: int, vocabulary: list[bytes]) -> bytes:
    words = rng.integers(0, len(vocabulary), size // 5)
    return b" ".join(vocabulary[i] for i in words)[:size]


def _edit(rng: np.random.Generator, document: bytes, vocabulary: list[bytes]) -> bytes:
    for _ in range(int(rng.integers(1, 4))):
        position = int(rng.integers(0, len(document)))
        kind = int(rng.integers(0, 3))
        snippet = _text(rng, int(rng.integers(20, 400)), vocabulary)
        if kind == 0:
            document = document[:position] + snippet + document[position:]
        elif kind == 1:
            document = document[:position] + document[position + len(snippet) :]
        else:
            document = document[:position] + snippet + document[position + len(snippet) :]
    return document


def workload() -> Iterator[Artifact]:
    rng = np.random.default_rng(SEED)
    vocabulary = [bytes(rng.integers(97, 123, int(rng.integers(2, 10)), dtype=np.uint8)) for _ in range(5000)]
    for number in range(DOCUMENTS):
        document = _text(rng, int(rng.integers(50_000, 400_000)), vocabulary)
        for version in range(VERSIONS):
            agent = (number + version) % AGENTS
            yield f"agent{agent}/doc{number:03d}/v{version:02d}.txt", document
            document = _edit(rng, document, vocabulary)
    images = [
        rng.integers(0, 256, int(rng.integers(200_000, 2_000_000)), dtype=np.uint8).tobytes()
        for _ in range(IMAGES)
    ]
    for number, image in enumerate(images):
        for copy in range(IMAGE_COPIES):
            yield f"agent{(number + copy * 3) % AGENTS}/images/img{number:03d}-{copy}.jpg", image
    for number in range(RECORDINGS):
        recording = rng.integers(0, 256, RECORDING_BYTES, dtype=np.uint8).tobytes()
        for clip in range(CLIPS_PER_RECORDING):
            start = int(rng.integers(0, RECORDING_BYTES // 2))
            length = int(rng.integers(RECORDING_BYTES // 8, RECORDING_BYTES // 2))
            yield (
                f"agent{clip % AGENTS}/video/rec{number}-clip{clip:02d}.mp4",
                recording[start : start + length],
            )


def fixed_chunks(data: bytes) -> list[tuple[bytes, memoryview]]:
    view = memoryview(data)
    return [
        (blake3.blake3(view[i : i + FIXED_CHUNK_BYTES]).digest(), view[i : i + FIXED_CHUNK_BYTES])
        for i in range(0, len(view), FIXED_CHUNK_BYTES)
    ]


def directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def run_maif(artifacts: list[Artifact], min_chunk_bytes: int | None) -> dict[str, float]:
    """One run: split every artifact (FastCDC, or fixed-size when None) and store it in fresh packs."""
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        store = PackStore(directory)
        chunk_count = 0
        for _, data in artifacts:
            pieces = (
                split_payload(data, min_chunk_bytes=min_chunk_bytes)
                if min_chunk_bytes
                else fixed_chunks(data)
            )
            chunk_count += len(pieces)
            store.put_chunks(pieces)
        store.close()
        elapsed_s = time.perf_counter() - started
        stats = store.stats()
        return {
            "disk_bytes": directory_bytes(Path(directory)),
            "elapsed_s": elapsed_s,
            "unique_chunks": stats["chunks"],
            "chunks_offered": chunk_count,
            "stored_payload_bytes": stats["stored_bytes"],
            "unique_raw_bytes": stats["raw_bytes"],
        }


def measure_maif(artifacts: list[Artifact], logical: int, min_chunk_bytes: int | None) -> dict:
    runs = [run_maif(artifacts, min_chunk_bytes) for _ in range(RUNS)]
    first = runs[0]
    median_s = statistics.median(run["elapsed_s"] for run in runs)
    label = (
        f"fastcdc {min_chunk_bytes // 1024}/{4 * min_chunk_bytes // 1024}/{16 * min_chunk_bytes // 1024} KiB"
        if min_chunk_bytes
        else f"fixed {FIXED_CHUNK_BYTES // 1024} KiB"
    )
    return {
        "chunking": label,
        "min_chunk_bytes": min_chunk_bytes,
        **{k: v for k, v in first.items() if k != "elapsed_s"},
        "space_saved": 1 - first["disk_bytes"] / logical,
        "dedup_only_saved": 1 - first["unique_raw_bytes"] / logical,
        "throughput_mb_s_median": logical / median_s / 1e6,
        "elapsed_s_median": median_s,
    }


def measure_restic(artifacts: list[Artifact], logical: int) -> dict:
    restic = shutil.which("restic")
    if restic is None:
        return {"available": False}
    version = subprocess.run([restic, "version"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as source, tempfile.TemporaryDirectory() as repositories:
        for name, data in artifacts:
            path = Path(source) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        environment = {
            **os.environ,
            "RESTIC_PASSWORD": "benchmark-only",
            "RESTIC_CACHE_DIR": repositories + "/cache",
        }
        sizes, times = [], []
        for run in range(RUNS):
            repository = Path(repositories) / f"repo{run}"
            subprocess.run(
                [restic, "init", "--repository-version", "2", "--repo", str(repository)],
                env=environment,
                capture_output=True,
                check=True,
            )
            started = time.perf_counter()
            subprocess.run(
                [restic, "backup", "--quiet", "--repo", str(repository), "."],
                cwd=source,
                env=environment,
                capture_output=True,
                check=True,
            )
            times.append(time.perf_counter() - started)
            sizes.append(directory_bytes(repository))
    median_s = statistics.median(times)
    return {
        "available": True,
        "version": version,
        "repository_bytes": sizes[0],
        "space_saved": 1 - sizes[0] / logical,
        "throughput_mb_s_median": logical / median_s / 1e6,
        "elapsed_s_median": median_s,
        "note": "restic backup reads files from disk (page cache) and encrypts; MAIF takes bytes in memory",
    }


def main() -> None:
    artifacts = list(workload())
    logical = sum(len(data) for _, data in artifacts)
    print(f"{len(artifacts)} artifacts, {logical / 1e6:.1f} MB logical", flush=True)
    rows = []
    for minimum in [*CDC_MINIMUMS, None]:
        row = measure_maif(artifacts, logical, minimum)
        rows.append(row)
        print(json.dumps(row), flush=True)
    restic = measure_restic(artifacts, logical)
    print("restic:", json.dumps(restic), flush=True)
    default = next(row for row in rows if row["min_chunk_bytes"] == chunk_min_bytes)
    report = {
        "benchmark": "dedup_bench",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "workload": {
            "artifacts": len(artifacts),
            "logical_bytes": logical,
            "agents": AGENTS,
            "documents": DOCUMENTS,
            "versions": VERSIONS,
            "images": IMAGES,
            "image_copies": IMAGE_COPIES,
            "recordings": RECORDINGS,
            "clips_per_recording": CLIPS_PER_RECORDING,
            "seed": SEED,
        },
        "maif_default_chunking": {"min": chunk_min_bytes, "avg": chunk_avg_bytes, "max": chunk_max_bytes},
        "maif_default": default,
        "maif_configurations": rows,
        "restic": restic,
        "target_space_saved": 0.60,
        "target_met": default["space_saved"] >= 0.60,
    }
    output = Path(__file__).parent / "results" / "dedup_bench.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
