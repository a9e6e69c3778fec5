"""Repair of a container whose tail was torn mid-write: truncate to the last complete version.

Everything up to the end of the last valid trailer is kept byte for byte; only the bytes after it (a
partial record, index, manifest or trailer) are cut. A file whose header or version chain is damaged is
not "repaired" (that would hide tampering): repair refuses it with the reader's typed error.
"""

from __future__ import annotations

import os

from maif.errors import BackendError
from maif.format.reader import ContainerReader
from maif.format.reports import RepairReport


def repair_container(path: str | os.PathLike[str]) -> RepairReport:
    """Truncate ``path`` to its last complete version and make that durable."""
    with ContainerReader.open(path) as reader:
        valid_end, torn, versions = reader.valid_end, reader.torn_tail_bytes, len(reader.versions)
    if torn:
        try:
            with open(path, "r+b") as handle:
                handle.truncate(valid_end)
                os.fsync(handle.fileno())
        except OSError as error:
            raise BackendError(f"cannot truncate {os.fspath(path)!r}: {error.strerror or error}") from error
    return RepairReport(torn, versions)


__all__ = ["RepairReport", "repair_container"]
