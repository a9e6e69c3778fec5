"""Pack files and the pack index: layout, crash recovery, hostile bytes, scrub findings.

Crashes are simulated by abandoning a PackStore without close() (its descriptor closed by hand) and by
cutting or damaging files the way a torn write or a bad disk would.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif.errors import (
    BlockNotFoundError,
    DurabilityError,
    IntegrityError,
    MAIFError,
    UnsupportedVersionError,
)
from maif.storage.packs import RECORD_DIGEST_CONTEXT, PackStore, pack_file_name, record_digest
from maif.testing.conformance import chunk, flip_byte, random_bytes

FRAME_HEADER_BYTES = 48
INDEX_HEADER_BYTES = 16
INDEX_ENTRY_BYTES = 64


def crash(store: PackStore) -> None:
    """Drop a store as a kill -9 would: no flush, no close; only release the descriptor."""
    os.close(store._active_fd)
    store._active_fd = -1


def chunks_of(count: int, size: int = 20_000, seed: int = 0) -> list[tuple[bytes, bytes]]:
    return [chunk(random_bytes(size, seed * 1000 + number)) for number in range(count)]


def test_pack_starts_with_its_header_and_frames_follow(tmp_path: Path) -> None:
    store = PackStore(tmp_path)
    digest, data = chunk(b"hello pack")
    store.put_chunks([(digest, data)])
    store.close()
    raw = (tmp_path / pack_file_name(1)).read_bytes()
    assert raw[:8] == b"MAIFPACK"
    assert struct.unpack_from("<HHI", raw, 8) == (2, 0, 1)
    assert raw[16:48] == digest
    assert struct.unpack_from("<B3sII", raw, 48) == (0, b"\0\0\0", len(data), len(data))
    assert raw[16 + FRAME_HEADER_BYTES :] == data
    index = (tmp_path / "index.log").read_bytes()
    assert index[:8] == b"MAIFPIDX" and len(index) == INDEX_HEADER_BYTES + INDEX_ENTRY_BYTES


def test_flushed_chunks_survive_a_crash(tmp_path: Path) -> None:
    chunks = chunks_of(10)
    store = PackStore(tmp_path)
    store.put_chunks(chunks)
    store.flush()
    crash(store)
    reopened = PackStore(tmp_path)
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks)


def test_damage_before_indexed_frames_is_reported_never_truncated(tmp_path: Path) -> None:
    chunks = chunks_of(6)
    store = PackStore(tmp_path)
    store.put_chunks(chunks)
    store.flush()
    store.close()
    pack = tmp_path / pack_file_name(1)
    size = pack.stat().st_size
    first_data_byte = 16 + FRAME_HEADER_BYTES + 100
    flip_byte(pack, first_data_byte)
    reopened = PackStore(tmp_path)
    assert pack.stat().st_size == size  # every healthy chunk after the damage is still there
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks[1:])
    with pytest.raises(IntegrityError):
        reopened.get_chunk(chunks[0][0])
    assert any("damaged" in problem for problem in reopened.scrub(1.0))
    reopened.put_chunks(chunks_of(1, seed=9))  # writing goes on, into a new pack
    reopened.flush()
    assert pack.stat().st_size == size
    reopened.close()


def test_chunks_in_the_pack_but_not_yet_indexed_are_recovered(tmp_path: Path) -> None:
    """Crash after the pack write, before the index write: the tail scan re-indexes the frames."""
    chunks = chunks_of(6)
    store = PackStore(tmp_path)
    store.put_chunks(chunks[:3])
    store.flush()
    store.put_chunks(chunks[3:])
    crash(store)
    reopened = PackStore(tmp_path)
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks)
    assert len((tmp_path / "index.log").read_bytes()) == INDEX_HEADER_BYTES + 6 * INDEX_ENTRY_BYTES


@pytest.mark.parametrize("cut_into_frame", [1, FRAME_HEADER_BYTES - 1, FRAME_HEADER_BYTES + 100])
def test_torn_pack_tail_is_truncated_and_writing_resumes(tmp_path: Path, cut_into_frame: int) -> None:
    chunks = chunks_of(4)
    store = PackStore(tmp_path)
    store.put_chunks(chunks[:3])
    store.flush()
    good_end = store._pack_sizes[1]
    store.put_chunks(chunks[3:])
    crash(store)
    os.truncate(tmp_path / pack_file_name(1), good_end + cut_into_frame)  # the last frame is torn
    reopened = PackStore(tmp_path)
    assert (tmp_path / pack_file_name(1)).stat().st_size == good_end
    assert reopened.counters["tails_truncated"] == 1
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks[:3])
    with pytest.raises(BlockNotFoundError):
        reopened.get_chunk(chunks[3][0])
    reopened.put_chunks(chunks[3:])
    reopened.close()
    assert PackStore(tmp_path).get_chunk(chunks[3][0]) == chunks[3][1]


def test_garbage_after_the_last_frame_is_cut(tmp_path: Path) -> None:
    store = PackStore(tmp_path)
    store.put_chunks(chunks_of(2))
    store.close()
    size = (tmp_path / pack_file_name(1)).stat().st_size
    with open(tmp_path / pack_file_name(1), "ab") as handle:
        handle.write(os.urandom(5000))
    PackStore(tmp_path).close()
    assert (tmp_path / pack_file_name(1)).stat().st_size == size


def test_torn_index_tail_is_truncated(tmp_path: Path) -> None:
    chunks = chunks_of(5)
    store = PackStore(tmp_path)
    store.put_chunks(chunks)
    store.close()
    index = tmp_path / "index.log"
    os.truncate(index, index.stat().st_size - 10)
    reopened = PackStore(tmp_path)
    # the lost entry is re-created from the pack, so every chunk is still found
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks)
    reopened.close()
    assert index.stat().st_size == INDEX_HEADER_BYTES + 5 * INDEX_ENTRY_BYTES


def test_damage_in_the_middle_of_the_index_rebuilds_it_from_the_packs(tmp_path: Path) -> None:
    chunks = chunks_of(30, size=10_000)
    store = PackStore(tmp_path, pack_bytes_max=100_000)
    store.put_chunks(chunks)
    store.close()
    flip_byte(tmp_path / "index.log", INDEX_HEADER_BYTES + 3 * INDEX_ENTRY_BYTES + 5)
    reopened = PackStore(tmp_path, pack_bytes_max=100_000)
    assert reopened.counters["index_rebuilds"] == 1
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks)
    assert any("rebuilt" in repair for repair in reopened.repairs)
    assert reopened.scrub(0.0) == []  # repaired from the packs: nothing is lost


def test_packs_roll_over_and_sealed_packs_carry_a_verified_trailer(tmp_path: Path) -> None:
    chunks = chunks_of(25, size=10_000)
    store = PackStore(tmp_path, pack_bytes_max=50_000)
    store.put_chunks(chunks)
    store.flush()
    stats = store.stats()
    assert stats["packs"] >= 5 and stats["packs_sealed"] == stats["packs"] - 1
    sealed = tmp_path / pack_file_name(1)
    assert sealed.read_bytes()[-48:-40] == b"MAIFSEAL"
    assert store.scrub(0.0) == []
    flip_byte(sealed, 20)  # inside the first frame's digest: only the seal notices without reading data
    problems = store.scrub(0.0)
    assert any("seal" in problem for problem in problems), problems


def test_scrub_reports_chunks_indexed_but_missing(tmp_path: Path) -> None:
    chunks = chunks_of(4)
    store = PackStore(tmp_path)
    store.put_chunks(chunks)
    store.close()
    os.truncate(tmp_path / pack_file_name(1), 16 + FRAME_HEADER_BYTES + 20_000)  # keep the first frame only
    reopened = PackStore(tmp_path)
    # reopening cuts the torn tail; the index still names the lost chunks
    problems = reopened.scrub(0.0)
    assert sum("missing from the pack" in problem for problem in problems) == 3
    with pytest.raises(IntegrityError):
        reopened.get_chunk(chunks[2][0])
    assert reopened.get_chunk(chunks[0][0]) == chunks[0][1]


def test_scrub_reports_a_deleted_pack(tmp_path: Path) -> None:
    store = PackStore(tmp_path, pack_bytes_max=30_000)
    store.put_chunks(chunks_of(6))
    store.close()
    os.unlink(tmp_path / pack_file_name(1))
    problems = PackStore(tmp_path, pack_bytes_max=30_000).scrub(0.0)
    assert any("pack 1" in problem and "missing" in problem for problem in problems)


def test_frame_header_claiming_a_huge_length_is_refused(tmp_path: Path) -> None:
    digest, data = chunk(random_bytes(1000, 5))
    store = PackStore(tmp_path)
    store.put_chunks([(digest, data)])
    store.flush()
    location = store.locate(digest)
    assert location is not None
    with open(tmp_path / pack_file_name(1), "r+b") as handle:
        handle.seek(location.offset + 40)  # the stored length field
        handle.write(struct.pack("<I", 0xFFFF_FFF0))
    with pytest.raises(IntegrityError):
        store.get_chunk(digest)


def test_unknown_flags_are_refused(tmp_path: Path) -> None:
    digest, data = chunk(b"flagged")
    store = PackStore(tmp_path)
    store.put_chunks([(digest, data)])
    store.flush()
    location = store.locate(digest)
    assert location is not None
    header_start = location.offset
    with open(tmp_path / pack_file_name(1), "r+b") as handle:
        handle.seek(header_start)
        header = bytearray(handle.read(FRAME_HEADER_BYTES))
        header[32] = 0x80
        header[44:48] = blake3.blake3(bytes(header[:44])).digest()[:4]  # a well-formed header
        handle.seek(header_start)
        handle.write(header)
    with pytest.raises(IntegrityError):
        store.get_chunk(digest)


def test_write_failure_stops_further_writes(tmp_path: Path) -> None:
    store = PackStore(tmp_path)
    os.close(store._active_fd)
    store._active_fd = os.open(os.devnull, os.O_RDONLY)  # writes now fail with EBADF
    with pytest.raises(DurabilityError):
        store.put_chunks([chunk(b"one")])
    with pytest.raises(DurabilityError):
        store.put_chunks([chunk(b"two")])
    with pytest.raises(DurabilityError):
        store.flush()


def test_dedup_across_reopen_and_stats(tmp_path: Path) -> None:
    chunks = chunks_of(3)
    store = PackStore(tmp_path)
    store.put_chunks(chunks)
    store.close()
    reopened = PackStore(tmp_path)
    assert reopened.put_chunks(chunks) == 0
    stats = reopened.stats()
    assert stats["dedup_hits"] == 3 and stats["chunks"] == 3 and stats["raw_bytes"] == 60_000


@pytest.mark.parametrize("file_name, version_offset", [(pack_file_name(1), 8), ("index.log", 8)])
def test_unknown_format_version_is_refused(tmp_path: Path, file_name: str, version_offset: int) -> None:
    store = PackStore(tmp_path)
    store.put_chunks(chunks_of(1))
    store.close()
    with open(tmp_path / file_name, "r+b") as handle:
        handle.seek(version_offset)
        handle.write(struct.pack("<H", 3))
    with pytest.raises(UnsupportedVersionError):
        PackStore(tmp_path)


# ---- damage campaign: whatever happens to the bytes, a read returns the right data or a typed error ----


DAMAGE = st.lists(
    st.tuples(
        st.sampled_from(["flip", "truncate", "append"]),
        st.sampled_from([pack_file_name(1), pack_file_name(2), "index.log"]),
        st.integers(min_value=0, max_value=200_000),
    ),
    min_size=1,
    max_size=4,
)


def _damage(directory: Path, action: str, name: str, position: int) -> None:
    path = directory / name
    if not path.exists():
        return
    size = path.stat().st_size
    if action == "flip" and size:
        flip_byte(path, position % size)
    elif action == "truncate":
        os.truncate(path, position % (size + 1))
    elif action == "append":
        with open(path, "ab") as handle:
            handle.write(random_bytes(position % 300 + 1, position))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=DAMAGE)
def test_damaged_store_never_returns_wrong_bytes(
    tmp_path_factory: pytest.TempPathFactory, damage: list
) -> None:
    directory = tmp_path_factory.mktemp("damaged")
    chunks = [chunk(random_bytes(9_000, n)) for n in range(6)] + [chunk(b"compressible " * 2000)]
    store = PackStore(directory, pack_bytes_max=40_000)
    store.put_chunks(chunks)
    store.close()
    for action, name, position in damage:
        _damage(directory, action, name, position)
    try:
        reopened = PackStore(directory, pack_bytes_max=40_000)
    except MAIFError:
        return  # refusing to open damaged storage is an acceptable, typed answer
    for digest, data in chunks:
        with contextlib.suppress(IntegrityError, BlockNotFoundError):
            assert reopened.get_chunk(digest) == data
    assert isinstance(reopened.scrub(1.0), list)
    reopened.close()


def test_chunks_of_a_lost_pack_can_be_stored_again(tmp_path: Path) -> None:
    chunks = chunks_of(6)
    store = PackStore(tmp_path, pack_bytes_max=50_000)
    store.put_chunks(chunks)
    store.close()
    os.unlink(tmp_path / pack_file_name(1))
    reopened = PackStore(tmp_path, pack_bytes_max=50_000)
    lost = [item for item in chunks if reopened.locate(item[0]).pack_id == 1]  # type: ignore[union-attr]
    assert lost and reopened.put_chunks(lost) == sum(len(data) for _, data in lost)
    assert reopened.locate(lost[0][0]).pack_id > 2  # type: ignore[union-attr]  # the lost id is not reused
    reopened.close()
    final = PackStore(tmp_path, pack_bytes_max=50_000)
    assert all(final.get_chunk(digest) == data for digest, data in chunks)
    assert not any("chunk" in problem for problem in final.scrub(1.0))


def test_index_rebuild_keeps_cold_pack_entries(tmp_path: Path) -> None:
    chunks = chunks_of(12, size=10_000)
    store = PackStore(tmp_path, pack_bytes_max=30_000)
    store.put_chunks(chunks)
    store.flush()
    store.mark_remote(1)  # pack 1 now lives only in the cold tier
    cold_digests = [digest for digest, _ in chunks if store.locate(digest).pack_id == 1]  # type: ignore[union-attr]
    store.close()
    flip_byte(tmp_path / "index.log", INDEX_HEADER_BYTES + 5 * INDEX_ENTRY_BYTES + 9)
    reopened = PackStore(tmp_path, pack_bytes_max=30_000)
    assert reopened.counters["index_rebuilds"] == 1
    assert all(reopened.locate(digest) is not None for digest, _ in chunks)
    assert all(reopened.is_remote(reopened.locate(d).pack_id) for d in cold_digests)  # type: ignore[union-attr]
    reopened.close()
    again = PackStore(tmp_path, pack_bytes_max=30_000)  # the rewritten index is clean
    assert again.counters["index_rebuilds"] == 0 and len(again.has([d for d, _ in chunks])) == 12


def test_a_batch_written_with_one_write_stores_a_repeated_chunk_once_and_reads_back(tmp_path: Path) -> None:
    chunks = chunks_of(40, size=1_000)
    store = PackStore(tmp_path, pack_bytes_max=30_000)
    new_bytes = store.put_chunks(chunks + chunks[:5] + [chunks[7]])  # repeats inside one call
    assert new_bytes == 40 * 1_000
    assert store.counters["dedup_hits"] == 6
    store.close()
    reopened = PackStore(tmp_path, pack_bytes_max=30_000)
    assert all(reopened.get_chunk(digest) == data for digest, data in chunks)
    assert reopened.scrub(1.0) == []
    assert reopened.stats()["packs"] >= 2  # the batch crossed pack boundaries
    reopened.close()


def test_record_digest_is_blake3_derive_key_mode_from_any_thread() -> None:
    """The record address is BLAKE3 in derive-key mode (SPEC of packs), computed from a hasher keyed
    once and copied per record: the copies must never share state, also across threads."""
    from concurrent.futures import ThreadPoolExecutor

    payloads = [os.urandom(size) for size in (0, 1, 64, 1024, 5000, 300_000)] * 20
    expected = [blake3.blake3(raw, derive_key_context=RECORD_DIGEST_CONTEXT).digest() for raw in payloads]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(record_digest, payloads)) == expected
    assert record_digest(memoryview(payloads[3])) == expected[3] != blake3.blake3(payloads[3]).digest()


def _compacted_store_whose_first_index_entry_ends_a_sealed_pack(directory: Path) -> list[tuple[bytes, bytes]]:
    """Pack 1 = [A, garbage x4] sealed; pack 2 = [B, C, D, E] active; compaction copies A to the end of
    pack 2, which fills it and seals it, and rewrites the index. A was located first, so in dict order its
    entry comes first: the first entry names the LAST frame of pack 2 (the fault campaign's template)."""
    first, *garbage = chunks_of(5, size=10_000, seed=7)
    kept = chunks_of(4, size=10_000, seed=8)
    store = PackStore(directory, pack_bytes_max=50_000)
    store.put_chunks([first, *garbage])
    store.put_chunks(kept)
    assert store.locate(first[0]).pack_id == 1 and store.locate(kept[0][0]).pack_id == 2  # type: ignore[union-attr]
    dead = {digest for digest, _ in garbage}
    result = store.compact(lambda digest, location, body: digest not in dead, 0.05)
    assert result.packs_rewritten == 1
    copied = store.locate(first[0])
    assert copied is not None and copied.pack_id == 2 and 2 in store._sealed
    assert copied.end == store._pack_sizes[2] - 48  # the copy is the last frame of the sealed pack 2
    store.close()
    return [first, *kept]


def test_a_truncated_index_whose_entry_names_a_late_frame_loses_no_chunk_of_that_pack(tmp_path: Path) -> None:
    """Found by the fault campaign (pack_index truncate_inside_entry, "acknowledged_lost: 1 chunk(s)
    missing"): the index kept one entry, naming the last frame of a sealed pack, and open took the pack
    for fully indexed, so its other chunks were never indexed again."""
    live = _compacted_store_whose_first_index_entry_ends_a_sealed_pack(tmp_path)
    os.truncate(tmp_path / "index.log", INDEX_HEADER_BYTES + INDEX_ENTRY_BYTES + 30)  # in the second entry
    reopened = PackStore(tmp_path, pack_bytes_max=50_000)
    assert sorted(reopened.has([digest for digest, _ in live])) == sorted(digest for digest, _ in live)
    assert all(reopened.get_chunk(digest) == data for digest, data in live)
    assert reopened.scrub(1.0) == []
    reopened.close()


def test_a_truncated_index_whose_entry_names_a_late_frame_of_a_cold_pack_reindexes_it(tmp_path: Path) -> None:
    """The same for a pack in the cold tier: the tier layer fetches and re-indexes the packs the index
    names only part of (``remote_underindexed``); a late frame must not pass for the whole pack."""
    _compacted_store_whose_first_index_entry_ends_a_sealed_pack(tmp_path)
    store = PackStore(tmp_path, pack_bytes_max=50_000)
    store.mark_remote(2)
    store.close()
    os.truncate(tmp_path / "index.log", INDEX_HEADER_BYTES + INDEX_ENTRY_BYTES + 30)
    reopened = PackStore(tmp_path, pack_bytes_max=50_000)
    assert 2 in reopened.remote_underindexed
    reopened.close()


def test_an_index_written_out_of_pack_order_is_checked_and_rewritten_in_order_at_open(tmp_path: Path) -> None:
    """A store whose compaction wrote the index in the order of the chunk map (before it was sorted):
    the first open re-checks the packs whose entries go backwards and rewrites the index in pack order,
    so a later cut of the index loses nothing either."""
    live = _compacted_store_whose_first_index_entry_ends_a_sealed_pack(tmp_path)
    index = tmp_path / "index.log"
    raw = index.read_bytes()
    entries = [raw[start : start + INDEX_ENTRY_BYTES]
               for start in range(INDEX_HEADER_BYTES, len(raw), INDEX_ENTRY_BYTES)]
    last = max(entries, key=lambda entry: (struct.unpack_from("<I", entry, 32)[0],  # pack, offset
                                           struct.unpack_from("<Q", entry, 40)[0]))
    index.write_bytes(raw[:INDEX_HEADER_BYTES] + last + b"".join(entry for entry in entries if entry != last))
    reopened = PackStore(tmp_path, pack_bytes_max=50_000)
    reopened.close()
    rewritten = index.read_bytes()
    assert sorted(rewritten[INDEX_HEADER_BYTES:]) == sorted(raw[INDEX_HEADER_BYTES:])  # same entries
    assert rewritten[INDEX_HEADER_BYTES : INDEX_HEADER_BYTES + INDEX_ENTRY_BYTES] != last  # now in pack order
    os.truncate(index, INDEX_HEADER_BYTES + INDEX_ENTRY_BYTES + 30)
    again = PackStore(tmp_path, pack_bytes_max=50_000)
    assert all(again.get_chunk(digest) == data for digest, data in live)
    assert again.scrub(1.0) == []
    again.close()


def test_re_indexing_a_cold_pack_twice_adds_no_entry_the_second_time(tmp_path: Path) -> None:
    """A cold pack the index names only part of is re-indexed from the cold copy; doing it again (or at
    the next open) must find nothing: a block record it already named is not appended again, else its
    entries would repeat and the pack would look out of order, and be fetched again, at every open."""
    store = PackStore(tmp_path, pack_bytes_max=50_000)
    for number in range(6):
        store.put_chunks(chunks_of(1, size=10_000, seed=20 + number))
        store.put_records([f"record {number}".encode()])
    store.flush()
    assert 1 in store._sealed
    cold_copy = (tmp_path / pack_file_name(1)).read_bytes()
    store.mark_remote(1)
    store.close()
    index = tmp_path / "index.log"
    os.truncate(index, INDEX_HEADER_BYTES + 3 * INDEX_ENTRY_BYTES)  # names the first three frames of pack 1
    reopened = PackStore(tmp_path, pack_bytes_max=50_000)
    assert reopened.remote_underindexed == {1}
    assert reopened.reindex_remote_pack(1, cold_copy) > 0
    size = index.stat().st_size
    assert reopened.reindex_remote_pack(1, cold_copy) == 0
    reopened.close()
    assert index.stat().st_size == size
    again = PackStore(tmp_path, pack_bytes_max=50_000)
    assert again.remote_underindexed == set() and not again._entries_unordered
    again.close()
