"""Compaction: give back the space of deleted and overwritten blocks, by mark and sweep.

Mark: every chunk a block in the metadata index refers to, and the current record of every block, is
live. Sweep: :meth:`maif.storage.packs.PackStore.compact` rewrites the sealed local packs whose dead
bytes reach a fraction of their size, copying the live frames (same bytes) to the active pack before
the old pack is deleted. Liveness is computed from the index at the moment of compaction, never from
reference counts kept on the side, so a chunk two blocks share stays as long as either block does,
whatever order they were written and deleted in.

Tombstone records are always live: they stop an older record of a deleted block from coming back in a
rebuild, which a pack not yet compacted may still hold. Cold packs are immutable objects and are not
rewritten; the active pack is compacted once it is sealed.

The engine runs compaction with the applier paused (its maintenance lock), so nothing can start
referring to a chunk between the mark and the sweep; writes are still acknowledged into the log
meanwhile, up to the engine's backpressure bound. Crash safety is the pack store's (four ordered steps,
each tested with kill -9 in tests/storage/test_compaction.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from maif.errors import ConfigError, IntegrityError
from maif.storage.packs import FLAG_RECORD, ChunkLocation, CompactionResult, decode_chunk, record_digest
from maif.storage.rebuild import index_pages
from maif.storage.records import decode_record, encode_record

if TYPE_CHECKING:
    from maif.storage.engine import MAIFStorage


class CompactionReport(msgspec.Struct, frozen=True):
    """What :meth:`MAIFStorage.compact` did: packs examined and rewritten, frames and bytes."""

    packs_examined: int
    packs_rewritten: int
    live_frames_copied: int
    garbage_frames_dropped: int
    bytes_before: int
    bytes_after: int
    bytes_reclaimed: int


async def compact_store(storage: MAIFStorage, garbage_fraction_min: float,
                        on_step: Callable[[str], None] | None) -> CompactionReport:
    if not 0.0 < garbage_fraction_min <= 1.0:
        raise ConfigError(f"garbage_fraction_min must be in (0, 1], got {garbage_fraction_min!r}")
    compact = getattr(storage._backends.chunks, "compact", None)
    if compact is None:
        return CompactionReport(0, 0, 0, 0, 0, 0, 0)
    live: set[bytes] = set()
    async for page in index_pages(storage._backends):
        for record in page:
            live.update(record.chunks)
            live.add(record_digest(encode_record(record)))

    def is_live(digest: bytes, location: ChunkLocation, stored: bytes) -> bool:
        if digest in live:
            return True
        if not location.flags & FLAG_RECORD:
            return False
        try:
            raw = decode_chunk(digest, location.flags, stored, location.raw_length, "compaction")
            return decode_record(raw).deleted
        except IntegrityError:
            return False  # a damaged record frame is not copied (scrub reports it)

    result: CompactionResult = await compact(is_live, garbage_fraction_min, on_step)
    return CompactionReport(
        packs_examined=result.packs_examined,
        packs_rewritten=result.packs_rewritten,
        live_frames_copied=result.live_frames_copied,
        garbage_frames_dropped=result.garbage_frames_dropped,
        bytes_before=result.bytes_before,
        bytes_after=result.live_bytes_copied,
        bytes_reclaimed=result.bytes_reclaimed,
    )


__all__ = ["CompactionReport", "compact_store"]
