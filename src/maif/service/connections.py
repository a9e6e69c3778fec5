"""Connection guards under the ASGI app: a deadline and a size bound for a request's head, and a bound on
the connections one client (peer IP address) holds open.

uvicorn closes a keep-alive connection idle after a response (``timeout_keep_alive``), but not one that
never completes a request head: a client holding idle sockets, or sending its headers a byte at a time,
kept them forever, and every one counted towards ``limit_concurrency`` until /healthz answered 503. The
ASGI app never sees such a connection, so the guard is a subclass of uvicorn's httptools protocol (the
llhttp parser in C; docs/adr/0087 says why not h11 any more):

* a connection whose request head is not complete ``header_timeout_s`` after its first byte (or after
  it opened) is closed;
* a request head larger than ``head_bytes_max`` is answered 431 and the connection closed (the parser
  itself bounds nothing: httptools buffers a header of any length until it ends);
* a connection from a peer that already holds ``connections_per_client_max`` open ones is closed at once.
  The count map has one entry per peer with an open connection, so it is never larger than the number
  of open connections. Behind a reverse proxy every connection comes from the proxy: raise the bound to
  ``max_concurrent_requests`` there (and let the proxy bound its own clients).

The protocol also writes a response's head together with its body (:class:`_HeadWithBody`): one
``send`` system call and one TCP segment per small response instead of two (docs/adr/0089).

The request BODY's deadline is the ASGI middleware's (:mod:`maif.service.middleware`), where the service
reads bodies.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_TOO_LARGE = b"request head too large"


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and uvicorn answers (see send_400_response)."""


class _HeadWithBody:
    """A request cycle's transport that holds the response head (status line and headers, one write by
    uvicorn) until the first body write, then writes both in one call. Only a head that declares a
    non-zero Content-Length, for a method other than HEAD, is held: a body write must follow (a plain
    response sends it in the next message). A chunked stream's head, an interim 100 Continue (written
    before the response starts) and every other write pass straight through; closing writes a held head
    first (an app that fails after starting its response)."""

    __slots__ = ("cycle", "head", "transport")

    def __init__(self, cycle: Any, transport: asyncio.Transport) -> None:
        self.cycle = cycle
        self.transport = transport
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        cycle = self.cycle
        if self.head is not None:
            head, self.head = self.head, None
            cycle.transport = self.transport  # one response per cycle: nothing more to hold
            self.transport.write(head + data)
        elif (
            cycle.response_started
            and not cycle.response_complete
            and cycle.chunked_encoding is False
            and cycle.expected_content_length > 0  # a body write must follow
            and cycle.scope["method"] != "HEAD"  # uvicorn writes no body for HEAD
        ):
            self.head = data
        else:
            self.transport.write(data)

    def close(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.transport.write(head)
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def guarded_protocol(
    header_timeout_s: float, connections_per_client_max: int, head_bytes_max: int
) -> type[asyncio.Protocol]:
    """An httptools protocol class for ``uvicorn.Config(http=...)`` with these bounds (one count map per
    class, so per server)."""
    assert header_timeout_s > 0 and connections_per_client_max > 0 and head_bytes_max > 0
    open_by_peer: Counter[str] = Counter()

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._peer: str | None = None
            self._head_deadline: asyncio.TimerHandle | None = None
            self._in_head = True  # no request head is complete since the connection opened or the last one
            self._head_parsed_bytes = 0  # request line and complete headers of the current head
            self._head_received_bytes = 0  # bytes received while the current head was incomplete
            self._fresh_chunk = True  # no message ended earlier in the chunk being parsed
            self._head_too_large = False

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
            self._fresh_chunk = True
            super().data_received(data)
            # A head still incomplete after this chunk holds all of it, unless a message ended earlier in
            # the chunk (pipelining): then the head's share is unknown, and at most one chunk is missed.
            if self._in_head and self._fresh_chunk and not self.transport.is_closing():
                self._head_received_bytes += len(data)
                if self._head_received_bytes > head_bytes_max:
                    self._refuse_head()

        # ---- parser callbacks (httptools calls them from inside super().data_received) ---------------
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_parsed_bytes = 0
            if self._head_deadline is None:  # the first byte of a next request on a kept-alive connection
                self._start_head_deadline()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count_parsed(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._count_parsed(len(name) + len(value) + 4)  # ": " and CRLF

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_received_bytes = 0
            self._cancel_head_deadline()
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and not self._head_too_large:
                cycle.transport = _HeadWithBody(cycle, self.transport)  # type: ignore[assignment]

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._fresh_chunk = False

        def send_400_response(self, msg: str) -> None:
            if not self._head_too_large:
                super().send_400_response(msg)
            else:
                self._refuse_head()

        # ---- the guards -------------------------------------------------------------------------------
        def _count_parsed(self, count: int) -> None:
            self._head_parsed_bytes += count
            if self._head_parsed_bytes > head_bytes_max:
                self._head_too_large = True
                raise _HeadTooLarge()

        def _refuse_head(self) -> None:
            self._head_too_large = True
            if self.transport.is_closing():
                return
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_HEAD_TOO_LARGE), _HEAD_TOO_LARGE)
            )
            self.transport.close()

        def _start_head_deadline(self) -> None:
            self._cancel_head_deadline()
            self._head_deadline = self.loop.call_later(header_timeout_s, self._on_head_deadline)

        def _cancel_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _on_head_deadline(self) -> None:
            self._head_deadline = None
            if self._in_head and not self.transport.is_closing():
                self.transport.close()

    return GuardedHttpToolsProtocol


__all__ = ["guarded_protocol"]
