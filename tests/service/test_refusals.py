"""Every /v1 endpoint refuses missing, forged, expired and insufficient tokens, as RFC 9457 problems
that never echo the token."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

_JSON = {"Content-Type": "application/json"}
_RAW = {"Content-Type": "application/octet-stream"}
_ZERO_KEY = b"00" * 32

# (method, path, body, content headers, needs write): one request per endpoint.
ENDPOINTS: list[tuple[str, str, Any, dict[str, str], bool]] = [
    ("POST", "/v1/blocks", b'{"payload_base64": "aGk="}', _JSON, True),
    ("POST", "/v1/blocks", b"raw payload", _RAW, True),
    ("GET", "/v1/blocks/some-block", None, {}, False),
    ("DELETE", "/v1/blocks/refusal-target", None, {}, True),
    ("GET", "/v1/blocks", None, {}, False),
    ("POST", "/v1/search", b'{"vector": [1.0, 0.0]}', _JSON, False),
    ("GET", "/v1/stats", None, {}, False),
    ("POST", "/v1/attestation/challenge", None, {}, False),
    ("POST", "/v1/trust/bootstrap", b"{}", _JSON, False),
    ("POST", "/v1/trust/challenge", None, {}, False),
    (
        "POST",
        "/v1/trust/enrollment",
        b'{"ek_public_base64": "", "ek_certificate_base64": "", "ak_public_base64": ""}',
        _JSON,
        True,
    ),
    ("POST", "/v1/trust/enrollment/activation", b'{"activated_secret_base64": "AA=="}', _JSON, True),
    ("POST", "/v1/trust/keys", b'{"public_key_hex": "%s", "signature_base64": ""}' % _ZERO_KEY, _JSON, True),
    ("GET", "/v1/audit", None, {}, False),
    ("POST", "/v1/export", b'{"block_ids": ["refusal-target"]}', _JSON, False),
    ("POST", "/v1/verify", b"not a container", _RAW, False),
    ("POST", "/v1/tasks", b'{"task_type": "text_analysis", "input_data": {"text": "hi"}}', _JSON, True),
    ("GET", "/v1/tasks/some-task", None, {}, False),
    ("POST", "/v1/admin/compact", None, {}, False),
]


def _forged(issuer: Any) -> str:
    """A well-formed token with the issuer's kid, signed by an attacker's key."""
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {
        "iss": issuer.url,
        "sub": "agent-1",
        "aud": "urn:maif:store",
        "iat": now,
        "exp": now + 300,
        "jti": "forged-1",
        "scope": "maif:read maif:write maif:full maif:admin",
        "client_id": "agent-1",
    }
    return jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": "rsa-1", "typ": "at+jwt"})


def _expired(issuer: Any) -> str:
    now = int(time.time())
    return issuer.mint({"iat": now - 900, "exp": now - 300, "scope": "maif:read maif:write"})


def _request(
    server: Any, method: str, path: str, body: Any, headers: dict[str, str], token: str | None
) -> httpx.Response:
    all_headers = dict(headers)
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return httpx.request(method, f"{server.url}{path}", content=body, headers=all_headers, timeout=30)


def _assert_problem(response: httpx.Response, status: int, secret: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["type"].startswith("urn:maif:problem:")
    if secret is not None:
        assert secret not in response.text and secret[-40:] not in response.text


@pytest.fixture(scope="module")
def refusal_target(server: Any, tokens: dict[str, str]) -> None:
    response = httpx.post(
        f"{server.url}/v1/blocks",
        json={"id": "refusal-target", "payload_base64": "aGk="},
        headers={"Authorization": f"Bearer {tokens['agent-1']}"},
    )
    assert response.status_code in (201, 409)


@pytest.mark.parametrize(("method", "path", "body", "headers", "writes"), ENDPOINTS)
def test_missing_forged_and_expired_tokens_are_refused(
    server: Any,
    oidc_issuer: Any,
    refusal_target: None,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    writes: bool,
) -> None:
    missing = _request(server, method, path, body, headers, None)
    _assert_problem(missing, 401, None)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    forged = _forged(oidc_issuer)
    _assert_problem(_request(server, method, path, body, headers, forged), 401, forged)
    expired = _expired(oidc_issuer)
    _assert_problem(_request(server, method, path, body, headers, expired), 401, expired)
    garbage = "not-a-jwt"
    _assert_problem(_request(server, method, path, body, headers, garbage), 401, None)
    basic = {**headers, "Authorization": "Basic " + base64.b64encode(b"agent-1:pw").decode()}
    _assert_problem(httpx.request(method, f"{server.url}{path}", content=body, headers=basic), 401, None)


@pytest.mark.parametrize(("method", "path", "body", "headers", "writes"), ENDPOINTS)
def test_insufficient_tokens_are_refused(
    server: Any,
    tokens: dict[str, str],
    refusal_target: None,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    writes: bool,
) -> None:
    # A real token from the issuer, valid in every way, whose scopes do not cover the operation.
    token = tokens["read-only"] if writes else tokens["write-only"]
    _assert_problem(_request(server, method, path, body, headers, token), 403, token)


def test_a_token_for_another_tenant_cannot_read_this_tenants_block(
    server: Any, oidc_issuer: Any, tokens: dict[str, str], refusal_target: None
) -> None:
    other_tenant = oidc_issuer.token("tenant-b-agent", "maif:read maif:write")
    response = _request(server, "GET", "/v1/blocks/refusal-target", None, {}, other_tenant)
    _assert_problem(response, 403, other_tenant)


def test_a_forged_token_reusing_a_cached_tokens_jti_is_still_refused(server: Any, oidc_issuer: Any) -> None:
    valid = oidc_issuer.mint({"jti": "shared-jti"})
    assert _request(server, "GET", "/v1/stats", None, {}, valid).status_code == 200
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(valid, options={"verify_signature": False})
    forged = jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": "rsa-1", "typ": "at+jwt"})
    _assert_problem(_request(server, "GET", "/v1/stats", None, {}, forged), 401, forged)


# The write route skips FastAPI's dependency solving (docs/adr/0087): its header bounds, taken from the
# endpoint's signature, must refuse exactly what FastAPI's validation refused, with the same problem.
_HEADER_REFUSALS = [
    ({"X-MAIF-Block-Type": "ab"}, "header.x-maif-block-type: String should have at least 4 characters"),
    ({"X-MAIF-Block-Type": "TEXTS"}, "header.x-maif-block-type: String should have at most 4 characters"),
    ({"Idempotency-Key": "k" * 256}, "header.idempotency-key: String should have at most 255 characters"),
    (
        {"Content-Digest": "d" * 1025, "X-MAIF-Block-Type": "a"},
        "header.x-maif-block-type: String should have at least 4 characters; "
        "header.content-digest: String should have at most 1024 characters",
    ),
]


@pytest.mark.parametrize(("headers", "detail"), _HEADER_REFUSALS)
def test_write_headers_out_of_bounds_are_refused_as_fastapi_would(
    server: Any, tokens: dict[str, str], headers: dict[str, str], detail: str
) -> None:
    for body, content_headers in ((b'{"payload_base64": "aGk="}', _JSON), (b"raw", _RAW)):
        all_headers = {**content_headers, **headers}
        response = _request(server, "POST", "/v1/blocks", body, all_headers, tokens["agent-1"])
        _assert_problem(response, 422, None)
        assert response.json()["detail"] == detail


def test_a_write_without_a_token_is_refused_before_its_headers_are_checked(server: Any) -> None:
    response = _request(server, "POST", "/v1/blocks", b"raw", {**_RAW, "X-MAIF-Block-Type": "ab"}, None)
    _assert_problem(response, 401, None)
