"""Envelope encryption for .maif blocks: one AES-256-GCM data key per file, wrapped for each recipient.

Wrapping (docs/format/SPEC.md section 8): for each X25519 recipient public key, an ephemeral X25519 key
pair is made, the shared secret goes through HKDF-SHA256 (salt = file id, info binds both public keys)
to a key-encryption key, and AES-256-GCM encrypts the 32-byte data key with the file id and the
recipient's key id as associated data.

Blocks: AES-256-GCM under the data key with a fresh random 96-bit nonce per block (stored before the
ciphertext) and associated data binding the file id, the block's index and its whole header. Random
nonces are safe for up to 2^32 encryptions per key (NIST SP 800-38D); a container holds at most
``limits.container_blocks_max`` (2^28) blocks, so a nonce repeats with probability below 2^-40.
Deterministic randomness exists only for golden test vectors, behind :class:`UnsafeDeterministicRandom`.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from maif.errors import CryptoError, DecryptionError, FormatError

DATA_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
RECIPIENT_KEY_ID_BYTES: Final = 16
WRAP_INFO: Final = b"MAIF-key-wrap-v1\x00"
BLOCK_AD_DOMAIN: Final = b"MAIF-block-v1\x00"
# recipient key id, ephemeral public key, nonce, wrapped data key + tag
KEY_WRAP: Final = struct.Struct("<16s32s12s48s")
_INDEX: Final = struct.Struct("<Q")

RandomSource = Callable[[int], bytes]


class UnsafeDeterministicRandom:
    """A seeded byte stream standing in for ``os.urandom``: for golden test vectors ONLY.

    Reusing it for real data would reuse nonces and keys, which breaks AES-GCM completely.
    """

    def __init__(self, seed: bytes) -> None:
        warnings.warn("UnsafeDeterministicRandom makes keys and nonces predictable; tests only", stacklevel=2)
        self._stream = blake3.blake3(seed)
        self._position = 0

    def __call__(self, size: int) -> bytes:
        chunk = self._stream.digest(length=size, seek=self._position)
        self._position += size
        return chunk


def generate_recipient_key() -> X25519PrivateKey:
    """A fresh X25519 private key for receiving encrypted containers."""
    return X25519PrivateKey.generate()


def recipient_key_id(public_key: X25519PublicKey) -> bytes:
    """16 bytes: BLAKE3 of the raw 32-byte X25519 public key, truncated."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return blake3.blake3(raw).digest()[:RECIPIENT_KEY_ID_BYTES]


@dataclass(frozen=True, slots=True)
class KeyWrap:
    """The data key wrapped for one recipient."""

    recipient_key_id: bytes
    ephemeral_public: bytes
    nonce: bytes
    wrapped_key: bytes

    def encode(self) -> bytes:
        return KEY_WRAP.pack(self.recipient_key_id, self.ephemeral_public, self.nonce, self.wrapped_key)

    @classmethod
    def decode(cls, data: bytes) -> KeyWrap:
        return cls(*KEY_WRAP.unpack(data))


def _key_encryption_key(
    shared: bytes, file_id: bytes, ephemeral_public: bytes, recipient_public: bytes
) -> bytes:
    if shared == bytes(len(shared)):
        raise CryptoError("X25519 exchange produced the all-zero secret (a low-order public key)")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=file_id,
        info=WRAP_INFO + ephemeral_public + recipient_public,
    )
    return hkdf.derive(shared)


def wrap_data_key(
    data_key: bytes, recipient: X25519PublicKey, file_id: bytes, random: RandomSource
) -> KeyWrap:
    """Wrap ``data_key`` for ``recipient`` (ephemeral ECDH + HKDF-SHA256 + AES-256-GCM)."""
    assert len(data_key) == DATA_KEY_BYTES
    ephemeral = X25519PrivateKey.from_private_bytes(random(32))
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    recipient_public = recipient.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kek = _key_encryption_key(ephemeral.exchange(recipient), file_id, ephemeral_public, recipient_public)
    recipient_id = recipient_key_id(recipient)
    nonce = random(NONCE_BYTES)
    wrapped = AESGCM(kek).encrypt(nonce, data_key, file_id + recipient_id)
    return KeyWrap(recipient_id, ephemeral_public, nonce, wrapped)


def unwrap_data_key(wraps: list[KeyWrap], private_key: X25519PrivateKey, file_id: bytes) -> bytes:
    """The data key from the wrap addressed to ``private_key``; DecryptionError if none opens."""
    public = private_key.public_key()
    my_id = recipient_key_id(public)
    recipient_public = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for wrap in wraps:
        if wrap.recipient_key_id != my_id:
            continue
        try:
            shared = private_key.exchange(X25519PublicKey.from_public_bytes(wrap.ephemeral_public))
            kek = _key_encryption_key(shared, file_id, wrap.ephemeral_public, recipient_public)
            return AESGCM(kek).decrypt(wrap.nonce, wrap.wrapped_key, file_id + my_id)
        except (InvalidTag, ValueError, CryptoError) as error:
            raise DecryptionError("the data key wrapped for this recipient key does not open") from error
    raise DecryptionError(
        "the container's data key is not wrapped for this key",
        hint="ask the writer to add your X25519 public key as a recipient",
    )


def block_associated_data(file_id: bytes, index: int, header: bytes | memoryview) -> bytes:
    return b"".join((BLOCK_AD_DOMAIN, file_id, _INDEX.pack(index), header))


def encrypt_body(data_key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """nonce || ciphertext || tag."""
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, associated_data)


def decrypt_body(data_key: bytes, stored: bytes | memoryview, associated_data: bytes) -> bytes:
    """The plaintext of ``nonce || ciphertext || tag``; DecryptionError if anything was changed."""
    if len(stored) < NONCE_BYTES + TAG_BYTES:
        raise FormatError(f"encrypted body of {len(stored)} bytes is shorter than nonce and tag")
    try:
        return AESGCM(data_key).decrypt(
            bytes(stored[:NONCE_BYTES]), bytes(stored[NONCE_BYTES:]), associated_data
        )
    except InvalidTag as error:
        raise DecryptionError(
            "encrypted block refused: ciphertext, tag or header was changed, or the key is wrong"
        ) from error


def system_random(size: int) -> bytes:
    return os.urandom(size)


__all__ = [
    "KeyWrap",
    "UnsafeDeterministicRandom",
    "decrypt_body",
    "encrypt_body",
    "generate_recipient_key",
    "recipient_key_id",
    "unwrap_data_key",
    "wrap_data_key",
]
