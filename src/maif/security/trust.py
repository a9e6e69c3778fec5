"""Trust levels, the evidence behind each, and the security context a verified caller carries.

A trust level is earned by evidence, never claimed (docs/ARCHITECTURE.md, "Security", has the table):

    UNTRUSTED=0               nothing verified
    BASIC_AUTH=1              a password (argon2id) or an API key of a registered principal
    OAUTH_VERIFIED=2          a JWT access token verified against a configured issuer's JWKS
    HARDWARE_ATTESTED=3       level 2 AND a TPM quote verified with the AK enrolled for the same identity
                              (the token's ``sub`` is the agent id the AK was enrolled for)
    CRYPTOGRAPHICALLY_PROVEN=4 level 3 AND proof of possession of the agent's registered Ed25519 key,
                              bound to that TPM: the agent signs the challenge nonce with the key, and the
                              quote's extraData is SHA-256(nonce || raw public key of that key)
    MULTI_PARTY_VERIFIED=5    level 4 AND k-of-n signed approvals by registered approvers over a
                              statement naming the agent and this bootstrap's challenge nonce

A :class:`SecurityContext` records the outcome. It expires with the first of its token, its attestation
and its signing key; it is sealed by the :class:`ContextSealer` of the manager that minted it (a keyed
BLAKE3 tag over every field), so a context built or altered by hand (``dataclasses.replace`` with a higher
level) is refused by the gate.
"""

from __future__ import annotations

import enum
import hmac
import secrets
import struct
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from maif import limits
from maif.errors import AuthenticationError, AuthorizationError, ConfigError


class TrustLevel(enum.IntEnum):
    """How much has been verified about a caller (the seed's levels; higher includes lower)."""

    UNTRUSTED = 0
    BASIC_AUTH = 1
    OAUTH_VERIFIED = 2
    HARDWARE_ATTESTED = 3
    CRYPTOGRAPHICALLY_PROVEN = 4
    MULTI_PARTY_VERIFIED = 5


# Operation names a context's ``permissions`` may hold (see maif.security.policy.Operation).
READ_PUBLIC = "read_public"
READ_SENSITIVE = "read_sensitive"
WRITE_OWN = "write_own"
WRITE_SHARED = "write_shared"
ADMINISTER = "administer"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class SecurityContext:
    """A verified caller: who, how well verified, what they may do in principle, and until when.

    ``permissions`` are operation names (``write_own``, ``read_sensitive``, ...) this context passes the
    trust and scope checks for; the gate still decides each request against its resource (owner,
    sensitivity, tenant). Times are Unix seconds.
    """

    context_id: str
    agent_id: str
    trust_level: TrustLevel
    scopes: frozenset[str]
    permissions: frozenset[str]
    tenant: str
    issued_at: float
    expires_at: float
    evidence: tuple[str, ...]  # what was verified, e.g. ("oauth:http://issuer", "tpm:<ak name hex>")
    token_id: str | None = None
    signing_key_id: bytes | None = None
    approvers: tuple[str, ...] = ()
    seal: bytes = field(default=b"", repr=False)

    def can_write(self) -> bool:
        return WRITE_OWN in self.permissions

    def can_read_sensitive(self) -> bool:
        return READ_SENSITIVE in self.permissions

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    @property
    def expiry(self) -> float:
        """The seed's name for :attr:`expires_at`."""
        return self.expires_at


class ContextSealer:
    """Mints and checks :class:`SecurityContext` seals with a per-process random key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        assert len(self._key) == 32
        # The exact objects minted here, while they live: checking one is an identity test (well under a
        # microsecond) instead of recomputing its tag. Any other object (a copy, an edit, a forgery) takes
        # the tag path. Weak values: the map never outlives the contexts, so it needs no bound of its own.
        self._minted: weakref.WeakValueDictionary[str, SecurityContext] = weakref.WeakValueDictionary()

    def mint(
        self,
        *,
        agent_id: str,
        trust_level: TrustLevel,
        scopes: frozenset[str],
        permissions: frozenset[str],
        tenant: str,
        issued_at: float,
        expires_at: float,
        evidence: tuple[str, ...],
        token_id: str | None = None,
        signing_key_id: bytes | None = None,
        approvers: tuple[str, ...] = (),
    ) -> SecurityContext:
        unsealed = SecurityContext(
            secrets.token_hex(16),
            agent_id,
            trust_level,
            scopes,
            permissions,
            tenant,
            issued_at,
            expires_at,
            evidence,
            token_id,
            signing_key_id,
            approvers,
        )
        context = _with_seal(unsealed, self._tag(unsealed))
        self._minted[context.context_id] = context
        return context

    def check(self, context: object) -> SecurityContext:
        """``context`` if this sealer minted it unchanged, else :class:`AuthorizationError`."""
        if not isinstance(context, SecurityContext):
            raise AuthorizationError(f"expected a SecurityContext, got {type(context).__name__}")
        if self._minted.get(context.context_id) is context:
            return context
        if not hmac.compare_digest(context.seal, self._tag(context)):
            raise AuthorizationError("security context was not issued by this manager, or was altered")
        return context

    def _tag(self, context: SecurityContext) -> bytes:
        hasher = blake3.blake3(key=self._key)
        for text in (context.context_id, context.agent_id, context.tenant, context.token_id or ""):
            _update_framed(hasher, text.encode("utf-8", "surrogatepass"))
        hasher.update(struct.pack("<Bdd", int(context.trust_level), context.issued_at, context.expires_at))
        for group in (context.scopes, context.permissions):
            _update_framed(hasher, "\n".join(sorted(group)).encode("utf-8", "surrogatepass"))
        for group_tuple in (context.evidence, context.approvers):
            _update_framed(hasher, "\n".join(group_tuple).encode("utf-8", "surrogatepass"))
        _update_framed(hasher, context.signing_key_id or b"")
        return hasher.digest()


def _update_framed(hasher: blake3.blake3, data: bytes) -> None:
    hasher.update(struct.pack("<I", len(data)))
    hasher.update(data)


def _with_seal(context: SecurityContext, seal: bytes) -> SecurityContext:
    return SecurityContext(
        context.context_id,
        context.agent_id,
        context.trust_level,
        context.scopes,
        context.permissions,
        context.tenant,
        context.issued_at,
        context.expires_at,
        context.evidence,
        context.token_id,
        context.signing_key_id,
        context.approvers,
        seal,
    )


# --- proof of key possession (CRYPTOGRAPHICALLY_PROVEN) -----------------------------------------------
_POSSESSION_DOMAIN = b"MAIF key possession v1\0"


@dataclass(frozen=True, slots=True)
class KeyPossessionProof:
    """An agent's signature over the challenge nonce with its registered Ed25519 key."""

    key_id: bytes
    signature: bytes


def possession_statement(agent_id: str, nonce: bytes) -> bytes:
    """What the agent signs to prove it holds its key: domain, agent id and the challenge nonce."""
    return _POSSESSION_DOMAIN + _framed(agent_id.encode("utf-8")) + _framed(nonce)


_REGISTRATION_DOMAIN = b"MAIF key registration v1\0"


def registration_statement(agent_id: str, public_key: bytes) -> bytes:
    """What an agent signs with a new Ed25519 key to register it: domain, agent id and the raw public
    key, so a registration proves possession and cannot register the key for another agent."""
    return _REGISTRATION_DOMAIN + _framed(agent_id.encode("utf-8")) + _framed(public_key)


# --- multi-party approvals (MULTI_PARTY_VERIFIED) --------------------------------------------------------
_APPROVAL_DOMAIN = b"MAIF multi-party approval v1\0"


@dataclass(frozen=True, slots=True)
class Approval:
    """One approver's Ed25519 signature over :func:`approval_statement`."""

    approver_id: str
    signature: bytes


def approval_statement(agent_id: str, nonce: bytes, purpose: str = "bootstrap") -> bytes:
    """The statement approvers sign: it names the agent and the context (this bootstrap's challenge nonce,
    single-use, so an approval can never be replayed into another context)."""
    return (
        _APPROVAL_DOMAIN
        + _framed(agent_id.encode("utf-8"))
        + _framed(nonce)
        + _framed(purpose.encode("utf-8"))
    )


class ApproverRegistry:
    """The n registered approver keys and the k distinct approvals MULTI_PARTY_VERIFIED requires."""

    def __init__(self, approvers: Mapping[str, Ed25519PublicKey], required: int) -> None:
        if len(approvers) > limits.approvers_max:
            raise ConfigError(f"at most {limits.approvers_max} approvers may be registered")
        if approvers and not 1 <= required <= len(approvers):
            raise ConfigError(f"approvals required must be between 1 and {len(approvers)}, got {required}")
        self._approvers = dict(approvers)
        self.required = required

    @property
    def enabled(self) -> bool:
        return bool(self._approvers)

    def verify(self, agent_id: str, nonce: bytes, approvals: Sequence[Approval]) -> tuple[str, ...]:
        """The ids of the approvers whose approvals verify; :class:`AuthenticationError` below k."""
        if not self._approvers:
            raise AuthenticationError("multi-party verification is not configured (no approvers)")
        if len(approvals) > limits.approvers_max:
            raise AuthenticationError(f"more than {limits.approvers_max} approvals presented")
        statement = approval_statement(agent_id, nonce)
        approved: set[str] = set()
        for approval in approvals:
            key = self._approvers.get(approval.approver_id)
            if key is None or approval.approver_id in approved:
                continue  # unknown approvers and duplicates count for nothing
            try:
                key.verify(approval.signature, statement)
            except InvalidSignature:
                continue
            approved.add(approval.approver_id)
        if len(approved) < self.required:
            raise AuthenticationError(
                f"{len(approved)} valid approvals for agent {agent_id!r}, {self.required} required"
            )
        return tuple(sorted(approved))


def _framed(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


__all__ = [
    "ADMINISTER",
    "READ_PUBLIC",
    "READ_SENSITIVE",
    "WRITE_OWN",
    "WRITE_SHARED",
    "Approval",
    "ApproverRegistry",
    "ContextSealer",
    "KeyPossessionProof",
    "SecurityContext",
    "TrustLevel",
    "approval_statement",
    "possession_statement",
    "registration_statement",
]
