"""Per-agent Ed25519 signing keys, encrypted at rest, with rotation and revocation.

A :class:`KeyStore` is one file holding every agent's signing keys. It is protected in two layers, both
AES-256-GCM (envelope encryption, docs/adr/0020-keystore-envelope-encryption.md):

* each private key is sealed by its own random 32-byte *data key*, with associated data binding the agent
  id, the key id and the public key (a sealed key moved to another record or agent does not open);
* each data key is wrapped by a key-encryption key derived from the 32-byte *master key*, with associated
  data binding the agent id and key id;
* the whole index (agent ids, validity windows, revocation times, the sealed keys) is itself encrypted
  and authenticated under a second key derived from the master key, so a revocation cannot be erased and
  a key cannot be added, removed or re-dated without the master key.

File layout (all integers little-endian)::

    magic "MAIFKEYS" (8) | version u16 = 1 | reserved u16 = 0 | master key id (16) | nonce (12)
    | AES-256-GCM(index key, nonce, msgpack(index), associated data = the 40 header bytes before it)

The master key id (a keyed BLAKE3 derivation) lets a wrong master key be told apart from damage. The file
is replaced atomically (temporary file, fsync, rename, fsync of the directory) under an exclusive lock
on ``<path>.lock``, and every read authenticates it: a wrong master key, a flipped bit or a truncated
file is a typed :class:`~maif.errors.CryptoError` / :class:`~maif.errors.FormatError`, never garbage.

Keys and time: a key is valid for signing from ``not_before`` until ``not_after`` (``None``: no expiry)
unless revoked. :meth:`KeyStore.rotate` makes a new current key and closes the old key's window at the
rotation time, so signatures it made before stay verifiable. :meth:`KeyStore.revoke` records a time from
which the key's signatures are refused (revocation may be back-dated to the suspected compromise).

External signers (KMS/HSM): anything implementing :class:`Signer` (``key_id``, ``public_key``,
``sign(data)``) can sign audit checkpoints and blocks. A KMS adapter keeps the private key in the KMS and
calls its asymmetric-sign operation (Ed25519 / EdDSA) in ``sign``; its ``key_id`` MUST be
:func:`key_id_of` of the raw public key so verifiers can find the key from the public key alone. Register
the public key here with :meth:`KeyStore.import_public_key` so :meth:`KeyStore.verify`, rotation windows
and revocation apply to it like to a local key; :meth:`KeyStore.signer` refuses such an agent because
the private key is not here. No KMS client ships with MAIF.

Known limit: the keystore cannot detect being replaced by an *older* copy of itself (a rollback that
un-revokes a key). :attr:`KeyStore.generation` increases with every write; a deployment that needs
rollback protection records it somewhere the attacker cannot write.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Protocol, runtime_checkable

import blake3
import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from maif import limits
from maif.errors import (
    ConfigError,
    CryptoError,
    DecryptionError,
    FormatError,
    LimitExceededError,
    SignatureError,
)
from maif.security.sealed_file import NONCE_BYTES, TAG_BYTES, SealedFile, derive_key

MASTER_KEY_BYTES = 32
KEY_ID_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_MAGIC = b"MAIFKEYS"
_VERSION = 1
_NONCE_BYTES = NONCE_BYTES
_SEALED_BYTES = NONCE_BYTES + 32 + TAG_BYTES
_FUTURE_SKEW_S = 300.0  # signatures dated further ahead of our clock than this are refused

_CONTEXT_INDEX_KEY = "MAIF keystore 2026-11 index encryption key"
_CONTEXT_WRAP_KEY = "MAIF keystore 2026-11 data key wrapping key"

KeyId = Annotated[bytes, msgspec.Meta(min_length=KEY_ID_BYTES, max_length=KEY_ID_BYTES)]
RawPublicKey = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]


@runtime_checkable
class Signer(Protocol):
    """Something that signs with one Ed25519 key: the local keystore, or an adapter to a KMS/HSM."""

    @property
    def key_id(self) -> bytes:
        """:func:`key_id_of` the public key (16 bytes)."""
        ...

    @property
    def public_key(self) -> Ed25519PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``.

        Raises a :class:`~maif.errors.MAIFError` (never a foreign exception: an adapter converts its
        client's errors) if the key may not sign now or the signing service fails.
        """
        ...


@runtime_checkable
class ExternalSigner(Signer, Protocol):
    """A :class:`Signer` whose private key lives outside MAIF (a KMS or an HSM); see the module doc."""


class KeyInfo(msgspec.Struct, frozen=True):
    """The public facts about one key. Times are Unix seconds; ``None`` means no bound."""

    key_id: bytes
    agent_id: str
    public_key: bytes
    not_before: float
    not_after: float | None
    revoked_at: float | None
    external: bool = False

    def public_key_object(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)

    def valid_at(self, when: float) -> bool:
        """Whether a signature dated ``when`` falls inside this key's window and before revocation."""
        if not math.isfinite(when) or when < self.not_before:
            return False
        if self.not_after is not None and when > self.not_after:
            return False
        return self.revoked_at is None or when < self.revoked_at


class _KeyRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key_id: KeyId
    agent_id: str
    public_key: RawPublicKey
    created_at: float
    not_before: float
    not_after: float | None
    revoked_at: float | None
    wrapped_data_key: bytes  # empty for an external key
    sealed_private_key: bytes  # empty for an external key

    def info(self) -> KeyInfo:
        return KeyInfo(
            self.key_id,
            self.agent_id,
            self.public_key,
            self.not_before,
            self.not_after,
            self.revoked_at,
            external=not self.sealed_private_key,
        )


class _Index(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    generation: int
    keys: list[_KeyRecord]


_INDEX_DECODER = msgspec.msgpack.Decoder(_Index)
_ENCODER = msgspec.msgpack.Encoder()


def key_id_of(public_key: bytes | Ed25519PublicKey) -> bytes:
    """The 16-byte id of an Ed25519 public key: BLAKE3 of its 32 raw bytes, truncated.

    The same definition as ``maif.format.signing.key_id``, so one key has one id in .maif manifests,
    block signatures and audit checkpoints.
    """
    raw = raw_public_key(public_key) if isinstance(public_key, Ed25519PublicKey) else public_key
    if len(raw) != PUBLIC_KEY_BYTES:
        raise CryptoError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, got {len(raw)}")
    return blake3.blake3(raw).digest()[:KEY_ID_BYTES]


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def generate_master_key() -> bytes:
    """A fresh random 32-byte master key (store it in a file readable only by its owner, or a secret)."""
    return os.urandom(MASTER_KEY_BYTES)


def master_key_from_environment(variable: str = "MAIF_MASTER_KEY", file: Path | None = None) -> bytes:
    """The master key from ``file`` if given, else from the environment variable.

    Either holds the 32 bytes raw (files only), as 64 hex digits, or as base64. A key file readable by
    group or others is refused, like ssh refuses such private keys.
    """
    if file is not None:
        return _master_key_from_file(Path(file))
    text = os.environ.get(variable)
    if text is None:
        raise ConfigError(
            f"no master key: environment variable {variable} is not set",
            hint="set it to 64 hex digits (32 random bytes), or pass a key file",
        )
    return _decode_master_key(text.encode("ascii", "replace"), f"environment variable {variable}")


def _master_key_from_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(limits.master_key_file_bytes_max + 1)
    except OSError as error:
        raise ConfigError(f"cannot read master key file {path}: {error.strerror}") from error
    if mode & 0o077:
        raise ConfigError(f"master key file {path} is readable by group or others", hint=f"chmod 600 {path}")
    if len(data) > limits.master_key_file_bytes_max:
        raise LimitExceededError("master key file", len(data), limits.master_key_file_bytes_max)
    if len(data) == MASTER_KEY_BYTES:
        return data
    return _decode_master_key(data, f"master key file {path}")


def _decode_master_key(text: bytes, source: str) -> bytes:
    stripped = text.strip()
    decoded: bytes | None = None
    if len(stripped) == 2 * MASTER_KEY_BYTES:
        with contextlib.suppress(ValueError):
            decoded = bytes.fromhex(stripped.decode("ascii", "replace"))
    if decoded is None:
        with contextlib.suppress(binascii.Error, ValueError):
            decoded = base64.b64decode(
                stripped, altchars=b"-_" if b"-" in stripped or b"_" in stripped else None, validate=True
            )
    if decoded is None or len(decoded) != MASTER_KEY_BYTES:
        raise ConfigError(f"{source} does not hold a 32-byte key as hex or base64")
    return decoded


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(part)) + part for part in parts)


def _seal(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def _open_sealed(key: bytes, sealed: bytes, associated_data: bytes, what: str) -> bytes:
    if len(sealed) != _SEALED_BYTES:
        raise DecryptionError(f"{what} is {len(sealed)} bytes, expected {_SEALED_BYTES}")
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], associated_data)
    except InvalidTag as error:
        raise DecryptionError(f"{what} failed authentication (altered, or bound to another key)") from error


class MemorySigner:
    """A :class:`Signer` over an Ed25519 private key the caller holds (a new one when none is given): no
    keystore, no revocation. For offline tools, tests and benchmarks of what signs (audit logs)."""

    def __init__(self, private_key: Ed25519PrivateKey | None = None) -> None:
        self._private_key = private_key or Ed25519PrivateKey.generate()
        self.public_key: Ed25519PublicKey = self._private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)


class LocalSigner:
    """A :class:`Signer` over a key held (decrypted, in memory) from a :class:`KeyStore`.

    Each signature re-checks the key against the keystore, so a key revoked or rotated out after this
    signer was handed out stops signing at once.
    """

    def __init__(self, store: KeyStore, record: _KeyRecord, private_key: Ed25519PrivateKey) -> None:
        self._store = store
        self._key_id = record.key_id
        self._agent_id = record.agent_id
        self._private_key = private_key
        self._public_key = private_key.public_key()

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def agent_id(self) -> str:
        return self._agent_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        self._store._require_may_sign(self._key_id)
        return self._private_key.sign(data)

    def __repr__(self) -> str:
        return f"LocalSigner(agent_id={self._agent_id!r}, key_id={self._key_id.hex()})"


class KeyStore:
    """Per-agent Ed25519 keys in one encrypted file. Open with :meth:`open`; thread-safe."""

    def __init__(self, path: Path, master_key: bytes, clock: Callable[[], float]) -> None:
        self._path = path
        self._file = _sealed_file(path, master_key)
        self._wrap_key = derive_key(master_key, _CONTEXT_WRAP_KEY)
        self._clock = clock
        self._mutex = threading.RLock()
        self._index = _Index(generation=0, keys=[])

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], master_key: bytes, *, clock: Callable[[], float] = time.time
    ) -> KeyStore:
        """Open the keystore at ``path``, creating an empty one if there is no file yet."""
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_BYTES:
            raise CryptoError(f"the master key must be {MASTER_KEY_BYTES} bytes")
        store = cls(Path(path), master_key, clock)
        with store._mutex, store._file.locked():
            if store._path.exists():
                store._load()
            else:
                store._write(_Index(generation=0, keys=[]))
        return store

    @property
    def path(self) -> Path:
        return self._path

    @property
    def generation(self) -> int:
        """How many times the file has been written; it only grows (see the module doc on rollback)."""
        with self._mutex:
            self._refresh()
            return self._index.generation

    # ---- queries ---------------------------------------------------------------------------------

    def keys(self, agent_id: str) -> list[KeyInfo]:
        """Every key of ``agent_id``, oldest first, including retired and revoked ones."""
        with self._mutex:
            self._refresh()
            return [record.info() for record in self._index.keys if record.agent_id == agent_id]

    def key(self, key_id: bytes) -> KeyInfo:
        """The key with this id; raises :class:`CryptoError` if there is none."""
        with self._mutex:
            self._refresh()
            return self._record(key_id).info()

    def current_key(self, agent_id: str) -> KeyInfo | None:
        """The key ``agent_id`` signs with now, or ``None``."""
        with self._mutex:
            self._refresh()
            record = self._current_record(agent_id, self._clock())
            return None if record is None else record.info()

    def signer(self, agent_id: str) -> Signer:
        """A signer over ``agent_id``'s current key; raises :class:`CryptoError` if it has none."""
        with self._mutex:
            self._refresh()
            now = self._clock()
            record = self._current_record(agent_id, now)
            if record is None:
                raise CryptoError(
                    f"agent {agent_id!r} has no current signing key (none, expired or revoked)",
                    hint="create one with KeyStore.create_key or KeyStore.rotate",
                )
            if not record.sealed_private_key:
                raise CryptoError(
                    f"the current key of agent {agent_id!r} is held by an external signer (KMS/HSM)",
                    hint="sign through that signer; this keystore only holds its public key",
                )
            return LocalSigner(self, record, self._unseal(record))

    def verify(
        self, agent_id: str, data: bytes, signature: bytes, *, key_id: bytes, signed_at: float
    ) -> None:
        """Raise :class:`SignatureError` unless ``signature`` over ``data`` is good for ``agent_id``.

        The key must exist and belong to ``agent_id``; ``signed_at`` must lie inside its validity
        window, before any revocation and not in the future; and the Ed25519 signature must verify.
        ``signed_at`` is the time the caller vouches for (for audit records, a signed checkpoint's time).
        """
        if not isinstance(data, bytes) or not isinstance(signature, bytes) or not isinstance(key_id, bytes):
            raise SignatureError("data, signature and key id must be bytes")
        with self._mutex:
            self._refresh()
            record = self._find(key_id)
        if record is None or record.agent_id != agent_id:
            raise SignatureError(f"key {key_id.hex()} is not a key of agent {agent_id!r}")
        info = record.info()
        if not isinstance(signed_at, float | int) or signed_at > self._clock() + _FUTURE_SKEW_S:
            raise SignatureError(f"signature of agent {agent_id!r} is dated in the future")
        if not info.valid_at(float(signed_at)):
            raise SignatureError(_window_refusal(info, float(signed_at)))
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureError(f"an Ed25519 signature is {SIGNATURE_BYTES} bytes, got {len(signature)}")
        try:
            info.public_key_object().verify(signature, data)
        except InvalidSignature as error:
            raise SignatureError(f"signature does not verify under key {key_id.hex()}") from error

    # ---- changes ---------------------------------------------------------------------------------

    def create_key(self, agent_id: str, *, valid_for_s: float | None = None) -> KeyInfo:
        """A new key for an agent that has no current key; it is current from now."""
        _check_agent_id(agent_id)
        with self._mutate() as records:
            now = self._clock()
            if self._current_in(records, agent_id, now) is not None:
                raise CryptoError(
                    f"agent {agent_id!r} already has a current key", hint="use KeyStore.rotate to replace it"
                )
            record = self._new_record(agent_id, now, valid_for_s)
            records.append(record)
        return record.info()

    def rotate(self, agent_id: str, *, valid_for_s: float | None = None) -> KeyInfo:
        """A new current key; the old one stops signing now but stays for verifying older signatures."""
        _check_agent_id(agent_id)
        with self._mutate() as records:
            now = self._clock()
            old = self._current_in(records, agent_id, now)
            if old is None:
                raise CryptoError(
                    f"agent {agent_id!r} has no current key to rotate", hint="use KeyStore.create_key"
                )
            position = records.index(old)
            records[position] = msgspec.structs.replace(old, not_after=now)
            record = self._new_record(agent_id, now, valid_for_s)
            records.append(record)
        return record.info()

    def revoke(self, key_id: bytes, *, at: float | None = None) -> None:
        """Refuse the key's signatures dated at or after ``at`` (default now); never moves it later."""
        with self._mutate() as records:
            when = self._clock() if at is None else at
            if not isinstance(when, float | int) or not math.isfinite(when):
                raise CryptoError("revocation time must be a finite number of Unix seconds")
            record = self._record_in(records, key_id)
            if record.revoked_at is not None and record.revoked_at <= when:
                return
            records[records.index(record)] = msgspec.structs.replace(record, revoked_at=float(when))

    def import_public_key(
        self, agent_id: str, public_key: bytes, *, valid_for_s: float | None = None
    ) -> KeyInfo:
        """Register the public half of an external (KMS/HSM) key as ``agent_id``'s current key."""
        _check_agent_id(agent_id)
        _check_public_key(public_key)
        with self._mutate() as records:
            now = self._clock()
            key_id = key_id_of(public_key)
            if self._find_in(records, key_id) is not None:
                raise CryptoError(f"key {key_id.hex()} is already in the keystore")
            old = self._current_in(records, agent_id, now)
            if old is not None:
                records[records.index(old)] = msgspec.structs.replace(old, not_after=now)
            not_after = None if valid_for_s is None else now + _positive(valid_for_s)
            record = _KeyRecord(key_id, agent_id, public_key, now, now, not_after, None, b"", b"")
            records.append(record)
        return record.info()

    def change_master_key(self, new_master_key: bytes) -> None:
        """Re-wrap every data key and re-encrypt the index under a new master key (sealed keys stay)."""
        if not isinstance(new_master_key, bytes) or len(new_master_key) != MASTER_KEY_BYTES:
            raise CryptoError(f"the master key must be {MASTER_KEY_BYTES} bytes")
        new_wrap_key = derive_key(new_master_key, _CONTEXT_WRAP_KEY)
        with self._mutex, self._file.locked():
            self._load()
            records = []
            for record in self._index.keys:
                if record.sealed_private_key:
                    ad = _wrap_associated_data(record)
                    data_key = _open_sealed(self._wrap_key, record.wrapped_data_key, ad, "wrapped data key")
                    rewrapped = _seal(new_wrap_key, data_key, ad)
                    record = msgspec.structs.replace(record, wrapped_data_key=rewrapped)
                records.append(record)
            self._file = _sealed_file(self._path, new_master_key)
            self._wrap_key = new_wrap_key
            self._write(_Index(self._index.generation + 1, records))

    # ---- internals -------------------------------------------------------------------------------

    def _new_record(self, agent_id: str, now: float, valid_for_s: float | None) -> _KeyRecord:
        private_key = Ed25519PrivateKey.generate()
        public = raw_public_key(private_key.public_key())
        key_id = key_id_of(public)
        not_after = None if valid_for_s is None else now + _positive(valid_for_s)
        draft = _KeyRecord(key_id, agent_id, public, now, now, not_after, None, b"", b"")
        data_key = AESGCM.generate_key(bit_length=256)
        private_raw = private_key.private_bytes_raw()
        sealed = _seal(data_key, private_raw, _seal_associated_data(draft))
        wrapped = _seal(self._wrap_key, data_key, _wrap_associated_data(draft))
        return msgspec.structs.replace(draft, wrapped_data_key=wrapped, sealed_private_key=sealed)

    def _unseal(self, record: _KeyRecord) -> Ed25519PrivateKey:
        data_key = _open_sealed(
            self._wrap_key, record.wrapped_data_key, _wrap_associated_data(record), "wrapped data key"
        )
        private_raw = _open_sealed(
            data_key, record.sealed_private_key, _seal_associated_data(record), "sealed private key"
        )
        private_key = Ed25519PrivateKey.from_private_bytes(private_raw)
        if raw_public_key(private_key.public_key()) != record.public_key:
            raise DecryptionError(f"sealed key {record.key_id.hex()} does not match its public key")
        return private_key

    def _require_may_sign(self, key_id: bytes) -> None:
        with self._mutex:
            self._refresh()
            record = self._record(key_id)
            now = self._clock()
            current = self._current_record(record.agent_id, now)
        if current is None or current.key_id != key_id:
            raise CryptoError(
                f"key {key_id.hex()} may no longer sign (rotated out, expired or revoked)",
                hint="ask the keystore for the agent's current signer",
            )

    def _current_record(self, agent_id: str, now: float) -> _KeyRecord | None:
        return self._current_in(self._index.keys, agent_id, now)

    @staticmethod
    def _current_in(records: list[_KeyRecord], agent_id: str, now: float) -> _KeyRecord | None:
        for record in reversed(records):
            if record.agent_id == agent_id and record.info().valid_at(now):
                return record
        return None

    def _find(self, key_id: bytes) -> _KeyRecord | None:
        return self._find_in(self._index.keys, key_id)

    @staticmethod
    def _find_in(records: list[_KeyRecord], key_id: bytes) -> _KeyRecord | None:
        return next((record for record in records if record.key_id == key_id), None)

    def _record(self, key_id: bytes) -> _KeyRecord:
        return self._record_in(self._index.keys, key_id)

    def _record_in(self, records: list[_KeyRecord], key_id: bytes) -> _KeyRecord:
        if not isinstance(key_id, bytes):
            raise CryptoError("a key id is bytes")
        record = self._find_in(records, key_id)
        if record is None:
            raise CryptoError(f"no key with id {key_id.hex()} in keystore {self._path}")
        return record

    @contextlib.contextmanager
    def _mutate(self) -> Iterator[list[_KeyRecord]]:
        """Reload under the file lock, let the caller change the records, then write atomically."""
        with self._mutex, self._file.locked():
            self._load()
            records = list(self._index.keys)
            yield records
            if records != self._index.keys:
                if len(records) > limits.keystore_keys_max:
                    raise LimitExceededError("keystore keys", len(records), limits.keystore_keys_max)
                self._write(_Index(self._index.generation + 1, records))

    def _refresh(self) -> None:
        """Reload if another process replaced the file (and at least every second; see SealedFile.stale)."""
        if self._file.stale():
            self._load()

    def _load(self) -> None:
        plaintext = self._file.read()
        if plaintext is None:
            raise CryptoError(f"keystore {self._path} cannot be read: it does not exist")
        try:
            index = _INDEX_DECODER.decode(plaintext)
        except msgspec.DecodeError as error:  # authenticated yet malformed: written by a buggy writer
            raise FormatError(f"keystore {self._path} index is malformed: {error}") from error
        if len(index.keys) > limits.keystore_keys_max:
            raise LimitExceededError("keystore keys", len(index.keys), limits.keystore_keys_max)
        self._index = index

    def _write(self, index: _Index) -> None:
        self._file.write(_ENCODER.encode(index))
        self._index = index


def _sealed_file(path: Path, master_key: bytes) -> SealedFile:
    return SealedFile(path, master_key, magic=_MAGIC, version=_VERSION, key_context=_CONTEXT_INDEX_KEY,
                      what="keystore", bytes_max=limits.keystore_file_bytes_max)


def _seal_associated_data(record: _KeyRecord) -> bytes:
    return b"MAIF keystore signing key v1\x00" + _length_prefixed(
        record.agent_id.encode(), record.key_id, record.public_key
    )


def _wrap_associated_data(record: _KeyRecord) -> bytes:
    return b"MAIF keystore data key v1\x00" + _length_prefixed(record.agent_id.encode(), record.key_id)


def _check_public_key(public_key: bytes) -> None:
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise CryptoError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} raw bytes")
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as error:
        raise CryptoError("not a valid Ed25519 public key") from error


def _check_agent_id(agent_id: str) -> None:
    if not isinstance(agent_id, str) or not agent_id:
        raise CryptoError("agent id must be a non-empty string")
    try:
        size = len(agent_id.encode("utf-8"))
    except UnicodeEncodeError as error:
        raise CryptoError("agent id is not valid Unicode text") from error
    if size > limits.agent_id_bytes_max:
        raise LimitExceededError("agent id", size, limits.agent_id_bytes_max)


def _positive(seconds: float) -> float:
    if not isinstance(seconds, float | int) or not math.isfinite(seconds) or seconds <= 0:
        raise CryptoError("a validity period must be a positive finite number of seconds")
    return float(seconds)


def _window_refusal(info: KeyInfo, signed_at: float) -> str:
    key = info.key_id.hex()
    if info.revoked_at is not None and signed_at >= info.revoked_at:
        return f"key {key} was revoked at {info.revoked_at:.3f}; signatures from then on are refused"
    return f"signature dated {signed_at:.3f} is outside the validity window of key {key}"


__all__ = [
    "KEY_ID_BYTES",
    "MASTER_KEY_BYTES",
    "ExternalSigner",
    "KeyInfo",
    "KeyStore",
    "LocalSigner",
    "MemorySigner",
    "Signer",
    "generate_master_key",
    "key_id_of",
    "master_key_from_environment",
    "raw_public_key",
]
