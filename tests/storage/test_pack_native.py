"""The compiled pack writer (``_core.c``'s ``pack_*`` functions, ADR 0092) against packs.py's Python loops.

The core only takes what it can handle exactly as the Python reference does and hands back the rest, so
everything observable must be identical with and without it: the bytes of every pack and of the pack
index, the values returned, the errors raised, and the store's in-memory state (locations, counters,
entries waiting for the flush). Each test runs the same operations through both paths by switching
``maif.format.native``'s module between the core and None, as tests/format/test_native.py does.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

import blake3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif import limits
from maif.errors import LimitExceededError
from maif.format import native
from maif.storage import packs
from maif.storage.packs import (
    FLAG_RECORD,
    ChunkLocation,
    PackStore,
    _encode_entries,
    _StagedFrames,
    record_digest,
)

EXAMPLES = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
THRESHOLD = 64  # small, so that both stored-as-is and compressed frames occur


def compiled_core() -> ModuleType:
    """The extension itself, even when MAIF_PURE_PYTHON=1 keeps it out of ``native``."""
    core = native.extension()
    assert core is not None, "the compiled core is not built (scripts/setup builds it)"
    return core


path_of = native.switched_to


def outcome(run: Callable[[], Any]) -> Any:
    """What ``run()`` returns, or the type and message of what it raises."""
    try:
        return ("returned", run())
    except Exception as error:  # the comparison is the test: both paths must raise the same
        return ("raised", type(error), str(error))


def state_of(store: PackStore) -> dict[str, Any]:
    return {
        "locations": dict(store._locations),
        "unindexed": list(store._unindexed),
        "counters": dict(store.counters),
        "records": store._records_indexed,
        "indexed_end": dict(store._indexed_end),
        "pack_sizes": dict(store._pack_sizes),
        "sealed": set(store._sealed),
        "active": store._active_id,
    }


def files_of(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


Operation = tuple[str, Any]


def apply(store: PackStore, operation: Operation) -> Any:
    kind, argument = operation
    if kind == "chunk_data":
        return outcome(lambda: store.put_chunk_data(argument))
    if kind == "chunks":
        return outcome(lambda: store.put_chunks(argument))
    if kind == "records":
        return outcome(lambda: store.put_records(argument))
    return outcome(store.flush)


def run(directory: Path, core: ModuleType | None, operations: Sequence[Operation],
        **options: Any) -> tuple[list[Any], list[dict[str, Any]], dict[str, bytes], list[int]]:
    """The operations on a new store on one path: results, the state after each, the files, and the
    size of every write of frames to a pack (one per ``_STAGED_BYTES_MAX``, ADR 0044)."""
    directory.mkdir(parents=True)
    writes: list[int] = []
    real_write = packs.os.write

    def write(fd: int, data: Any) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    with path_of(core), mock.patch.object(packs.os, "write", write):
        store = PackStore(directory, compression_threshold=THRESHOLD, **options)
        results, states = [], []
        for operation in operations:
            results.append(apply(store, operation))
            states.append(state_of(store))
        store.close()
    return results, states, files_of(directory), writes


def same_on_both_paths(tmp_path: Path, operations: Sequence[Operation], **options: Any) -> None:
    compiled = run(tmp_path / "compiled", compiled_core(), operations, **options)
    reference = run(tmp_path / "reference", None, operations, **options)
    assert compiled[0] == reference[0]  # values returned, errors raised
    assert compiled[1] == reference[1]  # in-memory state after every operation
    assert compiled[2] == reference[2]  # every pack and the pack index, byte for byte
    assert compiled[3] == reference[3]  # the same writes


def test_a_buffer_filled_exactly_is_written_on_both_paths(tmp_path: Path) -> None:
    pieces = [bytes([number]) * 16 for number in range(10)]  # frames of 64 bytes
    with mock.patch.object(packs, "_STAGED_BYTES_MAX", 128):
        same_on_both_paths(tmp_path / "buffer", [("chunk_data", pieces), ("records", pieces)])
    same_on_both_paths(tmp_path / "pack", [("chunk_data", pieces), ("records", pieces)],
                       pack_bytes_max=16 + 3 * 64)


# ---- inputs --------------------------------------------------------------------------------------

small = st.binary(max_size=90)  # around THRESHOLD: stored as is, or compressed when that pays
compressible = st.binary(min_size=1, max_size=40).map(lambda data: data * 8)
piece = st.one_of(small, compressible, st.sampled_from([b"", b"same piece", b"x" * 200]))


@st.composite
def operations(draw: st.DrawFn) -> list[Operation]:
    result: list[Operation] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["chunk_data", "chunk_data", "chunks", "records", "flush"]))
        if kind == "flush":
            result.append((kind, None))
            continue
        pieces = draw(st.lists(piece, max_size=30))
        container = draw(st.sampled_from([list, tuple]))
        if kind == "chunks":
            result.append((kind, container((blake3.blake3(data).digest(), data) for data in pieces)))
        else:
            result.append((kind, container(pieces)))
    return result


# ---- whole stores ----------------------------------------------------------------------------------


@EXAMPLES
@given(operations(), st.sampled_from([256, 1024, 4096, limits.pack_bytes_max]),
       st.sampled_from([128, 1000, 1 << 16]))
def test_stores_written_by_both_paths_are_identical(
        tmp_path_factory: pytest.TempPathFactory, operations: list[Operation], pack_bytes_max: int,
        staged_bytes_max: int) -> None:
    # Small packs roll and seal mid-batch; a small staging buffer is written many times per batch.
    with mock.patch.object(packs, "_STAGED_BYTES_MAX", staged_bytes_max):
        same_on_both_paths(tmp_path_factory.mktemp("stores"), operations, pack_bytes_max=pack_bytes_max)


def test_batches_of_one_kibibyte_blocks_are_identical_on_both_paths(tmp_path: Path) -> None:
    # The applier's shape: 1 KiB chunks (one per block) and their records, several 64 KiB writes per
    # batch, then a flush; the second batch sits past 1 MiB into the pack.
    def batch(number: int) -> list[Operation]:
        pieces = [bytes([number, index % 256]) * 512 for index in range(600)]
        records = [b"record of %d/%d" % (number, index) for index in range(600)]
        return [("chunk_data", pieces), ("records", records), ("flush", None)]

    same_on_both_paths(tmp_path, [*batch(1), *batch(2), *batch(1)], pack_bytes_max=1 << 20)


def test_a_store_written_by_the_core_opens_and_reads_on_the_python_path(tmp_path: Path) -> None:
    pieces = [bytes([number]) * (number * 7) for number in range(100)]
    records = [b"record %d" % number for number in range(50)]
    with path_of(compiled_core()):
        store = PackStore(tmp_path, compression_threshold=THRESHOLD, pack_bytes_max=4096)
        digests, _ = store.put_chunk_data(pieces)
        store.put_records(records)
        store.close()
    with path_of(None):
        reopened = PackStore(tmp_path, compression_threshold=THRESHOLD, pack_bytes_max=4096)
        assert [reopened.get_chunk(digest) for digest in digests] == pieces
        assert reopened.record_count() == len(records)
        assert sorted(record for pack_id in reopened.local_record_packs()
                      for record in reopened.records_in_pack(pack_id)[0]) == sorted(records)
        assert reopened.scrub(1.0) == []
        reopened.close()


def test_duplicates_and_chunks_stored_before_are_deduplicated_alike(tmp_path: Path) -> None:
    stored = [b"a" * 10, b"b" * 20]
    operations: list[Operation] = [
        ("chunk_data", stored),
        ("flush", None),
        ("chunk_data", [b"a" * 10, b"c" * 5, b"c" * 5, b"b" * 20, b"d"]),
        ("chunks", [(blake3.blake3(b"d").digest(), b"d"), (blake3.blake3(b"e").digest(), b"e")]),
    ]
    same_on_both_paths(tmp_path, operations)


def test_a_chunk_whose_pack_was_cut_short_is_stored_again_on_both_paths(tmp_path: Path) -> None:
    for name, core in (("compiled", compiled_core()), ("reference", None)):
        with path_of(core):
            store = PackStore(tmp_path / name)
            store.put_chunk_data([b"kept", b"lost"])
            location = store.locate(blake3.blake3(b"lost").digest())
            assert location is not None
            store._pack_sizes[location.pack_id] = location.offset  # as if the pack lost its tail
            _, added = store.put_chunk_data([b"kept", b"lost"])
            assert added == len(b"lost") and store.counters["dedup_hits"] == 1
            store.close()
    assert files_of(tmp_path / "compiled") == files_of(tmp_path / "reference")


# ---- refusals keep the Python path's typed errors ------------------------------------------------------


@pytest.mark.parametrize("kind", ["chunk_data", "records"])
def test_over_limit_pieces_are_refused_alike_and_nothing_is_written(tmp_path: Path, kind: str) -> None:
    with mock.patch.object(limits, "chunk_bytes_max", 100):
        operations: list[Operation] = [(kind, [b"fine", b"x" * 101]), (kind, [b"y" * 100]), ("flush", None)]
        same_on_both_paths(tmp_path, operations)
        with path_of(compiled_core()):
            store = PackStore(tmp_path / "again")
            put = store.put_chunk_data if kind == "chunk_data" else store.put_records
            with pytest.raises(LimitExceededError):
                put([b"fine", b"x" * 101])
            store.close()


@pytest.mark.parametrize("pieces", [
    ["text, not bytes"],
    [b"fine", 7],
    [b"fine", None],
    [memoryview(b"a view"), bytearray(b"a bytearray"), b"bytes"],
    [memoryview(b"\x01\x02" * 40).cast("H")],  # len() counts items, not bytes: the Python path decides
])
@pytest.mark.parametrize("kind", ["chunk_data", "records"])
def test_pieces_of_other_types_take_the_python_path(tmp_path: Path, pieces: list[Any], kind: str) -> None:
    same_on_both_paths(tmp_path, [(kind, pieces), ("flush", None)])


@pytest.mark.timeout(60)
def test_a_pack_already_over_a_smaller_pack_size_rolls_alike(tmp_path: Path) -> None:
    # A store reopened with a smaller pack_bytes_max continues an unsealed pack already past it: the
    # first frame staged (by either path) is written and rolls the pack, whichever path stages it.
    first = [bytes([number]) * 100 for number in range(40)]  # 40 frames of 148 bytes, under 8 KiB
    for name in ("compiled", "reference"):
        PackStore(tmp_path / name, compression_threshold=THRESHOLD).put_chunk_data(first)
    then: list[Operation] = [("chunk_data", [b"z" * 500, b"y", b"x" * 10]), ("flush", None),
                             ("records", [b"q" * 300, b"r"])]
    results = []
    for name, core in (("compiled", compiled_core()), ("reference", None)):
        with path_of(core):
            store = PackStore(tmp_path / name, compression_threshold=THRESHOLD, pack_bytes_max=1024)
            results.append(([apply(store, operation) for operation in then], state_of(store)))
            store.close()
    assert results[0] == results[1]
    assert files_of(tmp_path / "compiled") == files_of(tmp_path / "reference")
    assert results[0][1]["sealed"] == {1}  # rolled at its first frame


def test_chunks_of_other_types_given_with_their_digests_take_the_python_path(tmp_path: Path) -> None:
    data = [memoryview(b"a view"), bytearray(b"a bytearray"), b"bytes", memoryview(b"c" * 200)]
    chunks = [(blake3.blake3(piece).digest(), piece) for piece in data]
    same_on_both_paths(tmp_path, [("chunks", chunks), ("chunks", chunks[:2]), ("flush", None)])


def test_threads_hashing_at_once_each_get_their_own_digests() -> None:
    # A hasher's update may release the GIL on a large input: each call hashes with its own copy.
    core = compiled_core()
    pieces = [[bytes([thread, number]) * (1 << 18) for number in range(6)] for thread in range(4)]
    results: dict[int, Any] = {}

    def hash_all(thread: int) -> None:
        results[thread] = [core.pack_digests(pieces[thread], packs._CHUNK_HASHER, limits.chunk_bytes_max)
                           for _ in range(3)]

    workers = [threading.Thread(target=hash_all, args=(thread,)) for thread in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for thread in range(4):
        expected = [blake3.blake3(piece).digest() for piece in pieces[thread]]
        assert results[thread] == [expected] * 3


# ---- the functions, one by one ---------------------------------------------------------------------------


@EXAMPLES
@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_record_digests_are_the_record_addresses(records: list[bytes]) -> None:
    # One copy of the derive-key hasher, reset between records: the key must survive every reset.
    digests = compiled_core().pack_digests(records, packs._RECORD_HASHER, limits.chunk_bytes_max)
    assert digests == [record_digest(raw) for raw in records]
    chunk_digests = compiled_core().pack_digests(records, packs._CHUNK_HASHER, limits.chunk_bytes_max)
    assert chunk_digests == [blake3.blake3(raw).digest() for raw in records]


def test_the_hashers_are_never_changed() -> None:
    for hasher in (packs._RECORD_HASHER, packs._CHUNK_HASHER):
        before = hasher.copy().digest()
        compiled_core().pack_digests([b"one", b"two"], hasher, limits.chunk_bytes_max)
        assert hasher.copy().digest() == before
    assert packs._CHUNK_HASHER.digest() == blake3.blake3().digest()


def test_the_core_takes_what_needs_no_compression_and_hands_back_the_rest() -> None:
    core = compiled_core()
    pieces = [b"a" * 10, b"b" * 63, b"", b"c" * 64, b"d"]
    digests = [blake3.blake3(data).digest() for data in pieces]
    frames: bytearray = bytearray()
    entries: list[tuple[bytes, int, int, int]] = []
    assert core.pack_stage_frames(digests, pieces, 0, frames, entries, 0, 64, 1 << 16, 1 << 20,
                                  blake3.blake3) == (3, 73)
    assert [entry[2] for entry in entries] == [10, 63, 0] and len(frames) == 3 * 48 + 73
    # stops after the frame that fills the buffer or the pack
    assert core.pack_stage_frames(digests, pieces, 4, bytearray(), [], 0, 64, 1, 1 << 20,
                                  blake3.blake3)[0] == 5
    assert core.pack_stage_frames(digests, pieces, 0, bytearray(), [], 0, 64, 1 << 16, 58,
                                  blake3.blake3)[0] == 1
    # a digest that is not 32 bytes is the Python path's (struct pads or cuts it)
    assert core.pack_stage_frames([b"short", *digests[1:]], pieces, 0, bytearray(), [], 0, 64, 1 << 16,
                                  1 << 20, blake3.blake3) == (0, 0)
    assert core.pack_digests(pieces, packs._CHUNK_HASHER, 63) is None
    assert core.pack_digests(iter(pieces), packs._CHUNK_HASHER, 100) is None


def frame_bytes(digest: bytes, flags: int, data: bytes) -> bytes:
    return packs.frame_header(digest, flags, len(data), len(data)) + data


@EXAMPLES
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=40), st.binary(max_size=100)), max_size=20),
       st.sampled_from([0, FLAG_RECORD]))
def test_staged_frames_are_the_reference_frames(tmp_path_factory: pytest.TempPathFactory,
                                                pairs: list[tuple[bytes, bytes]], flags: int) -> None:
    directory = tmp_path_factory.mktemp("staged")
    results = []
    for name, core in (("compiled", compiled_core()), ("reference", None)):
        with path_of(core):
            store = PackStore(directory / name, compression_threshold=1 << 20)
            staged = _StagedFrames()
            results.append(outcome(lambda store=store, staged=staged: store._stage_frames(
                staged, [digest for digest, _ in pairs], [data for _, data in pairs], flags)))
            results.append(state_of(store))
            store.close()
            results.append(files_of(directory / name))
    assert results[:3] == results[3:]
    if all(len(digest) == 32 for digest, _ in pairs):
        pack = results[2]["pack-00000001.pack"]
        assert pack[16:] == b"".join(frame_bytes(digest, flags, data) for digest, data in pairs)


width = st.one_of(st.integers(0, 300), st.integers(2**31, 2**32 + 5), st.integers(2**63, 2**64 + 5),
                  st.integers(-3, -1), st.booleans())


@EXAMPLES
@given(st.lists(st.tuples(st.binary(min_size=30, max_size=34), width, width, width, width, width),
                max_size=10))
def test_index_entries_are_the_reference_entries(fields: list[tuple[bytes, Any, Any, Any, Any, Any]]) -> None:
    entries = [(digest, ChunkLocation(pack_id, offset, flags, raw, stored))
               for digest, pack_id, offset, flags, raw, stored in fields]
    with path_of(compiled_core()):
        compiled = outcome(lambda: _encode_entries(entries))
    with path_of(None):
        reference = outcome(lambda: _encode_entries(entries))
    assert compiled == reference
    if all(len(digest) == 32 and all(type(value) is int and 0 <= value < limit
                                     for value, limit in zip(values, (2**32, 2**64, 2**8, 2**32, 2**32),
                                                             strict=True))
           for digest, *values in fields) and entries:
        assert compiled_core().pack_encode_entries(entries, blake3.blake3) == compiled[1]  # taken
        body = compiled[1][:56]
        assert compiled[1][56:64] == blake3.blake3(body).digest()[:8]
        assert struct.unpack_from("<IB3sQII", body, 32)[0] == entries[0][1].pack_id


def test_the_core_encodes_and_locates_ordinary_entries() -> None:
    core = compiled_core()
    location = ChunkLocation(3, 16, 0, 10, 10)
    assert core.pack_encode_entries([(bytes(32), location)], blake3.blake3) is not None
    assert core.pack_encode_entries([(bytes(31), location)], blake3.blake3) is None
    assert core.pack_encode_entries(iter([(bytes(32), location)]), blake3.blake3) is None
    unindexed = bytearray(b"before")
    locations = {bytes(32): ChunkLocation(1, 16, 0, 4, 4)}
    entries = [(bytes(32), 0, 10, 10), (b"r" * 32, FLAG_RECORD, 5, 5)]
    assert core.pack_locate(entries, 3, 16, ChunkLocation, unindexed, locations, FLAG_RECORD,
                            blake3.blake3) == (16 + 48 + 10 + 48 + 5, 1, 10 - 4, 10 - 4)
    record_location = ChunkLocation(3, 74, FLAG_RECORD, 5, 5)
    assert unindexed == b"before" + _encode_entries([(bytes(32), location), (b"r" * 32, record_location)])
    assert locations == {bytes(32): location}  # a record is never kept in memory
    for odd in ([(bytes(32), 0, 10)], [(bytes(32), 0, 10, True)], [(bytes(31), 0, 10, 10)],
                [(bytes(32), 256, 10, 10)], [(bytes(32), 0, 2**32, 10)]):
        assert core.pack_locate(odd, 3, 16, ChunkLocation, unindexed, {}, FLAG_RECORD, blake3.blake3) is None
