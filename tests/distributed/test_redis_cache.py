"""RedisSharedCache against a real Redis (started by the suite): round trips, prefixes, bounds, and the
best-effort contract when Redis is down, hung, refuses us, or comes back."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from maif.storage.backends.redis_cache import RedisSharedCache, redact_redis_url
from maif.testing.conformance import random_bytes, run


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def raw_keys(redis_url: str, pattern: str) -> list[bytes]:
    import redis.asyncio as redis

    client = redis.from_url(redis_url)
    try:
        return sorted([key async for key in client.scan_iter(match=pattern)])
    finally:
        await client.aclose()


def test_round_trip_discard_and_counters(redis_url: str, fresh_redis_prefix: str) -> None:
    async def scenario() -> None:
        cache = RedisSharedCache(redis_url, prefix=fresh_redis_prefix)
        try:
            assert await cache.get("a") is None
            value = random_bytes(50_000, 1)
            await cache.put("a", value)
            await cache.put("empty", b"")
            assert await cache.get("a") == value
            assert await cache.get("empty") == b""
            await cache.discard("a")
            await cache.discard("a")
            assert await cache.get("a") is None
            stats = await cache.stats()
            assert (stats["hits"], stats["misses"], stats["puts"], stats["errors"]) == (2, 2, 2, 0)
            assert stats["breaker_open"] == 0
            assert await cache.ping()
        finally:
            await cache.close()
            await cache.close()
        # a closed cache is a miss and a no-op, never an error for the reader
        assert await cache.get("empty") is None
        await cache.put("late", b"x")
        await cache.discard("late")

    run(scenario())


def test_prefixes_isolate_stores(redis_url: str, fresh_redis_prefix: str) -> None:
    async def scenario() -> None:
        one = RedisSharedCache(redis_url, prefix=f"{fresh_redis_prefix}one:")
        two = RedisSharedCache(redis_url, prefix=f"{fresh_redis_prefix}two:")
        try:
            await one.put("k", b"of one")
            await two.put("k", b"of two")
            assert await one.get("k") == b"of one" and await two.get("k") == b"of two"
            await one.discard("k")
            assert await one.get("k") is None and await two.get("k") == b"of two"
            stored = await raw_keys(redis_url, f"{fresh_redis_prefix}*")
            assert stored == [f"{fresh_redis_prefix}two:k".encode()]
        finally:
            await one.close()
            await two.close()

    run(scenario())


def test_oversized_values_are_skipped_and_ttl_is_set(redis_url: str, fresh_redis_prefix: str) -> None:
    async def scenario() -> None:
        import redis.asyncio as redis

        cache = RedisSharedCache(redis_url, prefix=fresh_redis_prefix, value_bytes_max=1000, ttl_s=30)
        raw = redis.from_url(redis_url)
        try:
            await cache.put("at-limit", bytes(1000))
            await cache.put("above", bytes(1001))
            assert await cache.get("at-limit") == bytes(1000)
            assert await cache.get("above") is None
            stats = await cache.stats()
            assert stats["skipped_oversize"] == 1 and stats["puts"] == 1
            assert 0 < await raw.pttl(f"{fresh_redis_prefix}at-limit") <= 30_000
        finally:
            await cache.close()
            await raw.aclose()

    run(scenario())


def test_a_closed_port_gives_misses_and_the_breaker_stops_trying(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        cache = RedisSharedCache(f"redis://127.0.0.1:{closed_port()}/0", prefix="p:", failure_threshold=3,
                                 breaker_base_delay_s=1.0, breaker_max_delay_s=8.0, clock=clock,
                                 jitter=lambda: 1.0)
        try:
            for number in range(100):
                assert await cache.get(f"k{number}") is None
                await cache.put(f"k{number}", b"v")
            stats = await cache.stats()
            assert stats["errors"] == 3  # only the first three calls reached for the network
            assert stats["skipped_breaker"] == 197 and stats["misses"] == 100
            assert stats["breaker_open"] == 1 and stats["breaker_trips"] == 1
            # after the delay one call probes; it fails, the breaker opens for twice as long
            clock.now += 1.0
            assert await cache.get("probe") is None
            assert (await cache.stats())["errors"] == 4
            clock.now += 1.5
            assert await cache.get("still-closed") is None
            assert (await cache.stats())["errors"] == 4  # 2 s delay now: not yet
            for _ in range(10):  # the delay doubles per trip up to its cap of 8 s
                clock.now += 8.0
                await cache.get("probe")
            assert (await cache.stats())["breaker_trips"] == 12
            clock.now += 7.9
            await cache.get("capped")
            assert (await cache.stats())["breaker_trips"] == 12
        finally:
            await cache.close()

    run(scenario())
    assert "redis://127.0.0.1" in caplog.text  # one warning when the breaker opened, with the address


def test_a_hung_redis_costs_short_timeouts_then_nothing() -> None:
    """A server that accepts connections and never answers: each of the first calls waits one socket
    timeout, then the breaker skips Redis entirely."""

    async def scenario() -> None:
        held: list[asyncio.StreamWriter] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # never answers

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cache = RedisSharedCache(f"redis://127.0.0.1:{port}/0", prefix="p:", socket_timeout_s=0.1,
                                 failure_threshold=3, breaker_base_delay_s=60.0, breaker_max_delay_s=60.0)
        try:
            started = time.monotonic()
            results = [await cache.get(f"k{number}") for number in range(200)]
            elapsed = time.monotonic() - started
            assert results == [None] * 200
            stats = await cache.stats()
            assert stats["errors"] == 3 and stats["skipped_breaker"] == 197 and stats["breaker_open"] == 1
            assert elapsed < 10.0  # three short timeouts, not two hundred (a loose bound for a busy host)
        finally:
            await cache.close()
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_wrong_credentials_are_misses_and_the_password_never_shows(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    secret = "not-the-password-4711"
    wrong = redis_url.replace(f":{parts.password}@", f":{secret}@") if parts.password else \
        redis_url.replace("redis://", f"redis://maif:{secret}@")
    caplog.set_level(logging.DEBUG)

    async def scenario() -> dict[str, Any]:
        cache = RedisSharedCache(wrong, prefix="p:")
        try:
            assert await cache.get("k") is None
            await cache.put("k", b"v")
            stats = await cache.stats()
            assert stats["errors"] >= 1
            assert cache.last_error is not None and secret not in cache.last_error
            return stats
        finally:
            await cache.close()

    stats = run(scenario())
    assert secret not in caplog.text and secret not in repr(stats)
    assert secret not in redact_redis_url(wrong)
    if parts.password:
        assert parts.password not in caplog.text


def test_concurrency_is_bounded_by_max_connections(redis_url: str, fresh_redis_prefix: str) -> None:
    async def scenario() -> None:
        cache = RedisSharedCache(redis_url, prefix=fresh_redis_prefix, max_connections=2,
                                 socket_timeout_s=5.0)
        try:
            await cache.put("k", b"v")
            results = await asyncio.gather(*(cache.get("k") for _ in range(200)))
            stats = await cache.stats()
            # Every call is a hit, skipped for want of a connection, or (on a loaded machine) a call
            # that ran out of time: a miss counted as an error, never an exception.
            assert results.count(b"v") == stats["hits"] > 0
            assert stats["hits"] + stats["skipped_busy"] + stats["errors"] == 200
            pool = cache._client.connection_pool
            assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
        finally:
            await cache.close()

    run(scenario())


def test_a_killed_redis_is_survived_and_used_again_when_it_returns(
    private_servers: Callable[..., Any]
) -> None:
    servers = private_servers("redis")
    url = servers.env()["MAIF_STORAGE_REDIS_URL"]
    clock = FakeClock()

    async def scenario() -> None:
        cache = RedisSharedCache(url, prefix="node:", failure_threshold=3, breaker_base_delay_s=1.0,
                                 breaker_max_delay_s=4.0, clock=clock, jitter=lambda: 1.0)
        try:
            await cache.put("k", b"before")
            assert await cache.get("k") == b"before"

            await asyncio.to_thread(servers.kill, "redis")  # SIGKILL mid-run
            for number in range(50):
                assert await cache.get(f"k{number}") is None  # misses, never an exception
                await cache.put(f"k{number}", b"lost")
            stats = await cache.stats()
            assert stats["errors"] == 3 and stats["breaker_open"] == 1

            await asyncio.to_thread(servers.start, "redis")
            clock.now += 4.0  # past the breaker's delay: the next call probes, succeeds, closes it
            await cache.put("k", b"after")
            stats = await cache.stats()
            assert stats["breaker_open"] == 0 and stats["consecutive_failures"] == 0
            assert await cache.get("k") == b"after"
        finally:
            await cache.close()

    run(scenario())


def test_bad_configuration_is_refused() -> None:
    from maif.errors import ConfigError

    for arguments in [
        {"url": "http://127.0.0.1:6379"},
        {"url": "redis://127.0.0.1:6379", "prefix": ""},
        {"url": "redis://127.0.0.1:6379", "ttl_s": 0},
        {"url": "redis://127.0.0.1:6379", "max_connections": 0},
    ]:
        with pytest.raises(ConfigError):
            RedisSharedCache(**arguments)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as caught:
        RedisSharedCache("http://user:hunter2@127.0.0.1:6379")
    assert "hunter2" not in str(caught.value)
