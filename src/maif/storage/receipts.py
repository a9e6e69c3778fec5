"""The small immutable values the storage engine hands back: receipts, summaries, hits, reports."""

from __future__ import annotations

import msgspec


class WriteReceipt(msgspec.Struct, frozen=True):
    """Proof that a block is durable: its id, content digest (``block_digest``) and log position."""

    block_id: str
    digest: bytes
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
    """What ``check`` found: ``ok`` only when ``problems`` is empty."""

    ok: bool
    problems: list[str]
    blocks_checked: int
    blocks_read: int
    wal_records_unapplied: int


__all__ = ["BlockSummary", "CheckReport", "SearchHit", "WriteReceipt"]
