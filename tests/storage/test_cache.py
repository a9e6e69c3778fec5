"""The hot cache: conformance, thread safety, and a refused configuration."""

from __future__ import annotations

import threading

import pytest

from maif.errors import ConfigError
from maif.storage.backends.base import HotCache
from maif.storage.cache import LRUHotCache
from maif.testing.conformance import HotCacheTests


class TestLRUHotCache(HotCacheTests):
    def make_cache(self, capacity_bytes: int) -> HotCache:
        return LRUHotCache(capacity_bytes)


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ConfigError):
        LRUHotCache(-1)


def test_zero_capacity_caches_nothing() -> None:
    cache = LRUHotCache(0)
    cache.put("k", b"")
    assert cache.get("k") is None


def test_concurrent_threads_keep_the_bound_and_the_counts() -> None:
    cache = LRUHotCache(50_000)
    lookups_per_thread = 2000

    def worker(number: int) -> None:
        for i in range(lookups_per_thread):
            key = f"{number}-{i % 50}"
            if cache.get(key) is None:
                cache.put(key, bytes(500))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats["bytes"] <= 50_000
    assert stats["hits"] + stats["misses"] == 4 * lookups_per_thread
