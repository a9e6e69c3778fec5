"""The record the metadata index keeps for every stored block.

A :class:`BlockRecord` is everything about a block except its payload bytes: who made it, when, from
what, and the ordered list of chunk digests that reassemble the payload from the chunk store. The engine
builds one per block when it applies the write-ahead log; the metadata index stores and queries them.
"""

from __future__ import annotations

import msgspec

from maif.errors import IntegrityError


class BlockRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One block's metadata and the addresses of its payload chunks.

    block_id        the block's id (``MAIFBlock.id``)
    block_type      its FourCC as a 4-character string ("TEXT", "EMBD", ...)
    agent_id        the producing agent
    timestamp       creation time, Unix seconds
    version         the producer's version label
    parents         ids of the blocks it was derived from
    metadata        the block's metadata map, MessagePack-encoded
    chunks          BLAKE3 digests of the payload chunks, in payload order
    payload_length  total payload length in bytes (the sum of the chunk lengths)
    digest          the block's content digest (``maif.format.codec.block_digest``)
    lsn             log sequence number of the write-ahead log record that wrote it
    deleted         a tombstone: the block was deleted at ``lsn`` (every other field but the id is
                    empty); kept so that no older record of the block can bring it back in a rebuild
    """

    block_id: str
    block_type: str
    agent_id: str
    timestamp: float
    version: str
    parents: tuple[str, ...]
    metadata: bytes
    chunks: tuple[bytes, ...]
    payload_length: int
    digest: bytes
    lsn: int
    deleted: bool = False


def tombstone_record(block_id: str, lsn: int) -> BlockRecord:
    """The record of a deletion."""
    return BlockRecord(block_id=block_id, block_type="", agent_id="", timestamp=0.0, version="",
                       parents=(), metadata=b"", chunks=(), payload_length=0, digest=b"", lsn=lsn,
                       deleted=True)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(BlockRecord)


def encode_record(record: BlockRecord) -> bytes:
    """The record's authoritative bytes (MessagePack, field order fixed by the struct): deterministic, so
    the same record always has the same address in the chunk store."""
    return _encoder.encode(record)


def decode_record(raw: bytes) -> BlockRecord:
    """A record from its bytes; IntegrityError when they do not decode as one."""
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise IntegrityError(f"a stored block record does not decode ({error})") from error


__all__ = ["BlockRecord", "decode_record", "encode_record", "tombstone_record"]
