"""Content-defined chunking: chunks tile the payload, follow the content, and survive edits."""

from __future__ import annotations

import blake3
import pytest

from maif.errors import ConfigError
from maif.storage.chunking import chunk_max_bytes, chunk_min_bytes, split_payload
from maif.testing.conformance import random_bytes


def test_chunks_tile_the_payload_and_are_addressed_by_blake3() -> None:
    data = random_bytes(3_000_000, 1)
    chunks = split_payload(data)
    assert b"".join(bytes(piece) for _, piece in chunks) == data
    assert all(digest == blake3.blake3(piece).digest() for digest, piece in chunks)
    sizes = [len(piece) for _, piece in chunks]
    assert all(chunk_min_bytes <= size <= chunk_max_bytes for size in sizes[:-1])
    assert sizes[-1] <= chunk_max_bytes
    assert 10 < len(chunks) < 3_000_000 // chunk_min_bytes


def test_small_and_empty_payloads() -> None:
    assert split_payload(b"") == []
    small = random_bytes(2 * chunk_min_bytes - 1, 2)
    [(digest, piece)] = split_payload(small)
    assert bytes(piece) == small and digest == blake3.blake3(small).digest()


def test_chunking_is_deterministic() -> None:
    data = random_bytes(1_000_000, 3)
    assert [d for d, _ in split_payload(data)] == [d for d, _ in split_payload(bytes(data))]


def test_an_insertion_changes_only_nearby_chunks() -> None:
    data = random_bytes(2_000_000, 4)
    edited = data[:1_000_000] + b"an inserted sentence." + data[1_000_000:]
    before = {digest for digest, _ in split_payload(data)}
    after = [digest for digest, _ in split_payload(edited)]
    new = [digest for digest in after if digest not in before]
    assert len(new) <= 3, f"{len(new)} of {len(after)} chunks changed after one insertion"


def test_fixed_size_chunking_would_not_survive_the_same_edit() -> None:
    """The reason for FastCDC: with fixed blocks an insertion shifts every later boundary."""
    data = random_bytes(1_000_000, 5)
    edited = data[:100] + b"x" + data[100:]
    fixed = 64 * 1024
    blocks = {data[i : i + fixed] for i in range(0, len(data), fixed)}
    assert sum(edited[i : i + fixed] in blocks for i in range(0, len(edited), fixed)) == 0


def test_min_chunk_bytes_override_scales_sizes() -> None:
    data = random_bytes(500_000, 6)
    chunks = split_payload(data, min_chunk_bytes=1024)
    assert b"".join(bytes(piece) for _, piece in chunks) == data
    assert all(1024 <= len(piece) <= 16 * 1024 for _, piece in chunks[:-1])
    assert len(chunks) > len(split_payload(data))


@pytest.mark.parametrize("bad", [0, 10, -5, 1 << 30])
def test_invalid_min_chunk_bytes_is_refused(bad: int) -> None:
    with pytest.raises(ConfigError):
        split_payload(random_bytes(100_000, 7), min_chunk_bytes=bad)
