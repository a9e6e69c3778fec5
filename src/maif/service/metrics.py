"""Prometheus metrics of the HTTP service and its store (``maif_`` prefix, base units, no per-id labels).

Naming follows the Prometheus conventions: base units in the name (``_seconds``, ``_bytes``), counters
typed as counters and exposed with ``_total``, gauges without it. No ``*_created`` series: they double
the series count and the start time is ``process_start_time_seconds``'s business
(``disable_created_metrics``, process-wide, at import).

Each app owns a :class:`ServiceMetrics` with its own registry (several apps in one process, as in the
tests, never share counters). Request metrics are labelled by the route TEMPLATE (``/v1/blocks/{block_id}``),
never by a concrete path, so cardinality is bounded by the number of routes. Storage figures come from
``storage.get_stats()`` when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from maif import limits

_LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

disable_created_metrics()  # type: ignore[no-untyped-call]

# get_stats() key -> (metric name, help). Gauges are levels; counters count since the store opened and
# are exposed as counters (the name here is without ``_total``, which the exposition adds).
_STORAGE_GAUGES = {
    "wal_depth": ("maif_storage_wal_depth_records", "Acknowledged log records not yet applied."),
    "unapplied_bytes": ("maif_storage_unapplied_bytes", "Bytes acknowledged or queued but not applied."),
    "cache_hit_rate": ("maif_storage_cache_hit_ratio", "Hot cache hit ratio (0..1)."),
    "compression_ratio": ("maif_storage_compression_ratio", "Stored bytes over raw bytes."),
    "dedup_ratio": ("maif_storage_dedup_ratio", "Deduplication ratio of stored chunks."),
    "bytes_hot": ("maif_storage_hot_bytes", "Bytes in the hot cache."),
    "bytes_warm": ("maif_storage_warm_bytes", "Bytes in the warm tier (local packs)."),
    "bytes_cold": ("maif_storage_cold_bytes", "Bytes in the cold tier."),
    "blocks": ("maif_storage_blocks", "Blocks in the metadata index."),
}
_STORAGE_COUNTERS = {
    "writes_total": ("maif_storage_writes", "Blocks written since the store opened."),
    "reads_total": ("maif_storage_reads", "Blocks read since the store opened."),
    "deletes_total": ("maif_storage_deletes", "Blocks deleted since the store opened."),
    "conflicts_total": ("maif_storage_conflicts", "Write conflicts between nodes since the store opened."),
    "wal_syncs_total": ("maif_storage_wal_syncs", "Log syncs (fdatasync) since the store opened."),
    "wal_groups_total": ("maif_storage_wal_groups", "Group commits since the store opened."),
    "wal_bytes_written_total": ("maif_storage_wal_written_bytes", "Bytes appended to the write-ahead log."),
    "compactions_total": ("maif_storage_compactions", "Compactions run since the store opened."),
    "compaction_bytes_reclaimed_total": (
        "maif_storage_compaction_reclaimed_bytes", "Bytes compaction reclaimed since the store opened."
    ),
    "packs_moved_cold_total": ("maif_storage_packs_moved_cold", "Packs moved to the cold tier."),
}
for _log, _shown in (("kafka", "Kafka"), ("nats", "NATS")):  # a shared log (ADR 0073, 0084), if any
    _STORAGE_GAUGES[f"{_log}_pending_records"] = (
        f"maif_storage_{_log}_pending_records",
        f"This node's acknowledged writes in the {_shown} log not yet in the shared index.")
    _STORAGE_COUNTERS[f"{_log}_records_applied_total"] = (
        f"maif_storage_{_log}_records_applied", f"{_shown} log records this node applied.")
    _STORAGE_COUNTERS[f"{_log}_records_skipped_total"] = (
        f"maif_storage_{_log}_records_skipped", f"{_shown} log records skipped: not MAIF log records.")
# TaskRunner.figures() key -> (metric name, help, counter?), summed over the service's task agents.
_AGENT_FIGURES = {
    "agents": ("maif_agents", "Task agents running in the service.", False),
    "queue_depth": ("maif_agent_queue_depth_tasks", "Tasks queued, not yet started.", False),
    "in_flight": ("maif_agent_tasks_in_flight", "Tasks being run.", False),
    "submitted": ("maif_agent_tasks_submitted", "Tasks accepted.", True),
    "completed": ("maif_agent_tasks_completed", "Tasks finished with their blocks stored.", True),
    "retries": ("maif_agent_task_retries", "Task attempts retried after a failure.", True),
    "dead_lettered": ("maif_agent_tasks_dead_lettered", "Tasks given up on (dead letters).", True),
    "rejected_full": ("maif_agent_tasks_rejected_full", "Submissions refused: the queue was full.", True),
}


class _FiguresCollector(Collector):
    """Gauges and counters mirrored from a figures dict read at scrape time (the store's last
    ``get_stats()``, the task agents' sums): values another object counts, typed for what they are."""

    def __init__(
        self, table: dict[str, tuple[str, str, bool]], figures: Callable[[], dict[str, Any]]
    ) -> None:
        self._table = table
        self._figures = figures

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        figures = self._figures()
        for key, (name, help_text, counter) in self._table.items():
            value = figures.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            family = CounterMetricFamily if counter else GaugeMetricFamily
            yield family(name, help_text, value=float(value))


class _DegradedCollector(Collector):
    """``maif_storage_degraded_seconds_total{component}`` (a counter: seconds each server has been
    unavailable since the store opened) and ``maif_storage_degraded{component}`` (1 while it is),
    from the last storage figures observed."""

    def __init__(self) -> None:
        self.health: dict[str, Any] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        seconds = CounterMetricFamily("maif_storage_degraded_seconds",
                                      "Seconds a server the store uses has been unavailable since it opened.",
                                      labels=("component",))
        now = GaugeMetricFamily("maif_storage_degraded", "1 while the server is unavailable.",
                                labels=("component",))
        down = self.health.get("degraded") or {}
        for component, total in sorted((self.health.get("degraded_seconds_total") or {}).items()):
            seconds.add_metric([component], float(total))
            now.add_metric([component], 1.0 if component in down else 0.0)
        yield seconds
        yield now


class ServiceMetrics:
    """The service's Prometheus collectors, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "maif_http_requests", "HTTP requests answered.", ("method", "route", "status"), registry=registry
        )
        self.request_duration = Histogram(
            "maif_http_request_duration_seconds",
            "Time from request start to the end of the response body.",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = Gauge("maif_http_requests_in_flight", "Requests being served.", registry=registry)
        self.request_bytes = Counter(
            "maif_http_request_body_bytes", "Request body bytes received.", ("route",), registry=registry
        )
        self.response_bytes = Counter(
            "maif_http_response_body_bytes", "Response body bytes sent.", ("route",), registry=registry
        )
        self.auth_outcomes = Counter(
            "maif_auth_decisions",
            "Authentication and authorisation outcomes.",
            ("stage", "outcome"),
            registry=registry,
        )
        self.auth_cache_lookups = Counter(
            "maif_auth_cache_lookups", "Token context cache lookups.", ("result",), registry=registry
        )
        self.blocks_written = Counter(
            "maif_service_blocks_written",
            "Blocks written through the service (parts included).",
            ("kind",),
            registry=registry,
        )
        self.block_bytes_written = Counter(
            "maif_service_block_bytes_written", "Payload bytes written.", registry=registry
        )
        self.block_bytes_read = Counter(
            "maif_service_block_bytes_read", "Payload bytes served.", registry=registry
        )
        self.writes_in_flight = Gauge(
            "maif_service_writes_in_flight", "Block writes being received or made durable.", registry=registry
        )
        self.write_latency = Histogram(
            "maif_service_write_duration_seconds",
            "Time for the store to acknowledge one block write (durable).",
            buckets=_LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._storage_figures: dict[str, Any] = {}
        storage_table = {key: (*entry, False) for key, entry in _STORAGE_GAUGES.items()}
        storage_table.update({key: (*entry, True) for key, entry in _STORAGE_COUNTERS.items()})
        registry.register(_FiguresCollector(storage_table, lambda: self._storage_figures))
        self._agent_figures: Callable[[], dict[str, Any]] = dict
        registry.register(_FiguresCollector(_AGENT_FIGURES, lambda: self._agent_figures()))
        self.degraded = _DegradedCollector()
        registry.register(self.degraded)
        self.ready = Gauge("maif_service_ready", "1 while the service accepts requests.", registry=registry)
        self.audit_entries = Gauge(
            "maif_audit_log_entries",
            "Entries in the whole audit chain, archived segments included (one per gate decision).",
            registry=registry,
        )
        self.audit_segment = Gauge(
            "maif_audit_log_segment_number",
            "Number of the audit segment being written (segments 0..N exist unless archived).",
            registry=registry,
        )
        self.audit_segments_max = Gauge(
            "maif_audit_log_segments_max",
            "Segment files one audit directory may hold; archive old segments (maif audit archive) first.",
            registry=registry,
        )
        self.audit_segments_max.set(limits.audit_segments_max)

    def observe_storage(self, stats: dict[str, Any]) -> None:
        self.degraded.health = dict(stats.get("health") or {})
        self._storage_figures = dict(stats)

    def observe_agents(self, figures: Callable[[], dict[str, Any]]) -> None:
        """Read the task agents' summed figures (``TaskRunner.figures``) at every scrape."""
        self._agent_figures = figures

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["ServiceMetrics"]
