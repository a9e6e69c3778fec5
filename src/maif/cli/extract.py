"""Writing payloads back to disk under the paths recorded in a container, never outside the destination.

A recorded path comes from a file that may have been written by an attacker, so it is checked twice:

1. lexically (:func:`checked_parts`): relative, ``/``-separated, no empty, ``.`` or ``..`` component, no
   NUL, no backslash or drive prefix that another OS would read as absolute, bounded in length and depth;
2. on disk, while writing (:class:`Extractor`): every directory is opened relative to its parent's file
   descriptor with ``O_NOFOLLOW | O_DIRECTORY`` and the file is created with ``O_NOFOLLOW | O_EXCL``, so a
   symlink planted in the destination (before or during extraction) cannot redirect a write outside it.

Both raise :class:`~maif.errors.UnsafePathError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from maif import limits
from maif.errors import ConfigError, UnsafePathError

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def checked_parts(recorded_path: object) -> list[str]:
    """The components of a recorded path that is safe to join to a destination directory."""
    if not isinstance(recorded_path, str) or not recorded_path:
        raise UnsafePathError(f"recorded path {recorded_path!r} is not a non-empty string")
    shown = repr(recorded_path[:200])
    size = len(recorded_path.encode("utf-8", "surrogatepass"))
    if size > limits.cli_recorded_path_bytes_max:
        raise UnsafePathError(
            f"recorded path {shown} is {size} bytes, above {limits.cli_recorded_path_bytes_max}"
        )
    if "\x00" in recorded_path or "\\" in recorded_path:
        raise UnsafePathError(f"recorded path {shown} contains a NUL or a backslash")
    if recorded_path.startswith("/") or (len(recorded_path) >= 2 and recorded_path[1] == ":"):
        raise UnsafePathError(f"recorded path {shown} is absolute")
    parts = recorded_path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePathError(f"recorded path {shown} has an empty, '.' or '..' component")
    if len(parts) > limits.cli_recorded_path_parts_max:
        raise UnsafePathError(
            f"recorded path {shown} has {len(parts)} components, above {limits.cli_recorded_path_parts_max}"
        )
    return parts


class Extractor:
    """Creates files under one destination directory, refusing anything that would land outside it.

    ``overwrite`` replaces regular files that existed before; a path written twice in one run (a file
    appended in a later version) is replaced regardless: the later block wins.
    """

    def __init__(self, destination: Path, *, overwrite: bool) -> None:
        destination.mkdir(parents=True, exist_ok=True)
        self._root_fd = os.open(destination, os.O_RDONLY | os.O_DIRECTORY)
        self._overwrite = overwrite
        self._written: set[str] = set()

    def write(
        self,
        recorded_path: object,
        data: bytes | memoryview | Iterable[bytes | memoryview],
        *,
        mtime_ns: int | None,
    ) -> str:
        """Write one file; returns the recorded path as written (relative to the destination).

        ``data`` may be an iterable of pieces, written as they come so a payload streams through bounded
        memory; if it raises (a payload refused at its end), the partial file is removed and the error
        propagates."""
        pieces = (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        parts = checked_parts(recorded_path)
        joined = "/".join(parts)
        directory_fd = self._open_parent(parts)
        try:
            self._make_room(parts[-1], directory_fd, joined)
            try:
                file_fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o644, dir_fd=directory_fd)
            except OSError as error:
                raise _unsafe_or_raise(error, joined) from error
            try:
                _write_pieces(file_fd, pieces, mtime_ns)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(parts[-1], dir_fd=directory_fd)
                raise
        finally:
            os.close(directory_fd)
        self._written.add(joined)
        return joined

    def _open_parent(self, parts: list[str]) -> int:
        directory_fd = os.dup(self._root_fd)
        try:
            for index, part in enumerate(parts[:-1]):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=directory_fd)
                try:
                    next_fd = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory_fd)
                except OSError as error:
                    raise _unsafe_or_raise(error, "/".join(parts[: index + 1])) from error
                os.close(directory_fd)
                directory_fd = next_fd
        except BaseException:
            os.close(directory_fd)
            raise
        return directory_fd

    def _make_room(self, name: str, directory_fd: int, joined: str) -> None:
        try:
            status = os.stat(name, dir_fd=directory_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(status.st_mode):
            raise UnsafePathError(f"refusing to write {joined!r}: it is a symbolic link in the destination")
        if not stat.S_ISREG(status.st_mode):
            raise UnsafePathError(f"refusing to write {joined!r}: something other than a file is there")
        if not (self._overwrite or joined in self._written):
            raise ConfigError(
                f"{joined!r} already exists in the destination", hint="pass --force to replace it"
            )
        os.unlink(name, dir_fd=directory_fd)

    def close(self) -> None:
        os.close(self._root_fd)

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_pieces(file_fd: int, pieces: Iterable[bytes | memoryview], mtime_ns: int | None) -> None:
    with open(file_fd, "wb", closefd=True) as handle:
        for piece in pieces:
            handle.write(piece)
        handle.flush()  # before utime: a later flush would stamp the current time again
        if mtime_ns is not None:
            os.utime(handle.fileno(), ns=(mtime_ns, mtime_ns))


def _unsafe_or_raise(error: OSError, joined: str) -> BaseException:
    # ELOOP: a symlink where O_NOFOLLOW forbids one; ENOTDIR: a file where a directory must be.
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        return UnsafePathError(
            f"refusing to write {joined!r}: a symbolic link or a non-directory is in the way"
        )
    return error


__all__ = ["Extractor", "checked_parts"]
