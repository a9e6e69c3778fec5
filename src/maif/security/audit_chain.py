"""A segmented audit log: a directory of audit logs chained by signed heads, with no capacity cliff.

One :class:`~maif.security.audit.AuditLog` holds at most ``limits.audit_log_entries_max`` entries, and the
service audits every request, so one file fills in hours. A :class:`SegmentedAuditLog` is a directory of
*segments* (design: docs/adr/0022-audit-segment-chain.md)::

    <directory>/segment-000000000000.audit     segment 0: an ordinary audit log (a pre-segment audit.log
    <directory>/segment-000000000001.audit     moves in here unchanged as segment 0)
    ...

Every segment is a complete audit log in the format of docs/adr/0021 (so every existing tool reads
one). The writer rolls over to the next segment when the current one reaches ``segment_entries_max``
entries or ``segment_bytes_max`` bytes: it *seals* the segment (a signed checkpoint over all its entries,
synced), then writes the next segment whose entry 0 is a *link entry* (action ``audit.segment.link``)
recording the segment number, the chain id (segment 0's log id), the global index of this entry, and
the whole signed head of the previous segment (log id, tree size, root, time, key id and signature).
The link entry is covered by the new segment's checkpoints, so the chain of heads is signed end to end.

:func:`verify_audit_chain` checks every segment and every link: an edited, dropped, reordered, truncated
or swapped segment is reported with the segment file and the entry index. Old segments can be moved out
(:func:`archive_segments`); the rest still verifies from its oldest segment with ``from_segment``, which
trusts the predecessor head recorded in that segment's link entry once its signature verifies under a
trusted key.

The proof API of :class:`SegmentedAuditLog` (``size``, ``entries``, ``root``, proofs, the latest
checkpoint) speaks of the *current* segment, whose indices start at 0; ``first_index`` maps them to
positions in the whole history.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from maif import limits
from maif.durable import fsync_directory
from maif.errors import (
    CryptoError,
    DurabilityError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
    SignatureError,
    StorageError,
    StoreClosedError,
)
from maif.format import merkle
from maif.security.audit import (
    AuditEntry,
    AuditLog,
    AuditTicket,
    SignedCheckpoint,
    TrustedKey,
    _LeafList,
    _nothing_signed_error,
    _Replay,
    _trust_table,
    _verify_signature,
    read_audit_log,
)
from maif.security.keys import KEY_ID_BYTES, KeyInfo, Signer

LINK_ACTION = "audit.segment.link"
LINK_ACTOR = "maif:audit-log"
_SEGMENT_NAME = re.compile(r"^segment-(\d{12})\.audit$")
_ROTATING_SUFFIX = ".rotating"
_LINK_FIELDS = frozenset(
    {
        "segment",
        "chain_id",
        "first_index",
        "previous_log_id",
        "previous_tree_size",
        "previous_root",
        "previous_timestamp",
        "previous_key_id",
        "previous_signature",
    }
)


def segment_name(number: int) -> str:
    """The file name of segment ``number`` (zero-padded, so names sort as numbers do)."""
    assert 0 <= number < 10**12
    return f"segment-{number:012d}.audit"


def list_segments(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(number, path) of every segment file in ``directory``, oldest first."""
    folder = Path(directory)
    try:
        names = os.listdir(folder)
    except OSError as error:
        raise StorageError(f"cannot list audit log directory {folder}: {error.strerror}") from error
    found = []
    for name in names:
        match = _SEGMENT_NAME.match(name)
        if match is not None:
            found.append((int(match.group(1)), folder / name))
    if len(found) > limits.audit_segments_max:
        raise LimitExceededError(f"audit segments in {folder}", len(found), limits.audit_segments_max)
    found.sort()
    return found


# ---- link entries -------------------------------------------------------------------------------------


class SegmentLink(msgspec.Struct, frozen=True):
    """What entry 0 of segment ``segment`` (1 or more) commits to: the previous segment's signed head."""

    segment: int
    chain_id: bytes
    first_index: int
    previous: SignedCheckpoint


def link_event(link: SegmentLink) -> dict[str, Any]:
    """The audit event a link entry records (hex for bytes: audit details hold no byte strings)."""
    previous = link.previous
    return {
        "actor": LINK_ACTOR,
        "action": LINK_ACTION,
        "resource": f"segment:{link.segment}",
        "decision": "allow",
        "reason": f"segment {link.segment} continues the chain after segment {link.segment - 1}",
        "segment": link.segment,
        "chain_id": link.chain_id.hex(),
        "first_index": link.first_index,
        "previous_log_id": previous.log_id.hex(),
        "previous_tree_size": previous.tree_size,
        "previous_root": previous.root.hex(),
        "previous_timestamp": previous.timestamp,
        "previous_key_id": previous.key_id.hex(),
        "previous_signature": previous.signature.hex(),
    }


def parse_link(entry: AuditEntry) -> SegmentLink:
    """The link an entry records; :class:`FormatError` if it is not a well-formed link entry."""
    if entry.action != LINK_ACTION or entry.actor != LINK_ACTOR:
        raise FormatError(f"entry is a {entry.action!r} record by {entry.actor!r}, not a segment link")
    details = entry.details
    if set(details) != _LINK_FIELDS:
        raise FormatError("segment link entry has the wrong detail fields")
    previous = SignedCheckpoint(
        log_id=_hex(details["previous_log_id"], KEY_ID_BYTES),
        tree_size=_count(details["previous_tree_size"]),
        root=_hex(details["previous_root"], 32),
        timestamp=_seconds(details["previous_timestamp"]),
        key_id=_hex(details["previous_key_id"], KEY_ID_BYTES),
        signature=_hex(details["previous_signature"], 64),
    )
    return SegmentLink(
        segment=_count(details["segment"]),
        chain_id=_hex(details["chain_id"], KEY_ID_BYTES),
        first_index=_count(details["first_index"]),
        previous=previous,
    )


def _hex(value: object, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise FormatError(f"segment link field is not {size} bytes of hex")
    try:
        return bytes.fromhex(value)
    except ValueError as error:
        raise FormatError("segment link field is not hex") from error


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= (1 << 62):
        raise FormatError("segment link count is not a non-negative integer")
    return value


def _seconds(value: object) -> float:
    if not isinstance(value, float):
        raise FormatError("segment link time is not a number of seconds")
    return value


# ---- the writer ---------------------------------------------------------------------------------------


class SegmentedAuditLog:
    """An audit log that rolls over to a new, chained segment file instead of filling up.

    Open with :meth:`open`. Thread-safe; one writing process (each open segment holds an exclusive lock).
    Appends are durable and group-committed exactly as :meth:`AuditLog.append` (the segment does it).
    """

    def __init__(
        self,
        directory: Path,
        signer: Signer,
        open_segment: Callable[[Path, Signer], AuditLog],
        segment_entries_max: int,
        segment_bytes_max: int,
    ) -> None:
        self._directory = directory
        self._signer = signer
        self._open_segment = open_segment
        self._segment_entries_max = segment_entries_max
        self._segment_bytes_max = segment_bytes_max
        self._lock = threading.Lock()
        self._closed = False
        self._failure: MAIFError | None = None
        self._segment: AuditLog | None = None
        self._number = 0
        self._first_index = 0
        self._chain_id = b""

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        signer: Signer,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_every_entries: int = 1024,
        checkpoint_every_s: float = 1.0,
        segment_entries_max: int = limits.audit_segment_entries_max,
        segment_bytes_max: int = limits.audit_segment_bytes_max,
        legacy_file: str | os.PathLike[str] | None = None,
    ) -> SegmentedAuditLog:
        """Open (or create) the segment directory; roll over at either bound.

        ``legacy_file`` is a single-file audit log from before segments: if the directory holds no
        segment yet, that file is moved in unchanged as segment 0 and the chain continues from it.
        """
        entries_bound, bytes_bound = limits.audit_segment_entries_max, limits.audit_segment_bytes_max
        if not isinstance(segment_entries_max, int) or not 2 <= segment_entries_max <= entries_bound:
            raise FormatError(f"segment_entries_max must be an integer in 2..{entries_bound}")
        if not isinstance(segment_bytes_max, int) or not 4096 <= segment_bytes_max <= bytes_bound:
            raise FormatError(f"segment_bytes_max must be an integer in 4096..{bytes_bound}")
        folder = Path(directory)

        def open_segment(path: Path, segment_signer: Signer) -> AuditLog:
            return AuditLog.open(
                path,
                segment_signer,
                clock=clock,
                checkpoint_every_entries=checkpoint_every_entries,
                checkpoint_every_s=checkpoint_every_s,
            )

        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise StorageError(f"cannot create audit log directory {folder}: {error.strerror}") from error
        log = cls(folder, signer, open_segment, segment_entries_max, segment_bytes_max)
        log._resume(None if legacy_file is None else Path(legacy_file))
        return log

    def _resume(self, legacy_file: Path | None) -> None:
        for name in os.listdir(self._directory):
            if name.startswith(".segment-") and name.endswith(_ROTATING_SUFFIX):
                # A crash mid-rollover: the file holds only its link entry, and the sealed segment before
                # it is still the newest, so the rollover simply happens again.
                (self._directory / name).unlink()
        segments = list_segments(self._directory)
        if not segments and legacy_file is not None and legacy_file.exists():
            _move_durably(legacy_file, self._directory / segment_name(0))
            segments = list_segments(self._directory)
        number, path = segments[-1] if segments else (0, self._directory / segment_name(0))
        segment = self._open_segment(path, self._signer)
        try:
            if number == 0:
                self._chain_id, self._first_index = segment.log_id, 0
            else:
                first = next(iter(segment.entries(0, 1)), None)
                if first is None:
                    raise IntegrityError(f"audit segment {path} holds no link entry", block_index=0)
                try:
                    link = parse_link(first)
                except FormatError as error:
                    raise _link_error(path, error.message) from None
                self._chain_id, self._first_index = link.chain_id, link.first_index
        except BaseException:
            segment.close()
            raise
        self._segment, self._number = segment, number

    # ---- properties --------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def chain_id(self) -> bytes:
        """The log id of segment 0: names the whole chain."""
        return self._chain_id

    @property
    def segment_number(self) -> int:
        with self._lock:
            return self._number

    @property
    def first_index(self) -> int:
        """The position in the whole history of the current segment's entry 0."""
        with self._lock:
            return self._first_index

    @property
    def current(self) -> AuditLog:
        """The segment appends go to now (it may be sealed and replaced at any next append)."""
        with self._lock:
            assert self._segment is not None
            return self._segment

    @property
    def path(self) -> Path:
        return self.current.path

    @property
    def log_id(self) -> bytes:
        return self.current.log_id

    @property
    def size(self) -> int:
        """Entries in the current segment (the domain of the proofs below)."""
        return self.current.size

    @property
    def total_entries(self) -> int:
        """Entries in the whole history, archived segments included."""
        with self._lock:
            assert self._segment is not None
            return self._first_index + self._segment.size

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        return self.current.latest_checkpoint

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[AuditEntry]:
        return self.current.entries(start, stop)

    def root(self, tree_size: int | None = None) -> bytes:
        return self.current.root(tree_size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        return self.current.inclusion_proof(index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return self.current.consistency_proof(old_size, new_size)

    def replace_signer(self, signer: Signer) -> None:
        """Sign future checkpoints, in this segment and the next ones, with ``signer``."""
        with self._lock:
            assert self._segment is not None
            self._segment.replace_signer(signer)
            self._signer = signer

    # ---- writing -------------------------------------------------------------------------------------

    def append(self, event: Mapping[str, Any]) -> AuditEntry:
        """:meth:`AuditLog.append` on the current segment, rolling over first when it is full."""
        segment, entry, target, checkpoint_error = self._write_entry(event)
        return AuditTicket(segment, entry, target, checkpoint_error).wait()

    def append_deferred(self, event: Mapping[str, Any]) -> AuditTicket:
        """:meth:`AuditLog.append_deferred` on the current segment. A rollover after our write seals
        (syncs) the segment the ticket points at, so its wait returns at once."""
        segment, entry, target, checkpoint_error = self._write_entry(event)
        segment._request_flush()
        return AuditTicket(segment, entry, target, checkpoint_error)

    async def append_async(self, event: Mapping[str, Any]) -> AuditEntry:
        """:meth:`AuditLog.append_async` on the current segment, rolling over first when it is full."""
        return await self.append_deferred(event).wait_async()

    def _write_entry(self, event: Mapping[str, Any]) -> tuple[AuditLog, AuditEntry, int, MAIFError | None]:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"audit log {self._directory} is closed")
            if self._failure is not None:
                raise DurabilityError(
                    f"audit log {self._directory} refuses writes after a failed rollover: "
                    f"{self._failure.message}"
                )
            assert self._segment is not None
            if self._segment_full(self._segment):
                self._roll_over()
            segment = self._segment
            entry, target, checkpoint_error = segment._write_entry(event)
            return segment, entry, target, checkpoint_error

    def _segment_full(self, segment: AuditLog) -> bool:
        # The entry count without the segment's own lock: every write to it happens under this chain's
        # lock, which the caller holds (the lock round trip was ~2 % of the service's loop thread).
        entries = len(segment._entry_offsets)
        return entries >= self._segment_entries_max or segment._written_offset >= self._segment_bytes_max

    def _roll_over(self) -> None:
        """Seal the current segment and start the next with its link entry (caller holds ``self._lock``).

        The next segment is written under a temporary name and renamed into place only once its link
        entry is durable, so a segment file in the directory always begins with its link.
        """
        sealed = self._segment
        assert sealed is not None
        head = sealed.checkpoint()  # a signer refusal raises here and leaves the segment open
        try:
            sealed.close()
            number, first_index = self._number + 1, self._first_index + head.tree_size
            link = SegmentLink(number, self._chain_id, first_index, previous=head)
            final = self._directory / segment_name(number)
            temporary = self._directory / f".{final.name}{_ROTATING_SUFFIX}"
            temporary.unlink(missing_ok=True)
            fresh = self._open_segment(temporary, self._signer)
            try:
                fresh.append(link_event(link))
            finally:
                fresh.close()
            _rename_durably(temporary, final)
            self._segment = self._open_segment(final, self._signer)
            self._number, self._first_index = number, first_index
        except MAIFError as error:
            self._failure = error
            raise
        except OSError as error:
            self._failure = StorageError(f"cannot roll audit log {self._directory} over: {error.strerror}")
            raise self._failure from error

    def checkpoint(self) -> SignedCheckpoint:
        """Sign and durably record a checkpoint over every entry of the current segment."""
        return self.current.checkpoint()

    def close(self) -> None:
        """Sign a final checkpoint over the current segment if needed, sync, and release it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            segment = self._segment
        if segment is not None:
            segment.close()

    def __enter__(self) -> SegmentedAuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _rename_durably(source: Path, target: Path) -> None:
    os.rename(source, target)
    fsync_directory(target.parent)


def _move_durably(source: Path, target: Path) -> None:
    """Move a file (across file systems if need be), then sync both directories."""
    if target.exists():
        raise StorageError(f"cannot move {source} to {target}: the target exists")
    try:
        shutil.move(source, target)
        fsync_directory(target.parent)
        fsync_directory(source.parent)
    except OSError as error:
        raise StorageError(f"cannot move {source} to {target}: {error.strerror}") from error


def archive_segments(
    directory: str | os.PathLike[str], destination: str | os.PathLike[str], *, before_segment: int
) -> list[Path]:
    """Move every segment numbered below ``before_segment`` to ``destination``, oldest first.

    The newest segment (the one a writer appends to) never moves. Oldest first means a crash midway
    leaves the directory a contiguous run of segments, which verifies with ``from_segment`` set to its
    oldest. Returns the new paths.
    """
    segments = list_segments(directory)
    if not segments:
        return []
    if before_segment > segments[-1][0]:
        raise FormatError(f"cannot archive the newest segment ({segments[-1][1].name}) of {directory}")
    target = Path(destination)
    try:
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise StorageError(f"cannot create archive directory {target}: {error.strerror}") from error
    moved = []
    for number, path in segments:
        if number >= before_segment:
            break
        _move_durably(path, target / path.name)
        moved.append(target / path.name)
    return moved


# ---- reading the whole history -------------------------------------------------------------------


class ChainPage(msgspec.Struct, frozen=True):
    """Entries of one segment of a chain with their RFC 9162 inclusion proofs in that segment's tree.

    ``index`` of each entry is its position within the segment (the proof's leaf index); its place in
    the whole history is ``first_index + entry.index``. For a sealed segment the tree is the whole
    segment and ``checkpoint`` is its sealed head (which the next segment's link entry records); for
    the current segment it is the tree so far and its latest checkpoint.
    """

    segment: int
    first_index: int
    tree_size: int
    root: bytes
    entries: list[AuditEntry]
    proofs: list[list[bytes]]
    checkpoint: SignedCheckpoint | None
    current: bool


def read_chain_page(
    log: SegmentedAuditLog, start: int, limit: int, keep: Callable[[AuditEntry], bool] = lambda entry: True
) -> ChainPage | None:
    """The entries at history positions [start, start + limit) that ``keep`` selects, cut at the end of
    the segment holding ``start`` (a page never spans two segments, so its proofs share one tree).

    None if ``start`` lies in archived segments or beyond the end. Memory is bounded by one segment: a
    sealed segment is streamed from its file once, keeping its leaf hashes (32 bytes per entry).
    """
    current_first = log.first_index
    if start >= current_first:
        return _current_page(log, start - current_first, limit, keep)
    located = _locate_sealed(log, start)
    if located is None:
        return None
    number, path, first_index = located
    return _sealed_page(number, path, first_index, start - first_index, limit, keep)


def _current_page(
    log: SegmentedAuditLog, local_start: int, limit: int, keep: Callable[[AuditEntry], bool]
) -> ChainPage | None:
    segment = log.current
    tree_size = segment.size
    if local_start >= tree_size:
        return None
    stop = min(tree_size, local_start + limit)
    entries = [entry for entry in segment.entries(local_start, stop) if keep(entry)]
    return ChainPage(
        segment=log.segment_number,
        first_index=log.first_index,
        tree_size=tree_size,
        root=segment.root(tree_size),
        entries=entries,
        proofs=[segment.inclusion_proof(entry.index, tree_size) for entry in entries],
        checkpoint=segment.latest_checkpoint,
        current=True,
    )


def _locate_sealed(log: SegmentedAuditLog, start: int) -> tuple[int, Path, int] | None:
    """(number, path, first index) of the sealed segment holding history position ``start``: a binary
    search over the segments present, reading one link entry per step."""
    current = log.segment_number
    sealed = [(number, path) for number, path in list_segments(log.directory) if number < current]
    low, high, found = 0, len(sealed) - 1, None
    while low <= high:
        middle = (low + high) // 2
        first_index = _first_index_of(*sealed[middle])
        if first_index <= start:
            found, low = (*sealed[middle], first_index), middle + 1
        else:
            high = middle - 1
    return found


def _first_index_of(number: int, path: Path) -> int:
    if number == 0:
        return 0
    for record in read_audit_log(path):
        if isinstance(record, AuditEntry):
            return parse_link(record).first_index
        break
    raise IntegrityError(f"{path.name} does not begin with its link entry", block_index=0)


def _sealed_page(
    number: int,
    path: Path,
    first_index: int,
    local_start: int,
    limit: int,
    keep: Callable[[AuditEntry], bool],
) -> ChainPage | None:
    leaves = bytearray()
    entries: list[AuditEntry] = []
    checkpoint: SignedCheckpoint | None = None
    for record in read_audit_log(path):
        if isinstance(record, SignedCheckpoint):
            checkpoint = record
            continue
        leaves += record.hash
        if local_start <= record.index < local_start + limit and keep(record):
            entries.append(record)
    tree_size = len(leaves) // 32
    if local_start >= tree_size:
        return None
    leaf_list = _LeafList(bytes(leaves))
    return ChainPage(
        segment=number,
        first_index=first_index,
        tree_size=tree_size,
        root=merkle.root(leaf_list),
        entries=entries,
        proofs=[merkle.inclusion_proof(leaf_list, entry.index) for entry in entries],
        checkpoint=checkpoint,
        current=False,
    )


# ---- offline verification --------------------------------------------------------------------------


class AuditChainReport(msgspec.Struct, frozen=True):
    """What :func:`verify_audit_chain` established about a segment directory that passed every check."""

    directory: str
    chain_id: bytes
    first_segment: int
    last_segment: int
    segments: int
    first_index: int
    entries: int
    checkpoints: int
    unsigned_tail_entries: int
    last_checkpoint: SignedCheckpoint | None
    anchor: SignedCheckpoint | None
    signing_key_ids: list[bytes]
    torn_tail_bytes: int

    @property
    def fully_signed(self) -> bool:
        """Every entry is covered by a checkpoint signed by a trusted key."""
        return self.unsigned_tail_entries == 0


class _SegmentWalk(msgspec.Struct):
    log_id: bytes
    size: int
    checkpoints: int
    last_checkpoint: SignedCheckpoint | None
    first_entry: AuditEntry | None
    torn_tail_bytes: int
    witnessed: bool


_Table = Mapping[bytes, tuple[Ed25519PublicKey, KeyInfo | None]]


def _walk_segment(
    path: Path, table: _Table, signing_keys: list[bytes], witness: SignedCheckpoint | None
) -> _SegmentWalk:
    """Replay one segment, checking frames, chain, roots and checkpoint signatures (and the witness)."""

    def check_checkpoint(checkpoint: SignedCheckpoint) -> None:
        _verify_signature(checkpoint, table)
        if checkpoint.key_id not in signing_keys:
            signing_keys.append(checkpoint.key_id)

    first_entry: AuditEntry | None = None
    try:
        with open(path, "rb") as handle:
            replay = _Replay(path, handle, os.fstat(handle.fileno()).st_size, on_checkpoint=check_checkpoint)
            witnessed = witness is not None and witness.log_id == replay.log_id
            replay.witness = witness if witnessed else None
            for record in replay.records():
                if first_entry is None and isinstance(record, AuditEntry):
                    first_entry = record
    except OSError as error:
        raise StorageError(f"cannot read audit segment {path}: {error.strerror}") from error
    if witnessed and witness is not None and replay.size < witness.tree_size:
        raise IntegrityError(
            f"audit segment {path} no longer holds the {witness.tree_size} entries the witness checkpoint "
            f"signed (it has {replay.size}): truncated",
            block_index=replay.size,
        )
    return _SegmentWalk(
        log_id=replay.log_id,
        size=replay.size,
        checkpoints=replay.checkpoints,
        last_checkpoint=replay.last_checkpoint,
        first_entry=first_entry,
        torn_tail_bytes=replay.torn_tail_bytes,
        witnessed=witnessed,
    )


class _ChainCursor:
    """What the links of the segments verified so far say the next segment must continue."""

    def __init__(self) -> None:
        self.chain_id = b""
        self.next_index = 0
        self.previous: tuple[Path, _SegmentWalk] | None = None
        self.anchor: SignedCheckpoint | None = None

    def check_link(self, number: int, path: Path, walk: _SegmentWalk, table: _Table) -> None:
        first = walk.first_entry
        if number == 0:
            if first is not None and first.action == LINK_ACTION:
                raise _link_error(path, "segment 0 begins with a link entry (a later segment renamed)")
            self.chain_id, self.next_index = walk.log_id, 0
            return
        if first is None:
            raise _link_error(path, "the segment holds no link entry (emptied or replaced)")
        link = numbered_link(path, number, first)
        if self.previous is None:  # the oldest segment verified: anchor on the head it records
            try:
                _verify_signature(link.previous, table)
            except SignatureError as error:
                raise SignatureError(
                    f"audit segment {path}: entry 0: the recorded head of segment {number - 1}: "
                    f"{error.message}",
                    block_index=0,
                ) from error
            self.chain_id, self.next_index, self.anchor = link.chain_id, link.first_index, link.previous
            return
        previous_path, previous = self.previous
        if link.chain_id != self.chain_id:
            raise _link_error(path, "the link names another chain (a segment of another log swapped in)")
        if link.previous != previous.last_checkpoint:
            raise _link_error(
                path,
                f"the link commits to a head of segment {number - 1} (log id {link.previous.log_id.hex()}, "
                f"{link.previous.tree_size} entries) that {previous_path.name} does not end with "
                "(a segment dropped, swapped, truncated or altered)",
            )
        if link.first_index != self.next_index:
            raise _link_error(path, f"the link starts at entry {link.first_index}, not {self.next_index}")

    def advance(self, path: Path, walk: _SegmentWalk) -> None:
        self.next_index += walk.size
        self.previous = (path, walk)


def numbered_link(path: Path, number: int, first: AuditEntry) -> SegmentLink:
    """The link entry 0 of segment ``number`` (file ``path``) records; a located IntegrityError unless it
    is a well-formed link naming that segment."""
    try:
        link = parse_link(first)
    except FormatError as error:
        raise _link_error(path, error.message) from None
    if link.segment != number:
        raise _link_error(path, f"the link names segment {link.segment}: files renamed or reordered")
    return link


def _link_error(path: Path, problem: str) -> IntegrityError:
    return IntegrityError(f"audit segment {path}: entry 0: {problem}", block_index=0)


def verify_audit_chain(
    directory: str | os.PathLike[str],
    trusted_keys: Sequence[TrustedKey],
    *,
    from_segment: int | None = None,
    witness: SignedCheckpoint | None = None,
    allow_unsigned_tail: bool = False,
) -> AuditChainReport:
    """Check every segment of the directory (as :func:`verify_audit_log` does one) and every link.

    Without ``from_segment`` the chain must start at segment 0. With it, segments before
    ``from_segment`` are ignored (archived) and the signed head that segment's link entry records for
    its predecessor is trusted once its signature verifies under ``trusted_keys``. Every sealed segment
    must end with a checkpoint over all its entries, equal to the head the next segment's link records;
    the newest may have an unsigned tail only with ``allow_unsigned_tail``, and never when no verified
    segment holds a checkpoint at all (nothing would be proven). ``witness`` is a checkpoint
    of one segment kept from earlier: that segment must still be there with those entries unchanged.
    Raises a located error naming the segment file and ``block_index`` = the entry within it.
    """
    folder = Path(directory)
    segments = [(n, p) for n, p in list_segments(folder) if from_segment is None or n >= from_segment]
    return verify_segment_sequence(
        folder,
        segments,
        trusted_keys,
        expected_first=0 if from_segment is None else from_segment,
        witness=witness,
        allow_unsigned_tail=allow_unsigned_tail,
    )


def _local_segment(number: int, path: Path) -> contextlib.AbstractContextManager[Path]:
    return contextlib.nullcontext(path)


def verify_segment_sequence(
    folder: Path,
    segments: Sequence[tuple[int, Path]],
    trusted_keys: Sequence[TrustedKey],
    *,
    expected_first: int,
    witness: SignedCheckpoint | None = None,
    allow_unsigned_tail: bool = False,
    open_segment: Callable[[int, Path], contextlib.AbstractContextManager[Path]] = _local_segment,
) -> AuditChainReport:
    """The checks of :func:`verify_audit_chain` over ``segments`` (number, name), oldest first.

    ``open_segment(number, path)`` gives the local file to read for a segment, one at a time (the
    archive fetches archived segments through it, so at most one is on local disk); messages name
    ``path``.
    """
    table = _trust_table(trusted_keys)
    if not table:
        raise CryptoError("verifying an audit log needs at least one trusted public key")
    if witness is not None:
        _verify_signature(witness, table)
    if not segments:
        raise FormatError(f"{folder} holds no audit segment numbered {expected_first} or later")
    _require_contiguous(folder, list(segments), expected_first)
    cursor, signing_keys, checkpoints, witnessed = _ChainCursor(), list[bytes](), 0, False
    first_index, last, signed_entries = 0, None, 0
    for position, (number, path) in enumerate(segments):
        with open_segment(number, path) as local:
            walk = _walk_segment(local, table, signing_keys, witness)
            cursor.check_link(number, path, walk, table)
            if position == 0:
                first_index = cursor.next_index
            if position < len(segments) - 1:
                _require_sealed(path, walk)
        cursor.advance(path, walk)
        checkpoints += walk.checkpoints
        signed_entries += 0 if walk.last_checkpoint is None else walk.last_checkpoint.tree_size
        witnessed = witnessed or walk.witnessed
        last = (path, walk)
    assert last is not None
    if witness is not None and not witnessed:
        raise IntegrityError(
            f"audit log {folder}: no segment has the witness checkpoint's log id {witness.log_id.hex()} "
            "(its segment was dropped, replaced or archived)"
        )
    last_path, last_walk = last
    if signed_entries == 0:  # the anchor (if any) covers archived entries, none of these
        raise _nothing_signed_error(str(folder), cursor.next_index - first_index)
    signed = 0 if last_walk.last_checkpoint is None else last_walk.last_checkpoint.tree_size
    if last_walk.size > signed and not allow_unsigned_tail:
        raise SignatureError(
            f"audit segment {last_path}: the last {last_walk.size - signed} entries (from entry {signed}) "
            "are chained but not covered by a signed checkpoint",
            block_index=signed,
            hint="the writer signs them at its next checkpoint or on close; allow_unsigned_tail accepts them",
        )
    return AuditChainReport(
        directory=str(folder),
        chain_id=cursor.chain_id,
        first_segment=segments[0][0],
        last_segment=segments[-1][0],
        segments=len(segments),
        first_index=first_index,
        entries=cursor.next_index - first_index,
        checkpoints=checkpoints,
        unsigned_tail_entries=last_walk.size - signed,
        last_checkpoint=last_walk.last_checkpoint,
        anchor=cursor.anchor,
        signing_key_ids=signing_keys,
        torn_tail_bytes=last_walk.torn_tail_bytes,
    )


def _require_contiguous(folder: Path, segments: list[tuple[int, Path]], expected_first: int) -> None:
    first_number, first_path = segments[0]
    if first_number != expected_first:
        raise IntegrityError(
            f"audit log {folder}: the oldest segment is {first_path.name}, not segment {expected_first}: "
            f"segments {expected_first}..{first_number - 1} are missing (dropped or archived)",
            block_index=0,
            hint=f"if they were archived on purpose, verify from segment {first_number} (--from-segment), "
            "which trusts the signed head its link entry records",
        )
    for (before, _), (number, path) in itertools.pairwise(segments):
        if number != before + 1:
            raise IntegrityError(
                f"audit log {folder}: segments {before + 1}..{number - 1} are missing before {path.name} "
                "(dropped)",
                block_index=0,
            )


def _require_sealed(path: Path, walk: _SegmentWalk) -> None:
    signed = 0 if walk.last_checkpoint is None else walk.last_checkpoint.tree_size
    if walk.torn_tail_bytes or signed != walk.size:
        raise IntegrityError(
            f"audit segment {path}: entry {signed}: a sealed segment must end with a checkpoint over all "
            f"its {walk.size} entries (truncated or altered)",
            block_index=signed,
        )


def read_audit_chain(
    directory: str | os.PathLike[str],
) -> Iterator[tuple[int, AuditEntry | SignedCheckpoint]]:
    """(segment number, record) for every record of every segment, oldest first; structure checked per
    segment (frames, chain, roots), neither signatures nor links (use :func:`verify_audit_chain`)."""
    for number, path in list_segments(directory):
        for record in read_audit_log(path):
            yield number, record


def latest_chain_checkpoint(directory: str | os.PathLike[str]) -> SignedCheckpoint | None:
    """The newest signed checkpoint of the directory (the newest segment's, else its predecessor's)."""
    for _, path in reversed(list_segments(directory)):
        latest = None
        for record in read_audit_log(path):
            if isinstance(record, SignedCheckpoint):
                latest = record
        if latest is not None:
            return latest
    return None


__all__ = [
    "LINK_ACTION",
    "LINK_ACTOR",
    "AuditChainReport",
    "ChainPage",
    "SegmentLink",
    "SegmentedAuditLog",
    "archive_segments",
    "latest_chain_checkpoint",
    "link_event",
    "list_segments",
    "numbered_link",
    "parse_link",
    "read_audit_chain",
    "read_chain_page",
    "segment_name",
    "verify_audit_chain",
    "verify_segment_sequence",
]
