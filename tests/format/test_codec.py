"""The block codec: canonical, deterministic, round-trips every block, refuses every malformed input."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maif.errors import (
    ArgumentTypeError,
    FormatError,
    LimitExceededError,
    MAIFError,
    TruncatedError,
    UnsupportedVersionError,
)
from maif.format import codec
from maif.format.block import MAIFBlock, MAIFBlockType

text_ids = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
fourccs = st.one_of(
    st.sampled_from(list(MAIFBlockType)),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=4, max_size=4),
)
metadata_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def blocks(draw: st.DrawFn) -> MAIFBlock:
    return MAIFBlock(
        id=draw(st.one_of(text_ids, st.uuids().map(str))),
        block_type=draw(fourccs),
        data=draw(st.binary(max_size=300)),
        metadata=draw(st.dictionaries(st.text(max_size=10), metadata_values, max_size=5)),
        timestamp=draw(st.floats(allow_nan=False, allow_infinity=False)),
        agent_id=draw(st.text(max_size=20)),
        version=draw(st.text(max_size=10)),
        parents=tuple(draw(st.lists(text_ids, max_size=4))),
    )


@given(blocks())
@settings(max_examples=300)
def test_round_trip_preserves_every_field(block: MAIFBlock) -> None:
    encoded = codec.encode_block(block)
    decoded = codec.decode_block(encoded)
    assert decoded == block
    assert codec.encode_block(decoded) == encoded
    assert codec.decode_block(memoryview(encoded)) == block


def test_encoding_is_deterministic_whatever_the_metadata_key_order() -> None:
    first = MAIFBlock("a", metadata={"x": 1, "y": {"b": 2, "a": 3}}, timestamp=1.0)
    second = MAIFBlock("a", metadata={"y": {"a": 3, "b": 2}, "x": 1}, timestamp=1.0)
    assert codec.encode_block(first) == codec.encode_block(second)
    assert codec.block_digest(first) == codec.block_digest(second)


def test_digest_is_blake3_of_the_encoding_and_changes_with_any_field() -> None:
    base = MAIFBlock("id-1", MAIFBlockType.TEXT, b"hello", {"k": "v"}, 1700000000.5, "agent", "1.0", ("p",))
    assert codec.block_digest(base) == blake3.blake3(codec.encode_block(base)).digest()
    variants: list[dict[str, Any]] = [
        {"id": "id-2"},
        {"block_type": "IMAG"},
        {"data": b"hellp"},
        {"metadata": {"k": "w"}},
        {"timestamp": 1700000000.25},
        {"agent_id": "agent2"},
        {"version": "2.0"},
        {"parents": ("q",)},
    ]
    digests = {codec.block_digest(base)}
    for change in variants:
        fields = {f: getattr(base, f) for f in base.__struct_fields__} | change
        digests.add(codec.block_digest(MAIFBlock(**fields)))
    assert len(digests) == len(variants) + 1


def test_small_block_with_uuid_id_has_a_compact_header() -> None:
    block = MAIFBlock(data=b"x" * 1024, agent_id="agent-1")
    encoded = codec.encode_block(block)
    assert len(encoded) - 1024 <= 1 + 18 + 16 + 2 + 7


def test_known_encoding_bytes() -> None:
    block = MAIFBlock("b1", MAIFBlockType.TEXT, b"hi", {}, 2.0, "", "1.0", ())
    expected = (
        b"\x01" + b"TEXT" + b"\x00\x00" + struct.pack("<d", 2.0) + struct.pack("<I", 2) + b"\x02\x00b1hi"
    )
    assert codec.encode_block(block) == expected


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", TruncatedError),
        (b"\x02" + b"\x00" * 40, UnsupportedVersionError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 5) + b"\x01\x00a", TruncatedError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 0) + b"\x01\x00ab", FormatError),
        (b"\x01TEXT\x04\x00" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a", FormatError),
        (b"\x01TEXT\x00\x80" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a", FormatError),
        (b"\x01TE\x00T\x00\x00" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a", FormatError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", float("nan"), 0) + b"\x01\x00a", FormatError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 0) + b"\x00\x00", FormatError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 0) + b"\xff\xff" + b"a" * 10, LimitExceededError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 0) + b"\x01\x00\xff", FormatError),
        (
            b"\x01TEXT\x00\x10" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a" + struct.pack("<I", 2**31),
            LimitExceededError,
        ),
        (
            b"\x01TEXT\x00\x10" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a" + struct.pack("<I", 1) + b"\x80",
            FormatError,
        ),
        (
            b"\x01TEXT\x00\x10" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a" + struct.pack("<I", 1) + b"\x01",
            FormatError,
        ),
        (b"\x01TEXT\x00\x04" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a\x031.0", FormatError),
        (b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 2**31) + b"\x01\x00a", LimitExceededError),
    ],
)
def test_malformed_encodings_are_refused_with_a_typed_error(data: bytes, error: type[MAIFError]) -> None:
    with pytest.raises(error):
        codec.decode_block(data)


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_never_raise_an_untyped_error(data: bytes) -> None:
    with contextlib.suppress(MAIFError):
        codec.decode_block(b"\x01" + data)


@given(blocks(), st.data())
@settings(max_examples=200)
def test_mutated_encodings_never_raise_an_untyped_error(block: MAIFBlock, data: st.DataObject) -> None:
    encoded = bytearray(codec.encode_block(block))
    position = data.draw(st.integers(0, len(encoded) - 1))
    encoded[position] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(MAIFError):
        codec.decode_block(bytes(encoded))


def test_metadata_with_a_non_str_key_is_refused_when_the_block_is_made() -> None:
    with pytest.raises(ArgumentTypeError, match="metadata keys"):
        MAIFBlock("a", metadata={1: "int key"})


@pytest.mark.parametrize(
    "metadata",
    [{"x": object()}, {"big": "x" * (65 * 1024)}, {"deep": [[[[[]]]]] * 1}],
)
def test_unencodable_or_oversized_metadata_is_refused_at_encode(metadata: dict[Any, Any]) -> None:
    block = MAIFBlock("a", metadata=metadata)
    if metadata.get("deep"):
        assert codec.decode_block(codec.encode_block(block)) == block
        return
    with pytest.raises((FormatError, LimitExceededError)):
        codec.encode_block(block)


def test_deeply_nested_metadata_is_refused_at_decode() -> None:
    nested = b"\x81\xa1a" + b"\x91" * 60_000 + b"\xc0"
    header = b"\x01TEXT\x00\x10" + struct.pack("<dI", 1.0, 0) + b"\x01\x00a" + struct.pack("<I", len(nested))
    # a named bound (limits.block_metadata_depth_max), checked by a scan before msgspec recurses
    with pytest.raises(LimitExceededError, match="nesting depth"):
        codec.decode_block(header + nested)


def test_non_canonical_uuid_spellings_are_stored_as_text() -> None:
    for block_id in ("0195F6A0-0000-7000-8000-000000000001", "0195f6a0-0000-7000-8000-00000000000 "):
        block = MAIFBlock(block_id, timestamp=0.0)
        assert codec.decode_block(codec.encode_block(block)).id == block_id
        assert block_id.encode() in codec.encode_block(block)


def test_every_value_has_one_encoding() -> None:
    text_uuid = "0195f6a0-0000-7000-8000-000000000001"
    as_text = b"\x01TEXT\x00\x00" + struct.pack("<dI", 1.0, 0) + struct.pack("<H", 36) + text_uuid.encode()
    with pytest.raises(FormatError, match="16 raw bytes"):
        codec.decode_block(as_text)
    unsorted = b"\x82\xa1b\x01\xa1a\x02"  # {"b": 1, "a": 2}: keys out of order
    wide_int = b"\x81\xa1a\xcd\x00\x01"  # {"a": 1} with a 16-bit integer
    for metadata in (unsorted, wide_int):
        encoded = (
            b"\x01TEXT\x00\x10"
            + struct.pack("<dI", 1.0, 0)
            + b"\x01\x00a"
            + struct.pack("<I", len(metadata))
            + metadata
        )
        with pytest.raises(FormatError, match="canonical"):
            codec.decode_block(encoded)


def test_metadata_with_a_nested_non_string_key_is_a_format_error() -> None:
    """Found by the mutation fuzz: a nested map keyed by an integer decodes, but cannot be re-encoded
    canonically; it must be refused as malformed, not escape as an untyped TypeError."""
    import msgspec

    from maif.errors import FormatError
    from maif.format.codec import decode_metadata

    with pytest.raises(FormatError):
        decode_metadata(msgspec.msgpack.encode({"a": {1: 2}}))


def test_new_block_ids_are_canonical_uuidv7_strings() -> None:
    """new_block_id formats the UUID itself (docs/adr/0089): the same text as str(uuid.UUID(...)),
    version 7, RFC 9562 variant, time-ordered by the millisecond."""
    import time
    import uuid

    from maif.format.block import new_block_id

    before_ms = time.time_ns() // 1_000_000
    identifiers = [new_block_id() for _ in range(200)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(identifiers)) == 200
    for text in identifiers:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= parsed.int >> 80 <= after_ms
