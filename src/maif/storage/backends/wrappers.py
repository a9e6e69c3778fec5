"""Cross-cutting behaviour as wrappers around backends: retry, injected latency, injected faults.

Each chunk-store wrapper is itself a :class:`ChunkStore` and routes every ABC method through one
``_call`` hook, so wrappers stack freely (``scan_records``, a generator, delegates directly)::

    store = RetryingChunkStore(FaultInjectingChunkStore(LocalChunkStore(path), {"get_chunk": [3]}))

:class:`RetryingMetadataIndex` and :class:`RetryingVectorIndex` do the same for the shared index and
vectors of a scaled-out store (PostgreSQL, pgvector, Qdrant). Every retry follows a
:class:`RetryPolicy`: capped exponential backoff with jitter and a bounded number of attempts. (Which
server is up is reported by the server clients themselves, to :mod:`maif.storage.health`: only they
know which call reached which server.)

``flush`` and ``close`` are retried only on :class:`~maif.errors.BackendUnavailableError` (a server
that did not answer: nothing local was harmed). After a failed local fsync the kernel may have dropped
the dirty pages, so a second fsync could "succeed" without the data (the PostgreSQL fsyncgate lesson):
that failure goes up and the engine stops taking writes.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from maif.errors import BackendError, BackendUnavailableError, ConfigError, CredentialsError
from maif.storage.backends.base import ChunkStore, MetadataIndex, VectorIndex
from maif.storage.records import BlockRecord

TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
    }
)
"""OSError kinds worth another attempt. ENOSPC, EIO, EROFS and the like are not: retrying hides them."""

NEVER_RETRIED = frozenset({"flush", "close"})

Sleep = Callable[[float], Awaitable[None]]


def is_retriable(name: str, error: BaseException) -> bool:
    """Worth another attempt of method ``name``: a server that did not answer, always; otherwise a
    transient error (:func:`is_transient`) of any method but ``flush`` and ``close``."""
    if isinstance(error, BackendUnavailableError):
        return True
    return name not in NEVER_RETRIED and is_transient(error)


class RetryPolicy:
    """Capped exponential backoff with jitter: attempt ``n`` failed, wait a uniformly drawn time in
    ``[d/2, d]`` with ``d = min(delay_s_max, base_delay_s * 2**(n-1))``, at most ``attempts_max``
    attempts in all. The jitter keeps nodes that lost a server together from retrying in step.
    """

    def __init__(self, *, attempts_max: int = 4, base_delay_s: float = 0.05, delay_s_max: float = 1.0,
                 jitter: Callable[[], float] = random.random, sleep: Sleep = asyncio.sleep) -> None:
        if attempts_max < 1 or base_delay_s < 0 or delay_s_max < base_delay_s:
            raise ConfigError("retry needs attempts_max >= 1 and 0 <= base_delay_s <= delay_s_max")
        self.attempts_max = attempts_max
        self.base_delay_s = base_delay_s
        self.delay_s_max = delay_s_max
        self.jitter = jitter
        self.sleep = sleep
        self.retries = 0

    def delay_s(self, attempt: int) -> float:
        """How long to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.delay_s_max, self.base_delay_s * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + 0.5 * self.jitter())

    async def run(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """``await call()`` until it succeeds, fails for good, or the attempts run out."""
        attempt = 1
        while True:
            try:
                return await call()
            except (BackendError, OSError) as error:
                if attempt >= self.attempts_max or not is_retriable(name, error):
                    raise
            await self.sleep(self.delay_s(attempt))
            attempt += 1
            self.retries += 1


def is_transient(error: BaseException) -> bool:
    """BackendError (a server or disk hiccup reported by a backend; not refused credentials) or an OSError
    of a transient kind."""
    if isinstance(error, CredentialsError):
        return False  # the same credentials will be refused again
    if isinstance(error, BackendError):
        return True
    return isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS


class WrapperChunkStore(ChunkStore):
    """Delegates every method to ``inner`` through :meth:`_call`; subclasses override the hook."""

    def __init__(self, inner: ChunkStore) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities

    async def _call(self, name: str, *args: Any) -> Any:
        return await getattr(self.inner, name)(*args)

    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        return int(await self._call("put_chunks", chunks))

    async def get_chunk(self, digest: bytes) -> bytes:
        return bytes(await self._call("get_chunk", digest))

    async def has_chunks(self, digests: Sequence[bytes]) -> set[bytes]:
        return set(await self._call("has_chunks", digests))

    async def flush(self) -> None:
        await self._call("flush")

    async def scrub(self, read_data_fraction: float) -> list[str]:
        return list(await self._call("scrub", read_data_fraction))

    async def put_records(self, records: Sequence[bytes]) -> int:
        return int(await self._call("put_records", records))

    async def scan_records(self) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        """The inner store's scan, batch by batch (a generator cannot go through ``_call``)."""
        async for batch in self.inner.scan_records():
            yield batch

    async def stats(self) -> dict[str, int | float]:
        return dict(await self._call("stats"))

    async def close(self) -> None:
        await self._call("close")


class RetryingChunkStore(WrapperChunkStore):
    """Retries what :func:`is_retriable` allows, following a :class:`RetryPolicy`."""

    def __init__(
        self,
        inner: ChunkStore,
        *,
        attempts_max: int = 4,
        base_delay_s: float = 0.01,
        delay_s_max: float = 1.0,
        jitter: Callable[[], float] = random.random,
        sleep: Sleep = asyncio.sleep,
        policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(inner)
        self.policy = policy or RetryPolicy(attempts_max=attempts_max, base_delay_s=base_delay_s,
                                            delay_s_max=delay_s_max, jitter=jitter, sleep=sleep)

    @property
    def retries(self) -> int:
        return self.policy.retries

    async def _call(self, name: str, *args: Any) -> Any:
        return await self.policy.run(name, lambda: getattr(self.inner, name)(*args))

    def __getattr__(self, name: str) -> Any:  # what a backend has beyond the ABC (counters, ...)
        return _inner_attribute(self, name)


class RetryingMetadataIndex(MetadataIndex):
    """A :class:`MetadataIndex` whose calls are retried by ``policy``; anything beyond the ABC (e.g. a
    shared index's ``last_put_rejected``) is the inner index's own."""

    def __init__(self, inner: MetadataIndex, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.capabilities = inner.capabilities

    def __getattr__(self, name: str) -> Any:
        return _inner_attribute(self, name)

    async def put(self, records: Sequence[BlockRecord], *, applied_lsn: int | None = None,
                  newer_only: bool = False) -> None:
        await self.policy.run("put", lambda: self.inner.put(records, applied_lsn=applied_lsn,
                                                            newer_only=newer_only))

    async def get(self, block_id: str) -> BlockRecord | None:
        record: BlockRecord | None = await self.policy.run("get", lambda: self.inner.get(block_id))
        return record

    async def get_many(self, block_ids: Sequence[str]) -> dict[str, BlockRecord]:
        records: dict[str, BlockRecord] = await self.policy.run(
            "get_many", lambda: self.inner.get_many(block_ids))
        return records

    async def query(self, *, agent_id: str | None = None, block_type: str | None = None,
                    since: float | None = None, until: float | None = None, parent: str | None = None,
                    limit: int = 100, after: str | None = None) -> list[BlockRecord]:
        return list(await self.policy.run("query", lambda: self.inner.query(
            agent_id=agent_id, block_type=block_type, since=since, until=until, parent=parent,
            limit=limit, after=after)))

    async def applied_lsn(self) -> int:
        return int(await self.policy.run("applied_lsn", self.inner.applied_lsn))

    async def set_applied_lsn(self, lsn: int) -> None:
        await self.policy.run("set_applied_lsn", lambda: self.inner.set_applied_lsn(lsn))

    async def log_positions(self, log: str) -> dict[int, int]:
        """A shared index's positions in a shared log (:mod:`maif.storage.sharedlog`), retried."""
        inner: Any = self.inner
        return dict(await self.policy.run("log_positions", lambda: inner.log_positions(log)))

    async def set_log_positions(self, log: str, positions: Mapping[int, int]) -> None:
        inner: Any = self.inner
        await self.policy.run("set_log_positions", lambda: inner.set_log_positions(log, positions))

    async def flush(self) -> None:
        await self.policy.run("flush", self.inner.flush)

    async def close(self) -> None:
        await self.inner.close()

    async def count(self, block_type: str | None = None) -> int:
        return int(await self.policy.run("count", lambda: self.inner.count(block_type)))


class RetryingVectorIndex(VectorIndex):
    """A :class:`VectorIndex` whose calls are retried by ``policy``."""

    def __init__(self, inner: VectorIndex, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.capabilities = inner.capabilities

    def __getattr__(self, name: str) -> Any:
        return _inner_attribute(self, name)

    async def add(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, str]]]) -> None:
        await self.policy.run("add", lambda: self.inner.add(items))

    async def search(self, query: np.ndarray, limit: int, *, score_threshold: float | None = None,
                     filters: Mapping[str, str] | None = None) -> list[tuple[str, float]]:
        return list(await self.policy.run("search", lambda: self.inner.search(
            query, limit, score_threshold=score_threshold, filters=filters)))

    async def remove(self, block_ids: Sequence[str]) -> int:
        return int(await self.policy.run("remove", lambda: self.inner.remove(block_ids)))

    async def clear(self) -> None:
        await self.policy.run("clear", self.inner.clear)

    async def flush(self) -> None:
        await self.policy.run("flush", self.inner.flush)

    async def close(self) -> None:
        await self.inner.close()

    async def count(self) -> int:
        return int(await self.policy.run("count", self.inner.count))

    @property
    def dimensions(self) -> int | None:
        return self.inner.dimensions


class LatencyChunkStore(WrapperChunkStore):
    """Adds a fixed delay before each call (per-method overrides), to test behaviour on slow media."""

    def __init__(
        self,
        inner: ChunkStore,
        delay_s: float,
        *,
        per_method_delay_s: Mapping[str, float] | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if delay_s < 0 or any(value < 0 for value in (per_method_delay_s or {}).values()):
            raise ConfigError("injected latency must be non-negative")
        super().__init__(inner)
        self.delay_s = delay_s
        self.per_method_delay_s = dict(per_method_delay_s or {})
        self.sleep = sleep

    async def _call(self, name: str, *args: Any) -> Any:
        await self.sleep(self.per_method_delay_s.get(name, self.delay_s))
        return await getattr(self.inner, name)(*args)


class FaultInjectingChunkStore(WrapperChunkStore):
    """Raises a configured exception on chosen calls of chosen methods, before reaching ``inner``.

    ``faults`` maps a method name to the 1-based call numbers that fail, e.g. {"get_chunk": [2, 3]};
    ``error_factory(name, call_number)`` builds the exception (default: OSError EIO).
    """

    def __init__(
        self,
        inner: ChunkStore,
        faults: Mapping[str, Sequence[int]],
        *,
        error_factory: Callable[[str, int], BaseException] | None = None,
    ) -> None:
        super().__init__(inner)
        self.faults = {name: frozenset(calls) for name, calls in faults.items()}
        self.error_factory = error_factory or _default_fault
        self.calls: dict[str, int] = {}
        self.injected = 0

    async def _call(self, name: str, *args: Any) -> Any:
        number = self.calls.get(name, 0) + 1
        self.calls[name] = number
        if number in self.faults.get(name, frozenset()):
            self.injected += 1
            raise self.error_factory(name, number)
        return await getattr(self.inner, name)(*args)


def _inner_attribute(wrapper: object, name: str) -> Any:
    """An attribute the wrapper lacks, from the wrapped backend (``__getattr__`` runs only for those)."""
    inner = wrapper.__dict__.get("inner")
    if inner is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(inner, name)


def _default_fault(name: str, number: int) -> BaseException:
    return OSError(errno.EIO, f"injected I/O error on {name} call {number}")


__all__ = [
    "TRANSIENT_ERRNOS",
    "FaultInjectingChunkStore",
    "LatencyChunkStore",
    "RetryPolicy",
    "RetryingChunkStore",
    "RetryingMetadataIndex",
    "RetryingVectorIndex",
    "WrapperChunkStore",
    "is_retriable",
    "is_transient",
]
