"""Records that break SPEC section 4 inside validly signed files, and the resources a hostile file may cost.

A signer can sign malformed bytes: every reader entry point (full verification, ``block()``, the streaming
read and ``check_block``) must refuse each rule a reader MUST apply, with a typed error naming the rule.
Then the bounds: streamed decompression, the zstd window, metadata nesting, the torn-tail search budget,
and ``release()`` on an entry the layout check refused.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from maif import limits
from maif.errors import FormatError, LimitExceededError, MAIFError
from maif.format import codec, layout
from maif.format.compression import decompress_exact, iter_decompressed
from maif.format.container import ContainerReader, verify_container
from maif.testing.hostile import (
    COMPRESSED,
    ENCRYPTED,
    SECTION_4_VIOLATIONS,
    SKIPPABLE_FRAME,
    Violation,
    one_gib_zstd_bomb,
    path_metadata,
    record,
    run_measuring_peak_rss,
    signed_container,
    text_id,
    zstd_frame,
    zstd_zero_frame,
)

from .conftest import Builder

HONEST = record(b"honest payload", fields=text_id("honest"), metadata=path_metadata("honest.txt"))


def consume(reader: ContainerReader, index: int) -> None:
    for _ in reader.stream_block(index).chunks:
        pass


def test_the_hostile_builder_seals_honest_records_into_a_file_that_verifies(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    frame = zstd_frame(b"abc" * 3000)
    compressed = record(frame, storage_flags=COMPRESSED, payload_length=9000, metadata=path_metadata("c.bin"))
    path = signed_container(tmp_path / "honest.maif", [HONEST, compressed], signing_key)
    report = verify_container(path, [signing_key.public_key()])
    assert report.ok, report.problems
    with ContainerReader.open(path) as reader:
        assert reader.block(0).data == b"honest payload"
        assert reader.block(1).data == b"abc" * 3000
        assert b"".join(reader.stream_block(1).chunks) == b"abc" * 3000


@pytest.mark.parametrize("violation", SECTION_4_VIOLATIONS, ids=lambda violation: violation.name)
def test_every_reader_refuses_a_signed_record_that_breaks_a_section_4_rule(
    tmp_path: Path, signing_key: Ed25519PrivateKey, violation: Violation
) -> None:
    path = signed_container(tmp_path / "hostile.maif", [HONEST, violation.record], signing_key)
    trusted = [signing_key.public_key()]
    assert verify_container(path, trusted, full=False).ok  # the signature holds: only decoding sees it
    report = verify_container(path, trusted)
    assert [(problem.block_index, problem.kind) for problem in report.problems] == [(1, violation.kind)]
    assert violation.match in report.problems[0].reason, report.problems
    with ContainerReader.open(path) as reader:
        assert reader.block(0).data == b"honest payload"  # the honest neighbour still reads
        for read in (reader.block, reader.check_block, lambda index: consume(reader, index)):
            with pytest.raises(violation.error, match=violation.match):
                read(1)


def test_without_a_decryption_key_full_verification_still_checks_an_encrypted_records_header(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    sealed = bytes(40)  # stands for nonce, ciphertext and tag: unreadable without the key
    nan_time = record(sealed, storage_flags=ENCRYPTED, timestamp=float("nan"), payload_length=4)
    too_short = record(bytes(27), storage_flags=ENCRYPTED, fields=text_id("short"), payload_length=0)
    path = signed_container(tmp_path / "sealed.maif", [HONEST, nan_time, too_short], signing_key)
    report = verify_container(path, [signing_key.public_key()])
    located = [(problem.block_index, problem.kind) for problem in report.problems]
    assert located == [(1, "format"), (2, "format")]
    assert "finite" in report.problems[0].reason and "nonce and tag" in report.problems[1].reason
    with ContainerReader.open(path) as reader, pytest.raises(FormatError, match="finite"):
        reader.check_block(1, decrypt=False)


# --- decompression: exactly one frame, streamed, bounded ------------------------------------------


def _frames() -> list[tuple[str, bytes, int, type[MAIFError] | None]]:
    sized, unsized = zstd_frame(b"a" * 5000), zstd_frame(b"a" * 5000, declare_size=False)
    halves = zstd_frame(b"a" * 2500, declare_size=False)
    # header naming dictionary 7 (descriptor 0x01, window 128 KiB), then one last RLE block of 100 "a"
    dictionary_frame = b"\x28\xb5\x2f\xfd\x01\x38\x07" + ((100 << 3) | 3).to_bytes(3, "little") + b"a"
    return [
        ("declared size", sized, 5000, None),
        ("no declared size", unsized, 5000, None),
        ("declared, streamed in steps", zstd_zero_frame(20 << 20), 20 << 20, None),
        ("undeclared, streamed in steps", zstd_zero_frame(20 << 20, declare_size=False), 20 << 20, None),
        ("second frame", sized + sized, 5000, FormatError),
        ("second undeclared frame", unsized + unsized, 5000, FormatError),
        ("two halves", halves + halves, 5000, FormatError),
        ("skippable frame after", sized + SKIPPABLE_FRAME, 5000, FormatError),
        ("skippable frame after an undeclared one", unsized + SKIPPABLE_FRAME, 5000, FormatError),
        ("skippable frame first", SKIPPABLE_FRAME + sized, 5000, FormatError),
        ("junk after", unsized + b"junk", 5000, FormatError),
        ("truncated", sized[:-1], 5000, FormatError),
        ("truncated undeclared", unsized[:-1], 5000, FormatError),
        ("longer than the header says", unsized, 4999, FormatError),
        ("shorter than the header says", unsized, 5001, FormatError),
        ("declares another size", sized, 5001, FormatError),
        ("empty payload", b"", 0, FormatError),
        ("not zstd", b"plain text", 10, FormatError),
        ("window of 16 MiB", b"\x28\xb5\x2f\xfd\x00\x70" + bytes(8), 5000, LimitExceededError),
        ("needs a dictionary", dictionary_frame, 100, FormatError),
    ]


@pytest.mark.parametrize(
    ("stored", "length", "error"), [case[1:] for case in _frames()], ids=[case[0] for case in _frames()]
)
def test_in_memory_and_streamed_decompression_accept_and_refuse_the_same_frames(
    stored: bytes, length: int, error: type[MAIFError] | None
) -> None:
    if error is None:
        expected = decompress_exact(stored, length)
        pieces = list(iter_decompressed(stored, length))
        assert len(expected) == length and b"".join(pieces) == expected
        assert all(len(piece) <= limits.decompression_buffer_bytes_max for piece in pieces)
        return
    with pytest.raises(error):
        decompress_exact(stored, length)
    with pytest.raises(error):
        for _ in iter_decompressed(stored, length):
            pass


def test_a_frame_that_expands_a_thousandfold_is_streamed_in_bounded_pieces() -> None:
    frame = zstd_zero_frame(256 << 20)  # 256 MiB of zeros in 8 KB
    assert len(frame) < 10_000
    total = 0
    for piece in iter_decompressed(frame, 256 << 20):
        assert len(piece) <= limits.decompression_buffer_bytes_max
        total += len(piece)
    assert total == 256 << 20
    with pytest.raises(FormatError, match="more than"):  # the budget is the declared length, checked per step
        for _ in iter_decompressed(zstd_zero_frame(256 << 20, declare_size=False), 1 << 20):
            pass


# --- metadata nesting ---------------------------------------------------------------------------


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=300)
)
nested = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=6), nested, max_size=4))
@settings(max_examples=200)
def test_the_depth_scan_walks_exactly_what_msgspec_encodes(metadata: dict[str, Any]) -> None:
    encoded = msgspec.msgpack.Encoder(order="deterministic").encode(metadata)
    depth = depth_of(metadata)
    codec.scan_metadata_depth(encoded, depth)  # consumes every byte, no deeper than the true depth
    with pytest.raises(LimitExceededError):
        codec.scan_metadata_depth(encoded, depth - 1)


def test_metadata_at_the_depth_bound_round_trips_and_one_level_more_is_refused_both_ways() -> None:
    deepest: Any = None
    for _ in range(limits.block_metadata_depth_max - 1):
        deepest = [deepest]
    assert codec.decode_metadata(codec.encode_metadata({"a": deepest})) == {"a": deepest}
    with pytest.raises(LimitExceededError, match="nesting depth"):
        codec.encode_metadata({"a": [deepest]})  # the writer never writes what a reader refuses
    hostile = b"\x81\xa1a" + b"\x91" * 60_000 + b"\xc0"  # 60,000 levels: no recursion reaches msgspec
    with pytest.raises(LimitExceededError, match="nesting depth"):
        codec.decode_metadata(hostile)
    with pytest.raises(FormatError, match="ends inside"):  # an array claiming 2^32 - 1 items, 40 present
        codec.decode_metadata(b"\x81\xa1a\xdd\xff\xff\xff\xff" + b"\x90" * 40)


# --- torn tails and release() -------------------------------------------------------------------


def count_checksummed_manifest_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every manifest a trailer checksum hashes from now on, in order."""
    hashed: list[int] = []
    real_checksum = layout.trailer_checksum

    def counting_checksum(manifest: bytes | memoryview, fields: bytes) -> bytes:
        hashed.append(len(manifest))
        return real_checksum(manifest, fields)

    monkeypatch.setattr(layout, "trailer_checksum", counting_checksum)
    return hashed


def test_the_torn_tail_search_hashes_a_bounded_number_of_manifest_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fake trailer passes every cheap check and points at 1 MiB of 'manifest', so before the budget
    4,096 of them cost 4 GiB of hashing; now the search stops at limits.trailer_search_hash_bytes_max."""
    manifest_bytes = limits.manifest_bytes_max
    candidates = limits.trailer_search_hash_bytes_max // manifest_bytes + 8
    data = bytearray(layout.encode_file_header(bytes(16)) + bytes(manifest_bytes))
    for _ in range(candidates):
        position = len(data)
        start = position - manifest_bytes
        # index at the manifest, no blocks, version 0, segment start 32, a wrong checksum, the magic
        data += layout.TRAILER.pack(start, start, manifest_bytes, 0, 0, 32, bytes(16), layout.TRAILER_MAGIC)
    path = tmp_path / "torn.maif"
    path.write_bytes(bytes(data) + b"torn")
    hashed = count_checksummed_manifest_bytes(monkeypatch)
    with pytest.raises(LimitExceededError, match="torn tail"):
        ContainerReader.open(path)
    assert sum(hashed) <= limits.trailer_search_hash_bytes_max
    # it did search (one checksum per candidate), then stopped at the budget
    assert len(hashed) == limits.trailer_search_hash_bytes_max // manifest_bytes


def test_the_torn_tail_search_charges_each_manifest_to_its_budget_once(
    build: Builder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trailer at the end of the file is tried first; when its checksum fails, the backward search
    must not try (and charge) that same trailer again. A budget of exactly the two manifests' sizes
    suffices to fall back to version 0."""
    path = build((1, 1))
    with ContainerReader.open(path) as reader:
        first_end = reader.versions[0].end_offset
        sizes = [len(manifest.encode()) for manifest in reader.manifests]
    data = bytearray(path.read_bytes())
    data[-layout.TRAILER.size - 1] ^= 0x01  # the last manifest's last byte: its trailer checksum fails
    path.write_bytes(bytes(data))
    hashed = count_checksummed_manifest_bytes(monkeypatch)
    monkeypatch.setattr(limits, "trailer_search_hash_bytes_max", sum(sizes))
    with ContainerReader.open(path) as reader:
        assert reader.valid_end == first_end and len(reader.versions) == 1
    assert hashed[:2] == [sizes[1], sizes[0]]  # the search itself; loading version 0 then checks it again


def test_release_of_an_index_entry_the_layout_check_refused_is_a_quiet_no_op(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = signed_container(tmp_path / "bad-entry.maif", [HONEST, HONEST, HONEST], signing_key)
    with ContainerReader.open(path) as reader:
        index_offset = reader._versions[0].trailer.index_offset
    data = bytearray(path.read_bytes())
    for entry, offset in ((1, 1 << 40), (2, 1 << 41)):  # block 1 now starts and ends far past the file
        at = index_offset + entry * layout.INDEX_ENTRY.size
        data[at : at + 8] = struct.pack("<Q", offset)
    path.write_bytes(bytes(data))
    with ContainerReader.open(path) as reader:
        assert set(reader.bad_entries) == {0, 1, 2}
        for index in range(len(reader)):
            reader.release(index)  # was: ValueError("madvise start out of bounds")
        with pytest.raises(FormatError, match="no-holes"):
            reader.block(1)
        with pytest.raises(IndexError):
            reader.release(len(reader))


# --- a decompression bomb through ContainerReader.block() -----------------------------------------------

_BLOCK_OF_BOMB = """
from maif import limits
from maif.errors import LimitExceededError
from maif.format.container import ContainerReader

with ContainerReader.open(sys.argv[1]) as reader:
    try:
        reader.block(0)
    except LimitExceededError as error:
        print(type(error).__name__, error.size, error.limit)
    try:
        reader.payload_view(0)
    except LimitExceededError as error:
        print(type(error).__name__, error.size, error.limit)
    streamed = sum(len(piece) for piece in reader.stream_block(0).chunks)  # the bounded way still reads it
    print("streamed", streamed)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_block_of_a_one_gib_zstd_bomb_is_refused_within_its_budget_in_150_mb(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    """A 33 KB signed file whose one zstd block declares 1 GiB: block() and payload_view() refuse it by the
    read's total-size budget before decompressing (before: 1.1 GB RSS); stream_block still reads it."""
    container = one_gib_zstd_bomb(tmp_path / "bomb.maif", signing_key)
    assert container.stat().st_size < 34_000
    result, peak_rss_mb = run_measuring_peak_rss(_BLOCK_OF_BOMB, [str(container)])
    assert result.returncode == 0, result.stderr
    refused = f"LimitExceededError {1 << 30} {limits.materialized_payload_bytes_max}"
    assert result.stdout.splitlines() == [refused, refused, f"streamed {1 << 30}"]
    assert peak_rss_mb <= 150, f"peak RSS {peak_rss_mb} MB"


def test_a_caller_may_grant_block_a_larger_budget(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    payload_length = 3 << 20
    bomb = record(zstd_zero_frame(payload_length), storage_flags=COMPRESSED, payload_length=payload_length)
    container = signed_container(tmp_path / "three-mib.maif", [bomb], signing_key)
    with ContainerReader.open(container) as reader:
        with pytest.raises(LimitExceededError, match="to hold in memory"):
            reader.block(0, payload_bytes_max=payload_length - 1)
        assert reader.block(0, payload_bytes_max=payload_length).data == bytes(payload_length)
