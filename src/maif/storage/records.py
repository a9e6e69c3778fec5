"""The record the metadata index keeps for every stored block.

A :class:`BlockRecord` is everything about a block except its payload bytes: who made it, when, from
what, and the ordered list of chunk digests that reassemble the payload from the chunk store. The engine
builds one per block when it applies the write-ahead log; the metadata index stores and queries them.
"""

from __future__ import annotations

import msgspec


class BlockRecord(msgspec.Struct, frozen=True):
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


__all__ = ["BlockRecord"]
