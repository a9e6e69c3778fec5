"""The small immutable values the storage engine hands back: receipts, summaries, hits, reports."""

from __future__ import annotations

import msgspec


class WriteReceipt(msgspec.Struct, frozen=True):
    """Proof that a block is durable: its id, content digest (``block_digest``) and log position."""

    block_id: str
    digest: bytes
    lsn: int


class DeleteReceipt(msgspec.Struct, frozen=True):
    """Proof that a deletion is durable: the block id and the LSN of its tombstone."""

    block_id: str
    lsn: int


class BlockSummary(msgspec.Struct, frozen=True):
    """One line of ``list_blocks``: everything about a block except its payload and metadata."""

    block_id: str
    block_type: str
    agent_id: str
    timestamp: float
    version: str
    parents: tuple[str, ...]
    payload_length: int
    digest: bytes
    lsn: int


class SearchHit(msgspec.Struct, frozen=True):
    """One semantic search result; ``score`` is the cosine similarity (1.0 = same direction)."""

    block_id: str
    score: float
    agent_id: str
    block_type: str


class CheckReport(msgspec.Struct, frozen=True):
    """What ``check`` found: ``ok`` only when ``problems`` is empty. ``repaired`` lists what opening the
    store (or ``repair``) rebuilt from the authoritative data, or found lost and named."""

    ok: bool
    problems: list[str]
    blocks_checked: int
    blocks_read: int
    wal_records_unapplied: int
    repaired: list[str] = msgspec.field(default_factory=list)


__all__ = ["BlockSummary", "CheckReport", "DeleteReceipt", "SearchHit", "WriteReceipt"]
