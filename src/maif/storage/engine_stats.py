"""The engine's statistics: a bounded latency window and the ``get_stats`` dictionary.

Keys of ``get_stats()`` (units last):
    writes_total, reads_total, deletes_total, writes_per_s (since open), uptime_s,
    compactions_total, compaction_bytes_reclaimed_total, repairs (what open or repair() rebuilt),
    conflicts_total (writes of this node another node's version of the block id kept out, ADR 0070),
    shared_cache (the SharedCache counters, None without one), shared_cache_rejects (entries whose
    bytes did not hash to the block's digest: stale or poisoned, never served),
    ack_latency_ms_p50 / ack_latency_ms_p99 / ack_latency_samples (the most recent calls, bounded),
    durability ("durable" | "bulk_unsafe"), wal_fsync (False in bulk_unsafe: NOT crash safe),
    wal_depth (records acknowledged but not yet applied), wal_last_lsn, wal_applied_lsn,
    wal_checkpoint_lsn, wal_segments, wal_syncs_total, wal_groups_total, wal_bytes_written_total,
    wal_failure / applier_failure (None when healthy), unapplied_bytes / unapplied_bytes_max,
    cache_hit_rate, cache (the HotCache counters), compression_ratio, dedup_ratio,
    bytes_hot / bytes_warm / bytes_cold, blocks, vectors, chunks (the ChunkStore counters).
With a Kafka-protocol log (ADR 0073) also: kafka_topic, kafka_group, kafka_partitions_assigned (this
node's share), kafka_records_applied_total / kafka_records_skipped_total (by this node's consumer),
kafka_skipped_reasons (the latest, bounded), kafka_pending_records (this node's writes not yet in the
shared index), kafka_produce_groups_total, kafka_applier_failure; the wal_* keys then count this node's
sequence numbers (wal_depth: its writes not yet applied). With a NATS JetStream log (ADR 0084) the
same under nats_* (nats_stream, nats_partitions_owned instead of the topic, group and assignment,
nats_publish_groups_total).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from maif.errors import BackendUnavailableError

if TYPE_CHECKING:
    from maif.storage.engine import MAIFStorage

T = TypeVar("T")


class LatencyReservoir:
    """The last ``capacity`` latencies in a fixed ring: O(1) to add, percentiles on demand."""

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self._samples_ns = [0] * capacity
        self._capacity = capacity
        self._count = 0

    def add_ns(self, latency_ns: int) -> None:
        self._samples_ns[self._count % self._capacity] = latency_ns
        self._count += 1

    def percentile_ms(self, fraction: float) -> float | None:
        """The ``fraction`` (0..1) percentile of the window in milliseconds, None when empty."""
        filled = min(self._count, self._capacity)
        if filled == 0:
            return None
        ordered = sorted(self._samples_ns[:filled])
        rank = min(filled - 1, max(0, round(fraction * filled + 0.5) - 1))
        return ordered[rank] / 1e6

    def __len__(self) -> int:
        return min(self._count, self._capacity)


async def collect_stats(storage: MAIFStorage) -> dict[str, Any]:
    backends = storage._backends
    uptime_s = max(time.monotonic() - storage._opened_at, 1e-9)
    chunk_stats: dict[str, Any] = {}
    if not storage._closed:
        chunk_stats = dict(await _unless_unavailable(backends.chunks.stats(), {}))
    cache_stats = dict(backends.cache.stats())
    wal = storage._wal
    committer = storage._committer
    stats: dict[str, Any] = {
        "writes_total": storage._writes_total,
        "reads_total": storage._reads_total,
        "deletes_total": storage._deletes_total,
        "conflicts_total": int(getattr(backends.index, "conflicts_total", 0)),
        "shared_cache": dict(await backends.shared_cache.stats()) if backends.shared_cache else None,
        "shared_cache_rejects": storage._shared_cache_rejects,
        "compactions_total": storage._compactions_total,
        "compaction_bytes_reclaimed_total": storage._bytes_reclaimed_total,
        "repairs": list(storage.repairs),
        "writes_per_s": storage._writes_total / uptime_s,
        "uptime_s": uptime_s,
        "ack_latency_ms_p50": storage._latency.percentile_ms(0.50),
        "ack_latency_ms_p99": storage._latency.percentile_ms(0.99),
        "ack_latency_samples": len(storage._latency),
        "durability": storage.config.durability,
        "wal_fsync": storage.config.durability == "durable",
        "wal_depth": storage._committed_lsn - storage._applied_lsn,
        "wal_last_lsn": storage._committed_lsn,
        "wal_applied_lsn": storage._applied_lsn,
        "wal_checkpoint_lsn": storage._checkpoint_lsn,
        "wal_segments": wal.segment_count() if wal else 0,
        "wal_syncs_total": wal.syncs_total if wal else 0,
        "wal_groups_total": committer.groups_total if committer else 0,
        "wal_bytes_written_total": wal.bytes_written_total if wal else 0,
        "wal_failure": wal.failure if wal else None,
        "applier_failure": storage._applier_failure,
        "unapplied_bytes": storage._inflight_bytes,
        "unapplied_bytes_max": storage._inflight_bytes_max,
        "cache_hit_rate": float(cache_stats.get("hit_rate", 0.0)),
        "cache": cache_stats,
        "compression_ratio": float(chunk_stats.get("compression_ratio", 1.0)),
        "dedup_ratio": float(chunk_stats.get("dedup_ratio", 1.0)),
        "bytes_hot": int(cache_stats.get("bytes", 0)),
        "bytes_warm": int(chunk_stats.get("bytes_warm", chunk_stats.get("stored_bytes", 0))),
        "bytes_cold": int(chunk_stats.get("bytes_cold", 0)),
        "packs_moved_cold_total": storage._packs_moved_cold,
        "tier_failure": storage._tier_failure,
        "chunks": chunk_stats,
    }
    if storage._shared_log is not None:
        stats.update(storage._shared_log.stats())
    stats["health"] = storage.health()
    if not storage._closed:  # from the servers, when they answer (stats serve /metrics while degraded)
        for key, counting in (("blocks", backends.index.count), ("vectors", backends.vectors.count)):
            value = await _unless_unavailable(counting(), None)
            if value is not None:
                stats[key] = value
    return stats


async def _unless_unavailable(pending: Awaitable[T], fallback: T) -> T:
    """``await pending``, or ``fallback`` when a server does not answer."""
    try:
        return await pending
    except BackendUnavailableError:
        return fallback


__all__ = ["LatencyReservoir", "collect_stats"]
