"""Durable whole-file replacement, shared by every module that keeps a small file it rewrites whole.

A crash or a full disk during :func:`write_atomically` leaves ``path`` either as it was or as the new
bytes, never half of each, and once it returns the new bytes and the rename are both on disk: the data
is fsynced before the rename, and the directory after it (without the second fsync, a power loss can
bring the old file back, e.g. a revoked credential or an older pack index). Each call writes its own
temporary file (``O_EXCL``, named after the process and thread), so two writers of one path never
truncate each other's temporary, and a failed call removes its temporary before the error reaches the
caller. Errors are the ``OSError`` the system gave; callers turn it into their own typed error.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from pathlib import Path

_sequence = itertools.count()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the entries of ``directory`` (a rename, a new or removed file) durable."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: str | os.PathLike[str], data: bytes | memoryview, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temporary file beside it, fsync, rename, fsync of the directory.

    ``mode`` is the new file's permission (before the umask). Raises the ``OSError`` of the step that
    failed, with the temporary file removed and ``path`` unchanged."""
    target = Path(path)
    # "~" is in no valid object key or block file name, so a listing never mistakes a temporary for data.
    unique = f"{os.getpid()}-{threading.get_ident()}-{next(_sequence)}"
    temporary = target.with_name(f".{target.name}~{unique}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_directory(target.parent)


__all__ = ["fsync_directory", "write_atomically"]
