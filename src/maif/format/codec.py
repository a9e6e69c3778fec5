"""The canonical byte encoding of one :class:`MAIFBlock`, shared by the codec and the container.

A block is encoded as a compact *block header* followed by a *body* (metadata, then payload); see
docs/format/SPEC.md section 4 for the byte layout. The same header describes a block inside a .maif
container, where the body may be compressed and encrypted (the ``storage_flags`` byte says so); the
logical encoding returned by :func:`encode_block` is one codec-version byte followed by that header with
``storage_flags == 0`` and the plain body.

Optional fields take no space when they hold their default (no agent id, version "1.0", no parents,
empty metadata), and a block id in canonical UUID form is stored as its 16 raw bytes: the header of a
typical small block is 18 bytes plus the id.

Decoding treats its input as hostile: every length is checked against :mod:`maif.limits` and against the
bytes that remain *before* anything is sliced or decoded, reserved bits must be zero, and the input must
be consumed exactly. Every defect raises a :class:`~maif.errors.FormatError` (or a subclass) or a
:class:`~maif.errors.LimitExceededError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import blake3
import msgspec

from maif import limits
from maif.errors import FormatError, LimitExceededError, TruncatedError, UnsupportedVersionError
from maif.format import native
from maif.format.block import MAIFBlock, MAIFBlockType, fourcc_of, normalize_block_type

CODEC_VERSION: Final = 1
DEFAULT_BLOCK_VERSION: Final = "1.0"

# storage_flags: how the body is stored (only meaningful inside a container)
STORAGE_COMPRESSED: Final = 0x01
STORAGE_ENCRYPTED: Final = 0x02
_STORAGE_KNOWN: Final = STORAGE_COMPRESSED | STORAGE_ENCRYPTED

# field_flags: which optional fields are present
FIELD_ID_UUID: Final = 0x01
FIELD_AGENT: Final = 0x02
FIELD_VERSION: Final = 0x04
FIELD_PARENTS: Final = 0x08
FIELD_METADATA: Final = 0x10
_FIELD_KNOWN: Final = FIELD_ID_UUID | FIELD_AGENT | FIELD_VERSION | FIELD_PARENTS | FIELD_METADATA

# fourcc, storage_flags, field_flags, timestamp (float64 seconds), payload length (plaintext, bytes)
FIXED_HEADER: Final = struct.Struct("<4sBBdI")
_FIXED_HEADER_WITH_UUID: Final = struct.Struct("<4sBBdI16s")
_AGENT_FIELDS_CACHED_MAX: Final = 4096
_agent_fields: dict[str, bytes] = {}
_U8: Final = struct.Struct("<B")
_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")

KNOWN_FOURCCS: Final[dict[object, bytes]] = {member: member.fourcc for member in MAIFBlockType}
_KNOWN_TYPES: Final[dict[bytes, MAIFBlockType]] = {member.fourcc: member for member in MAIFBlockType}
_metadata_encoder: Final = msgspec.msgpack.Encoder(order="deterministic")
_metadata_decoder: Final = msgspec.msgpack.Decoder(dict[str, Any])

# MessagePack type bytes, for the depth scan that runs before msgspec decodes (SPEC section 4.2).
_CONTAINER_TYPE_BYTES: Final = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"  # fixmap, fixarray, 16/32
# type byte -> bytes that follow it, for the scalars of fixed size (nil, booleans, numbers, fixext)
_FIXED_SIZES: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}
# type byte -> (size of its big-endian length field, bytes after that field besides the data)
_PREFIXED_SIZES: Final = {
    0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0),
    0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1),
}
# type byte -> (size of its big-endian count field, items per counted entry)
_CONTAINER_SIZES: Final = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


class BlockHeader(NamedTuple):
    """A decoded block header; ``body_offset`` is where metadata (then payload) begins in the buffer.

    A NamedTuple rather than a frozen dataclass: one is built per block read, and a frozen dataclass's
    ``__init__`` (one ``object.__setattr__`` per field) cost a tenth of full verification."""

    block_type: Any
    storage_flags: int
    timestamp: float
    payload_length: int
    block_id: str
    agent_id: str
    version: str
    parents: tuple[str, ...]
    metadata_length: int
    body_offset: int


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    """Deterministic MessagePack of a metadata map (keys sorted), size-capped; empty maps encode to b""."""
    if not metadata:
        return b""
    if not all(isinstance(key, str) for key in metadata):
        raise FormatError("block metadata keys must be strings")
    try:
        encoded = _metadata_encoder.encode(metadata)
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as error:
        raise FormatError(f"block metadata is not MessagePack-encodable: {error}") from error
    if len(encoded) > limits.block_metadata_bytes_max:
        raise LimitExceededError("encoded metadata size", len(encoded), limits.block_metadata_bytes_max)
    check_metadata_depth(encoded)  # never write what a reader refuses
    return encoded


def decode_metadata(data: bytes | memoryview) -> dict[str, Any]:
    """The metadata map from its MessagePack bytes (already length-checked by the caller)."""
    if len(data) > limits.block_metadata_bytes_max:
        raise LimitExceededError("encoded metadata size", len(data), limits.block_metadata_bytes_max)
    check_metadata_depth(data)
    try:
        decoded: dict[str, Any] = _metadata_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError) as error:
        raise FormatError(f"block metadata is not a valid MessagePack map: {error}") from error
    if not decoded:
        raise FormatError("block metadata is present but empty (an empty map must be omitted)")
    # One value, one encoding: keys sorted and every item in its shortest form, as encode_metadata writes.
    try:
        canonical = _metadata_encoder.encode(decoded)
    except TypeError as error:  # a nested map with non-string keys: it cannot be sorted canonically
        raise FormatError(f"block metadata holds a map MAIF cannot encode: {error}") from error
    if canonical != data:
        raise FormatError("block metadata is not in canonical MessagePack form (sorted keys, shortest items)")
    return decoded


def check_metadata_depth(data: bytes | memoryview) -> None:
    """Refuse MessagePack nested deeper than ``limits.block_metadata_depth_max`` (LimitExceededError), by a
    scan that keeps a list of open containers instead of recursing, so no input can exhaust the stack of
    the decoder that runs after it."""
    raw = bytes(data)
    # Every open container has a type byte in _CONTAINER_TYPE_BYTES: with no more such bytes than the
    # bound (typical metadata), the nesting cannot exceed it and the scan is skipped.
    if len(raw) - len(raw.translate(None, _CONTAINER_TYPE_BYTES)) > limits.block_metadata_depth_max:
        scan_metadata_depth(raw, limits.block_metadata_depth_max)


def scan_metadata_depth(raw: bytes, depth_max: int) -> None:
    """Walk every MessagePack item in ``raw`` iteratively; LimitExceededError past ``depth_max`` levels,
    FormatError if the items do not end exactly at the end of ``raw``."""
    expected = [1]  # items still expected by each open container; the first entry stands for the root
    position = 0
    while expected:
        if expected[-1] == 0:
            expected.pop()
            continue
        expected[-1] -= 1
        position, count = _skip_metadata_item(raw, position)
        if count is not None:
            if len(expected) > depth_max:
                raise LimitExceededError("block metadata nesting depth", len(expected), depth_max)
            expected.append(count)
    if position != len(raw):
        raise FormatError("block metadata has bytes after its MessagePack map")


def _skip_metadata_item(raw: bytes, position: int) -> tuple[int, int | None]:
    """The position after the item's own bytes at ``position``, and the number of items it contains
    if it is a map or an array (None for a scalar)."""
    if position >= len(raw):
        raise FormatError("block metadata ends inside a MessagePack item")
    kind = raw[position]
    position += 1
    if kind <= 0x7F or kind >= 0xE0:  # fixint
        return position, None
    if kind <= 0x8F:  # fixmap: keys and values
        return position, 2 * (kind & 0x0F)
    if kind <= 0x9F:  # fixarray
        return position, kind & 0x0F
    if kind <= 0xBF:  # fixstr
        return _advance(raw, position, kind & 0x1F), None
    if kind in _FIXED_SIZES:
        return _advance(raw, position, _FIXED_SIZES[kind]), None
    if kind in _PREFIXED_SIZES:
        field, extra = _PREFIXED_SIZES[kind]
        end = _advance(raw, position, field)
        return _advance(raw, end, int.from_bytes(raw[position:end], "big") + extra), None
    if kind in _CONTAINER_SIZES:
        field, per_entry = _CONTAINER_SIZES[kind]
        end = _advance(raw, position, field)
        return end, per_entry * int.from_bytes(raw[position:end], "big")
    raise FormatError(f"block metadata holds the reserved MessagePack type byte {kind:#04x}")


def _advance(raw: bytes, position: int, size: int) -> int:
    if size > len(raw) - position:
        raise FormatError("block metadata ends inside a MessagePack item")
    return position + size


def _uuid_bytes(block_id: str) -> bytes | None:
    """The 16 raw bytes of a canonical (lowercase, hyphenated) UUID string, else None."""
    # Hyphens at 8, 13, 18 and 23 (every fifth character from 8), and nowhere else: 32 characters remain.
    if len(block_id) != 36 or block_id[8:24:5] != "----":
        return None
    hex_digits = block_id.replace("-", "")
    try:
        raw = bytes.fromhex(hex_digits)
    except ValueError:
        return None
    # fromhex also accepts upper case and spaces; only the one canonical spelling maps to raw bytes
    return raw if len(raw) == 16 and raw.hex() == hex_digits else None


def encode_header(block: MAIFBlock, storage_flags: int, metadata_length: int) -> bytes:
    """The block header: fixed fields, then the optional fields the flags announce.

    Written for the common block (a UUID id, an agent id, nothing else): one struct call packs the fixed
    part with the raw id, and an agent id's encoded field is remembered (bounded), since an agent writes
    many blocks."""
    assert storage_flags & ~_STORAGE_KNOWN == 0
    field_flags, tail = 0, b""
    if block.agent_id:
        field_flags, tail = FIELD_AGENT, _agent_field(block.agent_id)
    if metadata_length or block.parents or block.version != DEFAULT_BLOCK_VERSION:
        more_flags, more = _rare_fields(block, metadata_length)
        field_flags, tail = field_flags | more_flags, tail + more
    fourcc = KNOWN_FOURCCS.get(block.block_type) or fourcc_of(block.block_type)
    raw_id = _uuid_bytes(block.id)
    if raw_id is not None:
        field_flags |= FIELD_ID_UUID
        return _FIXED_HEADER_WITH_UUID.pack(
            fourcc, storage_flags, field_flags, block.timestamp, len(block.data), raw_id
        ) + tail
    encoded_id = block.id.encode("utf-8")
    fixed = FIXED_HEADER.pack(fourcc, storage_flags, field_flags, block.timestamp, len(block.data))
    return b"".join((fixed, _U16.pack(len(encoded_id)), encoded_id, tail))


def _agent_field(agent_id: str) -> bytes:
    field = _agent_fields.get(agent_id)
    if field is None:
        encoded = agent_id.encode("utf-8")
        field = _U16.pack(len(encoded)) + encoded
        if len(_agent_fields) >= _AGENT_FIELDS_CACHED_MAX:
            _agent_fields.clear()
        _agent_fields[agent_id] = field
    return field


def _rare_fields(block: MAIFBlock, metadata_length: int) -> tuple[int, bytes]:
    """The version label, parents and metadata length fields, and their flags."""
    parts: list[bytes] = []
    field_flags = 0
    if block.version != DEFAULT_BLOCK_VERSION:
        field_flags |= FIELD_VERSION
        version = block.version.encode("utf-8")
        parts += (_U8.pack(len(version)), version)
    if block.parents:
        field_flags |= FIELD_PARENTS
        parts.append(_U16.pack(len(block.parents)))
        for parent in block.parents:
            encoded_parent = parent.encode("utf-8")
            parts += (_U16.pack(len(encoded_parent)), encoded_parent)
    if metadata_length:
        field_flags |= FIELD_METADATA
        parts.append(_U32.pack(metadata_length))
    return field_flags, b"".join(parts)


class _Cursor:
    """Reads length-prefixed fields from ``buffer[position:end]``, refusing to run past ``end``."""

    __slots__ = ("buffer", "end", "position")

    def __init__(self, buffer: bytes | memoryview, position: int, end: int) -> None:
        self.buffer, self.position, self.end = buffer, position, end

    def take(self, size: int, what: str) -> bytes:
        if size > self.end - self.position:
            raise TruncatedError(
                f"{what} needs {size} bytes, {self.end - self.position} remain", offset=self.position
            )
        start = self.position
        self.position += size
        return bytes(self.buffer[start : self.position])

    def unpack(self, layout: struct.Struct, what: str) -> int:
        value: int = layout.unpack(self.take(layout.size, what))[0]
        return value

    def text(self, layout: struct.Struct, what: str, max_bytes: int, *, allow_empty: bool) -> str:
        size = self.unpack(layout, f"{what} length")
        if size > max_bytes:
            raise LimitExceededError(f"{what} length in bytes", size, max_bytes)
        if size == 0 and not allow_empty:
            raise FormatError(f"{what} is empty", offset=self.position)
        raw = self.take(size, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise FormatError(f"{what} is not valid UTF-8", offset=self.position - size) from error


def decode_header(buffer: bytes | memoryview, start: int, end: int) -> BlockHeader:
    """Parse the block header at ``buffer[start:end]`` (``end`` bounds the whole block)."""
    raw_id = None
    if end - start >= _FIXED_HEADER_WITH_UUID.size and buffer[start + 5] & FIELD_ID_UUID:
        # The common header in one struct call: the fixed part and the raw UUID id after it.
        fourcc, storage_flags, field_flags, timestamp, payload_length, raw_id = (
            _FIXED_HEADER_WITH_UUID.unpack_from(buffer, start)
        )
        cursor = _Cursor(buffer, start + _FIXED_HEADER_WITH_UUID.size, end)
    else:
        cursor = _Cursor(buffer, start, end)
        fourcc, storage_flags, field_flags, timestamp, payload_length = FIXED_HEADER.unpack(
            cursor.take(FIXED_HEADER.size, "block header")
        )
    if storage_flags & ~_STORAGE_KNOWN:
        raise FormatError(
            f"block header has reserved storage flag bits set: {storage_flags:#04x}", offset=start + 4
        )
    if field_flags & ~_FIELD_KNOWN:
        raise FormatError(
            f"block header has reserved field flag bits set: {field_flags:#04x}", offset=start + 5
        )
    if timestamp != timestamp or timestamp in (float("inf"), float("-inf")):
        raise FormatError("block timestamp is not a finite number", offset=start + 6)
    if payload_length > limits.block_payload_bytes_max:
        raise LimitExceededError("block payload size", payload_length, limits.block_payload_bytes_max)
    block_type = _KNOWN_TYPES.get(fourcc) or normalize_block_type(fourcc)
    if field_flags & FIELD_ID_UUID:
        # The canonical text form, as str(uuid.UUID(bytes=...)) spells it, without building a UUID.
        digits = (raw_id if raw_id is not None else cursor.take(16, "block id")).hex()
        block_id = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    else:
        block_id = cursor.text(_U16, "block id", limits.block_id_bytes_max, allow_empty=False)
        if _uuid_bytes(block_id) is not None:
            raise FormatError("a canonical UUID block id must be stored as 16 raw bytes", offset=start + 18)
    agent_id = ""
    if field_flags & FIELD_AGENT:
        agent_id = cursor.text(_U16, "agent id", limits.agent_id_bytes_max, allow_empty=False)
    version = DEFAULT_BLOCK_VERSION
    if field_flags & FIELD_VERSION:
        version = cursor.text(_U8, "block version", limits.block_version_bytes_max, allow_empty=True)
        if version == DEFAULT_BLOCK_VERSION:
            raise FormatError("block version field holds the default value and must be omitted")
    parents: tuple[str, ...] = ()
    if field_flags & FIELD_PARENTS:
        parents = _decode_parents(cursor)
    metadata_length = 0
    if field_flags & FIELD_METADATA:
        metadata_length = cursor.unpack(_U32, "metadata length")
        if metadata_length == 0:
            raise FormatError("metadata flag set with a zero metadata length")
        if metadata_length > limits.block_metadata_bytes_max:
            raise LimitExceededError(
                "encoded metadata size", metadata_length, limits.block_metadata_bytes_max
            )
    return BlockHeader(
        block_type,
        storage_flags,
        timestamp,
        payload_length,
        block_id,
        agent_id,
        version,
        parents,
        metadata_length,
        cursor.position,
    )


def _decode_parents(cursor: _Cursor) -> tuple[str, ...]:
    count = cursor.unpack(_U16, "parent count")
    if count == 0:
        raise FormatError("parents flag set with a zero parent count")
    if count > limits.block_parents_max:
        raise LimitExceededError("parent count", count, limits.block_parents_max)
    return tuple(
        cursor.text(_U16, "parent id", limits.block_id_bytes_max, allow_empty=False) for _ in range(count)
    )


def block_from_parts(header: BlockHeader, metadata: dict[str, Any], payload: bytes) -> MAIFBlock:
    """Build the block, converting the model's own validation failures into format errors."""
    return MAIFBlock(
        id=header.block_id,
        block_type=header.block_type,
        data=payload,
        metadata=metadata,
        timestamp=header.timestamp,
        agent_id=header.agent_id,
        version=header.version,
        parents=header.parents,
    )


def encode_block(block: MAIFBlock) -> bytes:
    """Canonical logical encoding of one block: deterministic for a given block value."""
    metadata = encode_metadata(block.metadata)
    header = encode_header(block, 0, len(metadata))
    return b"".join((_U8.pack(CODEC_VERSION), header, metadata, block.data))


# Blocks whose encoding is longer go to the reference: hashing, not encoding, is then their cost.
_NATIVE_ENCODING_BYTES_MAX: Final = 64 * 1024


def encode_blocks(blocks: Sequence[MAIFBlock]) -> list[tuple[bytes, bytes]]:
    """``(encode_block(block), block_digest(block))`` of each block, in order.

    With the compiled core (ADR 0090) the plain small blocks are encoded and hashed in C, which proves
    the common case or defers a block to the reference above (same bytes: a differential test holds
    them equal); the reference raises every error."""
    core = native.core()
    proven: list[tuple[bytes, bytes] | None]
    if core is None:
        proven = [None] * len(blocks)
    else:
        proven = core.encode_blocks(list(blocks), MAIFBlock, KNOWN_FOURCCS, encode_metadata,
                                    CODEC_VERSION, _NATIVE_ENCODING_BYTES_MAX, blake3.blake3)
    encodings: list[tuple[bytes, bytes]] = []
    for block, pair in zip(blocks, proven, strict=True):
        if pair is None:
            encoded = encode_block(block)
            pair = (encoded, blake3.blake3(encoded).digest())
        encodings.append(pair)
    return encodings


def decode_block(data: bytes | memoryview) -> MAIFBlock:
    """The block encoded in ``data`` (exactly: trailing bytes are an error)."""
    total = len(data)
    if total < 1 + FIXED_HEADER.size:
        raise TruncatedError(f"an encoded block needs at least {1 + FIXED_HEADER.size} bytes, got {total}")
    if data[0] != CODEC_VERSION:
        raise UnsupportedVersionError(
            f"block codec version {data[0]} is not supported (this reader: {CODEC_VERSION})", offset=0
        )
    max_total = 1 + limits.block_payload_bytes_max + limits.block_metadata_bytes_max + 64 * 1024 * 1024
    if total > max_total:
        raise LimitExceededError("encoded block size", total, max_total)
    header = decode_header(data, 1, total)
    if header.storage_flags:
        raise FormatError("a logical block encoding must not carry storage flags", offset=5)
    expected = header.body_offset + header.metadata_length + header.payload_length
    if expected != total:
        kind = TruncatedError if expected > total else FormatError
        raise kind(f"encoded block should be {expected} bytes long, got {total}")
    metadata_end = header.body_offset + header.metadata_length
    metadata = decode_metadata(data[header.body_offset : metadata_end]) if header.metadata_length else {}
    return block_from_parts(header, metadata, bytes(data[metadata_end:]))


def block_digest(block: MAIFBlock) -> bytes:
    """32-byte BLAKE3 of :func:`encode_block`: the block's content identity."""
    return blake3.blake3(encode_block(block)).digest()


__all__ = [
    "CODEC_VERSION",
    "BlockHeader",
    "block_digest",
    "check_metadata_depth",
    "decode_block",
    "decode_header",
    "decode_metadata",
    "encode_block",
    "encode_blocks",
    "encode_header",
    "encode_metadata",
]
