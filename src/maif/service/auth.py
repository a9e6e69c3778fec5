"""Bearer tokens to security contexts, once per token: the service's side of the security gate.

Every /v1 request carries ``Authorization: Bearer <JWT>``. The first time a token is seen the service
calls :meth:`SecurityManager.bootstrap_trust` (full verification against the configured issuers, audited)
and caches the sealed context until it expires. The cache key is the BLAKE3 digest of the whole token,
never its ``jti`` alone: a forged token reusing a valid token's jti must miss the cache and be verified.
A cached context is dropped when its token is revoked (the verifier's revocation list is consulted on
every hit) or expires.

A caller who proves more (a TPM quote, a key, approvals) through POST /v1/trust/bootstrap gets a session
id; presenting it in ``MAIF-Session`` with the SAME token selects that higher context.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from maif import limits
from maif.errors import AuthenticationError, TokenError
from maif.security.manager import SecurityManager
from maif.security.trust import SecurityContext

SESSION_HEADER = "maif-session"


@dataclass(frozen=True, slots=True)
class _Session:
    token_digest: bytes
    context: SecurityContext


class Authenticator:
    """Turns an Authorization header (and optional session id) into a verified :class:`SecurityContext`."""

    def __init__(
        self,
        manager: SecurityManager,
        *,
        cache_entries_max: int = limits.service_auth_cache_entries_max,
        sessions_max: int = limits.service_sessions_max,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert cache_entries_max > 0 and sessions_max > 0
        self._manager = manager
        self._clock = clock
        self._contexts: OrderedDict[bytes, SecurityContext] = OrderedDict()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._cache_entries_max = cache_entries_max
        self._sessions_max = sessions_max
        self.cache_hits_total = 0
        self.cache_misses_total = 0

    async def context_for(self, authorization: str | None, session_id: str | None = None) -> SecurityContext:
        """The caller's context, or :class:`AuthenticationError` (missing, malformed, forged, expired)."""
        token = bearer_token(authorization)
        digest = blake3.blake3(token.encode("utf-8")).digest()
        if session_id is not None:
            return self._session_context(session_id, digest)
        context = self._cached(digest)
        if context is not None:
            self.cache_hits_total += 1
            return context
        self.cache_misses_total += 1
        context = await self._manager.bootstrap_trust(self._claimed_agent_id(token), token)
        self._remember(digest, context)
        return context

    async def open_session(
        self, authorization: str | None, **evidence: object
    ) -> tuple[str, SecurityContext]:
        """Bootstrap with extra evidence (attestation, key proof, approvals); a session id for the context."""
        token = bearer_token(authorization)
        context = await self._manager.bootstrap_trust(self._claimed_agent_id(token), token, **evidence)  # type: ignore[arg-type]
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(blake3.blake3(token.encode("utf-8")).digest(), context)
        while len(self._sessions) > self._sessions_max:
            self._sessions.popitem(last=False)
        return session_id, context

    def _claimed_agent_id(self, token: str) -> str:
        """The agent the token names (its issuer's agent_prefix and its sub), read WITHOUT verification:
        :meth:`SecurityManager.bootstrap_trust` then verifies the token and refuses a mismatch."""
        return self._manager.token_verifier.unverified_agent_id(token)

    def _session_context(self, session_id: str, token_digest: bytes) -> SecurityContext:
        session = self._sessions.get(session_id)
        if session is None or not secrets.compare_digest(session.token_digest, token_digest):
            raise AuthenticationError("unknown session, or a session opened with another token")
        if not self._usable(session.context):
            del self._sessions[session_id]
            raise AuthenticationError("session has expired or its token was revoked; bootstrap again")
        return session.context

    def _cached(self, digest: bytes) -> SecurityContext | None:
        context = self._contexts.get(digest)
        if context is None:
            return None
        if not self._usable(context):
            del self._contexts[digest]
            return None
        self._contexts.move_to_end(digest)
        return context

    def _usable(self, context: SecurityContext) -> bool:
        if context.is_expired(self._clock()):
            return False
        token_id = context.token_id
        return token_id is None or not self._manager.token_verifier.revoked.is_revoked(token_id)

    def _remember(self, digest: bytes, context: SecurityContext) -> None:
        self._contexts[digest] = context
        while len(self._contexts) > self._cache_entries_max:
            self._contexts.popitem(last=False)

    @property
    def cached_contexts(self) -> int:
        return len(self._contexts)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, size-checked before anything decodes it."""
    if not authorization:
        raise AuthenticationError("missing bearer token (Authorization: Bearer <access token>)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("the Authorization header must use the Bearer scheme")
    if len(token) > limits.token_bytes_max or not token.isascii():
        raise TokenError(f"bearer token is not ASCII of at most {limits.token_bytes_max} bytes")
    return token


__all__ = ["SESSION_HEADER", "Authenticator", "bearer_token"]
