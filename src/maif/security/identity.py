"""Who is asking: OAuth 2.0 / OIDC JWT access tokens verified against the configured issuers' JWKS.

:class:`TokenVerifier` turns a bearer token into a :class:`VerifiedToken` or raises
:class:`~maif.errors.TokenError`. It follows RFC 9068 (JWT access tokens) and RFC 8725 (JWT best
practices); every rule below is attacked in ``tests/security/test_jwt_attacks.py``:

* the token length is capped (``limits.token_bytes_max``) and each segment must be strict base64url
  before anything is decoded;
* the header must carry a ``kid``, no ``crit`` (we understand no extensions), an ``alg`` on the
  issuer's allow-list, which never contains ``none`` or an HMAC algorithm (so the RSA public key can
  never become an HMAC secret), and a ``typ`` the issuer's ``token_types`` list: ``at+jwt`` by default
  (an ID token or any other JWT is not an access token); ``JWT`` or no ``typ`` only where configured,
  for identity providers that issue access tokens that way (docs/identity-providers.md);
* the key comes only from the configured issuer's ``jwks_uri`` (configured, or found by OIDC discovery
  whose ``issuer`` must match exactly); ``jku``, ``x5u``, ``jwk`` and ``x5c`` headers are ignored;
* the key's own ``alg`` must equal the token's (PyJWT binds the verifying algorithm to the JWK);
* ``iss`` must equal a configured issuer exactly, ``aud`` must contain one of the issuer's audiences
  (its ``audience``, else its ``client_id`` or the security section's ``audience``), an ``azp`` claim
  must name the issuer's ``client_id`` or one of its ``authorized_parties``, and ``exp``, ``iat`` and
  ``sub`` are required; ``nbf`` is honoured; leeway is per issuer and small (30 s by default, 300 s at
  most);
* issuers share no agents and no tenants (issue 14): the caller's agent id is the issuer's
  ``agent_prefix`` followed by ``sub`` (an unprefixed issuer's ``sub`` may not begin another issuer's
  prefix), a ``tenant`` claim must be one the issuer's ``tenants`` lists (unset: any tenant when it
  is the only issuer, none when there are several), and a token without one is in the issuer's own
  ``default_tenant`` (unset: its ``agent_prefix``), never in a tenant another issuer's tokens reach;
* revoked token ids (``jti``) are refused: revocation keys on ``jti``, never on the token string,
  because the compact serialisation is malleable.

:class:`JWKSCache` fetches keys with the standard library in the calling thread (the async entry point
:meth:`TokenVerifier.verify_async` runs verification in a worker thread so the event loop never blocks),
caches them for ``cache_lifetime_s`` and refreshes at most once per ``refresh_interval_s``: a flood of
tokens with unknown ``kid`` values costs the issuer at most one request per interval. Once the cache is
older than its lifetime and the issuer cannot be reached, every token is refused (fail closed).
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.api_jwk import PyJWK

from maif import limits
from maif.config import ACCESS_TOKEN_TYPES, OAuthProviderConfig, check_issuer_namespaces
from maif.errors import ConfigError, TokenError

SAFE_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
"""Asymmetric algorithms an issuer may be configured with; ``none`` and every HS* are absent on purpose."""

KNOWN_SCOPES = ("maif:read", "maif:write", "maif:full", "maif:admin")

_SEGMENT = re.compile(rb"[A-Za-z0-9_-]+")
_REQUIRED_CLAIMS = ["exp", "iat", "sub", "iss", "aud"]
_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_RSA_BITS_MIN = 2048
_FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The facts a verified access token vouches for. Never holds the token string itself."""

    issuer: str
    subject: str
    agent_id: str  # the issuer's agent_prefix + subject: who the caller is, unique across issuers
    audience: tuple[str, ...]
    scopes: frozenset[str]
    token_id: str | None  # jti
    client_id: str | None
    tenant: str
    issued_at: float
    expires_at: float


class JWKSCache:
    """The signing keys of one issuer, fetched from its ``jwks_uri`` and cached with bounded refreshes.

    Thread-safe: one refresh runs at a time and every waiter sees its result. ``fetch`` is injectable so
    tests can count or break requests; the default reads with :mod:`urllib` and a size cap.
    """

    def __init__(
        self,
        issuer: str,
        jwks_uri: str | None = None,
        *,
        cache_lifetime_s: float = 300.0,
        refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str], bytes] | None = None,
    ) -> None:
        if cache_lifetime_s <= 0 or refresh_interval_s < 0:
            raise ConfigError("cache_lifetime_s must be positive and refresh_interval_s not negative")
        self.issuer = issuer
        self._jwks_uri = jwks_uri
        self._cache_lifetime_s = cache_lifetime_s
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._fetch = fetch or fetch_document
        self._lock = threading.Lock()
        # (keys by kid, fetch time) replaced as one tuple, so a lock-free reader never mixes two fetches.
        self._cached: tuple[dict[str, PyJWK], float | None] = ({}, None)
        self._last_attempt_at: float | None = None
        self.refresh_count = 0
        if jwks_uri is not None:
            require_safe_url(jwks_uri, what="jwks_uri")

    def key_for(self, kid: str) -> PyJWK:
        """The issuer's key ``kid``; refreshes (rate-limited) when stale or when the kid is unknown."""
        # Fast path without the lock, so a refresh in progress (up to the fetch timeout) does not stall
        # tokens whose key is already cached. The cached tuple is replaced whole, never mutated.
        keys, fetched_at = self._cached
        if fetched_at is not None and self._clock() - fetched_at < self._cache_lifetime_s and kid in keys:
            return keys[kid]
        with self._lock:
            now = self._clock()
            keys, fetched_at = self._cached
            fresh = fetched_at is not None and now - fetched_at < self._cache_lifetime_s
            if fresh and kid in keys:
                return keys[kid]
            if self._may_refresh(now):
                self._refresh(now)
                fresh = True
            if not fresh:
                raise TokenError(
                    f"the signing keys of issuer {self.issuer} are older than their cache lifetime and "
                    "could not be refreshed",
                    hint="the issuer or its jwks_uri is unreachable; tokens are refused until it is back",
                )
            key = self._cached[0].get(kid)
            if key is None:
                raise TokenError(f"issuer {self.issuer} has no signing key with kid {kid!r}")
            return key

    def _may_refresh(self, now: float) -> bool:
        return self._last_attempt_at is None or now - self._last_attempt_at >= self._refresh_interval_s

    def _refresh(self, now: float) -> None:
        self._last_attempt_at = now
        self.refresh_count += 1
        try:
            keys = parse_jwks(self._fetch(self._resolve_jwks_uri()), issuer=self.issuer)
        except TokenError:
            fetched_at = self._cached[1]
            if fetched_at is None or now - fetched_at >= self._cache_lifetime_s:
                self._cached = ({}, None)
            raise
        self._cached = (keys, now)

    def _resolve_jwks_uri(self) -> str:
        if self._jwks_uri is None:
            self._jwks_uri = discover_jwks_uri(self.issuer, self._fetch)
        return self._jwks_uri


def discover_jwks_uri(issuer: str, fetch: Callable[[str], bytes]) -> str:
    """OIDC discovery: the document's ``issuer`` must equal ``issuer`` exactly (OIDC Discovery 4.3)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    document = _json_object(fetch(url), what=f"discovery document of {issuer}")
    if document.get("issuer") != issuer:
        raise TokenError(f"discovery document of {issuer} names a different issuer")
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise TokenError(f"discovery document of {issuer} has no jwks_uri")
    require_safe_url(jwks_uri, what="jwks_uri")
    return jwks_uri


def parse_jwks(document: bytes, *, issuer: str) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by kid. Keys without kid or of a weak kind are skipped."""
    keys = _json_object(document, what=f"JWKS of {issuer}").get("keys")
    if not isinstance(keys, list):
        raise TokenError(f"JWKS of {issuer} has no key list")
    if len(keys) > limits.jwks_keys_max:
        raise TokenError(
            f"JWKS of {issuer} holds {len(keys)} keys, above the limit of {limits.jwks_keys_max}"
        )
    usable: dict[str, PyJWK] = {}
    for entry in keys:
        key = _signing_key(entry)
        if key is not None:
            usable[entry["kid"]] = key
    return usable


def _signing_key(entry: object) -> PyJWK | None:
    if not isinstance(entry, dict) or entry.get("kty") not in _KEY_TYPES:
        return None
    kid, algorithm = entry.get("kid"), entry.get("alg")
    if not isinstance(kid, str) or not 0 < len(kid) <= limits.jwk_kid_bytes_max:
        return None
    if entry.get("use", "sig") != "sig" or algorithm not in SAFE_ALGORITHMS:
        return None  # a key without alg could be used with several; RFC 8725 3.1 wants it pinned
    try:
        key = PyJWK(entry, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if entry["kty"] == "RSA" and key.key.key_size < _RSA_BITS_MIN:
        return None
    return key


def _json_object(document: bytes, *, what: str) -> dict[str, Any]:
    try:
        value = json.loads(document)
    except (ValueError, RecursionError) as error:
        raise TokenError(f"{what} is not valid JSON") from error
    if not isinstance(value, dict):
        raise TokenError(f"{what} is not a JSON object")
    return value


def require_safe_url(url: str, *, what: str) -> None:
    """HTTPS, or plain HTTP to a loopback address only (a test issuer on 127.0.0.1)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname and _is_loopback(parsed.hostname):
        return
    raise TokenError(f"{what} {url!r} must use https (plain http only to a loopback address)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_document(url: str) -> bytes:
    """GET ``url`` with a timeout, refusing redirects and bodies above ``limits.jwks_document_bytes_max``."""
    require_safe_url(url, what="issuer URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (checked)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=_FETCH_TIMEOUT_S) as response:
            body: bytes = response.read(limits.jwks_document_bytes_max + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        raise TokenError(f"cannot fetch {url}: {error}") from error
    if len(body) > limits.jwks_document_bytes_max:
        raise TokenError(f"document at {url} is larger than {limits.jwks_document_bytes_max} bytes")
    return body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Keys come from the configured URL only; a redirect could hand key selection to someone else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class RevokedTokens:
    """Bounded set of revoked token ids (jti); an entry is forgotten once its token would expire anyway."""

    def __init__(self, *, capacity: int = limits.revoked_token_ids_max) -> None:
        self._expiry_by_token_id: dict[str, float] = {}
        self._capacity = capacity
        self._lock = threading.Lock()

    def revoke(self, token_id: str, expires_at: float, *, now: float) -> None:
        with self._lock:
            if len(self._expiry_by_token_id) >= self._capacity:
                self._forget_expired(now)
            if len(self._expiry_by_token_id) >= self._capacity:
                raise TokenError("the revocation list is full", hint="shorten token lifetimes")
            self._expiry_by_token_id[token_id] = expires_at

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._expiry_by_token_id

    def _forget_expired(self, now: float) -> None:
        expired = [token_id for token_id, expiry in self._expiry_by_token_id.items() if expiry < now]
        for token_id in expired:
            del self._expiry_by_token_id[token_id]


@dataclass(frozen=True, slots=True)
class IssuerRules:
    """What one issuer's tokens must look like, resolved once from its :class:`OAuthProviderConfig`."""

    algorithms: tuple[str, ...]
    audiences: tuple[str, ...]
    token_types: frozenset[str]  # normalised by _token_type; "" stands for "no typ header"
    authorized_parties: frozenset[str]
    scope_claim: str
    leeway_s: float
    agent_prefix: str
    foreign_agent_prefixes: tuple[str, ...]  # other issuers' prefixes: this issuer's agent ids avoid them
    tenants: frozenset[str] | None  # None: any tenant (the only issuer, no tenants listed)
    default_tenant: str  # of a token without a tenant claim; no other issuer's (ADR 0027)

    @classmethod
    def of(
        cls,
        issuer: str,
        provider: OAuthProviderConfig,
        providers: Mapping[str, OAuthProviderConfig],
        *,
        default_audience: str,
    ) -> IssuerRules:
        """The security section's ``audience`` counts only for providers without their own; ``providers``
        (all of them, this one included) decide the agent prefixes to avoid and the default tenants."""
        unsafe = set(provider.algorithms) - SAFE_ALGORITHMS
        if unsafe:
            raise TokenError(f"issuer {issuer}: algorithms {sorted(unsafe)} are not allowed")
        audiences = provider.audiences or tuple(dict.fromkeys((provider.client_id, default_audience)))
        return cls(
            algorithms=tuple(provider.algorithms),
            audiences=audiences,
            token_types=frozenset(_token_type(kind) for kind in provider.token_types),
            authorized_parties=frozenset((provider.client_id, *provider.authorized_parties)),
            scope_claim=provider.scope_claim,
            leeway_s=provider.leeway_s,
            agent_prefix=provider.agent_prefix,
            foreign_agent_prefixes=tuple(
                other.agent_prefix
                for name, other in providers.items()
                if name != issuer and other.agent_prefix
            ),
            tenants=_allowed_tenants(provider, sole=len(providers) == 1),
            default_tenant=provider.tenant_without_claim,
        )


def _allowed_tenants(provider: OAuthProviderConfig, *, sole: bool) -> frozenset[str] | None:
    if provider.tenants is not None:
        return frozenset((*provider.tenants, provider.tenant_without_claim))
    return None if sole else frozenset((provider.tenant_without_claim,))


class TokenVerifier:
    """Verifies JWT access tokens from the configured issuers (the ``oauth_providers`` config section).

    ``audience`` is the security section's: accepted from the providers that name no audience of their own.
    """

    def __init__(
        self,
        providers: Mapping[str, OAuthProviderConfig],
        *,
        audience: str = "urn:maif:store",
        cache_lifetime_s: float = 300.0,
        refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str], bytes] | None = None,
    ) -> None:
        check_issuer_namespaces(providers)
        self._rules: dict[str, IssuerRules] = {}
        self._caches: dict[str, JWKSCache] = {}
        for issuer, provider in providers.items():
            self._rules[issuer] = IssuerRules.of(issuer, provider, providers, default_audience=audience)
            require_safe_url(issuer, what="issuer")
            self._caches[issuer] = JWKSCache(
                issuer,
                provider.jwks_uri,
                cache_lifetime_s=cache_lifetime_s,
                refresh_interval_s=refresh_interval_s,
                clock=clock,
                fetch=fetch,
            )
        self.revoked = RevokedTokens()

    def jwks_cache(self, issuer: str) -> JWKSCache:
        return self._caches[issuer]

    async def verify_async(self, token: str) -> VerifiedToken:
        """:meth:`verify` in a worker thread: a JWKS fetch never blocks the event loop."""
        return await asyncio.to_thread(self.verify, token)

    def verify(self, token: str) -> VerifiedToken:
        """The verified facts of ``token``, or :class:`TokenError` saying why it was refused."""
        raw = _checked_compact(token)
        header = _checked_header(raw)
        issuer = self._trusted_issuer(raw)
        rules = self._rules[issuer]
        token_type = _token_type(header.get("typ", ""))
        if token_type not in rules.token_types:
            raise TokenError(
                f"token type {header.get('typ')!r} is not accepted from issuer {issuer}",
                hint="the issuer's token_types lists the typ headers its access tokens carry",
            )
        if header["alg"] not in rules.algorithms:
            raise TokenError(f"algorithm {header['alg']!r} is not allowed for issuer {issuer}")
        key = self._caches[issuer].key_for(header["kid"])
        try:
            claims = jwt.decode(
                raw,
                key=key,
                algorithms=[header["alg"]],
                audience=list(rules.audiences),
                issuer=issuer,
                leeway=rules.leeway_s,
                options={"require": _REQUIRED_CLAIMS, "strict_aud": False},
            )
        except jwt.PyJWTError as error:
            raise TokenError(f"token refused: {error}") from error
        verified = _verified_token(claims, issuer, rules)
        if verified.token_id is not None and self.revoked.is_revoked(verified.token_id):
            raise TokenError("token has been revoked")
        return verified

    def revoke(self, verified: VerifiedToken) -> None:
        """Refuse this token (by its jti) from now until it expires."""
        if verified.token_id is None:
            raise TokenError("a token without jti cannot be revoked individually; rotate the issuer key")
        self.revoked.revoke(verified.token_id, verified.expires_at, now=time.time())

    def unverified_agent_id(self, token: str) -> str:
        """The agent id ``token`` claims (its issuer's prefix and its ``sub``), read WITHOUT verifying it:
        only to name the agent :meth:`SecurityManager.bootstrap_trust` then verifies the token for."""
        claims = _unverified_claims(_checked_compact(token))
        issuer, subject = claims.get("iss"), claims.get("sub")
        if not isinstance(issuer, str) or issuer not in self._rules:
            raise TokenError("token issuer is not a configured issuer")
        if not isinstance(subject, str) or not subject:
            raise TokenError("bearer token has no subject (sub)")
        return self._rules[issuer].agent_prefix + subject

    def _trusted_issuer(self, raw: bytes) -> str:
        issuer = _unverified_claims(raw).get("iss")
        if not isinstance(issuer, str) or issuer not in self._caches:
            raise TokenError("token issuer is not a configured issuer")
        return issuer


def _unverified_claims(raw: bytes) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(raw, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        raise TokenError(f"token payload is malformed: {error}") from error
    return claims


def _checked_compact(token: object) -> bytes:
    if not isinstance(token, str | bytes):
        raise TokenError(f"a token must be a string, got {type(token).__name__}")
    if len(token) > limits.token_bytes_max:
        raise TokenError(f"token is {len(token)} bytes, above the limit of {limits.token_bytes_max}")
    raw = token.encode("ascii", "replace") if isinstance(token, str) else token
    segments = raw.split(b".")
    if len(segments) != 3 or not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise TokenError("token is not a compact JWS of three base64url segments (header.payload.signature)")
    return raw


def _token_type(token_type: object) -> str:
    """``typ`` compared case-insensitively, without the optional "application/" (RFC 7515 4.1.9)."""
    if not isinstance(token_type, str):
        raise TokenError(f"token type {token_type!r} is not a string")
    lowered = token_type.lower()
    return lowered.removeprefix("application/")


def _checked_header(raw: bytes) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.PyJWTError as error:
        raise TokenError(f"token header is malformed: {error}") from error
    if "crit" in header:
        raise TokenError("token header lists critical extensions (crit) this verifier does not implement")
    if header.get("alg") not in SAFE_ALGORITHMS:
        raise TokenError(f"token algorithm {header.get('alg')!r} is not allowed")
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= limits.jwk_kid_bytes_max:
        raise TokenError("token header has no usable kid")
    return header


def _verified_token(claims: Mapping[str, Any], issuer: str, rules: IssuerRules) -> VerifiedToken:
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise TokenError("token subject (sub) must be a non-empty string")
    agent_id = _agent_id(subject, issuer, rules)
    issued_at, expires_at = float(claims["iat"]), float(claims["exp"])
    if expires_at - issued_at > limits.token_lifetime_s_max:
        raise TokenError(f"token lifetime exceeds {limits.token_lifetime_s_max} seconds")
    audience = claims["aud"]
    token_id, tenant = claims.get("jti"), claims.get("tenant", "")
    authorized_party = claims.get("azp")
    # RFC 9068 client_id, else the client the token was issued to: azp (Keycloak, Auth0, Entra, Google)
    # or cid (Okta).
    client_id = claims.get("client_id", claims.get("cid", authorized_party))
    if not all(isinstance(value, str | None) for value in (token_id, client_id, authorized_party)):
        raise TokenError("token claims jti, client_id, cid and azp must be strings")
    if not isinstance(tenant, str):
        raise TokenError("token claim tenant must be a string")
    tenant = tenant or rules.default_tenant  # an empty claim is no claim: never another issuer's ""
    if rules.tenants is not None and tenant not in rules.tenants:
        raise TokenError(
            f"issuer {issuer} may not vouch for tenant {tenant!r}",
            hint="list the tenant in this provider's tenants; each tenant belongs to one issuer",
        )
    if authorized_party is not None and authorized_party not in rules.authorized_parties:
        raise TokenError(
            f"token was issued to client {authorized_party!r} (azp), which this issuer's configuration "
            "does not authorize",
            hint="list the client in the provider's authorized_parties",
        )
    return VerifiedToken(
        issuer=issuer,
        subject=subject,
        agent_id=agent_id,
        audience=(audience,) if isinstance(audience, str) else tuple(audience),
        scopes=_scopes(claims, rules.scope_claim),
        token_id=token_id,
        client_id=client_id,
        tenant=tenant,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def _agent_id(subject: str, issuer: str, rules: IssuerRules) -> str:
    """``agent_prefix + sub``: bounded, and never inside another issuer's prefix (issue 14)."""
    agent_id = rules.agent_prefix + subject
    if len(agent_id.encode("utf-8", "replace")) > limits.agent_id_bytes_max:
        raise TokenError(
            f"token subject (sub) with the issuer's agent_prefix is longer than {limits.agent_id_bytes_max} "
            "bytes"
        )
    if any(agent_id.startswith(prefix) for prefix in rules.foreign_agent_prefixes):
        raise TokenError(
            f"token subject (sub) of issuer {issuer} begins with another issuer's agent_prefix",
            hint="that agent id belongs to another issuer's agents",
        )
    return agent_id


def _scopes(claims: Mapping[str, Any], scope_claim: str) -> frozenset[str]:
    """RFC 9068 ``scope``, or ``scp`` (Okta, Entra ID): a space-separated string or a list of names."""
    scope = claims.get(scope_claim, "")
    names = scope.split() if isinstance(scope, str) else scope
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise TokenError("token scope claim must be a string or a list of strings")
    if len(names) > limits.token_scopes_max:
        raise TokenError(f"token carries {len(names)} scopes, above the limit of {limits.token_scopes_max}")
    return frozenset(names)


__all__ = [
    "ACCESS_TOKEN_TYPES",
    "KNOWN_SCOPES",
    "SAFE_ALGORITHMS",
    "IssuerRules",
    "JWKSCache",
    "RevokedTokens",
    "TokenVerifier",
    "VerifiedToken",
    "discover_jwks_uri",
    "fetch_document",
    "parse_jwks",
    "require_safe_url",
]
