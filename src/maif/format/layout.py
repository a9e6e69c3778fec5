"""Byte layout of a .maif container: file header, index entries, manifest and trailer (SPEC sections 3-7).

Only encoding and decoding of the fixed structures lives here; the reader and writer compose them.
Every decoder checks exact lengths, magic values and reserved fields, and raises a FormatError subclass.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import blake3

from maif import limits
from maif.errors import FormatError, LimitExceededError, TruncatedError, UnsupportedVersionError
from maif.format.aead import KEY_WRAP, KeyWrap
from maif.format.signing import KEY_ID_BYTES, SIGNATURE_BYTES

FILE_MAGIC: Final = b"\x89MAIF\r\n\x1a"
FORMAT_MAJOR: Final = 1
FORMAT_MINOR: Final = 0
FILE_ID_BYTES: Final = 16
DIGEST_BYTES: Final = 32
# magic, major, minor, header flags (reserved, 0), file id
FILE_HEADER: Final = struct.Struct("<8sHHI16s")
# record offset, chained BLAKE3 digest of the record
INDEX_ENTRY: Final = struct.Struct("<Q32s")
MANIFEST_MAGIC: Final = b"MMF1"
# magic, version number, block count, segment start, merkle root, index digest, previous manifest digest,
# committed at (ns), recipient count
MANIFEST_FIXED: Final = struct.Struct("<4sIQQ32s32s32sqB")
SIGNATURE_COUNT: Final = struct.Struct("<B")
# signer key id, signed at (ns), Ed25519 signature
SIGNATURE_ENTRY: Final = struct.Struct(f"<{KEY_ID_BYTES}sq{SIGNATURE_BYTES}s")
TRAILER_MAGIC: Final = b"MAIFTRL1"
# index offset, manifest offset, manifest length, version number, block count, segment start, checksum, magic
TRAILER: Final = struct.Struct("<QQIIQQ16s8s")
TRAILER_CHECKED_BYTES: Final = 40
CHAIN_DOMAIN: Final = b"MAIF-chain-v1\x00"

assert FILE_HEADER.size == 32 and INDEX_ENTRY.size == 40 and TRAILER.size == 64
assert SIGNATURE_ENTRY.size == 88 and KEY_WRAP.size == 108


def chain_genesis(file_id: bytes) -> bytes:
    """The link the first block's digest chains from: binds every block to its file."""
    return blake3.blake3(CHAIN_DOMAIN + file_id).digest()


def encode_file_header(file_id: bytes) -> bytes:
    assert len(file_id) == FILE_ID_BYTES
    return FILE_HEADER.pack(FILE_MAGIC, FORMAT_MAJOR, FORMAT_MINOR, 0, file_id)


def decode_file_header(data: bytes | memoryview) -> bytes:
    """The file id, after checking magic, version and reserved flags."""
    if len(data) < FILE_HEADER.size:
        raise TruncatedError(f"file is {len(data)} bytes, shorter than the {FILE_HEADER.size}-byte header")
    magic, major, minor, flags, file_id = FILE_HEADER.unpack(bytes(data[: FILE_HEADER.size]))
    if magic != FILE_MAGIC:
        raise FormatError("not a .maif file (bad magic)", offset=0)
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"format version {major}.{minor} is not supported (this reader: {FORMAT_MAJOR}.x)", offset=8
        )
    if flags != 0:
        raise FormatError(f"file header has reserved flag bits set: {flags:#x}", offset=12)
    file_id_bytes: bytes = file_id
    return file_id_bytes


@dataclass(frozen=True, slots=True)
class Signature:
    key_id: bytes
    signed_at_ns: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class Manifest:
    """One version's manifest; ``body`` is the exact signed-over bytes (everything before signatures)."""

    version_number: int
    block_count: int
    segment_start: int
    merkle_root: bytes
    index_digest: bytes
    previous_manifest_digest: bytes
    committed_at_ns: int
    key_wraps: tuple[KeyWrap, ...]
    signatures: tuple[Signature, ...]
    body: bytes

    @property
    def body_digest(self) -> bytes:
        return blake3.blake3(self.body).digest()

    @property
    def digest(self) -> bytes:
        """Digest of the whole manifest (body and signatures): what the next version links to."""
        return blake3.blake3(self.encode()).digest()

    def encode(self) -> bytes:
        return self.body + encode_signatures(self.signatures)


def encode_manifest_body(
    version_number: int,
    block_count: int,
    segment_start: int,
    merkle_root: bytes,
    index_digest: bytes,
    previous_manifest_digest: bytes,
    committed_at_ns: int,
    key_wraps: tuple[KeyWrap, ...],
) -> bytes:
    assert len(key_wraps) <= limits.recipients_max
    fixed = MANIFEST_FIXED.pack(
        MANIFEST_MAGIC,
        version_number,
        block_count,
        segment_start,
        merkle_root,
        index_digest,
        previous_manifest_digest,
        committed_at_ns,
        len(key_wraps),
    )
    return fixed + b"".join(wrap.encode() for wrap in key_wraps)


def encode_signatures(signatures: tuple[Signature, ...]) -> bytes:
    assert len(signatures) <= limits.manifest_signatures_max
    parts = [SIGNATURE_COUNT.pack(len(signatures))]
    parts += [SIGNATURE_ENTRY.pack(s.key_id, s.signed_at_ns, s.signature) for s in signatures]
    return b"".join(parts)


def decode_manifest(data: bytes, offset: int) -> Manifest:
    """Parse a manifest of exactly ``len(data)`` bytes (``offset`` only labels errors)."""
    if len(data) > limits.manifest_bytes_max:
        raise LimitExceededError("manifest size", len(data), limits.manifest_bytes_max)
    if len(data) < MANIFEST_FIXED.size + SIGNATURE_COUNT.size:
        raise TruncatedError(f"manifest of {len(data)} bytes is shorter than its fixed part", offset=offset)
    fields = MANIFEST_FIXED.unpack(data[: MANIFEST_FIXED.size])
    magic, version_number, block_count, segment_start, root, index_digest, previous, committed, wraps = fields
    if magic != MANIFEST_MAGIC:
        raise FormatError("manifest has a bad magic", offset=offset)
    if wraps > limits.recipients_max:
        raise LimitExceededError("recipient count", wraps, limits.recipients_max)
    if block_count > limits.container_blocks_max:
        raise LimitExceededError("block count", block_count, limits.container_blocks_max)
    body_end = MANIFEST_FIXED.size + wraps * KEY_WRAP.size
    if body_end + SIGNATURE_COUNT.size > len(data):
        raise TruncatedError("manifest ends inside its key wraps", offset=offset)
    signature_count = data[body_end]
    if signature_count > limits.manifest_signatures_max:
        raise LimitExceededError("signature count", signature_count, limits.manifest_signatures_max)
    expected = body_end + SIGNATURE_COUNT.size + signature_count * SIGNATURE_ENTRY.size
    if expected != len(data):
        raise FormatError(f"manifest should be {expected} bytes, is {len(data)}", offset=offset)
    key_wraps = tuple(
        KeyWrap.decode(data[start : start + KEY_WRAP.size])
        for start in range(MANIFEST_FIXED.size, body_end, KEY_WRAP.size)
    )
    first = body_end + SIGNATURE_COUNT.size
    signatures = tuple(
        Signature(*SIGNATURE_ENTRY.unpack(data[start : start + SIGNATURE_ENTRY.size]))
        for start in range(first, len(data), SIGNATURE_ENTRY.size)
    )
    return Manifest(
        version_number,
        block_count,
        segment_start,
        root,
        index_digest,
        previous,
        committed,
        key_wraps,
        signatures,
        data[:body_end],
    )


@dataclass(frozen=True, slots=True)
class Trailer:
    index_offset: int
    manifest_offset: int
    manifest_length: int
    version_number: int
    block_count: int
    segment_start: int

    @property
    def new_block_count(self) -> int:
        return (self.manifest_offset - self.index_offset) // INDEX_ENTRY.size


def trailer_checksum(manifest: bytes | memoryview, trailer_fields: bytes) -> bytes:
    hasher = blake3.blake3(manifest)
    hasher.update(trailer_fields)
    return hasher.digest()[:16]


def encode_trailer(trailer: Trailer, manifest: bytes) -> bytes:
    fields = TRAILER.pack(
        trailer.index_offset,
        trailer.manifest_offset,
        trailer.manifest_length,
        trailer.version_number,
        trailer.block_count,
        trailer.segment_start,
        b"",
        b"",
    )
    checked = fields[:TRAILER_CHECKED_BYTES]
    return checked + trailer_checksum(manifest, checked) + TRAILER_MAGIC


class HashBudget:
    """Bytes a search may still hash; :meth:`spend` refuses with LimitExceededError once they run out
    (and ``exhausted`` tells that refusal from a candidate's own errors)."""

    __slots__ = ("_limit", "_spent", "_what", "exhausted")

    def __init__(self, what: str, limit: int) -> None:
        self._what, self._limit, self._spent = what, limit, 0
        self.exhausted = False

    def spend(self, size: int) -> None:
        self._spent += size
        if self._spent > self._limit:
            self.exhausted = True
            raise LimitExceededError(self._what, self._spent, self._limit)


def decode_trailer(data: bytes | memoryview, position: int, budget: HashBudget | None = None) -> Trailer:
    """The trailer starting at ``position`` in ``data`` (a whole-file view), with its layout checked.

    Checks the magic, the no-holes arithmetic between index, manifest and trailer, and the checksum over
    the manifest and the trailer's own fields. A failure means "no valid version ends here". The manifest
    bytes the checksum hashes are charged to ``budget`` first, when one is given.
    """
    if position < FILE_HEADER.size or position + TRAILER.size > len(data):
        raise TruncatedError("no room for a trailer", offset=position)
    raw = bytes(data[position : position + TRAILER.size])
    index_offset, manifest_offset, manifest_length, version, count, segment_start, checksum, magic = (
        TRAILER.unpack(raw)
    )
    if magic != TRAILER_MAGIC:
        raise FormatError("trailer has a bad magic", offset=position)
    if not FILE_HEADER.size <= segment_start <= index_offset <= manifest_offset < position:
        raise FormatError("trailer offsets are out of order", offset=position)
    if manifest_offset + manifest_length != position or manifest_length > limits.manifest_bytes_max:
        raise FormatError("trailer's manifest does not end where the trailer starts", offset=position)
    if (manifest_offset - index_offset) % INDEX_ENTRY.size:
        raise FormatError("trailer's index length is not a whole number of entries", offset=position)
    if count > limits.container_blocks_max:
        raise LimitExceededError("block count", count, limits.container_blocks_max)
    if budget is not None:
        budget.spend(manifest_length)
    if trailer_checksum(data[manifest_offset:position], raw[:TRAILER_CHECKED_BYTES]) != checksum:
        raise FormatError("trailer checksum does not match its manifest", offset=position)
    return Trailer(index_offset, manifest_offset, manifest_length, version, count, segment_start)


__all__ = [
    "FILE_HEADER",
    "INDEX_ENTRY",
    "TRAILER",
    "HashBudget",
    "Manifest",
    "Signature",
    "Trailer",
    "chain_genesis",
    "decode_file_header",
    "decode_manifest",
    "decode_trailer",
    "encode_file_header",
    "encode_manifest_body",
    "encode_trailer",
]
