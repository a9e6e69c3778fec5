"""Prometheus metrics of the distributed task queue, served by `maif worker --metrics-port`.

The collector renders the last cluster snapshot (:func:`maif.agents.queue.cluster_stats`, refreshed by
the worker every few seconds): scraping never waits on the broker. Per-worker series are labelled by
worker id, bounded by ``limits.cluster_workers_max`` (the heartbeat bucket's bound).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_QUEUE_GAUGES = {
    "queue_depth": ("maif_queue_depth_tasks", "Tasks stored in the queue (waiting or delivered, not acked)."),
    "pending": ("maif_queue_pending_tasks", "Tasks not yet delivered to any worker."),
    "ack_pending": ("maif_queue_ack_pending_tasks", "Tasks delivered and not yet acknowledged."),
    "redelivered": ("maif_queue_redelivered_tasks", "Tasks currently delivered more than once."),
    "dead_letters": ("maif_queue_dead_letters", "Dead letters kept in the dead-letter stream."),
}
_WORKER_GAUGES = {
    "in_flight": ("maif_worker_in_flight_tasks", "Tasks a worker holds (pulled, not acknowledged)."),
    "completed": ("maif_worker_completed_tasks", "Tasks a worker completed since it started."),
    "failed_attempts": ("maif_worker_failed_attempts", "Failed task attempts since the worker started."),
    "dead_lettered": ("maif_worker_dead_lettered_tasks", "Tasks a worker dead-lettered since it started."),
    "redeliveries": ("maif_worker_redelivered_tasks", "Redelivered tasks a worker received."),
    "tasks_per_s": ("maif_worker_tasks_per_second", "Tasks completed per second (last interval)."),
}


class ClusterCollector(Collector):
    """Renders ``snapshot`` (a cluster_stats() document, replaced wholesale by its owner)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.snapshot
        if not snapshot:
            return
        for key, (name, documentation) in _QUEUE_GAUGES.items():
            yield GaugeMetricFamily(name, documentation, value=float(snapshot.get(key, 0)))
        yield GaugeMetricFamily("maif_queue_workers", "Workers with a live heartbeat.",
                                value=float(snapshot.get("workers", 0)))
        for key, (name, documentation) in _WORKER_GAUGES.items():
            family = GaugeMetricFamily(name, documentation, labels=["worker"])
            for beat in snapshot.get("per_worker", []):
                family.add_metric([str(beat.get("worker_id", ""))], float(beat.get(key, 0) or 0))
            yield family


def cluster_registry() -> tuple[CollectorRegistry, ClusterCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = ClusterCollector()
    registry.register(collector)
    return registry, collector


__all__ = ["ClusterCollector", "cluster_registry"]
