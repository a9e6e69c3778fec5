"""Cross-cutting behaviour as wrappers around any ChunkStore: retry, injected latency, injected faults.

Each wrapper is itself a :class:`ChunkStore` and routes every ABC method through one ``_call`` hook,
so wrappers stack freely (``scan_records``, a generator, delegates directly)::

    store = RetryingChunkStore(FaultInjectingChunkStore(LocalChunkStore(path), {"get_chunk": [3]}))

``flush`` is never retried: after a failed fsync the kernel may have dropped the dirty pages, so a
second fsync could "succeed" without the data (the PostgreSQL fsyncgate lesson). The failure goes up
and the engine stops taking writes.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from maif.errors import BackendError, ConfigError, CredentialsError
from maif.storage.backends.base import ChunkStore

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
    """Retries transient failures with exponential backoff: ``base_delay_s * 2**n``, capped, bounded."""

    def __init__(
        self,
        inner: ChunkStore,
        *,
        attempts_max: int = 4,
        base_delay_s: float = 0.01,
        delay_s_max: float = 1.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if attempts_max < 1 or base_delay_s < 0 or delay_s_max < base_delay_s:
            raise ConfigError("retry needs attempts_max >= 1 and 0 <= base_delay_s <= delay_s_max")
        super().__init__(inner)
        self.attempts_max = attempts_max
        self.base_delay_s = base_delay_s
        self.delay_s_max = delay_s_max
        self.sleep = sleep
        self.retries = 0

    async def _call(self, name: str, *args: Any) -> Any:
        attempt = 1
        while True:
            try:
                return await getattr(self.inner, name)(*args)
            except (BackendError, OSError) as error:
                if name in NEVER_RETRIED or attempt >= self.attempts_max or not is_transient(error):
                    raise
            await self.sleep(min(self.delay_s_max, self.base_delay_s * 2 ** (attempt - 1)))
            attempt += 1
            self.retries += 1


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


def _default_fault(name: str, number: int) -> BaseException:
    return OSError(errno.EIO, f"injected I/O error on {name} call {number}")


__all__ = [
    "TRANSIENT_ERRNOS",
    "FaultInjectingChunkStore",
    "LatencyChunkStore",
    "RetryingChunkStore",
    "WrapperChunkStore",
    "is_transient",
]
