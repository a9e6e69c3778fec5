"""Tiers: sealed packs move from the warm local disk to a cold ObjectStore; reads stay transparent.

The hot tier is the in-process :class:`~maif.storage.cache.LRUHotCache` the engine consults first.
Warm is the local pack directory. Cold is any :class:`ObjectStore` (a local directory now, S3 later).
:meth:`TieredChunkStore.migrate` moves every sealed pack the :class:`TierPolicy` selects, in the
write-then-index order the rest of the store follows:

    1. upload the pack to the cold store as ``packs/pack-XXXXXXXX.pack`` (atomic put)
    2. read it back and compare its BLAKE3 digest with the local file's
    3. record the move durably in ``packs/remote.list`` (atomic rename), then delete the local file

A crash before 3 leaves the local pack in use (the upload is simply repeated later); a crash after 3
leaves a local copy the next open deletes. Reads of a chunk in a cold pack fetch only its frame with a
ranged read and verify it like any other read. :meth:`TieredChunkStore.served_by` reports which tier
served the last read of a digest.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3

from maif.errors import BlockNotFoundError, ConfigError, IntegrityError
from maif.storage.backends.base import Capabilities, ChunkStore, ObjectStore
from maif.storage.backends.local import LocalChunkStore
from maif.storage.packs import ChunkLocation, pack_file_name

_SERVED_BY_ENTRIES_MAX = 65_536


@dataclass(frozen=True)
class TierPolicy:
    """Which sealed packs go cold: sealed at least ``cold_after_age_s`` ago AND not read for
    ``cold_after_idle_s`` (reads since the process started count; a pack never read is idle)."""

    cold_after_age_s: float = 7 * 24 * 3600.0
    cold_after_idle_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if self.cold_after_age_s < 0 or self.cold_after_idle_s < 0:
            raise ConfigError("tier policy ages must be non-negative seconds")

    def selects(self, sealed_at: float, last_read_at: float | None, now: float) -> bool:
        idle_since = sealed_at if last_read_at is None else last_read_at
        return now - sealed_at >= self.cold_after_age_s and now - idle_since >= self.cold_after_idle_s


def cold_key(pack_id: int) -> str:
    return f"packs/{pack_file_name(pack_id)}"


class TieredChunkStore(ChunkStore):
    """A warm :class:`LocalChunkStore` whose sealed packs migrate to a cold :class:`ObjectStore`."""

    capabilities = Capabilities(durable=True, shared_between_processes=False)

    def __init__(
        self,
        warm: LocalChunkStore,
        cold: ObjectStore,
        policy: TierPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.warm = warm
        self.cold = cold
        self.policy = policy or TierPolicy()
        self.clock = clock
        self._served_by: OrderedDict[bytes, str] = OrderedDict()

    async def _read_cold(self, digest: bytes, location: ChunkLocation) -> bytes:
        """Fetch one frame from the cold tier with a ranged read and verify it like a warm read.

        Done here, in async code, rather than inside the PackStore's worker thread: a thread blocking
        on an async cold read could starve the executor the cold store itself needs."""
        try:
            frame = await self.cold.get_range(
                cold_key(location.pack_id), location.offset, location.end - location.offset
            )
        except BlockNotFoundError:
            frame = b""  # verify_frame reports the chunk as missing, with its location
        self.warm.packs.note_access(location.pack_id)
        return await asyncio.to_thread(self.warm.packs.verify_frame, digest, location, frame)

    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        return await self.warm.put_chunks(chunks)

    async def get_chunk(self, digest: bytes) -> bytes:
        location = self.warm.packs.locate(digest)
        if location is None or not self.warm.packs.is_remote(location.pack_id):
            data = await self.warm.get_chunk(digest)
            self._record_served(digest, "warm")
        else:
            data = await self._read_cold(digest, location)
            self._record_served(digest, "cold")
        return data

    def get_chunk_nowait(self, digest: bytes) -> bytes | None:
        """A warm chunk read on the calling thread (see LocalChunkStore.get_chunk_nowait); None for a
        chunk in the cold tier, which only the async path reads."""
        data = self.warm.get_chunk_nowait(digest)
        if data is not None:
            self._record_served(digest, "warm")
        return data

    def _record_served(self, digest: bytes, tier: str) -> None:
        self._served_by[digest] = tier
        self._served_by.move_to_end(digest)
        while len(self._served_by) > _SERVED_BY_ENTRIES_MAX:
            self._served_by.popitem(last=False)

    def served_by(self, digest: bytes) -> str | None:
        """ "warm" or "cold": the tier that served the last read of ``digest`` (None if not recently read)."""
        return self._served_by.get(digest)

    def last_read_tier(self, digest: bytes) -> str:
        """The engine's hook for ``read_block_with_tier``: like :meth:`served_by`, "warm" when unknown."""
        return self._served_by.get(digest, "warm")

    async def has_chunks(self, digests: Sequence[bytes]) -> set[bytes]:
        return await self.warm.has_chunks(digests)

    async def flush(self) -> None:
        await self.warm.flush()

    async def migrate(self, now: float | None = None) -> list[int]:
        """Move every sealed pack the policy selects to the cold tier; returns the moved pack ids."""
        moment = self.clock() if now is None else now
        candidates = self.warm.packs.sealed_packs()
        moved = []
        for pack_id, (sealed_at, last_read_at) in candidates.items():
            if self.policy.selects(sealed_at, last_read_at, moment):
                await self._move(pack_id)
                moved.append(pack_id)
        return moved

    async def _move(self, pack_id: int) -> None:
        path = self.warm.packs.pack_path(pack_id)
        data = await asyncio.to_thread(path.read_bytes)
        key = cold_key(pack_id)
        await self.cold.put(key, data)
        stored = await self.cold.get(key)
        if blake3.blake3(stored).digest() != blake3.blake3(data).digest():
            raise IntegrityError(
                f"pack {pack_id} read back from the cold tier differs from the local copy; kept warm"
            )
        await asyncio.to_thread(self.warm.packs.mark_remote, pack_id)

    async def scrub(self, read_data_fraction: float) -> list[str]:
        remote_ids = self.warm.packs.remote_pack_ids()
        present = {pack_id for pack_id in remote_ids if await self.cold.exists(cold_key(pack_id))}
        problems = await asyncio.to_thread(self.warm.packs.scrub, read_data_fraction, present.__contains__)
        for digest, location in self.warm.packs.sample_remote(read_data_fraction):
            if location.pack_id in present:  # a missing cold pack was reported once above
                try:
                    await self._read_cold(digest, location)
                except IntegrityError as error:
                    problems.append(str(error))
        return problems

    async def stats(self) -> dict[str, int | float]:
        stats = await self.warm.stats()
        return {**stats, "cold_packs": int(stats.get("packs_remote", 0))}

    async def close(self) -> None:
        try:
            await self.warm.close()
        finally:
            await self.cold.close()


__all__ = ["TierPolicy", "TieredChunkStore", "cold_key"]
