"""Fault campaign (issue 12): kill -9 at random instants, and damage to every file kind at rest.

    .venv/bin/python scripts/fault_campaign.py --rounds 1000 [--seed 1] [--workdir DIR]
        [--kinds kill,corrupt] [--corrupt-every 5] [--summary benchmarks/results/fault_campaign.json]

Kill rounds. A child process (tests/storage/fault_child.py, forked from a zygote that paid the imports)
runs a random mix of writes of new blocks, overwrites, deletes, compactions, tier migrations, exports and
imports on a store, and logs every acknowledgement only after the call returned. It is killed with SIGKILL
after a random delay (sometimes while it is still opening and recovering the store). The parent then opens
the store and reads EVERY block the directory ever held:
  - the last acknowledged write of each block (not deleted or overwritten since) reads back bit-exact,
    else it is ``acknowledged_lost``; an acknowledged delete stays deleted, else ``deletes_undone``;
  - a block whose write, delete or import was in flight reads back as its old or its new version, nothing
    else (``garbage`` otherwise, including any read error);
  - ``list_blocks`` lists exactly the blocks that read back; ``check()`` is ok; every acknowledged export
    verifies against the child's key and holds exactly the versions it acknowledged.
What the parent observed becomes the starting state of the next child; directories are reused for
``--rounds-per-directory`` rounds, so children also recover from earlier kills.

Corruption rounds (on a store at rest). A child fills a template store with a fixed sequence (sealed,
active and cold packs, pack index, remote.list, vectors, metadata index, and log segments holding records
past the checkpoint because it ends with SIGKILL). For each file kind in turn, a copy of the template is
damaged (bytes flipped, truncated or deleted, the mode drawn at random), then opened (a
WALCorruptionError at open is followed by an explicit ``repair=True``), every block read, ``check(1.0)``
run; if anything is wrong, ``repair()`` and every block read again; then the store is reopened once more
and must read the same. Derived state (index.sqlite, vectors/, packs/index.log, packs/remote.list) must
come back with no block lost (``acknowledged_lost`` otherwise). For authoritative damage (log segments,
packs, cold pack objects) a block that no longer reads back as acknowledged must be NAMED: its id in a
``check()`` problem, a repair line, the WALCorruptionError, or its LSN within the log repair's lost LSNs;
``silently_dropped`` counts those that are not. A record lost to damage of the log's last group is
indistinguishable from a torn write (ADR 0040): it is counted apart, as ``torn_tail_lost``.

Deterministic per seed: the schedule (child seeds, delays, damaged kind, mode and offsets) is drawn from
``--seed``; where the kill lands is up to the machine. On the first violation the data directory and the
round's log are kept and the seed and round printed (``--keep-going`` records every violation instead).
The JSON summary goes to ``--summary`` (the failing round's log beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "storage"))

from fault_child import make_block, open_store  # noqa: E402

from maif.errors import BlockNotFoundError, MAIFError, WALCorruptionError  # noqa: E402

CHILD = ROOT / "tests" / "storage" / "fault_child.py"
SUMMARY = ROOT / "benchmarks" / "results" / "fault_campaign.json"
CORRUPT_KINDS = ("wal_middle", "wal_tail", "index_sqlite", "vectors", "pack_index", "remote_list",
                 "sealed_pack", "active_pack", "cold_pack")
DERIVED_KINDS = frozenset({"index_sqlite", "vectors", "pack_index", "remote_list"})
MODES = {
    "wal_middle": ("flip_payload", "flip_header", "truncate_segment", "delete_segment"),
    "wal_tail": ("flip_last_record", "truncate_last_record", "flip_before_last_record"),
    "index_sqlite": ("flip_pages", "flip_wal_file", "truncate", "garbage_header", "delete"),
    "vectors": ("flip", "truncate", "delete_current", "delete_dir"),
    "pack_index": ("flip", "truncate", "delete"),
    "remote_list": ("flip", "truncate", "delete"),
    "sealed_pack": ("flip", "truncate", "delete"),
    "active_pack": ("flip", "truncate", "delete"),
    "cold_pack": ("flip", "truncate", "delete"),
}
_WAL_SEGMENT_HEADER = 32
_WAL_RECORD = struct.Struct("<4sIQI")  # magic, payload length, LSN, CRC-32
_SEAL_MAGIC = b"MAIFSEAL"
_PACK_HEADER = 16
ABSENT = None  # the value of a block that does not exist (deleted, or never written)


# ---- the child processes ------------------------------------------------------------------------------
class Zygote:
    """One process that paid the imports; it forks a child per round (tests/storage/fault_child.py)."""

    def __init__(self) -> None:
        environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=environment)

    def spawn(self, **arguments: Any) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        Path(arguments["log"]).write_bytes(b"")  # created empty here: a child killed early leaves it empty
        self.process.stdin.write("run " + json.dumps(arguments) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().split()
        assert answer and answer[0] == "pid", answer
        return int(answer[1])

    def close(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        self.process.wait(timeout=30)


def wait_gone(pid: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.002)
    raise AssertionError(f"child {pid} did not end")


def kill_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return  # it ended on its own: its log says why
    wait_gone(pid, 30.0)


# ---- what a child's log says ---------------------------------------------------------------------------
@dataclass
class ChildLog:
    """Acknowledgements and operations in flight, from one child's log (complete lines only)."""

    seed: int
    public_key: str | None = None
    opened: int = 0
    finished: bool = False
    errors: list[str] = field(default_factory=list)
    acked: dict[str, list[tuple[str | None, int | None]]] = field(default_factory=lambda: defaultdict(list))
    inflight: dict[str, set[str | None]] = field(default_factory=lambda: defaultdict(set))
    inflight_ops: list[str] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)
    exports: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    not_found: list[str] = field(default_factory=list)
    writes_acked: int = 0
    deletes_acked: int = 0
    compactions: int = 0
    migrations: int = 0
    imports: int = 0
    max_id: int = -1


def parse_log(path: Path, seed: int, present_before: set[str]) -> ChildLog:
    log = ChildLog(seed)
    begun: dict[int, tuple[str, str, list[str]]] = {}
    done: dict[int, set[str]] = defaultdict(set)
    finished_ops: set[int] = set()
    compaction_step: dict[int, str] = {}
    last_lsn = 0  # the fill is sequential: an import's blocks follow the last LSN acknowledged before it
    for line in path.read_text(errors="replace").splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # cut by the kill: never fully reported
        words = line.split()
        if not words:
            continue
        tag = words[0]
        if tag == "K":
            log.public_key = words[1]
        elif tag == "O":
            log.opened += 1
        elif tag == "F":
            log.finished = True
        elif tag == "X":
            log.errors.append(line.strip())
        elif tag == "B":
            op, kind, argument, ids = int(words[1]), words[2], words[3], words[4:]
            begun[op] = (kind, argument, ids)
            log.touched.update(ids)
            for block_id in ids:
                if block_id.startswith("k") and block_id[1:].isdigit():
                    log.max_id = max(log.max_id, int(block_id[1:]))
        elif tag == "W":
            op, block_id, lsn = int(words[1]), words[2], int(words[3])
            log.acked[block_id].append((f"{seed}.{op}", lsn))
            done[op].add(block_id)
            log.writes_acked += 1
            last_lsn = max(last_lsn, lsn)
        elif tag == "D":
            op, block_id, lsn = int(words[1]), words[2], int(words[3])
            log.acked[block_id].append((ABSENT, lsn))
            done[op].add(block_id)
            log.deletes_acked += 1
            last_lsn = max(last_lsn, lsn)
        elif tag == "N":
            op, block_id = int(words[1]), words[2]
            log.not_found.append(block_id)
            log.acked[block_id].append((ABSENT, None))
            done[op].add(block_id)
        elif tag == "S":
            compaction_step[int(words[1])] = words[2]
        elif tag == "C":
            finished_ops.add(int(words[1]))
            log.compactions += 1
        elif tag == "M":
            finished_ops.add(int(words[1]))
            log.migrations += 1
        elif tag == "E":
            op, container, count = int(words[1]), words[2], int(words[3])
            versions = dict(pair.split("=", 1) for pair in words[4:])
            log.exports[container] = (count, versions)
            finished_ops.add(op)
        elif tag == "I":
            op, container = int(words[1]), words[2]
            _, versions = log.exports[container]
            for position, block_id in enumerate(sorted(versions)):
                log.acked[block_id].append((versions[block_id], last_lsn + 1 + position))
                done[op].add(block_id)
            last_lsn += len(versions)
            log.imports += 1
            finished_ops.add(op)
    for op, (kind, argument, ids) in sorted(begun.items()):
        if op in finished_ops or (ids and set(ids) <= done[op]):
            continue
        if kind == "w":
            fresh = all(block_id not in present_before and block_id not in log.acked for block_id in ids)
            log.inflight_ops.append("write" if fresh else "overwrite")
        else:
            name = {"d": "delete", "c": "compact", "m": "migrate", "e": "export", "i": "import"}[kind]
            if kind == "c":
                name += ":" + compaction_step.get(op, "marking")
            log.inflight_ops.append(name)
        for block_id in ids:
            if block_id in done[op]:
                continue
            if kind == "w":
                log.inflight[block_id].add(f"{seed}.{op}")
            elif kind == "d":
                log.inflight[block_id].add(ABSENT)
            elif kind == "i":
                log.inflight[block_id].add(log.exports[argument][1][block_id])
    return log


# ---- reading a store back -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """What reading one block gave: its version (tag), ABSENT, or a failure ("garbage" / "error")."""

    value: str | None
    failure: str | None = None  # "garbage: ..." or "error: ..."

    def describe(self) -> str:
        return self.failure or ("absent" if self.value is ABSENT else f"version {self.value}")


async def observe(storage: Any, ids: list[str]) -> dict[str, Seen]:
    seen: dict[str, Seen] = {}
    for block_id in ids:
        try:
            block = await storage.read_block(block_id)
        except BlockNotFoundError:
            seen[block_id] = Seen(ABSENT)
            continue
        except MAIFError as error:
            seen[block_id] = Seen(ABSENT, f"error: {type(error).__name__}: {error.message}")
            continue
        tag = block.metadata.get("v") if isinstance(block.metadata, dict) else None
        if not isinstance(tag, str) or block != make_block(block_id, tag):
            seen[block_id] = Seen(ABSENT, f"garbage: a block that is no version written (metadata {tag!r})")
        else:
            seen[block_id] = Seen(tag)
    return seen


async def listed_ids(storage: Any) -> set[str]:
    return {summary.block_id for summary in await storage.list_blocks(limit=100_000)}


def verify_export(container: str, public_key_hex: str, count: int, versions: dict[str, str]) -> str | None:
    """None when the container verifies against the key and holds exactly ``versions``; else why not."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from maif.format.container import verify_container
    from maif.format.reader import ContainerReader

    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
    report = verify_container(container, [key])
    if not report.ok or report.block_count != count or count != len(versions):
        return f"export {container}: verified {report.ok}, {report.block_count} block(s), acked {count}"
    reader = ContainerReader.open(container)
    try:
        blocks = [reader.block(index) for index in range(len(reader))]
    finally:
        reader.close()
    wanted = {block_id: make_block(block_id, tag) for block_id, tag in versions.items()}
    if sorted(block.id for block in blocks) != sorted(wanted) or any(b != wanted[b.id] for b in blocks):
        return f"export {container}: its blocks differ from the versions acknowledged"
    return None


# ---- the tally ---------------------------------------------------------------------------------------
@dataclass
class Tally:
    rounds: int = 0
    kill_rounds: int = 0
    kills: int = 0
    kills_in_flight: Counter[str] = field(default_factory=Counter)
    corruptions: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    templates: int = 0
    writes_acked: int = 0
    deletes_acked: int = 0
    compactions_acked: int = 0
    migrations_acked: int = 0
    exports_verified: int = 0
    imports_acked: int = 0
    block_reads_verified: int = 0
    acknowledged_blocks_verified: int = 0
    acknowledged_lost: int = 0
    deletes_undone: int = 0
    garbage: int = 0
    silently_dropped: int = 0
    named_lost: Counter[str] = field(default_factory=Counter)
    torn_tail_lost: int = 0
    wal_corruption_errors: int = 0
    open_refused: Counter[str] = field(default_factory=Counter)
    derived_needed_repair: Counter[str] = field(default_factory=Counter)
    repairs_seen: Counter[str] = field(default_factory=Counter)
    repair_lines: set[str] = field(default_factory=set)
    check_problem_rounds: Counter[str] = field(default_factory=Counter)
    violations: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)

    def violation(self, round_number: int, seed: int, what: str, detail: str) -> None:
        self.violations.append({"round": round_number, "seed": seed, "what": what, "detail": detail[:2000]})

    def finding(self, round_number: int, kind: str, detail: str) -> None:
        if len(self.findings) < 200:
            self.findings.append({"round": round_number, "kind": kind, "detail": detail[:2000]})

    def note_repairs(self, lines: list[str]) -> None:
        for line in lines:
            self.repairs_seen[_repair_category(line)] += 1
            shape = re.sub(r"/\S+/", "/.../", line)
            shape = re.sub(r"\d+", "N", re.sub(r"\b[0-9a-f]{12,}\b", "H", shape))[:160]
            if len(self.repair_lines) < 60:
                self.repair_lines.add(shape)


def _repair_category(line: str) -> str:
    for needle, name in (("metadata index rebuilt", "metadata index rebuilt"),
                         ("vector index rebuilt", "vector index rebuilt"),
                         ("indexed again after the pack index", "cold pack reindexed"),
                         ("missing from remote.list", "cold pack adopted into remote.list"),
                         ("pack index", "pack index rebuilt"),
                         ("re-checked", "metadata index re-checked"), ("quick_check", "sqlite quarantined"),
                         ("record(s) restored", "block records restored"),
                         ("record(s) written", "block records written"),
                         ("cold tier", "named: cold pack missing"), ("unreadable", "named: block unreadable"),
                         ("frame", "named: damaged frame"), ("WAL repair", "wal repaired")):
        if needle in line:
            return name
    return "other"


# ---- kill rounds ----------------------------------------------------------------------------------------
@dataclass
class Directory:
    """One data directory used by consecutive kill rounds, and what the parent last saw in it."""

    path: Path
    state: dict[str, str | None] = field(default_factory=dict)  # id -> version, ABSENT once deleted
    next_id: int = 0

    def present(self) -> dict[str, str]:
        return {block_id: value for block_id, value in self.state.items() if value is not ABSENT}


def kill_round(zygote: Zygote, directory: Directory, round_number: int, rng: random.Random, tally: Tally,
               workdir: Path, max_delay_s: float) -> Path | None:
    """One kill round; returns the child's log path when it found a violation, else None."""
    seed = rng.randrange(1 << 30)
    delay = rng.choice([0.0, 0.05, 0.2]) + rng.random() * max_delay_s
    state_path = workdir / "state.json"
    state_path.write_text(json.dumps({"present": directory.present(), "next_id": directory.next_id}))
    log_path = workdir / "child.log"
    exports = workdir / "exports"
    exports.mkdir(exist_ok=True)
    pid = zygote.spawn(mode="ops", data_dir=str(directory.path), seed=seed, state=str(state_path),
                       log=str(log_path), workdir=str(exports))
    time.sleep(delay)
    kill_and_wait(pid)
    tally.kills += 1
    tally.kill_rounds += 1
    before = set(directory.present())
    log = parse_log(log_path, seed, before)
    violations_before = len(tally.violations)
    if not log.opened:
        tally.kills_in_flight["opening"] += 1
    for name in log.inflight_ops or (["idle"] if log.opened else []):
        tally.kills_in_flight[name] += 1
    tally.writes_acked += log.writes_acked
    tally.deletes_acked += log.deletes_acked
    tally.compactions_acked += log.compactions
    tally.migrations_acked += log.migrations
    tally.imports_acked += log.imports
    for error in log.errors:
        tally.violation(round_number, seed, "child_error", error)
    for block_id in log.not_found:
        tally.violation(round_number, seed, "delete_not_found",
                        f"the child deleted {block_id!r}, present when it started, and was told not found")
    ids = sorted(set(directory.state) | set(log.acked) | set(log.inflight) | log.touched)
    try:
        seen, listed, report = asyncio.run(_read_back_kill(directory.path, ids))
    except Exception as error:  # noqa: BLE001 - a store that does not open after kill -9: a violation
        tally.violation(round_number, seed, "open_failed", repr(error))
        return log_path
    tally.note_repairs(report.repaired)
    for block_id in ids:
        events = log.acked.get(block_id)
        latest = events[-1][0] if events else directory.state.get(block_id, ABSENT)
        allowed = {latest} | log.inflight.get(block_id, set())
        got = seen[block_id]
        tally.block_reads_verified += 1
        if latest is not ABSENT:
            tally.acknowledged_blocks_verified += 1
        if got.failure is not None:
            if got.failure.startswith("garbage"):
                tally.garbage += 1
                what = "garbage"
            elif latest is not ABSENT:
                tally.acknowledged_lost += 1
                what = "acknowledged_lost"
            else:
                what = "unreadable"
            tally.violation(round_number, seed, what, f"block {block_id!r}: {got.failure}; allowed "
                            f"{sorted(map(str, allowed))}")
        elif got.value not in allowed:
            if latest is ABSENT:
                tally.deletes_undone += 1
                what = "delete_undone"
            else:
                tally.acknowledged_lost += 1
                what = "acknowledged_lost"
            in_flight = sorted(map(str, log.inflight.get(block_id, set())))
            tally.violation(round_number, seed, what, f"block {block_id!r}: read {got.describe()}, "
                            f"acknowledged {latest!r}, in flight {in_flight}")
        directory.state[block_id] = got.value if got.failure is None else latest
    present_now = {block_id for block_id in ids if seen[block_id].value is not ABSENT}
    if listed != present_now:
        tally.violation(round_number, seed, "listing",
                        f"listed but not read: {sorted(listed - present_now)[:10]}; "
                        f"read but not listed: {sorted(present_now - listed)[:10]}")
    if not report.ok:
        tally.check_problem_rounds["kill"] += 1
        tally.violation(round_number, seed, "check_not_ok", "; ".join(report.problems[:10]))
    for container, (count, versions) in log.exports.items():
        problem = verify_export(container, log.public_key or "", count, versions)
        if problem:
            tally.violation(round_number, seed, "export", problem)
        else:
            tally.exports_verified += 1
    for path in exports.glob("*"):
        path.unlink()
    directory.next_id = max(directory.next_id, log.max_id + 1)
    return log_path if len(tally.violations) > violations_before else None


async def _read_back_kill(data_dir: Path, ids: list[str]) -> tuple[dict[str, Seen], set[str], Any]:
    storage = await open_store(data_dir)
    try:
        seen = await observe(storage, ids)
        listed = await listed_ids(storage)
        report = await storage.check(0.0)  # every block was read back (digest-verified) above
    finally:
        await storage.close()
    return seen, listed, report


# ---- corruption rounds ------------------------------------------------------------------------------------
@dataclass
class Template:
    """A store at rest left by the fill child, and what it acknowledged: id -> (version, LSN)."""

    path: Path
    seed: int
    expected: dict[str, tuple[str | None, int | None]]


def build_template(zygote: Zygote, workdir: Path, seed: int) -> Template:
    path = workdir / "template"
    shutil.rmtree(path, ignore_errors=True)
    exports = workdir / "template-exports"
    shutil.rmtree(exports, ignore_errors=True)
    exports.mkdir()
    log_path = workdir / "template.log"
    pid = zygote.spawn(mode="fill", data_dir=str(path), seed=seed, state=None, log=str(log_path),
                       workdir=str(exports))
    wait_gone(pid)
    log = parse_log(log_path, seed, set())
    if not log.finished or log.errors:
        raise RuntimeError(f"the fill child (seed {seed}) failed: {log.errors}; see {log_path}")
    expected = {block_id: events[-1] for block_id, events in log.acked.items()}
    return Template(path, seed, expected)


def _records(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, payload length, LSN) of every record of a log segment, walking its framing."""
    found = []
    offset = _WAL_SEGMENT_HEADER
    while offset + _WAL_RECORD.size <= len(data):
        magic, length, lsn, _crc = _WAL_RECORD.unpack_from(data, offset)
        if magic != b"WREC" or offset + _WAL_RECORD.size + length > len(data):
            break
        found.append((offset, length, lsn))
        offset += _WAL_RECORD.size + length
    return found


def _flip(path: Path, offset: int, rng: random.Random, count: int = 1) -> str:
    data = bytearray(path.read_bytes())
    offset = min(max(offset, 0), len(data) - count)
    for position in range(offset, offset + count):
        data[position] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return f"flipped {count} byte(s) at offset {offset} of {path.name} ({len(data)} bytes)"


def _truncate(path: Path, size: int) -> str:
    before = path.stat().st_size
    os.truncate(path, size)
    return f"truncated {path.name} from {before} to {size} bytes"


def _is_sealed(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) >= 48 + _PACK_HEADER and data[-48:-40] == _SEAL_MAGIC


def damage(data_dir: Path, kind: str, mode: str, rng: random.Random) -> str | None:
    """Damage one file of ``kind`` in the store at rest; what was done, or None when the store has no such
    file (the round is then skipped)."""
    if kind in ("wal_middle", "wal_tail"):
        return _damage_wal(data_dir / "wal", kind, mode, rng)
    if kind == "index_sqlite":
        database = data_dir / "index.sqlite"
        if mode == "delete":
            for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
                (data_dir / name).unlink(missing_ok=True)
            return "deleted index.sqlite and its -wal and -shm files"
        if mode == "flip_wal_file":
            wal = data_dir / "index.sqlite-wal"
            if not wal.exists() or wal.stat().st_size < 8192:
                mode = "flip_pages"
            else:
                size = wal.stat().st_size
                return _flip(wal, rng.randrange(32, size - 256), rng, rng.randrange(1, 64))
        if mode == "flip_pages":
            size = database.stat().st_size
            if size <= 8192:
                return _flip(database, 100 + rng.randrange(0, max(1, size - 200)), rng, 16)
            return _flip(database, rng.randrange(4096, size - 256), rng, rng.randrange(16, 200))
        if mode == "truncate":
            return _truncate(database, database.stat().st_size // 2)
        return _flip(database, 0, rng, 100)  # garbage_header
    if kind == "vectors":
        vectors = data_dir / "vectors"
        if mode == "delete_dir":
            shutil.rmtree(vectors)
            return "deleted vectors/"
        if mode == "delete_current":
            (vectors / "CURRENT").unlink()
            return "deleted vectors/CURRENT"
        files = sorted(path for path in vectors.rglob("*")
                       if path.is_file() and "quarantine" not in path.parts and path.name != "CURRENT"
                       and path.stat().st_size > 0)
        if not files:
            return None
        victim = rng.choice(files)
        size = victim.stat().st_size
        if mode == "truncate":
            return f"vectors/{victim.parent.name}: " + _truncate(victim, rng.randrange(0, size))
        flipped = _flip(victim, rng.randrange(0, size), rng, rng.randrange(1, 9))
        return f"vectors/{victim.parent.name}: {flipped}"
    if kind in ("pack_index", "remote_list"):
        path = data_dir / "packs" / ("index.log" if kind == "pack_index" else "remote.list")
        if not path.exists():
            return None
        size = path.stat().st_size
        if mode == "delete":
            path.unlink()
            return f"deleted packs/{path.name}"
        if mode == "truncate":
            return _truncate(path, rng.randrange(0, size))
        if mode == "truncate_inside_entry":  # not drawn: a deterministic form for the test suite, cut in
            return _truncate(path, 16 + 64 + 30)  # the second entry (the log no longer holds the first ones)
        start = 16 if kind == "pack_index" and size > 16 + 64 else 0
        return _flip(path, rng.randrange(start, size), rng, rng.randrange(1, 5))
    if kind in ("sealed_pack", "active_pack", "cold_pack"):
        if kind == "cold_pack":
            candidates = sorted((data_dir / "cold" / "packs").glob("pack-*.pack"))
        else:
            packs = sorted((data_dir / "packs").glob("pack-*.pack"))
            candidates = [p for p in packs if _is_sealed(p) == (kind == "sealed_pack")]
            if kind == "active_pack":
                candidates = candidates[-1:]
        candidates = [path for path in candidates if path.stat().st_size > _PACK_HEADER]
        if not candidates:
            return None
        victim = rng.choice(candidates)
        size = victim.stat().st_size
        if mode == "delete":
            victim.unlink()
            return f"deleted {victim.name} ({size} bytes)"
        if mode == "truncate":
            return _truncate(victim, rng.randrange(_PACK_HEADER, size))
        return _flip(victim, rng.randrange(_PACK_HEADER, size), rng, rng.randrange(1, 5))
    raise ValueError(kind)


def _damage_wal(wal_dir: Path, kind: str, mode: str, rng: random.Random) -> str | None:
    segments = sorted(wal_dir.glob("*.wal"))
    if not segments:
        return None
    if kind == "wal_tail":
        last = segments[-1]
        records = _records(last.read_bytes())
        if not records:
            return None
        offset, length, lsn = records[-1]
        if mode == "truncate_last_record":
            cut = offset + rng.randrange(1, _WAL_RECORD.size + length)
            return f"record LSN {lsn}: " + _truncate(last, cut)
        if mode == "flip_before_last_record" and len(records) >= 2:
            offset, length, lsn = records[-2]
        at = offset + _WAL_RECORD.size + rng.randrange(0, max(1, length))
        return f"record LSN {lsn}: " + _flip(last, at, rng)
    middle = segments[:-1] or segments
    # Half the time one of the newest: their records may not be applied to the packs yet (the rest of
    # the log is, and a repair finds those records in the packs: nothing is lost).
    victim = rng.choice(middle[-4:] if rng.random() < 0.5 else middle)
    records = _records(victim.read_bytes())
    if mode == "delete_segment" and len(segments) >= 3:
        victim = rng.choice(segments[1:-1])
        lsns = [lsn for _, _, lsn in _records(victim.read_bytes())]
        victim.unlink()
        return f"deleted segment {victim.name} (LSNs {min(lsns, default=0)}..{max(lsns, default=0)})"
    if not records:
        return None
    if victim is segments[-1]:
        records = records[:-1] or records  # keep a valid record after the damage
    offset, length, lsn = rng.choice(records)
    if mode == "truncate_segment":
        return f"record LSN {lsn}: " + _truncate(victim, offset + rng.randrange(1, _WAL_RECORD.size + length))
    if mode == "flip_header":
        return f"record LSN {lsn} header: " + _flip(victim, offset + rng.randrange(4, _WAL_RECORD.size), rng)
    at = offset + _WAL_RECORD.size + rng.randrange(0, max(1, length))
    return f"record LSN {lsn}: " + _flip(victim, at, rng)


@dataclass
class Opened:
    seen_first: dict[str, Seen]
    seen_final: dict[str, Seen]
    seen_reopened: dict[str, Seen]
    names: str
    lost_lsns: list[tuple[int, int]]
    torn_tail_bytes: int
    last_lsn: int
    wal_error: str | None
    open_error: str | None
    check_ok_first: bool
    check_ok_final: bool
    problems: list[str]
    repaired: list[str]
    repair_called: bool


async def _read_back_corrupt(data_dir: Path, ids: list[str]) -> Opened:
    names: list[str] = []
    wal_error = open_error = None
    try:
        storage = await open_store(data_dir)
    except WALCorruptionError as error:
        wal_error = f"{error.message} (lost LSNs {error.lost_lsns}, first lost {error.first_lost_lsn})"
        names.append(wal_error)
        storage = await open_store(data_dir, repair=True)
    except Exception as error:  # noqa: BLE001 - named as a refusal to open, then repaired explicitly
        open_error = f"{type(error).__name__}: {getattr(error, 'message', error)}"
        names.append(open_error)
        storage = await open_store(data_dir, repair=True)
    recovery = storage.recovery
    lost_lsns = list(recovery.lost_lsns)
    torn, last_lsn = recovery.torn_tail_bytes, recovery.last_lsn
    repair_called = False
    try:
        first = await observe(storage, ids)
        report = await storage.check(1.0)
        names += report.problems + report.repaired
        problems, repaired = list(report.problems), list(report.repaired)
        check_ok_first = report.ok
        final = first
        check_ok_final = report.ok
        if not report.ok or any(seen.failure for seen in first.values()):
            repair_called = True
            after = await storage.repair()
            names += after.problems + after.repaired
            problems += after.problems
            repaired += [line for line in after.repaired if line not in repaired]
            final = await observe(storage, ids)
            check_ok_final = after.ok
        summary = storage.recovery.repair_summary()
        if summary:
            names.append(summary)
    finally:
        await storage.close()
    storage = await open_store(data_dir)
    try:
        reopened = await observe(storage, ids)
    finally:
        await storage.close()
    return Opened(first, final, reopened, "\n".join(names), lost_lsns, torn, last_lsn, wal_error, open_error,
                  check_ok_first, check_ok_final, problems, repaired, repair_called)


def corrupt_round(template: Template, kind: str, round_number: int, rng: random.Random, tally: Tally,
                  workdir: Path, mode: str | None = None) -> Path | None:
    """Damage one file of ``kind`` in a copy of the template (``mode`` drawn at random unless given);
    returns the damaged copy, as it was before any open, on a violation."""
    drawn = rng.choice(MODES[kind])
    mode = mode or drawn
    target = workdir / "corrupt"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(template.path, target)
    done = damage(target, kind, mode, rng)
    if done is None:
        tally.corruptions[kind]["skipped_no_such_file"] += 1
        return None
    tally.corruptions[kind][mode] += 1
    violations_before = len(tally.violations)
    evidence = workdir / "corrupt-as-damaged"  # kept on a violation: the damage before any open touched it
    shutil.rmtree(evidence, ignore_errors=True)
    shutil.copytree(target, evidence)
    ids = sorted(template.expected)
    try:
        opened = asyncio.run(_read_back_corrupt(target, ids))
    except Exception as error:  # noqa: BLE001 - not even an explicit repair opens it
        tally.open_refused[kind] += 1
        tally.violation(round_number, template.seed, f"open_failed:{kind}",
                        f"{done}: not even create_maif_storage(repair=True) opens it: {error!r}")
        return evidence
    if opened.wal_error:
        tally.wal_corruption_errors += 1
    if opened.open_error:
        tally.open_refused[kind] += 1
        where = "violation" if kind in DERIVED_KINDS else "finding"
        detail = f"{done}: the store refused to open without repair: {opened.open_error}"
        if where == "violation":
            tally.violation(round_number, template.seed, f"open_refused:{kind}", detail)
        else:
            tally.finding(round_number, f"open_refused:{kind}", detail)
    tally.note_repairs(opened.repaired)
    if not opened.check_ok_first:
        tally.check_problem_rounds[kind] += 1
    first_bad = [i for i in ids if opened.seen_first[i].value != template.expected[i][0]
                 or opened.seen_first[i].failure]
    if kind in DERIVED_KINDS and (first_bad or not opened.check_ok_first):
        tally.derived_needed_repair[kind] += 1
        tally.finding(round_number, f"derived_needed_repair:{kind}",
                      f"{done}: after the open {len(first_bad)} block(s) did not read back "
                      f"({first_bad[:5]}) and check said {opened.problems[:3]}; repair() "
                      f"{'fixed it' if opened.check_ok_final else 'left problems'}")
    for block_id in ids:
        expected, lsn = template.expected[block_id]
        got = opened.seen_final[block_id]
        tally.block_reads_verified += 1
        if expected is not ABSENT:
            tally.acknowledged_blocks_verified += 1
        again = opened.seen_reopened[block_id]
        if again != got and not (got.failure and again.failure):
            tally.violation(round_number, template.seed, f"unstable:{kind}",
                            f"{done}: block {block_id!r} read {got.describe()} after repair, "
                            f"{again.describe()} after reopening")
        if got.failure and got.failure.startswith("garbage"):
            tally.garbage += 1
            tally.violation(round_number, template.seed, f"garbage:{kind}",
                            f"{done}: {block_id!r}: {got.failure}")
            continue
        if got.failure is None and got.value == expected:
            continue
        named = f"'{block_id}'" in opened.names or (lsn is not None and any(
            low <= lsn <= high for low, high in opened.lost_lsns))
        torn = lsn is not None and opened.torn_tail_bytes > 0 and lsn > opened.last_lsn
        text = (f"{done}: block {block_id!r} (LSN {lsn}) acknowledged as "
                f"{'deleted' if expected is ABSENT else 'version ' + str(expected)}, read {got.describe()}")
        if kind in DERIVED_KINDS:
            tally.acknowledged_lost += 1
            tally.violation(round_number, template.seed, f"acknowledged_lost:{kind}", text)
        elif named:
            tally.named_lost[kind] += 1
        elif torn:
            tally.torn_tail_lost += 1
            tally.finding(round_number, "torn_tail_lost", text + f" (torn tail: {opened.torn_tail_bytes} "
                          f"bytes cut after LSN {opened.last_lsn})")
        else:
            tally.silently_dropped += 1
            tally.violation(round_number, template.seed, f"silently_dropped:{kind}",
                            text + f"; named: {opened.names[:600]!r}")
    return evidence if len(tally.violations) > violations_before else None


# ---- the campaign ------------------------------------------------------------------------------------------
@dataclass
class Campaign:
    """Runs rounds; kept as an object so the test suite runs a short version of exactly this."""

    workdir: Path
    seed: int
    kinds: tuple[str, ...] = ("kill", "corrupt")
    corrupt_every: int = 5
    rounds_per_directory: int = 8
    max_delay_s: float = 0.6
    corrupt_kinds: tuple[str, ...] = CORRUPT_KINDS
    tally: Tally = field(default_factory=Tally)
    failed_at: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - reproducible schedule, not security
        self.zygote: Zygote | None = None
        self.directory: Directory | None = None
        self.template: Template | None = None
        self.kill_count = 0
        self.corrupt_count = 0
        self.round_number = 0

    def __enter__(self) -> Campaign:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.zygote = Zygote()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.zygote is not None:
            self.zygote.close()

    def next_is_corrupt(self) -> bool:
        if "corrupt" not in self.kinds:
            return False
        if "kill" not in self.kinds:
            return True
        return self.round_number % self.corrupt_every == self.corrupt_every - 1

    def run_round(self, corrupt: bool | None = None, kind: str | None = None,
                  mode: str | None = None) -> Path | None:
        """One round (its kind, and for damage its file kind and mode, from the schedule unless given);
        the path to keep on a violation."""
        assert self.zygote is not None
        corrupt = self.next_is_corrupt() if corrupt is None else corrupt
        round_rng = random.Random(self.rng.randrange(1 << 62))  # noqa: S311 - one stream per round
        number = self.round_number
        self.round_number += 1
        self.tally.rounds += 1
        if corrupt:
            if self.template is None or self.corrupt_count % len(self.corrupt_kinds) == 0:
                self.template = build_template(self.zygote, self.workdir, round_rng.randrange(1 << 30))
                self.tally.templates += 1
            kind = kind or self.corrupt_kinds[self.corrupt_count % len(self.corrupt_kinds)]
            self.corrupt_count += 1
            return corrupt_round(self.template, kind, number, round_rng, self.tally, self.workdir, mode)
        if self.directory is None or self.kill_count % self.rounds_per_directory == 0:
            if self.directory is not None:
                shutil.rmtree(self.directory.path, ignore_errors=True)
            self.directory = Directory(self.workdir / f"store-{self.kill_count // self.rounds_per_directory}")
        self.kill_count += 1
        failed_log = kill_round(self.zygote, self.directory, number, round_rng, self.tally, self.workdir,
                                self.max_delay_s)
        return self.directory.path if failed_log is not None else None

    def summary(self, started: float, load_start: tuple[float, float, float]) -> dict[str, Any]:
        tally = self.tally
        return {
            "benchmark": "fault_campaign", "seed": self.seed, "kinds": list(self.kinds),
            "corrupt_every": self.corrupt_every, "rounds_per_directory": self.rounds_per_directory,
            "rounds": tally.rounds, "kill_rounds": tally.kill_rounds, "kills": tally.kills,
            "kills_in_flight": dict(sorted(tally.kills_in_flight.items())),
            "corruption_rounds": sum(sum(modes.values()) for modes in tally.corruptions.values()),
            "corruptions_by_kind": {kind: dict(sorted(modes.items()))
                                    for kind, modes in sorted(tally.corruptions.items())},
            "templates_filled": tally.templates,
            "acknowledged_writes": tally.writes_acked, "acknowledged_deletes": tally.deletes_acked,
            "compactions_acknowledged": tally.compactions_acked,
            "migrations_acknowledged": tally.migrations_acked, "imports_acknowledged": tally.imports_acked,
            "exports_verified": tally.exports_verified,
            "block_reads_verified": tally.block_reads_verified,
            "acknowledged_blocks_verified": tally.acknowledged_blocks_verified,
            "acknowledged_lost": tally.acknowledged_lost, "deletes_undone": tally.deletes_undone,
            "garbage": tally.garbage, "silently_dropped": tally.silently_dropped,
            "named_lost": sum(tally.named_lost.values()),
            "named_lost_by_kind": dict(sorted(tally.named_lost.items())),
            "torn_tail_lost": tally.torn_tail_lost,
            "wal_corruption_errors_at_open": tally.wal_corruption_errors,
            "open_refused_by_kind": dict(sorted(tally.open_refused.items())),
            "derived_needed_explicit_repair": dict(sorted(tally.derived_needed_repair.items())),
            "check_not_ok_rounds": dict(sorted(tally.check_problem_rounds.items())),
            "repairs_seen": dict(sorted(tally.repairs_seen.items())),
            "repair_lines_seen": sorted(tally.repair_lines),
            "violations": len(tally.violations),
            "violations_by_category": dict(sorted(Counter(v["what"] for v in tally.violations).items())),
            "violation_details": _first_of_each(tally.violations, 5)[:80],
            "findings": tally.findings[:50], "failed_at": self.failed_at,
            "elapsed_s": round(time.monotonic() - started, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "load_average_at_start": load_start,
                        "load_average_at_end": os.getloadavg()},
        }


def _first_of_each(entries: list[dict[str, Any]], per_kind: int) -> list[dict[str, Any]]:
    """The first ``per_kind`` entries of each kind ("what"), in order."""
    seen: Counter[str] = Counter()
    chosen = []
    for entry in entries:
        seen[entry["what"]] += 1
        if seen[entry["what"]] <= per_kind:
            chosen.append(entry)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--kinds", default="kill,corrupt", help="comma-separated: kill, corrupt")
    parser.add_argument("--corrupt-every", type=int, default=5,
                        help="with both kinds, every Nth round is a corruption round")
    parser.add_argument("--rounds-per-directory", type=int, default=8)
    parser.add_argument("--max-delay-s", type=float, default=0.6)
    parser.add_argument("--keep-going", action="store_true",
                        help="record every violation instead of stopping at the first")
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    arguments = parser.parse_args(argv)
    kinds = tuple(kind.strip() for kind in arguments.kinds.split(",") if kind.strip())
    if not kinds or set(kinds) - {"kill", "corrupt"}:
        parser.error("--kinds takes kill, corrupt or both")
    workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="maif-faults-"))
    started, load_start = time.monotonic(), os.getloadavg()
    campaign = Campaign(workdir, arguments.seed, kinds, arguments.corrupt_every,
                        arguments.rounds_per_directory, arguments.max_delay_s)
    kept: list[str] = []
    kept_by_category: Counter[str] = Counter()
    with campaign:
        for _ in range(arguments.rounds):
            number = campaign.round_number
            violations_before = len(campaign.tally.violations)
            failed = campaign.run_round()
            if failed is not None:
                first = campaign.tally.violations[violations_before]
                category = first["what"].split(":")[0] + ":" + first["detail"].split(" ")[0]
                keep = workdir / f"kept-round-{number}"
                if kept_by_category[category] < 3 and len(kept) < 30:  # evidence, not a copy of every repeat
                    kept_by_category[category] += 1
                    shutil.copytree(failed, keep, dirs_exist_ok=True)
                    for log_name in ("child.log", "template.log", "state.json"):
                        if (workdir / log_name).exists():
                            shutil.copy(workdir / log_name, keep.with_name(f"{keep.name}-{log_name}"))
                    kept.append(str(keep))
                    corrupt = failed.name == "corrupt-as-damaged"
                    source = workdir / ("template.log" if corrupt else "child.log")
                    if source.exists():  # the round's log beside the summary
                        log_copy = arguments.summary.with_name(f"{arguments.summary.stem}-round{number}.log")
                        log_copy.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(source, log_copy)
                else:
                    keep = Path(f"(not kept: {kept_by_category[category]} round(s) of {category} kept "
                                "already)")
                replay = (f"{sys.executable} {Path(__file__).relative_to(ROOT)} --seed {arguments.seed} "
                          f"--rounds {number + 1} --kinds {arguments.kinds} --corrupt-every "
                          f"{arguments.corrupt_every} --rounds-per-directory "
                          f"{arguments.rounds_per_directory}")
                if campaign.failed_at is None:
                    campaign.failed_at = {"round": number, "seed": arguments.seed, "kept": str(keep),
                                          "first_violation": first, "replay": replay}
                print(f"VIOLATION round {number} (campaign seed {arguments.seed}, child seed "
                      f"{first['seed']}): {first['what']}: {first['detail'][:500]}\n  kept {keep}\n"
                      f"  replay: {replay}", flush=True)
                if not arguments.keep_going:
                    break
            if campaign.round_number % 50 == 0:
                tally = campaign.tally
                print(f"{campaign.round_number} rounds: {tally.kills} kills, "
                      f"{tally.acknowledged_blocks_verified} acknowledged blocks verified, lost "
                      f"{tally.acknowledged_lost}, silently dropped {tally.silently_dropped}, named "
                      f"{sum(tally.named_lost.values())}, violations {len(tally.violations)} "
                      f"({time.monotonic() - started:.0f} s)", flush=True)
    summary = campaign.summary(started, load_start)
    arguments.summary.parent.mkdir(parents=True, exist_ok=True)
    arguments.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({key: value for key, value in summary.items()
                      if key not in ("violation_details", "findings")}, indent=2))
    if not kept:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if campaign.tally.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
