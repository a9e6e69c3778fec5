"""PostgreSQL backends: the metadata index (:class:`PostgresMetadataIndex`, asyncpg), the vector index
(:class:`PgVectorIndex`, pgvector HNSW with cosine distance) and the shared chunk locations of the object
packs (:class:`PostgresLocationIndex`, for :class:`~maif.storage.backends.objectpacks.ObjectPackChunkStore`),
selected by the ``postgres_url`` key.

Several MAIF nodes share one database, each with its own write-ahead log: the index keeps how far EACH
node's log is applied (``node_state``, keyed by node id), so a node replays its own log from its own
position. All three classes connect on first use (or at :meth:`open`, to fail fast at start-up) and talk
to the server through a bounded asyncpg pool. Every write is durable at commit: ``flush`` has nothing left
to do. A put is folded (:func:`plan_put`) into bulk statements over ``unnest`` arrays: a
batch of records with its applied LSN is ONE statement (rows, provenance edges, LSN), tombstones one more,
recorded conflicts (rare) one more, never a round trip per record. Pooled sessions hold no state, so a
released connection is not reset.

Schema, in a PostgreSQL schema of its own (``maif`` unless configured), version 2::

    maif_schema(version PK, description, applied_at, applied_by)   one row per applied migration
    store(singleton PK, store_id, created_at)                      which MAIF store this is
    blocks(block_id PK, block_type, agent_id, timestamp, version, parents, metadata, chunks,
           payload_length, digest, lsn, node_id)   + btree (agent_id, timestamp, block_id),
                                                (block_type, timestamp, block_id), (timestamp, block_id);
                                              node_id: the writer node ('' before version 2, or written
                                              by a rebuild: no known writer)
    parents(parent, child) PK (parent, child) + btree (child): the provenance edges
    tombstones(block_id PK, lsn)              deletions, so no older record comes back in a rebuild
    node_state(node_id, key) PK, value        applied_lsn of each node
    vector_state(singleton PK, dimensions)    the vector dimension; NULL while no vector is stored
    vectors(block_id PK, embedding vector(N), attributes jsonb)    created by the first ``add`` (N is
                                              its dimension), dropped by ``clear``
                                              + HNSW (embedding vector_cosine_ops) + GIN (attributes)
    chunk_locations(digest PK, object_key, frame_offset, flags, raw_length, stored_length, node_id,
           created_at)                        where each chunk / block-record frame is (first one wins)
    conflicts(id PK, block_id, node_id, lsn, digest, record, existing_node_id, existing_digest,
           created_at)                        + btree (block_id, id): writes kept out (below)

Two nodes writing one block id (ADR 0070). A plain put from node N replaces an existing row only when N
wrote it (or its writer is unknown, ''). Another node's row with the same digest is left as it is (same
content: idempotent, no conflict, the row keeps its writer); with another digest, N's record is not
applied: it goes to ``conflicts`` (with the record's MessagePack bytes and the kept row's writer and
digest), ``conflicts_total`` counts it, a warning names the block and both nodes. ON CONFLICT decides,
inside the upsert, on the newest committed row, which it locks (a row of another node is rewritten
unchanged, so RETURNING reports the version kept): never a snapshot read, which under READ COMMITTED can
miss a row another node committed a moment earlier. Two nodes racing on a new id: one inserts, the other
waits for its commit and records the conflict. The applied LSN then moves in the statement that records
the conflicts, so a crash in between replays and finds them again. A tombstone from any node deletes;
``newer_only`` (rebuilds) compares LSNs only.

Text columns use the "C" collation, so ``ORDER BY block_id`` is code-point order: the order of SQLite's
BINARY collation and of Python's ``str``, whatever the database's locale. PostgreSQL text cannot hold
NUL, which MAIF ids and attributes may: ``\\x00`` is stored as ``\\x01\\x01`` and ``\\x01`` as
``\\x01\\x02`` (an escape that keeps the order), so no input can wedge the log applier.

Migrations (:data:`MIGRATIONS`, applied at open): an ordered list in code, each applied in its own
transaction and recorded in ``maif_schema``, under a PostgreSQL advisory lock (:func:`migration_lock_key`)
so nodes opening at once never race; a node that finds the schema current takes no lock. A schema whose
version is newer than this code knows raises :class:`~maif.errors.UnsupportedVersionError`; a schema that
holds tables without MAIF's ``maif_schema`` table (a foreign layout), or another store's id, raises
:class:`ForeignSchemaError`: never touched.

Errors: an unreachable server raises :class:`~maif.errors.BackendError` naming ``host:port`` and the
config key; refused credentials :class:`PostgresCredentialsError`; any other failure BackendError; use after
``close`` :class:`~maif.errors.StoreClosedError`. No message ever holds the password or the full DSN.

Vector search (docs/adr/0032-hnsw-parameters.md for the usearch side): HNSW with ``m`` = 16 and
``ef_construction`` = 128 by default; ``hnsw.ef_search`` (default 100, and at least the ``limit`` of a
query, up to pgvector's 1000) is set per connection and per query for recall. Filters are native
(``attributes @> filters``, GIN-indexed): with pgvector 0.8 or later ``hnsw.iterative_scan`` keeps the HNSW
scan going until enough rows match; whenever a filtered or large search returns fewer than ``limit`` rows
(older pgvector, a rare filter value beyond ``hnsw.max_scan_tuples``) it is re-run exactly (index scans
off; the GIN index narrows the rows), so a rare value is still found. Vectors above pgvector's HNSW limit
of 2000 dimensions are stored without an HNSW index and searched exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

import blake3
import msgspec
import numpy as np

from maif.errors import (
    BackendError,
    BackendUnavailableError,
    BlockNotFoundError,
    ConfigError,
    CredentialsError,
    ForeignStoreError,
    FormatError,
    LimitExceededError,
    MAIFError,
    StoreClosedError,
    UnsupportedVersionError,
)
from maif.storage.backends.base import Capabilities, MetadataIndex, VectorIndex, check_get_many
from maif.storage.backends.objectpacks import LocationIndex, ObjectLocation
from maif.storage.health import Health
from maif.storage.index import check_query_limit
from maif.storage.packs import FLAG_RECORD
from maif.storage.records import BlockRecord, encode_record
from maif.storage.vectors import check_attributes, check_search_limit, check_vector, unit_vector

try:
    import asyncpg
except ImportError:  # pragma: no cover - the distributed extra is not installed
    asyncpg = None

_log = logging.getLogger(__name__)

ResultT = TypeVar("ResultT")

CONFIG_KEY = "postgres_url"
POOL_CONNECTIONS_MAX = 100
"""Upper bound of ``pool_max``: every node holds up to this many server connections per index."""
NODE_ID_BYTES_MAX = 128
PGVECTOR_DIMENSIONS_MAX = 16_000
"""pgvector's ``vector`` type holds at most this many dimensions."""
PGVECTOR_HNSW_DIMENSIONS_MAX = 2_000
"""pgvector's HNSW index covers ``vector`` columns up to this many dimensions; above, search is exact."""
PGVECTOR_EF_SEARCH_MAX = 1_000
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 100
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
COMPONENT = "postgresql"
"""How health reports and :class:`BackendUnavailableError` name this server."""
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})  # shut down, crashed, starting up
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock: the txn rolled back
_ATTEMPTS_MAX = 3
_CLOSE_GRACE_SECONDS = 10.0
_STATEMENT_ROWS_MAX = 10_000  # rows per bulk statement (unnest arrays); a larger put takes several
_DETAIL_CHARS_MAX = 400  # of a driver message in ours (asyncpg quotes whole argument arrays)
_CONFLICTS_LOGGED_MAX = 20  # warnings per put, one per conflict; then one line for the rest


class ForeignSchemaError(ForeignStoreError):
    """The configured PostgreSQL schema holds something other than this MAIF store: tables without MAIF's
    ``maif_schema`` table (a foreign layout), a damaged MAIF layout, or another MAIF store (its store id
    differs from the ``store_id`` asked for). Refused, never written to."""

    def __init__(self, message: str, *, server: str, schema: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.server = server
        self.schema = schema


class PostgresCredentialsError(CredentialsError):
    """The server refused the user, password or database access named by ``postgres_url``. The message
    names the server, user and database only: never the password."""


# ---- migrations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema change: SQL statements (``{schema}`` stands for the quoted schema name) run in one
    transaction, and the tables it adds (checked to exist at every open)."""

    version: int
    description: str
    statements: tuple[str, ...]
    tables: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "blocks, parents, tombstones, per-node state, store identity, vector state",
        (
            """CREATE TABLE {schema}.maif_schema (
                version integer PRIMARY KEY, description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL)""",
            """CREATE TABLE {schema}.store (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), store_id text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now())""",
            """CREATE TABLE {schema}.blocks (
                block_id text COLLATE "C" PRIMARY KEY, block_type text COLLATE "C" NOT NULL,
                agent_id text COLLATE "C" NOT NULL, timestamp double precision NOT NULL,
                version text COLLATE "C" NOT NULL, parents bytea NOT NULL, metadata bytea NOT NULL,
                chunks bytea NOT NULL, payload_length bigint NOT NULL, digest bytea NOT NULL,
                lsn bigint NOT NULL)""",
            "CREATE INDEX blocks_by_agent ON {schema}.blocks (agent_id, timestamp, block_id)",
            "CREATE INDEX blocks_by_type ON {schema}.blocks (block_type, timestamp, block_id)",
            "CREATE INDEX blocks_by_time ON {schema}.blocks (timestamp, block_id)",
            """CREATE TABLE {schema}.parents (
                parent text COLLATE "C" NOT NULL, child text COLLATE "C" NOT NULL,
                PRIMARY KEY (parent, child))""",
            "CREATE INDEX parents_by_child ON {schema}.parents (child)",
            """CREATE TABLE {schema}.tombstones (
                block_id text COLLATE "C" PRIMARY KEY, lsn bigint NOT NULL)""",
            """CREATE TABLE {schema}.node_state (
                node_id text COLLATE "C" NOT NULL, key text COLLATE "C" NOT NULL, value bigint NOT NULL,
                PRIMARY KEY (node_id, key))""",
            """CREATE TABLE {schema}.vector_state (
                singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton), dimensions integer)""",
            "INSERT INTO {schema}.vector_state (singleton, dimensions) VALUES (true, NULL)",
        ),
        ("maif_schema", "store", "blocks", "parents", "tombstones", "node_state", "vector_state"),
    ),
    Migration(
        2,
        "shared chunk locations and cross-node conflicts",
        (
            """CREATE TABLE {schema}.chunk_locations (
                digest bytea PRIMARY KEY, object_key text COLLATE "C" NOT NULL,
                frame_offset bigint NOT NULL, flags smallint NOT NULL, raw_length integer NOT NULL,
                stored_length integer NOT NULL, node_id text COLLATE "C" NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now())""",
            # the writer node of each row; '' for rows from before (or from a rebuild): any node may
            # replace those (a constant default: no table rewrite)
            """ALTER TABLE {schema}.blocks ADD COLUMN node_id text COLLATE "C" NOT NULL DEFAULT ''""",
            """CREATE TABLE {schema}.conflicts (
                id bigserial PRIMARY KEY, block_id text COLLATE "C" NOT NULL,
                node_id text COLLATE "C" NOT NULL, lsn bigint NOT NULL, digest bytea NOT NULL,
                record bytea NOT NULL, existing_node_id text COLLATE "C" NOT NULL,
                existing_digest bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())""",
            "CREATE INDEX conflicts_by_block ON {schema}.conflicts (block_id, id)",
        ),
        ("chunk_locations", "conflicts"),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [migration.version for migration in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
_DYNAMIC_TABLES = frozenset({"vectors"})  # MAIF's too, but created and dropped by the vector index


def migration_lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) held while migrating ``schema``: the same in every node,
    different per schema, so stores in different schemas never wait for each other."""
    digest = blake3.blake3(f"maif schema migrations {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_EXTENSION_LOCK_KEY = int.from_bytes(blake3.blake3(b"maif create extension vector").digest()[:8], "big",
                                     signed=True)


# ---- the connection target, without secrets --------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    dsn: str
    server: str  # host:port (or hosts), never the password
    database: str
    user: str
    secrets: tuple[str, ...]  # the password as written and percent-decoded: redacted from every message

    @classmethod
    def parse(cls, dsn: object) -> _Target:
        if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                f"{CONFIG_KEY} must be a postgresql:// URL",
                hint="for example postgresql://maif@127.0.0.1:5432/maif (the password may come from "
                     "PGPASSWORD or ~/.pgpass)",
            )
        try:
            parts = urlsplit(dsn)
        except ValueError:
            raise ConfigError(f"{CONFIG_KEY} is not a parsable URL") from None
        userinfo, _, hosts = parts.netloc.rpartition("@")
        user, has_password, raw_password = userinfo.partition(":")
        secrets = {raw_password, unquote(raw_password)} if has_password and raw_password else set()
        query: dict[str, str] = {}
        for field in parts.query.split("&"):
            name, _, value = field.partition("=")
            query[name] = unquote(value)
            if name == "password" and value:
                secrets |= {value, unquote(value)}
        if not hosts:  # libpq's form with the host in the query: postgresql:///db?host=...&port=...
            hosts = f"{query.get('host') or 'localhost'}:{query.get('port') or 5432}"
        elif ":" not in hosts.rsplit("]", 1)[-1] and "," not in hosts:
            hosts += ":5432"
        return cls(dsn=dsn, server=hosts, database=unquote(parts.path.lstrip("/")) or unquote(user) or "?",
                   user=unquote(user), secrets=tuple(sorted(secrets, key=len, reverse=True)))

    def redact(self, text: str) -> str:
        """``text`` with the password and the full DSN taken out (a driver message could echo either)."""
        text = text.replace(self.dsn, f"postgresql://{self.server}/{self.database}")
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return re.sub(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def _check_schema_name(schema: object) -> str:
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ConfigError(f"PostgreSQL schema name {str(schema)[:80]!r} is not valid",
                          hint="1-63 characters: lower-case letters, digits and '_', not first a digit")
    return schema


def _check_node_id(node_id: object) -> str:
    if (not isinstance(node_id, str) or not node_id or "\x00" in node_id
            or len(node_id.encode("utf-8", "surrogatepass")) > NODE_ID_BYTES_MAX):
        raise ConfigError(f"node id must be a non-empty string of at most {NODE_ID_BYTES_MAX} bytes "
                          "without NUL")
    return node_id


def _check_pool(pool_min: object, pool_max: object) -> tuple[int, int]:
    if (not isinstance(pool_min, int) or not isinstance(pool_max, int) or isinstance(pool_min, bool)
            or isinstance(pool_max, bool) or not 0 <= pool_min <= pool_max or not
            1 <= pool_max <= POOL_CONNECTIONS_MAX):
        raise ConfigError(f"PostgreSQL pool sizes need 0 <= pool_min <= pool_max <= {POOL_CONNECTIONS_MAX} "
                          f"and pool_max >= 1, got {pool_min!r} and {pool_max!r}")
    return pool_min, pool_max


def _check_timeout(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ConfigError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
    return float(value)


# ---- NUL-free, order-keeping text ------------------------------------------------------------------


def _escape(text: str) -> str:
    """``text`` without NUL for PostgreSQL: ``\\x01`` -> ``\\x01\\x02``, ``\\x00`` -> ``\\x01\\x01``.
    A prefix-free code that keeps the order, so "C"-collation order is still code-point order."""
    if "\x00" not in text and "\x01" not in text:
        return text
    return text.replace("\x01", "\x01\x02").replace("\x00", "\x01\x01")


_ESCAPED = re.compile("\x01([\x01\x02])")


def _unescape(text: str) -> str:
    if "\x01" not in text:
        return text
    return _ESCAPED.sub(lambda match: "\x00" if match.group(1) == "\x01" else "\x01", text)


# ---- the shared connection machinery ---------------------------------------------------------------



def _connection_lost(error: BaseException, sqlstate: str) -> bool:
    """The server went away (class 08, an operator shutdown or a restart, a dropped socket). A commit
    in flight may or may not have happened; every write of these backends is idempotent, so the same
    call may be retried."""
    if sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES:
        return True
    if isinstance(error, ConnectionError | OSError):
        return True
    import asyncpg

    return isinstance(error, asyncpg.InterfaceError) and "closed" in str(error)

class _Database:
    """One bounded asyncpg pool over one MAIF schema, created on first use after the schema is checked
    and migrated; every query goes through :meth:`run`, which maps failures to MAIF errors."""

    def __init__(self, what: str, dsn: object, *, schema: str, node_id: str, pool_min: int, pool_max: int,
                 connect_timeout_s: float, command_timeout_s: float, lock_timeout_s: float,
                 store_id: str | None, health: Health | None = None) -> None:
        if asyncpg is None:
            raise ConfigError("the PostgreSQL backends need asyncpg",
                              hint="pip install 'maif[distributed]'")
        self.what = what
        self.health = health  # told of every call that reached the server, and of each that could not
        self.target = _Target.parse(dsn)
        self.schema = _check_schema_name(schema)
        self.quoted_schema = f'"{self.schema}"'
        self.node_id = _check_node_id(node_id)
        self.pool_min, self.pool_max = _check_pool(pool_min, pool_max)
        self.connect_timeout_s = _check_timeout("connect_timeout_s", connect_timeout_s)
        self.command_timeout_s = _check_timeout("command_timeout_s", command_timeout_s)
        self.lock_timeout_s = _check_timeout("lock_timeout_s", lock_timeout_s)
        if store_id is not None and (not isinstance(store_id, str) or not store_id or len(store_id) > 200
                                     or "\x00" in store_id):
            raise ConfigError("store_id must be a non-empty string of at most 200 characters without NUL")
        self.store_id = store_id
        self.migrations_applied: list[int] = []  # by this object's open, for tests and logs
        self._pool: Any = None
        self._open_lock = asyncio.Lock()
        self.closed = False

    @property
    def where(self) -> str:
        return f"PostgreSQL {self.target.server}/{self.target.database} (schema {self.schema})"

    # -- opening -----------------------------------------------------------------------------------

    async def pool(self, prepare: Callable[[Any], Awaitable[dict[str, Any]]]) -> Any:
        """The pool, created on first call: connect, check and migrate the schema, ``prepare`` (which
        returns extra pool settings), then the pool itself."""
        if self.closed:
            raise StoreClosedError(f"{self.what} is closed")
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            if self.closed:
                raise StoreClosedError(f"{self.what} is closed")
            if self._pool is None:
                self._pool = await self._create_pool(prepare)
        return self._pool

    async def _connect(self, **settings: Any) -> Any:
        try:
            return await asyncpg.connect(self.target.dsn, timeout=self.connect_timeout_s,
                                         command_timeout=self.command_timeout_s, **settings)
        except Exception as error:  # noqa: BLE001 - every driver or network failure, translated
            raise self.translate(error, "connect", connecting=True) from self._cause(error)

    async def _create_pool(self, prepare: Callable[[Any], Awaitable[dict[str, Any]]]) -> Any:
        connection = await self._connect(server_settings={"application_name": self._application_name()})
        try:
            await self._guarded(self._migrate(connection), "check the schema")
            settings = await self._guarded(prepare(connection), "prepare")
        finally:
            with contextlib.suppress(Exception):
                await connection.close(timeout=_CLOSE_GRACE_SECONDS)
        server_settings = {"application_name": self._application_name(),
                           **settings.pop("server_settings", {})}
        try:
            return await asyncpg.create_pool(
                self.target.dsn, min_size=self.pool_min, max_size=self.pool_max,
                timeout=self.connect_timeout_s, command_timeout=self.command_timeout_s,
                max_inactive_connection_lifetime=300.0, server_settings=server_settings,
                reset=_keep_session, **settings)
        except Exception as error:  # noqa: BLE001 - every driver or network failure, translated
            raise self.translate(error, "connect", connecting=True) from self._cause(error)

    def _application_name(self) -> str:
        return f"maif {self.node_id}"[:63]

    async def _guarded(self, step: Awaitable[ResultT], action: str) -> ResultT:
        try:
            return await step
        except MAIFError:
            raise
        except Exception as error:  # noqa: BLE001 - every driver or network failure, translated
            raise self.translate(error, action) from self._cause(error)

    async def _migrate(self, connection: Any) -> None:
        if await self._schema_version(connection) < SCHEMA_VERSION:
            await self._locked(connection, migration_lock_key(self.schema), "migrate the schema",
                               self._apply_migrations)
        await self._check_store(connection)

    async def _locked(self, connection: Any, key: int, action: str,
                      body: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``body`` holding the session advisory lock ``key`` (waiting at most ``lock_timeout_s``)."""
        try:
            await connection.execute("SELECT pg_advisory_lock($1)", key, timeout=self.lock_timeout_s)
        except TimeoutError:
            raise BackendError(
                f"{self.where}: timed out after {self.lock_timeout_s:g} s waiting for the lock to {action}",
                hint="another node holds it (see pg_locks); it is released when that node's session ends",
            ) from None
        try:
            await body(connection)
        finally:
            with contextlib.suppress(Exception):
                await connection.execute("SELECT pg_advisory_unlock($1)", key)

    async def _apply_migrations(self, connection: Any) -> None:
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {self.quoted_schema}")
        current = await self._schema_version(connection)
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            async with connection.transaction():
                for statement in migration.statements:
                    await connection.execute(statement.format(schema=self.quoted_schema))
                await connection.execute(
                    f"INSERT INTO {self.quoted_schema}.maif_schema (version, description, applied_by) "  # noqa: S608
                    "VALUES ($1, $2, $3)", migration.version, migration.description, self.node_id)
            self.migrations_applied.append(migration.version)
            _log.info("%s: applied schema migration %d (%s)", self.where, migration.version,
                      migration.description)
        await self._schema_version(connection)  # the result, checked like any other open's

    async def _schema_version(self, connection: Any) -> int:
        """The MAIF schema version found (0: no schema, or an empty one); refuses a foreign or damaged
        layout and a version newer than :data:`SCHEMA_VERSION`. Read from one snapshot: a node that
        migrates meanwhile must not show this one its new version row beside its old table list (found
        by the concurrent-open test as a false "lacks tables" refusal)."""
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            return await self._read_schema_version(connection)

    async def _read_schema_version(self, connection: Any) -> int:
        rows = await connection.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')", self.schema)
        tables = {row[0] for row in rows}
        if not tables:
            return 0
        if "maif_schema" not in tables:
            raise self._foreign(f"holds tables that are not MAIF's ({', '.join(sorted(tables)[:5])})")
        columns = {row[0] for row in await connection.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
            "AND NOT attisdropped", f"{self.quoted_schema}.maif_schema")}
        if not {"version", "description", "applied_at", "applied_by"} <= columns:
            raise self._foreign("has a maif_schema table that is not MAIF's")
        version = await connection.fetchval(
            f"SELECT max(version) FROM {self.quoted_schema}.maif_schema")  # noqa: S608 - checked name
        if version is None:
            raise self._foreign("has an empty maif_schema table")
        if version > SCHEMA_VERSION:
            raise UnsupportedVersionError(
                f"{self.where} has MAIF schema version {version}; this MAIF knows versions up to "
                f"{SCHEMA_VERSION}: upgrade MAIF to open it",
                hint="a newer MAIF migrated this database; older nodes must not write to it")
        expected = {table for migration in MIGRATIONS[:version] for table in migration.tables}
        if missing := sorted(expected - tables):
            raise self._foreign(f"is MAIF schema version {version} but lacks tables {', '.join(missing)}")
        return int(version)

    async def _check_store(self, connection: Any) -> None:
        table = f"{self.quoted_schema}.store"
        await connection.execute(
            f"INSERT INTO {table} (singleton, store_id) VALUES (true, $1) ON CONFLICT DO NOTHING",  # noqa: S608
            self.store_id or str(uuid.uuid4()))
        found = await connection.fetchval(f"SELECT store_id FROM {table}")  # noqa: S608 - checked name
        if self.store_id is not None and found != self.store_id:
            raise self._foreign(f"holds MAIF store {found[:80]!r}, not {self.store_id[:80]!r}")
        self.store_id = found

    def _foreign(self, what: str) -> ForeignSchemaError:
        return ForeignSchemaError(
            f"{self.where} {what}: refused, nothing was changed", server=self.target.server,
            schema=self.schema,
            hint=f"point {CONFIG_KEY} at MAIF's database, or choose another schema for this store")

    # -- running -----------------------------------------------------------------------------------

    async def run(self, pool: Any, action: str, body: Callable[[Any], Awaitable[ResultT]]) -> ResultT:
        """``body(connection)`` on a pooled connection; a deadlock or serialization failure (the server
        rolled the transaction back) is retried, every other failure becomes a MAIF error."""
        for attempt in range(1, _ATTEMPTS_MAX + 1):
            try:
                async with pool.acquire(timeout=self.command_timeout_s) as connection:
                    result = await body(connection)
                if self.health is not None:
                    self.health.succeeded(COMPONENT)
                return result
            except MAIFError:
                raise
            except Exception as error:
                if self.closed:
                    raise StoreClosedError(f"{self.what} is closed") from error
                if getattr(error, "sqlstate", None) in _TRANSIENT_SQLSTATES and attempt < _ATTEMPTS_MAX:
                    await asyncio.sleep(0.005 * attempt)
                    continue
                raise self.translate(error, action) from self._cause(error)
        raise AssertionError("unreachable")

    def _cause(self, error: BaseException) -> BaseException | None:
        """The error to chain: the driver's own, unless its text holds a secret."""
        text = str(error)
        return error if self.target.redact(text) == text else None

    def translate(self, error: BaseException, action: str, *, connecting: bool = False) -> MAIFError:
        """A MAIF error for a driver or network one: the server and config key named, no secret; an
        unavailable server is reported to ``health``."""
        translated = self._translate(error, action, connecting=connecting)
        if self.health is not None and isinstance(translated, BackendUnavailableError):
            self.health.failed(COMPONENT, translated.message)
        return translated

    def _translate(self, error: BaseException, action: str, *, connecting: bool) -> MAIFError:
        detail = self.target.redact(str(error))[:_DETAIL_CHARS_MAX] or type(error).__name__
        sqlstate = getattr(error, "sqlstate", None) or ""
        if sqlstate.startswith("28") or (sqlstate == "42501" and connecting):
            return PostgresCredentialsError(
                f"PostgreSQL {self.target.server} (config key {CONFIG_KEY}) refused user "
                f"{self.target.user or '(default)'!r} on database {self.target.database!r}: {detail}",
                hint=f"check the user and password in {CONFIG_KEY} (or PGPASSWORD, ~/.pgpass) and the "
                     "server's pg_hba.conf")
        if sqlstate == "3D000":
            return BackendError(
                f"PostgreSQL {self.target.server} (config key {CONFIG_KEY}) has no database "
                f"{self.target.database!r}", hint="create it, or correct the database in the URL")
        if sqlstate == "53100":
            return BackendError(f"{self.where}: the server's disk is full ({detail})",
                                hint="free space on the database server; each node's log keeps the writes")
        if connecting and (isinstance(error, OSError | TimeoutError) or not sqlstate):
            return BackendUnavailableError(
                f"PostgreSQL {self.target.server} (config key {CONFIG_KEY}) is unreachable: "
                f"{type(error).__name__}: {detail}", component=COMPONENT,
                hint=f"start the server, or correct the host and port in {CONFIG_KEY}")
        if isinstance(error, TimeoutError):
            return BackendUnavailableError(
                f"{self.where}: timed out after {self.command_timeout_s:g} s trying to {action}",
                component=COMPONENT)
        if _connection_lost(error, sqlstate):
            return BackendUnavailableError(
                f"{self.where}: the connection failed trying to {action} ({type(error).__name__}: "
                f"{detail})", component=COMPONENT, hint="the server is down or restarting")
        code = f" [{sqlstate}]" if sqlstate else ""
        return BackendError(f"{self.where} failed to {action}{code}: {type(error).__name__}: {detail}")

    async def close(self) -> None:
        self.closed = True
        async with self._open_lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_GRACE_SECONDS)
        except Exception:  # noqa: BLE001 - a pool that does not close in time is terminated
            pool.terminate()


# ---- the metadata index ----------------------------------------------------------------------------

_COLUMNS = ("block_id", "block_type", "agent_id", "timestamp", "version", "parents", "metadata", "chunks",
            "payload_length", "digest", "lsn")
_ARRAY_TYPES = ("text", "text", "text", "float8", "text", "bytea", "bytea", "bytea", "int8", "bytea", "int8")
_COLUMN_LIST = ", ".join(_COLUMNS)


def _row_arrays(records: Sequence[BlockRecord]) -> list[list[Any]]:
    """The records as 11 column arrays (for ``unnest``), text escaped, lists msgpack-encoded."""
    columns: list[list[Any]] = [[] for _ in _COLUMNS]
    for record in records:
        values = (
            _escape(record.block_id), _escape(record.block_type), _escape(record.agent_id),
            float(record.timestamp), _escape(record.version), msgspec.msgpack.encode(record.parents),
            bytes(record.metadata), msgspec.msgpack.encode(record.chunks), record.payload_length,
            bytes(record.digest), record.lsn,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _record_of(row: Any) -> BlockRecord:
    try:
        parents = msgspec.msgpack.decode(row[5], type=tuple[str, ...])
        chunks = msgspec.msgpack.decode(row[7], type=tuple[bytes, ...])
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BackendError(f"metadata index row for block {_unescape(row[0])!r} is damaged") from error
    return BlockRecord(
        block_id=_unescape(row[0]), block_type=_unescape(row[1]), agent_id=_unescape(row[2]),
        timestamp=row[3], version=_unescape(row[4]), parents=parents, metadata=bytes(row[6]),
        chunks=chunks, payload_length=row[8], digest=bytes(row[9]), lsn=row[10],
    )


@dataclass
class _Deletion:
    lsn: int  # the tombstone's; the row goes too (for newer_only, when older)


@dataclass
class _Plan:
    """A put folded to at most one upsert and one deletion per block id, in an order that gives exactly
    the result of applying the records one by one (what SQLite and the memory index do)."""

    deletions_first: dict[str, _Deletion]
    upserts: dict[str, BlockRecord]
    deletions_last: dict[str, _Deletion]


def plan_put(records: Sequence[BlockRecord], newer_only: bool) -> _Plan:
    """Fold ``records`` into one bulk step per kind. Operations on different block ids are independent;
    per block id:

    - plain puts: the last record decides the row (a record, or none after a tombstone), and the
      tombstone keeps the highest deletion LSN; a deletion acts first, removing the row;
    - ``newer_only``: records fold to the first of the highest LSN, deletions to the highest LSN, and the
      two commute unless their LSNs tie: then the one met first acts first.
    """
    plan = _Plan({}, {}, {})
    for block_id, operations in _by_block(records).items():
        upserts = [record for record in operations if not record.deleted]
        deletions = [record for record in operations if record.deleted]
        tombstone_lsn = max((record.lsn for record in deletions), default=None)
        if not newer_only:
            last = operations[-1]
            if tombstone_lsn is not None:  # the row goes even when a record follows: a deletion from
                # any node deletes, so the record after it meets no other node's row (ADR 0070)
                plan.deletions_first[block_id] = _Deletion(tombstone_lsn)
            if not last.deleted:
                plan.upserts[block_id] = last
            continue
        best = max(upserts, key=lambda record: record.lsn) if upserts else None  # max keeps the first
        if best is not None:
            plan.upserts[block_id] = best
        if tombstone_lsn is None:
            continue
        deletion = _Deletion(tombstone_lsn)
        if best is not None and best.lsn == tombstone_lsn and _first_index(operations, best.lsn, False) \
                < _first_index(operations, best.lsn, True):
            plan.deletions_last[block_id] = deletion
        else:
            plan.deletions_first[block_id] = deletion
    return plan


def _by_block(records: Sequence[BlockRecord]) -> dict[str, list[BlockRecord]]:
    grouped: dict[str, list[BlockRecord]] = {}
    for record in records:
        grouped.setdefault(record.block_id, []).append(record)
    return grouped


def _first_index(operations: list[BlockRecord], lsn: int, deleted: bool) -> int:
    return next(i for i, record in enumerate(operations) if record.lsn == lsn and record.deleted == deleted)


def _chunks(items: list[ResultT]) -> list[list[ResultT]]:
    return [items[start:start + _STATEMENT_ROWS_MAX] for start in range(0, len(items), _STATEMENT_ROWS_MAX)]


class _OnDatabase:
    """What the three PostgreSQL backends share: one :class:`_Database` (pool, schema checks and
    migrations, error translation), its identity, ``open`` and ``close``. ``_prepare`` sets up each new
    pool (the vector index registers its codec); the default does nothing."""

    _what = "PostgreSQL"
    """How errors name this backend."""

    def __init__(self, dsn: str, *, schema: str = "maif", node_id: str = "local", pool_min: int = 1,
                 pool_max: int = 10, store_id: str | None = None, connect_timeout_s: float = 10.0,
                 command_timeout_s: float = 60.0, lock_timeout_s: float = 60.0,
                 health: Health | None = None) -> None:
        self._db = _Database(self._what, dsn, schema=schema, node_id=node_id, pool_min=pool_min,
                             pool_max=pool_max, connect_timeout_s=connect_timeout_s,
                             command_timeout_s=command_timeout_s, lock_timeout_s=lock_timeout_s,
                             store_id=store_id, health=health)
        self._configure()

    def _configure(self) -> None:
        """Set up what the subclass derives from the schema (table names, statements)."""

    @property
    def node_id(self) -> str:
        return self._db.node_id

    @property
    def schema(self) -> str:
        return self._db.schema

    @property
    def store_id(self) -> str | None:
        """The store's id (known after the first call, or given)."""
        return self._db.store_id

    @property
    def migrations_applied(self) -> list[int]:
        """The migration versions THIS object applied when it opened (empty when the schema was current)."""
        return list(self._db.migrations_applied)

    async def open(self) -> Self:
        """Connect, check and migrate the schema now (otherwise the first call does); returns self."""
        await self._pool()
        return self

    async def _prepare(self, connection: Any) -> dict[str, Any]:
        return {}

    async def _pool(self) -> Any:
        return await self._db.pool(self._prepare)

    async def _run(self, action: str, body: Callable[[Any], Awaitable[ResultT]]) -> ResultT:
        return await self._db.run(await self._pool(), action, body)

    async def close(self) -> None:
        await self._db.close()


class PostgresMetadataIndex(_OnDatabase, MetadataIndex):
    """:class:`MetadataIndex` in PostgreSQL, shared by every node of a store (see the module docstring).

    ``dsn``                 the ``postgres_url`` key: ``postgresql://user[:password]@host:port/database``
    ``schema``              the PostgreSQL schema holding this store (one store per schema)
    ``node_id``             this node: its applied LSN is kept apart from every other node's
    ``pool_min/pool_max``   pooled server connections (bounded by :data:`POOL_CONNECTIONS_MAX`)
    ``store_id``            when given, the schema must belong to this store (a new one records it)

    Connects on first use; ``await index.open()`` connects at once, to fail fast at start-up.
    """

    capabilities = Capabilities(durable=True, shared_between_processes=True)

    _what = "PostgreSQL metadata index"

    def _configure(self) -> None:
        table = self._db.quoted_schema
        self._blocks = f"{table}.blocks"
        self._select = f"SELECT {_COLUMN_LIST} FROM {table}.blocks"  # noqa: S608 - checked schema name
        self._sql_upsert = {newer_only: self._upsert_sql(newer_only) for newer_only in (False, True)}
        self._sql_delete = {newer_only: self._delete_sql(newer_only) for newer_only in (False, True)}
        self._sql_conflicts = self._conflicts_sql()
        self.conflicts_total = 0
        self.last_put_rejected: frozenset[str] = frozenset()  # ids the last put kept out (conflicts)
        """Writes of this instance's node kept out because another node's version of the block id was
        there (ADR 0070); each is a row of the ``conflicts`` table and a warning in the log."""


    # -- SQL -----------------------------------------------------------------------------------------

    def _upsert_sql(self, newer_only: bool) -> str:
        schema = self._db.quoted_schema
        arrays = ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_ARRAY_TYPES, start=1))
        link = (f"INSERT INTO {schema}.parents (parent, child) SELECT parent, child FROM edges "  # noqa: S608
                "ORDER BY parent, child ON CONFLICT DO NOTHING")
        if newer_only:  # a rebuild: the highest LSN wins, whoever wrote it; a new row has no known writer
            updates = ", ".join(f"{column} = excluded.{column}" for column in _COLUMNS[1:])
            upsert = (f"written AS (INSERT INTO {schema}.blocks AS b ({_COLUMN_LIST}) "  # noqa: S608
                      f"SELECT {_COLUMN_LIST} FROM input i WHERE NOT EXISTS (SELECT 1 FROM "
                      f"{schema}.tombstones t WHERE t.block_id = i.block_id AND t.lsn >= i.lsn) "
                      "ORDER BY i.block_id "
                      f"ON CONFLICT (block_id) DO UPDATE SET {updates} WHERE excluded.lsn > b.lsn "
                      "RETURNING b.block_id)")
            unless_conflicts = ""
            tail = f" {link}"
        else:
            # Cross-node conflicts (ADR 0070), decided by ON CONFLICT itself, never by a snapshot read:
            # it sees and locks the newest committed version of an existing row, even one another node
            # committed after this statement's snapshot. The row is replaced when this node wrote it
            # (or no known node did: ''); another node's row is kept as it is. Same digest: the WHERE
            # skips the write (same content, idempotent, ownership kept), nothing is returned. Another
            # digest: the row is rewritten unchanged, so RETURNING reports the version kept (its writer
            # and digest): the rows returned as another node's are exactly the conflicts.
            mine = "b.node_id IN (excluded.node_id, '')"
            updates = ", ".join(f"{column} = CASE WHEN {mine} THEN excluded.{column} ELSE b.{column} END"
                                for column in (*_COLUMNS[1:], "node_id"))
            upsert = (f"upserted AS (INSERT INTO {schema}.blocks AS b ({_COLUMN_LIST}, node_id) "  # noqa: S608
                      f"SELECT {_COLUMN_LIST}, $14::text FROM input i ORDER BY i.block_id "
                      f"ON CONFLICT (block_id) DO UPDATE SET {updates} "
                      f"WHERE {mine} OR b.digest <> excluded.digest "
                      "RETURNING b.block_id, b.node_id, b.digest), "
                      "written AS (SELECT block_id FROM upserted WHERE node_id = $14::text)")
            # with conflicts, the LSN moves with their rows (_conflicts_sql): a crash in between replays
            unless_conflicts = " AND NOT EXISTS (SELECT 1 FROM upserted WHERE node_id <> $14::text)"
            tail = (f", linked AS ({link}) "  # noqa: S608 - constants
                    "SELECT block_id, node_id, digest FROM upserted WHERE node_id <> $14::text")
        # One statement: the rows, then the edges of the rows really written (old edges that are not
        # among the new ones go; the deleted and inserted edges are disjoint, so the order is moot),
        # and the node's applied LSN when given ($15 NULL: untouched); a plain put returns its conflicts.
        return (  # assembled from constants and the checked schema name; values are parameters
            f"WITH input AS (SELECT * FROM unnest({arrays}) AS t({_COLUMN_LIST})), {upsert}, "  # noqa: S608
            "edges AS (SELECT DISTINCT e.parent, e.child FROM unnest($12::text[], $13::text[]) "
            "AS e(parent, child) JOIN written w ON w.block_id = e.child), "
            f"unlinked AS (DELETE FROM {schema}.parents p USING written w WHERE p.child = w.block_id "
            "AND NOT EXISTS (SELECT 1 FROM edges e WHERE e.parent = p.parent AND e.child = p.child)), "
            f"applied AS (INSERT INTO {schema}.node_state AS s (node_id, key, value) "
            f"SELECT $14::text, 'applied_lsn', $15::int8 WHERE $15::int8 IS NOT NULL{unless_conflicts} "
            "ON CONFLICT (node_id, key) DO UPDATE SET value = GREATEST(s.value, excluded.value))"
            f"{tail}"
        )

    def _conflicts_sql(self) -> str:
        schema = self._db.quoted_schema
        return (  # assembled from constants and the checked schema name; values are parameters
            f"WITH applied AS (INSERT INTO {schema}.node_state AS s (node_id, key, value) "  # noqa: S608
            "SELECT $7::text, 'applied_lsn', $8::int8 WHERE $8::int8 IS NOT NULL "
            "ON CONFLICT (node_id, key) DO UPDATE SET value = GREATEST(s.value, excluded.value)) "
            f"INSERT INTO {schema}.conflicts (block_id, node_id, lsn, digest, record, existing_node_id, "
            "existing_digest) SELECT block_id, $7::text, lsn, digest, record, existing_node_id, "
            "existing_digest FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::bytea[], $5::text[], "
            "$6::bytea[]) AS t(block_id, lsn, digest, record, existing_node_id, existing_digest)"
        )

    def _delete_sql(self, newer_only: bool) -> str:
        schema = self._db.quoted_schema
        older = " AND b.lsn < i.lsn" if newer_only else ""
        return (  # assembled from constants and the checked schema name; values are parameters
            "WITH input AS (SELECT * FROM unnest($1::text[], $2::int8[]) AS t(block_id, lsn)), "  # noqa: S608
            f"gone AS (DELETE FROM {schema}.blocks b USING input i "
            f"WHERE b.block_id = i.block_id{older} RETURNING b.block_id), "
            f"unlinked AS (DELETE FROM {schema}.parents p USING gone g WHERE p.child = g.block_id) "
            f"INSERT INTO {schema}.tombstones AS t (block_id, lsn) "
            "SELECT block_id, lsn FROM input ORDER BY block_id "
            "ON CONFLICT (block_id) DO UPDATE SET lsn = GREATEST(t.lsn, excluded.lsn)"
        )

    # -- the MetadataIndex API -----------------------------------------------------------------------

    async def put(self, records: Sequence[BlockRecord], *, applied_lsn: int | None = None,
                  newer_only: bool = False) -> None:
        if applied_lsn is not None and (isinstance(applied_lsn, bool) or not isinstance(applied_lsn, int)
                                        or applied_lsn < 0):
            raise FormatError(f"applied LSN must be a non-negative integer, got {applied_lsn!r}")
        plan = plan_put(records, newer_only)
        if not (plan.deletions_first or plan.upserts or plan.deletions_last) and applied_lsn is None:
            await self._pool()
            return

        statements = self._put_statements(plan, applied_lsn, newer_only)

        async def body(connection: Any) -> list[Any]:
            if len(statements) == 1:  # one statement is atomic on its own: one round trip in all
                conflicts = await self._execute(connection, statements[0])
                if conflicts:  # the upsert held the applied LSN back: it moves with the conflict rows,
                    # so a crash in between replays the batch and finds the conflicts again
                    await connection.execute(*self._conflict_statement(conflicts, plan, applied_lsn))
                return conflicts
            conflicts = []
            async with connection.transaction():
                for statement in statements:
                    conflicts += await self._execute(connection, statement)
                if conflicts:
                    await connection.execute(*self._conflict_statement(conflicts, plan, applied_lsn))
            return conflicts

        conflicts = await self._run("store block records", body)
        # The applier reads this right after the put: these ids keep another node's version, so their
        # vectors must not be replaced either.
        self.last_put_rejected = frozenset(_unescape(row[0]) for row in conflicts)
        if conflicts:
            self._report_conflicts(conflicts, plan)

    async def _execute(self, connection: Any, statement: tuple[Any, ...]) -> list[Any]:
        """Run one statement of a put; a plain upsert returns its conflicts (block id, the kept row's
        writer and digest), any other statement nothing."""
        if statement[0] is self._sql_upsert[False]:
            return list(await connection.fetch(*statement))
        await connection.execute(*statement)
        return []

    def _conflict_statement(self, conflicts: Sequence[Any], plan: _Plan,
                            applied_lsn: int | None) -> tuple[Any, ...]:
        records = [plan.upserts[_unescape(row[0])] for row in conflicts]
        return (self._sql_conflicts, [row[0] for row in conflicts], [record.lsn for record in records],
                [bytes(record.digest) for record in records], [encode_record(record) for record in records],
                [row[1] for row in conflicts], [bytes(row[2]) for row in conflicts], self._db.node_id,
                applied_lsn)

    def _report_conflicts(self, conflicts: Sequence[Any], plan: _Plan) -> None:
        self.conflicts_total += len(conflicts)
        for row in conflicts[:_CONFLICTS_LOGGED_MAX]:
            record = plan.upserts[_unescape(row[0])]
            _log.warning(
                "%s: block %s written by node %r (lsn %d, digest %s) conflicts with node %r's version "
                "(digest %s): not applied, kept in the conflicts table (delete the block and write the "
                "wanted version to resolve it)", self._db.where, repr(record.block_id)[:200],
                self._db.node_id, record.lsn, bytes(record.digest).hex()[:16], row[1],
                bytes(row[2]).hex()[:16])
        if len(conflicts) > _CONFLICTS_LOGGED_MAX:
            _log.warning("%s: %d more conflicting block(s) in the same batch from node %r, kept in the "
                         "conflicts table", self._db.where, len(conflicts) - _CONFLICTS_LOGGED_MAX,
                         self._db.node_id)

    def _put_statements(self, plan: _Plan, applied_lsn: int | None,
                        newer_only: bool) -> list[tuple[Any, ...]]:
        """The statements of a put, in order: deletions that act first, the upserts (the last carries
        the applied LSN), deletions that act last; the applied LSN alone when nothing else carries it."""
        statements: list[tuple[Any, ...]] = self._deletions(plan.deletions_first, newer_only)
        batches = _chunks(sorted(plan.upserts))
        for number, batch in enumerate(batches, start=1):
            upserts = [plan.upserts[block_id] for block_id in batch]
            edges = [(_escape(parent), _escape(record.block_id))
                     for record in upserts for parent in record.parents]
            statements.append((self._sql_upsert[newer_only], *_row_arrays(upserts),
                               [parent for parent, _ in edges], [child for _, child in edges],
                               self._db.node_id, applied_lsn if number == len(batches) else None))
        statements += self._deletions(plan.deletions_last, newer_only)
        if applied_lsn is not None and not batches:
            statements.append((
                f"INSERT INTO {self._db.quoted_schema}.node_state AS s (node_id, key, value) "  # noqa: S608
                "VALUES ($1, 'applied_lsn', $2) "
                "ON CONFLICT (node_id, key) DO UPDATE SET value = GREATEST(s.value, excluded.value)",
                self._db.node_id, applied_lsn))
        return statements

    def _deletions(self, deletions: dict[str, _Deletion], newer_only: bool) -> list[tuple[Any, ...]]:
        return [(self._sql_delete[newer_only], [_escape(block_id) for block_id in batch],
                 [deletions[block_id].lsn for block_id in batch])
                for batch in _chunks(sorted(deletions))]

    async def conflicts(self, block_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The conflicts recorded (by every node), oldest first, optionally of one block id: dicts of
        ``block_id``, ``node_id`` (the writer kept out), ``lsn``, ``digest`` (hex), ``existing_node_id``,
        ``existing_digest`` (hex: the version kept), ``created_at`` (ISO 8601)."""
        check_query_limit(limit)
        where = "" if block_id is None else " WHERE block_id = $2"
        arguments = (limit,) if block_id is None else (limit, _escape(block_id))
        rows = await self._run("read the conflicts", lambda connection: connection.fetch(
            "SELECT block_id, node_id, lsn, digest, existing_node_id, existing_digest, created_at "  # noqa: S608
            f"FROM {self._db.quoted_schema}.conflicts{where} ORDER BY id LIMIT $1", *arguments))
        return [{"block_id": _unescape(row[0]), "node_id": row[1], "lsn": int(row[2]),
                 "digest": bytes(row[3]).hex(), "existing_node_id": row[4],
                 "existing_digest": bytes(row[5]).hex(), "created_at": row[6].isoformat()} for row in rows]

    async def get(self, block_id: str) -> BlockRecord | None:
        row = await self._run("read a block record", lambda connection: connection.fetchrow(
            self._select + " WHERE block_id = $1", _escape(block_id)))
        return None if row is None else _record_of(row)

    async def get_many(self, block_ids: Sequence[str]) -> dict[str, BlockRecord]:
        """One query for all of them (``block_id = ANY($1)``, the primary key's index)."""
        check_get_many(block_ids)
        if not block_ids:
            return {}
        escaped = [_escape(block_id) for block_id in dict.fromkeys(block_ids)]
        rows = await self._run("read block records", lambda connection: connection.fetch(
            self._select + " WHERE block_id = ANY($1::text[])", escaped))
        return {record.block_id: record for record in map(_record_of, rows)}

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
        clauses: list[str] = []
        parameters: list[Any] = []

        def bind(value: Any) -> str:
            parameters.append(value)
            return f"${len(parameters)}"

        for clause, value in (("agent_id = {}", agent_id), ("block_type = {}", block_type)):
            if value is not None:
                clauses.append(clause.format(bind(_escape(value))))
        for clause, bound in (("timestamp >= {}", since), ("timestamp < {}", until)):
            if bound is not None:
                clauses.append(clause.format(bind(float(bound))))
        if parent is not None:
            clauses.append(f"block_id IN (SELECT child FROM {self._db.quoted_schema}.parents "  # noqa: S608
                           f"WHERE parent = {bind(_escape(parent))})")
        if after is not None:
            clauses.append("(timestamp, block_id) > (SELECT c.timestamp, c.block_id "  # noqa: S608
                           f"FROM {self._blocks} c WHERE c.block_id = {bind(_escape(after))})")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"{self._select}{where} ORDER BY timestamp, block_id LIMIT {bind(limit)}"

        async def body(connection: Any) -> list[Any]:
            rows = await connection.fetch(sql, *parameters)
            if not rows and after is not None and await connection.fetchval(
                    f"SELECT 1 FROM {self._blocks} WHERE block_id = $1", _escape(after)) is None:  # noqa: S608
                raise BlockNotFoundError(f"paging cursor {after!r} names no block")
            return list(rows)

        return [_record_of(row) for row in await self._run("query block records", body)]

    async def applied_lsn(self) -> int:
        value = await self._run("read the applied LSN", lambda connection: connection.fetchval(
            f"SELECT value FROM {self._db.quoted_schema}.node_state "  # noqa: S608 - checked schema name
            "WHERE node_id = $1 AND key = 'applied_lsn'", self._db.node_id))
        return 0 if value is None else int(value)

    async def set_applied_lsn(self, lsn: int) -> None:
        await self.put([], applied_lsn=lsn)

    async def log_positions(self, log: str) -> dict[int, int]:
        """How far each partition of the shared log ``log`` (a Kafka topic) is applied: partition ->
        the next offset to apply (Kafka's committed-offset convention; absent: nothing applied yet)."""
        rows = await self._run("read the log positions", lambda connection: connection.fetch(
            f"SELECT key, value FROM {self._db.quoted_schema}.node_state "  # noqa: S608 - checked name
            "WHERE node_id = $1", _log_state_owner(log)))
        return {int(row[0].removeprefix("partition:")): int(row[1]) for row in rows
                if row[0].startswith("partition:")}

    async def session_connection(self) -> Any:
        """A connection of its own, outside the pool, for state that must end with its session (the
        NATS log's partition leases are advisory locks: a node that dies loses them). The caller closes
        it; a failure to connect is the usual MAIF error."""
        return await self._db._connect(server_settings={"application_name": self._db._application_name()})

    async def set_log_positions(self, log: str, positions: Mapping[int, int]) -> None:
        """Record that every record of ``log`` before ``positions[partition]`` is applied and durable;
        a position never moves back (two nodes applying one partition during a rebalance)."""
        if not positions:
            return
        partitions = sorted(positions)
        if any(isinstance(value, bool) or not isinstance(value, int) or value < 0
               for value in (*partitions, *positions.values())):
            raise FormatError(f"log positions must be non-negative integers, got {dict(positions)!r}")
        await self._run("store the log positions", lambda connection: connection.execute(
            f"INSERT INTO {self._db.quoted_schema}.node_state AS s (node_id, key, value) "  # noqa: S608
            "SELECT $1, 'partition:' || p, v FROM unnest($2::int8[], $3::int8[]) AS t(p, v) "
            "ON CONFLICT (node_id, key) DO UPDATE SET value = GREATEST(s.value, excluded.value)",
            _log_state_owner(log), partitions, [positions[partition] for partition in partitions]))

    async def flush(self) -> None:
        await self._pool()  # every put committed: durable already (synchronous_commit is the server's)

    async def count(self, block_type: str | None = None) -> int:
        if block_type is None:
            value = await self._run("count block records", lambda connection: connection.fetchval(
                f"SELECT count(*) FROM {self._blocks}"))  # noqa: S608 - checked schema name
        else:
            value = await self._run("count block records", lambda connection: connection.fetchval(
                f"SELECT count(*) FROM {self._blocks} WHERE block_type = $1",  # noqa: S608
                _escape(block_type)))
        return int(value)



def _log_state_owner(log: str) -> str:
    """The ``node_state.node_id`` under which a shared log's positions are kept: never a node's id, which
    cannot hold ':' (:func:`maif.storage.distributed.node_id_of`)."""
    return f"log:{log}"


async def _keep_session(connection: Any) -> None:
    """Pool reset: nothing, since no pooled session ever holds state (settings are transaction-local,
    no LISTEN, no cursor, no advisory lock), which saves asyncpg's RESET ALL round trip on every release.
    asyncpg still rolls back a transaction left open."""


# ---- the shared chunk locations ---------------------------------------------------------------------


class PostgresLocationIndex(_OnDatabase, LocationIndex):
    """:class:`~maif.storage.backends.objectpacks.LocationIndex` in PostgreSQL (``chunk_locations``):
    digest -> pack object, frame offset, flags and lengths, shared by every node of the store. The first
    location of a digest wins (two nodes uploading the same new chunk: the later row is dropped, its
    copy in the other object is harmless garbage); each row names the node that uploaded it.

    ``dsn``, ``schema``, ``node_id``, ``pool_min/pool_max``, ``store_id``   as for PostgresMetadataIndex
    """

    _what = "PostgreSQL chunk locations"

    def _configure(self) -> None:
        self._table = f"{self._db.quoted_schema}.chunk_locations"
        self._columns = "digest, object_key, frame_offset, flags, raw_length, stored_length"


    async def lookup(self, digests: Sequence[bytes]) -> dict[bytes, ObjectLocation]:
        wanted = list(dict.fromkeys(bytes(digest) for digest in digests))
        if not wanted:
            await self._pool()
            return {}
        rows = await self._run("look up chunk locations", lambda connection: connection.fetch(
            f"SELECT {self._columns} FROM {self._table} WHERE digest = ANY($1::bytea[])",  # noqa: S608
            wanted))
        return {bytes(row[0]): _location_of(row) for row in rows}

    async def add(self, entries: Sequence[tuple[bytes, ObjectLocation]]) -> None:
        first: dict[bytes, ObjectLocation] = {}
        for digest, location in entries:
            first.setdefault(bytes(digest), location)  # within the batch too, the first location wins
        if not first:
            await self._pool()
            return
        sql = (f"INSERT INTO {self._table} ({self._columns}, node_id) "  # noqa: S608 - checked schema name
               f"SELECT *, $7::text FROM unnest($1::bytea[], $2::text[], $3::int8[], $4::int2[], $5::int4[], "
               "$6::int4[]) ORDER BY 1 ON CONFLICT (digest) DO NOTHING")
        # sorted: every node inserts in one order, so two concurrent adds never deadlock
        statements = [(sql, batch, [_escape(first[digest].key) for digest in batch],
                       [first[digest].offset for digest in batch], [first[digest].flags for digest in batch],
                       [first[digest].raw_length for digest in batch],
                       [first[digest].stored_length for digest in batch], self._db.node_id)
                      for batch in _chunks(sorted(first))]

        async def body(connection: Any) -> None:
            if len(statements) == 1:
                await connection.execute(*statements[0])
                return
            async with connection.transaction():
                for statement in statements:
                    await connection.execute(*statement)

        await self._run("record chunk locations", body)

    async def count(self) -> tuple[int, int]:
        row = await self._run("count chunk locations", lambda connection: connection.fetchrow(
            f"SELECT count(*) FILTER (WHERE flags & {FLAG_RECORD} = 0), "  # noqa: S608 - constants
            f"count(*) FILTER (WHERE flags & {FLAG_RECORD} <> 0) FROM {self._table}"))
        return int(row[0]), int(row[1])

    async def sample(self, fraction: float) -> list[tuple[bytes, ObjectLocation]]:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise FormatError(f"sample fraction must be within [0, 1], got {fraction!r}")
        if fraction == 0.0:
            await self._pool()
            return []
        select = f"SELECT {self._columns} FROM {self._table}"  # noqa: S608 - checked schema name
        if fraction >= 1.0:
            rows = await self._run("read chunk locations", lambda connection: connection.fetch(select))
        else:  # each row independently with this probability (BERNOULLI takes a percentage)
            rows = await self._run("sample chunk locations", lambda connection: connection.fetch(
                f"{select} TABLESAMPLE BERNOULLI ($1::float8)", 100.0 * fraction))
        return [(bytes(row[0]), _location_of(row)) for row in rows]


def _location_of(row: Any) -> ObjectLocation:
    return ObjectLocation(_unescape(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5]))


# ---- the vector index ------------------------------------------------------------------------------

_VECTOR_HEADER = struct.Struct(">HH")


def _encode_vector(vector: Any) -> bytes:
    """pgvector's binary form: dimension and a reserved field (uint16 each), then big-endian float32s.
    Already-encoded bytes pass through (asyncpg would iterate an array parameter's ndarray elements)."""
    if isinstance(vector, bytes):
        return vector
    array = np.asarray(vector, dtype=">f4")
    return _VECTOR_HEADER.pack(array.shape[0], 0) + array.tobytes()


def _decode_vector(data: bytes) -> np.ndarray:
    dimensions, _ = _VECTOR_HEADER.unpack_from(data)
    return np.frombuffer(data, dtype=">f4", count=dimensions, offset=_VECTOR_HEADER.size).astype(np.float32)


def _attributes_json(attributes: Mapping[str, str]) -> str:
    return json.dumps({_escape(key): _escape(value) for key, value in attributes.items()},
                      separators=(",", ":"), sort_keys=True)


class _DimensionsUnset(Exception):
    """No vector is stored yet: the add must create the table (raised and caught inside ``add``)."""


class PgVectorIndex(_OnDatabase, VectorIndex):
    """:class:`VectorIndex` in PostgreSQL with pgvector: HNSW, cosine, native filters (module docstring).

    ``dsn``, ``schema``, ``node_id``, ``pool_min/pool_max``, ``store_id``   as for PostgresMetadataIndex
    ``hnsw_m``                HNSW graph degree (pgvector ``m``; 2..100)
    ``hnsw_ef_construction``  candidate list while building (pgvector ``ef_construction``; >= 2 * m)
    ``hnsw_ef_search``        candidate list while searching (``hnsw.ef_search``; raised to a query's
                              ``limit``, up to 1000): recall against latency

    The extension is created (``CREATE EXTENSION IF NOT EXISTS vector``) when missing, which needs a role
    allowed to; the vector dimension is fixed by the first add and kept in ``vector_state``.
    """

    capabilities = Capabilities(durable=True, shared_between_processes=True, filtered_search=True)
    _what = "pgvector index"

    def __init__(self, dsn: str, *, schema: str = "maif", node_id: str = "local", pool_min: int = 1,
                 pool_max: int = 10, store_id: str | None = None, hnsw_m: int = HNSW_M,
                 hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION, hnsw_ef_search: int = HNSW_EF_SEARCH,
                 connect_timeout_s: float = 10.0, command_timeout_s: float = 300.0,
                 lock_timeout_s: float = 60.0, health: Health | None = None) -> None:
        for name, value, low, high in (("hnsw_m", hnsw_m, 2, 100),
                                       ("hnsw_ef_construction", hnsw_ef_construction, 4, 1000),
                                       ("hnsw_ef_search", hnsw_ef_search, 1, PGVECTOR_EF_SEARCH_MAX)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if hnsw_ef_construction < 2 * hnsw_m:
            raise ConfigError("hnsw_ef_construction must be at least twice hnsw_m (pgvector's rule)")
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.iterative_scan: bool | None = None
        """Whether the server's pgvector (0.8+) scans iteratively for filters; known after opening."""
        self.pgvector_version: str | None = None
        self._ndim: int | None = None
        super().__init__(dsn, schema=schema, node_id=node_id, pool_min=pool_min, pool_max=pool_max,
                         store_id=store_id, connect_timeout_s=connect_timeout_s,
                         command_timeout_s=command_timeout_s, lock_timeout_s=lock_timeout_s, health=health)

    def _configure(self) -> None:
        schema_name = self._db.quoted_schema
        self._table = f"{schema_name}.vectors"
        self._state = f"{schema_name}.vector_state"

    async def _prepare(self, connection: Any) -> dict[str, Any]:
        """Make sure pgvector is there, learn its version and the dimension, and set up the pool's
        connections: the vector codec, the extension's schema in the search path, the HNSW settings."""
        extension = await connection.fetchrow(
            "SELECT e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'vector'")
        if extension is None:
            await self._db._locked(connection, _EXTENSION_LOCK_KEY, "create the vector extension",
                                   self._create_extension)
            extension = await connection.fetchrow(
                "SELECT e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname = 'vector'")
        version, extension_schema = extension[0], extension[1]
        self.pgvector_version = version
        self.iterative_scan = _version_tuple(version) >= (0, 8)
        self._ndim = await connection.fetchval(f"SELECT dimensions FROM {self._state}")  # noqa: S608
        server_settings = {"search_path": f'"{extension_schema}"', "hnsw.ef_search": str(self.hnsw_ef_search)}
        if self.iterative_scan:
            server_settings["hnsw.iterative_scan"] = "relaxed_order"

        async def init(pooled: Any) -> None:
            await pooled.set_type_codec("vector", schema=extension_schema, encoder=_encode_vector,
                                        decoder=_decode_vector, format="binary")

        return {"server_settings": server_settings, "init": init}

    async def _create_extension(self, connection: Any) -> None:
        try:
            await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except Exception as error:
            if getattr(error, "sqlstate", None) in ("42501", "0A000", "58P01"):
                raise BackendError(
                    f"{self._db.where}: the pgvector extension is missing and cannot be created "
                    f"({getattr(error, 'sqlstate', '')}: {self._db.target.redact(str(error))})",
                    hint=f"as a superuser, run CREATE EXTENSION vector in database "
                         f"{self._db.target.database!r} (the package is pgvector)") from None
            raise

    # -- the VectorIndex API -------------------------------------------------------------------------

    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        checked = [
            (block_id, unit_vector(check_vector(vector)), check_attributes(attributes, "vector attributes"))
            for block_id, vector, attributes in items
        ]
        await self._pool()  # the dimension is known from here on
        if not checked:
            return
        ndim = checked[0][1].shape[0]
        if self._ndim is not None and self._ndim != ndim:
            await self._refresh_dimensions()  # another node may have cleared the index since
        for _, vector, _ in checked:
            check_vector(vector, self._ndim if self._ndim is not None else ndim)
        if ndim > PGVECTOR_DIMENSIONS_MAX:
            raise LimitExceededError("pgvector dimensions", ndim, PGVECTOR_DIMENSIONS_MAX)
        latest = {block_id: (vector, attributes) for block_id, vector, attributes in checked}  # last wins
        order = sorted(latest)  # one lock order for every node: no deadlock between concurrent adds
        columns = ([_escape(block_id) for block_id in order],
                   [_encode_vector(latest[block_id][0]) for block_id in order],
                   [_attributes_json(latest[block_id][1]) for block_id in order])

        async def insert(connection: Any, lock: str) -> None:
            stored = await connection.fetchval(f"SELECT dimensions FROM {self._state} {lock}")  # noqa: S608
            if stored is None:
                if lock != "FOR UPDATE":
                    raise _DimensionsUnset
                await self._create_table(connection, ndim)
                stored = ndim
            self._ndim = stored
            if stored != ndim:
                raise FormatError(f"vectors have {ndim} dimensions; this index holds {stored}-dimensional "
                                  "vectors")
            await connection.execute(
                f"INSERT INTO {self._table} AS v (block_id, embedding, attributes) "  # noqa: S608
                "SELECT * FROM unnest($1::text[], $2::vector[], $3::jsonb[]) "
                "ON CONFLICT (block_id) DO UPDATE SET embedding = excluded.embedding, "
                "attributes = excluded.attributes", *columns)

        async def body(connection: Any) -> None:
            try:
                async with connection.transaction():
                    await insert(connection, "FOR SHARE")  # concurrent adds from every node
            except _DimensionsUnset:
                async with connection.transaction():
                    await insert(connection, "FOR UPDATE")  # the first add: alone, creates the table

        await self._run("add vectors", body)

    async def _refresh_dimensions(self) -> None:
        self._ndim = await self._run("read the vector dimension", lambda connection: connection.fetchval(
            f"SELECT dimensions FROM {self._state}"))  # noqa: S608 - checked schema name

    async def _create_table(self, connection: Any, ndim: int) -> None:
        schema = self._db.quoted_schema
        await connection.execute(
            f"CREATE TABLE {self._table} (block_id text COLLATE \"C\" PRIMARY KEY, "
            f"embedding vector({ndim}) NOT NULL, attributes jsonb NOT NULL)")
        await connection.execute(
            f"CREATE INDEX vectors_attributes ON {self._table} USING gin (attributes jsonb_path_ops)")
        if ndim <= PGVECTOR_HNSW_DIMENSIONS_MAX:
            await connection.execute(
                f"CREATE INDEX vectors_hnsw ON {self._table} USING hnsw (embedding vector_cosine_ops) "
                f"WITH (m = {self.hnsw_m}, ef_construction = {self.hnsw_ef_construction})")
        await connection.execute(f"UPDATE {schema}.vector_state SET dimensions = $1", ndim)  # noqa: S608

    async def search(
        self,
        query: np.ndarray,
        limit: int,
        *,
        score_threshold: float | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[tuple[str, float]]:
        check_search_limit(limit)
        wanted = check_attributes(filters, "search filters")
        vector = unit_vector(check_vector(query))
        await self._pool()
        if limit == 0:
            return []
        if self._ndim != vector.shape[0]:  # empty or another dimension here: another node may have
            await self._refresh_dimensions()  # added the first vectors or rebuilt the index since
            if self._ndim is None:
                return []
        check_vector(vector, self._ndim)
        encoded = _encode_vector(vector)
        filter_json = _attributes_json(wanted) if wanted else None
        rows = await self._run("search vectors", lambda connection: self._nearest(
            connection, encoded, limit, filter_json, exact=False))
        if len(rows) < limit and (wanted or limit > self.hnsw_ef_search):
            # Too few: the HNSW scan gave up early (rare filter value, old pgvector) or the index holds
            # fewer rows. The exact scan answers both (the GIN index narrows a filtered one).
            rows = await self._run("search vectors exactly", lambda connection: self._nearest(
                connection, encoded, limit, filter_json, exact=True))
        hits = sorted(((_unescape(row[0]), 1.0 - float(row[1])) for row in rows), key=lambda hit: -hit[1])
        if score_threshold is not None:
            hits = [hit for hit in hits if hit[1] >= score_threshold]
        return hits

    async def _nearest(self, connection: Any, encoded: bytes, limit: int, filter_json: str | None, *,
                       exact: bool) -> list[Any]:
        where = "WHERE attributes @> $3::jsonb " if filter_json is not None else ""
        sql = (f"SELECT block_id, embedding <=> $1 AS distance FROM {self._table} {where}"  # noqa: S608
               "ORDER BY embedding <=> $1 LIMIT $2")
        arguments = (encoded, limit, filter_json) if filter_json is not None else (encoded, limit)
        settings: list[tuple[str, str]] = []
        if exact:
            settings.append(("enable_indexscan", "off"))
        elif limit > self.hnsw_ef_search:
            settings.append(("hnsw.ef_search", str(min(limit, PGVECTOR_EF_SEARCH_MAX))))
        try:
            if not settings:
                return list(await connection.fetch(sql, *arguments))
            async with connection.transaction():
                for name, value in settings:
                    await connection.execute("SELECT set_config($1, $2, true)", name, value)
                return list(await connection.fetch(sql, *arguments))
        except asyncpg.UndefinedTableError:
            self._ndim = None  # another node cleared the index
            return []

    async def remove(self, block_ids: Sequence[str]) -> int:
        ids = [_escape(block_id) for block_id in dict.fromkeys(block_ids)]
        await self._pool()
        if not ids:
            return 0

        async def body(connection: Any) -> int:
            try:
                status = await connection.execute(
                    f"DELETE FROM {self._table} WHERE block_id = ANY($1::text[])", ids)  # noqa: S608
            except asyncpg.UndefinedTableError:
                return 0
            return int(status.rsplit(" ", 1)[-1])

        return await self._run("remove vectors", body)

    async def clear(self) -> None:
        async def body(connection: Any) -> None:
            async with connection.transaction():
                await connection.execute(f"SELECT dimensions FROM {self._state} FOR UPDATE")  # noqa: S608
                await connection.execute(f"DROP TABLE IF EXISTS {self._table}")
                await connection.execute(f"UPDATE {self._state} SET dimensions = NULL")  # noqa: S608

        await self._run("clear the vectors", body)
        self._ndim = None

    async def flush(self) -> None:
        await self._pool()  # every add committed: durable already

    async def count(self) -> int:
        async def body(connection: Any) -> int:
            self._ndim = await connection.fetchval(f"SELECT dimensions FROM {self._state}")  # noqa: S608
            if self._ndim is None:
                return 0
            try:
                return int(await connection.fetchval(f"SELECT count(*) FROM {self._table}"))  # noqa: S608
            except asyncpg.UndefinedTableError:
                return 0

        return await self._run("count vectors", body)

    @property
    def dimensions(self) -> int | None:
        return self._ndim


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


__all__ = [
    "HNSW_EF_CONSTRUCTION",
    "HNSW_EF_SEARCH",
    "HNSW_M",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ForeignSchemaError",
    "Migration",
    "PgVectorIndex",
    "PostgresCredentialsError",
    "PostgresLocationIndex",
    "PostgresMetadataIndex",
    "migration_lock_key",
    "plan_put",
]
