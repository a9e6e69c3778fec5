"""The write-ahead log: the one place a write must reach before MAIF acknowledges it.

Layout (docs/adr/0040-write-ahead-log-format.md has the reasons)::

    data_dir/wal/00000000000000000001.wal     segments, named by the LSN of their first record
    segment  = header (32 bytes) + records
    header   = b"MAIF-WAL" | u32 format version (1) | u32 reserved (0) | u64 first LSN
               | u32 CRC-32 of the previous 24 bytes | u32 reserved (0)
    record   = b"WREC" | u32 payload length | u64 LSN | u32 CRC-32(length, LSN, payload) | payload

All integers little-endian. LSNs start at 1 and increase by exactly one per record, across segments.

Group commit: :class:`GroupCommitter` gathers the records of concurrent writers, writes them with one
``write`` and makes them durable with one ``fdatasync`` on a dedicated thread, and only then resolves
the writers' futures. Any I/O error while writing or syncing puts the log in a failed state for the
life of the process (never retry fsync on the same file: the kernel may have dropped the dirty pages
and a second fsync would report success for data that is gone); reopening runs recovery from what is
really on disk.

Recovery (:meth:`WriteAheadLog.open`) validates every record. When one fails, it looks past it, through
the rest of the segment and every later one, for records that still validate (the record magic found
with ``bytes.find``, a sane length, a larger LSN, a correct CRC; at most
``limits.wal_resync_candidates_max`` positions tried):

- torn tail: the damage is in the LAST segment, within ``limits.wal_group_bytes_max`` of its end, and
  nothing valid follows it. Only the last group write can be interrupted before its sync, so none of
  it was acknowledged: it is truncated (``RecoveryReport.torn_tail_bytes``).
- corruption: anything else (a valid record after the damage, damage further from the end or in an
  earlier segment). Acknowledged data is damaged: :class:`WALCorruptionError` names the segment, the
  offset, the LSNs lost and the LSNs that still validate, and nothing on disk is changed.
- a missing segment (a gap between the last LSN of one segment and the first LSN named by the next):
  corruption like the above, with the damage at offset 0 of the segment after the gap, unless the
  whole gap is at or below the checkpoint (``min_next_lsn - 1``). Such records were applied already
  and nothing is lost (recycling deletes several segments with one directory sync, so a power loss can
  leave a hole there): recovery goes on past it, with or without ``repair``.

``open(repair=True)`` is the explicit repair of corruption: it copies the damaged segment and every
later one to ``wal/quarantine/<time>-<n>/`` (never deleted), keeps every record above the checkpoint
that still validates (also written to ``wal/salvage.pending``), truncates the log at the damage (for a
missing segment: deletes the segments after the gap) and returns the kept records in
``RecoveryReport.salvaged``. The caller re-appends them as new records (new LSNs, the log stays
contiguous) and then calls :meth:`WriteAheadLog.salvage_reappended`; until it does, every open returns
them again, so a crash in the middle of a repair loses nothing. Records are never skipped silently.
docs/adr/0040-write-ahead-log-format.md has the reasons.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maif import limits
from maif.errors import (
    DurabilityError,
    IntegrityError,
    LimitExceededError,
    StoreClosedError,
    WALCorruptionError,
)

SEGMENT_MAGIC = b"MAIF-WAL"
SEGMENT_FORMAT_VERSION = 1
_SEGMENT_HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved, first LSN (+ CRC, reserved)
SEGMENT_HEADER_BYTES = 32
RECORD_MAGIC = b"WREC"
_RECORD_HEADER = struct.Struct("<4sIQI")  # magic, payload length, LSN, CRC-32
RECORD_HEADER_BYTES = _RECORD_HEADER.size
_LENGTH_AND_LSN = struct.Struct("<IQ")
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
QUARANTINE_DIRECTORY = "quarantine"  # under the log directory: copies of repaired segments, never deleted
SALVAGE_FILE = "salvage.pending"  # records a repair kept, until the caller has re-appended them
_COPY_CHUNK_BYTES = 1 << 20


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}.wal"


def record_checksum(lsn: int, payload: bytes | memoryview) -> int:
    """CRC-32 over (length, LSN, payload): detects torn and misdirected writes, not attackers."""
    return zlib.crc32(payload, zlib.crc32(_LENGTH_AND_LSN.pack(len(payload), lsn)))


def frame_record(lsn: int, payload: bytes) -> bytes:
    """One framed record (header + payload) ready to append."""
    if len(payload) > limits.wal_record_bytes_max:
        raise LimitExceededError("write-ahead log record size", len(payload), limits.wal_record_bytes_max)
    return _RECORD_HEADER.pack(RECORD_MAGIC, len(payload), lsn, record_checksum(lsn, payload)) + payload


def frame_records(first_lsn: int, payloads: Sequence[bytes]) -> list[bytes]:
    """The framed records of ``payloads`` (LSNs from ``first_lsn``) as parts to join: each record's
    header, then its payload (the payload object itself: joined once by the group write, never
    concatenated per record). Any oversized record is refused before anything is framed."""
    record_bytes_max = limits.wal_record_bytes_max
    for payload in payloads:
        if len(payload) > record_bytes_max:
            raise LimitExceededError("write-ahead log record size", len(payload), record_bytes_max)
    header = _RECORD_HEADER.pack
    length_and_lsn = _LENGTH_AND_LSN.pack
    crc32 = zlib.crc32
    parts: list[bytes] = []
    append = parts.append
    for lsn, payload in enumerate(payloads, first_lsn):
        length = len(payload)
        append(header(RECORD_MAGIC, length, lsn, crc32(payload, crc32(length_and_lsn(length, lsn)))))
        append(payload)
    return parts


def encode_segment_header(first_lsn: int) -> bytes:
    head = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_FORMAT_VERSION, 0, first_lsn)
    return head + struct.pack("<II", zlib.crc32(head), 0)


class FileOps:
    """The system calls the log makes, in one replaceable place so tests can inject faults."""

    def open_segment(self, path: Path, *, create: bool) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags, 0o600)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync_directory(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write_new_file(self, path: Path, chunks: Iterable[bytes]) -> None:
        """Create ``path`` (never over an existing file), write ``chunks`` and make them durable."""
        with path.open("xb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())

    def replace(self, source: Path, destination: Path) -> None:
        os.replace(source, destination)


@dataclass
class SegmentInfo:
    """One segment as recovery found it: where it starts, where it ends, how big it is."""

    path: Path
    first_lsn: int
    last_lsn: int  # first_lsn - 1 when the segment holds no record
    size_bytes: int


@dataclass
class RecoveryReport:
    """What opening the log found and did.

    ``corruption`` describes damage that was not a torn tail (set only by a repair, or when an
    interrupted repair is resumed: without ``repair`` such damage raises WALCorruptionError);
    ``lost_lsns`` are the LSN ranges above the checkpoint known to be unreadable; ``salvaged`` the
    records above the checkpoint that still validated after the damage, (old LSN, payload) in LSN
    order, for the caller to re-append as new records (held in memory: at most what the damaged
    segments held; the engine empties it once they are durable again and records their new LSNs in
    ``reappended_lsns``); ``quarantined`` the paths of the copies of the damaged segments.
    """

    segments: int = 0
    records: int = 0
    torn_tail_bytes: int = 0
    last_lsn: int = 0
    corruption: str | None = None
    lost_lsns: list[tuple[int, int]] = field(default_factory=list)
    salvaged: list[tuple[int, bytes]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    reappended_lsns: tuple[int, int] | None = None

    def repair_summary(self) -> str | None:
        """One line for an operator when this open repaired the log and records were lost or salvaged
        (None otherwise)."""
        if self.corruption is None or not (self.lost_lsns or self.salvaged or self.reappended_lsns):
            return None
        if self.reappended_lsns is not None:
            first, last = self.reappended_lsns
            kept = f"{last - first + 1} record(s) salvaged (re-written as LSNs {first}..{last})"
        else:
            kept = f"{len(self.salvaged)} record(s) salvaged"
        lost = f"LSNs {lsn_ranges_text(self.lost_lsns)} unreadable" if self.lost_lsns else "no LSN lost"
        evidence = (f"evidence in {os.path.dirname(self.quarantined[0])}" if self.quarantined
                    else "no copy made on this open")
        return f"WAL repair on open: {lost}, {kept}, {evidence} ({self.corruption})"


def lsn_ranges_text(ranges: Sequence[tuple[int, int]], *, shown_max: int = 8) -> str:
    """``5, 9..12`` for [(5, 5), (9, 12)], the first ``shown_max`` ranges and a count of the rest."""
    parts = [str(low) if low == high else f"{low}..{high}" for low, high in ranges[:shown_max]]
    if len(ranges) > shown_max:
        parts.append(f"and {len(ranges) - shown_max} more range(s)")
    return ", ".join(parts)


@dataclass
class _ScanResult:
    last_lsn: int
    valid_end: int
    records: int
    damage: str | None = None


def _scan_records(data: memoryview, first_lsn: int, *, on_record: Callable[[int, memoryview], None] | None
                  = None) -> _ScanResult:
    """Walk the records after the header; stop at the first one that does not validate."""
    offset = SEGMENT_HEADER_BYTES
    expected = first_lsn
    size = len(data)
    count = 0
    while offset < size:
        if size - offset < RECORD_HEADER_BYTES:
            return _ScanResult(expected - 1, offset, count, "record header cut short")
        magic, length, lsn, checksum = _RECORD_HEADER.unpack_from(data, offset)
        if magic != RECORD_MAGIC:
            return _ScanResult(expected - 1, offset, count, "bad record magic")
        if length > limits.wal_record_bytes_max:
            return _ScanResult(expected - 1, offset, count, f"record length {length} above the limit")
        if lsn != expected:
            return _ScanResult(expected - 1, offset, count, f"LSN {lsn} where {expected} was expected")
        end = offset + RECORD_HEADER_BYTES + length
        if end > size:
            return _ScanResult(expected - 1, offset, count, "record cut short")
        payload = data[offset + RECORD_HEADER_BYTES : end]
        if record_checksum(lsn, payload) != checksum:
            return _ScanResult(expected - 1, offset, count, "record checksum mismatch")
        if on_record is not None:
            on_record(lsn, payload)
        expected += 1
        count += 1
        offset = end
    return _ScanResult(expected - 1, offset, count)


def _check_segment_header(data: bytes | memoryview, first_lsn: int) -> str | None:
    if len(data) < SEGMENT_HEADER_BYTES:
        return "segment header cut short"
    magic, version, _reserved, lsn = _SEGMENT_HEADER.unpack_from(data, 0)
    (checksum,) = struct.unpack_from("<I", data, _SEGMENT_HEADER.size)
    if magic != SEGMENT_MAGIC:
        return "bad segment magic"
    if zlib.crc32(data[: _SEGMENT_HEADER.size]) != checksum:
        return "segment header checksum mismatch"
    if version != SEGMENT_FORMAT_VERSION:
        return f"unsupported segment format version {version}"
    if lsn != first_lsn:
        return f"segment header names first LSN {lsn}, file name {first_lsn}"
    return None


# ---- looking past damage: torn tail or corruption ----------------------------------------------------

@dataclass
class _LookPast:
    """The records that still validate after a damaged one (found by :func:`_search`)."""

    expected: int  # the LSN the damaged record should have had
    lsn_max: int  # no real record after the damage can have a larger LSN (each takes >= 20 bytes)
    keep_above: int | None  # keep the payloads of records above this LSN (None: only count them)
    candidates_left: int
    count: int = 0
    first: int = 0
    last: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # LSNs skipped between valid records
    records: list[tuple[int, bytes]] = field(default_factory=list)
    exhausted: bool = False  # the candidate budget ran out before the end
    trailing_damage: int = 0  # unreadable bytes at the end of the last file searched
    anchor: int = 0  # the highest LSN a later segment's name says existed

    @property
    def previous(self) -> int:
        return self.last if self.count else self.expected - 1

    def take(self, lsn: int, payload: memoryview) -> None:
        if lsn > self.previous + 1:
            self.gaps.append((self.previous + 1, lsn - 1))
        if not self.count:
            self.first = lsn
        self.count += 1
        self.last = lsn
        if self.keep_above is not None and lsn > self.keep_above:
            self.records.append((lsn, bytes(payload)))

    def highest_known(self) -> int:
        """The highest LSN known to have existed after the damage: the last valid record, a later
        segment's first LSN - 1, or one more when the log ends in damage that is not a torn group."""
        high = max(self.previous, self.anchor)
        if self.exhausted or self.trailing_damage > limits.wal_group_bytes_max:
            high = max(high, self.previous + 1)
        return high


def _record_at(data: bytes, view: memoryview, offset: int, lsn_min: int, lsn_max: int
               ) -> tuple[int, int] | None:
    """(LSN, end) of the record at ``offset`` when it validates with an LSN in [lsn_min, lsn_max]."""
    if len(data) - offset < RECORD_HEADER_BYTES:
        return None
    magic, length, lsn, checksum = _RECORD_HEADER.unpack_from(data, offset)
    end = offset + RECORD_HEADER_BYTES + length
    if (magic != RECORD_MAGIC or length > limits.wal_record_bytes_max or not lsn_min <= lsn <= lsn_max
            or end > len(data)):
        return None
    if record_checksum(lsn, view[offset + RECORD_HEADER_BYTES : end]) != checksum:
        return None
    return lsn, end


def _search(data: bytes, offset: int, found: _LookPast) -> None:
    """Take every record of ``data`` from ``offset`` on that validates; after one that does not, try the
    next position holding the record magic (``bytes.find``, within the candidate budget)."""
    view = memoryview(data)
    size = len(data)
    damaged_at: int | None = None
    while offset < size:
        record = _record_at(data, view, offset, found.previous + 1, found.lsn_max)
        if record is not None:
            lsn, end = record
            found.take(lsn, view[offset + RECORD_HEADER_BYTES : end])
            damaged_at = None
            offset = end
            continue
        if damaged_at is None:
            damaged_at = offset
        offset = data.find(RECORD_MAGIC, offset + 1)
        if offset < 0:
            break
        if found.candidates_left <= 0:
            found.exhausted = True
            break
        found.candidates_left -= 1
    found.trailing_damage = 0 if damaged_at is None else size - damaged_at


def _look_past(data: bytes, offset: int, expected: int, later: Sequence[tuple[int, Path]], *,
               keep_above: int | None) -> _LookPast:
    """Search the damaged segment from ``offset`` and then every later segment, one in memory at a time."""
    remaining = len(data) - offset + sum(path.stat().st_size for _, path in later)
    # The later segments' names prove their LSNs exist even when a whole segment file is missing.
    named = max([expected, *(first_lsn for first_lsn, _ in later)]) - 1
    found = _LookPast(expected, named + remaining // RECORD_HEADER_BYTES, keep_above,
                      limits.wal_resync_candidates_max)
    found.anchor = expected - 1
    _search(data, offset, found)
    for first_lsn, path in later:
        if found.exhausted:
            break
        found.anchor = max(found.anchor, first_lsn - 1)
        segment = path.read_bytes()
        start = SEGMENT_HEADER_BYTES if _check_segment_header(segment, first_lsn) is None else 0
        _search(segment, start, found)
    return found


def _clip(ranges: Iterable[tuple[int, int]], applied_lsn: int) -> list[tuple[int, int]]:
    """The part of each LSN range above the checkpoint (what is at or below it is applied already)."""
    return [(max(low, applied_lsn + 1), high) for low, high in ranges if high > applied_lsn]


def _missing(lsns: Sequence[int], low: int, high: int) -> list[tuple[int, int]]:
    """The ranges of [low, high] that ``lsns`` (increasing) does not hold."""
    ranges: list[tuple[int, int]] = []
    expected = low
    for lsn in lsns:
        if lsn > expected:
            ranges.append((expected, lsn - 1))
        expected = max(expected, lsn + 1)
    if expected <= high:
        ranges.append((expected, high))
    return ranges


def _corruption_text(name: str, offset: int, reason: str, after_bytes: int, found: _LookPast,
                     lost: list[tuple[int, int]], applied_lsn: int) -> str:
    text = (f"write-ahead log segment {name} is corrupt at offset {offset} ({reason}) with {after_bytes} "
            f"bytes after it: acknowledged records are damaged; ")
    return text + _found_text(found, lost, applied_lsn)


def _found_text(found: _LookPast, lost: list[tuple[int, int]], applied_lsn: int) -> str:
    text = ""
    if lost:
        text += f"LSN(s) {lsn_ranges_text(lost)} unreadable"
    else:
        text += f"no record above the checkpoint (LSN {applied_lsn}) is missing"
    if found.count:
        text += (f"; {found.count} later record(s) still validate, LSNs {found.first}..{found.last}")
    else:
        text += "; no later record validates"
    if found.exhausted:
        text += (f"; the search for valid records stopped after {limits.wal_resync_candidates_max} "
                 "positions")
    return text


_REPAIR_HINT = ("open with an explicit repair (`maif store check --repair`, or "
                "create_maif_storage(config, repair=True)): it copies the damaged segment files to "
                "wal/quarantine/, keeps every record that still validates and reports the lost LSNs; or "
                "restore the data directory from a backup")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY_CHUNK_BYTES):
            yield chunk


def _quarantine(directory: Path, ops: FileOps, paths: Sequence[Path]) -> list[Path]:
    """Durable copies of ``paths`` in a new ``quarantine/<UTC time>-<n>/`` directory (never reused)."""
    root = directory / QUARANTINE_DIRECTORY
    root.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in itertools.count(1):
        target = root / f"{stamp}-{attempt}"
        try:
            target.mkdir()
            break
        except FileExistsError:
            continue
    copies = []
    for path in paths:
        copy = target / path.name
        ops.write_new_file(copy, _file_chunks(path))
        copies.append(copy)
    ops.fsync_directory(target)
    ops.fsync_directory(root)
    ops.fsync_directory(directory)
    return copies


def _write_salvage(directory: Path, ops: FileOps, expected: int, records: Sequence[tuple[int, bytes]]
                   ) -> None:
    """``salvage.pending``: a segment header naming the first lost LSN, then the kept records framed
    with their old LSNs; written aside and renamed, so it is whole or absent."""
    temporary = directory / (SALVAGE_FILE + ".tmp")
    temporary.unlink(missing_ok=True)
    ops.write_new_file(temporary, itertools.chain(
        [encode_segment_header(expected)], (frame_record(lsn, payload) for lsn, payload in records)))
    ops.replace(temporary, directory / SALVAGE_FILE)
    ops.fsync_directory(directory)


def _read_salvage(directory: Path) -> tuple[int, list[tuple[int, bytes]]] | None:
    """(first lost LSN, records) of ``salvage.pending``, or None when there is none."""
    path = directory / SALVAGE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    expected = _SEGMENT_HEADER.unpack_from(data, 0)[3] if len(data) >= SEGMENT_HEADER_BYTES else 0
    problem = _check_segment_header(data, expected)
    view = memoryview(data)
    records: list[tuple[int, bytes]] = []
    offset = SEGMENT_HEADER_BYTES
    while problem is None and offset < len(data):
        record = _record_at(data, view, offset, records[-1][0] + 1 if records else 1, (1 << 64) - 1)
        if record is None:
            problem = f"record at offset {offset} does not validate"
            break
        lsn, end = record
        records.append((lsn, bytes(view[offset + RECORD_HEADER_BYTES : end])))
        offset = end
    if problem is not None:
        raise IntegrityError(f"write-ahead log salvage file {path} is damaged: {problem}",
                             hint="the quarantined segment copies under wal/quarantine/ hold the records")
    return expected, records


def _repair_corruption(directory: Path, ops: FileOps, report: RecoveryReport, *, path: Path | None,
                       first_lsn: int,
                       offset: int, expected: int, later: Sequence[tuple[int, Path]], found: _LookPast,
                       description: str, applied_lsn: int) -> SegmentInfo | None:
    """Quarantine, keep what validates (salvage.pending), then cut the log at the damage.

    The order makes a crash at any step harmless: until the cut, the damage is still there and the
    next repair finds the same salvage (merged with salvage.pending); after it, salvage.pending holds
    the records until the caller re-appended them. Later segments go before the cut, last first, so
    the log never has a gap. ``path`` None: no segment is damaged, one is missing before ``later``
    (which are quarantined, salvaged and deleted; the log then ends where the gap starts).
    """
    copies = _quarantine(directory, ops, [*([path] if path is not None else []),
                                          *(later_path for _, later_path in later)])
    salvage = found.records
    pending = _read_salvage(directory)
    if pending is not None:
        pending_expected, pending_records = pending
        if pending_expected != expected:
            raise IntegrityError(
                f"write-ahead log: an interrupted repair (damage at LSN {pending_expected}) left "
                f"{SALVAGE_FILE}, and the log is damaged at LSN {expected} now",
                hint="restore the data directory from a backup; the quarantined copies are kept")
        merged = dict(pending_records)
        merged.update(salvage)
        salvage = sorted(merged.items())
    if salvage:
        _write_salvage(directory, ops, expected, salvage)
    for _, later_path in reversed(later):
        later_path.unlink()
        ops.fsync_directory(directory)
    kept: SegmentInfo | None = None
    if path is None:
        pass  # a missing segment: what comes before the gap is intact
    elif offset < SEGMENT_HEADER_BYTES:  # the header itself is damaged: no record of it can be kept
        path.unlink()
        ops.fsync_directory(directory)
    else:
        ops.truncate(path, offset)
        kept = SegmentInfo(path, first_lsn, expected - 1, offset)
    high = max(found.highest_known(), salvage[-1][0] if salvage else 0)
    report.corruption = description
    report.lost_lsns = _clip(_missing([lsn for lsn, _ in salvage], expected, high), applied_lsn)
    report.salvaged = salvage
    report.quarantined = [str(copy) for copy in copies]
    return kept


def _corrupt_segment(directory: Path, ops: FileOps, report: RecoveryReport, data: bytes, *, path: Path,
                     first_lsn: int, offset: int, expected: int, reason: str,
                     later: Sequence[tuple[int, Path]], applied_lsn: int, repair: bool) -> SegmentInfo | None:
    """Damage that is not a torn tail: raise WALCorruptionError, or with ``repair`` repair it and
    return what is left of the segment (None when nothing is)."""
    found = _look_past(data, offset, expected, later, keep_above=applied_lsn if repair else None)
    high = found.highest_known()
    tail_lost = [(found.previous + 1, high)] if high > found.previous else []
    lost = _clip([*found.gaps, *tail_lost], applied_lsn)
    description = _corruption_text(path.name, offset, reason, len(data) - offset, found, lost, applied_lsn)
    if not repair:
        raise WALCorruptionError(
            description, segment=path.name, offset=offset, first_lost_lsn=expected,
            salvageable_lsns=(found.first, found.last) if found.count else None,
            salvageable_count=found.count, lost_lsns=lost, hint=_REPAIR_HINT)
    return _repair_corruption(directory, ops, report, path=path, first_lsn=first_lsn, offset=offset,
                              expected=expected, later=later, found=found, description=description,
                              applied_lsn=applied_lsn)


def _segment_gap(directory: Path, ops: FileOps, report: RecoveryReport, *, previous_last: int,
                 later: Sequence[tuple[int, Path]], applied_lsn: int, repair: bool) -> None:
    """A segment file is missing between one ending at ``previous_last`` and ``later[0]``, and the gap
    reaches above the checkpoint: raise WALCorruptionError, or with ``repair`` quarantine, salvage and
    delete ``later`` (the log then ends at ``previous_last``)."""
    first_lsn, path = later[0]
    expected = previous_last + 1
    found = _look_past(b"", 0, expected, later, keep_above=applied_lsn if repair else None)
    high = found.highest_known()
    tail_lost = [(found.previous + 1, high)] if high > found.previous else []
    lost = _clip([*found.gaps, *tail_lost], applied_lsn)
    description = (f"write-ahead log gap: segment {path.name} starts at LSN {first_lsn} but the one before "
                   f"it ends at LSN {previous_last} (a segment file is missing): acknowledged records are "
                   f"lost; " + _found_text(found, lost, applied_lsn))
    if not repair:
        raise WALCorruptionError(
            description, segment=path.name, offset=0, first_lost_lsn=expected,
            salvageable_lsns=(found.first, found.last) if found.count else None,
            salvageable_count=found.count, lost_lsns=lost, hint=_REPAIR_HINT)
    _repair_corruption(directory, ops, report, path=None, first_lsn=first_lsn, offset=0, expected=expected,
                       later=later, found=found, description=description, applied_lsn=applied_lsn)


class WriteAheadLog:
    """Segment files plus the synchronous append/sync/recycle operations (run on one writer thread).

    Use :meth:`open`; it recovers the directory before anything is appended.
    """

    def __init__(self, directory: Path, segments: list[SegmentInfo], *, durable: bool, file_ops: FileOps,
                 segment_bytes_max: int) -> None:
        assert segments, "open() always leaves an active segment"
        self.directory = directory
        self.durable = durable
        self.segment_bytes_max = segment_bytes_max
        self._ops = file_ops
        self._segments = segments
        self._lock = threading.Lock()  # recycle (event loop) vs append (writer thread)
        self.next_lsn = segments[-1].last_lsn + 1
        self.failure: str | None = None
        self.syncs_total = 0
        self.bytes_written_total = 0
        active = segments[-1]
        self._fd: int | None = file_ops.open_segment(active.path, create=False)

    # ---- opening and recovery -------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, durable: bool = True, min_next_lsn: int = 1,
             file_ops: FileOps | None = None,
             segment_bytes_max: int = limits.wal_segment_bytes_max,
             repair: bool = False) -> tuple[WriteAheadLog, RecoveryReport]:
        """Recover ``directory`` (creating it when absent) and return the log ready to append.

        ``min_next_lsn`` keeps LSNs increasing when every segment was recycled (the checkpoint + 1).
        Damage that is not a torn tail raises WALCorruptionError and changes nothing, unless ``repair``:
        then the damaged segments are quarantined, the log is cut at the damage, and
        ``report.salvaged`` holds the records above the checkpoint that still validated. The caller
        must append them again as new records and then call :meth:`salvage_reappended` (until then
        every open returns them again, with or without ``repair``).
        """
        ops = file_ops or FileOps()
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        report = RecoveryReport()
        segments = _recover_segments(path, ops, report, applied_lsn=min_next_lsn - 1, repair=repair)
        if report.corruption is None:
            pending = _read_salvage(path)
            if pending is not None:  # a repair was interrupted after it cut the log
                report.salvaged = pending[1]
                report.corruption = (f"an interrupted repair (damage at LSN {pending[0]}) left "
                                     f"{len(pending[1])} salvaged record(s) in {SALVAGE_FILE}")
        next_lsn = max(min_next_lsn, segments[-1].last_lsn + 1 if segments else 1)
        if segments and segments[-1].last_lsn + 1 < next_lsn:
            # The checkpoint is past the end of the log (bulk_unsafe after a power loss): every record
            # here is applied already. Drop the segments rather than leave a gap before the new one.
            for segment in segments:
                segment.path.unlink()
            ops.fsync_directory(path)
            segments = []
        if not segments:
            segments.append(_create_segment(path, ops, next_lsn))
        report.last_lsn = segments[-1].last_lsn
        wal = cls(path, segments, durable=durable, file_ops=ops, segment_bytes_max=segment_bytes_max)
        return wal, report

    def salvage_reappended(self) -> None:
        """Forget ``salvage.pending``: every record a repair salvaged is durable again as a new record."""
        pending = self.directory / SALVAGE_FILE
        if pending.exists():
            pending.unlink()
            self._ops.fsync_directory(self.directory)

    def replay(self, after_lsn: int) -> Iterator[tuple[int, bytes]]:
        """Every record with LSN > ``after_lsn``, in order (records were validated by :meth:`open`)."""
        for segment in list(self._segments):
            if segment.last_lsn <= after_lsn:
                continue
            yield from _segment_records(segment, after_lsn)

    # ---- appending (writer thread) --------------------------------------------------------------
    def append(self, data: bytes, first_lsn: int, last_lsn: int) -> None:
        """Write framed records ``first_lsn..last_lsn`` with one write and make them durable."""
        if self.failure is not None:
            raise DurabilityError(self.failure, hint="reopen the store to recover from what is on disk")
        assert first_lsn == self.next_lsn, (first_lsn, self.next_lsn)
        with self._lock:
            try:
                self._rotate_if_full(first_lsn)
                self._write_all(data)
                if self.durable:
                    self._ops.fdatasync(self._active_fd())
                    self.syncs_total += 1
            except OSError as error:
                self.failure = (f"write-ahead log {'sync' if self.durable else 'write'} failed "
                                f"({error.strerror or error}); the store refuses writes from now on")
                raise DurabilityError(self.failure, hint="free space or fix the disk, then reopen the "
                                      "store: recovery keeps every acknowledged block") from error
            active = self._segments[-1]
            active.last_lsn = last_lsn
            active.size_bytes += len(data)
            self.next_lsn = last_lsn + 1
            self.bytes_written_total += len(data)

    def _active_fd(self) -> int:
        assert self._fd is not None
        return self._fd

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._ops.write(self._active_fd(), view)
            if written <= 0:
                raise OSError(28, "short write")
            view = view[written:]

    def _rotate_if_full(self, first_lsn: int) -> None:
        active = self._segments[-1]
        if active.size_bytes < self.segment_bytes_max or active.last_lsn < active.first_lsn:
            return
        if len(self._segments) >= limits.wal_segments_max:
            raise OSError(28, f"more than {limits.wal_segments_max} segments: the applier is not keeping up")
        self._ops.close(self._active_fd())
        self._fd = None
        segment = _create_segment(self.directory, self._ops, first_lsn)
        self._segments.append(segment)
        self._fd = self._ops.open_segment(segment.path, create=False)

    # ---- checkpoints ------------------------------------------------------------------------------
    def recycle(self, checkpoint_lsn: int) -> int:
        """Delete segments whose every record is at or below ``checkpoint_lsn`` (applied and flushed).

        The active segment is always kept. Returns the number of segments deleted.
        """
        with self._lock:
            doomed = [s for s in self._segments[:-1] if s.last_lsn <= checkpoint_lsn]
            for segment in doomed:
                segment.path.unlink(missing_ok=True)
            self._segments = [s for s in self._segments if s not in doomed]
            if doomed:
                self._ops.fsync_directory(self.directory)
            return len(doomed)

    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._ops.close(self._fd)
                self._fd = None


def _segment_records(segment: SegmentInfo, after_lsn: int) -> list[tuple[int, bytes]]:
    """The records of one segment above ``after_lsn`` (one segment in memory at a time)."""
    data = memoryview(segment.path.read_bytes()[: segment.size_bytes])
    found: list[tuple[int, bytes]] = []

    def keep(lsn: int, payload: memoryview) -> None:
        if lsn > after_lsn:
            found.append((lsn, bytes(payload)))

    scan = _scan_records(data, segment.first_lsn, on_record=keep)
    if scan.last_lsn != segment.last_lsn:
        raise IntegrityError(f"write-ahead log segment {segment.path.name} changed while replaying")
    return found


def oldest_segment_lsn(directory: str | os.PathLike[str]) -> int | None:
    """The first LSN of the oldest segment in ``directory`` by its file name (None: no segment, or no
    directory); read before the log is opened, to tell whether the backends lag what it recycled."""
    try:
        listed = _list_segments(Path(directory))
    except FileNotFoundError:
        return None
    return listed[0][0] if listed else None


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    found: list[tuple[int, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            match = _SEGMENT_NAME.match(entry.name)
            if match:
                found.append((int(match.group(1)), Path(entry.path)))
                if len(found) > limits.wal_segments_max:
                    raise LimitExceededError("write-ahead log segment count", len(found),
                                             limits.wal_segments_max)
    return sorted(found)


def _recover_segments(directory: Path, ops: FileOps, report: RecoveryReport, *, applied_lsn: int,
                      repair: bool) -> list[SegmentInfo]:
    listed = _list_segments(directory)
    segments: list[SegmentInfo] = []
    for position, (first_lsn, path) in enumerate(listed):
        is_last = position == len(listed) - 1
        if segments and first_lsn <= segments[-1].last_lsn:
            raise IntegrityError(f"write-ahead log segments overlap: segment {path.name} follows one ending "
                                 f"at LSN {segments[-1].last_lsn}",
                                 hint="restore the data directory from a backup")
        if segments and first_lsn != segments[-1].last_lsn + 1 and first_lsn - 1 > applied_lsn:
            # A segment file is missing and the gap holds records above the checkpoint: corruption.
            # (A gap entirely at or below the checkpoint holds records applied already: go on.)
            _segment_gap(directory, ops, report, previous_last=segments[-1].last_lsn,
                         later=listed[position:], applied_lsn=applied_lsn, repair=repair)
            break
        data = path.read_bytes()
        header_problem = _check_segment_header(data, first_lsn)
        if header_problem is not None:
            if is_last and len(data) <= SEGMENT_HEADER_BYTES + limits.wal_group_bytes_max and (
                    len(data) < SEGMENT_HEADER_BYTES or not any(data[SEGMENT_HEADER_BYTES:])):
                # Created, then crashed before its header (and any record) was durable: never used.
                path.unlink()
                ops.fsync_directory(directory)
                report.torn_tail_bytes += len(data)
                continue
            offset, expected, reason = 0, first_lsn, header_problem
        else:
            scan = _scan_records(memoryview(data), first_lsn)
            report.records += scan.records
            if scan.damage is None:
                segments.append(SegmentInfo(path, first_lsn, scan.last_lsn, scan.valid_end))
                continue
            offset, expected, reason = scan.valid_end, scan.last_lsn + 1, scan.damage
            tail = len(data) - offset
            # A torn tail: the last group write was cut, and nothing valid follows it.
            if is_last and tail <= limits.wal_group_bytes_max:
                found = _look_past(data, offset, expected, [], keep_above=None)
                if not found.count and not found.exhausted:
                    ops.truncate(path, offset)
                    report.torn_tail_bytes += tail
                    segments.append(SegmentInfo(path, first_lsn, scan.last_lsn, offset))
                    continue
        kept = _corrupt_segment(directory, ops, report, data, path=path, first_lsn=first_lsn, offset=offset,
                                expected=expected, reason=reason, later=listed[position + 1 :],
                                applied_lsn=applied_lsn, repair=repair)
        if kept is not None:
            segments.append(kept)
        break
    report.segments = len(segments)
    return segments


def _create_segment(directory: Path, ops: FileOps, first_lsn: int) -> SegmentInfo:
    path = directory / segment_name(first_lsn)
    fd = ops.open_segment(path, create=True)
    try:
        header = encode_segment_header(first_lsn)
        ops.write(fd, header)
        ops.fdatasync(fd)
    finally:
        ops.close(fd)
    ops.fsync_directory(directory)
    return SegmentInfo(path, first_lsn, first_lsn - 1, SEGMENT_HEADER_BYTES)


# ---- group commit ---------------------------------------------------------------------------------

@dataclass
class _Pending:
    framed: list[bytes]
    first_lsn: int
    last_lsn: int
    context: Any
    future: asyncio.Future[int]
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)


async def gather_companions(queued_records: Callable[[], int], batch_size: int, timeout_s: float) -> None:
    """Let writers that are ready join the group about to go: yield to the event loop while records
    keep arriving, up to ``batch_size`` of them and for at most ``timeout_s``. An idle store goes at
    once; a busy one fills its groups."""
    if timeout_s <= 0:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while queued_records() < batch_size and loop.time() < deadline:
        before = queued_records()
        await asyncio.sleep(0)
        if queued_records() == before:
            return


class Committer:
    """Many writers, one durable write per group, acks only after it: the grouping every log shares (the
    local :class:`GroupCommitter`, and the shared logs' :class:`~maif.storage.sharedlog.SharedLogCommitter`:
    Kafka's and NATS JetStream's); a subclass says how a group is made durable.

    The committer task takes everything queued (up to ``batch_size`` records). When fewer are queued it
    yields to the event loop so writers that are ready can join, for at most ``batch_timeout_ms`` and
    only while new records keep arriving: an idle store acks at once, a busy one fills its groups.
    While a group is being made durable, the next one gathers.
    ``on_commit(first_lsn, last_lsn, context)`` runs on the event loop after the group is durable and
    before the writer is woken, so a block is readable (read-your-writes) by the time its receipt exists.
    A group that fails fails every queued writer too, with :meth:`_failure_of` the error.
    """

    task_name = "maif-committer"

    def __init__(self, *, first_lsn: int, batch_size: int, batch_timeout_ms: float,
                 on_commit: Callable[[int, int, Any], None]) -> None:
        self._batch_size = min(batch_size, limits.wal_group_records_max)
        self._batch_timeout_s = batch_timeout_ms / 1000.0
        self._on_commit = on_commit
        self._queue: deque[_Pending] = deque()
        self._queued_records = 0
        self._next_lsn = first_lsn
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.groups_total = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.task_name)

    @property
    def failure(self) -> str | None:
        """Why the log refuses writes for good (None: it takes them)."""
        return None

    @property
    def idle(self) -> bool:
        """True once the committer task has stopped (after :meth:`close`)."""
        return self._task is None or self._task.done()

    @property
    def queued_records(self) -> int:
        return self._queued_records

    def append(self, payloads: Sequence[bytes], context: Any) -> asyncio.Future[int]:
        """Queue records; the future resolves to their first LSN once they are durable."""
        if self._closing:
            raise StoreClosedError("the store is closing; no new writes")
        first = self._next_lsn
        last = first + len(payloads) - 1
        framed = self._frame(first, payloads)  # may refuse (LimitExceededError): then no LSN is taken
        self._next_lsn = last + 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(framed, first, last, context, future))
        self._queued_records += len(payloads)
        self._wakeup.set()
        return future

    def _frame(self, first_lsn: int, payloads: Sequence[bytes]) -> list[bytes]:
        """What is queued for ``payloads`` (the local log frames each record with its LSN)."""
        return list(payloads)

    async def _write(self, group: list[_Pending]) -> None:
        """Make the group durable, or raise."""
        raise NotImplementedError

    def _failure_of(self, error: BaseException) -> BaseException:
        """The error every writer of a failed group (and every queued one) gets."""
        return error

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await gather_companions(lambda: self._queued_records, self._batch_size, self._batch_timeout_s)
            group = self._take_group()
            try:
                await self._write(group)
            except BaseException as error:  # noqa: BLE001 - every writer must learn the outcome
                self._fail_all(group, self._failure_of(error))
                continue
            self.groups_total += 1
            for pending in group:
                self._on_commit(pending.first_lsn, pending.last_lsn, pending.context)
            for pending in group:
                if not pending.future.done():
                    pending.future.set_result(pending.first_lsn)

    def _take_group(self) -> list[_Pending]:
        group: list[_Pending] = []
        records = 0
        size = 0
        while self._queue:
            pending = self._queue[0]
            count = pending.last_lsn - pending.first_lsn + 1
            pending_bytes = sum(len(chunk) for chunk in pending.framed)
            if group and (records + count > self._batch_size or size + pending_bytes
                          > limits.wal_group_bytes_max):
                break
            group.append(self._queue.popleft())
            records += count
            size += pending_bytes
        self._queued_records -= records
        return group

    def _fail_all(self, group: list[_Pending], failure: BaseException) -> None:
        """A failed group fails every queued writer too (in the local log, their LSNs follow the lost
        ones)."""
        everyone = group + list(self._queue)
        self._queue.clear()
        self._queued_records = 0
        for pending in everyone:
            if not pending.future.done():
                pending.future.set_exception(failure)

    async def close(self) -> None:
        """Let queued writes finish (or fail), then stop the committer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task


class GroupCommitter(Committer):
    """The local log's committer: one write + one fdatasync per group (:class:`Committer`), the sync on
    a dedicated thread."""

    task_name = "maif-wal-committer"

    def __init__(self, wal: WriteAheadLog, *, batch_size: int, batch_timeout_ms: float,
                 on_commit: Callable[[int, int, Any], None]) -> None:
        super().__init__(first_lsn=wal.next_lsn, batch_size=batch_size, batch_timeout_ms=batch_timeout_ms,
                         on_commit=on_commit)
        self._wal = wal
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maif-wal")

    @property
    def failure(self) -> str | None:
        return self._wal.failure

    def append(self, payloads: Sequence[bytes], context: Any) -> asyncio.Future[int]:
        if self._wal.failure is not None and not self._closing:
            raise DurabilityError(self._wal.failure, hint="reopen the store to recover")
        return super().append(payloads, context)

    def _frame(self, first_lsn: int, payloads: Sequence[bytes]) -> list[bytes]:
        return frame_records(first_lsn, payloads)

    async def _write(self, group: list[_Pending]) -> None:
        data = b"".join(chunk for pending in group for chunk in pending.framed)
        await asyncio.get_running_loop().run_in_executor(self._executor, self._wal.append, data,
                                                         group[0].first_lsn, group[-1].last_lsn)

    def _failure_of(self, error: BaseException) -> BaseException:
        return error if isinstance(error, DurabilityError) else DurabilityError(
            f"write-ahead log append failed: {error!r}")

    async def close(self) -> None:
        """Let queued writes finish (or fail), then stop the committer and its thread."""
        await super().close()
        self._executor.shutdown(wait=True)


__all__ = [
    "QUARANTINE_DIRECTORY",
    "SALVAGE_FILE",
    "Committer",
    "FileOps",
    "GroupCommitter",
    "RecoveryReport",
    "SegmentInfo",
    "WriteAheadLog",
    "frame_record",
    "frame_records",
    "lsn_ranges_text",
    "record_checksum",
    "segment_name",
]
