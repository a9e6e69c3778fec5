"""The files `maif pack` and `maif append` read: walked in sorted order, symlinks never followed.

A file argument is recorded under its own name; a directory argument under its name followed by the path
inside it (``corpus/poems/ozymandias.txt``), like ``tar``. Directories are walked depth-first with
entries sorted by name, so the same tree always packs in the same order; the walk holds one sorted listing
per open directory, never the whole tree. Symbolic links (arguments included) and special files (FIFOs,
sockets, devices) are skipped and reported, never followed or read: reading a FIFO could block forever
and following a link could pack files from outside the tree the user named.

A name that cannot be recorded faithfully (not valid UTF-8, too long, too deep) stops the command rather
than being silently dropped.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from maif import limits
from maif.errors import ConfigError, FormatError, LimitExceededError


class InputFile(NamedTuple):
    """A regular file to pack, and the relative POSIX path it will be recorded under."""

    path: Path
    recorded_path: str


class SkippedPath(NamedTuple):
    """A path the walk did not pack, and why."""

    path: Path
    reason: str


class OpenInput(NamedTuple):
    """One input file open for reading, with its size and modification time when it was opened."""

    handle: BinaryIO
    size_bytes: int
    mtime_ns: int


def iter_input_files(arguments: Sequence[Path]) -> Iterator[InputFile | SkippedPath]:
    """Every file under ``arguments`` in packing order, interleaved with the paths skipped."""
    seen_top_level: set[str] = set()
    for argument in arguments:
        mode = os.lstat(argument).st_mode
        name = _top_level_name(argument)
        if name in seen_top_level:
            raise ConfigError(
                f"two inputs would both be recorded as {name!r}", hint="pack them from different parents"
            )
        seen_top_level.add(name)
        if stat.S_ISLNK(mode):
            yield SkippedPath(argument, "symbolic link (not followed)")
        elif stat.S_ISDIR(mode):
            yield from _walk_directory(argument, name)
        elif stat.S_ISREG(mode):
            yield InputFile(argument, _checked_recorded_path(name))
        else:
            yield SkippedPath(argument, "not a regular file")


def _top_level_name(argument: Path) -> str:
    # "." or "dir/.." record under the directory's own name (normalised lexically, links not resolved).
    name = Path(os.path.abspath(argument)).name
    if not name:
        raise ConfigError(f"cannot record {str(argument)!r} under a name", hint="pack a named directory")
    return _decoded_name(name, argument)


def _walk_directory(root: Path, root_name: str) -> Iterator[InputFile | SkippedPath]:
    # Depth-first; each stack frame is one directory's sorted entries and the recorded prefix for them.
    stack: list[tuple[Iterator[os.DirEntry[str]], str]] = [(_sorted_entries(root), root_name)]
    while stack:
        entries, prefix = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        recorded = f"{prefix}/{_decoded_name(entry.name, Path(entry.path))}"
        if entry.is_symlink():
            yield SkippedPath(Path(entry.path), "symbolic link (not followed)")
        elif entry.is_dir(follow_symlinks=False):
            if len(stack) + 1 >= limits.cli_recorded_path_parts_max:
                raise LimitExceededError(
                    "directory depth", len(stack) + 1, limits.cli_recorded_path_parts_max
                )
            stack.append((_sorted_entries(Path(entry.path)), recorded))
        elif entry.is_file(follow_symlinks=False):
            yield InputFile(Path(entry.path), _checked_recorded_path(recorded))
        else:
            yield SkippedPath(Path(entry.path), "not a regular file")


def _sorted_entries(directory: Path) -> Iterator[os.DirEntry[str]]:
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    return iter(entries)


def _decoded_name(name: str, where: Path) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as error:
        raise FormatError(
            f"cannot record {os.fsencode(where)!r}: its name is not valid UTF-8",
            hint="rename it, or pack without it",
        ) from error
    return name


def _checked_recorded_path(recorded: str) -> str:
    size = len(recorded.encode("utf-8"))
    if size > limits.cli_recorded_path_bytes_max:
        raise LimitExceededError(
            f"recorded path length of {recorded[:60]!r}...", size, limits.cli_recorded_path_bytes_max
        )
    return recorded


_NOT_WHILE_WRITTEN = "pack it when nothing is writing to it"


@contextlib.contextmanager
def open_input_file(path: Path) -> Iterator[OpenInput]:
    """One regular file opened for reading, refusing a symlink or special file swapped in after the walk.

    ``O_NOFOLLOW`` and ``O_NONBLOCK`` close the window between the walk and the read: a path replaced by a
    symlink fails, one replaced by a FIFO does not block. Nothing is read here: see :func:`read_pieces`.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    descriptor = os.open(path, flags)
    with open(descriptor, "rb", closefd=True) as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise FormatError(f"{path} is no longer a regular file")
        yield OpenInput(handle, status.st_size, status.st_mtime_ns)


def read_pieces(source: OpenInput, piece_bytes: int, path: Path) -> Iterator[bytes]:
    """The file in pieces of ``piece_bytes`` (the last one shorter), exactly ``source.size_bytes`` in all:
    one piece for an empty file. A file that shrinks or grows while it is read raises FormatError, so a
    file's recorded size, part count and digest always describe the bytes that were packed."""
    remaining = source.size_bytes
    while True:
        wanted = min(piece_bytes, remaining)
        piece = source.handle.read(wanted)
        if len(piece) != wanted:
            raise FormatError(f"{path} shrank while it was being packed", hint=_NOT_WHILE_WRITTEN)
        remaining -= wanted
        if not remaining:
            break
        yield piece
        del piece  # one piece in memory at a time: the consumer holds the next one only
    if source.handle.read(1):
        raise FormatError(f"{path} grew while it was being packed", hint=_NOT_WHILE_WRITTEN)
    yield piece


__all__ = ["InputFile", "OpenInput", "SkippedPath", "iter_input_files", "open_input_file", "read_pieces"]
