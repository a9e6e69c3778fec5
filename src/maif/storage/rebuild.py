"""Derived state, rebuilt from the authoritative data; and the audit that finds where it disagrees.

What is authoritative, what is derived (docs/adr/0043-derived-state.md has the reasons):

    authoritative   the write-ahead log (until a checkpoint recycles it), and the chunk store: payload
                    chunks and, beside them in the same packs and tiers, one *block record* frame per
                    applied write (``ChunkStore.put_records``; the last LSN per block id wins)
    derived         the metadata index (SQLite), the vector index (usearch), the hot cache, the pack
                    index and the cold-tier lists (rebuilt by the pack store and the tier layer)

The engine calls these at open when derived state is missing or inconsistent (the index is behind
what the log still holds, the vector index was damaged or disagrees with the index), and
``MAIFStorage.repair`` (``maif store check --repair``) calls them on demand. Every step is idempotent,
streams in bounded batches, and names what it could not restore.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from maif import limits
from maif.errors import BackendError, BlockNotFoundError, IntegrityError, MAIFError
from maif.format.block import MAIFBlockType
from maif.storage.applier import vector_attributes
from maif.storage.packs import record_digest
from maif.storage.records import BlockRecord, decode_record, encode_record

if TYPE_CHECKING:
    from maif.storage.engine import Backends, MAIFStorage

_PAGE_RECORDS = 1000
_EMBEDDING = MAIFBlockType.EMBEDDING.value
_PROBLEMS_MAX = 1000  # problems listed one by one; beyond, a count
_SUSPECTS_MAX = 100_000  # records the audit holds while it learns which were deleted later


class _Problems:
    """A bounded list of problem lines, with a count of those left out."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.omitted = 0

    def add(self, line: str) -> None:
        if len(self.lines) < _PROBLEMS_MAX:
            self.lines.append(line)
        else:
            self.omitted += 1

    def extend(self, lines: list[str]) -> None:
        for line in lines:
            self.add(line)

    def result(self) -> list[str]:
        if self.omitted:
            return [*self.lines, f"... and {self.omitted} more problem(s)"]
        return list(self.lines)


async def index_pages(backends: Backends, block_type: str | None = None) -> AsyncIterator[list[BlockRecord]]:
    """Every index record (of ``block_type`` when given), one keyset page at a time."""
    after: str | None = None
    while True:
        page = await backends.index.query(block_type=block_type, limit=_PAGE_RECORDS, after=after)
        if not page:
            return
        yield page
        if len(page) < _PAGE_RECORDS:
            return
        after = page[-1].block_id


async def rebuild_index(backends: Backends) -> tuple[int, int, list[str]]:
    """Index every block record the chunk store holds; the record with the highest LSN of each block
    wins, whatever order the packs are read in. Returns (records read, highest LSN, problems met)."""
    problems = _Problems()
    read = newest = 0
    async for raws, found in backends.chunks.scan_records():
        problems.extend(found)
        batch: list[BlockRecord] = []
        for raw in raws:
            try:
                batch.append(decode_record(raw))
                newest = max(newest, batch[-1].lsn)
            except IntegrityError as error:
                problems.add(error.message)
            if len(batch) >= limits.engine_apply_batch_records_max:
                await backends.index.put(batch, newer_only=True)
                read += len(batch)
                batch = []
        if batch:
            await backends.index.put(batch, newer_only=True)
            read += len(batch)
    await backends.index.flush()
    return read, newest, problems.result()


async def stored_record_digests(backends: Backends) -> set[bytes]:
    """The addresses of every record the chunk store holds, from a scan (record locations are not kept
    in memory by the pack store). O(records) memory while a check or a repair runs."""
    found: set[bytes] = set()
    async for raws, _ in backends.chunks.scan_records():
        found.update(record_digest(raw) for raw in raws)
    return found


async def backfill_records(backends: Backends) -> int:
    """Write the authoritative record of every indexed block whose record the chunk store lacks (a store
    written before records were kept, or records lost with a pack). Returns how many were written."""
    present = await stored_record_digests(backends)
    written = 0
    async for page in index_pages(backends):
        encoded = [encode_record(record) for record in page]
        missing = [raw for raw in encoded if record_digest(raw) not in present]
        if missing:
            await backends.chunks.put_records(missing)
            written += len(missing)
    if written:
        await backends.chunks.flush()
    return written


async def rebuild_vectors(storage: MAIFStorage) -> tuple[int, list[str]]:
    """Empty the vector index and add the embedding of every EMBEDDING block in the metadata index,
    each read back and digest-verified. Returns (vectors added, problems met)."""
    from maif.storage.vectors import embedding_of

    backends = storage._backends
    problems = _Problems()
    await backends.vectors.clear()
    added = 0
    async for page in index_pages(backends, _EMBEDDING):
        items = []
        for record in page:
            try:
                block, _ = await storage._assemble(record)
                vector = embedding_of(block)
            except (IntegrityError, BlockNotFoundError) as error:
                problems.add(f"embedding block {record.block_id!r} unreadable: {error.message}")
                continue
            except MAIFError as error:
                problems.add(f"embedding block {record.block_id!r} has no usable vector: {error.message}")
                continue
            if vector is not None:
                items.append((record.block_id, vector, vector_attributes(block)))
        if items:
            await backends.vectors.add(items)
            added += len(items)
    await backends.vectors.flush()
    return added, problems.result()


async def audit(storage: MAIFStorage, *, lookup: Callable[[str], BlockRecord | None] | None = None
                ) -> list[str]:
    """Derived state against the authoritative data, for ``check``: every indexed block has its record
    in the chunk store; every stored record's block is indexed at that LSN or a newer one; the vector
    index holds exactly the EMBEDDING blocks. (SQLite's own page check runs in check_store first.)"""
    backends = storage._backends
    problems = _Problems()
    present: set[bytes] = set()
    deleted: dict[str, int] = {}  # block id -> LSN of its newest tombstone
    suspects: list[tuple[BlockRecord, BlockRecord | None]] = []  # judged once every tombstone is known
    async for raws, found in backends.chunks.scan_records():
        problems.extend(found)
        present.update(record_digest(raw) for raw in raws)
        for raw in raws:
            try:
                record = decode_record(raw)
            except IntegrityError as error:
                problems.add(error.message)
                continue
            indexed = lookup(record.block_id) if lookup is not None else await backends.index.get(
                record.block_id)
            if record.deleted:
                deleted[record.block_id] = max(record.lsn, deleted.get(record.block_id, 0))
                if indexed is not None and indexed.lsn < record.lsn:
                    problems.add(f"block {record.block_id!r} was deleted at LSN {record.lsn} but the "
                                 f"metadata index still holds it (LSN {indexed.lsn})")
            elif (indexed is None or indexed.lsn < record.lsn) and len(suspects) < _SUSPECTS_MAX:
                suspects.append((record, indexed))
    for record, indexed in suspects:
        if deleted.get(record.block_id, 0) >= record.lsn:
            continue  # deleted since
        if indexed is None:
            problems.add(f"block {record.block_id!r} (LSN {record.lsn}) is stored but missing from the "
                         "metadata index")
        else:
            problems.add(f"block {record.block_id!r}: the metadata index holds LSN {indexed.lsn}, the "
                         f"store holds a newer record (LSN {record.lsn})")
    async for page in index_pages(backends):
        for record in page:
            if record_digest(encode_record(record)) not in present:
                problems.add(f"block {record.block_id!r}: its authoritative record is missing from the "
                             "chunk store (only the derived index holds it)")
    embeddings = await backends.index.count(_EMBEDDING)
    vectors = await backends.vectors.count()
    if embeddings != vectors:
        problems.add(f"the vector index holds {vectors} vector(s) for {embeddings} EMBEDDING block(s)")
    return problems.result()




async def _probe_index(backends: Backends) -> int:
    """The index's record count, read through the pages a count and the type index touch. Pages SQLite
    cannot read make a backend with ``reset`` start afresh (the damaged file goes to quarantine/; the
    caller then rebuilds it); without ``reset`` the error propagates."""
    reset = getattr(backends.index, "reset", None)
    try:
        indexed = await backends.index.count()
        await backends.index.count(_EMBEDDING)
        return indexed
    except BackendError as error:
        if reset is None:
            raise
        await reset(error.message)
        return 0


async def heal_before_replay(storage: MAIFStorage, *, force: bool, oldest_logged: int | None) -> None:
    """At open, before the log is opened and replayed: reconcile the tiers' lists with the cold tier,
    and rebuild the metadata index from the stored records when it lacks what the log no longer holds
    (it was lost, damaged, or restored from an older copy), or when ``force`` (an explicit repair).

    ``oldest_logged`` is the first LSN of the oldest log segment on disk (None: no segment). After a
    rebuild the checkpoint moves to the newest LSN the records or the recycled log prove applied, so
    replay starts after it and no LSN the packs already hold is ever handed out again."""
    backends = storage._backends
    reconcile = getattr(backends.chunks, "reconcile", None)
    if reconcile is not None:
        storage.repairs.extend(await reconcile())
    checkpoint = storage._checkpoint_lsn
    durable = backends.chunks.capabilities.durable
    indexed = await _probe_index(backends)
    damage = getattr(backends.index, "damage", None)
    stored = int((await backends.chunks.stats()).get("records", 0))
    reason = None
    if damage:
        reason = f"it was damaged and is kept in quarantine/: {damage}"
    elif oldest_logged is not None and checkpoint + 1 < oldest_logged:
        reason = (f"it had applied LSN {checkpoint} but the log starts at LSN {oldest_logged}: "
                  "the records between are only in the packs")
    elif durable and indexed == 0 and stored:
        reason = f"it was empty while the packs hold {stored} block record(s)"
    elif force:
        reason = "repair requested"
    if reason is not None:
        read, newest, problems = await rebuild_index(backends)
        proven = max(checkpoint, newest, oldest_logged - 1 if oldest_logged is not None else 0)
        await backends.index.set_applied_lsn(proven)  # also into an index started afresh
        await backends.index.flush()
        storage._checkpoint_lsn = proven
        storage.repairs.append(f"metadata index rebuilt from {read} stored block record(s) ({reason})")
        # The vector index may lack changes the skipped part of the log held (its count can still
        # agree): rebuild it from the rebuilt index after the replay.
        storage._vectors_stale = True
        storage.repairs.extend(problems)
    elif durable and indexed and not stored:
        written = await backfill_records(backends)
        storage.repairs.append(f"{written} block record(s) written beside their chunks (a store from "
                               "before records were kept)")


async def heal_after_replay(storage: MAIFStorage, *, force: bool) -> None:
    """At open, after the replay: rebuild the vector index when it was damaged, disagrees with the
    metadata index about how many embeddings there are, or ``force``."""
    backends = storage._backends
    damage = getattr(backends.vectors, "damage", None)
    embeddings = await backends.index.count(_EMBEDDING)
    vectors = await backends.vectors.count()
    reason = None
    if damage:
        reason = f"it was damaged: {damage}"
    elif embeddings != vectors:
        reason = f"it held {vectors} vector(s) for {embeddings} EMBEDDING block(s)"
    elif getattr(storage, "_vectors_stale", False):
        reason = "the metadata index was rebuilt"
    elif force:
        reason = "repair requested"
    if reason is not None:
        try:
            added, problems = await rebuild_vectors(storage)
        except BackendError:
            # Reading every EMBEDDING record met pages the open's probe did not touch: when SQLite
            # finds the index damaged, it goes to quarantine/ and is rebuilt from the records first.
            if not await _reset_damaged_index(storage):
                raise
            added, problems = await rebuild_vectors(storage)
        storage.repairs.append(f"vector index rebuilt with {added} vector(s) ({reason})")
        storage.repairs.extend(problems)


async def _reset_damaged_index(storage: MAIFStorage) -> bool:
    """When the index's own integrity check finds damage: start it afresh (quarantine), refill it from
    the stored records, and keep the checkpoint where it was (the next open replays from there, which
    is idempotent). False when the index finds no damage (the failure was something else)."""
    backends = storage._backends
    integrity = getattr(backends.index, "integrity_problems", None)
    reset = getattr(backends.index, "reset", None)
    damage = await integrity() if integrity is not None and reset is not None else []
    if not damage:
        return False
    assert reset is not None
    await reset("; ".join(damage[:3]))
    await backends.chunks.flush()  # the records replayed into the packs are durable before they count
    read, _, problems = await rebuild_index(backends)
    await backends.index.set_applied_lsn(storage._checkpoint_lsn)
    await backends.index.flush()
    storage.repairs.append(f"metadata index failed SQLite's quick_check ({damage[0]}): moved to "
                           f"quarantine/ and rebuilt from {read} stored block record(s)")
    storage.repairs.extend(problems)
    return True


__all__ = [
    "audit",
    "backfill_records",
    "heal_after_replay",
    "heal_before_replay",
    "index_pages",
    "rebuild_index",
    "rebuild_vectors",
    "stored_record_digests",
]
