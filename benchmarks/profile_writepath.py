"""The store's write path alone, for a profiler and for a figure that a loaded machine cannot blur.

    py-spy record -r 200 --threads -o docs/benchmarks/writepath-batch-after.svg -- \
        .venv/bin/python benchmarks/profile_writepath.py batch
    .venv/bin/python benchmarks/profile_writepath.py stages [--batches 20]

``batch``: ingest_bench's maif_batch (write_blocks of 1000 blocks of 1 KiB, then close), 30k blocks, in a
temporary directory; prints acknowledged and applied blocks/s.

``stages``: each stage of the path a block takes, run synchronously on one thread over batches of 1000
blocks of 1 KiB, timed in *thread CPU time* (time.thread_time), the minimum over ``--batches``: other work
on a shared machine stretches wall time but hardly the CPU time of the stage itself. Stages: the event
loop's part of the ack (encode, log item, framing), then the applier's (chunking and records, the pack
writes of chunks (hashing them: ``put_chunk_data``) and records, the SQLite index put, the pack flush). Writes
benchmarks/results/writepath_stages.json. Compare with another commit's code in the same session:

    git archive 837ad2d src | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/profile_writepath.py stages

Never part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest_bench import blocks, in_fresh_directory, maif_batch
from maif.format.codec import encode_blocks
from maif.storage import engine
from maif.storage.applier import LogItem, record_of
from maif.storage.index import SqliteMetadataIndex, _put
from maif.storage.packs import PackStore
from maif.storage.records import BlockRecord, encode_record
from maif.storage.wal import frame_records

BATCH_BLOCKS = 1000
RESULTS = Path(__file__).parent / "results" / "writepath_stages.json"


def stages(batches: int) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="maif-stages-", dir=os.environ.get("MAIF_BENCH_DIR")))
    packs = PackStore(directory / "packs")
    index = SqliteMetadataIndex(directory / "index.sqlite")
    connection = index._connection
    assert connection is not None
    lsns = itertools.count(1)
    best: dict[str, float] = {}

    def timed(stage: str, function: Callable[[], Any]) -> Any:
        started = time.thread_time()
        result = function()
        per_block_us = (time.thread_time() - started) / BATCH_BLOCKS * 1e6
        best[stage] = min(best.get(stage, per_block_us), per_block_us)
        return result

    try:
        for batch in range(batches):
            group = blocks(BATCH_BLOCKS, f"s{batch}-", batch * BATCH_BLOCKS)  # time-ordered, as written

            def ack(group: list = group) -> list[LogItem]:
                items = [engine._item_of(block, encoded, 0, digest)
                         for block, (encoded, digest) in zip(group, encode_blocks(group), strict=True)]
                b"".join(frame_records(1, [item.encoded for item in items]))
                return items

            items = timed("ack_encode_and_frame_us_per_block", ack)
            for item in items:
                item.lsn = next(lsns)

            def pieces_of(items: list[LogItem] = items) -> list[bytes]:
                return [item.block.data for item in items]  # 1 KiB: one chunk each (Applier.apply)

            pieces = timed("apply_chunking_us_per_block", pieces_of)
            digests, _ = timed("apply_pack_chunks_us_per_block",
                               lambda pieces=pieces: packs.put_chunk_data(pieces))

            def records_of(items: list[LogItem] = items, digests: list[bytes] = digests) -> list[BlockRecord]:
                return [record_of(item, (digest,)) for item, digest in zip(items, digests, strict=True)]

            records = timed("apply_records_us_per_block", records_of)
            timed("apply_pack_records_us_per_block",
                  lambda records=records: packs.put_records([encode_record(record) for record in records]))
            timed("apply_index_put_us_per_block", lambda records=records: _put(connection, records, None))
            timed("apply_pack_flush_us_per_block", packs.flush)
    finally:
        packs.close()
        connection.close()
        shutil.rmtree(directory, ignore_errors=True)
    best["apply_total_us_per_block"] = sum(value for key, value in best.items() if key.startswith("apply_"))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("batch", "stages"))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    if arguments.mode == "batch":
        print(in_fresh_directory(lambda d: asyncio.run(maif_batch(d, 30_000))))
        return
    figures = stages(arguments.batches)
    result = {"benchmark": "writepath_stages", "record_bytes": 1024, "batch_blocks": BATCH_BLOCKS,
              "batches": arguments.batches, "statistic": "minimum thread CPU time per block",
              "figures": figures,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_at_end": os.getloadavg()}}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
