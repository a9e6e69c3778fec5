"""OpenTelemetry tracing of the service, when configured (docs/adr/0062).

The service is instrumented with the OpenTelemetry API only (a required, dependency-free package): one
SERVER span per request, continued from the caller's W3C ``traceparent``, and child spans for what a
request waits on (authentication, the gate, spooling, store writes, reads, search, export,
verification). With no SDK configured every span is a no-op.

Tracing is ON when the config's ``service.tracing`` section names an ``otlp_endpoint``, or when the
standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables are set (and
``OTEL_SDK_DISABLED`` is not ``true``). Spans are then exported over OTLP/HTTP (protobuf) by the SDK's
batch processor; that needs the ``otel`` extra (``pip install 'maif[otel]'``), and asking for tracing
without it is a ConfigError, never a silent no-op.

What spans carry: the HTTP method, route TEMPLATE, status, request id, the authenticated agent id and
block types and sizes. Never tokens, never payloads, never metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
from opentelemetry import trace

from maif.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider

TRACER_NAME = "maif.service"
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class TracingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``service.tracing`` config section."""

    otlp_endpoint: str | None = None
    """Full OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces (else the OTEL_* variables)."""
    service_name: str = "maif"
    sample_ratio: float = 1.0
    """Fraction of new traces recorded (parent-based: a caller's sampled flag is honoured)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra headers for the collector (e.g. its API key)."""
    timeout_s: float = 10.0


def tracing_requested(config: TracingConfig | None, environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if config is not None and config.otlp_endpoint:
        return True
    return any(environ.get(name) for name in _ENDPOINT_VARIABLES)


def build_tracer_provider(
    config: TracingConfig | None, environ: Mapping[str, str] = os.environ
) -> SDKTracerProvider | None:
    """An SDK tracer provider exporting over OTLP/HTTP, or None when tracing is not requested. The
    caller owns it: ``provider.shutdown()`` flushes the spans still queued."""
    if not tracing_requested(config, environ):
        return None
    config = config or TracingConfig()
    if not 0.0 <= config.sample_ratio <= 1.0:
        raise ConfigError(f"service.tracing.sample_ratio must be within [0, 1], not {config.sample_ratio}")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as error:
        raise ConfigError(
            "tracing is configured but the OpenTelemetry SDK is not installed: "
            "pip install 'maif[otel]' (or unset the OTEL_EXPORTER_OTLP_* variables)"
        ) from error
    from maif import __version__

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    exporter_options: dict[str, Any] = {"timeout": config.timeout_s}
    if config.otlp_endpoint:
        exporter_options["endpoint"] = config.otlp_endpoint
    if config.headers:
        exporter_options["headers"] = dict(config.headers)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(**exporter_options)))
    return provider


def decision_span(
    tracer: trace.Tracer, outcomes: Any, stage: str, attributes: Mapping[str, Any] | None = None
) -> _DecisionSpan:
    """A ``maif.<stage>`` span around an allow/deny decision (authenticate, authorize): any exception is
    a denial. Records the decision on the span and counts it in ``outcomes`` (labels: stage, outcome)."""
    span_context = tracer.start_as_current_span(f"maif.{stage}", attributes=attributes)
    return _DecisionSpan(span_context, outcomes, stage)


class _DecisionSpan:
    """:func:`decision_span`'s context manager, as a class rather than a generator: it runs twice per
    request (authenticate, authorize), and the generator's machinery and the counter's label look-up were
    several per cent of the service's loop thread (docs/adr/0089). An exception that is not an
    ``Exception`` (a cancellation) passes through uncounted, as before."""

    __slots__ = ("_context", "_outcomes", "_span", "_stage")
    _children: ClassVar[dict[tuple[Any, str, str], Any]] = {}

    def __init__(self, context: Any, outcomes: Any, stage: str) -> None:
        self._context = context
        self._outcomes = outcomes
        self._stage = stage

    def __enter__(self) -> trace.Span:
        span: trace.Span = self._context.__enter__()
        self._span = span
        return span

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        if error is None:
            self._span.set_attribute("maif.decision", "allow")
            self._context.__exit__(None, None, None)
            self._count("allow")
            return
        if isinstance(error, Exception):
            self._count("deny")
            self._span.set_attribute("maif.decision", "deny")
            self._span.set_attribute("maif.error", type(error).__name__)
        self._context.__exit__(kind, error, traceback)

    def _count(self, outcome: str) -> None:
        key = (self._outcomes, self._stage, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._outcomes.labels(self._stage, outcome)
            if len(self._children) < _DECISION_CHILDREN_CACHED_MAX:
                self._children[key] = child
        child.inc()


_DECISION_CHILDREN_CACHED_MAX = 64


class _Disabled:
    """The span context of a request when tracing is off: entering it returns the invalid span, whose
    setters are no-ops. (The API's own no-op tracer still costs several microseconds per span through
    its proxy and context-manager layers: about a tenth of the service's event-loop time.)"""

    def __enter__(self) -> trace.Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_DISABLED = _Disabled()


class DisabledTracer(trace.NoOpTracer):
    """The tracer used when no tracer provider is configured: spans cost one method call."""

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return _DISABLED


def service_tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    """The service's tracer from ``provider``; when None, from the process's global provider if an SDK
    was installed there by the time the app is created, else a :class:`DisabledTracer`."""
    from maif import __version__

    if provider is None:
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            return DisabledTracer()
        return trace.get_tracer(TRACER_NAME, __version__)
    return provider.get_tracer(TRACER_NAME, __version__)


__all__ = [
    "TRACER_NAME",
    "DisabledTracer",
    "TracingConfig",
    "build_tracer_provider",
    "decision_span",
    "service_tracer",
    "tracing_requested",
]
