"""Pure ASGI middleware: request ids, JSON access logs, request metrics, the JSON body cap, the body
read deadline, and the request's SERVER span (OpenTelemetry, continued from the caller's
``traceparent``; a no-op unless tracing is configured, see :mod:`maif.service.tracing`).

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed request and response bodies pass through chunk by
chunk: the middleware counts bytes, it never buffers them.

Every handler reads its request body through the ``receive`` this middleware hands down, so the body's
deadlines are kept here (:class:`BodyDeadlines`, docs/adr/0063):

* per read: while the body is incomplete, each wait for its next chunk may last at most ``read_s``; a
  client that stalls longer is cut off;
* in total: the time spent waiting for the body's chunks may reach ``total_s`` plus one second per
  ``bytes_per_s_min`` bytes received, so a client that drip-feeds (a byte a second, never stalling long
  enough for the per-read deadline) is cut off after about ``total_s``, while an honest upload at least
  that fast is never cut, however large. Only waiting counts: time the service itself spends (writing
  parts, say) is not charged to the client.

A client cut off is answered 408 (problem ``body-timeout``) and the connection is closed. This holds
for JSON bodies too: FastAPI turns any error raised while it reads a JSON body into a 400 "error parsing
the body", so once a deadline has passed the middleware replaces whatever the app answers with the 408.
The request head's deadline is :mod:`maif.service.connections`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import msgspec
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from maif import limits
from maif.errors import MAIFError
from maif.security.audit import AuditBarrier, audit_barrier
from maif.service.metrics import ServiceMetrics
from maif.service.problems import PROBLEM_MEDIA_TYPE
from maif.service.tracing import DisabledTracer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LOG = logging.getLogger("maif.service.access")
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9._-]{{1,{limits.service_request_id_bytes_max}}}$")

# (method, path) pairs whose handlers stream the body and enforce their own caps.
STREAMING_ENDPOINTS = frozenset({("POST", "/v1/blocks"), ("POST", "/v1/verify")})
_PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_METRIC_CHILDREN_CACHED_MAX = 1024
# A request id the caller did not give: 64 random bits per process, then a 64-bit count (32 hex digits,
# unique per process and, with overwhelming odds, across processes), without a random read per request.
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_REQUEST_NUMBERS = itertools.count()
_encode_json = msgspec.json.Encoder().encode


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class BodyDeadlines:
    """How long a client may take to send a request body (see the module docstring)."""

    read_s: float
    total_s: float
    bytes_per_s_min: int

    def __post_init__(self) -> None:
        assert self.read_s > 0 and self.total_s > 0 and self.bytes_per_s_min > 0


class ServiceMiddleware:
    """The service's one ASGI layer: assigns a request id, caps JSON bodies, keeps the body deadlines,
    records metrics, the SERVER span and one JSON log line per request, and holds each response's first
    byte until the audit entries of the request's decisions are durable.

    The audit part: the gate writes each decision's audit frame before it answers, but inside this
    middleware's :func:`~maif.security.audit.audit_barrier` it does not wait for the sync: the sync
    (shared with every other request's entries) runs while the request does its own work, and is awaited
    here, before the response starts. If the audit log cannot make them durable the response is replaced
    by a 503: no caller ever learns an outcome whose audit record might be lost (ADR 0023). Problems this
    layer answers itself (413, 408) wait for the sync too.

    One layer rather than two (observability, then audit durability): every layer is another coroutine
    frame and another ``send`` closure per message on the service's one loop thread (docs/adr/0087).
    """

    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, tracer: trace.Tracer, body_deadlines: BodyDeadlines
    ) -> None:
        self.app = app
        self.body_deadlines = body_deadlines
        self.metrics = metrics
        self.tracer = tracer
        self.tracing = not isinstance(tracer, DisabledTracer)
        # The labelled metric children of each (method, route, status) seen, so a request does not look
        # its labels up four times (docs/adr/0089); bounded, and routes are the app's own or "unmatched".
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_of(scope)
        scope["maif.request_id"] = request_id
        state: dict[str, Any] = {
            "status": 500,
            "bytes_in": 0,
            "bytes_out": 0,
            "started": False,
            "body_timeout": None,  # the detail of a body deadline that passed
            "replaced": False,  # the app's answer is dropped: a 503 or a 408 went instead
        }
        body_cap = (
            None
            if (scope["method"], scope["path"]) in STREAMING_ENDPOINTS
            else (limits.service_json_body_bytes_max)
        )
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        with self.tracer.start_as_current_span(
            f"{scope['method']} request",
            context=propagate.extract(_propagation_carrier(scope)) if self.tracing else None,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "url.path": scope["path"],
                "maif.request_id": request_id,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span, audit_barrier() as barrier:
            try:
                if body_cap is not None and _declared_length(scope) > body_cap:
                    await _send_too_large(send, request_id, body_cap, state)
                    return
                await self.app(
                    scope,
                    _counting_receive(receive, state, body_cap, self.body_deadlines),
                    _tracking_send(send, state, request_id, barrier),
                )
                await barrier.wait()  # decisions made after the response started (none today)
            except BodyTooLarge:
                await _settle(barrier)
                if not state["started"]:
                    await _send_too_large(send, request_id, body_cap or 0, state)
            except BodyTimeout as timeout:
                await _settle(barrier)
                if not state["started"]:
                    await _send_body_timeout(send, request_id, timeout.detail, state)
            except BaseException:
                await _settle(barrier)  # whoever answers the failure, answer it after the sync
                raise
            finally:
                self.metrics.in_flight.dec()
                _finish_span(span, scope, state)
                self._record(scope, state, time.perf_counter() - started, request_id, span)

    def _record(
        self, scope: Scope, state: dict[str, Any], elapsed_s: float, request_id: str, span: trace.Span
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        requests, duration, bytes_in, bytes_out = self._children_of(method, route, state["status"])
        requests.inc()
        duration.observe(elapsed_s)
        bytes_in.inc(state["bytes_in"])
        bytes_out.inc(state["bytes_out"])
        if not _LOG.isEnabledFor(logging.INFO):
            return
        _LOG.info(
            _encode_json(
                {
                    "event": "request",
                    "time": time.time(),
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "status": state["status"],
                    "duration_s": round(elapsed_s, 6),
                    "bytes_in": state["bytes_in"],
                    "bytes_out": state["bytes_out"],
                    "agent_id": scope.get("maif.agent_id"),
                    **_trace_ids(span),
                }
            ).decode()
        )

    def _children_of(self, method: str, route: str, status: int) -> tuple[Any, Any, Any, Any]:
        children = self._children.get((method, route, status))
        if children is None:
            metrics = self.metrics
            children = (
                metrics.requests.labels(method, route, str(status)),
                metrics.request_duration.labels(method, route),
                metrics.request_bytes.labels(route),
                metrics.response_bytes.labels(route),
            )
            if len(self._children) < _METRIC_CHILDREN_CACHED_MAX:
                self._children[(method, route, status)] = children
        return children


def _propagation_carrier(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1"): bytes(value).decode("latin-1")
        for name, value in scope.get("headers", ())
        if name in _PROPAGATION_HEADERS
    }


def _finish_span(span: trace.Span, scope: Scope, state: dict[str, Any]) -> None:
    if not span.is_recording():
        return
    route = getattr(scope.get("route"), "path", None)
    span.update_name(f"{scope['method']} {route}" if route else f"{scope['method']} unmatched")
    if route:
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", state["status"])
    span.set_attribute("http.request.body.size", state["bytes_in"])
    span.set_attribute("http.response.body.size", state["bytes_out"])
    agent_id = scope.get("maif.agent_id")
    if agent_id is not None:
        span.set_attribute("maif.agent_id", agent_id)
    if state["status"] >= 500:
        span.set_status(Status(StatusCode.ERROR))


def _trace_ids(span: trace.Span) -> dict[str, str]:
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}


def _request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _REQUEST_ID.match(text):
                return text
    return f"{_REQUEST_ID_PREFIX}{next(_REQUEST_NUMBERS):016x}"


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _counting_receive(
    receive: Receive, state: dict[str, Any], cap: int | None, deadlines: BodyDeadlines
) -> Receive:
    body_complete = False
    waited_s = 0.0

    async def counted() -> Message:
        nonlocal body_complete, waited_s
        if body_complete:
            return await receive()  # after the body, only a disconnect comes: no deadline on waiting for it
        total_s = deadlines.total_s + state["bytes_in"] / deadlines.bytes_per_s_min
        wait_s = min(deadlines.read_s, total_s - waited_s)
        started = time.monotonic()
        try:
            if wait_s <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait_s):  # a timer, not wait_for's extra task per read
                message = await receive()
        except TimeoutError:
            state["body_timeout"] = (
                f"no request body data for {deadlines.read_s:g} s"
                if wait_s == deadlines.read_s
                else f"request body not received within {deadlines.total_s:g} s "
                f"(plus 1 s per {deadlines.bytes_per_s_min} bytes received)"
            )
            raise BodyTimeout(state["body_timeout"]) from None
        finally:
            waited_s += time.monotonic() - started
        if message["type"] == "http.request":
            state["bytes_in"] += len(message.get("body", b""))
            body_complete = not message.get("more_body", False)
            if cap is not None and state["bytes_in"] > cap:
                raise BodyTooLarge()
        return message

    return counted


async def _settle(barrier: AuditBarrier) -> None:
    with contextlib.suppress(MAIFError):  # the failure being answered is the one reported
        await barrier.wait()


def _tracking_send(send: Send, state: dict[str, Any], request_id: str, barrier: AuditBarrier) -> Send:
    """The app's ``send``: the response starts only once the request's audit entries are durable (else a
    503 goes instead), a 408 replaces the app's answer once a body deadline passed (FastAPI makes a 400 of
    it for JSON bodies), and the status, the bytes and the request id header are recorded."""

    async def tracked(message: Message) -> None:
        if message["type"] == "http.response.start":
            if state["started"]:  # a 503 or a 408 went instead of the app's answer
                return
            if barrier.pending:
                try:
                    await barrier.wait()
                except MAIFError as error:
                    state["replaced"] = True
                    detail = f"the audit log could not record this request's decisions: {error.message}"
                    title = "Service Unavailable"
                    await _send_problem(send, request_id, 503, "unavailable", title, detail, state)
                    return
            if state["body_timeout"] is not None:
                state["replaced"] = True
                await _send_body_timeout(send, request_id, state["body_timeout"], state)
                return
            state["status"] = message["status"]
            state["started"] = True
            headers = list(message.get("headers", []))
            headers.append((b"x-request-id", request_id.encode("ascii")))
            message["headers"] = headers
        elif message["type"] == "http.response.body":
            if state["replaced"]:
                return
            state["bytes_out"] += len(message.get("body", b""))
        await send(message)

    return tracked


async def _send_too_large(send: Send, request_id: str, cap: int, state: dict[str, Any]) -> None:
    detail = f"request body is larger than {cap} bytes"
    await _send_problem(send, request_id, 413, "too-large", "Content Too Large", detail, state)


async def _send_body_timeout(send: Send, request_id: str, detail: str, state: dict[str, Any]) -> None:
    await _send_problem(send, request_id, 408, "body-timeout", "Request Timeout", detail, state)


async def _send_problem(
    send: Send, request_id: str, status: int, slug: str, title: str, detail: str, state: dict[str, Any]
) -> None:
    """A problem answer, then the connection closes (the rest of the request body is never read)."""
    body = json.dumps(
        {
            "type": f"urn:maif:problem:{slug}",
            "title": title,
            "status": status,
            "detail": detail,
            "instance": f"urn:maif:request:{request_id}",
        }
    ).encode()
    state["status"], state["started"] = status, True
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"x-request-id", request_id.encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
    state["bytes_out"] += len(body)


def configure_json_logging(level: str = "INFO") -> None:
    """One JSON object per line on stderr for the service's loggers (access log and errors)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_JSONFormatter())
    for name in ("maif.service", "maif.service.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "maif.service.access" and message.startswith("{"):
            return message
        entry: dict[str, Any] = {
            "event": "log",
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


__all__ = [
    "STREAMING_ENDPOINTS",
    "BodyDeadlines",
    "ServiceMiddleware",
    "configure_json_logging",
]
