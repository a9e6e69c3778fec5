"""Tracing and the metrics token, against a real server process: spans arrive at a real OTLP/HTTP
receiver (protobuf, as a collector gets them), continue the caller's W3C trace, nest the store's work
under the request, and carry no secret; /metrics refuses callers without its own token."""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from server_process import start_server

from maif.errors import ConfigError
from maif.service.tracing import TracingConfig, build_tracer_provider, tracing_requested

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
PAYLOAD = b"a payload that must never appear in a span"


class OTLPReceiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that decodes what it receives."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.raw: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert self.path == "/v1/traces"
                assert self.headers["Content-Type"] == "application/x-protobuf"
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                receiver.requests.append(message)
                receiver.raw.append(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {item.key: _value(item.value) for item in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def _attributes(span: Span) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in span.attributes}


@pytest.fixture(scope="module")
def traced(oidc_issuer: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server exporting to a receiver, after a known sequence of requests, then stopped (the SDK
    flushes its queued spans at shutdown)."""
    receiver = OTLPReceiver()
    metrics_token = secrets.token_urlsafe(24)
    directory = tmp_path_factory.mktemp("traced")
    server = start_server(
        directory,
        oidc_issuer,
        service={
            "log_level": "info",
            "tracing": {"otlp_endpoint": receiver.endpoint, "service_name": "maif-test"},
        },
        environment={"MAIF_METRICS_TOKEN": metrics_token},
    )
    token = oidc_issuer.token("agent-1", "maif:read maif:write")
    outcome: dict[str, Any] = {"receiver": receiver, "token": token, "metrics_token": metrics_token}
    try:
        auth = {"Authorization": f"Bearer {token}"}
        traceparent = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
        outcome["write"] = httpx.post(
            f"{server.url}/v1/blocks",
            json={"id": "traced-block", "payload_base64": base64.b64encode(PAYLOAD).decode()},
            headers={**auth, "traceparent": traceparent, "X-Request-Id": "req-traced-write"},
            timeout=30,
        )
        outcome["read"] = httpx.get(f"{server.url}/v1/blocks/traced-block", headers=auth, timeout=30)
        outcome["forged"] = httpx.get(
            f"{server.url}/v1/stats",
            headers={"Authorization": f"Bearer {token[:-4]}AAAA", "X-Request-Id": "req-forged"},
            timeout=30,
        )
        outcome["metrics_without"] = httpx.get(f"{server.url}/metrics", timeout=30)
        outcome["metrics_api_token"] = httpx.get(f"{server.url}/metrics", headers=auth, timeout=30)
        outcome["metrics_wrong"] = httpx.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {metrics_token}x"}, timeout=30
        )
        outcome["metrics"] = httpx.get(
            f"{server.url}/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=30
        )
        outcome["healthz"] = httpx.get(f"{server.url}/healthz", timeout=30)
    finally:
        outcome["exit_code"] = server.stop()
    outcome["log"] = (directory / f"server-{server.port}.log").read_text()
    try:
        yield outcome
    finally:
        receiver.close()


def _server_span(spans: list[tuple[dict[str, Any], Span]], request_id: str) -> Span:
    for _, span in spans:
        if _attributes(span).get("maif.request_id") == request_id:
            assert span.kind == Span.SPAN_KIND_SERVER
            return span
    raise AssertionError(f"no server span for {request_id}")


def test_spans_continue_the_callers_trace_and_nest_the_stores_work(traced: dict[str, Any]) -> None:
    assert traced["write"].status_code == 201, traced["write"].text
    assert traced["exit_code"] == 0
    spans = traced["receiver"].spans()
    assert spans, "no span reached the OTLP receiver"
    resource = spans[0][0]
    assert resource["service.name"] == "maif-test" and resource["service.version"]
    server_span = _server_span(spans, "req-traced-write")
    assert server_span.trace_id.hex() == TRACE_ID
    assert server_span.parent_span_id.hex() == CALLER_SPAN_ID
    assert server_span.name == "POST /v1/blocks"
    attributes = _attributes(server_span)
    assert attributes["http.route"] == "/v1/blocks"
    assert attributes["http.response.status_code"] == 201
    assert attributes["maif.agent_id"] == "agent-1"
    children = {
        span.name: span
        for _, span in spans
        if span.trace_id == server_span.trace_id and span.parent_span_id == server_span.span_id
    }
    assert {"maif.authenticate", "maif.authorize", "maif.storage.write"} <= set(children)
    assert _attributes(children["maif.authorize"])["maif.decision"] == "allow"
    write = _attributes(children["maif.storage.write"])
    assert write["maif.bytes"] == len(PAYLOAD) and write["maif.lsn"] >= 1
    for child in children.values():  # children lie within the request
        assert server_span.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= server_span.end_time_unix_nano


def test_a_request_without_traceparent_starts_its_own_trace(traced: dict[str, Any]) -> None:
    spans = traced["receiver"].spans()
    reads = [span for _, span in spans if span.name == "GET /v1/blocks/{block_id}"]
    assert len(reads) == 1
    assert reads[0].trace_id.hex() != TRACE_ID and not reads[0].parent_span_id
    assert _attributes(reads[0])["http.response.status_code"] == 200


def test_a_refused_token_is_traced_as_a_denial_without_the_token(traced: dict[str, Any]) -> None:
    assert traced["forged"].status_code == 401
    spans = traced["receiver"].spans()
    refused = _server_span(spans, "req-forged")
    assert _attributes(refused)["http.response.status_code"] == 401
    authenticate = [
        span
        for _, span in spans
        if span.parent_span_id == refused.span_id and span.name == "maif.authenticate"
    ]
    assert len(authenticate) == 1 and _attributes(authenticate[0])["maif.decision"] == "deny"
    everything = b"".join(traced["receiver"].raw)
    token = traced["token"]
    for secret in (token.encode(), token.split(".")[2].encode(), PAYLOAD, base64.b64encode(PAYLOAD)):
        assert secret not in everything


def test_access_log_lines_carry_the_trace_id(traced: dict[str, Any]) -> None:
    lines = [json.loads(line) for line in traced["log"].splitlines() if line.startswith("{")]
    write = [line for line in lines if line.get("request_id") == "req-traced-write"]
    assert len(write) == 1 and write[0]["trace_id"] == TRACE_ID and len(write[0]["span_id"]) == 16


def test_metrics_need_their_own_token_when_one_is_configured(traced: dict[str, Any]) -> None:
    for refused in ("metrics_without", "metrics_api_token", "metrics_wrong"):
        response = traced[refused]
        assert response.status_code == 401, refused
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "maif_" not in response.text
    assert traced["metrics"].status_code == 200
    assert (
        'maif_http_requests_total{method="POST",route="/v1/blocks",status="201"} 1.0'
        in traced["metrics"].text
    )
    assert traced["healthz"].status_code == 200  # probes stay open


def test_tracing_is_on_only_when_configured() -> None:
    assert not tracing_requested(None, {})
    assert tracing_requested(TracingConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces"), {})
    assert tracing_requested(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_requested(
        TracingConfig(otlp_endpoint="http://127.0.0.1:4318/v1/traces"), {"OTEL_SDK_DISABLED": "true"}
    )
    assert build_tracer_provider(None, {}) is None
    with pytest.raises(ConfigError, match="sample_ratio"):
        build_tracer_provider(
            TracingConfig(otlp_endpoint="http://127.0.0.1:1/v1/traces", sample_ratio=2.0), {}
        )


def test_tracing_asked_for_without_the_sdk_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the otel extra were absent
    with pytest.raises(ConfigError, match=r"maif\[otel\]"):
        build_tracer_provider(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})


def test_a_short_metrics_token_is_refused(tmp_path: Path) -> None:
    import asyncio

    from maif.security.manager import create_maif_security_manager
    from maif.service.app import create_app
    from maif.storage.engine import create_maif_storage

    async def attempt() -> None:
        storage = await create_maif_storage({"data_dir": str(tmp_path / "data")})
        manager = create_maif_security_manager({}, data_dir=tmp_path / "security", master_key=b"k" * 32)
        try:
            with pytest.raises(ConfigError, match="16 characters"):
                create_app(storage, manager, metrics_token="short")
        finally:
            manager.close()
            await storage.close()

    asyncio.run(attempt())


def test_connections_beyond_the_limit_get_503_instead_of_queueing(oidc_issuer: Any, tmp_path: Path) -> None:
    import socket
    import time

    server = start_server(tmp_path / "limited", oidc_issuer, service={"max_concurrent_requests": 4})
    held: list[socket.socket] = []
    try:
        for _ in range(4):
            held.append(socket.create_connection(("127.0.0.1", server.port)))
        time.sleep(0.2)  # let the server register them
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 503
        for connection in held:
            connection.close()
        held.clear()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/healthz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover once the connections closed"
            time.sleep(0.05)
    finally:
        for connection in held:
            connection.close()
        server.stop()


def test_an_out_of_range_concurrency_limit_is_a_config_error(tmp_path: Path) -> None:
    from maif.cli.serve import _service_section

    config = tmp_path / "maif.json"
    config.write_text(json.dumps({"service": {"max_concurrent_requests": 0}}))
    with pytest.raises(ConfigError, match="max_concurrent_requests"):
        _service_section(config)


def test_without_a_provider_spans_are_free_no_ops_and_with_one_they_record() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from maif.service.tracing import DisabledTracer, service_tracer

    disabled = service_tracer(None)  # no SDK installed globally in this process
    assert isinstance(disabled, DisabledTracer)
    with disabled.start_as_current_span("anything") as span:
        span.set_attribute("ignored", 1)
        assert span is trace.INVALID_SPAN and not span.is_recording()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with service_tracer(provider).start_as_current_span("recorded") as span:
        span.set_attribute("kept", 1)
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "recorded" and finished.attributes == {"kept": 1}
    provider.shutdown()
