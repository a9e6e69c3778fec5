"""The tamper-evident audit log: every security decision, durable, hash-chained, Merkle-signed.

An :class:`AuditLog` is one append-only file (layout in docs/adr/0021-audit-log-layout.md)::

    header  = magic "MAIFAUDT" (8) | version u16 = 1 | reserved u16 = 0 | reserved (4) = 0 | log id (16)
              | BLAKE3 of those 32 bytes (32)                                              -- 64 bytes
    frame   = length u32 | length ^ 0xFFFFFFFF u32 | BLAKE3(length u32 || record) (32) | record
    record  = MessagePack (msgspec) of an AuditEntry or a SignedCheckpoint (tagged "type")

Integers are little-endian. Three independent protections overlap:

* every frame carries a digest (any damaged frame is found and located);
* every entry holds the hash of the previous entry (``prev_hash``; entry 0 holds the header's digest),
  where an entry's hash is its RFC 9162 leaf hash ``BLAKE3(0x00 || record)`` (deletion, insertion,
  reordering and duplication break the chain and the ``index`` sequence);
* entry hashes are the leaves of an RFC 9162 Merkle tree; a :class:`SignedCheckpoint` (tree size, root,
  time, key id, Ed25519 signature over a domain-separated digest that also binds the log id) is written
  into the log after every ``checkpoint_every_entries`` entries or ``checkpoint_every_s`` seconds and on
  :meth:`AuditLog.close`. With checkpoints come inclusion and consistency proofs, so a third party holding
  one checkpoint can check an entry, or that a later log extends the one it saw, without the whole file.

Durability: :meth:`AuditLog.append` returns only after its frame is on disk (``fdatasync``); concurrent
appenders share one sync (group commit). A sync failure is never retried: the log refuses further writes.
:meth:`AuditLog.append_deferred` writes the frame and hands back an :class:`AuditTicket` whose wait
returns once it is on disk; the log's flusher thread starts syncing at once, so the sync runs while the
caller does its own work. Inside :func:`audit_barrier` (the HTTP service opens one per request) the gate
collects these tickets and the barrier is awaited before the response is sent (ADR 0023).
Recovery: opening a log truncates a *torn tail* (an incomplete last frame, or a zero-filled end, as a crash
leaves), and refuses anything else: a damaged frame in the middle, or even the last complete frame with a
bad digest, is an :class:`~maif.errors.IntegrityError` naming the first bad entry.

Events never carry secrets: fields whose names denote secrets (``token``, ``password``, ``private_key``,
...), byte strings, JWTs and PEM blocks are replaced by a ``<redacted ...>`` marker before writing, so
the decision is still recorded.

:func:`verify_audit_log` checks a log offline with nothing but the trusted public keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import fcntl
import functools
import math
import os
import re
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal, overload

import blake3
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from maif import limits
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
    UnsupportedVersionError,
)
from maif.format import merkle
from maif.security.keys import KEY_ID_BYTES, KeyInfo, Signer, key_id_of, raw_public_key

_MAGIC = b"MAIFAUDT"
_VERSION = 1
_HEADER_FIELDS = struct.Struct("<8sHH4s16s")
HEADER_BYTES = _HEADER_FIELDS.size + 32
_FRAME_HEAD = struct.Struct("<II32s")
FRAME_HEAD_BYTES = _FRAME_HEAD.size
_LENGTH_MASK = 0xFFFFFFFF
_CHECKPOINT_DOMAIN = b"MAIF audit checkpoint v1\x00"
_READ_CHUNK_BYTES = 1 << 20

Hash32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
KeyId = Annotated[bytes, msgspec.Meta(min_length=KEY_ID_BYTES, max_length=KEY_ID_BYTES)]
Signature64 = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
Count = Annotated[int, msgspec.Meta(ge=0, le=(1 << 62))]
Scalar = str | int | float | bool | None
DetailValue = Scalar | list[Scalar]


class AuditEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="entry"):
    """One recorded decision. ``index`` counts from 0; ``time`` is Unix seconds."""

    index: Count
    time: float
    prev_hash: Hash32
    actor: str
    action: str
    resource: str
    decision: Literal["allow", "deny"]
    reason: str
    details: dict[str, DetailValue]

    @property
    def hash(self) -> bytes:
        """The entry's hash: its RFC 9162 leaf hash, the Merkle leaf and the next entry's ``prev_hash``."""
        return merkle.hash_leaf(_ENCODER.encode(self))


class SignedCheckpoint(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="checkpoint"):
    """A signed statement: log ``log_id`` had ``tree_size`` entries with Merkle ``root`` at ``timestamp``."""

    log_id: KeyId
    tree_size: Count
    root: Hash32
    timestamp: float
    key_id: KeyId
    signature: Signature64

    def signed_payload(self) -> bytes:
        return checkpoint_payload(self.log_id, self.tree_size, self.root, self.timestamp, self.key_id)


_ENCODER = msgspec.msgpack.Encoder()
_RECORD_DECODER = msgspec.msgpack.Decoder(AuditEntry | SignedCheckpoint)
_CHECKPOINT_DECODER = msgspec.msgpack.Decoder(SignedCheckpoint)


def checkpoint_payload(log_id: bytes, tree_size: int, root: bytes, timestamp: float, key_id: bytes) -> bytes:
    """The exact bytes a checkpoint signature covers (domain-separated, fixed layout)."""
    return (
        _CHECKPOINT_DOMAIN
        + log_id
        + struct.pack("<Q", tree_size)
        + root
        + struct.pack("<d", timestamp)
        + key_id
    )


class AuditVerificationReport(msgspec.Struct, frozen=True):
    """What :func:`verify_audit_log` established about a log that passed every check."""

    path: str
    log_id: bytes
    entries: int
    checkpoints: int
    signed_entries: int
    unsigned_tail_entries: int
    root: bytes
    last_checkpoint: SignedCheckpoint | None
    signing_key_ids: list[bytes]
    torn_tail_bytes: int

    @property
    def fully_signed(self) -> bool:
        """Every entry is covered by a checkpoint signed by a trusted key."""
        return self.unsigned_tail_entries == 0


# ---- event sanitising -------------------------------------------------------------------------

_SECRET_FIELD = re.compile(
    r"(^|_)(token|password|passwd|passphrase|secret|private_key|key_material|credentials?|authorization"
    r"|cookie|api_?key|plaintext|master_key|data_key|signing_key|nonce_secret)$"
)
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# Both in one pattern: one scan of each text field per entry rather than two (docs/adr/0089).
_SECRET_TEXT = re.compile(f"{_JWT_LIKE.pattern}|{_PEM_PRIVATE.pattern}")
_UTF8_BYTES_PER_CHARACTER_MAX = 4
_RESERVED_FIELDS = ("time", "actor", "action", "resource", "decision", "reason")


def _clean_text(value: str, what: str) -> str:
    if _SECRET_TEXT.search(value):
        return "<redacted: token or key material>"
    if len(value) * _UTF8_BYTES_PER_CHARACTER_MAX > limits.audit_event_text_bytes_max:  # else it fits
        size = len(value.encode("utf-8", "replace"))
        if size > limits.audit_event_text_bytes_max:
            raise LimitExceededError(f"audit event field {what!r}", size, limits.audit_event_text_bytes_max)
    return value


@functools.lru_cache(maxsize=limits.audit_detail_names_cached_max)
def _detail_name_is_secret(name: str) -> bool:
    """Whether a detail field of this name is redacted; checked once per distinct name (the gate's
    events use a handful), after the name itself was checked as text (an error is never cached)."""
    _clean_text(name, "field name")
    return _SECRET_FIELD.search(name.lower()) is not None


def _clean_scalar(value: Any, what: str) -> Scalar:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(float(value))
    if isinstance(value, str):
        return _clean_text(str(value), what)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<redacted: {len(value)} bytes>"
    raise FormatError(
        f"audit event field {what!r} has a {type(value).__name__}; only text, numbers, "
        "booleans, null and lists of those are recorded"
    )


def _clean_detail(name: str, value: Any) -> DetailValue:
    if _detail_name_is_secret(name):
        return "<redacted>"
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        if len(items) > limits.audit_event_details_max:
            raise LimitExceededError(
                f"audit event field {name!r}", len(items), limits.audit_event_details_max
            )
        return [_clean_scalar(item, name) for item in items]
    return _clean_scalar(value, name)


def sanitize_event(event: Mapping[str, Any], clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """The fields of the entry ``event`` becomes, secrets redacted; raises on a malformed event."""
    if not isinstance(event, Mapping):
        raise FormatError("an audit event must be a mapping")
    decision = event.get("decision")
    if decision not in ("allow", "deny"):
        raise FormatError("an audit event needs decision 'allow' or 'deny'")
    action = event.get("action")
    if not isinstance(action, str) or not action:
        raise FormatError("an audit event needs a non-empty text 'action'")
    when = event.get("time")
    if when is None:
        when = clock()
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        raise FormatError("audit event 'time' must be a finite number of Unix seconds")
    fields: dict[str, Any] = {"time": float(when), "decision": decision}
    for name in ("actor", "action", "resource", "reason"):
        value = _clean_scalar(event.get(name), name)
        fields[name] = "" if value is None else str(value)
    details = {name: value for name, value in event.items() if name not in (*_RESERVED_FIELDS, "details")}
    nested = event.get("details")
    if isinstance(nested, Mapping):  # a caller's own "details" map is flattened into the details
        details.update(nested)
    elif nested is not None:
        details["details"] = nested
    if len(details) > limits.audit_event_details_max:
        raise LimitExceededError("audit event detail fields", len(details), limits.audit_event_details_max)
    for name in details:
        if not isinstance(name, str):
            raise FormatError("audit event field names must be text")
    fields["details"] = {name: _clean_detail(name, value) for name, value in details.items()}
    return fields


# ---- frames -----------------------------------------------------------------------------------


def _frame(record: bytes) -> bytes:
    length = struct.pack("<I", len(record))
    digest = blake3.blake3(length + record).digest()
    return _FRAME_HEAD.pack(len(record), len(record) ^ _LENGTH_MASK, digest) + record


class _Damage(Exception):
    def __init__(self, message: str, offset: int, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.malformed = malformed


class _FrameReader:
    """Reads frames sequentially; raises :class:`_Damage`; notes a torn tail instead of raising."""

    def __init__(self, handle: BinaryIO, file_size: int, offset: int) -> None:
        self._handle = handle
        self._file_size = file_size
        self.offset = offset
        self.torn_tail_bytes = 0
        handle.seek(offset)

    def next_record(self) -> bytes | None:
        remaining = self._file_size - self.offset
        if remaining == 0:
            return None
        if remaining < 8:
            self.torn_tail_bytes = remaining
            return None
        head = self._read_exact(8)
        length, check = struct.unpack("<II", head)
        if length == 0 and check == 0 and self._rest_is_zero(remaining - 8):
            self.torn_tail_bytes = remaining
            return None
        if check != length ^ _LENGTH_MASK:
            raise _Damage("frame length check failed", self.offset)
        if not 0 < length <= limits.audit_record_bytes_max:
            raise _Damage(f"frame length {length} outside 1..{limits.audit_record_bytes_max}", self.offset)
        if remaining < FRAME_HEAD_BYTES + length:
            self.torn_tail_bytes = remaining
            return None
        body = self._read_exact(32 + length)
        digest, record = body[:32], body[32:]
        if blake3.blake3(head[:4] + record).digest() != digest:
            raise _Damage("frame digest does not match its record", self.offset)
        self.offset += FRAME_HEAD_BYTES + length
        return record

    def _rest_is_zero(self, count: int) -> bool:
        position = self._handle.tell()
        while count > 0:
            chunk = self._handle.read(min(count, _READ_CHUNK_BYTES))
            if not chunk or chunk.count(0) != len(chunk):
                self._handle.seek(position)
                return False
            count -= len(chunk)
        self._handle.seek(position)
        return True

    def _read_exact(self, count: int) -> bytes:
        data = self._handle.read(count)
        if len(data) != count:
            raise _Damage("the file shrank while it was being read", self.offset)
        return data


def _read_header(handle: BinaryIO, path: Path) -> tuple[bytes, bytes]:
    """(log id, header digest), after checking magic, version and the header's own digest."""
    handle.seek(0)
    header = handle.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise FormatError(f"{path} is too short to be a MAIF audit log ({len(header)} bytes)")
    magic, version, reserved, reserved_bytes, log_id = _HEADER_FIELDS.unpack_from(header)
    if magic != _MAGIC:
        raise FormatError(f"{path} is not a MAIF audit log (bad magic)", offset=0)
    digest = blake3.blake3(header[: _HEADER_FIELDS.size]).digest()
    if digest != header[_HEADER_FIELDS.size :]:
        raise IntegrityError(f"audit log {path}: header digest does not match (header altered)")
    if version != _VERSION or reserved != 0 or reserved_bytes != bytes(4):
        raise UnsupportedVersionError(f"audit log {path} has unsupported version {version}", offset=8)
    return log_id, digest


# ---- replay: the checks shared by the writer's recovery and the offline verifier -----------------


class _MerkleAccumulator:
    """The RFC 9162 root of a growing list of leaves in O(log n) memory (same fold as merkle.root)."""

    def __init__(self) -> None:
        self._stack: list[tuple[bytes, int]] = []

    def push(self, leaf_hash: bytes) -> None:
        node, size = leaf_hash, 1
        while self._stack and self._stack[-1][1] == size:
            left, _ = self._stack.pop()
            node, size = merkle.hash_children(left, node), size * 2
        self._stack.append((node, size))

    def root(self) -> bytes:
        if not self._stack:
            return merkle.empty_root()
        node = self._stack[-1][0]
        for left, _ in reversed(self._stack[:-1]):
            node = merkle.hash_children(left, node)
        return node


class _Replay:
    """Walks a log's frames, checking every frame, chain link and checkpoint root in order."""

    def __init__(
        self,
        path: Path,
        handle: BinaryIO,
        file_size: int,
        *,
        on_entry: Callable[[bytes, int], None] | None = None,
        on_checkpoint: Callable[[SignedCheckpoint], None] | None = None,
    ) -> None:
        self.path = path
        self.log_id, self.last_hash = _read_header(handle, path)
        self.size = 0
        self.accumulator = _MerkleAccumulator()
        self.checkpoints = 0
        self.last_checkpoint: SignedCheckpoint | None = None
        self._reader = _FrameReader(handle, file_size, HEADER_BYTES)
        self._on_entry = on_entry
        self._on_checkpoint = on_checkpoint
        self.witness: SignedCheckpoint | None = None

    @property
    def end_offset(self) -> int:
        return self._reader.offset

    @property
    def torn_tail_bytes(self) -> int:
        return self._reader.torn_tail_bytes

    def run(self) -> None:
        for _ in self.records():
            pass

    def records(self) -> Iterator[AuditEntry | SignedCheckpoint]:
        """Each record once it has passed every check, in file order."""
        while True:
            offset = self._reader.offset
            try:
                record = self._reader.next_record()
            except _Damage as damage:
                raise self._located(damage.message, damage.offset) from None
            if record is None:
                return
            yield self._apply(record, offset)

    def _located(self, problem: str, offset: int) -> IntegrityError:
        return IntegrityError(
            f"audit log {self.path}: entry {self.size} (the record at offset {offset}, after "
            f"{self.size} good entries): {problem}",
            block_index=self.size,
        )

    def _apply(self, record: bytes, offset: int) -> AuditEntry | SignedCheckpoint:
        try:
            decoded: AuditEntry | SignedCheckpoint = _RECORD_DECODER.decode(record)
        except msgspec.DecodeError as error:
            raise self._located(f"record is not a valid audit record ({error})", offset) from error
        if _ENCODER.encode(decoded) != record:
            raise self._located("record is not in canonical encoding", offset)
        if isinstance(decoded, AuditEntry):
            self._apply_entry(decoded, record, offset)
        else:
            self._apply_checkpoint(decoded, offset)
        return decoded

    def _apply_entry(self, entry: AuditEntry, record: bytes, offset: int) -> None:
        if entry.index != self.size:
            raise self._located(f"entry holds index {entry.index} (deleted, inserted or reordered)", offset)
        if entry.prev_hash != self.last_hash:
            raise self._located("chain link broken: prev_hash is not the previous entry's hash", offset)
        if not math.isfinite(entry.time):
            raise self._located("entry time is not a finite number", offset)
        if self.size >= limits.audit_log_entries_max:
            raise LimitExceededError("audit log entries", self.size + 1, limits.audit_log_entries_max)
        leaf = merkle.hash_leaf(record)
        self.accumulator.push(leaf)
        self.last_hash = leaf
        self.size += 1
        witness = self.witness
        if witness is not None and witness.tree_size == self.size and witness.root != self.accumulator.root():
            raise IntegrityError(
                f"audit log {self.path}: entries 0..{self.size - 1} differ from what the witness checkpoint"
                " signed (history rewritten)",
                block_index=0,
            )
        if self._on_entry is not None:
            self._on_entry(leaf, offset)

    def _apply_checkpoint(self, checkpoint: SignedCheckpoint, offset: int) -> None:
        if checkpoint.log_id != self.log_id:
            raise self._located("checkpoint belongs to another log", offset)
        if checkpoint.tree_size != self.size:
            raise self._located(
                f"checkpoint claims {checkpoint.tree_size} entries where {self.size} precede it", offset
            )
        if not math.isfinite(checkpoint.timestamp):
            raise self._located("checkpoint time is not a finite number", offset)
        previous = self.last_checkpoint
        if previous is not None and checkpoint.timestamp < previous.timestamp:
            raise self._located("checkpoint time goes backwards", offset)
        if checkpoint.root != self.accumulator.root():
            # The previous checkpoint vouched for the entries before it, so the altered entry (or the
            # checkpoint itself) lies in the range this checkpoint newly covers.
            first = 0 if previous is None else previous.tree_size
            raise IntegrityError(
                f"audit log {self.path}: the checkpoint at offset {offset} signs a root that entries "
                f"{first}..{self.size - 1} do not have (one of them, or the checkpoint, was altered)",
                block_index=first,
            )
        if self.checkpoints >= limits.audit_checkpoints_max:
            raise LimitExceededError(
                "audit log checkpoints", self.checkpoints + 1, limits.audit_checkpoints_max
            )
        if self._on_checkpoint is not None:
            try:
                self._on_checkpoint(checkpoint)
            except SignatureError as error:
                raise SignatureError(
                    f"audit log {self.path}: checkpoint over entries 0..{self.size - 1}: {error.message}",
                    block_index=max(self.size - 1, 0),
                ) from error
        self.checkpoints += 1
        self.last_checkpoint = checkpoint


# ---- the writer ---------------------------------------------------------------------------------


class AuditLog:
    """An append-only, durable, hash-chained and Merkle-checkpointed log of security decisions.

    Open with :meth:`open`. Thread-safe; one process at a time (an exclusive lock on the file).
    """

    def __init__(
        self,
        path: Path,
        descriptor: int,
        signer: Signer,
        clock: Callable[[], float],
        checkpoint_every_entries: int,
        checkpoint_every_s: float,
    ) -> None:
        self._path = path
        self._descriptor = descriptor
        self._signer = signer
        self._clock = clock
        self._checkpoint_every_entries = checkpoint_every_entries
        self._checkpoint_every_s = checkpoint_every_s
        self._lock = threading.Lock()
        self._sync_condition = threading.Condition()
        self._syncing = False
        self._flush_wanted = False
        self._stopping = False
        self._flusher: threading.Thread | None = None
        self._async_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failure: DurabilityError | None = None
        self._closed = False
        self._leaves = bytearray()
        self._entry_offsets = array("Q")
        self._log_id = b""
        self._last_hash = b""
        self._accumulator = _MerkleAccumulator()
        self._last_checkpoint: SignedCheckpoint | None = None
        self._last_checkpoint_clock = clock()
        self._written_offset = 0
        """End of the last frame appended (in the file, or still in ``_unwritten``)."""
        self._unwritten = bytearray()
        """Frames appended and not yet written: the flusher writes them with its sync (ADR 0023)."""
        self._synced_offset = 0
        self.recovered_tail_bytes = 0
        """Bytes of a torn tail (a crash mid-append) cut off when the log was opened."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        signer: Signer,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_every_entries: int = 1024,
        checkpoint_every_s: float = 1.0,
    ) -> AuditLog:
        """Open (or create) the log at ``path``; checkpoints will be signed by ``signer``."""
        _require_signer(signer)
        if not isinstance(checkpoint_every_entries, int) or checkpoint_every_entries < 1:
            raise FormatError("checkpoint_every_entries must be a positive integer")
        if not math.isfinite(checkpoint_every_s) or checkpoint_every_s < 0:
            raise FormatError("checkpoint_every_s must be a finite number of seconds, 0 or more")
        log_path = Path(path)
        if not log_path.exists():
            _create(log_path)
        try:
            descriptor = os.open(log_path, os.O_RDWR | os.O_APPEND)
        except OSError as error:
            raise StorageError(f"cannot open audit log {log_path}: {error.strerror}") from error
        log = cls(log_path, descriptor, signer, clock, checkpoint_every_entries, checkpoint_every_s)
        try:
            log._lock_file()
            log._recover()
        except BaseException:
            os.close(descriptor)
            raise
        return log

    def _lock_file(self) -> None:
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise StorageError(f"audit log {self._path} is open for writing in another process") from error

    def _recover(self) -> None:
        def keep(leaf: bytes, offset: int) -> None:
            self._leaves += leaf
            self._entry_offsets.append(offset)

        file_size = os.fstat(self._descriptor).st_size
        with open(self._path, "rb") as handle:  # a second, read-only descriptor
            replay = _Replay(self._path, handle, file_size, on_entry=keep)
            replay.run()
        if replay.torn_tail_bytes:
            try:
                os.ftruncate(self._descriptor, replay.end_offset)
                os.fsync(self._descriptor)
            except OSError as error:
                raise DurabilityError(
                    f"cannot cut the torn tail of {self._path}: {error.strerror}"
                ) from error
            self.recovered_tail_bytes = replay.torn_tail_bytes
        self._log_id, self._last_hash = replay.log_id, replay.last_hash
        self._accumulator = replay.accumulator
        self._last_checkpoint = replay.last_checkpoint
        self._written_offset = self._synced_offset = replay.end_offset

    # ---- properties --------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def log_id(self) -> bytes:
        return self._log_id

    @property
    def size(self) -> int:
        """How many entries the log holds."""
        with self._lock:
            return len(self._entry_offsets)

    @property
    def latest_checkpoint(self) -> SignedCheckpoint | None:
        with self._lock:
            return self._last_checkpoint

    def replace_signer(self, signer: Signer) -> None:
        """Sign future checkpoints with ``signer`` (after a key rotation)."""
        _require_signer(signer)
        with self._lock:
            self._signer = signer

    # ---- writing -----------------------------------------------------------------------------------

    def append(self, event: Mapping[str, Any]) -> AuditEntry:
        """Record ``event`` (see :func:`sanitize_event`); returns once it is on disk.

        If a checkpoint falls due and the signer refuses (a rotated-out or revoked key, a KMS error),
        the entry is still made durable and then the signer's error is raised: the caller learns that
        the log is no longer being signed (fail closed) and must not append the entry again.
        """
        entry, target, checkpoint_error = self._write_entry(event)
        return AuditTicket(self, entry, target, checkpoint_error).wait()

    def append_deferred(self, event: Mapping[str, Any]) -> AuditTicket:
        """Append ``event``'s frame now and return at once; the ticket's wait returns once it is on disk.

        The frame is buffered; the flusher thread writes it with every frame appended meanwhile in one
        system call and starts a sync right away (sharing it with all of them), so
        a caller that has other work to do before it needs the guarantee does that work while the disk
        syncs. Until the ticket is waited for, nothing may be acknowledged on the strength of the entry.
        """
        entry, target, checkpoint_error = self._write_entry(event)
        self._request_flush()
        return AuditTicket(self, entry, target, checkpoint_error)

    async def append_async(self, event: Mapping[str, Any]) -> AuditEntry:
        """:meth:`append` for an event loop: the frame is appended to a buffer on the calling thread (no
        system call) and the wait for durability is a future the flusher thread resolves once it has
        written and synced it, so callers never hold a thread while a write or sync is in progress.
        Concurrent callers share syncs (group commit) exactly as with :meth:`append`."""
        return await self.append_deferred(event).wait_async()

    def _write_entry(self, event: Mapping[str, Any]) -> tuple[AuditEntry, int, MAIFError | None]:
        """Frame and write one entry (not yet synced): the entry, the offset to sync to, and a signer
        error from a checkpoint that fell due (raised by the caller once the entry is durable)."""
        fields = sanitize_event(event, self._clock)
        checkpoint_error: MAIFError | None = None
        with self._lock:
            self._require_writable()
            index = len(self._entry_offsets)
            if index >= limits.audit_log_entries_max:
                raise LimitExceededError(
                    "audit log entries", index + 1, limits.audit_log_entries_max, hint="start a new audit log"
                )
            entry = AuditEntry(index=index, prev_hash=self._last_hash, **fields)
            record = _ENCODER.encode(entry)
            if len(record) > limits.audit_record_bytes_max:
                raise LimitExceededError("audit record", len(record), limits.audit_record_bytes_max)
            offset = self._write_frame(record)
            leaf = merkle.hash_leaf(record)
            self._leaves += leaf
            self._entry_offsets.append(offset)
            self._accumulator.push(leaf)
            self._last_hash = leaf
            if self._checkpoint_due():
                try:
                    self._write_checkpoint()
                except DurabilityError:
                    raise
                except MAIFError as error:
                    checkpoint_error = error
            return entry, self._written_offset, checkpoint_error

    def checkpoint(self) -> SignedCheckpoint:
        """Sign and durably record a checkpoint over every entry so far (reuses one if none were added)."""
        with self._lock:
            self._require_writable()
            latest = self._last_checkpoint
            if latest is None or latest.tree_size != len(self._entry_offsets):
                latest = self._write_checkpoint()
            target = self._written_offset
        self._sync_to(target)
        return latest

    def close(self) -> None:
        """Sign a final checkpoint if entries are unsigned, sync, and release the file."""
        with self._lock:
            if self._closed:
                return
        try:
            if self._failure is None:
                if self._unsigned_entries() > 0:
                    self.checkpoint()
                else:  # a checkpoint that fell due with the last append may still be buffered
                    with self._lock:
                        target = self._written_offset
                    self._sync_to(target)
        finally:
            with self._sync_condition:
                self._stopping = True
                flusher = self._flusher
                self._sync_condition.notify_all()
            if flusher is not None:
                flusher.join()
            with self._sync_condition:
                while self._syncing:  # let an appender's sync finish before the descriptor goes
                    self._sync_condition.wait()
                self._settle_waiters(StoreClosedError(f"audit log {self._path} closed before the sync"))
            with self._lock:
                self._closed = True
                os.close(self._descriptor)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _unsigned_entries(self) -> int:
        with self._lock:
            signed = 0 if self._last_checkpoint is None else self._last_checkpoint.tree_size
            return len(self._entry_offsets) - signed

    def _require_writable(self) -> None:
        if self._closed:
            raise StoreClosedError(f"audit log {self._path} is closed")
        if self._failure is not None:
            raise DurabilityError(
                f"audit log {self._path} refuses writes after a failed write or sync: {self._failure.message}"
            )

    def _checkpoint_due(self) -> bool:
        signed = 0 if self._last_checkpoint is None else self._last_checkpoint.tree_size
        unsigned = len(self._entry_offsets) - signed
        if unsigned >= self._checkpoint_every_entries:
            return True
        return unsigned > 0 and self._clock() - self._last_checkpoint_clock >= self._checkpoint_every_s

    def _write_checkpoint(self) -> SignedCheckpoint:
        """Caller holds ``self._lock``."""
        now = self._clock()
        previous = self._last_checkpoint
        timestamp = now if previous is None else max(now, previous.timestamp)
        tree_size, root = len(self._entry_offsets), self._accumulator.root()
        key_id = self._signer.key_id
        signature = self._signer.sign(checkpoint_payload(self._log_id, tree_size, root, timestamp, key_id))
        checkpoint = SignedCheckpoint(self._log_id, tree_size, root, timestamp, key_id, signature)
        self._write_frame(_ENCODER.encode(checkpoint))
        self._last_checkpoint = checkpoint
        self._last_checkpoint_clock = now
        return checkpoint

    def _write_frame(self, record: bytes) -> int:
        """Append one frame (caller holds ``self._lock``); returns its offset. Not yet written: the next
        sync writes it (with every frame appended before it, in one system call) before it syncs."""
        offset = self._written_offset
        self._unwritten += _frame(record)
        self._written_offset = offset + FRAME_HEAD_BYTES + len(record)
        if len(self._unwritten) >= limits.audit_write_buffer_bytes_max:
            self._write_unwritten()
        return offset

    def _write_unwritten(self) -> None:
        """Write the buffered frames to the file (caller holds ``self._lock``). A failed write fails the
        log for good, as a failed sync does: nothing buffered can become durable any more."""
        if not self._unwritten:
            return
        if self._failure is not None:
            raise self._failure
        data, self._unwritten = self._unwritten, bytearray()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._descriptor, view) :]
        except OSError as error:
            self._failure = DurabilityError(f"write failed: {error.strerror}; the log stops taking writes")
            raise self._failure from error
        finally:
            view.release()

    def _sync_to(self, target: int) -> None:
        """Group commit: one appender syncs for everyone whose frames were written before it began."""
        with self._sync_condition:
            while True:
                if self._synced_offset >= target:
                    return
                if self._failure is not None:
                    self._settle_waiters(self._failure)
                    raise self._failure
                if not self._syncing:
                    self._syncing = True
                    break
                self._sync_condition.wait()
        covered = self._synced_offset
        try:
            with self._lock:
                self._write_unwritten()
                covered = self._written_offset
            os.fdatasync(self._descriptor)
        except OSError as error:
            self._failure = DurabilityError(
                f"fdatasync failed: {error.strerror}; the log stops taking writes"
            )
            raise self._failure from error
        finally:
            with self._sync_condition:
                self._syncing = False
                if self._failure is None:
                    self._synced_offset = max(self._synced_offset, covered)
                self._settle_waiters(self._failure)
                self._sync_condition.notify_all()

    def _settle_waiters(self, failure: MAIFError | None) -> None:
        """Wake the async waiters the last sync covered, or all of them with ``failure`` (caller holds
        ``self._sync_condition``)."""
        if failure is None:
            synced = self._synced_offset
            ready = [waiter for waiter in self._async_waiters if waiter[0] <= synced]
            self._async_waiters = [waiter for waiter in self._async_waiters if waiter[0] > synced]
        else:
            ready, self._async_waiters = self._async_waiters, []
        for _, future in ready:
            with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody is waiting
                future.get_loop().call_soon_threadsafe(_settle_future, future, failure)

    async def _wait_synced_async(self, target: int) -> None:
        """Wait, without holding a thread, until the flusher has synced up to ``target``."""
        with self._sync_condition:
            if self._synced_offset >= target:
                return
            if self._failure is not None:
                raise self._failure
            if len(self._async_waiters) >= limits.audit_sync_waiters_max:
                raise LimitExceededError(
                    "audit appends waiting for a sync", len(self._async_waiters) + 1,
                    limits.audit_sync_waiters_max,
                )
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._async_waiters.append((target, future))
        self._request_flush()
        await future

    def _request_flush(self) -> None:
        """Ask the flusher thread for a sync of everything written so far (starting it on first use)."""
        with self._sync_condition:
            if self._stopping:
                return  # close() syncs every written frame itself
            if self._flush_wanted and self._flusher is not None:
                # Asked for and not yet taken: the flusher reads the written offset only after it takes
                # the request, so that sync covers this caller's frame too; it was woken when asked.
                return
            self._flush_wanted = True
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name=f"maif-audit-flush-{self._path.name}", daemon=True
                )
                self._flusher.start()
            self._sync_condition.notify_all()

    def _flush_loop(self) -> None:
        """Sync while frames keep arriving: each sync covers every frame written before it began."""
        while True:
            with self._sync_condition:
                while not self._flush_wanted and not self._stopping:
                    self._sync_condition.wait()
                if not self._flush_wanted:
                    return
                self._flush_wanted = False
            with self._lock:
                target = self._written_offset
            try:
                self._sync_to(target)
            except MAIFError:
                return  # the failure is the log's now; every waiter has been told

    # ---- reading and proofs ------------------------------------------------------------------------

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[AuditEntry]:
        """The entries with ``start <= index < stop`` (read back from disk and re-checked)."""
        with self._lock:
            size = len(self._entry_offsets)
            stop = size if stop is None else min(stop, size)
            start = max(start, 0)
            if start >= stop:
                return iter(())
            offsets = self._entry_offsets[start:stop]
            leaves = bytes(self._leaves[start * 32 : stop * 32])
            if self._failure is None:
                self._write_unwritten()  # read back from the file: what is only buffered is not there
            end = self._written_offset - len(self._unwritten)
        return self._read_entries(offsets, leaves, end)

    def _read_entries(self, offsets: array[int], leaves: bytes, end: int) -> Iterator[AuditEntry]:
        with open(self._path, "rb") as handle:
            reader = _FrameReader(handle, end, offsets[0])
            for position, offset in enumerate(offsets):
                if reader.offset != offset:
                    reader = _FrameReader(handle, end, offset)
                try:
                    record = reader.next_record()
                except _Damage as damage:
                    raise IntegrityError(
                        f"audit log {self._path}: {damage.message} at offset {offset}"
                    ) from None
                if record is None or merkle.hash_leaf(record) != leaves[position * 32 : position * 32 + 32]:
                    raise IntegrityError(f"audit log {self._path} changed on disk at offset {offset}")
                entry = _RECORD_DECODER.decode(record)
                assert isinstance(entry, AuditEntry)
                yield entry

    def root(self, tree_size: int | None = None) -> bytes:
        """The Merkle root over the first ``tree_size`` entries (default: all)."""
        leaves = self._leaf_snapshot(tree_size)
        return merkle.root(leaves)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of the first ``tree_size`` entries."""
        leaves = self._leaf_snapshot(tree_size)
        if not 0 <= index < len(leaves):
            raise IntegrityError(f"no entry {index} in a tree of {len(leaves)} entries")
        return merkle.inclusion_proof(leaves, index)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 proof that the first ``old_size`` entries are a prefix of the first ``new_size``."""
        leaves = self._leaf_snapshot(new_size)
        if not 0 <= old_size <= len(leaves):
            raise IntegrityError(f"old size {old_size} outside a tree of {len(leaves)} entries")
        return merkle.consistency_proof(leaves, old_size)

    def _leaf_snapshot(self, tree_size: int | None) -> _LeafList:
        with self._lock:
            size = len(self._entry_offsets)
            if tree_size is None:
                tree_size = size
            if not 0 <= tree_size <= size:
                raise IntegrityError(f"tree size {tree_size} outside a log of {size} entries")
            return _LeafList(bytes(self._leaves[: tree_size * 32]))


def _settle_future(future: asyncio.Future[None], failure: MAIFError | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)


class AuditTicket:
    """An entry whose frame is written, not necessarily yet on disk (:meth:`AuditLog.append_deferred`).

    :meth:`wait` and :meth:`wait_async` return the entry once it is durable; they raise the log's
    :class:`~maif.errors.DurabilityError` when the sync failed, and then (once the entry is durable) a
    signer error from a checkpoint that fell due with this entry, as :meth:`AuditLog.append` does.
    """

    __slots__ = ("_log", "_target", "checkpoint_error", "entry")

    def __init__(
        self, log: AuditLog, entry: AuditEntry, target: int, checkpoint_error: MAIFError | None
    ) -> None:
        self._log = log
        self._target = target
        self.entry = entry
        self.checkpoint_error = checkpoint_error

    @property
    def log(self) -> AuditLog:
        return self._log

    @property
    def target(self) -> int:
        """The log offset up to which the file must be synced for this entry to be durable."""
        return self._target

    @property
    def durable(self) -> bool:
        """True once a sync has covered this entry (it never becomes false again)."""
        return self._log._synced_offset >= self._target

    def wait(self) -> AuditEntry:
        self._log._sync_to(self._target)
        return self._checked()

    async def wait_async(self) -> AuditEntry:
        await self._log._wait_synced_async(self._target)
        return self._checked()

    def _checked(self) -> AuditEntry:
        if self.checkpoint_error is not None:
            raise self.checkpoint_error
        return self.entry


class AuditBarrier:
    """The audit entries one response depends on: :meth:`wait` returns once all are on disk.

    Holds the latest ticket per log (a later sync point covers every earlier frame of that log), so it
    stays as small as the number of logs written to, however many decisions the request made.
    """

    def __init__(self) -> None:
        self._tickets: dict[int, AuditTicket] = {}

    def add(self, ticket: AuditTicket) -> None:
        held = self._tickets.get(id(ticket.log))
        if held is None or held.target < ticket.target:
            self._tickets[id(ticket.log)] = ticket

    @property
    def pending(self) -> int:
        return len(self._tickets)

    async def wait(self) -> None:
        while self._tickets:
            _, ticket = self._tickets.popitem()
            await ticket.wait_async()


_BARRIER: contextvars.ContextVar[AuditBarrier | None] = contextvars.ContextVar(
    "maif_audit_barrier", default=None
)


def current_audit_barrier() -> AuditBarrier | None:
    """The barrier of the request being served, if the caller opened one (:func:`audit_barrier`)."""
    return _BARRIER.get()


def audit_barrier() -> _BarrierScope:
    """Within this block, asynchronous gate decisions do not wait for their audit entries' sync: they
    add them to the barrier, and the caller MUST ``await barrier.wait()`` before it tells anyone the
    outcome (the HTTP service does so before sending a response's first byte)."""
    return _BarrierScope()


class _BarrierScope:
    """:func:`audit_barrier`'s context manager (a class: it runs once per HTTP request, and a generator
    context manager costs several times as much, docs/adr/0089)."""

    __slots__ = ("_token",)

    def __enter__(self) -> AuditBarrier:
        barrier = AuditBarrier()
        self._token = _BARRIER.set(barrier)
        return barrier

    def __exit__(self, *exc_info: object) -> None:
        _BARRIER.reset(self._token)


class _LeafList(Sequence[bytes]):
    """A read-only view of concatenated 32-byte leaf hashes as a sequence (cheap slicing)."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)

    def __len__(self) -> int:
        return len(self._data) // 32

    @overload
    def __getitem__(self, position: int) -> bytes: ...
    @overload
    def __getitem__(self, position: slice) -> _LeafList: ...
    def __getitem__(self, position: int | slice) -> bytes | _LeafList:
        if isinstance(position, slice):
            start, stop, step = position.indices(len(self))
            assert step == 1
            return _LeafList(self._data[start * 32 : max(start, stop) * 32])
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(position)
        return bytes(self._data[position * 32 : position * 32 + 32])

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self._data), 32):
            yield bytes(self._data[start : start + 32])


def _require_signer(signer: Signer) -> None:
    if key_id_of(signer.public_key) != signer.key_id:
        raise CryptoError("the signer's key_id is not key_id_of(its public key); verifiers could not find it")


def _create(path: Path) -> None:
    """Write a new log's header atomically (temporary file, fsync, rename, fsync the directory)."""
    fields = _HEADER_FIELDS.pack(_MAGIC, _VERSION, 0, bytes(4), os.urandom(16))
    header = fields + blake3.blake3(fields).digest()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(descriptor, header)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if path.exists():  # another opener won the race; keep its log
            temporary.unlink()
            return
        os.rename(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise StorageError(f"cannot create audit log {path}: {error.strerror}") from error


# ---- offline verification ---------------------------------------------------------------------

TrustedKey = Ed25519PublicKey | KeyInfo


def _trust_table(trusted_keys: Sequence[TrustedKey]) -> dict[bytes, tuple[Ed25519PublicKey, KeyInfo | None]]:
    table: dict[bytes, tuple[Ed25519PublicKey, KeyInfo | None]] = {}
    for key in trusted_keys:
        if isinstance(key, KeyInfo):
            table[key_id_of(key.public_key)] = (key.public_key_object(), key)
        elif isinstance(key, Ed25519PublicKey):
            table[key_id_of(raw_public_key(key))] = (key, None)
        else:
            raise CryptoError(
                f"a trusted key must be an Ed25519PublicKey or a KeyInfo, not {type(key).__name__}"
            )
    return table


def verify_checkpoint(checkpoint: SignedCheckpoint, trusted_keys: Sequence[TrustedKey]) -> None:
    """Raise :class:`SignatureError` unless ``checkpoint`` is signed by one of ``trusted_keys``.

    A :class:`KeyInfo` trusted key also bounds time: the checkpoint must fall inside its validity window
    and before its revocation.
    """
    _verify_signature(checkpoint, _trust_table(trusted_keys))


def _verify_signature(
    checkpoint: SignedCheckpoint, table: Mapping[bytes, tuple[Ed25519PublicKey, KeyInfo | None]]
) -> None:
    found = table.get(checkpoint.key_id)
    if found is None:
        raise SignatureError(f"checkpoint signed by key {checkpoint.key_id.hex()}, which is not trusted")
    public_key, info = found
    if info is not None and not info.valid_at(checkpoint.timestamp):
        raise SignatureError(
            f"checkpoint dated {checkpoint.timestamp:.3f} is outside the validity of key "
            f"{checkpoint.key_id.hex()} (expired, rotated out or revoked)"
        )
    try:
        public_key.verify(checkpoint.signature, checkpoint.signed_payload())
    except InvalidSignature as error:
        raise SignatureError(
            f"checkpoint signature does not verify under key {checkpoint.key_id.hex()}"
        ) from error


def verify_audit_inclusion(
    entry: AuditEntry,
    proof: Sequence[bytes],
    checkpoint: SignedCheckpoint,
    *,
    trusted_keys: Sequence[TrustedKey] | None = None,
) -> None:
    """Raise unless ``proof`` shows ``entry`` is in the tree ``checkpoint`` signs.

    With ``trusted_keys`` the checkpoint's signature is checked too; without, the caller must already
    have called :func:`verify_checkpoint` on it.
    """
    if trusted_keys is not None:
        verify_checkpoint(checkpoint, trusted_keys)
    merkle.verify_inclusion(entry.hash, entry.index, checkpoint.tree_size, proof, checkpoint.root)


def verify_audit_consistency(
    old: SignedCheckpoint,
    new: SignedCheckpoint,
    proof: Sequence[bytes],
    trusted_keys: Sequence[TrustedKey],
) -> None:
    """Raise unless both checkpoints are trusted and ``proof`` shows ``new``'s log extends ``old``'s."""
    table = _trust_table(trusted_keys)
    _verify_signature(old, table)
    _verify_signature(new, table)
    if old.log_id != new.log_id:
        raise IntegrityError("the two checkpoints belong to different logs")
    if new.tree_size < old.tree_size:
        raise IntegrityError(f"log rolled back: {old.tree_size} entries were signed, now {new.tree_size}")
    if new.timestamp < old.timestamp:
        raise IntegrityError("the newer checkpoint is dated before the older one")
    merkle.verify_consistency(old.tree_size, new.tree_size, old.root, new.root, proof)


def verify_audit_log(
    path: str | os.PathLike[str],
    trusted_keys: Sequence[TrustedKey],
    *,
    witness: SignedCheckpoint | None = None,
    allow_unsigned_tail: bool = False,
) -> AuditVerificationReport:
    """Check every frame, chain link, Merkle root and checkpoint signature of the log at ``path``.

    Needs only the trusted public keys (never keys from the file). Raises a located
    :class:`~maif.errors.IntegrityError` (``block_index`` = first bad entry), :class:`SignatureError`,
    or :class:`FormatError` on the first problem; returns a report when everything holds.

    Entries after the last checkpoint are chained but not signed by anyone, so by default they are
    refused (:class:`SignatureError` naming the first one). A live log always has such a tail between
    checkpoints; ``allow_unsigned_tail=True`` accepts it and reports it as ``unsigned_tail_entries``.
    A log in which no entry at all is covered by a verified checkpoint (cut to its header, or rewritten
    without the key) proves nothing and is always refused, with or without ``allow_unsigned_tail``.

    ``witness`` is a checkpoint of this log kept from earlier (for example by an auditor): the log must
    still hold those entries unchanged, which catches truncation and rewritten history that the file
    alone cannot reveal.
    """
    log_path = Path(path)
    table = _trust_table(trusted_keys)
    if not table:
        raise CryptoError("verifying an audit log needs at least one trusted public key")
    if witness is not None:
        _verify_signature(witness, table)
    signing_keys: list[bytes] = []
    replay = _replay_verified(log_path, table, witness, signing_keys)
    signed = 0 if replay.last_checkpoint is None else replay.last_checkpoint.tree_size
    if signed == 0:
        raise _nothing_signed_error(str(log_path), replay.size)
    if replay.size > signed and not allow_unsigned_tail:
        raise SignatureError(
            f"audit log {log_path}: the last {replay.size - signed} entries (from entry {signed}) are "
            "chained but not covered by a signed checkpoint",
            block_index=signed,
            hint="the writer signs them at its next checkpoint or on close; allow_unsigned_tail accepts them",
        )
    return AuditVerificationReport(
        path=str(log_path),
        log_id=replay.log_id,
        entries=replay.size,
        checkpoints=replay.checkpoints,
        signed_entries=signed,
        unsigned_tail_entries=replay.size - signed,
        root=replay.accumulator.root(),
        last_checkpoint=replay.last_checkpoint,
        signing_key_ids=signing_keys,
        torn_tail_bytes=replay.torn_tail_bytes,
    )


def _nothing_signed_error(where: str, entries: int) -> SignatureError:
    """The refusal of a log or chain whose entries no verified checkpoint covers: it proves nothing."""
    return SignatureError(
        f"audit log {where}: no entry is covered by a signed checkpoint ({entries} entries, all unsigned "
        "or none at all): nothing in it is proven",
        block_index=0,
        hint="a log cut back to its header or rewritten without the signing key looks like this; "
        "allow_unsigned_tail only accepts unsigned entries after a verified checkpoint",
    )


def _replay_verified(
    log_path: Path,
    table: Mapping[bytes, tuple[Ed25519PublicKey, KeyInfo | None]],
    witness: SignedCheckpoint | None,
    signing_keys: list[bytes],
) -> _Replay:
    """Replay the whole log checking checkpoint signatures (and the witness); collects signing key ids."""

    def check_checkpoint(checkpoint: SignedCheckpoint) -> None:
        _verify_signature(checkpoint, table)
        if checkpoint.key_id not in signing_keys:
            signing_keys.append(checkpoint.key_id)

    try:
        with open(log_path, "rb") as handle:
            replay = _Replay(
                log_path, handle, os.fstat(handle.fileno()).st_size, on_checkpoint=check_checkpoint
            )
            if witness is not None and witness.log_id != replay.log_id:
                raise IntegrityError(
                    f"audit log {log_path} has another log id than the witness checkpoint: replaced",
                    block_index=0,
                )
            replay.witness = witness
            replay.run()
    except OSError as error:
        raise StorageError(f"cannot read audit log {log_path}: {error.strerror}") from error
    if witness is not None and replay.size < witness.tree_size:
        raise IntegrityError(
            f"audit log {log_path} no longer holds the {witness.tree_size} entries the witness checkpoint "
            f"signed (it has {replay.size}): truncated",
            block_index=replay.size,
        )
    return replay


def read_audit_log(path: str | os.PathLike[str]) -> Iterator[AuditEntry | SignedCheckpoint]:
    """Every record of the log in file order, with frames, chain and roots checked (not signatures)."""
    log_path = Path(path)
    try:
        handle = open(log_path, "rb")  # noqa: SIM115 - closed when the generator finishes
    except OSError as error:
        raise StorageError(f"cannot read audit log {log_path}: {error.strerror}") from error
    with handle:
        yield from _Replay(log_path, handle, os.fstat(handle.fileno()).st_size).records()


def decode_checkpoint(data: bytes) -> SignedCheckpoint:
    """A checkpoint from its MessagePack bytes (as :func:`encode_checkpoint` writes it, e.g. to a witness)."""
    if len(data) > limits.audit_record_bytes_max:
        raise LimitExceededError("checkpoint", len(data), limits.audit_record_bytes_max)
    try:
        return _CHECKPOINT_DECODER.decode(data)
    except msgspec.DecodeError as error:
        raise FormatError(f"not a signed audit checkpoint: {error}") from error


def encode_checkpoint(checkpoint: SignedCheckpoint) -> bytes:
    return _ENCODER.encode(checkpoint)


__all__ = [
    "AuditBarrier",
    "AuditEntry",
    "AuditLog",
    "AuditTicket",
    "AuditVerificationReport",
    "SignedCheckpoint",
    "audit_barrier",
    "checkpoint_payload",
    "current_audit_barrier",
    "decode_checkpoint",
    "encode_checkpoint",
    "read_audit_log",
    "sanitize_event",
    "verify_audit_consistency",
    "verify_audit_inclusion",
    "verify_audit_log",
    "verify_checkpoint",
]
