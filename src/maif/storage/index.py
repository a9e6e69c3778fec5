"""The metadata index on SQLite: one row per block, queryable by agent, type, time and parent.

SQLite runs in WAL journal mode with ``synchronous=NORMAL``: a commit is atomic but may be lost on power
failure, which is acceptable because MAIF's own write-ahead log is the source of truth and replay from
``applied_lsn`` restores the index. The applied LSN lives in the same database and is written in the
same transaction as the records it covers, so the index never claims more than it holds.

Schema (version 1):
    blocks(block_id PK, block_type, agent_id, timestamp, version, parents, metadata, chunks,
           payload_length, digest, lsn)       + indexes (agent_id, timestamp, block_id),
                                                (block_type, timestamp, block_id), (timestamp, block_id)
    parents(parent, child) PK (parent, child) the provenance edges, for "children of X"
    state(key PK, value)                      applied_lsn, schema_version
    tombstones(block_id PK, lsn)              deletions, so no older record can come back in a rebuild
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from maif import limits
from maif.errors import BackendError, BlockNotFoundError, FormatError, LimitExceededError, StoreClosedError
from maif.storage.backends.base import Capabilities, MetadataIndex
from maif.storage.records import BlockRecord

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    block_id TEXT PRIMARY KEY, block_type TEXT NOT NULL, agent_id TEXT NOT NULL, timestamp REAL NOT NULL,
    version TEXT NOT NULL, parents BLOB NOT NULL, metadata BLOB NOT NULL, chunks BLOB NOT NULL,
    payload_length INTEGER NOT NULL, digest BLOB NOT NULL, lsn INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_agent ON blocks (agent_id, timestamp, block_id);
CREATE INDEX IF NOT EXISTS blocks_by_type ON blocks (block_type, timestamp, block_id);
CREATE INDEX IF NOT EXISTS blocks_by_time ON blocks (timestamp, block_id);
CREATE TABLE IF NOT EXISTS parents (
    parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parents_by_child ON parents (child);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (block_id TEXT PRIMARY KEY, lsn INTEGER NOT NULL) WITHOUT ROWID;
"""

_COLUMNS = (
    "block_id, block_type, agent_id, timestamp, version, parents, metadata, chunks, "
    "payload_length, digest, lsn"
)
# Statements are assembled only from the constant column list and fixed clauses; every value is bound
# as a parameter, never formatted into the SQL.
_SELECT = "SELECT " + _COLUMNS + " FROM blocks"  # noqa: S608 - constant
_COLUMN_COUNT = 11
# Rows bound into one multi-row statement at most (256 x 11 = 2816 values; SQLite's default limit is 32766).
_STATEMENT_ROWS_MAX = 256
_UPSERT_NEWER = (
    "INSERT INTO blocks (" + _COLUMNS + ") VALUES (" + ", ".join("?" * _COLUMN_COUNT) + ") "  # noqa: S608 - constant
    "ON CONFLICT(block_id) DO UPDATE SET "
    + ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS.split(", ")[1:])
    + " WHERE excluded.lsn > blocks.lsn"
)


def check_query_limit(limit: int) -> None:
    """Refuse a page size that is negative or above ``limits.engine_list_limit_max``."""
    if not isinstance(limit, int) or limit < 0:
        raise FormatError(f"query limit must be a non-negative integer, got {limit!r}")
    if limit > limits.engine_list_limit_max:
        raise LimitExceededError("query limit", limit, limits.engine_list_limit_max)


def _row_of(record: BlockRecord) -> tuple[Any, ...]:
    return (
        record.block_id,
        record.block_type,
        record.agent_id,
        record.timestamp,
        record.version,
        msgspec.msgpack.encode(record.parents),
        record.metadata,
        msgspec.msgpack.encode(record.chunks),
        record.payload_length,
        record.digest,
        record.lsn,
    )


def _record_of(row: tuple[Any, ...]) -> BlockRecord:
    try:
        parents = msgspec.msgpack.decode(row[5], type=tuple[str, ...])
        chunks = msgspec.msgpack.decode(row[7], type=tuple[bytes, ...])
    except msgspec.DecodeError as error:
        raise BackendError(f"metadata index row for block {row[0]!r} is damaged") from error
    return BlockRecord(
        block_id=row[0],
        block_type=row[1],
        agent_id=row[2],
        timestamp=row[3],
        version=row[4],
        parents=parents,
        metadata=bytes(row[6]),
        chunks=chunks,
        payload_length=row[8],
        digest=bytes(row[9]),
        lsn=row[10],
    )


class SqliteMetadataIndex(MetadataIndex):
    """:class:`MetadataIndex` in one SQLite file; calls run in a worker thread under one lock."""

    capabilities = Capabilities(durable=True, shared_between_processes=False)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._connection: sqlite3.Connection | None = None
        self.damage: str | None = None  # set when a damaged file was quarantined at open (rebuilt then)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._connection = _open_database(self.path)
            except sqlite3.DatabaseError as error:
                if getattr(error, "sqlite_errorname", "") not in _DAMAGE_ERRORS:
                    raise
                self.damage = f"{error} ({getattr(error, 'sqlite_errorname', '')})"
                self._quarantine()
                self._connection = _open_database(self.path)
        except sqlite3.Error as error:
            raise BackendError(f"cannot open metadata index {self.path}: {error}") from error
        except OSError as error:
            raise BackendError(f"cannot open metadata index {self.path}: {error.strerror}") from error

    async def reset(self, reason: str) -> None:
        """Move the database aside (``quarantine/``) and start an empty one, which the engine then rebuilds
        from the stored block records: for damage SQLite finds only while reading pages."""
        await asyncio.to_thread(self._reset, reason)

    def _reset(self, reason: str) -> None:
        with self._lock:
            for connection in (self._reader, self._connection):
                if connection is not None:
                    connection.close()
            self._reader = self._connection = None
            try:
                self._quarantine()
                self._connection = _open_database(self.path)
            except (sqlite3.Error, OSError) as error:
                raise BackendError(f"cannot recreate metadata index {self.path}: {error}") from error
            self.damage = reason

    def _quarantine(self) -> None:
        """Move the damaged database (and its -wal/-shm files) aside as evidence; the engine rebuilds
        the index from the stored block records."""
        folder = self.path.parent / "quarantine"
        folder.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        for suffix in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                os.replace(source, folder / f"{source.name}.{stamp}")

    async def integrity_problems(self) -> list[str]:
        """SQLite's own ``PRAGMA quick_check`` (structure of every page): empty when healthy."""
        try:
            rows = await self._run(lambda connection: connection.execute("PRAGMA quick_check").fetchall())
        except BackendError as error:  # a database too damaged to check
            return [error.message]
        found = [str(row[0]) for row in rows if row[0] != "ok"]
        return [f"metadata index {self.path}: {line}" for line in found[:20]]

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.to_thread(self._locked, function, *args)

    def _locked(self, function: Any, *args: Any) -> Any:
        with self._lock:
            if self._connection is None:
                raise StoreClosedError("metadata index is closed")
            try:
                return function(self._connection, *args)
            except (sqlite3.Error, OSError) as error:
                raise _disk_full(self.path, error) or BackendError(
                    f"metadata index {self.path} failed: {error}") from error

    async def put(self, records: Sequence[BlockRecord], *, applied_lsn: int | None = None,
                  newer_only: bool = False) -> None:
        await self._run(_put, list(records), applied_lsn, newer_only)

    async def get(self, block_id: str) -> BlockRecord | None:
        row = await self._run(_fetch_one, _SELECT + " WHERE block_id = ?", (block_id,))
        return None if row is None else _record_of(row)

    def get_nowait(self, block_id: str) -> BlockRecord | None:
        """:meth:`get` on the calling thread, through a read-only connection of its own (WAL mode: it
        sees every committed write and never waits for the writer). For ONE thread only: the engine's
        event loop, where a primary-key lookup costs microseconds and a thread hop costs more."""
        reader = self._reader
        if reader is None:
            if self._connection is None:
                raise StoreClosedError("metadata index is closed")
            try:
                reader = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
                )
            except sqlite3.Error as error:
                raise BackendError(f"cannot open metadata index {self.path} for reading: {error}") from error
            self._reader = reader
        try:
            row = _fetch_one(reader, _SELECT + " WHERE block_id = ?", (block_id,))
        except sqlite3.Error as error:
            raise BackendError(f"metadata index {self.path} failed: {error}") from error
        return None if row is None else _record_of(row)

    async def query(
        self,
        *,
        agent_id: str | None = None,
        block_type: str | None = None,
        since: float | None = None,
        until: float | None = None,
        parent: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> list[BlockRecord]:
        check_query_limit(limit)
        sql, parameters = _query_sql(agent_id, block_type, since, until, parent, limit, after)
        rows = await self._run(_query_rows, sql, parameters, after)
        return [_record_of(row) for row in rows]

    async def applied_lsn(self) -> int:
        row = await self._run(_fetch_one, "SELECT value FROM state WHERE key = 'applied_lsn'", ())
        return 0 if row is None else int(row[0])

    async def set_applied_lsn(self, lsn: int) -> None:
        await self._run(_put, [], lsn)

    async def flush(self) -> None:
        # Commits are already atomic; a passive checkpoint moves the WAL into the main file.
        # Stepped to completion here: a cursor left open would keep its statement active, and the next
        # transaction's COMMIT would fail with "SQL statements in progress".
        await self._run(lambda connection: connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    async def count(self, block_type: str | None = None) -> int:
        if block_type is None:
            row = await self._run(_fetch_one, "SELECT COUNT(*) FROM blocks", ())
        else:
            row = await self._run(_fetch_one, "SELECT COUNT(*) FROM blocks WHERE block_type = ?",
                                  (block_type,))
        return int(row[0])

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        with self._lock:
            if self._connection is not None:
                try:
                    self._connection.close()
                finally:
                    self._connection = None


_DAMAGE_ERRORS = frozenset({"SQLITE_NOTADB", "SQLITE_CORRUPT"})


def _open_database(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        connection.execute(
            "INSERT OR IGNORE INTO state (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
        )
        connection.execute("SELECT COUNT(*) FROM state").fetchone()
    except BaseException:
        connection.close()
        raise
    return connection


def _put(connection: sqlite3.Connection, records: list[BlockRecord], applied_lsn: int | None,
         newer_only: bool = False) -> None:
    if applied_lsn is not None and (not isinstance(applied_lsn, int) or applied_lsn < 0):
        raise FormatError(f"applied LSN must be a non-negative integer, got {applied_lsn!r}")
    connection.execute("BEGIN IMMEDIATE")
    try:
        if newer_only:
            _put_newer(connection, records)
        else:
            _put_runs(connection, records)
        if applied_lsn is not None:
            connection.execute(
                "INSERT INTO state (key, value) VALUES ('applied_lsn', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                (applied_lsn,),
            )
        connection.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (it does on a full disk): then ROLLBACK fails with "no
        # transaction is active", and that follow-on error must not replace the cause raised here.
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise


def _disk_full(path: Path, error: BaseException) -> BackendError | None:
    """The BackendError to raise when ``error`` means the disk holding the database is full (SQLite's
    SQLITE_FULL, or ENOSPC), naming where; None for any other failure."""
    code = getattr(error, "sqlite_errorcode", None)
    if not ((isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL)
            or "database or disk is full" in str(error)
            or (isinstance(error, OSError) and error.errno == errno.ENOSPC)):
        return None
    return BackendError(f"metadata index {path}: the disk is full ({error})",
                        hint=f"free space on the file system holding {path.parent}, then reopen the store "
                        "(its log still holds every acknowledged block)")


def _put_newer(connection: sqlite3.Connection, records: list[BlockRecord]) -> None:
    """Index ``records`` one by one, each only where no newer record or tombstone of its id is."""
    for record in records:
        if record.deleted:
            _delete(connection, record, True)
            continue
        buried = connection.execute("SELECT lsn FROM tombstones WHERE block_id = ?",
                                    (record.block_id,)).fetchone()
        if buried is not None and buried[0] >= record.lsn:
            continue  # deleted after this record was written
        if connection.execute(_UPSERT_NEWER, _row_of(record)).rowcount == 0:
            continue  # an equal or newer record of this block is already indexed
        connection.execute("DELETE FROM parents WHERE child = ?", (record.block_id,))
        connection.executemany("INSERT OR IGNORE INTO parents (parent, child) VALUES (?, ?)",
                               [(parent, record.block_id) for parent in record.parents])


def _put_runs(connection: sqlite3.Connection, records: list[BlockRecord]) -> None:
    """Index ``records`` in order, each run of writes between deletions as one put per record would:
    each id of the run ends with the row and parent links of its last write in the run."""
    start = 0
    while start < len(records):
        if records[start].deleted:
            _delete(connection, records[start], False)
            start += 1
            continue
        end = start
        while end < len(records) and not records[end].deleted:
            end += 1
        last_of = {record.block_id: record for record in records[start:end]}
        block_ids = list(last_of)
        # The old rows and links go first, then one row per id: so the insert can never conflict and
        # is INSERT OR FAIL. A multi-row statement that may roll itself back (OR REPLACE, OR ABORT,
        # an upsert) makes SQLite copy every page it touches that the transaction already changed
        # into a statement journal (a temporary file): with random block ids about 4.5 us per row.
        _execute_rows(connection, _delete_rows, block_ids, 1)
        _execute_rows(connection, _unlink_children, block_ids, 1)
        _execute_rows(connection, _insert_rows,
                      list(itertools.chain.from_iterable(map(_row_of, last_of.values()))), _COLUMN_COUNT)
        links = [value for block_id, record in last_of.items() for parent in record.parents
                 for value in (parent, block_id)]
        if links:
            _execute_rows(connection, _link_rows, links, 2)
        start = end


def _execute_rows(connection: sqlite3.Connection, statement_of: Any, values: list[Any], width: int) -> None:
    """Run ``statement_of(rows)`` over ``values`` (``width`` per row, in order), as many rows per
    statement as SQLite binds: one step covers them all, where ``executemany`` binds, steps and resets
    once per row (about 1 us more per indexed block) and hands the GIL back and forth at each step."""
    assert len(values) % width == 0
    total = len(values) // width
    done = 0
    for rows in _statement_row_counts(width):
        statement = statement_of(rows)
        while total - done >= rows:
            connection.execute(statement, values[done * width:(done + rows) * width])
            done += rows


@functools.cache
def _statement_row_counts(width: int) -> tuple[int, ...]:
    """Rows per statement, widest first: up to 256, within the library's bound-variable limit."""
    with contextlib.closing(sqlite3.connect(":memory:")) as probe:
        variables_max = probe.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    widest = max(1, min(_STATEMENT_ROWS_MAX, variables_max // width))
    return tuple(sorted({widest, min(widest, 16), 1}, reverse=True))


def _values(rows: int, width: int) -> str:
    return ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)


@functools.cache
def _insert_rows(rows: int) -> str:
    return "INSERT OR FAIL INTO blocks (" + _COLUMNS + ") VALUES " + _values(rows, _COLUMN_COUNT)  # noqa: S608


@functools.cache
def _delete_rows(rows: int) -> str:
    return "DELETE FROM blocks WHERE block_id IN (" + ", ".join("?" * rows) + ")"  # noqa: S608


@functools.cache
def _unlink_children(rows: int) -> str:
    return "DELETE FROM parents WHERE child IN (" + ", ".join("?" * rows) + ")"  # noqa: S608


@functools.cache
def _link_rows(rows: int) -> str:
    return "INSERT OR IGNORE INTO parents (parent, child) VALUES " + _values(rows, 2)  # noqa: S608


def _delete(connection: sqlite3.Connection, tombstone: BlockRecord, newer_only: bool) -> None:
    """Apply a deletion: drop the block's row (unless ``newer_only`` and the row is newer) and remember
    the tombstone's LSN."""
    row = connection.execute("SELECT lsn FROM blocks WHERE block_id = ?", (tombstone.block_id,)).fetchone()
    if row is not None and (not newer_only or row[0] < tombstone.lsn):
        connection.execute("DELETE FROM blocks WHERE block_id = ?", (tombstone.block_id,))
        connection.execute("DELETE FROM parents WHERE child = ?", (tombstone.block_id,))
    connection.execute(
        "INSERT INTO tombstones (block_id, lsn) VALUES (?, ?) "
        "ON CONFLICT(block_id) DO UPDATE SET lsn = MAX(lsn, excluded.lsn)",
        (tombstone.block_id, tombstone.lsn),
    )


def _fetch_one(connection: sqlite3.Connection, sql: str, parameters: tuple[Any, ...]) -> Any:
    return connection.execute(sql, parameters).fetchone()


def _query_sql(
    agent_id: str | None,
    block_type: str | None,
    since: float | None,
    until: float | None,
    parent: str | None,
    limit: int,
    after: str | None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    parameters: list[Any] = []
    for clause, value in (
        ("agent_id = ?", agent_id),
        ("block_type = ?", block_type),
        ("timestamp >= ?", since),
        ("timestamp < ?", until),
    ):
        if value is not None:
            clauses.append(clause)
            parameters.append(value)
    if parent is not None:
        clauses.append("block_id IN (SELECT child FROM parents WHERE parent = ?)")
        parameters.append(parent)
    if after is not None:
        clauses.append("(timestamp, block_id) > (SELECT timestamp, block_id FROM blocks WHERE block_id = ?)")
        parameters.append(after)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    parameters.append(limit)
    return _SELECT + " " + where + " ORDER BY timestamp, block_id LIMIT ?", parameters


def _query_rows(
    connection: sqlite3.Connection, sql: str, parameters: list[Any], after: str | None
) -> list[tuple[Any, ...]]:
    if (
        after is not None
        and connection.execute("SELECT 1 FROM blocks WHERE block_id = ?", (after,)).fetchone() is None
    ):
        raise BlockNotFoundError(f"paging cursor {after!r} names no block")
    return connection.execute(sql, parameters).fetchall()


__all__ = ["SqliteMetadataIndex", "check_query_limit"]
