"""The process the fault campaign kills -9 (scripts/fault_campaign.py, tests/storage/test_fault_campaign.py).

Two modes, both reporting every acknowledgement on an append-only log file, unbuffered, and only after the
call returned:

    ops    a random mix of writes of new blocks, overwrites, deletes, compactions, tier migrations, exports
           and imports on one store, until it is killed
    fill   a fixed sequence that leaves every file kind on disk (sealed, active and cold packs, the pack
           index, remote.list, the vector index, the metadata index, log segments holding records past the
           checkpoint, the newest not yet applied), then kills itself with SIGKILL after its last
           acknowledgement

Run as ``python fault_child.py zygote``: it reads ``run <json>`` lines on stdin, forks one child per line
(the imports are paid once) and answers ``pid N``. The json holds mode, data_dir, seed, state (a json file
with the blocks present when the child starts and the next free block number), log and workdir.

Log lines (``op`` numbers are unique within a child; a block's content is :func:`make_block` of its id and
its tag ``"<seed>.<op>"``, so the parent rebuilds every version):

    K <public key hex>                      the signing key of this child's exports
    O                                       the store is open
    B <op> <kind> <arg> <id>...             an operation starts (kind w, d, e, i, c, m); arg is the
                                            container of e and i, "-" otherwise
    W <op> <id> <lsn> <digest hex>          block written (acknowledged)
    D <op> <id> <lsn>                       block deleted (acknowledged)
    N <op> <id>                             delete answered "not found" (the child thought it present)
    S <op> <step>                           a compaction step finished
    C <op> <packs rewritten> <bytes>        compaction finished
    M <op> <packs moved>                    migration finished
    E <op> <path> <count> <id>=<tag>...     export finished (the container holds these versions)
    I <op> <path> <count>                   import finished: every block of the container is written
    X <error>                               the child failed
    F                                       fill finished; SIGKILL follows

Operations on one block id never overlap (a lock per id, taken in sorted order), so the log order of the
acknowledgements of one id is their order in the write-ahead log.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import struct
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the zygote forks: keep it single-threaded

import blake3

from maif.errors import BlockNotFoundError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.backends.local import (
    LocalChunkStore,
    LocalMetadataIndex,
    LocalObjectStore,
    LocalVectorIndex,
)
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.tiers import TieredChunkStore, TierPolicy

PACK_BYTES = 96 * 1024  # small packs: many sealed packs to compact, migrate and damage
WAL_SEGMENT_BYTES = 64 * 1024  # small segments: the log rotates, checkpoints recycle it
COLD_AFTER_S = 2.0  # ops mode: packs sealed more than 2 s ago go cold when a migration runs
WRITERS = 4
LIVE_BLOCKS_SOFT_MAX = 1500  # beyond, writers mostly overwrite and delete
_SHARED = [blake3.blake3(f"shared-{n}".encode()).digest(9_000 + n * 7_000) for n in range(3)]


# ---- what both sides share: the blocks, the store ---------------------------------------------------
def make_block(block_id: str, tag: str) -> MAIFBlock:
    """Version ``tag`` of block ``block_id``: a pure function (the parent rebuilds every version)."""
    material = blake3.blake3(f"{block_id}|{tag}".encode())
    head = material.digest(8)
    draw = int.from_bytes(head, "little")
    timestamp = 1_700_000_000.0 + draw % 1_000_000
    if draw % 9 == 0:  # an embedding, searchable
        vector = [((b % 200) - 100) / 100.0 + 0.001 for b in material.digest(8)]
        return MAIFBlock(id=block_id, block_type=MAIFBlockType.EMBEDDING, data=struct.pack("<8f", *vector),
                         agent_id="fault", metadata={"v": tag}, timestamp=timestamp)
    shape = draw // 9 % 10
    if shape < 2:  # a payload other blocks share (deduplicated chunks)
        data = _SHARED[draw // 90 % len(_SHARED)]
    elif shape == 2:  # several chunks
        data = material.digest(30_000 + draw // 90 % 50_000)
    else:
        data = material.digest(64 + draw // 90 % 6_000)
    return MAIFBlock(id=block_id, data=data, agent_id="fault", metadata={"v": tag}, timestamp=timestamp)


def store_backends(data_dir: Path, cold_after_age_s: float = COLD_AFTER_S) -> Backends:
    warm = LocalChunkStore(data_dir / "packs", pack_bytes_max=PACK_BYTES)
    chunks = TieredChunkStore(warm, LocalObjectStore(data_dir / "cold"), TierPolicy(cold_after_age_s, 0.0))
    return Backends(chunks, LocalMetadataIndex(data_dir / "index.sqlite"),
                    LocalVectorIndex(data_dir / "vectors"), LRUHotCache(1 << 20))


async def open_store(data_dir: Path, *, repair: bool = False, cold_after_age_s: float = COLD_AFTER_S,
                     **config: Any) -> MAIFStorage:
    """The campaign's store: small packs and log segments, no background tier task."""
    MAIFStorage.wal_segment_bytes_max = WAL_SEGMENT_BYTES
    return await create_maif_storage({"data_dir": str(data_dir), "tier_interval_s": 0, **config},
                                     backends=store_backends(data_dir, cold_after_age_s), repair=repair)


# ---- the child ---------------------------------------------------------------------------------------
class Child:
    def __init__(self, storage: MAIFStorage, seed: int, log_fd: int, present: dict[str, str], next_id: int,
                 workdir: Path, config: dict[str, Any]) -> None:
        from maif.format.signing import generate_signing_key, raw_public_bytes

        self.storage = storage
        self.seed = seed
        self.log_fd = log_fd
        self.present = present  # id -> tag of every block this child knows to exist
        self.next_id = next_id
        self.workdir = workdir
        self.config = config
        self.op = 0
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.key = generate_signing_key()
        self.exports: list[tuple[str, dict[str, str]]] = []
        self.emit(f"K {raw_public_bytes(self.key.public_key()).hex()}\n")

    def emit(self, text: str) -> None:
        os.write(self.log_fd, text.encode())

    def next_op(self) -> int:
        self.op += 1
        return self.op

    def new_ids(self, count: int) -> list[str]:
        ids = [f"k{self.next_id + n}" for n in range(count)]
        self.next_id += count
        return ids

    async def locked(self, ids: list[str]) -> list[asyncio.Lock]:
        taken = []
        for block_id in sorted(set(ids)):
            lock = self.locks[block_id]
            await lock.acquire()
            taken.append(lock)
        return taken

    async def write(self, ids: list[str]) -> None:
        taken = await self.locked(ids)
        try:
            op = self.next_op()
            tag = f"{self.seed}.{op}"
            blocks = [make_block(block_id, tag) for block_id in ids]
            self.emit(f"B {op} w - {' '.join(ids)}\n")
            if len(blocks) == 1:
                receipts = [await self.storage.write_block(blocks[0])]
            else:
                receipts = await self.storage.write_blocks(blocks)
            self.emit("".join(f"W {op} {r.block_id} {r.lsn} {r.digest.hex()}\n" for r in receipts))
            for block_id in ids:
                self.present[block_id] = tag
        finally:
            for lock in taken:
                lock.release()

    async def delete(self, block_id: str) -> None:
        taken = await self.locked([block_id])
        try:
            if block_id not in self.present:
                return  # deleted by another task meanwhile
            op = self.next_op()
            self.emit(f"B {op} d - {block_id}\n")
            try:
                receipt = await self.storage.delete_block(block_id)
            except BlockNotFoundError:
                self.emit(f"N {op} {block_id}\n")
            else:
                self.emit(f"D {op} {block_id} {receipt.lsn}\n")
            del self.present[block_id]
        finally:
            for lock in taken:
                lock.release()

    async def compact(self, garbage_fraction_min: float) -> None:
        op = self.next_op()
        self.emit(f"B {op} c -\n")
        report = await self.storage.compact(garbage_fraction_min,
                                            on_step=lambda step: self.emit(f"S {op} {step}\n"))
        self.emit(f"C {op} {report.packs_rewritten} {report.bytes_reclaimed}\n")

    async def migrate(self) -> None:
        op = self.next_op()
        self.emit(f"B {op} m -\n")
        moved = await self.storage.migrate_tiers()
        self.emit(f"M {op} {len(moved)}\n")

    async def export(self, ids: list[str]) -> None:
        taken = await self.locked(ids)
        try:
            ids = sorted(block_id for block_id in set(ids) if block_id in self.present)
            if not ids:
                return
            op = self.next_op()
            path = self.workdir / f"export-{self.seed}-{op}.maif"
            self.emit(f"B {op} e {path} {' '.join(ids)}\n")
            version = await self.storage.export(path, ids, self.key)
            versions = {block_id: self.present[block_id] for block_id in ids}
            self.emit(f"E {op} {path} {version.block_count} "
                      + " ".join(f"{block_id}={tag}" for block_id, tag in versions.items()) + "\n")
            self.exports.append((str(path), versions))
        finally:
            for lock in taken:
                lock.release()

    async def import_one(self, path: str, versions: dict[str, str]) -> None:
        taken = await self.locked(list(versions))
        try:
            op = self.next_op()
            self.emit(f"B {op} i {path} {' '.join(sorted(versions))}\n")
            count = await self.storage.import_maif(path, [self.key.public_key()])
            self.emit(f"I {op} {path} {count}\n")
            self.present.update(versions)
        finally:
            for lock in taken:
                lock.release()

    def sample_present(self, rng: random.Random, count: int) -> list[str]:
        if not self.present:
            return []
        return rng.sample(list(self.present), min(count, len(self.present)))

    async def writer(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        while True:
            draw = rng.random()
            new_share = 0.5 if len(self.present) < LIVE_BLOCKS_SOFT_MAX else 0.15
            if draw < new_share or len(self.present) < 20:
                await self.write(self.new_ids(rng.choice([1, 1, 1, 3, 12])))
            elif draw < new_share + (1 - new_share) * 0.55:
                await self.write(self.sample_present(rng, rng.choice([1, 1, 2, 6])))
            else:
                for block_id in self.sample_present(rng, 1):
                    await self.delete(block_id)

    async def maintainer(self) -> None:
        rng = random.Random(self.seed * 1000 + 999)
        while True:
            await asyncio.sleep(rng.random() * 0.08)
            draw = rng.random()
            if draw < 0.35:
                await self.compact(rng.choice([0.05, 0.2, 0.5]))
            elif draw < 0.5:
                await self.migrate()
            elif draw < 0.75 or not self.exports:
                await self.export(self.sample_present(rng, rng.choice([5, 20, 60])))
            else:
                await self.import_one(*rng.choice(self.exports))

    async def run_ops(self) -> None:
        await asyncio.gather(*(self.writer(worker) for worker in range(WRITERS)), self.maintainer())

    async def run_fill(self) -> None:
        """A fixed sequence, in two opens: the first closed cleanly (checkpointed, log recycled), the second
        left by SIGKILL (its records still in the log)."""
        rng = random.Random(self.seed)
        for _ in range(40):
            await self.write(self.new_ids(rng.choice([1, 3, 12])))
        for _ in range(30):
            await self.write(self.sample_present(rng, rng.choice([1, 4])))
        for block_id in self.sample_present(rng, 60):
            await self.delete(block_id)
        await self.compact(0.05)
        await self.storage.close()
        self.storage = await open_store(Path(self.storage.config.data_dir), cold_after_age_s=0.0,
                                        **self.config)
        self.emit("O\n")
        await self.migrate()  # every sealed pack goes cold
        await self.export(self.sample_present(rng, 20))
        for _ in range(30):
            await self.write(self.new_ids(rng.choice([1, 3, 12])))
        for _ in range(20):
            await self.write(self.sample_present(rng, rng.choice([1, 4])))
        for block_id in self.sample_present(rng, 25):
            await self.delete(block_id)
        await self.import_one(*self.exports[0])
        await self.export(self.sample_present(rng, 10))
        # A last burst of concurrent writers: their records are acknowledged, and the kill right after
        # leaves the newest of them in the log only (not yet applied to the packs).
        await asyncio.gather(*(self.write(self.new_ids(rng.choice([1, 3]))) for _ in range(40)))


async def child_main(arguments: dict[str, Any], log_fd: int) -> None:
    data_dir = Path(arguments["data_dir"])
    state = json.loads(Path(arguments["state"]).read_text()) if arguments.get("state") else {}
    rng = random.Random(arguments["seed"])
    fill = arguments["mode"] == "fill"
    config = {"batch_timeout_ms": rng.choice([0.0, 1.0, 2.0]), "batch_size": rng.choice([8, 100, 1000]),
              "max_memory_mb": 16}
    storage = await open_store(data_dir, cold_after_age_s=0.0 if fill else COLD_AFTER_S, **config)
    os.write(log_fd, b"O\n")
    child = Child(storage, arguments["seed"], log_fd, dict(state.get("present", {})), state.get("next_id", 0),
                  Path(arguments["workdir"]), config)
    if fill:
        await child.run_fill()
        os.write(log_fd, b"F\n")
        os.kill(os.getpid(), signal.SIGKILL)
    await child.run_ops()


def run_child(arguments: dict[str, Any]) -> int:
    """The forked child's whole life; it must never return into the zygote's loop."""
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(arguments["log"], os.O_WRONLY | os.O_APPEND)  # the parent created it empty
    except BaseException:
        return 2
    try:
        asyncio.run(child_main(arguments, fd))
    except BaseException as error:
        os.write(fd, f"X {error!r}\n".replace("\n", " ").rstrip().encode() + b"\n")
        return 1
    return 0


def zygote() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    for line in sys.stdin:
        command, _, rest = line.strip().partition(" ")
        if command != "run":
            return
        arguments = json.loads(rest)
        pid = os.fork()
        if pid == 0:
            os._exit(run_child(arguments))
        sys.stdout.write(f"pid {pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    zygote()
