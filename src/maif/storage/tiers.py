"""Tiers: sealed packs move from the warm local disk to a cold ObjectStore; reads stay transparent.

The hot tier is the in-process :class:`~maif.storage.cache.LRUHotCache` the engine consults first.
Warm is the local pack directory. Cold is any :class:`ObjectStore` (a local directory now, S3 later).
:meth:`TieredChunkStore.migrate` moves every sealed pack the :class:`TierPolicy` selects, in the
write-then-index order the rest of the store follows:

    1. upload the pack to the cold store as ``packs/pack-XXXXXXXX.pack`` (atomic put)
    2. read it back and compare it with the local file's bytes
    3. record the move durably in ``packs/remote.list`` (atomic rename), then delete the local file

A crash before 3 leaves the local pack in use (the upload is simply repeated later); a crash after 3
leaves a local copy the next open deletes. Migrations are serialised (an asyncio.Lock): concurrent
ones wait, then skip packs already moved; a pack move runs to its end even when its migration is
cancelled, and :meth:`TieredChunkStore.close` waits for it. A read racing with the move of its pack
(the local file deleted under it) is served from the cold tier.

Reads of a chunk in a cold pack fetch only its frame with a ranged read and verify it like any other
read. :meth:`TieredChunkStore.served_by` reports which tier
served the last read of a digest.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from maif.errors import BackendError, BlockNotFoundError, ConfigError, IntegrityError, StoreClosedError
from maif.storage.backends.base import Capabilities, ChunkStore, ObjectStore
from maif.storage.backends.local import LocalChunkStore
from maif.storage.packs import ChunkLocation, CompactionResult, pack_file_name

_SERVED_BY_ENTRIES_MAX = 65_536
_COLD_PACK_KEY = re.compile(r"^packs/pack-([0-9a-f]{8})\.pack$")


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
        self._migration_lock = asyncio.Lock()  # one migration at a time (see migrate)
        self._moving: asyncio.Task[bool] | None = None  # the pack move in progress, if any
        self._closing = False

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

    async def put_chunk_data(self, pieces: Sequence[bytes | memoryview]) -> tuple[list[bytes], int]:
        return await self.warm.put_chunk_data(pieces)

    async def get_chunk(self, digest: bytes) -> bytes:
        location = self.warm.packs.locate(digest)
        if location is None or not self.warm.packs.is_remote(location.pack_id):
            try:
                data = await self.warm.get_chunk(digest)
            except (BackendError, IntegrityError):
                if not self._moved_meanwhile(location):
                    raise
                return await self.get_chunk(digest)  # its pack went cold while it was being read
            self._record_served(digest, "warm")
        else:
            data = await self._read_cold(digest, location)
            self._record_served(digest, "cold")
        return data

    def get_chunk_nowait(self, digest: bytes) -> bytes | None:
        """A warm chunk read on the calling thread (see LocalChunkStore.get_chunk_nowait); None for a
        chunk in the cold tier, which only the async path reads."""
        try:
            data = self.warm.get_chunk_nowait(digest)
        except (BackendError, IntegrityError):
            if not self._moved_meanwhile(self.warm.packs.locate(digest)):
                raise
            return None  # its pack went cold while it was being read: the async path reads it there
        if data is not None:
            self._record_served(digest, "warm")
        return data

    def _moved_meanwhile(self, location: ChunkLocation | None) -> bool:
        """Whether a failed warm read is explained by a migration that moved its pack meanwhile (the
        local file is deleted once the cold copy is recorded)."""
        return location is not None and self.warm.packs.is_remote(location.pack_id)

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

    async def put_records(self, records: Sequence[bytes]) -> int:
        return await self.warm.put_records(records)

    async def compact(self, is_live: Callable[[bytes, ChunkLocation, bytes], bool],
                      garbage_fraction_min: float,
                      on_step: Callable[[str], None] | None = None) -> CompactionResult:
        """Compact the warm packs (cold packs are immutable objects; they are not rewritten). Never while
        a pack moves to the cold tier: the two would rewrite and delete the same pack."""
        async with self._migration_lock:
            return await self.warm.compact(is_live, garbage_fraction_min, on_step)

    async def scan_records(self) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        """Records of the local packs, then of the cold ones (each fetched whole, one at a time)."""
        async for batch in self.warm.scan_records():
            yield batch
        packs = self.warm.packs
        for pack_id in packs.remote_pack_ids():
            try:
                data = await self.cold.get(cold_key(pack_id))
            except BlockNotFoundError:
                yield [], [f"cold pack {pack_id} is missing from the cold tier: the records in it are lost"]
                continue
            yield await asyncio.to_thread(packs.records_in_bytes, pack_id, data)

    async def reconcile(self) -> list[str]:
        """Make the warm side's lists agree with what the cold tier really holds; run once at open.

        - A pack in the cold tier that ``remote.list`` does not name (the list was lost, damaged or
          restored from an older copy) and that has no local copy is adopted: recorded as remote and
          its verified frames indexed.
        - After the pack index was rebuilt (it was lost or damaged), the frames of every cold pack are
          indexed again from the objects themselves.
        - A pack ``remote.list`` names but the cold tier lacks is reported (its chunks are lost).
        Returns what it did and found, one line each.
        """
        packs = self.warm.packs
        notes: list[str] = await self.warm.reconcile()
        cold_ids = set()
        for key in await self.cold.list("packs/"):
            match = _COLD_PACK_KEY.match(key)
            if match:
                cold_ids.add(int(match.group(1), 16))
        known_remote = set(packs.remote_pack_ids())
        for pack_id in sorted(cold_ids - known_remote):
            data = await self.cold.get(cold_key(pack_id))
            indexed = await asyncio.to_thread(packs.adopt_remote, pack_id, data)
            if packs.is_remote(pack_id):
                notes.append(f"cold pack {pack_id} was missing from remote.list: adopted, {indexed} "
                             "frame(s) indexed")
        if packs.index_was_rebuilt or packs.remote_underindexed:
            again = known_remote if packs.index_was_rebuilt else packs.remote_underindexed
            for pack_id in sorted(again & cold_ids):
                data = await self.cold.get(cold_key(pack_id))
                indexed = await asyncio.to_thread(packs.reindex_remote_pack, pack_id, data)
                if indexed:
                    notes.append(f"cold pack {pack_id}: {indexed} frame(s) indexed again after the pack "
                                 "index was rebuilt")
        for pack_id in sorted(known_remote - cold_ids):
            problem = f"pack {pack_id} is recorded in the cold tier but missing there: its chunks are lost"
            packs.note_problem(problem)
            notes.append(problem)
        return notes

    async def migrate(self, now: float | None = None) -> list[int]:
        """Move every sealed pack the policy selects to the cold tier; returns the moved pack ids.

        Migrations run one at a time: the background tier loop and any number of callers may ask at
        once, later ones wait and then skip the packs already moved. Each pack moves in a task of its
        own that cancelling the migration does not interrupt (a half-done move is never abandoned):
        the migration stops after it, and the next migration and :meth:`close` wait for it to end.
        A failed move raises (BackendError, IntegrityError) and leaves that pack warm, for later.
        """
        async with self._migration_lock:
            await self._finish_move()
            if self._closing:
                raise StoreClosedError("chunk store is closed")
            moment = self.clock() if now is None else now
            try:
                candidates = await asyncio.to_thread(self.warm.packs.sealed_packs)
            except OSError as error:
                raise BackendError(f"cannot list the sealed packs: {error.strerror or error}") from error
            moved = []
            for pack_id, (sealed_at, last_read_at) in candidates.items():
                if self._closing:
                    break
                if not self.policy.selects(sealed_at, last_read_at, moment):
                    continue
                self._moving = asyncio.get_running_loop().create_task(self._move(pack_id))
                if await asyncio.shield(self._moving):
                    moved.append(pack_id)
                self._moving = None
            return moved

    async def _finish_move(self) -> None:
        """Wait for the pack move a cancelled (or failed) migration left behind; its outcome is moot
        here: a move that failed left its pack warm, to be moved by a later migration."""
        task, self._moving = self._moving, None
        if task is not None:
            await asyncio.wait([task])  # never raises the move's error; our own cancellation propagates
            if not task.cancelled():
                task.exception()  # retrieved: asyncio would otherwise log it as never retrieved

    async def _move(self, pack_id: int) -> bool:
        """Upload, read back and compare, record the move, delete the local copy; False (nothing done)
        when the pack is in the cold tier already."""
        packs = self.warm.packs
        if packs.is_remote(pack_id):
            return False
        try:
            data = await asyncio.to_thread(packs.pack_path(pack_id).read_bytes)
        except OSError as error:
            raise BackendError(f"cannot read pack {pack_id} to move it to the cold tier: "
                               f"{error.strerror or error}") from error
        key = cold_key(pack_id)
        await self.cold.put(key, data)
        stored = await self.cold.get(key)
        if stored != data:
            raise IntegrityError(
                f"pack {pack_id} read back from the cold tier differs from the local copy; kept warm"
            )
        try:
            await asyncio.to_thread(packs.mark_remote, pack_id)
        except OSError as error:
            raise BackendError(f"cannot record pack {pack_id} as moved to the cold tier: "
                               f"{error.strerror or error}; kept warm") from error
        return True

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
        self._closing = True  # a running migration stops after the pack it is moving
        try:
            async with self._migration_lock:  # never close the stores beneath a pack move
                await self._finish_move()
            await self.warm.close()
        finally:
            await self.cold.close()


__all__ = ["TierPolicy", "TieredChunkStore", "cold_key"]
