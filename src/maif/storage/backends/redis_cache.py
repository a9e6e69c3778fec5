"""The shared hot cache on Redis: :class:`RedisSharedCache` (the ``redis_url`` configuration key).

Several MAIF nodes share one Redis as the tier between each process's in-memory HotCache and the warm
store. It is a cache of hints, never a source of truth: the engine checks every value against the
block's digest from the metadata index, so a stale or poisoned entry can never return wrong bytes.

Best effort, always. No call raises to the reader: a Redis error, a timeout, a refused connection or a
closed cache is a miss (``get``) or nothing done (``put``, ``discard``), counted in :meth:`stats`.
Sockets time out quickly (``socket_timeout_s``, default 0.1 s), and after ``failure_threshold``
consecutive failures a circuit breaker opens: calls return at once, without touching the network,
until a capped, jittered delay has passed (``breaker_base_delay_s`` doubling per consecutive trip, up
to ``breaker_max_delay_s``). Then ONE call probes Redis (half-open): success closes the breaker, failure
opens it again for longer. So a dead Redis costs each read nothing after the first few timeouts.

Bounded:
- the server: Redis must run with ``maxmemory`` and ``maxmemory-policy allkeys-lru`` (the service
  script configures both). Without them Redis grows until the host runs out of memory, or, with
  ``noeviction``, refuses writes (counted as errors here).
- per entry: a value above ``value_bytes_max`` is not cached (counted as ``skipped_oversize``).
- connections: at most ``max_connections`` calls in flight per cache (a pool of as many connections);
  a call that finds none free within ``socket_timeout_s`` is skipped (``skipped_busy``): load, not a
  failure, so it does not count towards the breaker.
- optionally in time: ``ttl_s`` sets an expiry on every entry.

Keys are ``<prefix><key>``: one MAIF store per prefix, so several stores can share one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from maif.errors import ConfigError
from maif.storage.backends.base import Capabilities, SharedCache
from maif.storage.health import Health

ResultT = TypeVar("ResultT")

_PREFIX_BYTES_MAX = 256
COMPONENT = "redis"
"""How health reports name this server."""
_log = logging.getLogger(__name__)


def redact_redis_url(url: str) -> str:
    """``scheme://host[:port]/db`` of a Redis URL, without the user and password it may carry."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisSharedCache(SharedCache):
    """A :class:`SharedCache` in Redis (redis-py asyncio), bounded, best effort, with a breaker."""

    capabilities = Capabilities(durable=False, shared_between_processes=True)

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "maif:",
        value_bytes_max: int = 1024 * 1024,
        ttl_s: float | None = None,
        max_connections: int = 16,
        socket_timeout_s: float = 0.1,
        connect_timeout_s: float = 0.2,
        failure_threshold: int = 3,
        breaker_base_delay_s: float = 0.5,
        breaker_max_delay_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        health: Health | None = None,
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"redis_url must be a redis://, rediss:// or unix:// URL, got {redact_redis_url(str(url))!r}"
            )
        if not isinstance(prefix, str) or not prefix or len(prefix.encode()) > _PREFIX_BYTES_MAX:
            raise ConfigError(f"the Redis key prefix must be a non-empty string of at most "
                              f"{_PREFIX_BYTES_MAX} bytes")
        if value_bytes_max < 0 or max_connections < 1 or failure_threshold < 1:
            raise ConfigError("value_bytes_max must be >= 0, max_connections and failure_threshold >= 1")
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError("ttl_s must be positive (or None: no expiry)")
        if not 0 < socket_timeout_s <= 60 or not 0 < connect_timeout_s <= 60:
            raise ConfigError("Redis timeouts must be within (0, 60] seconds")
        if not 0 < breaker_base_delay_s <= breaker_max_delay_s:
            raise ConfigError("the breaker delays need 0 < breaker_base_delay_s <= breaker_max_delay_s")
        self.where = redact_redis_url(url)
        self.prefix = prefix
        self.value_bytes_max = value_bytes_max
        self.ttl_ms = None if ttl_s is None else max(1, int(ttl_s * 1000))
        self.failure_threshold = failure_threshold
        self.breaker_base_delay_s = breaker_base_delay_s
        self.breaker_max_delay_s = breaker_max_delay_s
        self._clock = clock
        self._jitter = jitter
        self._url = url
        self._pool_settings = (max_connections, socket_timeout_s, connect_timeout_s)
        self._client: Any = None
        self._gate: asyncio.Semaphore | None = None  # at most max_connections calls in flight
        self._closed = False
        # the breaker
        self._consecutive_failures = 0
        self._trips_in_a_row = 0
        self._open_until: float | None = None
        self._probing = False
        self._last_error: str | None = None
        self._health = health  # told when the breaker opens ("redis" down) and closes again
        self._counters = {
            "hits": 0, "misses": 0, "errors": 0, "puts": 0, "discards": 0, "skipped_oversize": 0,
            "skipped_busy": 0, "skipped_breaker": 0, "breaker_trips": 0,
        }

    # ---- connection ------------------------------------------------------------------------------

    def _redis(self) -> Any:
        if self._client is None:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            max_connections, socket_timeout_s, connect_timeout_s = self._pool_settings
            pool = BlockingConnectionPool.from_url(
                self._url,
                max_connections=max_connections,
                timeout=socket_timeout_s,  # waiting for a pooled connection (the gate makes it rare)
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=connect_timeout_s,
                retry=Retry(NoBackoff(), 0),  # no hidden retries: the breaker decides when to try again
                health_check_interval=0,
            )
            self._client = Redis(connection_pool=pool)
        return self._client

    # ---- the breaker -----------------------------------------------------------------------------

    def _admit(self) -> bool:
        """Whether a call may go to Redis now (False: the breaker is open, or another call probes)."""
        if self._open_until is None:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True  # half-open: this call is the probe
        return True

    def _succeeded(self) -> None:
        if self._open_until is not None:
            _log.info("Redis cache %s answers again: breaker closed", self.where)
            if self._health is not None:
                self._health.succeeded(COMPONENT)
        self._consecutive_failures = 0
        self._trips_in_a_row = 0
        self._open_until = None
        self._probing = False

    def _failed(self, error: BaseException) -> None:
        self._counters["errors"] += 1
        self._last_error = type(error).__name__
        self._consecutive_failures += 1
        was_probe, self._probing = self._probing, False
        if was_probe or self._consecutive_failures >= self.failure_threshold:
            delay = min(self.breaker_max_delay_s, self.breaker_base_delay_s * (2 ** self._trips_in_a_row))
            delay *= 0.5 + 0.5 * self._jitter()  # jitter: nodes that lost Redis together retry apart
            if self._open_until is None:
                _log.warning("Redis cache %s failing (%s): reads skip it for %.2f s, then probe",
                             self.where, self._last_error, delay)
                if self._health is not None:
                    self._health.failed(COMPONENT, f"Redis cache {self.where} failing ({self._last_error}); "
                                                   "reads go to the lower tier")
            self._open_until = self._clock() + delay
            self._trips_in_a_row += 1
            self._counters["breaker_trips"] += 1

    async def _attempt(self, operation: Callable[[Any], Awaitable[ResultT]]) -> tuple[bool, ResultT | None]:
        """Run one Redis operation under the breaker: (True, result), or (False, None) when skipped or
        failed (counted). Never raises, except cancellation."""
        if self._closed:
            return False, None
        if not self._admit():
            self._counters["skipped_breaker"] += 1
            return False, None
        _, socket_timeout_s, connect_timeout_s = self._pool_settings
        if self._gate is None:
            self._gate = asyncio.Semaphore(self._pool_settings[0])
        try:
            if self._gate.locked():  # every connection is busy: wait a little, then skip (load, not failure)
                await asyncio.wait_for(self._gate.acquire(), socket_timeout_s)
            else:
                await self._gate.acquire()
        except TimeoutError:
            self._probing = False
            self._counters["skipped_busy"] += 1
            return False, None
        try:
            async with asyncio.timeout(connect_timeout_s + 2 * socket_timeout_s):  # a bound on the whole call
                result = await operation(self._redis())
        except asyncio.CancelledError:
            self._probing = False
            raise
        except Exception as error:  # noqa: BLE001 - best effort: every failure is a counted miss
            self._failed(error)
            return False, None
        finally:
            self._gate.release()
        self._succeeded()
        return True, result

    # ---- the SharedCache API ---------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        ok, value = await self._attempt(lambda client: client.get(self.prefix + key))
        if ok and isinstance(value, bytes):
            self._counters["hits"] += 1
            return value
        self._counters["misses"] += 1
        return None

    async def put(self, key: str, value: bytes) -> None:
        if len(value) > self.value_bytes_max:
            self._counters["skipped_oversize"] += 1
            return
        data = bytes(value)
        ok, _ = await self._attempt(lambda client: client.set(self.prefix + key, data, px=self.ttl_ms))
        if ok:
            self._counters["puts"] += 1

    async def discard(self, key: str) -> None:
        ok, _ = await self._attempt(lambda client: client.delete(self.prefix + key))
        if ok:
            self._counters["discards"] += 1

    async def stats(self) -> dict[str, int | float]:
        lookups = self._counters["hits"] + self._counters["misses"]
        return {
            **self._counters,
            "hit_rate": self._counters["hits"] / lookups if lookups else 0.0,
            "breaker_open": int(self._open_until is not None),
            "consecutive_failures": self._consecutive_failures,
            "value_bytes_max": self.value_bytes_max,
        }

    @property
    def last_error(self) -> str | None:
        """The kind of the last failure (an exception class name: never a URL or a secret), or None."""
        return self._last_error

    async def ping(self) -> bool:
        """Whether Redis answers now (for health checks); counted like any other call."""
        ok, answer = await self._attempt(lambda client: client.ping())
        return ok and bool(answer)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
                await client.connection_pool.disconnect()
            except Exception as error:  # noqa: BLE001 - closing a dead connection is not an error
                _log.debug("closing the Redis cache %s: %s", self.where, type(error).__name__)


__all__ = ["RedisSharedCache", "redact_redis_url"]
