"""The store directory's lock: at most one open store per data directory, across and within processes.

Two engines on one directory would each replay, apply and recycle the same write-ahead log and append
to the same packs behind each other's in-memory maps: both get their writes acknowledged, and most
blocks are unreadable after the next open. :func:`acquire_store_lock` prevents that. The engine
(:func:`maif.storage.engine.create_maif_storage`) takes the lock before it builds any backend (the
local chunk store recovers and truncates pack tails in its constructor) and releases it after the
backends are closed, on ``close`` and on a failed open.

How: ``flock(LOCK_EX | LOCK_NB)`` on ``<data_dir>/LOCK`` (created owner-only, 0o600). After locking,
the holder writes ``{"pid", "host", "locked_at"}`` into the file; a refused opener reads it back and
names the holder in :class:`~maif.errors.StoreLockedError`. That record is only a diagnostic: the lock
itself is the kernel's and belongs to the open file description, so it disappears with its holder,
whatever way the holder ends (``close``, exit, ``kill -9``, a crash). A LOCK file left behind by a dead
process is therefore just a file: the next opener locks it and overwrites the record; no stale-lock
detection, PID probing or manual cleanup is ever needed.

Because the lock belongs to the open file description, a second open of the same directory in the
*same* process (which opens LOCK again, getting a new description) is refused too, exactly like an
open from another process. The descriptor is ``O_CLOEXEC``, so programs exec'd by the holder do not
inherit the lock; a process that ``fork``\\ s while it holds a store shares the lock with the child
until one of them closes it (do not fork with a store open).

flock is advisory and local: it works on local filesystems; on NFS, Linux emulates it with
byte-range locks (which do work across clients on NFSv4), and some network filesystems do not support
it at all: then the open fails with BackendError rather than running unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from maif.errors import BackendError, StoreLockedError

LOCK_FILE_NAME = "LOCK"
_HOLDER_RECORD_BYTES_MAX = 4096
_HOLDER_READ_ATTEMPTS = 5  # the holder writes its record just after locking: let it finish
_HOLDER_READ_PAUSE_S = 0.01


class StoreLock:
    """A held store lock; :meth:`release` gives it up (idempotent)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close. The LOCK file stays: the next opener reuses it (see the module docstring)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)  # closing alone would release it too; unlocking first is explicit


def acquire_store_lock(data_dir: str | os.PathLike[str]) -> StoreLock:
    """Lock ``data_dir`` (created if missing) for this open store, or raise.

    Raises StoreLockedError (with the holder's PID when its record is readable) when another open
    store, in this or any process, holds it; BackendError when the directory or its LOCK file cannot
    be created, opened or locked (permissions, a filesystem without flock).
    """
    directory = Path(data_dir)
    path = directory / LOCK_FILE_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise BackendError(f"cannot open the store lock {path}: {error.strerror or error}",
                           hint="check that data_dir is a directory this user may write") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        try:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise _locked_error(directory, fd) from None
            raise BackendError(f"cannot lock the store {path}: {error.strerror or error}",
                               hint="the filesystem may not support flock; use a local disk") from error
        finally:
            os.close(fd)
    lock = StoreLock(path, fd)
    try:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "locked_at": datetime.now(UTC).isoformat(timespec="seconds")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode() + b"\n", 0)
    except OSError as error:
        lock.release()
        raise BackendError(f"cannot write the store lock {path}: {error.strerror or error}") from error
    return lock


def _locked_error(directory: Path, fd: int) -> StoreLockedError:
    pid, host, locked_at = _read_holder(fd)
    if pid is None:
        who = "another open store (its PID is not recorded yet)"
    elif pid == os.getpid() and host == socket.gethostname():
        who = f"another open store in this same process (PID {pid})"
    else:
        who = f"process {pid}" + (f" on {host}" if host else "")
        who += f", since {locked_at}," if locked_at else ""
    return StoreLockedError(
        f"the store {directory} is in use: {who} holds its lock",
        holder_pid=pid,
        hint="close that store, or stop that process (e.g. `maif serve`) first; one user at a time",
    )


def _read_holder(fd: int) -> tuple[int | None, str | None, str | None]:
    """(pid, host, locked_at) from the holder's record; Nones when it is missing or unreadable.

    The holder writes its record right after it locks, so an empty file, or a record that names a
    process no longer running on this host (the previous holder's), is read again a few times."""
    pid: int | None = None
    host: str | None = None
    locked_at: str | None = None
    for attempt in range(_HOLDER_READ_ATTEMPTS):
        if attempt:
            time.sleep(_HOLDER_READ_PAUSE_S)
        pid, host, locked_at = _parse_holder(fd)
        if pid is not None and (host != socket.gethostname() or _process_exists(pid)):
            break
    return pid, host, locked_at


def _parse_holder(fd: int) -> tuple[int | None, str | None, str | None]:
    try:
        raw = os.pread(fd, _HOLDER_RECORD_BYTES_MAX, 0)
        record = json.loads(raw)
    except (OSError, ValueError):
        return None, None, None
    if not isinstance(record, dict):
        return None, None, None
    pid = record.get("pid")
    host = record.get("host")
    locked_at = record.get("locked_at")
    return (pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
            host if isinstance(host, str) else None,
            locked_at if isinstance(locked_at, str) else None)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, we may not signal it
    return True


__all__ = ["LOCK_FILE_NAME", "StoreLock", "acquire_store_lock"]
