"""BASIC_AUTH credentials: argon2id-hashed passwords and random API keys stored only as digests.

A :class:`CredentialStore` answers one question: does this secret belong to this principal? It never
keeps a secret: passwords are argon2id hashes (``argon2-cffi``, RFC 9106 parameters), API keys are 32
random bytes whose BLAKE3 digest is kept and compared in constant time (a key with 256 bits of entropy
needs no slow hash; a password does). Unknown principals still cost one argon2 verification, so response
time does not reveal which principals exist.

An API key reads ``maif_<key id hex>_<secret base64url>``: the id finds the record without scanning, the
secret proves possession. Trust level BASIC_AUTH is the most either can earn (see :mod:`maif.security.trust`).

The store can be saved to and loaded from a JSON file of hashes (never secrets); the file holds nothing an
attacker could log in with, but it should still be readable only by its owner.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import argon2
import blake3

from maif import limits
from maif.durable import write_atomically
from maif.errors import AuthenticationError, ConfigError, StorageError

_API_KEY_PREFIX = "maif_"
_API_KEY_ID_BYTES = 8
_API_KEY_SECRET_BYTES = 32
_DIGEST_CONTEXT = "MAIF 2026-11 API key digest"


@dataclass(frozen=True, slots=True)
class BasicIdentity:
    """A principal that proved a password or an API key, with the scopes granted to that credential."""

    principal: str
    scopes: frozenset[str]
    method: str  # "password" | "api_key"
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class _PasswordRecord:
    password_hash: str
    scopes: frozenset[str]
    tenant: str


@dataclass(frozen=True, slots=True)
class _ApiKeyRecord:
    principal: str
    secret_digest: bytes
    scopes: frozenset[str]
    tenant: str


class CredentialStore:
    """Passwords and API keys of principals (agents or people), held as hashes only. Thread-safe."""

    def __init__(self, *, hasher: argon2.PasswordHasher | None = None) -> None:
        # argon2id with argon2-cffi's defaults: RFC 9106's second recommended option (64 MiB, t=3, p=4).
        self._hasher = hasher or argon2.PasswordHasher(type=argon2.Type.ID)
        self._passwords: dict[str, _PasswordRecord] = {}
        self._api_keys: dict[bytes, _ApiKeyRecord] = {}
        self._lock = threading.Lock()
        self._dummy_hash: str | None = None  # made on first need: one argon2 hash costs ~0.5 s here

    def set_password(
        self, principal: str, password: str, *, scopes: Iterable[str] = ("maif:read",), tenant: str = ""
    ) -> None:
        _check_principal(principal)
        _check_secret_length("password", password, limits.password_bytes_max)
        record = _PasswordRecord(self._hasher.hash(password), frozenset(scopes), tenant)
        with self._lock:
            self._require_room(replacing=principal in self._passwords)
            self._passwords[principal] = record

    def verify_password(self, principal: str, password: str) -> BasicIdentity:
        """The identity of ``principal`` if ``password`` is theirs, else :class:`AuthenticationError`."""
        _check_secret_length("password", password, limits.password_bytes_max)
        record = self._passwords.get(principal)
        try:
            # The dummy verification makes "no such principal" cost as much as "wrong password".
            self._hasher.verify(record.password_hash if record else self._dummy(), password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError) as error:
            raise AuthenticationError("wrong principal or password") from error
        if record is None:
            raise AuthenticationError("wrong principal or password")
        if self._hasher.check_needs_rehash(record.password_hash):
            self.set_password(principal, password, scopes=record.scopes, tenant=record.tenant)
        return BasicIdentity(principal, record.scopes, "password", record.tenant)

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy_hash

    def issue_api_key(
        self, principal: str, *, scopes: Iterable[str] = ("maif:read",), tenant: str = ""
    ) -> str:
        """A new API key for ``principal``. It is shown once: only its digest is kept."""
        _check_principal(principal)
        key_id = secrets.token_bytes(_API_KEY_ID_BYTES)
        secret = secrets.token_bytes(_API_KEY_SECRET_BYTES)
        with self._lock:
            self._require_room(replacing=False)
            self._api_keys[key_id] = _ApiKeyRecord(principal, _digest(secret), frozenset(scopes), tenant)
        encoded_secret = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
        return f"{_API_KEY_PREFIX}{key_id.hex()}_{encoded_secret}"

    def verify_api_key(self, api_key: str) -> BasicIdentity:
        """The identity an API key belongs to, else :class:`AuthenticationError`."""
        key_id, secret = _parse_api_key(api_key)
        record = self._api_keys.get(key_id)
        expected = record.secret_digest if record else _digest(b"\0" * _API_KEY_SECRET_BYTES)
        if not hmac.compare_digest(_digest(secret), expected) or record is None:
            raise AuthenticationError("API key refused")
        return BasicIdentity(record.principal, record.scopes, "api_key", record.tenant)

    def revoke_api_key(self, api_key_or_id: str) -> None:
        """Forget an API key (given whole, or as the hex id shown in ``maif_<id>_...``)."""
        key_id = _parse_api_key(api_key_or_id)[0] if api_key_or_id.startswith(_API_KEY_PREFIX) else None
        if key_id is None:
            try:
                key_id = bytes.fromhex(api_key_or_id)
            except ValueError as error:
                raise AuthenticationError("not an API key or API key id") from error
        with self._lock:
            self._api_keys.pop(key_id, None)

    def save(self, path: str | Path) -> None:
        """Write the hashes (never secrets) to ``path`` atomically, readable by the owner only."""
        document = {
            "passwords": {
                principal: {
                    "hash": record.password_hash,
                    "scopes": sorted(record.scopes),
                    "tenant": record.tenant,
                }
                for principal, record in self._passwords.items()
            },
            "api_keys": {
                key_id.hex(): {
                    "principal": record.principal,
                    "digest": record.secret_digest.hex(),
                    "scopes": sorted(record.scopes),
                    "tenant": record.tenant,
                }
                for key_id, record in self._api_keys.items()
            },
        }
        try:
            write_atomically(path, json.dumps(document).encode("utf-8"), mode=0o600)
        except OSError as error:
            raise StorageError(f"cannot save credentials to {path}: {error.strerror}") from error

    @classmethod
    def load(cls, path: str | Path, *, hasher: argon2.PasswordHasher | None = None) -> CredentialStore:
        store = cls(hasher=hasher)
        try:
            document = json.loads(Path(path).read_bytes())
            for principal, entry in document["passwords"].items():
                store._passwords[principal] = _PasswordRecord(
                    str(entry["hash"]), frozenset(entry["scopes"]), str(entry["tenant"])
                )
            for key_id, entry in document["api_keys"].items():
                store._api_keys[bytes.fromhex(key_id)] = _ApiKeyRecord(
                    str(entry["principal"]),
                    bytes.fromhex(entry["digest"]),
                    frozenset(entry["scopes"]),
                    str(entry["tenant"]),
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(f"credential file {path} is unreadable or malformed") from error
        if len(store._passwords) + len(store._api_keys) > limits.credentials_max:
            raise ConfigError(f"credential file {path} holds more than {limits.credentials_max} credentials")
        return store

    def _require_room(self, *, replacing: bool) -> None:
        if not replacing and len(self._passwords) + len(self._api_keys) >= limits.credentials_max:
            raise ConfigError(f"the credential store is full ({limits.credentials_max} credentials)")


def _digest(secret: bytes) -> bytes:
    return blake3.blake3(secret, derive_key_context=_DIGEST_CONTEXT).digest()


def _parse_api_key(api_key: str) -> tuple[bytes, bytes]:
    _check_secret_length("API key", api_key, limits.api_key_bytes_max)
    # The secret is base64url and may itself contain "_": split at the first one after the prefix only.
    key_id_hex, separator, encoded_secret = api_key.removeprefix(_API_KEY_PREFIX).partition("_")
    try:
        if not api_key.startswith(_API_KEY_PREFIX) or not separator:
            raise ValueError("layout")
        key_id = bytes.fromhex(key_id_hex)
        secret = base64.urlsafe_b64decode(encoded_secret + "=" * (-len(encoded_secret) % 4))
    except ValueError as error:
        raise AuthenticationError("API key refused: not of the form maif_<id>_<secret>") from error
    if len(key_id) != _API_KEY_ID_BYTES or len(secret) != _API_KEY_SECRET_BYTES:
        raise AuthenticationError("API key refused: not of the form maif_<id>_<secret>")
    return key_id, secret


def _check_principal(principal: str) -> None:
    if (
        not isinstance(principal, str)
        or not 0 < len(principal.encode("utf-8", "replace")) <= limits.agent_id_bytes_max
    ):
        raise ConfigError("a principal must be a non-empty string of at most agent_id_bytes_max bytes")


def _check_secret_length(what: str, secret: str, limit: int) -> None:
    if not isinstance(secret, str):
        raise AuthenticationError(f"{what} must be a string")
    if len(secret.encode("utf-8", "replace")) > limit:
        raise AuthenticationError(f"{what} is longer than {limit} bytes")


__all__ = ["BasicIdentity", "CredentialStore"]
