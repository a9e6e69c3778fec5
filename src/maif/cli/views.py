"""Plain-data views of the format's objects (versions, block rows, problems) for tables and JSON.

The block table reads each record's header (and, when the block is not encrypted, its metadata) straight
from the mapping, without decompressing or hashing payloads: `inspect` stays fast on large files and shows
what the file claims; `verify` is what checks it.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
from collections.abc import Iterator
from typing import Any

from maif.errors import CryptoError, FormatError, MAIFError
from maif.format import codec
from maif.format.block import fourcc_of
from maif.format.container import ContainerReader, VersionInfo
from maif.format.verify import Problem

PATH_KEY, MEDIA_TYPE_KEY = "path", "media_type"


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], *, decryption_key: Any = None) -> Iterator[ContainerReader]:
    """Open a container for reading and always close it cleanly, even when a MAIFError escapes.

    The reader hands out views of its memory map, and a map cannot close while a view is alive. An error
    raised while reading keeps the frames that hold such views alive through its traceback, so closing
    the reader would fail with ``BufferError`` and hide the real error. The error's tracebacks are dropped
    before the reader closes, and the error is re-raised after. The same happens inside
    ``ContainerReader.open`` when the header or a trailer is malformed (seen 2026-11-24): there the
    FormatError that started it is the true answer and is re-raised.
    """
    try:
        reader = ContainerReader.open(path, decryption_key=decryption_key)
    except BufferError as error:
        if isinstance(error.__context__, MAIFError):
            raise _detached(error.__context__) from None
        raise
    failure: MAIFError | None = None
    with reader:
        try:
            yield reader
        except MAIFError as error:
            failure = _detached(error)
    if failure is not None:
        raise failure


def _detached(error: MAIFError) -> MAIFError:
    """``error`` with its whole chain's tracebacks dropped, so no frame (or memory view) stays alive."""
    link: BaseException | None = error
    seen: set[int] = set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return error


def require_readable_container(path: str | os.PathLike[str]) -> None:
    """Raise :class:`FormatError` (exit 4) unless ``path`` opens as a container: missing, unreadable,
    garbage and structurally broken files are "malformed", not "integrity failures", for the exit code."""
    try:
        with reading(path):
            pass
    except MAIFError as error:
        raise FormatError(f"{path} is not a readable .maif container: {error.message}") from None


def utc_text(time_ns: int) -> str:
    """An ISO 8601 UTC time with milliseconds, e.g. ``2026-11-24T18:15:15.123Z``."""
    try:
        moment = datetime.datetime.fromtimestamp(time_ns / 1e9, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return f"{time_ns} ns (out of range)"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_text_of_seconds(seconds: float) -> str:
    """:func:`utc_text` of a block timestamp (any finite float64 of Unix seconds, e.g. ``1e300``, which no
    date can show: then the number itself)."""
    nanoseconds = seconds * 1e9
    if not math.isfinite(nanoseconds):  # int() of an infinity raises OverflowError
        return f"{seconds!r} s (out of range)"
    return utc_text(int(nanoseconds))


def version_row(version: VersionInfo) -> dict[str, Any]:
    return {
        "number": version.number,
        "block_count": version.block_count,
        "merkle_root": version.merkle_root,
        "committed_at": utc_text(version.committed_at_ns),
        "committed_at_ns": version.committed_at_ns,
        "signer_key_ids": list(version.signer_key_ids),
        "end_offset": version.end_offset,
        "manifest_digest": version.manifest_digest,
    }


_FLAG_NAMES = ((codec.STORAGE_COMPRESSED, "compressed"), (codec.STORAGE_ENCRYPTED, "encrypted"))


def block_row(reader: ContainerReader, index: int) -> dict[str, Any]:
    """One row of the block table: where the block is, what its header and (if readable) metadata say.

    ``path`` and ``media_type`` are None when the block has none or its metadata is encrypted and no key
    was given (``metadata_readable`` is then False); ``error`` holds the reason a record cannot be parsed.
    """
    entry = reader.entry(index)
    row: dict[str, Any] = {
        "index": index,
        "version": entry.version,
        "offset": entry.offset,
        "stored_bytes": entry.length,
        "digest": entry.digest,
        "path": None,
        "media_type": None,
        "metadata_readable": False,
    }
    try:
        record = reader.record(index)
        header = codec.decode_header(record, 0, len(record))
    except MAIFError as error:
        row["error"] = error.message
        return row
    row.update(
        id=header.block_id,
        type=fourcc_of(header.block_type).decode("ascii"),
        agent_id=header.agent_id,
        created_at=utc_text_of_seconds(header.timestamp),
        payload_bytes=header.payload_length,
        parents=list(header.parents),
        flags=[name for bit, name in _FLAG_NAMES if header.storage_flags & bit],
    )
    try:
        metadata = _metadata(reader, index, record, header)
    except CryptoError:
        return row  # encrypted, and no (right) key: the metadata stays sealed
    except MAIFError as error:
        row["error"] = error.message
        return row
    row["metadata_readable"] = True
    for key in (PATH_KEY, MEDIA_TYPE_KEY):
        row[key] = metadata.get(key) if isinstance(metadata.get(key), str) else None
    return row


def _metadata(
    reader: ContainerReader, index: int, record: memoryview, header: codec.BlockHeader
) -> dict[str, Any]:
    if header.storage_flags & codec.STORAGE_ENCRYPTED:
        # CryptoError without the key; no hashing, and the payload is not decompressed
        return reader.stream_block(index, verify=False).metadata
    if not header.metadata_length:
        return {}
    start = header.body_offset
    return codec.decode_metadata(record[start : start + header.metadata_length])


def recorded_metadata(reader: ContainerReader, index: int) -> dict[str, Any]:
    """Block ``index``'s metadata, read without decompressing its payload when it is stored in the clear."""
    record = reader.record(index)
    return _metadata(reader, index, record, codec.decode_header(record, 0, len(record)))


def problem_is_signature(problem: Problem) -> bool:
    """Whether a verification problem is about trust (a missing, invalid or untrusted signature) rather
    than about the bytes (integrity, format, limit)."""
    return problem.kind == "signature"


__all__ = [
    "block_row",
    "problem_is_signature",
    "recorded_metadata",
    "require_readable_container",
    "utc_text",
    "utc_text_of_seconds",
    "version_row",
]
