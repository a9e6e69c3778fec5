"""Key files for the command line: Ed25519 signing keys (through maif.format.signing) and X25519
encryption keys (PEM, here, because the format API reads X25519 keys as objects and leaves files to us).

Private keys are written with mode 0600 from the moment the file exists (``os.open`` with the mode, never
chmod afterwards) and never over an existing file: replacing a key is an explicit decision
(``maif keygen --force`` removes the old file first). Every failure to read a key is a
:class:`~maif.errors.CryptoError` naming the file, never its contents.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from maif import limits
from maif.errors import CryptoError
from maif.format import signing


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``."""
    try:
        return signing.load_private_key(path)
    except (ValueError, TypeError) as error:  # in case the loader lets a foreign error through
        raise CryptoError(f"{path} is not an Ed25519 private key") from error


_HEX_KEY_DIGITS = 64


def load_trusted_keys(paths: Sequence[Path | str]) -> list[Ed25519PublicKey]:
    """The trust anchors, always chosen by the caller: each an Ed25519 public key as a PEM file, or as
    the 64 hex digits of its raw 32 bytes (what `/v1/export` and `maif audit` print) when no file of
    that name exists."""
    keys = []
    for path in paths:
        text = os.fspath(path).strip()
        if (len(text) == _HEX_KEY_DIGITS and all(c in "0123456789abcdefABCDEF" for c in text)
                and not Path(text).exists()):
            try:
                keys.append(Ed25519PublicKey.from_public_bytes(bytes.fromhex(text)))
            except ValueError as error:
                raise CryptoError(f"{text} is not a valid Ed25519 public key") from error
            continue
        try:
            keys.append(signing.load_public_key(path))
        except (ValueError, TypeError) as error:
            raise CryptoError(f"{path} is not an Ed25519 public key") from error
    return keys


def load_x25519_private_key(path: Path) -> X25519PrivateKey:
    """The X25519 private key in ``path`` (PEM, PKCS#8, unencrypted)."""
    key = _load_pem(path, private=True)
    if not isinstance(key, X25519PrivateKey):
        raise CryptoError(
            f"{path} is not an X25519 private key", hint="create one with `maif keygen --x25519`"
        )
    return key


def load_x25519_public_key(path: Path) -> X25519PublicKey:
    """The X25519 public key in ``path`` (PEM, SubjectPublicKeyInfo)."""
    key = _load_pem(path, private=False)
    if not isinstance(key, X25519PublicKey):
        raise CryptoError(
            f"{path} is not an X25519 public key", hint="create one with `maif keygen --x25519`"
        )
    return key


def _load_pem(path: Path, *, private: bool) -> object:
    try:
        with open(path, "rb") as handle:
            pem = handle.read(limits.cli_key_file_bytes_max + 1)
    except OSError as error:
        raise CryptoError(f"cannot read key file {str(path)!r}: {error.strerror or error}") from error
    if len(pem) > limits.cli_key_file_bytes_max:
        raise CryptoError(f"{path} is too large to be a key file")
    try:
        if private:
            return serialization.load_pem_private_key(pem, password=None)
        return serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        kind = "private" if private else "public"
        raise CryptoError(f"{path} is not a PEM {kind} key") from error


def save_x25519_key_pair(key: X25519PrivateKey, private_path: Path, public_path: Path) -> None:
    """Write an X25519 pair: the private key with mode 0600, the public key world-readable."""
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_new_file(private_path, private_pem, mode=0o600)
    write_new_file(public_path, public_pem, mode=0o644)


def write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; never follows a symlink or replaces a file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with open(descriptor, "wb", closefd=True) as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


__all__ = [
    "load_signing_key",
    "load_trusted_keys",
    "load_x25519_private_key",
    "load_x25519_public_key",
    "save_x25519_key_pair",
    "write_new_file",
]
