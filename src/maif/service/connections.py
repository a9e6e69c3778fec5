"""Connection guards under the ASGI app: a deadline for a request's head, and a bound on the connections
one client (peer IP address) holds open.

uvicorn closes a keep-alive connection idle after a response (``timeout_keep_alive``), but not one that
never completes a request head: a client holding idle sockets, or sending its headers a byte at a time,
kept them forever, and every one counted towards ``limit_concurrency`` until /healthz answered 503. The
ASGI app never sees such a connection, so the guard is a subclass of uvicorn's h11 protocol:

* a connection whose request head is not complete ``header_timeout_s`` after its first byte (or after
  it opened) is closed;
* a connection from a peer that already holds ``connections_per_client_max`` open ones is closed at once.
  The count map has one entry per peer with an open connection, so it is never larger than the number
  of open connections. Behind a reverse proxy every connection comes from the proxy: raise the bound to
  ``max_concurrent_requests`` there (and let the proxy bound its own clients).

The request BODY's deadline is the ASGI middleware's (:mod:`maif.service.middleware`), where the service
reads bodies.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(header_timeout_s: float, connections_per_client_max: int) -> type[asyncio.Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with these bounds (one count map per class,
    so per server)."""
    assert header_timeout_s > 0 and connections_per_client_max > 0
    open_by_peer: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._peer: str | None = None
            self._head_deadline: asyncio.TimerHandle | None = None
            self._head_cycle: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = self.client[0] if self.client else "unknown"
            if open_by_peer[peer] >= connections_per_client_max:
                transport.close()  # over this peer's bound: not counted, never read
                return
            open_by_peer[peer] += 1
            self._peer = peer
            self._start_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_deadline()
            if self._peer is not None:
                open_by_peer[self._peer] -= 1
                if open_by_peer[self._peer] <= 0:
                    del open_by_peer[self._peer]
                self._peer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # The first bytes of a next request on a kept-alive connection start its own deadline.
            if self.conn.their_state is h11.IDLE and (
                self._head_deadline is None or self._head_cycle is not self.cycle
            ):
                self._start_head_deadline()

        def _start_head_deadline(self) -> None:
            self._cancel_head_deadline()
            self._head_cycle = self.cycle
            self._head_deadline = self.loop.call_later(header_timeout_s, self._on_head_deadline)

        def _cancel_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _on_head_deadline(self) -> None:
            self._head_deadline = None
            # A request began since the deadline was set (a new cycle), or its head is complete: not late.
            if self.cycle is not self._head_cycle or self.conn.their_state is not h11.IDLE:
                return
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


__all__ = ["guarded_protocol"]
