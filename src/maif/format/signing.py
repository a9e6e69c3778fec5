"""Ed25519 signing keys for .maif manifests: generation, key ids, PEM files, and the signed message.

A manifest signature covers a fixed-layout message (docs/format/SPEC.md section 7): a domain tag, the
file header (with the file id), the block count, the Merkle root, the signer's key id, the signing time,
and the BLAKE3 digest of the whole manifest body. Verification only ever uses public keys the *caller*
trusts; a key id found in a file is a lookup hint, never a trust anchor.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Final

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from maif.errors import CryptoError, SignatureError

KEY_ID_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64
SIGNATURE_DOMAIN: Final = b"MAIF-manifest-signature-v1\x00"
_SIGNED_FIELDS: Final = struct.Struct("<32sQ32s16sq32s")
_PEM_BYTES_MAX: Final = 16 * 1024


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """16 bytes: BLAKE3 of the raw 32-byte public key, truncated."""
    return blake3.blake3(raw_public_bytes(public_key)).digest()[:KEY_ID_BYTES]


def signed_message(
    file_header: bytes,
    block_count: int,
    merkle_root: bytes,
    signer_key_id: bytes,
    signed_at_ns: int,
    manifest_body_digest: bytes,
) -> bytes:
    """The exact bytes an Ed25519 manifest signature covers (the 32-byte file header holds the file id)."""
    assert len(file_header) == 32 and len(merkle_root) == 32 and len(signer_key_id) == KEY_ID_BYTES
    return SIGNATURE_DOMAIN + _SIGNED_FIELDS.pack(
        file_header, block_count, merkle_root, signer_key_id, signed_at_ns, manifest_body_digest
    )


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message)


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``public_key``'s over ``message``."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature as error:
        raise SignatureError("manifest signature does not verify") from error


def save_private_key(key: Ed25519PrivateKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by the owner only (mode 0600)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        handle.write(pem)


def save_public_key(public_key: Ed25519PublicKey, path: str | os.PathLike[str]) -> None:
    """Write ``public_key`` as SubjectPublicKeyInfo PEM."""
    Path(path).write_bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _read_pem(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as handle:
            pem = handle.read(_PEM_BYTES_MAX + 1)
    except OSError as error:
        raise CryptoError(f"cannot read key file {os.fspath(path)!r}: {error.strerror}") from error
    if len(pem) > _PEM_BYTES_MAX:
        raise CryptoError(f"key file {os.fspath(path)!r} is larger than {_PEM_BYTES_MAX} bytes")
    return pem


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path``."""
    try:
        key = serialization.load_pem_private_key(_read_pem(path), password=None)
    except (ValueError, TypeError) as error:
        raise CryptoError(f"{os.fspath(path)!r} does not hold an unencrypted PEM private key") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise CryptoError(f"{os.fspath(path)!r} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path``."""
    try:
        key = serialization.load_pem_public_key(_read_pem(path))
    except (ValueError, TypeError) as error:
        raise CryptoError(f"{os.fspath(path)!r} does not hold a PEM public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise CryptoError(f"{os.fspath(path)!r} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


_SEED_FILE_BYTES_MAX: Final = 256


def load_or_create_seed_key(path: Path, what: str) -> Ed25519PrivateKey:
    """The Ed25519 key whose 32-byte seed ``path`` holds in hex; created owner-only (0600, in a directory
    made 0700) when the file is missing, never over an existing file. ``what`` names the key in errors.

    A new key is written whole to a temporary file beside ``path``, fsynced, then hard-linked to ``path``
    (which fails if another process linked its key first: then that key is used). So ``path`` only ever
    names a complete key: a full disk or a crash during creation leaves nothing under it, and processes
    starting together all end up with the one key."""
    try:
        return _read_seed_key(path, what)
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(descriptor, seed.hex().encode("ascii") + b"\n")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made it first: use theirs
            return _read_seed_key(path, what)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        raise CryptoError(f"cannot create {what} file {os.fspath(path)!r}: {error.strerror}") from error
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    return key


def _read_seed_key(path: Path, what: str) -> Ed25519PrivateKey:
    try:
        with open(path, "rb") as handle:
            text = handle.read(_SEED_FILE_BYTES_MAX + 1)
    except FileNotFoundError:
        raise  # the caller creates it
    except OSError as error:
        raise CryptoError(f"cannot read {what} file {os.fspath(path)!r}: {error.strerror}") from error
    if len(text) > _SEED_FILE_BYTES_MAX:
        raise CryptoError(f"{what} file {os.fspath(path)!r} is too large to be a key")
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode("ascii").strip()))
    except ValueError as error:  # UnicodeDecodeError is a ValueError
        raise CryptoError(
            f"{what} file {os.fspath(path)!r} does not hold a 32-byte hex Ed25519 seed"
        ) from error


__all__ = [
    "KEY_ID_BYTES",
    "generate_signing_key",
    "key_id",
    "load_or_create_seed_key",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "save_public_key",
    "signed_message",
    "verify_signature",
]
