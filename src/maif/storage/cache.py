"""The hot tier: an in-process LRU cache bounded in bytes, with hit and miss counts.

Every operation is O(1): an ``OrderedDict`` keeps recency order (move_to_end / popitem). The bound counts
the value bytes plus a fixed per-entry overhead for the key and bookkeeping, so a flood of tiny entries
cannot grow memory past the bound either. A value larger than the whole capacity is not cached.
Thread-safe: the engine's applier and readers may share one cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from maif.errors import ConfigError
from maif.storage.backends.base import HotCache

ENTRY_OVERHEAD_BYTES = 128
"""Charged per entry on top of the key and value sizes (dict slot, node, bytes object headers)."""


class LRUHotCache(HotCache):
    """Least-recently-used cache holding at most ``capacity_bytes`` (values, keys and overhead)."""

    def __init__(self, capacity_bytes: int) -> None:
        if not isinstance(capacity_bytes, int) or capacity_bytes < 0:
            raise ConfigError(
                f"cache capacity must be a non-negative number of bytes, got {capacity_bytes!r}"
            )
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + ENTRY_OVERHEAD_BYTES

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: str, value: bytes) -> None:
        value = bytes(value)
        cost = self._cost(key, value)
        with self._lock:
            self._remove(key)
            if cost > self.capacity_bytes:
                return
            while self._bytes + cost > self.capacity_bytes:
                evicted_key, evicted_value = self._entries.popitem(last=False)
                self._bytes -= self._cost(evicted_key, evicted_value)
                self._evictions += 1
            self._entries[key] = value
            self._bytes += cost
            assert 0 <= self._bytes <= self.capacity_bytes

    def discard(self, key: str) -> None:
        with self._lock:
            self._remove(key)

    def _remove(self, key: str) -> None:
        value = self._entries.pop(key, None)
        if value is not None:
            self._bytes -= self._cost(key, value)

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            lookups = self._hits + self._misses
            return {
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": self._hits / lookups if lookups else 0.0,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "capacity_bytes": self.capacity_bytes,
                "evictions": self._evictions,
            }


__all__ = ["ENTRY_OVERHEAD_BYTES", "LRUHotCache"]
