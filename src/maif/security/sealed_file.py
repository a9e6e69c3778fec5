"""A small state file sealed under the master key: the keystore and the attestation enrolments use it.

The whole content is one AES-256-GCM message under a key derived from the master key for this kind of
file, with the header as associated data (docs/adr/0020)::

    magic (8) | version u16 | reserved u16 = 0 | master key id (16) | nonce (12) | ciphertext and tag

The master key id (a keyed BLAKE3 derivation, the same for every kind of file) tells a wrong master key
apart from damage. The file is replaced atomically (temporary file, fsync, rename, fsync of the
directory) under an exclusive lock on ``<path>.lock`` so several processes can share it, and every read
authenticates it: a wrong master key, a flipped bit or a truncated file is a typed
:class:`~maif.errors.DecryptionError` / :class:`~maif.errors.FormatError`, never garbage.

Known limit, shared by every user: the file cannot tell that it was replaced by an OLDER copy of itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from maif.durable import write_atomically
from maif.errors import CryptoError, DecryptionError, FormatError, LimitExceededError

HEADER = struct.Struct("<8sHH16s12s")
NONCE_BYTES = 12
TAG_BYTES = 16
RELOAD_INTERVAL_S = 1.0
"""The longest a change written by another process can go unseen (see :meth:`SealedFile.stale`)."""

_CONTEXT_MASTER_ID = "MAIF keystore 2026-11 master key id"


def derive_key(master_key: bytes, context: str) -> bytes:
    """A 32-byte key for one purpose, derived from the master key (BLAKE3 derive_key)."""
    return blake3.blake3(master_key, derive_key_context=context).digest()


def master_key_id(master_key: bytes) -> bytes:
    return derive_key(master_key, _CONTEXT_MASTER_ID)[:16]


class SealedFile:
    """One sealed file: :meth:`read` and :meth:`write` its plaintext, :meth:`locked` across processes.

    ``what`` names it in errors ("keystore", "attestation state"); ``bytes_max`` bounds the file.
    """

    def __init__(
        self, path: Path, master_key: bytes, *, magic: bytes, version: int, key_context: str, what: str,
        bytes_max: int,
    ) -> None:
        assert len(magic) == 8
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._magic = magic
        self._version = version
        self._what = what
        self._bytes_max = bytes_max
        self._master_id = master_key_id(master_key)
        self._key = derive_key(master_key, key_context)
        self._identity: tuple[int, int, int] | None = None
        self._loaded_at = -math.inf

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock shared by every process using this file (``<path>.lock``)."""
        try:
            descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise CryptoError(f"cannot lock {self._what} {self.path}: {error.strerror}") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def stale(self) -> bool:
        """True when another process replaced the file since it was last read or written here, or at
        least every RELOAD_INTERVAL_S: a rename gives a new inode and mtime, but inode numbers are reused
        and mtimes are coarse, so two quick writes of equal size could look alike."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return self._identity is not None
        except OSError as error:
            raise CryptoError(f"{self._what} {self.path} cannot be read: {error.strerror}") from error
        if time.monotonic() - self._loaded_at >= RELOAD_INTERVAL_S:
            return True
        return (status.st_ino, status.st_mtime_ns, status.st_size) != self._identity

    def read(self) -> bytes | None:
        """The authenticated plaintext, or None when there is no file yet."""
        try:
            with self.path.open("rb") as handle:
                status = os.fstat(handle.fileno())
                data = handle.read(self._bytes_max + 1)
        except FileNotFoundError:
            self._identity, self._loaded_at = None, time.monotonic()
            return None
        except OSError as error:
            raise CryptoError(f"{self._what} {self.path} cannot be read: {error.strerror}") from error
        plaintext = self._open(data)
        self._identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        self._loaded_at = time.monotonic()
        return plaintext

    def _open(self, data: bytes) -> bytes:
        what, path = self._what, self.path
        if len(data) > self._bytes_max:
            raise LimitExceededError(f"{what} file", len(data), self._bytes_max)
        if len(data) < HEADER.size + TAG_BYTES:
            raise FormatError(f"{what} {path} is truncated ({len(data)} bytes)")
        magic, version, reserved, master_id, nonce = HEADER.unpack_from(data)
        if magic != self._magic:
            raise FormatError(f"{path} is not a MAIF {what} (bad magic)", offset=0)
        if version != self._version or reserved != 0:
            raise FormatError(f"{what} {path} has unsupported version {version}.{reserved}", offset=8)
        if master_id != self._master_id:
            raise DecryptionError(
                f"the master key does not open {what} {path}",
                hint=f"wrong master key, or the {what} header was altered",
            )
        try:
            return AESGCM(self._key).decrypt(nonce, data[HEADER.size :], data[: HEADER.size])
        except InvalidTag as error:
            raise DecryptionError(f"{what} {path} failed authentication: it was altered") from error

    def write(self, plaintext: bytes) -> None:
        """Seal ``plaintext`` and replace the file with it atomically (call under :meth:`locked`)."""
        nonce = os.urandom(NONCE_BYTES)
        header = HEADER.pack(self._magic, self._version, 0, self._master_id, nonce)
        data = header + AESGCM(self._key).encrypt(nonce, plaintext, header)
        if len(data) > self._bytes_max:
            raise LimitExceededError(f"{self._what} file", len(data), self._bytes_max)
        _write_atomically(self.path, data, self._what)
        status = os.stat(self.path)
        self._identity = (status.st_ino, status.st_mtime_ns, status.st_size)
        self._loaded_at = time.monotonic()


def _write_atomically(path: Path, data: bytes, what: str) -> None:
    """Replace ``path`` durably (maif.durable): old or new, never half; a failure is a CryptoError."""
    try:
        write_atomically(path, data, mode=0o600)
    except OSError as error:
        raise CryptoError(f"{what} {path} could not be written: {error.strerror}") from error


__all__ = ["HEADER", "NONCE_BYTES", "TAG_BYTES", "SealedFile", "derive_key", "master_key_id"]
