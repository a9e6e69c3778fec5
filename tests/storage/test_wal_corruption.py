"""Damage in the write-ahead log that is not a torn tail: refused with WALCorruptionError, repaired only
when asked (quarantine, salvage, re-append), never truncated silently (issue 12, finding 6)."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from maif import limits
from maif.errors import BlockNotFoundError, IntegrityError, WALCorruptionError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.applier import Applier
from maif.storage.backends.memory import MemoryChunkStore, MemoryMetadataIndex, MemoryVectorIndex
from maif.storage.cache import LRUHotCache
from maif.storage.engine import Backends, MAIFStorage, create_maif_storage
from maif.storage.wal import (
    QUARANTINE_DIRECTORY,
    RECORD_HEADER_BYTES,
    SALVAGE_FILE,
    SEGMENT_HEADER_BYTES,
    FileOps,
    WriteAheadLog,
    frame_record,
    segment_name,
)

T = TypeVar("T")
_HEADER = struct.Struct("<4sIQI")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def append_payloads(wal: WriteAheadLog, payloads: list[bytes]) -> None:
    first = wal.next_lsn
    data = b"".join(frame_record(first + i, p) for i, p in enumerate(payloads))
    wal.append(data, first, first + len(payloads) - 1)


def replayed(directory: Path, **options: Any) -> list[tuple[int, bytes]]:
    wal, _ = WriteAheadLog.open(directory, **options)
    try:
        return list(wal.replay(0))
    finally:
        wal.close()


def record_offsets(wal_dir: Path) -> dict[int, tuple[Path, int, int]]:
    """LSN -> (segment, offset of its record, payload length), walking the framing of an intact log."""
    found: dict[int, tuple[Path, int, int]] = {}
    for path in sorted(wal_dir.glob("*.wal")):
        data = path.read_bytes()
        offset = SEGMENT_HEADER_BYTES
        while offset + RECORD_HEADER_BYTES <= len(data):
            _magic, length, lsn, _crc = _HEADER.unpack_from(data, offset)
            found[lsn] = (path, offset, length)
            offset += RECORD_HEADER_BYTES + length
    return found


def flip_payload_byte(wal_dir: Path, lsn: int) -> tuple[Path, int]:
    """Flip one byte in the middle of record ``lsn``'s payload; the segment and the record's offset."""
    path, offset, length = record_offsets(wal_dir)[lsn]
    data = bytearray(path.read_bytes())
    data[offset + RECORD_HEADER_BYTES + length // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    return path, offset


def snapshot(directory: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file() and path.name not in skip}


def written_log(directory: Path, count: int = 200, size: int = 20_000, **options: Any) -> list[bytes]:
    """A closed log of ``count`` records of ``size`` random bytes, in groups of 10."""
    payloads = [os.urandom(size) for _ in range(count)]
    wal, _ = WriteAheadLog.open(directory, **options)
    for start in range(0, count, 10):
        append_payloads(wal, payloads[start:start + 10])
    wal.close()
    return payloads


# ---- the write-ahead log alone ---------------------------------------------------------------------

def test_flipped_byte_mid_last_segment_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    payloads = written_log(tmp_path)  # 4 MB in one segment: the damage is well within 16 MiB of the end
    segment, offset = flip_payload_byte(tmp_path, 50)
    before = snapshot(tmp_path)
    with pytest.raises(WALCorruptionError) as caught:
        WriteAheadLog.open(tmp_path)
    error = caught.value
    assert isinstance(error, IntegrityError)
    assert error.segment == segment.name == segment_name(1) and error.offset == offset
    assert error.first_lost_lsn == 50 and error.lost_lsns == [(50, 50)]
    assert error.salvageable_lsns == (51, 200) and error.salvageable_count == 150
    assert segment.name in error.message and "50" in error.message and "51..200" in error.message
    assert error.hint is not None and "repair=True" in error.hint
    assert "maif store check --repair" in error.hint
    assert snapshot(tmp_path) == before, "a refused open must not change a byte"
    with pytest.raises(WALCorruptionError):  # and it stays refused
        WriteAheadLog.open(tmp_path)
    assert len(payloads) == 200


def test_repair_quarantines_salvages_and_cuts_at_the_damage(tmp_path: Path) -> None:
    payloads = written_log(tmp_path)
    segment, offset = flip_payload_byte(tmp_path, 50)
    damaged = segment.read_bytes()
    wal, report = WriteAheadLog.open(tmp_path, repair=True)
    assert report.corruption is not None and "offset" in report.corruption
    assert report.lost_lsns == [(50, 50)]
    assert report.salvaged == [(lsn, payloads[lsn - 1]) for lsn in range(51, 201)]
    assert [Path(path).read_bytes() for path in report.quarantined] == [damaged]
    assert Path(report.quarantined[0]).parent.parent == tmp_path / QUARANTINE_DIRECTORY
    assert segment.stat().st_size == offset and wal.next_lsn == 50
    assert (tmp_path / SALVAGE_FILE).exists()
    append_payloads(wal, [payload for _, payload in report.salvaged])  # the caller's part: new LSNs
    wal.salvage_reappended()
    wal.close()
    assert not (tmp_path / SALVAGE_FILE).exists()
    wal, report = WriteAheadLog.open(tmp_path)  # a plain open works again, and reports nothing
    wal.close()
    assert report.corruption is None and report.salvaged == [] and report.records == 199
    assert [payload for _, payload in replayed(tmp_path)] == payloads[:49] + payloads[50:]


def test_repeated_repairs_keep_every_quarantine(tmp_path: Path) -> None:
    written_log(tmp_path, count=30, size=1000)
    flip_payload_byte(tmp_path, 10)
    wal, first = WriteAheadLog.open(tmp_path, repair=True)
    append_payloads(wal, [payload for _, payload in first.salvaged])
    wal.salvage_reappended()
    wal.close()
    flip_payload_byte(tmp_path, 20)
    wal, second = WriteAheadLog.open(tmp_path, repair=True)
    wal.close()
    assert first.quarantined[0] != second.quarantined[0]
    assert all(Path(path).exists() for path in first.quarantined + second.quarantined)


def test_only_records_past_the_checkpoint_are_salvaged_or_lost(tmp_path: Path) -> None:
    payloads = written_log(tmp_path, count=40, size=500)
    flip_payload_byte(tmp_path, 10)
    with pytest.raises(WALCorruptionError) as caught:  # applied up to 20: LSN 10 is not lost, yet refused
        WriteAheadLog.open(tmp_path, min_next_lsn=21)
    assert caught.value.lost_lsns == [] and caught.value.salvageable_lsns == (11, 40)
    wal, report = WriteAheadLog.open(tmp_path, min_next_lsn=21, repair=True)
    wal.close()
    assert report.lost_lsns == [] and report.salvaged == [(lsn, payloads[lsn - 1]) for lsn in range(21, 41)]
    assert wal.next_lsn == 21


def test_damage_in_an_earlier_segment_is_corruption_and_repair_spans_segments(tmp_path: Path) -> None:
    payloads = written_log(tmp_path, count=60, size=1000, segment_bytes_max=8 * 1024)
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) >= 5
    segment, _ = flip_payload_byte(tmp_path, 25)
    later = [path for path in segments if path.name > segment.name]
    assert segment != segments[-1] and later
    before = snapshot(tmp_path)
    with pytest.raises(WALCorruptionError) as caught:
        WriteAheadLog.open(tmp_path, segment_bytes_max=8 * 1024)
    assert caught.value.segment == segment.name and caught.value.salvageable_lsns == (26, 60)
    assert snapshot(tmp_path) == before
    originals = {path.name: path.read_bytes() for path in [segment, *later]}
    wal, report = WriteAheadLog.open(tmp_path, segment_bytes_max=8 * 1024, repair=True)
    assert {Path(path).name: Path(path).read_bytes() for path in report.quarantined} == originals
    assert report.lost_lsns == [(25, 25)] and [lsn for lsn, _ in report.salvaged] == list(range(26, 61))
    assert not any(path.exists() for path in later)
    append_payloads(wal, [payload for _, payload in report.salvaged])
    wal.salvage_reappended()
    wal.close()
    assert [payload for _, payload in replayed(tmp_path)] == payloads[:24] + payloads[25:]


def test_damaged_header_of_an_earlier_segment_is_corruption(tmp_path: Path) -> None:
    payloads = written_log(tmp_path, count=60, size=1000, segment_bytes_max=8 * 1024)
    segments = sorted(tmp_path.glob("*.wal"))
    target = segments[2]
    first_lsn = int(target.name.split(".")[0])
    data = bytearray(target.read_bytes())
    data[3] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WALCorruptionError, match=target.name) as caught:
        WriteAheadLog.open(tmp_path)
    assert caught.value.first_lost_lsn == first_lsn and caught.value.lost_lsns == []
    assert caught.value.salvageable_lsns == (first_lsn, 60)  # every record of it still validates
    wal, report = WriteAheadLog.open(tmp_path, repair=True)
    assert not target.exists() and wal.next_lsn == first_lsn
    append_payloads(wal, [payload for _, payload in report.salvaged])
    wal.salvage_reappended()
    wal.close()
    assert [payload for _, payload in replayed(tmp_path)] == payloads


class CrashOnTruncate(FileOps):
    """A process that dies (here: raises) when the repair is about to cut the damaged segment."""

    def truncate(self, path: Path, size: int) -> None:
        raise OSError(5, "simulated crash")


def test_a_crash_in_the_middle_of_a_repair_loses_nothing(tmp_path: Path) -> None:
    payloads = written_log(tmp_path, count=60, size=1000, segment_bytes_max=8 * 1024)
    flip_payload_byte(tmp_path, 25)
    with pytest.raises(OSError, match="simulated crash"):  # later segments deleted, the cut not done
        WriteAheadLog.open(tmp_path, repair=True, file_ops=CrashOnTruncate())
    with pytest.raises(WALCorruptionError):  # still damaged: a plain open still refuses
        WriteAheadLog.open(tmp_path)
    wal, report = WriteAheadLog.open(tmp_path, repair=True)  # the repair again: nothing lost
    wal.close()
    assert [lsn for lsn, _ in report.salvaged] == list(range(26, 61)) and report.lost_lsns == [(25, 25)]
    # A crash after the cut, before the salvage was re-appended: every open returns it again.
    wal, report = WriteAheadLog.open(tmp_path)
    assert report.corruption is not None and "interrupted repair" in report.corruption
    assert [payload for _, payload in report.salvaged] == payloads[25:]
    append_payloads(wal, [payload for _, payload in report.salvaged])
    wal.salvage_reappended()
    wal.close()
    assert [payload for _, payload in replayed(tmp_path)] == payloads[:24] + payloads[25:]


def test_torn_tails_are_still_truncated_silently(tmp_path: Path) -> None:
    payloads = written_log(tmp_path, count=100, size=30_000)  # 3 MB acknowledged
    segment = tmp_path / segment_name(1)
    intact = segment.read_bytes()
    # Cut inside the first record of the last group: one whose payload is full of record magics
    # (candidates that fail), zeros, a cut header.
    magics = frame_record(101, b"WREC" * 5000) + frame_record(102, b"y" * 100)
    for torn in (magics[:15_000], magics[:RECORD_HEADER_BYTES + 4], bytes(8192),
                 frame_record(101, b"x" * 100)[:50]):
        segment.write_bytes(intact + torn)
        wal, report = WriteAheadLog.open(tmp_path)
        wal.close()
        assert report.torn_tail_bytes == len(torn) and report.corruption is None
        assert segment.read_bytes() == intact
    assert [payload for _, payload in replayed(tmp_path)] == payloads


def test_a_torn_group_with_a_later_record_intact_is_refused(tmp_path: Path) -> None:
    """Out-of-order writeback after a power loss: the start of the last group never reached the disk
    but a later page of it did. Nothing of it was acknowledged, but recovery cannot tell that from
    bit rot, so it refuses (the repair keeps the later record as a new one)."""
    written_log(tmp_path, count=10, size=100)
    segment = tmp_path / segment_name(1)
    group = frame_record(11, b"a" * 5000) + frame_record(12, b"b" * 100)
    segment.write_bytes(segment.read_bytes() + bytes(4096) + group[4096:])
    with pytest.raises(WALCorruptionError) as caught:
        WriteAheadLog.open(tmp_path)
    assert caught.value.salvageable_lsns == (12, 12) and caught.value.lost_lsns == [(11, 11)]


def test_the_search_past_damage_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written_log(tmp_path, count=10, size=100)
    segment = tmp_path / segment_name(1)
    segment.write_bytes(segment.read_bytes() + b"WREC" * 100)
    monkeypatch.setattr(limits, "wal_resync_candidates_max", 10)
    with pytest.raises(WALCorruptionError, match="stopped after 10 positions"):
        WriteAheadLog.open(tmp_path)
    monkeypatch.setattr(limits, "wal_resync_candidates_max", 1000)
    assert len(replayed(tmp_path)) == 10  # with enough budget it is a torn tail again


# ---- through the engine ---------------------------------------------------------------------------

def memory_backends() -> Backends:
    return Backends(MemoryChunkStore(), MemoryMetadataIndex(), MemoryVectorIndex(), LRUHotCache(1 << 22))


def blocks_for_test(count: int = 90) -> list[MAIFBlock]:
    """About 4 MB of text blocks, with an EMBEDDING block every third."""
    rng = np.random.default_rng(7)
    blocks = []
    for index in range(count):
        if index % 3 == 2:
            vector = rng.standard_normal(32).astype(np.float32)
            blocks.append(MAIFBlock(id=f"e{index}", block_type=MAIFBlockType.EMBEDDING, data=vector.tobytes(),
                                    metadata={"dtype": "float32"}, agent_id="embedder"))
        else:
            blocks.append(MAIFBlock(id=f"t{index}", data=os.urandom(64_000), agent_id="writer"))
    return blocks


async def write_all(data_dir: Path, blocks: list[MAIFBlock], backends: Backends | None) -> dict[str, int]:
    async with await create_maif_storage({"data_dir": str(data_dir), "tier_interval_s": 0},
                                         backends=backends) as storage:
        lsns = {}
        for start in range(0, len(blocks), 7):
            for receipt in await storage.write_blocks(blocks[start:start + 7]):
                lsns[receipt.block_id] = receipt.lsn
    return lsns


async def open_store(data_dir: Path, backends: Backends | None, **options: Any) -> MAIFStorage:
    return await create_maif_storage({"data_dir": str(data_dir), "tier_interval_s": 0}, backends=backends,
                                     **options)


def test_engine_refuses_a_corrupt_log_and_repairs_it_on_request(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # One segment (tests/storage/fault_child.py sets a small size on the class without restoring it).
    monkeypatch.setattr(MAIFStorage, "wal_segment_bytes_max", limits.wal_segment_bytes_max)
    blocks = blocks_for_test()
    lsns = run(write_all(tmp_path, blocks, memory_backends()))  # with memory backends the log is the store
    damaged_block = blocks[41]  # an EMBEDDING block in the middle
    assert damaged_block.block_type is MAIFBlockType.EMBEDDING
    lost_lsn = lsns[damaged_block.id]
    segment, _ = flip_payload_byte(tmp_path / "wal", lost_lsn)
    before = snapshot(tmp_path, skip=("LOCK",))
    with pytest.raises(WALCorruptionError) as caught:
        run(open_store(tmp_path, memory_backends()))
    assert caught.value.segment == segment.name and caught.value.first_lost_lsn == lost_lsn
    assert caught.value.salvageable_lsns == (lost_lsn + 1, len(blocks))
    assert snapshot(tmp_path, skip=("LOCK",)) == before

    async def repair() -> None:
        storage = await open_store(tmp_path, memory_backends(), repair=True)
        async with storage:
            report = storage.recovery
            assert report.lost_lsns == [(lost_lsn, lost_lsn)]
            assert report.reappended_lsns == (lost_lsn, len(blocks) - 1) and report.salvaged == []
            assert [Path(path).read_bytes() for path in report.quarantined] == [before[f"wal/{segment.name}"]]
            for block in blocks:
                if block.id == damaged_block.id:
                    with pytest.raises(BlockNotFoundError):
                        await storage.read_block(block.id)
                else:
                    assert await storage.read_block(block.id) == block
            hits = await storage.semantic_search(np.frombuffer(blocks[44].data, dtype=np.float32), limit=1)
            assert hits[0].block_id == blocks[44].id
            check = await storage.check()
            assert not check.ok and any(f"LSNs {lost_lsn} unreadable" in line and "salvaged" in line
                                        and QUARANTINE_DIRECTORY in line for line in check.problems)

    run(repair())

    async def reopen() -> None:
        async with await open_store(tmp_path, memory_backends()) as storage:
            assert storage.recovery.corruption is None
            survivors = [block for block in blocks if block.id != damaged_block.id]
            assert [await storage.read_block(block.id) for block in survivors] == survivors
            assert (await storage.check()).ok

    run(reopen())


def test_engine_repair_across_segments_with_local_backends(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = blocks_for_test(60)
    monkeypatch.setattr(MAIFStorage, "wal_segment_bytes_max", 256 * 1024)

    async def nothing(self: object, argument: object) -> None:
        return None

    # A crash after the acks, before anything was applied: the log is the only copy of every block.
    with monkeypatch.context() as patch:
        patch.setattr(MAIFStorage, "_checkpoint", nothing)
        patch.setattr(Applier, "apply", nothing)
        lsns = run(write_all(tmp_path, blocks, None))
    wal_dir = tmp_path / "wal"
    assert len(list(wal_dir.glob("*.wal"))) >= 4
    lost_lsn = lsns[blocks[10].id]
    segment, _ = flip_payload_byte(wal_dir, lost_lsn)
    assert segment != sorted(wal_dir.glob("*.wal"))[-1], "the damage must be in an earlier segment"
    before = snapshot(wal_dir)
    with pytest.raises(WALCorruptionError) as caught:
        run(open_store(tmp_path, None))
    assert caught.value.segment == segment.name and caught.value.salvageable_lsns == (lost_lsn + 1, 60)
    assert snapshot(wal_dir) == before

    async def repair() -> None:
        async with await open_store(tmp_path, None, repair=True) as storage:
            assert storage.recovery.lost_lsns == [(lost_lsn, lost_lsn)]
            assert storage.recovery.reappended_lsns == (lost_lsn, 59)
            assert len(storage.recovery.quarantined) >= 2
            for block in blocks:
                if block.id != blocks[10].id:
                    assert await storage.read_block(block.id) == block
            with pytest.raises(BlockNotFoundError):
                await storage.read_block(blocks[10].id)

    run(repair())

    async def reopen() -> None:
        async with await open_store(tmp_path, None) as storage:
            assert storage.recovery.corruption is None
            for block in blocks[11:]:
                assert await storage.read_block(block.id) == block

    run(reopen())


# ---- a segment file missing from the middle of the log ----------------------------------------------

def first_lsn_of(path: Path) -> int:
    return int(path.name.split(".")[0])


def test_a_missing_segment_is_corruption_and_repair_salvages_the_later_ones(tmp_path: Path) -> None:
    payloads = written_log(tmp_path, count=60, size=1000, segment_bytes_max=8 * 1024)
    segments = sorted(tmp_path.glob("*.wal"))
    assert len(segments) >= 4
    gap = (first_lsn_of(segments[1]), first_lsn_of(segments[2]) - 1)
    segments[1].unlink()
    before = snapshot(tmp_path)
    with pytest.raises(WALCorruptionError) as caught:
        WriteAheadLog.open(tmp_path)
    error = caught.value
    assert error.segment == segments[2].name and error.offset == 0 and error.first_lost_lsn == gap[0]
    assert error.lost_lsns == [gap] and error.salvageable_lsns == (gap[1] + 1, 60)
    assert error.salvageable_count == 60 - gap[1] and "gap" in error.message
    assert snapshot(tmp_path) == before, "a refused open must not change a byte"
    originals = {path.name: path.read_bytes() for path in segments[2:]}
    wal, report = WriteAheadLog.open(tmp_path, repair=True)
    assert report.lost_lsns == [gap] and report.corruption is not None and "missing" in report.corruption
    assert report.salvaged == [(lsn, payloads[lsn - 1]) for lsn in range(gap[1] + 1, 61)]
    assert {Path(path).name: Path(path).read_bytes() for path in report.quarantined} == originals
    assert segments[0].exists() and not any(path.exists() for path in segments[2:])
    assert wal.next_lsn == gap[0]
    append_payloads(wal, [payload for _, payload in report.salvaged])
    wal.salvage_reappended()
    wal.close()
    wal, report = WriteAheadLog.open(tmp_path)
    wal.close()
    assert report.corruption is None and report.salvaged == []
    assert [payload for _, payload in replayed(tmp_path)] == payloads[:gap[0] - 1] + payloads[gap[1]:]


def test_a_missing_segment_at_or_below_the_checkpoint_loses_nothing(tmp_path: Path) -> None:
    """Its records were applied already (recycling can leave such a hole after a power loss): the log
    opens, with or without repair, and replays what is above the checkpoint."""
    payloads = written_log(tmp_path, count=60, size=1000, segment_bytes_max=8 * 1024)
    segments = sorted(tmp_path.glob("*.wal"))
    gap = (first_lsn_of(segments[1]), first_lsn_of(segments[2]) - 1)
    segments[1].unlink()
    before = snapshot(tmp_path)
    for repair in (False, True):
        wal, report = WriteAheadLog.open(tmp_path, min_next_lsn=gap[1] + 1, repair=repair)
        assert report.corruption is None and report.lost_lsns == [] and report.salvaged == []
        assert wal.next_lsn == 61
        assert [payload for _, payload in wal.replay(gap[1])] == payloads[gap[1]:]
        wal.close()
        assert snapshot(tmp_path) == before
    # A gap reaching above the checkpoint: only the part above it is lost.
    checkpoint = gap[0] + 1
    with pytest.raises(WALCorruptionError) as caught:
        WriteAheadLog.open(tmp_path, min_next_lsn=checkpoint + 1)
    assert caught.value.lost_lsns == [(checkpoint + 1, gap[1])]
    wal, report = WriteAheadLog.open(tmp_path, min_next_lsn=checkpoint + 1, repair=True)
    wal.close()
    assert report.lost_lsns == [(checkpoint + 1, gap[1])]
    assert [lsn for lsn, _ in report.salvaged] == list(range(gap[1] + 1, 61))
    assert wal.next_lsn == checkpoint + 1


def test_engine_refuses_a_missing_segment_and_repairs_it_on_request(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [MAIFBlock(id=f"b{index}", data=os.urandom(1000), agent_id="writer") for index in range(60)]
    monkeypatch.setattr(MAIFStorage, "wal_segment_bytes_max", 16 * 1024)

    async def nothing(self: object, argument: object) -> None:
        return None

    # A crash after the acks, before anything was applied or checkpointed: the log is the only copy.
    with monkeypatch.context() as patch:
        patch.setattr(MAIFStorage, "_checkpoint", nothing)
        patch.setattr(Applier, "apply", nothing)
        lsns = run(write_all(tmp_path, blocks, None))
    wal_dir = tmp_path / "wal"
    segments = sorted(wal_dir.glob("*.wal"))
    assert len(segments) >= 3
    gap = (first_lsn_of(segments[1]), first_lsn_of(segments[2]) - 1)
    lost_ids = {block_id for block_id, lsn in lsns.items() if gap[0] <= lsn <= gap[1]}
    assert lost_ids and len(lost_ids) == gap[1] - gap[0] + 1
    segments[1].unlink()
    before = snapshot(wal_dir)
    with pytest.raises(WALCorruptionError) as caught:
        run(open_store(tmp_path, None))
    assert caught.value.lost_lsns == [gap] and caught.value.salvageable_lsns == (gap[1] + 1, 60)
    assert snapshot(wal_dir) == before

    async def repair() -> None:
        async with await open_store(tmp_path, None, repair=True) as storage:
            assert storage.recovery.lost_lsns == [gap]
            assert storage.recovery.reappended_lsns == (gap[0], gap[0] + 60 - gap[1] - 1)
            for block in blocks:
                if block.id in lost_ids:
                    with pytest.raises(BlockNotFoundError):
                        await storage.read_block(block.id)
                else:
                    assert await storage.read_block(block.id) == block

    run(repair())

    async def reopen() -> None:
        async with await open_store(tmp_path, None) as storage:
            assert storage.recovery.corruption is None
            for block in blocks:
                if block.id not in lost_ids:
                    assert await storage.read_block(block.id) == block

    run(reopen())
