"""Writing payloads back to disk under the paths recorded in a container, never outside the destination.

A recorded path comes from a file that may have been written by an attacker, so it is checked twice:

1. lexically (:func:`checked_parts`): relative, ``/``-separated, no empty, ``.`` or ``..`` component, no
   NUL, no backslash or drive prefix that another OS would read as absolute, bounded in length and depth;
2. on disk, while writing (:class:`Extractor`): every directory is opened relative to its parent's file
   descriptor with ``O_NOFOLLOW | O_DIRECTORY`` and the file is created under a fresh temporary name with
   ``O_NOFOLLOW | O_EXCL``, then renamed over its name (a rename replaces a link, it never follows one),
   so a symlink planted in the destination (before or during extraction) cannot redirect a write outside
   it, and a file refused at its end never appears under its name.

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
        with self.open_file(recorded_path) as pending:
            for piece in pieces:
                pending.write(piece)
            return pending.commit(mtime_ns=mtime_ns, sync=False)

    def open_file(self, recorded_path: object) -> PendingFile:
        """A file written under a temporary name beside its final one; :meth:`PendingFile.commit` renames
        it into place, and leaving its ``with`` block without a commit removes it. So a file that fails a
        check at its end (a part set whose digest does not match) never appears under its name."""
        parts = checked_parts(recorded_path)
        joined = "/".join(parts)
        directory_fd = self._open_parent(parts)
        try:
            self._check_room(parts[-1], directory_fd, joined)
            # At most 1 + 100 + 1 + 12 + 8 bytes: within any file system's name limit whatever the name.
            prefix = parts[-1].encode("utf-8", "surrogatepass")[:100].decode("utf-8", "ignore")
            temporary = f".{prefix}.{os.urandom(6).hex()}.partial"
            try:
                file_fd = os.open(temporary, _NEW_FILE_FLAGS, 0o644, dir_fd=directory_fd)
            except OSError as error:
                raise _unsafe_or_raise(error, joined) from error
        except BaseException:
            os.close(directory_fd)
            raise
        return PendingFile(self, directory_fd, file_fd, temporary, parts[-1], joined)

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

    def _check_room(self, name: str, directory_fd: int, joined: str) -> None:
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

    def close(self) -> None:
        os.close(self._root_fd)

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PendingFile:
    """A file being extracted under a temporary name (:meth:`Extractor.open_file`)."""

    def __init__(
        self, extractor: Extractor, directory_fd: int, file_fd: int, temporary: str, name: str, joined: str
    ) -> None:
        self._extractor, self._directory_fd = extractor, directory_fd
        self._handle = open(file_fd, "wb", closefd=True)  # noqa: SIM115 (closed by commit or __exit__)
        self._temporary, self._name, self.joined = temporary, name, joined
        self._done = False

    def write(self, piece: bytes | memoryview) -> None:
        self._handle.write(piece)

    def commit(self, *, mtime_ns: int | None, sync: bool) -> str:
        """Flush (and fsync when ``sync``), stamp the mtime and rename into place; the recorded path."""
        self._handle.flush()  # before utime: a later flush would stamp the current time again
        if mtime_ns is not None:
            os.utime(self._handle.fileno(), ns=(mtime_ns, mtime_ns))
        if sync:
            os.fsync(self._handle.fileno())
        self._handle.close()
        # Checked again at the rename: something may have appeared under the name since the open.
        self._extractor._check_room(self._name, self._directory_fd, self.joined)
        os.rename(self._temporary, self._name, src_dir_fd=self._directory_fd, dst_dir_fd=self._directory_fd)
        if sync:
            os.fsync(self._directory_fd)
        self._done = True
        self._extractor._written.add(self.joined)
        return self.joined

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._handle.close()
            if not self._done:
                with contextlib.suppress(OSError):
                    os.unlink(self._temporary, dir_fd=self._directory_fd)
        finally:
            os.close(self._directory_fd)


def _unsafe_or_raise(error: OSError, joined: str) -> BaseException:
    # ELOOP: a symlink where O_NOFOLLOW forbids one; ENOTDIR: a file where a directory must be.
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        return UnsafePathError(
            f"refusing to write {joined!r}: a symbolic link or a non-directory is in the way"
        )
    return error


__all__ = ["Extractor", "PendingFile", "checked_parts"]
