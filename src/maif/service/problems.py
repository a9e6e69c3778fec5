"""RFC 9457 problem details: every refusal and failure the service returns, as application/problem+json.

Each :class:`~maif.errors.MAIFError` subclass maps to one HTTP status and one problem type URI. The
``detail`` is the error's own message, which MAIF writes without secrets (never a token, key or payload);
foreign exceptions never reach a response: they become a generic 500 whose detail names only the request
id, and the full error goes to the log.
"""

from __future__ import annotations

import logging
import math

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from maif.errors import (
    AuthenticationError,
    AuthorizationError,
    BackendUnavailableError,
    BlockNotFoundError,
    ConfigError,
    DurabilityError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
    QueueFullError,
    StorageError,
    StoreClosedError,
    StoreDegradedError,
)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_LOG = logging.getLogger("maif.service")

# Most specific first: the first class an error is an instance of decides.
_STATUS_BY_ERROR: tuple[tuple[type[MAIFError], int, str], ...] = (
    (AuthenticationError, 401, "unauthenticated"),
    (AuthorizationError, 403, "forbidden"),
    (BlockNotFoundError, 404, "not-found"),
    (LimitExceededError, 413, "too-large"),
    (StoreClosedError, 503, "unavailable"),
    (DurabilityError, 503, "unavailable"),
    (QueueFullError, 503, "overloaded"),
    (StoreDegradedError, 503, "degraded"),
    (BackendUnavailableError, 503, "backend-unavailable"),
    (FormatError, 400, "malformed"),
    (ConfigError, 400, "invalid-request"),
    (IntegrityError, 500, "integrity"),
    (StorageError, 503, "storage-unavailable"),
)

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class ServiceProblem(Exception):
    """A refusal decided by the service itself (not by a MAIF layer): status, type slug and detail."""

    def __init__(self, status: int, slug: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    request: Request | None, status: int, slug: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    request_id = _request_id(request)
    body = {
        "type": f"urn:maif:problem:{slug}",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": f"urn:maif:request:{request_id}",
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _request_id(request: Request | None) -> str:
    if request is None:
        return "unknown"
    return str(request.scope.get("maif.request_id", "unknown"))


def status_of(error: MAIFError) -> tuple[int, str]:
    for error_type, status, slug in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status, slug
    return 400, "refused"


async def on_maif_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, MAIFError)
    status, slug = status_of(error)
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="maif", error="invalid_token"'
    if status == 503:
        wait_s = error.retry_after_s if isinstance(error, BackendUnavailableError) else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    if status >= 500:
        _LOG.error("request failed: %s", error.message, extra={"request_id": _request_id(request)})
    return problem_response(request, status, slug, error.message, headers)


async def on_service_problem(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ServiceProblem)
    return problem_response(request, error.status, error.slug, error.detail, error.headers)


async def on_http_exception(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return problem_response(request, error.status_code, "http", str(error.detail), dict(error.headers or {}))


async def on_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # Only the location and the message of each error: never the offending input (it may be a secret).
    reasons = [
        f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', 'invalid')}"
        for item in error.errors()[:10]
    ]
    return problem_response(request, 422, "invalid-request", "; ".join(reasons) or "invalid request")


async def on_client_disconnect(request: Request, error: Exception) -> JSONResponse:
    # The caller went away mid-body: nothing was acknowledged, nobody reads this answer; not a server error.
    _LOG.info("client disconnected before the request body ended", extra={"request_id": _request_id(request)})
    return problem_response(request, 400, "client-disconnected", "the request body ended early")


async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
    _LOG.exception("unexpected error", extra={"request_id": _request_id(request)})
    return problem_response(
        request, 500, "internal", "internal error; see the server log for this request id"
    )


__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "ServiceProblem",
    "on_client_disconnect",
    "on_http_exception",
    "on_maif_error",
    "on_service_problem",
    "on_unexpected",
    "on_validation_error",
    "problem_response",
    "status_of",
]
