"""The logical block: what an agent produced, who produced it, when, and from what.

A :class:`MAIFBlock` is the unit everything in MAIF handles: the container stores it, the engine makes it
durable, the security layer signs it, and agents produce it. It is immutable; its identity is ``id``
(chosen by the producer, or a time-ordered UUIDv7 when omitted) and its content identity is
:func:`maif.format.codec.block_digest`, the BLAKE3 digest of its canonical encoding.

The constructor keeps the seed's signature, so ``MAIFBlock(id, block_type, data, metadata, timestamp,
agent_id)`` works as the seed README showed, and validates every field once, here.
"""

from __future__ import annotations

import enum
import os
import time
from typing import Any

import msgspec
from msgspec.structs import force_setattr

from maif import limits
from maif.errors import ArgumentTypeError, FormatError
from maif.validation import require_bytes, require_float, require_str, require_str_sequence, type_of


class MAIFBlockType(enum.Enum):
    """The seed's block types, each a FourCC. Other FourCCs are allowed and stay plain strings."""

    TEXT = "TEXT"
    IMAGE = "IMAG"
    AUDIO = "AUDI"
    VIDEO = "VIDE"
    EMBEDDING = "EMBD"
    KNOWLEDGE_GRAPH = "KGRF"
    SECURITY = "SECU"
    METADATA = "META"

    @property
    def fourcc(self) -> bytes:
        return self.value.encode("ascii")


_KNOWN_TYPES = {member.value: member for member in MAIFBlockType}


def normalize_block_type(block_type: MAIFBlockType | str | bytes) -> MAIFBlockType | str:
    """A known FourCC as its enum member; any other valid FourCC as a 4-character string.

    A FourCC is exactly four printable ASCII characters (0x21-0x7E).
    """
    if isinstance(block_type, MAIFBlockType):
        return block_type
    text = block_type.decode("ascii", "replace") if isinstance(block_type, bytes) else block_type
    if not isinstance(text, str) or len(text) != 4 or not all(0x21 <= ord(c) <= 0x7E for c in text):
        raise FormatError(f"block type must be a FourCC of 4 printable ASCII characters, got {text!r}")
    return _KNOWN_TYPES.get(text, text)


def fourcc_of(block_type: MAIFBlockType | str) -> bytes:
    """The 4 bytes that encode a (normalized) block type."""
    return block_type.fourcc if isinstance(block_type, MAIFBlockType) else block_type.encode("ascii")


def new_block_id() -> str:
    """A time-ordered UUIDv7 (RFC 9562) string: 48-bit Unix milliseconds, then 74 random bits."""
    unix_ms = time.time_ns() // 1_000_000
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    digits = f"{value:032x}"  # str(uuid.UUID(int=value)), without the object (one per service write)
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


class MAIFBlock(msgspec.Struct, frozen=True, kw_only=False):
    """One immutable artifact with its provenance.

    id          producer-chosen identifier (UTF-8, at most ``limits.block_id_bytes_max`` bytes)
    block_type  a :class:`MAIFBlockType` or any other FourCC string
    data        the payload bytes (at most ``limits.block_payload_bytes_max``)
    metadata    a MessagePack-encodable map (encoded size at most ``limits.block_metadata_bytes_max``)
    timestamp   creation time, Unix seconds (float64, stored exactly)
    agent_id    the producing agent (UTF-8, at most ``limits.agent_id_bytes_max`` bytes)
    version     the producer's version label for this block's schema (the seed's "1.0")
    parents     ids of the blocks this one was derived from: the provenance graph
    """

    id: str = msgspec.field(default_factory=new_block_id)
    block_type: MAIFBlockType | str = MAIFBlockType.TEXT
    data: bytes = b""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    timestamp: float = msgspec.field(default_factory=time.time)
    agent_id: str = ""
    version: str = "1.0"
    parents: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Frozen msgspec structs allow normalising assignment in __post_init__ only through force_setattr.
        # Errors: maif.validation (ArgumentTypeError for a wrong type, e.g. parents="abc" or timestamp=True).
        if not isinstance(self.block_type, MAIFBlockType | str | bytes):
            raise ArgumentTypeError(f"block type must be a MAIFBlockType or a FourCC str, got "
                                    f"{type_of(self.block_type)}")
        force_setattr(self, "block_type", normalize_block_type(self.block_type))
        data = require_bytes("block data", self.data, limits.block_payload_bytes_max)
        if data is not self.data:
            force_setattr(self, "data", data)
        force_setattr(self, "parents", require_str_sequence(
            "block parents", self.parents, limits.block_id_bytes_max, max_items=limits.block_parents_max))
        require_str("block id", self.id, limits.block_id_bytes_max, allow_empty=False)
        require_str("agent id", self.agent_id, limits.agent_id_bytes_max)
        require_str("block version", self.version, limits.block_version_bytes_max)
        if not isinstance(self.metadata, dict):
            raise ArgumentTypeError(f"block metadata must be a dict, got {type_of(self.metadata)}")
        for key in self.metadata:
            if not isinstance(key, str):
                raise ArgumentTypeError(f"block metadata keys must be str, got {type_of(key)}")
        force_setattr(self, "timestamp", require_float("block timestamp", self.timestamp))

    @property
    def fourcc(self) -> bytes:
        return fourcc_of(self.block_type)

    @property
    def type_name(self) -> str:
        return self.fourcc.decode("ascii")


__all__ = ["MAIFBlock", "MAIFBlockType", "fourcc_of", "new_block_id", "normalize_block_type"]
