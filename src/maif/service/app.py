"""The HTTP service: FastAPI routes under /v1 over one store and one security manager.

    app = create_app(storage, security_manager)          # then serve with uvicorn (maif serve)

Every /v1 route authenticates the bearer token (:mod:`maif.service.auth`) and asks the gate
(:meth:`SecurityManager.authorize`, audited) about the resource it touches; refusals are RFC 9457
problem+json (:mod:`maif.service.problems`). /healthz and /readyz are unauthenticated (probes); they and
/metrics carry no block data, no ids and no secrets. /metrics is not anonymous by default: it asks for
its own bearer token when one is configured (``metrics_token``; ``maif serve`` reads MAIF_METRICS_TOKEN),
and otherwise for an API bearer token whose caller may read the store's statistics (as GET /v1/stats;
each such scrape is audited). Route names, request counts and store sizes tell an outsider what runs
and how busy it is, so anonymous metrics must be asked for by name (``unsafe_anonymous_metrics``).
Request bodies that are not
small JSON go through the upload spool (:mod:`maif.service.spool`); requests are traced when a tracer
provider is configured (:mod:`maif.service.tracing`). The app never owns the store, the manager or the
tracer provider: whoever created them closes them after the server stops (``maif serve`` does, after
draining in-flight writes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import blake3
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from opentelemetry import trace
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse

from maif import limits
from maif.errors import (
    AttestationError,
    AuthenticationError,
    ConfigError,
    FormatError,
    LimitExceededError,
    MAIFError,
    TokenError,
)
from maif.format.block import MAIFBlock
from maif.security.attestation import HardwareAttestation
from maif.security.audit import AuditEntry, SignedCheckpoint
from maif.security.audit_chain import SegmentedAuditLog, read_chain_page
from maif.security.manager import SecurityManager
from maif.security.policy import Action, Resource
from maif.security.trust import Approval, KeyPossessionProof, SecurityContext
from maif.service import schemas
from maif.service.auth import SESSION_HEADER, Authenticator
from maif.service.blocks import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    BlockService,
    IdempotencyCache,
    Written,
    check_id,
    digest_hex,
    header_text,
    location_of,
    resource_of_block,
    streamed_info,
)
from maif.service.metrics import ServiceMetrics
from maif.service.middleware import ASGIApp, BodyDeadlines, Receive, Scope, Send, ServiceMiddleware
from maif.service.problems import (
    PROBLEM_MEDIA_TYPE,
    ServiceProblem,
    on_client_disconnect,
    on_http_exception,
    on_maif_error,
    on_service_problem,
    on_unexpected,
    on_validation_error,
)
from maif.service.spool import Spool
from maif.service.tasks import TaskRunner
from maif.service.tracing import decision_span, service_tracer
from maif.storage.engine import MAIFStorage

API_VERSION = "1.0.0"
DEFAULT_BODY_READ_TIMEOUT_S = 30.0
DEFAULT_BODY_TOTAL_TIMEOUT_S = 60.0
DEFAULT_BODY_BYTES_PER_S_MIN = 8 * 1024
_LOG = logging.getLogger("maif.service")
_DOWNLOAD_CHUNK_BYTES = 1024 * 1024
_HEADER_NUMBER_DIGITS_MAX = 19  # a Range or Content-Length beyond 2**63 is refused, not converted
_bearer_scheme = HTTPBearer(
    auto_error=False, description="An OAuth 2.0 access token (JWT) from a trusted issuer."
)

_PROBLEM = {"content": {PROBLEM_MEDIA_TYPE: {"schema": {"type": "object"}}}}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"description": text, **_PROBLEM}
    for status, text in (
        (400, "Malformed request"),
        (401, "Missing, forged or expired token"),
        (403, "The gate refused this caller on this resource"),
        (413, "Too large"),
        (422, "Invalid request"),
        (503, "Unavailable"),
    )
}
_UPLOAD_REFUSALS: dict[int | str, dict[str, Any]] = {
    **_REFUSALS,
    503: {"description": "Unavailable, or too many uploads spooled at once (Retry-After)", **_PROBLEM},
    507: {"description": "Too little free disk space to spool this upload", **_PROBLEM},
}


@dataclass
class ServiceState:
    """Everything the routes share; one per app."""

    storage: MAIFStorage
    manager: SecurityManager
    metrics: ServiceMetrics
    authenticator: Authenticator
    blocks: BlockService
    export_key: Ed25519PrivateKey
    spool: Spool
    tasks: TaskRunner
    tracer: trace.Tracer
    metrics_token: str | None = None
    unsafe_anonymous_metrics: bool = False
    idempotency: IdempotencyCache = field(default_factory=IdempotencyCache)
    draining: bool = False

    @property
    def export_public_key_hex(self) -> str:
        return self.export_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    async def drain(self) -> None:
        """Refuse new work (readyz says so) and wait for every write in flight to be acknowledged."""
        self.draining = True
        self.metrics.ready.set(0)
        await self.blocks.wait_writes_drained()
        await self.tasks.stop()


def create_app(
    storage: MAIFStorage,
    security_manager: SecurityManager,
    *,
    export_signing_key: Ed25519PrivateKey | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
    tracer_provider: trace.TracerProvider | None = None,
    metrics_token: str | None = None,
    unsafe_anonymous_metrics: bool = False,
    body_read_timeout_s: float = DEFAULT_BODY_READ_TIMEOUT_S,
    body_total_timeout_s: float = DEFAULT_BODY_TOTAL_TIMEOUT_S,
    body_bytes_per_s_min: int = DEFAULT_BODY_BYTES_PER_S_MIN,
) -> FastAPI:
    """The service over ``storage`` and ``security_manager``. ``export_signing_key`` signs exported
    .maif files (a fresh key when None: exports are then verifiable with the key GET /v1/stats names);
    ``spool_dir`` holds upload and export spool files (default: <data_dir>/service-spool; one app per
    directory: files a previous process left there are removed); EMBEDDING blocks of another dimension
    than ``embedding_dimensions`` are refused (see blocks.py); spans go to ``tracer_provider`` (the
    process's global provider when None: no-op unless an OpenTelemetry SDK was installed there);
    ``metrics_token``, when set, is the bearer token GET /metrics requires (otherwise an API token that
    may read the store's statistics, or nothing with ``unsafe_anonymous_metrics``: warned about); a
    request body that sends nothing for ``body_read_timeout_s`` while incomplete, or is not complete after
    ``body_total_timeout_s`` of waiting plus 1 s per ``body_bytes_per_s_min`` bytes received, is answered
    408 (maif.service.middleware)."""
    if metrics_token is not None and len(metrics_token) < 16:
        raise ConfigError("the metrics token must be at least 16 characters")
    deadlines = (("body_read_timeout_s", body_read_timeout_s), ("body_total_timeout_s", body_total_timeout_s))
    for name, seconds in deadlines:
        if not 0 < seconds < float("inf"):
            raise ConfigError(f"{name} must be a positive number of seconds")
    if type(body_bytes_per_s_min) is not int or body_bytes_per_s_min < 1:
        raise ConfigError("body_bytes_per_s_min must be a positive whole number of bytes per second")
    if unsafe_anonymous_metrics and metrics_token is None:
        _LOG.warning("GET /metrics is served to anyone (unsafe_anonymous_metrics)")
    metrics = ServiceMetrics()
    tracer = service_tracer(tracer_provider)
    spool = Spool(
        Path(spool_dir) if spool_dir is not None else Path(storage.config.data_dir) / "service-spool"
    )
    spool.sweep()
    blocks = BlockService(storage, security_manager, metrics, spool, tracer, embedding_dimensions)
    tasks = TaskRunner(storage, blocks)
    state = ServiceState(
        storage=storage,
        manager=security_manager,
        metrics=metrics,
        authenticator=Authenticator(security_manager),
        blocks=blocks,
        tasks=tasks,
        export_key=export_signing_key or Ed25519PrivateKey.generate(),
        spool=spool,
        tracer=tracer,
        metrics_token=metrics_token,
        unsafe_anonymous_metrics=unsafe_anonymous_metrics,
    )
    metrics.observe_agents(tasks.figures)
    metrics.ready.set(1)
    app = _build_app()
    app.state.service = state
    body_deadlines = BodyDeadlines(body_read_timeout_s, body_total_timeout_s, body_bytes_per_s_min)
    app.add_middleware(  # every response, problems included, waits for its audit sync
        ServiceMiddleware, metrics=metrics, tracer=tracer, body_deadlines=body_deadlines
    )
    app.install_write_route(metrics, tracer, body_deadlines)
    return app


def _build_app() -> _ServiceApp:
    app = _ServiceApp(
        title="MAIF",
        version=API_VERSION,
        summary="Authenticated block store for what AI agents produce.",
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(MAIFError, on_maif_error)
    app.add_exception_handler(ServiceProblem, on_service_problem)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
    app.include_router(_routes())
    _install_openapi(app)
    return app


def _state(request: Request) -> ServiceState:
    state = request.app.state.service
    assert isinstance(state, ServiceState)
    return state


async def _caller(request: Request, _: Annotated[Any, Depends(_bearer_scheme)] = None) -> SecurityContext:
    state = _state(request)
    if state.draining:
        raise ServiceProblem(503, "draining", "the service is shutting down", {"Retry-After": "1"})
    with decision_span(state.tracer, state.metrics.auth_outcomes, "authenticate") as span:
        context = await state.authenticator.context_for(
            request.headers.get("authorization"), request.headers.get(SESSION_HEADER)
        )
        span.set_attribute("maif.trust_level", int(context.trust_level))
    request.scope["maif.agent_id"] = context.agent_id
    return context


Caller = Annotated[SecurityContext, Depends(_caller)]


def _routes() -> APIRouter:

    router = APIRouter()
    _block_routes(router)
    _query_routes(router)
    _trust_routes(router)
    _container_routes(router)
    _task_routes(router)
    _admin_routes(router)
    _operations_routes(router)
    return router


# ---- blocks ----------------------------------------------------------------------------------------

_WRITE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/BlockCreate"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _block_routes(router: APIRouter) -> None:
    async def write_block(
        request: Request,
        context: Caller,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
        x_maif_block_id: Annotated[str | None, Header(max_length=limits.block_id_bytes_max)] = None,
        x_maif_block_type: Annotated[str, Header(min_length=4, max_length=4)] = "BDAT",
        x_maif_agent_id: Annotated[str | None, Header(max_length=limits.agent_id_bytes_max)] = None,
        x_maif_metadata: Annotated[
            str | None, Header(max_length=limits.service_header_metadata_bytes_max)
        ] = None,
        x_maif_parents: Annotated[
            str | None, Header(max_length=limits.service_header_metadata_bytes_max)
        ] = None,
        content_digest: Annotated[str | None, Header(max_length=1024)] = None,
    ) -> Response:
        """Write a block: JSON (``BlockCreate``, payload in base64) for small ones, or the raw payload as
        application/octet-stream with the block's fields in X-MAIF-* headers, streamed to the store."""
        state = _state(request)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "application/json":
            body = await _read_capped(request, limits.service_json_body_bytes_max)
            created = _parse_block_create(body)
            write = state.blocks.write_request(
                context,
                block_id=created.id,
                block_type=created.block_type,
                agent_id=created.agent_id,
                metadata=created.metadata,
                version=created.version,
                parents=created.parents,
                timestamp=created.timestamp,
            )
            payload = _b64decode(created.payload_base64, "payload_base64")
            fingerprint = blake3.blake3(body).digest()
            written = await _idempotent(
                state,
                context,
                idempotency_key,
                fingerprint,
                write,
                lambda: state.blocks.write_whole(write, payload),
            )
        elif media == "application/octet-stream":
            write = state.blocks.write_request(
                context,
                block_id=x_maif_block_id,
                block_type=x_maif_block_type,
                agent_id=x_maif_agent_id,
                metadata=_header_json(x_maif_metadata, dict, "X-MAIF-Metadata") or {},
                version="1.0",
                parents=_header_json(x_maif_parents, list, "X-MAIF-Parents") or [],
                timestamp=None,
            )
            expected = _sha256_of_content_digest(content_digest)
            fingerprint = blake3.blake3(
                repr(
                    (
                        x_maif_block_id,
                        x_maif_block_type,
                        x_maif_agent_id,
                        x_maif_metadata,
                        x_maif_parents,
                        content_digest,
                        request.headers.get("content-length"),
                    )
                ).encode()
            ).digest()
            written = await _idempotent(
                state,
                context,
                idempotency_key,
                fingerprint,
                write,
                lambda: state.blocks.write_stream(
                    write, request.stream(), expected, _declared_length(request)
                ),
            )
        else:
            raise ServiceProblem(
                415,
                "unsupported-media-type",
                "send application/json (small blocks) or application/octet-stream (raw payload)",
            )
        return _receipt_response(written)

    router.add_api_route(
        "/v1/blocks",
        write_block,
        methods=["POST"],
        status_code=201,
        response_model=schemas.WriteReceiptOut,
        openapi_extra=_WRITE_BODY,
        responses={
            **_UPLOAD_REFUSALS,
            409: {"description": "Block id exists or is being written", **_PROBLEM},
            415: {"description": "Unsupported media type", **_PROBLEM},
        },
        route_class_override=_DirectRoute,
    )

    @router.get(
        "/v1/blocks/{block_id}",
        responses={
            **_REFUSALS,
            404: {"description": "No such block", **_PROBLEM},
            200: {
                "description": "The payload (raw), or the block as JSON with view=json",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"$ref": "#/components/schemas/BlockOut"}},
                },
            },
            206: {
                "description": "A byte range of the payload",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            304: {"description": "Not modified (If-None-Match)"},
            416: {"description": "Range not satisfiable", **_PROBLEM},
        },
    )
    async def read_block(
        request: Request,
        context: Caller,
        block_id: str,
        view: Annotated[str, Query(pattern="^(raw|json)$")] = "raw",
        range_header: Annotated[str | None, Header(alias="range", max_length=256)] = None,
        if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
    ) -> Response:
        """Read a block: the raw payload (Range requests, ETag = block digest, RFC 9530 digests) or JSON."""
        state = _state(request)
        block = await state.blocks.read_authorized(context, block_id)
        etag = f'"{digest_hex(block)}"'
        if if_none_match is not None and etag in [tag.strip() for tag in if_none_match.split(",")]:
            return Response(status_code=304, headers={"ETag": etag})
        if view == "json":
            return _json_view(state, block)
        return _raw_view(state, block, etag, range_header)

    @router.delete(
        "/v1/blocks/{block_id}",
        response_model=schemas.DeleteReceiptOut,
        responses={**_REFUSALS, 404: {"description": "No such block", **_PROBLEM}},
    )
    async def delete_block(request: Request, context: Caller, block_id: str) -> schemas.DeleteReceiptOut:
        """Delete a block (and the parts of a streamed one), durably: ``lsn`` is its tombstone's. One's own
        block needs write permission (OAUTH_VERIFIED, maif:write); another agent's is administration
        (MULTI_PARTY_VERIFIED, maif:admin). Reads, listings and searches then leave it out."""
        receipt, parts = await _state(request).blocks.delete_authorized(context, block_id)
        return schemas.DeleteReceiptOut(block_id=receipt.block_id, lsn=receipt.lsn, parts=parts)


class _DirectRoute(APIRoute):
    """A route whose endpoint takes the request, the caller and header parameters only, called without
    FastAPI's dependency solving: the hot write path (POST /v1/blocks) spent more of the loop thread in
    ``solve_dependencies`` than in its own work (docs/adr/0087). The caller comes from the same
    :func:`_caller` the ``Caller`` dependency runs, first, as FastAPI would; each header is checked
    against the bounds the endpoint's signature declares, which are also what the OpenAPI document
    shows, and a violation is the same 422 FastAPI's validation gives. The service reaches it below
    Starlette's stack too (:class:`_DirectEndpoint`, docs/adr/0089)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        self._rules = tuple(_HeaderRule.of(field) for field in self.dependant.header_params)
        self._rule_of = {rule.header.encode("latin-1"): index for index, rule in enumerate(self._rules)}
        assert [dependency.call for dependency in self.dependant.dependencies] == [_caller], (
            "a direct route's only dependency is the caller"
        )
        assert not self.dependant.query_params and not self.dependant.path_params and self.body_field is None
        return self.respond

    async def respond(self, request: Request) -> Response:
        context = await _caller(request)
        # One pass over the raw header list; the first field of a name counts, as Starlette's `get`.
        found: list[bytes | None] = [None] * len(self._rules)
        for name, value in request.scope["headers"]:
            index = self._rule_of.get(name)
            if index is not None and found[index] is None:
                found[index] = value
        values: dict[str, str] = {}
        errors: list[dict[str, Any]] = []
        for rule, raw in zip(self._rules, found, strict=True):
            if raw is not None:
                value = raw.decode("latin-1")
                error = rule.error(value)
                if error is None:
                    values[rule.parameter] = value
                else:
                    errors.append(error)
        if errors:
            raise RequestValidationError(errors)
        response = await self.endpoint(request, context, **values)
        assert isinstance(response, Response)
        return response


class _DirectEndpoint:
    """The ASGI application of a :class:`_DirectRoute` below Starlette's middleware, router and
    ``request_response`` layers: the service's write path (docs/adr/0089). What those layers do for this
    route is done here, the same way: the route is recorded in the scope (metrics and spans name it),
    and an exception is answered by the app's own handler for it, looked up along the exception's MRO
    as Starlette's ExceptionMiddleware does; an exception without one propagates (to the same
    ServerErrorMiddleware and the same 500 handler the FastAPI stack has)."""

    def __init__(self, route: _DirectRoute, handlers: dict[Any, Callable[..., Any]]) -> None:
        self.route = route
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        request = Request(scope, receive, send)
        try:
            response = await self.route.respond(request)
        except Exception as error:
            handler = self._handler_of(error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)

    def _handler_of(self, error: Exception) -> Callable[..., Any] | None:
        for kind in type(error).__mro__:
            handler = self.handlers.get(kind)
            if handler is not None:
                return handler
        return None


def _all_routes(routes: list[Any]) -> list[Any]:
    """The routes of an app, those of included routers (FastAPI keeps them as the router's) included."""
    found: list[Any] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        found.extend(_all_routes(included.routes) if included is not None else [route])
    return found


class _ServiceApp(FastAPI):
    """FastAPI, except that POST /v1/blocks goes straight to its :class:`_DirectEndpoint` (wrapped in the
    service's middleware and Starlette's error middleware, as in the app's own stack): the framework's
    layers above it (telemetry, body limit, exception middleware, exit stack, routing among every route,
    ``request_response``) cost more of the one loop thread than the write's own work (docs/adr/0089).
    Every other request, and the OpenAPI document, is FastAPI's."""

    write_route: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.write_route is not None
            and scope["type"] == "http"
            and scope["path"] == "/v1/blocks"
            and scope["method"] == "POST"
            and not self.root_path
            and len(self.user_middleware) == 1  # a middleware added since (an embedder's) sees every request
        ):
            scope["app"] = self
            await self.write_route(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def install_write_route(
        self, metrics: ServiceMetrics, tracer: trace.Tracer, deadlines: BodyDeadlines
    ) -> None:
        assert [entry.cls for entry in self.user_middleware] == [ServiceMiddleware]  # type: ignore[comparison-overlap]
        routes = [route for route in _all_routes(self.routes) if isinstance(route, _DirectRoute)]
        assert len(routes) == 1 and routes[0].path == "/v1/blocks" and routes[0].methods == {"POST"}
        handlers = {
            key: value for key, value in self.exception_handlers.items() if key not in (500, Exception)
        }
        self.write_route = ServerErrorMiddleware(
            ServiceMiddleware(_DirectEndpoint(routes[0], handlers), metrics, tracer, deadlines),
            handler=self.exception_handlers.get(Exception),
            debug=self.debug,
        )


@dataclass(frozen=True, slots=True)
class _HeaderRule:
    parameter: str
    header: str
    length_min: int
    length_max: int | None

    @classmethod
    def of(cls, field: Any) -> _HeaderRule:
        info = field.field_info
        assert info.annotation in (str, str | None), "direct routes take string headers only"
        length_min, length_max = 0, None
        for bound in info.metadata:
            length_min = getattr(bound, "min_length", None) or length_min
            length_max = getattr(bound, "max_length", None) or length_max
        return cls(field.name, info.alias or field.name.replace("_", "-"), length_min, length_max)

    def error(self, value: str) -> dict[str, Any] | None:
        """Pydantic's error for a string outside the bounds, or None."""
        if self.length_max is not None and len(value) > self.length_max:
            message, kind, limit = f"at most {self.length_max}", "string_too_long", self.length_max
        elif len(value) < self.length_min:
            message, kind, limit = f"at least {self.length_min}", "string_too_short", self.length_min
        else:
            return None
        unit = "character" if limit == 1 else "characters"
        return {
            "type": kind,
            "loc": ("header", self.header),
            "msg": f"String should have {message} {unit}",
            "input": value,
        }


class _Receipt(msgspec.Struct):
    """The wire form of ``schemas.WriteReceiptOut`` (same fields, same order; a test holds them equal),
    encoded by msgspec rather than through pydantic and ``json`` (docs/adr/0089)."""

    block_id: str
    digest: str
    lsn: int
    payload_length: int
    parts: int


_encode_receipt = msgspec.json.Encoder().encode


def _receipt_response(written: Written) -> Response:
    digest = written.digest.hex()
    body = _encode_receipt(
        _Receipt(written.block_id, digest, written.lsn, written.payload_length, written.parts)
    )
    return Response(
        body,
        status_code=201,
        headers={"Location": location_of(written.block_id), "ETag": f'"{digest}"'},
        media_type="application/json",
    )


async def _idempotent(
    state: ServiceState,
    context: SecurityContext,
    key: str | None,
    fingerprint: bytes,
    write: Any,
    perform: Any,
) -> Written:
    """Authorise, then write, replaying the first result of a repeated Idempotency-Key."""
    await state.blocks.authorize_write(context, write)
    if key is None:
        return await perform()  # type: ignore[no-any-return]
    stored = state.idempotency.begin(context.agent_id, key, fingerprint)
    if stored is not None:
        return stored
    result: Written | None = None
    try:
        result = await perform()
        return result
    finally:
        state.idempotency.finish(context.agent_id, key, fingerprint, result)


def _parse_block_create(body: bytes) -> schemas.BlockCreate:
    from pydantic import ValidationError

    try:
        return schemas.BlockCreate.model_validate_json(body)
    except ValidationError as error:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in error.errors()[:10]
        )
        raise ServiceProblem(422, "invalid-request", reasons or "invalid block") from None


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise FormatError(f"{what} is not valid base64") from error


def _header_json(text: str | None, kind: type, what: str) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise FormatError(f"{what} is not valid JSON") from error
    if not isinstance(value, kind) or (
        isinstance(value, list) and not all(isinstance(item, str) for item in value)
    ):
        raise FormatError(f"{what} must be a JSON {'object' if kind is dict else 'array of strings'}")
    return value


def _sha256_of_content_digest(header: str | None) -> bytes | None:
    """The sha-256 member of an RFC 9530 Content-Digest field (other algorithms are ignored)."""
    if header is None:
        return None
    for member in header.split(","):
        name, _, value = member.strip().partition("=")
        if name.strip().lower() == "sha-256":
            value = value.strip()
            if not (value.startswith(":") and value.endswith(":")):
                raise FormatError("Content-Digest sha-256 must be a byte sequence (:base64:)")
            digest = _b64decode(value[1:-1], "Content-Digest sha-256")
            if len(digest) != 32:
                raise FormatError("Content-Digest sha-256 must be 32 bytes")
            return digest
    return None


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and _is_ascii_number(declared) else None


def _is_ascii_number(text: str, *, allow_empty: bool = False) -> bool:
    """Whether ``text`` is ASCII digits (a decimal header field), or empty when ``allow_empty``."""
    if text == "":
        return allow_empty
    return text.isascii() and text.isdigit() and len(text) <= _HEADER_NUMBER_DIGITS_MAX


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = _declared_length(request)
    if declared is not None and declared > cap:
        raise LimitExceededError("request body size", declared, cap)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise LimitExceededError("request body size", len(body), cap)
    return bytes(body)


def _digest_field(digest: bytes) -> str:
    return "sha-256=:" + base64.b64encode(digest).decode("ascii") + ":"


def _json_view(state: ServiceState, block: MAIFBlock) -> Response:
    streamed = streamed_info(block)
    if streamed is None and len(block.data) > limits.service_json_body_bytes_max:
        raise ServiceProblem(
            406, "too-large-for-json", "this payload is too large for view=json; read it raw"
        )
    out = schemas.BlockOut(
        id=block.id,
        block_type=block.type_name,
        agent_id=block.agent_id,
        timestamp=block.timestamp,
        version=block.version,
        parents=list(block.parents),
        metadata=_jsonable(block.metadata),
        payload_length=int(streamed["length"]) if streamed else len(block.data),
        digest=digest_hex(block),
        payload_base64=None if streamed else base64.b64encode(block.data).decode("ascii"),
    )
    if streamed is None:
        state.metrics.block_bytes_read.inc(len(block.data))
    return JSONResponse(out.model_dump())


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _raw_view(state: ServiceState, block: MAIFBlock, etag: str, range_header: str | None) -> Response:
    streamed = streamed_info(block)
    length = int(streamed["length"]) if streamed else len(block.data)
    full_digest = bytes.fromhex(streamed["sha256"]) if streamed else hashlib.sha256(block.data).digest()
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Repr-Digest": _digest_field(full_digest),
        "X-MAIF-Block-Type": block.type_name,
        "X-MAIF-Agent-Id": header_text(block.agent_id),
    }
    selected = _parse_range(range_header, length)
    if selected is None:
        start, stop, status = 0, length, 200
        headers["Content-Digest"] = headers["Repr-Digest"]
    else:
        start, stop = selected
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{length}"
        if streamed is None:
            headers["Content-Digest"] = _digest_field(hashlib.sha256(block.data[start:stop]).digest())
    headers["Content-Length"] = str(stop - start)
    if streamed is None:
        state.metrics.block_bytes_read.inc(stop - start)
        return Response(
            block.data[start:stop], status_code=status, headers=headers, media_type="application/octet-stream"
        )
    return StreamingResponse(
        state.blocks.stream_range(block, start, stop),
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


def _parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """(start, stop) of a single ``bytes=`` range; None for no range (or a multi-range: served whole,
    as RFC 9110 allows); ServiceProblem 416 when it cannot be satisfied or is malformed (anything but
    ASCII digits around the dash)."""
    if header is None:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    unsatisfiable = ServiceProblem(
        416,
        "range-not-satisfiable",
        "the requested range is outside the payload",
        {"Content-Range": f"bytes */{length}"},
    )
    # ASCII digits only: str.isdigit() also accepts "\u00b2" and other digits int() refuses.
    if not (dash and _is_ascii_number(first, allow_empty=True) and _is_ascii_number(last, allow_empty=True)):
        raise unsatisfiable
    if first == "":
        if last == "" or int(last) == 0 or length == 0:
            raise unsatisfiable
        return max(0, length - int(last)), length
    start = int(first)
    stop = length if last == "" else min(length, int(last) + 1)
    if start >= length or stop <= start:
        raise unsatisfiable
    return start, stop


# ---- listing, search, stats --------------------------------------------------------------------------


def _query_routes(router: APIRouter) -> None:
    @router.get("/v1/blocks", response_model=schemas.BlockList, responses=_REFUSALS)
    async def list_blocks(
        request: Request,
        context: Caller,
        agent_id: Annotated[str | None, Query(min_length=1, max_length=limits.agent_id_bytes_max)] = None,
        block_type: Annotated[str | None, Query(min_length=4, max_length=4)] = None,
        since: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        until: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        parent: Annotated[str | None, Query(min_length=1, max_length=limits.block_id_bytes_max)] = None,
        limit: Annotated[int, Query(ge=1, le=limits.service_list_limit_max)] = 100,
        after: Annotated[str | None, Query(min_length=1, max_length=limits.block_id_bytes_max)] = None,
    ) -> schemas.BlockList:
        """Blocks the caller may read, filtered; parts of streamed blocks are not listed."""
        state = _state(request)
        await state.blocks.authorize_own(context, "blocks", "block-list")
        page = await state.storage.list_blocks(
            agent_id=agent_id,
            block_type=block_type,
            since=since,
            until=until,
            parent=parent,
            limit=limit,
            after=after,
        )
        visible = []
        for summary in page:
            if summary.block_type == "PART":
                continue
            try:
                block = await state.storage.read_block(summary.block_id)
            except MAIFError:
                continue  # removed or unreadable since the listing: not shown
            if state.blocks.may_read(context, block):
                visible.append(
                    schemas.BlockSummaryOut(
                        block_id=summary.block_id,
                        block_type=summary.block_type,
                        agent_id=summary.agent_id,
                        timestamp=summary.timestamp,
                        version=summary.version,
                        parents=list(summary.parents),
                        payload_length=summary.payload_length,
                        digest=summary.digest.hex(),
                        lsn=summary.lsn,
                    )
                )
        next_after = page[-1].block_id if len(page) == limit else None
        return schemas.BlockList(blocks=visible, next_after=next_after)

    @router.post("/v1/search", response_model=schemas.SearchResult, responses=_REFUSALS)
    async def search(request: Request, context: Caller, query: schemas.SearchRequest) -> schemas.SearchResult:
        """Semantic search over EMBEDDING blocks the caller may read (cosine similarity)."""
        state = _state(request)
        await state.blocks.authorize_own(context, "search", "search")
        filters = {"agent_id": query.agent_id} if query.agent_id else None
        try:
            found = await state.storage.semantic_search(
                query.vector, limit=query.limit, score_threshold=query.score_threshold, filters=filters
            )
        except MAIFError as error:
            raise ServiceProblem(400, "invalid-request", error.message) from None
        hits = []
        for hit in found:
            with contextlib.suppress(MAIFError):
                if state.blocks.may_read(context, await state.storage.read_block(hit.block_id)):
                    hits.append(
                        schemas.SearchHitOut(
                            block_id=hit.block_id,
                            score=hit.score,
                            agent_id=hit.agent_id,
                            block_type=hit.block_type,
                        )
                    )
        return schemas.SearchResult(hits=hits)

    @router.get("/v1/stats", responses=_REFUSALS)
    async def stats(request: Request, context: Caller) -> dict[str, Any]:
        """The store's statistics (see docs/ARCHITECTURE.md) and the service's export signing key."""
        state = _state(request)
        await state.blocks.authorize_own(context, "stats", "stats")
        figures = await state.storage.get_stats()
        state.metrics.observe_storage(figures)
        return {
            "storage": _jsonable(figures),
            "export_public_key": state.export_public_key_hex,
            "auth_cache_entries": state.authenticator.cached_contexts,
        }


# ---- trust -------------------------------------------------------------------------------------------


_ATTESTATION_REFUSALS: dict[int | str, dict[str, Any]] = {
    **_REFUSALS,
    404: {"description": "Attestation not configured (no trusted_tpm_roots)", **_PROBLEM},
}


def _require_attestation(state: ServiceState) -> None:
    if state.manager.attestation_verifier is None:
        raise ServiceProblem(
            404, "attestation-not-configured", "hardware attestation is not configured on this server"
        )


def _refused_evidence(state: ServiceState, error: AuthenticationError) -> ServiceProblem:
    """The answer to an authenticated caller whose trust evidence (TPM quote, key proof, approvals) was
    refused: who is asking is known (the Caller dependency verified the token), what it may become is
    not granted, so 403 rather than 401 (ADR 0080). A server without attestation answers 404."""
    if isinstance(error, AttestationError):
        _require_attestation(state)
    return ServiceProblem(403, "attestation-refused", error.message)


async def _attested_call(state: ServiceState, call: Any, *arguments: Any, **options: Any) -> Any:
    """``call`` (a manager method acting on the caller's identity) in a worker thread. The gate decides
    first (403, audited); evidence the manager refuses (an untrusted EK, a wrong activated secret, a key
    registration not signed by the key) is a 403 attestation-refused, since the caller is authenticated;
    a server without attestation answers 404 (:func:`_refused_evidence`)."""
    try:
        return await asyncio.to_thread(call, *arguments, **options)
    except TokenError:
        raise
    except AuthenticationError as error:
        raise _refused_evidence(state, error) from error


def _trust_routes(router: APIRouter) -> None:
    """Trust levels 3 to 5 over HTTP (docs/adr/0080): enrol the caller's TPM, register its key, take a
    challenge, bootstrap. Each is a thin shell over a SecurityManager method; who may do what is the
    manager's and the gate's to decide (an agent acts on its own identity only), and every step is audited."""

    @router.post("/v1/trust/challenge", response_model=schemas.ChallengeOut, responses=_ATTESTATION_REFUSALS)
    @router.post(
        "/v1/attestation/challenge", response_model=schemas.ChallengeOut, responses=_ATTESTATION_REFUSALS
    )
    async def challenge(request: Request, context: Caller) -> schemas.ChallengeOut:
        """A single-use nonce for the caller's TPM quote (then POST /v1/trust/bootstrap)."""
        state = _state(request)
        await state.blocks.authorize_own(context, f"agent:{context.agent_id}", "attestation-challenge")
        _require_attestation(state)
        nonce = state.manager.new_challenge(context.agent_id)
        return schemas.ChallengeOut(
            nonce_base64=_b64encode(nonce), agent_id=context.agent_id
        )

    @router.post(
        "/v1/trust/bootstrap",
        response_model=schemas.SessionOut,
        responses={
            **_ATTESTATION_REFUSALS,
            403: {
                "description": "The token verified but the evidence (quote, key proof, approvals) was "
                "refused (urn:maif:problem:attestation-refused)",
                **_PROBLEM,
            },
        },
    )
    async def bootstrap(
        request: Request, _: Caller, evidence: schemas.BootstrapRequest
    ) -> schemas.SessionOut:
        """Bootstrap trust from the bearer token plus optional TPM quote, key proof and approvals; the
        session id, sent as MAIF-Session with the same token, selects the resulting context. The caller
        is authenticated before its evidence is looked at: refused evidence is a 403
        (attestation-refused), a token that does not verify a 401."""
        state = _state(request)
        try:
            session_id, context = await state.authenticator.open_session(
                request.headers.get("authorization"), **_evidence(evidence)
            )
        except TokenError:
            raise
        except AuthenticationError as error:
            raise _refused_evidence(state, error) from error
        await state.blocks.authorize_own(context, f"agent:{context.agent_id}", "trust-session")
        return schemas.SessionOut(
            session_id=session_id,
            agent_id=context.agent_id,
            trust_level=int(context.trust_level),
            trust_level_name=context.trust_level.name,
            permissions=sorted(context.permissions),
            scopes=sorted(context.scopes),
            expires_at=context.expires_at,
        )

    @router.post(
        "/v1/trust/enrollment", response_model=schemas.EnrollmentChallengeOut, responses=_ATTESTATION_REFUSALS
    )
    async def begin_enrollment(
        request: Request, context: Caller, given: schemas.EnrollmentIn
    ) -> schemas.EnrollmentChallengeOut:
        """Enrol the caller's TPM (EK certificate to a trusted root, AK in the same TPM): answers the
        credential its TPM must activate (TPM2_ActivateCredential), then POST /v1/trust/enrollment/activation.
        An agent enrols only its own identity (``agent_id``, when given, must be the caller's)."""
        state = _state(request)
        made = await _attested_call(
            state,
            state.manager.begin_enrollment,
            context,
            given.agent_id or context.agent_id,
            ek_public=_b64decode(given.ek_public_base64, "ek_public_base64"),
            ek_certificate=_b64decode(given.ek_certificate_base64, "ek_certificate_base64"),
            intermediates=[_b64decode(item, "intermediates_base64") for item in given.intermediates_base64],
            ak_public=_b64decode(given.ak_public_base64, "ak_public_base64"),
            ak_pem=given.ak_pem.encode("ascii", "replace") if given.ak_pem is not None else None,
        )
        return schemas.EnrollmentChallengeOut(
            agent_id=made.agent_id,
            credential_blob_base64=_b64encode(made.credential_blob),
            encrypted_secret_base64=_b64encode(made.encrypted_secret),
            tpm2_tools_credential_base64=_b64encode(made.tpm2_tools_credential_file()),
            expires_at=made.expires_at,
        )

    @router.post(
        "/v1/trust/enrollment/activation", response_model=schemas.EnrolledOut, responses=_ATTESTATION_REFUSALS
    )
    async def complete_enrollment(
        request: Request, context: Caller, given: schemas.ActivationIn
    ) -> schemas.EnrolledOut:
        """Finish the caller's enrolment with the secret its TPM activated; its quotes count from now."""
        state = _state(request)
        enrolled = await _attested_call(
            state,
            state.manager.complete_enrollment,
            context,
            given.agent_id or context.agent_id,
            _b64decode(given.activated_secret_base64, "activated_secret_base64"),
        )
        return schemas.EnrolledOut(
            agent_id=enrolled.agent_id,
            ak_name_hex=enrolled.ak_name.hex(),
            ek_certificate_sha256_hex=enrolled.ek_certificate_sha256.hex(),
            enrolled_at=enrolled.enrolled_at,
        )

    @router.post("/v1/trust/keys", status_code=201, response_model=schemas.KeyOut, responses=_REFUSALS)
    async def register_key(
        request: Request, context: Caller, given: schemas.KeyRegistrationIn
    ) -> schemas.KeyOut:
        """Register the caller's Ed25519 public key (signed by itself over the registration statement),
        from a HARDWARE_ATTESTED session (MAIF-Session): the key a CRYPTOGRAPHICALLY_PROVEN bootstrap
        binds to the TPM. It replaces the caller's current key."""
        state = _state(request)
        try:
            public_key = bytes.fromhex(given.public_key_hex)
        except ValueError as error:
            raise FormatError("public_key_hex is not hex") from error
        info = await _attested_call(
            state,
            state.manager.register_agent_key,
            context,
            given.agent_id or context.agent_id,
            public_key,
            _b64decode(given.signature_base64, "signature_base64"),
        )
        return schemas.KeyOut(
            agent_id=info.agent_id,
            key_id_hex=info.key_id.hex(),
            not_before=info.not_before,
            not_after=info.not_after,
        )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _evidence(request: schemas.BootstrapRequest) -> dict[str, Any]:
    evidence: dict[str, Any] = {}
    if request.attestation is not None:
        given = request.attestation
        try:
            pcrs = {
                bank: {int(index): bytes.fromhex(value) for index, value in values.items()}
                for bank, values in given.pcr_values.items()
            }
        except ValueError as error:
            raise FormatError("pcr_values must map banks to {index: hex digest}") from error
        evidence["hardware_attestation"] = HardwareAttestation(
            quote=_b64decode(given.quote_base64, "quote"),
            signature=_b64decode(given.signature_base64, "signature"),
            pcr_values=pcrs,
            ak_public=_b64decode(given.ak_public_base64, "ak_public"),
            nonce=_b64decode(given.nonce_base64, "nonce"),
            platform_id=given.platform_id,
        )
    if request.key_proof is not None:
        try:
            key_id = bytes.fromhex(request.key_proof.key_id_hex)
        except ValueError as error:
            raise FormatError("key_id_hex is not hex") from error
        evidence["key_proof"] = KeyPossessionProof(
            key_id, _b64decode(request.key_proof.signature_base64, "signature")
        )
    if request.approvals:
        evidence["approvals"] = tuple(
            Approval(item.approver_id, _b64decode(item.signature_base64, "signature"))
            for item in request.approvals
        )
    return evidence


# ---- audit, export, verify ---------------------------------------------------------------------------


_AUDIT_HISTORY_ENTRIES_MAX = limits.audit_segments_max * limits.audit_segment_entries_max


def _container_routes(router: APIRouter) -> None:
    @router.get("/v1/audit", response_model=schemas.AuditPage, responses=_REFUSALS)
    async def audit(
        request: Request,
        context: Caller,
        start: Annotated[int, Query(ge=0, le=_AUDIT_HISTORY_ENTRIES_MAX)] = 0,
        limit: Annotated[int, Query(ge=1, le=limits.service_audit_page_entries_max)] = 50,
        old_size: Annotated[int | None, Query(ge=0, le=limits.audit_log_entries_max)] = None,
    ) -> schemas.AuditPage:
        """The caller's own audit entries at history positions [start, start+limit), cut at the end of
        the segment holding ``start`` (``next_start`` continues), each with an RFC 9162 inclusion proof
        in that segment's tree (leaf ``segment_index``); the segment's latest signed checkpoint (a sealed
        segment's head); for the current segment a consistency proof from it (or old_size). Entries
        in archived segments answer 410."""
        state = _state(request)
        await state.blocks.authorize_own(context, "audit-log", "audit-log")
        return await asyncio.to_thread(_audit_page, state.manager, context.agent_id, start, limit, old_size)

    @router.post(
        "/v1/export",
        responses={
            **_REFUSALS,
            404: {"description": "A selected block does not exist", **_PROBLEM},
            200: {
                "description": "A signed .maif container",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
        },
    )
    async def export(request: Request, context: Caller, selection: schemas.ExportRequest) -> Response:
        """Export the selected blocks (and the parts of streamed ones) as a signed .maif, streamed. Signed
        with the service's export key (X-MAIF-Signer-Public-Key); every block needs read permission."""
        state = _state(request)
        ids = list(dict.fromkeys(selection.block_ids))
        await state.blocks.require_read_scope(context, ids[0])
        blocks = [await state.storage.read_block(block_id) for block_id in ids]
        await asyncio.to_thread(
            state.manager.authorize_many, context, Action.READ, [resource_of_block(block) for block in blocks]
        )
        state.metrics.auth_outcomes.labels("authorize", "allow").inc()
        for block in blocks:
            if streamed_info(block) is not None:
                ids.extend(part_id for part_id, _ in state.blocks.parts_of(block))
        path = state.spool.named_path("export")
        try:
            with state.tracer.start_as_current_span("maif.storage.export") as span:
                span.set_attribute("maif.blocks", len(ids))
                await state.storage.export(path, ids, state.export_key)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return StreamingResponse(
            _file_chunks(path, remove=True),
            media_type="application/octet-stream",
            headers={
                "Content-Length": str(path.stat().st_size),
                "X-MAIF-Signer-Public-Key": state.export_public_key_hex,
                "Content-Disposition": 'attachment; filename="export.maif"',
            },
        )

    @router.post(
        "/v1/verify",
        response_model=schemas.VerifyReport,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        responses=_UPLOAD_REFUSALS,
    )
    async def verify(
        request: Request,
        context: Caller,
        trusted_key: Annotated[list[str] | None, Query(max_length=limits.service_trusted_keys_max)] = None,
        required_signer: Annotated[
            list[str] | None, Query(max_length=limits.service_trusted_keys_max)
        ] = None,
    ) -> schemas.VerifyReport:
        """Verify an uploaded .maif against the given trusted Ed25519 public keys (hex, raw 32 bytes) and
        the service's export key; the report lists every problem found. Each ``required_signer`` (hex,
        trusted as well) must have a valid signature on the last version, or the file does not verify."""
        state = _state(request)
        await state.blocks.authorize_own(context, "verification", "verification")
        keys = [_public_key(text) for text in trusted_key or []] + [state.export_key.public_key()]
        required = [_public_key(text) for text in required_signer or []]
        from maif.format.container import verify_container

        cap = limits.service_verify_upload_bytes_max
        state.spool.admit(_declared_length(request), cap)
        async with contextlib.AsyncExitStack() as stack:
            received = await state.spool.receive(
                request.stream(), cap=cap, keep_in_memory_bytes=0, stack=stack
            )
            assert received.file is not None  # keep_in_memory_bytes=0: always spooled, even when empty
            with state.tracer.start_as_current_span("maif.verify") as span:
                span.set_attribute("maif.upload.bytes", received.length)
                report = await asyncio.to_thread(
                    functools.partial(verify_container, required_signers=required),
                    received.file.proc_path,
                    keys,
                )
                span.set_attribute("maif.verify.ok", report.ok)
        return schemas.VerifyReport(
            ok=report.ok,
            block_count=report.block_count,
            versions=len(report.versions),
            problems=[
                schemas.VerifyProblem(block_index=p.block_index, region=p.region, reason=p.reason)
                for p in report.problems[:1000]
            ],
            signer_key_ids=[key_id.hex() for key_id in report.signer_key_ids],
            last_version_signer_key_ids=[key_id.hex() for key_id in report.last_version_signer_key_ids],
        )


def _audit_page(
    manager: SecurityManager, agent_id: str, start: int, limit: int, old_size: int | None
) -> schemas.AuditPage:
    """One page of the whole audit history (every segment still present), never spanning two segments,
    so every proof in it is in one tree: the segment's (sealed: all of it; current: so far)."""
    log = manager.audit_log
    if not isinstance(log, SegmentedAuditLog):
        raise ServiceProblem(503, "unavailable", "this service's audit log is not a segment directory")
    total = log.total_entries
    position = min(start, total - 1)  # past the end: an empty page of the current segment
    wanted = limit if start < total else 0
    page = read_chain_page(log, position, wanted, lambda entry: entry.actor == agent_id)
    if page is None:
        raise ServiceProblem(
            410, "archived", f"audit entries before {log.first_index} are archived, not served here"
        )
    if old_size is not None and (not page.current or old_size > page.tree_size):
        raise ServiceProblem(
            400, "invalid-request", f"old_size {old_size} is beyond the current segment's {page.tree_size}"
        )
    checkpoint = page.checkpoint
    base = old_size if old_size is not None else (checkpoint.tree_size if checkpoint is not None else None)
    consistency = log.consistency_proof(base, page.tree_size) if base and page.current else []
    stop = min(page.first_index + page.tree_size, start + limit)
    entries = [
        _audit_entry_out(entry, proof, page.first_index)
        for entry, proof in zip(page.entries, page.proofs, strict=True)
    ]
    return schemas.AuditPage(
        tree_size=page.tree_size,
        root=page.root.hex(),
        segment=page.segment,
        segment_first_index=page.first_index,
        total_entries=total,
        entries=entries,
        next_start=stop if stop < total else None,
        checkpoint=None if checkpoint is None else _checkpoint_out(checkpoint),
        consistency_proof=[node.hex() for node in consistency],
    )


def _audit_entry_out(entry: AuditEntry, proof: list[bytes], first_index: int) -> schemas.AuditEntryOut:
    return schemas.AuditEntryOut(
        index=first_index + entry.index,
        segment_index=entry.index,
        time=entry.time,
        actor=entry.actor,
        action=entry.action,
        resource=entry.resource,
        decision=entry.decision,
        reason=entry.reason,
        details=dict(entry.details),
        prev_hash=entry.prev_hash.hex(),
        leaf_hash=entry.hash.hex(),
        inclusion_proof=[node.hex() for node in proof],
    )


def _checkpoint_out(checkpoint: SignedCheckpoint) -> schemas.CheckpointOut:
    return schemas.CheckpointOut(
        log_id=checkpoint.log_id.hex(),
        tree_size=checkpoint.tree_size,
        root=checkpoint.root.hex(),
        timestamp=checkpoint.timestamp,
        key_id=checkpoint.key_id.hex(),
        signature=checkpoint.signature.hex(),
    )


def _public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(text)
        if len(raw) != 32:
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:
        raise FormatError("trusted_key must be a raw Ed25519 public key as 64 hex digits") from error


async def _file_chunks(path: Path, *, remove: bool) -> AsyncIterator[bytes]:
    try:
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, _DOWNLOAD_CHUNK_BYTES):
                yield chunk
    finally:
        if remove:
            path.unlink(missing_ok=True)


# ---- agent tasks -------------------------------------------------------------------------------------


def _task_routes(router: APIRouter) -> None:
    @router.post("/v1/tasks", status_code=202, response_model=schemas.TaskAccepted, responses=_REFUSALS)
    async def submit_task(request: Request, context: Caller, given: schemas.TaskIn) -> schemas.TaskAccepted:
        """Queue a task for the caller's agent (built-in task types: text_analysis, image_processing,
        multimodal_fusion, knowledge_extraction). The blocks it produces are owned by the caller."""
        from maif.agents.tasks import AgentTask
        from maif.format.block import new_block_id

        state = _state(request)
        task_id = check_id("task id", given.task_id or new_block_id())
        for block_id in given.input_blocks:
            check_id("input block id", block_id)
        try:
            task = AgentTask(
                task_id, given.task_type, given.input_data, given.priority, tuple(given.input_blocks)
            )
        except (TypeError, MAIFError) as error:
            raise ServiceProblem(400, "invalid-task", str(error)) from None
        accepted = await state.tasks.submit(context, task)
        return schemas.TaskAccepted(task_id=task_id, accepted=accepted)

    @router.get("/v1/tasks/{task_id}", response_model=schemas.TaskStatus, responses=_REFUSALS)
    async def task_status(request: Request, context: Caller, task_id: str) -> schemas.TaskStatus:
        """The status of one of the caller's tasks, with the ids of the blocks it produced."""
        return schemas.TaskStatus(**await _state(request).tasks.status(context, check_id("task id", task_id)))


# ---- administration ----------------------------------------------------------------------------------


def _admin_routes(router: APIRouter) -> None:
    @router.post("/v1/admin/compact", response_model=schemas.CompactionOut, responses=_REFUSALS)
    async def compact(
        request: Request,
        context: Caller,
        garbage_fraction: Annotated[float, Query(gt=0.0, le=1.0, allow_inf_nan=False)] = 0.2,
    ) -> schemas.CompactionOut:
        """Administrative (MULTI_PARTY_VERIFIED, maif:admin): give back the space of deleted and overwritten
        blocks; every sealed pack whose dead bytes are at least ``garbage_fraction`` of it is rewritten
        (the engine's compact: crash-safe, live data unchanged; writes are still acknowledged meanwhile)."""
        state = _state(request)
        await state.blocks.authorize(
            context,
            Action.ADMINISTER,
            Resource("store", owner=context.agent_id, tenant=context.tenant, kind="store"),
        )
        with state.tracer.start_as_current_span("maif.storage.compact") as span:
            report = await state.storage.compact(garbage_fraction)
            span.set_attribute("maif.bytes_reclaimed", report.bytes_reclaimed)
        return schemas.CompactionOut(**msgspec.structs.asdict(report))


# ---- operations --------------------------------------------------------------------------------------


def _operations_routes(router: APIRouter) -> None:
    @router.get("/healthz", response_model=schemas.Health, response_model_exclude_none=True,
                tags=["operations"])
    async def healthz(request: Request) -> schemas.Health:
        """Liveness: the process answers (always 200). ``status`` is "degraded" while a server the
        store uses is unavailable, and ``degraded`` names it: reads of what it holds fail, writes are
        acknowledged into the local log up to a bound, then refused with 503 and Retry-After."""
        health = _state(request).storage.health()
        if health["degraded"]:
            return schemas.Health(status="degraded", degraded=health["degraded"])
        return schemas.Health(status="ok")

    @router.get(
        "/readyz",
        response_model=schemas.Health,
        response_model_exclude_none=True,
        tags=["operations"],
        responses={503: {"description": "Not ready", **_PROBLEM}},
    )
    async def readyz(request: Request) -> schemas.Health:
        """Readiness: not draining, and the store answers and accepts writes."""
        state = _state(request)
        if state.draining:
            raise ServiceProblem(503, "draining", "the service is shutting down")
        figures = await state.storage.get_stats()
        failure = figures.get("wal_failure") or figures.get("applier_failure")
        if failure:
            raise ServiceProblem(503, "storage-failed", "the store refuses writes; see the server log")
        return schemas.Health(status="ready")

    @router.get(
        "/metrics",
        tags=["operations"],
        responses={
            200: {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            401: {"description": "No metrics token, or no valid API token, was presented", **_PROBLEM},
            403: {"description": "The API token's caller may not read the store's statistics", **_PROBLEM},
        },
    )
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (text exposition format 0.0.4). With a configured metrics token, only for
        ``Authorization: Bearer <that token>`` (the API's OAuth tokens are not accepted then); without
        one, for an API bearer token whose caller may read the store's statistics (as GET /v1/stats)."""
        state = _state(request)
        if state.metrics_token is not None:
            _require_metrics_token(request.headers.get("authorization"), state.metrics_token)
        elif not state.unsafe_anonymous_metrics:
            context = await state.authenticator.context_for(request.headers.get("authorization"))
            await state.blocks.authorize_own(context, "stats", "stats")
        with contextlib.suppress(MAIFError):
            state.metrics.observe_storage(await state.storage.get_stats())
        _observe_audit(state.metrics, state.manager.audit_log)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _observe_audit(metrics: ServiceMetrics, log: Any) -> None:
    """The whole chain's entry count (archived segments included) and the current segment's number."""
    metrics.audit_entries.set(getattr(log, "total_entries", log.size))
    metrics.audit_segment.set(getattr(log, "segment_number", 0))


def _require_metrics_token(header: str | None, expected: str) -> None:
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ServiceProblem(
            401, "unauthorized", "GET /metrics needs the metrics token", {"WWW-Authenticate": "Bearer"}
        )


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service (what docs/openapi.json holds)."""
    return _build_app().openapi()


def _install_openapi(app: FastAPI) -> None:
    def custom() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _with_components_raw(app)
        return app.openapi_schema

    app.openapi = custom  # type: ignore[method-assign]


def _with_components_raw(app: FastAPI) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi

    document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "BlockCreate", schemas.BlockCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    return document


__all__ = [
    "API_VERSION",
    "DEFAULT_BODY_BYTES_PER_S_MIN",
    "DEFAULT_BODY_READ_TIMEOUT_S",
    "DEFAULT_BODY_TOTAL_TIMEOUT_S",
    "ServiceState",
    "create_app",
    "openapi_document",
]
