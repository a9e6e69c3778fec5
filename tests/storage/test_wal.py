"""The write-ahead log: framing, recovery (torn tails vs corruption), rotation, recycling, group commit."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif import limits
from maif.errors import DurabilityError, IntegrityError, LimitExceededError
from maif.storage.wal import (
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    FileOps,
    GroupCommitter,
    WriteAheadLog,
    frame_record,
    frame_records,
    segment_name,
)


def append_payloads(wal: WriteAheadLog, payloads: list[bytes]) -> None:
    first = wal.next_lsn
    data = b"".join(frame_record(first + i, p) for i, p in enumerate(payloads))
    wal.append(data, first, first + len(payloads) - 1)


def replayed(directory: Path, after: int = 0, **options: object) -> list[tuple[int, bytes]]:
    wal, _ = WriteAheadLog.open(directory, **options)  # type: ignore[arg-type]
    try:
        return list(wal.replay(after))
    finally:
        wal.close()


def test_records_survive_reopen_in_order(tmp_path: Path) -> None:
    wal, report = WriteAheadLog.open(tmp_path)
    assert report.records == 0 and wal.next_lsn == 1
    payloads = [os.urandom(n) for n in (0, 1, 100, 5000)]
    append_payloads(wal, payloads[:2])
    append_payloads(wal, payloads[2:])
    wal.close()
    assert replayed(tmp_path) == list(enumerate(payloads, start=1))
    assert replayed(tmp_path, after=3) == [(4, payloads[3])]


def test_rotation_and_recycling_keep_lsns_increasing(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=2048)
    for _ in range(10):
        append_payloads(wal, [b"x" * 3000])
    assert wal.segment_count() == 10
    assert wal.recycle(7) == 7  # segments holding LSNs 1..7 go; the active one always stays
    assert sorted(p.name for p in tmp_path.iterdir())[0] == segment_name(8)
    wal.close()
    assert [lsn for lsn, _ in replayed(tmp_path)] == [8, 9, 10]
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=2048)
    append_payloads(wal, [b"y"])
    assert wal.next_lsn == 12
    wal.close()


def test_min_next_lsn_continues_after_a_fully_recycled_log(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, min_next_lsn=500)
    assert wal.next_lsn == 500
    append_payloads(wal, [b"a"])
    wal.close()
    assert replayed(tmp_path) == [(500, b"a")]


@pytest.mark.parametrize("cut", [1, RECORD_HEADER_BYTES - 1, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + 5])
def test_torn_tail_is_truncated_and_the_log_continues(tmp_path: Path, cut: int) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    append_payloads(wal, [b"first", b"second"])
    wal.close()
    segment = tmp_path / segment_name(1)
    intact = segment.stat().st_size
    with segment.open("ab") as handle:  # a group write interrupted after `cut` bytes
        handle.write(frame_record(3, b"never acknowledged" * 3)[:cut])
    wal, report = WriteAheadLog.open(tmp_path)
    assert report.torn_tail_bytes == cut and segment.stat().st_size == intact
    append_payloads(wal, [b"third"])
    wal.close()
    assert replayed(tmp_path) == [(1, b"first"), (2, b"second"), (3, b"third")]


def test_every_cut_of_the_last_group_recovers_the_acknowledged_prefix(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    append_payloads(wal, [b"acked-1", b"acked-2"])
    wal.close()
    segment = tmp_path / segment_name(1)
    acknowledged = segment.read_bytes()
    group = frame_record(3, b"g" * 40) + frame_record(4, b"h" * 40)
    for cut in range(len(group)):
        segment.write_bytes(acknowledged + group[:cut])
        records = replayed(tmp_path)
        expected_extra = 1 if cut >= len(frame_record(3, b"g" * 40)) else 0
        assert [lsn for lsn, _ in records] == [1, 2, 3][: 2 + expected_extra]


def test_zeroed_tail_counts_as_torn(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    append_payloads(wal, [b"kept"])
    wal.close()
    with (tmp_path / segment_name(1)).open("ab") as handle:
        handle.write(bytes(4096))
    assert replayed(tmp_path) == [(1, b"kept")]


def test_corruption_in_an_earlier_segment_is_an_error_not_a_skip(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    for index in range(4):
        append_payloads(wal, [bytes([index]) * 300])
    wal.close()
    first = tmp_path / segment_name(1)
    data = bytearray(first.read_bytes())
    data[SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 10] ^= 0x01
    first.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="corrupt at offset"):
        WriteAheadLog.open(tmp_path)


def test_corruption_far_from_the_tail_of_the_last_segment_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "wal_group_bytes_max", 1024)
    wal, _ = WriteAheadLog.open(tmp_path)
    for index in range(20):
        append_payloads(wal, [bytes([index]) * 200])
    wal.close()
    segment = tmp_path / segment_name(1)
    data = bytearray(segment.read_bytes())
    data[SEGMENT_HEADER_BYTES + 5] ^= 0xFF  # the first record: thousands of acknowledged bytes follow
    segment.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="acknowledged records are damaged"):
        WriteAheadLog.open(tmp_path)


def test_missing_middle_segment_is_a_gap_error(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path, segment_bytes_max=256)
    for _ in range(3):
        append_payloads(wal, [b"z" * 300])
    wal.close()
    (tmp_path / segment_name(2)).unlink()
    with pytest.raises(IntegrityError, match="gap"):
        WriteAheadLog.open(tmp_path)


def test_segment_created_but_never_written_is_discarded(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    append_payloads(wal, [b"one"])
    wal.close()
    (tmp_path / segment_name(2)).write_bytes(b"MAIF-W")  # crash while writing the new header
    assert replayed(tmp_path) == [(1, b"one")]
    assert not (tmp_path / segment_name(2)).exists()


def test_oversized_record_is_refused_before_framing() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return limits.wal_record_bytes_max + 1

    with pytest.raises(LimitExceededError):
        frame_record(1, Huge(b""))


def test_frame_records_is_frame_record_of_each_joined() -> None:
    payloads = [b"", b"a", b"block" * 300, bytes(range(256)) * 9]
    assert b"".join(frame_records(41, payloads)) == b"".join(frame_record(41 + offset, payload)
                                                             for offset, payload in enumerate(payloads))
    assert frame_records(7, []) == []


def test_frame_records_refuses_an_oversized_record_anywhere_in_the_group() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return limits.wal_record_bytes_max + 1

    with pytest.raises(LimitExceededError):
        frame_records(1, [b"fine", Huge(b""), b"fine"])


class FailingOps(FileOps):
    """Raise a chosen OSError on the Nth fdatasync or write of a record group."""

    def __init__(self) -> None:
        self.fail_sync_at: int | None = None
        self.fail_write_errno: int | None = None
        self.syncs = 0

    def fdatasync(self, fd: int) -> None:
        self.syncs += 1
        if self.fail_sync_at is not None and self.syncs >= self.fail_sync_at:
            raise OSError(errno.EIO, "Input/output error")
        super().fdatasync(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.fail_write_errno is not None:
            written = super().write(fd, bytes(data)[: len(data) // 2])  # a partial write, then the error
            assert written >= 0
            raise OSError(self.fail_write_errno, os.strerror(self.fail_write_errno))
        return super().write(fd, data)


def test_fsync_failure_is_never_retried(tmp_path: Path) -> None:
    ops = FailingOps()
    wal, _ = WriteAheadLog.open(tmp_path, file_ops=ops)
    append_payloads(wal, [b"durable"])
    ops.fail_sync_at = ops.syncs + 1
    with pytest.raises(DurabilityError, match="sync failed"):
        append_payloads(wal, [b"lost"])
    syncs_after_failure = ops.syncs
    with pytest.raises(DurabilityError):
        wal.append(frame_record(2, b"again"), 2, 2)
    assert ops.syncs == syncs_after_failure, "a failed fsync must not be retried"
    wal.close()
    # The unacknowledged record may or may not be on disk; the acknowledged one must be.
    assert replayed(tmp_path)[0] == (1, b"durable")


def test_enospc_during_write_fails_closed_and_recovery_keeps_acknowledged(tmp_path: Path) -> None:
    ops = FailingOps()
    wal, _ = WriteAheadLog.open(tmp_path, file_ops=ops)
    append_payloads(wal, [b"acked"])
    ops.fail_write_errno = errno.ENOSPC
    with pytest.raises(DurabilityError, match="No space left"):
        append_payloads(wal, [b"half-written" * 10])
    wal.close()
    assert replayed(tmp_path) == [(1, b"acked")]


def test_bulk_unsafe_skips_fdatasync(tmp_path: Path) -> None:
    ops = FailingOps()
    wal, _ = WriteAheadLog.open(tmp_path, durable=False, file_ops=ops)
    syncs = ops.syncs
    append_payloads(wal, [b"fast"])
    assert ops.syncs == syncs and wal.syncs_total == 0
    wal.close()
    assert replayed(tmp_path) == [(1, b"fast")]


def test_group_commit_shares_syncs_and_acks_in_order(tmp_path: Path) -> None:
    asyncio.run(group_commit_shares_syncs(tmp_path))


async def group_commit_shares_syncs(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    committed: list[tuple[int, int, str]] = []
    committer = GroupCommitter(wal, batch_size=1000, batch_timeout_ms=2.0,
                               on_commit=lambda first, last, ctx: committed.append((first, last, ctx)))
    committer.start()
    futures = [committer.append([f"record-{i}".encode()], f"ctx-{i}") for i in range(200)]
    lsns = await asyncio.gather(*futures)
    assert lsns == list(range(1, 201))
    assert committer.groups_total < 20 and wal.syncs_total == committer.groups_total
    assert [first for first, _, _ in committed] == lsns  # on_commit ran in LSN order before the ack
    await committer.close()
    wal.close()
    assert len(replayed(tmp_path)) == 200


def test_a_refused_oversized_append_takes_no_lsn(tmp_path: Path) -> None:
    asyncio.run(refused_append_takes_no_lsn(tmp_path))


async def refused_append_takes_no_lsn(tmp_path: Path) -> None:
    """A group the log refuses to frame (a record over limits.wal_record_bytes_max) leaves no hole in the
    LSNs: the next append gets the LSN the refused one would have had, and the log replays gap-free."""
    wal, _ = WriteAheadLog.open(tmp_path)
    committer = GroupCommitter(wal, batch_size=1000, batch_timeout_ms=0, on_commit=lambda *_: None)
    committer.start()
    assert await committer.append([b"first"], None) == 1
    with pytest.raises(LimitExceededError):
        committer.append([b"fine", b"x" * (limits.wal_record_bytes_max + 1)], None)
    assert await committer.append([b"second"], None) == 2
    await committer.close()
    wal.close()
    assert replayed(tmp_path) == [(1, b"first"), (2, b"second")]


def test_group_commit_failure_fails_every_waiting_writer(tmp_path: Path) -> None:
    asyncio.run(group_commit_failure_fails_waiters(tmp_path))


async def group_commit_failure_fails_waiters(tmp_path: Path) -> None:
    ops = FailingOps()
    wal, _ = WriteAheadLog.open(tmp_path, file_ops=ops)
    committer = GroupCommitter(wal, batch_size=1, batch_timeout_ms=0, on_commit=lambda *_: None)
    committer.start()
    assert await committer.append([b"ok"], None) == 1
    ops.fail_sync_at = ops.syncs + 1
    futures = [committer.append([b"doomed"], None) for _ in range(5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(result, DurabilityError) for result in results)
    with pytest.raises(DurabilityError):
        committer.append([b"after"], None)
    await committer.close()
    wal.close()


def test_checkpoint_past_the_end_of_the_log_starts_cleanly(tmp_path: Path) -> None:
    wal, _ = WriteAheadLog.open(tmp_path)
    append_payloads(wal, [b"a", b"b"])
    wal.close()
    wal, _ = WriteAheadLog.open(tmp_path, min_next_lsn=10)  # index applied up to 9 (bulk_unsafe + power loss)
    append_payloads(wal, [b"j"])
    wal.close()
    assert replayed(tmp_path) == [(10, b"j")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), flip=st.integers(1, 255), cut=st.integers(0, 400),
       extra=st.binary(max_size=64))
def test_damaged_log_opens_to_a_true_prefix_or_fails_typed(
    tmp_path_factory: pytest.TempPathFactory, position: int, flip: int, cut: int, extra: bytes
) -> None:
    """Hostile bytes: any flipped byte, cut or appended garbage gives back an exact prefix of what was
    written, or a typed error; never other records, never another exception."""
    directory = tmp_path_factory.mktemp("fuzz")
    payloads = [bytes([n]) * (n * 37 % 300) for n in range(40)]
    wal, _ = WriteAheadLog.open(directory, segment_bytes_max=2048)
    for start in range(0, 40, 4):
        append_payloads(wal, payloads[start:start + 4])
    wal.close()
    segments = sorted(directory.iterdir())
    target = segments[position % len(segments)]
    data = bytearray(target.read_bytes())
    data[position % len(data)] ^= flip
    if target == segments[-1]:
        data = data[: max(0, len(data) - cut)] + extra
    target.write_bytes(bytes(data))
    try:
        records = replayed(directory, segment_bytes_max=2048)
    except (IntegrityError, LimitExceededError):
        return
    assert records == list(enumerate(payloads, start=1))[: len(records)]
