"""Which servers a store depends on are unavailable now, since when, and for how long in all.

The retrying wrappers (:mod:`maif.storage.backends.wrappers`) report every call's outcome here: a
:class:`~maif.errors.BackendUnavailableError` that survived its retries marks its component down; a
call that succeeds marks the wrapper's components up again. The engine reads it for ``health()``,
``/healthz`` and the ``maif_storage_degraded_seconds_total`` metric; the Redis cache, which never
raises, is asked directly (its breaker open is "down").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outage:
    """One component unavailable: since when (monotonic seconds) and the last failure's message."""

    component: str
    since: float
    reason: str


class Health:
    """Per-component availability, fed by the retrying wrappers; cheap enough to call on every request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down: dict[str, Outage] = {}
        self._past_s: dict[str, float] = {}  # seconds of outages that ended, per component
        self.outages_total: dict[str, int] = {}

    def failed(self, component: str, reason: str) -> None:
        """``component`` did not answer (after retries); an outage starts unless one is running."""
        outage = self._down.get(component)
        self._down[component] = Outage(component, outage.since if outage else self._clock(), reason)
        if outage is None:
            self.outages_total[component] = self.outages_total.get(component, 0) + 1

    def succeeded(self, *components: str) -> None:
        """A call that needed ``components`` succeeded: their outages (if any) end now."""
        for component in components:
            outage = self._down.pop(component, None)
            if outage is not None:
                self._past_s[component] = self._past_s.get(component, 0.0) + self._clock() - outage.since

    def down(self) -> dict[str, Outage]:
        """The components unavailable now."""
        return dict(self._down)

    def degraded_seconds(self) -> dict[str, float]:
        """Total seconds each component has been unavailable since the store opened (running outages
        included), for every component that ever was."""
        now = self._clock()
        totals = dict(self._past_s)
        for component, outage in self._down.items():
            totals[component] = totals.get(component, 0.0) + now - outage.since
        return totals


__all__ = ["Health", "Outage"]
