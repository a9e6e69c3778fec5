"""The .maif container writer: append-only, streaming, one signed version per commit.

Records go straight to disk; the writer keeps only the index of the version being written (40 bytes per
new block) and an O(log n) Merkle frontier, so memory stays flat whatever the payload volume. A commit
writes the index, the signed manifest and the trailer, then fdatasyncs (docs/format/SPEC.md).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import blake3

from maif import limits
from maif.errors import (
    BackendError,
    CryptoError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    SignatureError,
)
from maif.format import aead, codec, layout, merkle, native, signing
from maif.format.block import MAIFBlock
from maif.format.compression import compress_if_pays
from maif.format.reader import ContainerReader, VersionInfo, chained_digest, io_error

try:
    import fcntl
except ImportError:  # not POSIX: no advisory lock
    fcntl = None  # type: ignore[assignment]

_WRITE_BUFFER_BYTES: Final = 1 << 20
_SMALL_RECORD_BYTES_MAX: Final = 64 << 10
_INDEX_ENTRY_PACK: Final = layout.INDEX_ENTRY.pack
_ADD_MANY_BATCH_BLOCKS: Final = 4096
_EARLY_SYNC_BYTES_MIN: Final = 8 << 20
_ADD_MANY_BATCH_BYTES: Final = 1 << 20
_blake3: Final = blake3.blake3

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


class ContainerWriter:
    """Streams blocks into a .maif file; :meth:`commit` seals them as a new signed version."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        handle: Any,
        *,
        file_header: bytes,
        end_offset: int,
        compression_threshold: int,
        data_key: bytes | None,
        key_wraps: tuple[aead.KeyWrap, ...],
        last: VersionInfo | None,
        frontier: merkle.Frontier,
        previous_digest: bytes,
        random: aead.RandomSource,
        clock_ns: Callable[[], int],
    ) -> None:
        self._path = path
        self._handle = handle
        self._file_header = file_header
        self._file_id = file_header[16:32]
        self._position = self._segment_start = self._committed_end = end_offset
        self._compression_threshold = compression_threshold
        self._data_key = data_key
        self._key_wraps = key_wraps
        self._version_number = 0 if last is None else last.number + 1
        self._previous_manifest_digest = bytes(32) if last is None else last.manifest_digest
        self._frontier = frontier
        self._block_count = frontier.size
        self._previous_digest = previous_digest
        self._index = bytearray()
        self._random = random
        self._clock_ns = clock_ns
        self._failed = False
        self._encoded_records = bytearray()
        self._closed = False

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        file_id: bytes | None = None,
        compression_threshold: int = 4096,
        recipients: Sequence[X25519PublicKey] = (),
        _random: aead.RandomSource | None = None,
        _clock_ns: Callable[[], int] | None = None,
    ) -> ContainerWriter:
        """Create a new container at ``path`` (which must not exist)."""
        random = _random or aead.system_random
        file_id = random(layout.FILE_ID_BYTES) if file_id is None else file_id
        if not isinstance(file_id, bytes) or len(file_id) != layout.FILE_ID_BYTES:
            raise FormatError(f"file id must be {layout.FILE_ID_BYTES} bytes")
        if compression_threshold < 0:
            raise FormatError("compression threshold must not be negative")
        if len(recipients) > limits.recipients_max:
            raise LimitExceededError("recipient count", len(recipients), limits.recipients_max)
        data_key = random(aead.DATA_KEY_BYTES) if recipients else None
        wraps = (
            tuple(aead.wrap_data_key(data_key, r, file_id, random) for r in recipients) if data_key else ()
        )
        header = layout.encode_file_header(file_id)
        try:
            handle = open(path, "xb", buffering=_WRITE_BUFFER_BYTES)  # noqa: SIM115 (lives with the writer)
        except OSError as error:
            raise io_error("create", path, error) from error
        try:
            _lock(handle, path)
            handle.write(header)
        except OSError as error:
            handle.close()
            raise io_error("write", path, error) from error
        except BaseException:
            handle.close()
            raise
        return cls(
            path,
            handle,
            file_header=header,
            end_offset=len(header),
            compression_threshold=compression_threshold,
            data_key=data_key,
            key_wraps=wraps,
            last=None,
            frontier=merkle.Frontier(),
            previous_digest=layout.chain_genesis(file_id),
            random=random,
            clock_ns=_clock_ns or time.time_ns,
        )

    @classmethod
    def append(
        cls,
        path: str | os.PathLike[str],
        *,
        trusted_keys: Sequence[Ed25519PublicKey],
        decryption_key: X25519PrivateKey | None = None,
        compression_threshold: int = 4096,
    ) -> ContainerWriter:
        """Open a signed container to add a version; refuses one that fails quick verification."""
        try:
            handle = open(path, "r+b", buffering=_WRITE_BUFFER_BYTES)  # noqa: SIM115 (lives with the writer)
        except OSError as error:
            raise io_error("open", path, error) from error
        try:
            _lock(handle, path)
            from maif.format.verify import verify_container  # verify imports the reader

            report = verify_container(path, trusted_keys, full=False)
            if not report.ok:
                reasons = "; ".join(problem.describe() for problem in report.problems[:5])
                raise IntegrityError(f"refusing to append to a container that does not verify: {reasons}")
            with ContainerReader.open(path, decryption_key=decryption_key) as reader:
                state = reader._append_state()
            handle.seek(state["end_offset"])
        except BaseException:
            handle.close()
            raise
        return cls(
            path,
            handle,
            compression_threshold=compression_threshold,
            random=aead.system_random,
            clock_ns=time.time_ns,
            **state,
        )

    def add(self, block: MAIFBlock, *, encrypt: bool = False) -> int:
        """Write ``block`` and return its index; it becomes part of the file at the next :meth:`commit`."""
        if self._closed or self._failed:
            self._require_open()
        index = self._block_count
        if index >= limits.container_blocks_max:
            raise LimitExceededError("block count", index + 1, limits.container_blocks_max)
        parts = self._record_parts(block, index, encrypt)
        size = len(parts[0]) + len(parts[1]) + (len(parts[2]) if len(parts) == 3 else 0)
        if size < _SMALL_RECORD_BYTES_MAX:
            # One concatenation, one hash call and one write: small blocks are dominated by call overhead.
            record = b"".join(parts)
            digest = _blake3(self._previous_digest + record).digest()
            self._write_one(record)
        else:
            digest = chained_digest(self._previous_digest, parts)
            self._write(parts)
        self._index += _INDEX_ENTRY_PACK(self._position, digest)
        self._block_count += 1
        self._position += size
        self._previous_digest = digest
        return index

    def add_many(self, blocks: Iterable[MAIFBlock], *, encrypt: bool = False) -> range:
        """Write every block of ``blocks`` in order, as :meth:`add` would, and return their indexes.

        Byte for byte what the same :meth:`add` calls write; with the compiled core (ADR 0090) the plain
        small blocks are encoded and hashed in C (their metadata by ``codec.encode_metadata``), written a
        batch at a time. Blocks are taken from the
        iterable a batch at a time, so memory stays bounded whatever its length.
        """
        self._require_open()
        first_index = self._block_count
        core = native.core()
        records = self._encoded_records
        iterator = iter(blocks)
        while batch := list(itertools.islice(iterator, _ADD_MANY_BATCH_BLOCKS)):
            if core is None or encrypt:
                for block in batch:
                    self.add(block, encrypt=encrypt)
                continue
            position = 0
            while position < len(batch):
                count, used, digest = core.encode_records(
                    batch,
                    position,
                    MAIFBlock,
                    codec.KNOWN_FOURCCS,
                    self._previous_digest,
                    self._position,
                    self._compression_threshold,
                    _SMALL_RECORD_BYTES_MAX,
                    limits.container_blocks_max - self._block_count,
                    _ADD_MANY_BATCH_BYTES,
                    _blake3,
                    records,  # the core writes each batch's records here (grown once, then reused)
                    self._index,  # the core appends one entry per block it encodes
                    codec.encode_metadata,
                )
                if count:
                    with memoryview(records) as view, view[:used] as encoded:
                        self._write_one(encoded)
                    self._block_count += count
                    self._position += used
                    self._previous_digest = digest
                    position += count
                elif position < len(batch):  # a block the core leaves to the reference path
                    self.add(batch[position])
                    position += 1
        return range(first_index, self._block_count)

    def _record_parts(self, block: MAIFBlock, index: int, encrypt: bool) -> tuple[bytes, ...]:
        metadata = codec.encode_metadata(block.metadata) if block.metadata else b""
        stored, flags = block.data, 0
        if block.data and len(block.data) >= self._compression_threshold:
            compressed = compress_if_pays(block.data)
            if compressed is not None:
                stored, flags = compressed, codec.STORAGE_COMPRESSED
        if not encrypt:
            return codec.encode_header(block, flags, len(metadata)), metadata, stored
        if self._data_key is None:
            raise CryptoError(
                "cannot encrypt: this container has no recipients, or no decryption key was given to append"
            )
        header = codec.encode_header(block, flags | codec.STORAGE_ENCRYPTED, len(metadata))
        associated = aead.block_associated_data(self._file_id, index, header)
        body = aead.encrypt_body(
            self._data_key, self._random(aead.NONCE_BYTES), metadata + stored, associated
        )
        return header, body

    def commit(self, signing_keys: Sequence[Ed25519PrivateKey]) -> VersionInfo:
        """Seal the blocks added so far as a new version: index, signed manifest, trailer, fdatasync."""
        self._require_open()
        signer_ids = _check_signing_keys(signing_keys)
        index_bytes = bytes(self._index)
        # Many record bytes: their fdatasync starts now, in a thread, while the Merkle tree is hashed;
        # the sync after the trailer still covers every byte before the version is acknowledged.
        early_sync = self._start_early_sync()
        try:
            # Leaves are hashed here in bulk rather than per add(): whole subtrees, level by level. The
            # writer's own frontier only advances once the version is on disk.
            frontier = self._frontier.copy()
            frontier.extend(merkle.leaf_hashes_of_entries(index_bytes, layout.INDEX_ENTRY.size, 8))
            assert frontier.size == self._block_count
            committed_at_ns = self._clock_ns()
            merkle_root = frontier.root()
            manifest = self._signed_manifest(
                index_bytes, merkle_root, committed_at_ns, signing_keys, signer_ids
            )
        finally:
            self._finish_early_sync(early_sync)
        index_offset = self._position
        manifest_offset = index_offset + len(index_bytes)
        trailer = layout.Trailer(
            index_offset,
            manifest_offset,
            len(manifest),
            self._version_number,
            frontier.size,
            self._segment_start,
        )
        self._write((index_bytes, manifest, layout.encode_trailer(trailer, manifest)))
        self._sync()
        self._position = manifest_offset + len(manifest) + layout.TRAILER.size
        info = VersionInfo(
            self._version_number,
            frontier.size,
            merkle_root,
            committed_at_ns,
            signer_ids,
            self._position,
            blake3.blake3(manifest).digest(),
        )
        self._frontier = frontier
        self._segment_start = self._committed_end = self._position
        self._index = bytearray()
        self._version_number += 1
        self._previous_manifest_digest = info.manifest_digest
        return info

    def _signed_manifest(
        self,
        index_bytes: bytes,
        merkle_root: bytes,
        committed_at_ns: int,
        signing_keys: Sequence[Ed25519PrivateKey],
        signer_ids: tuple[bytes, ...],
    ) -> bytes:
        """The manifest body and one Ed25519 signature per signer over the SPEC section 7 message."""
        block_count = self._block_count
        body = layout.encode_manifest_body(
            self._version_number,
            block_count,
            self._segment_start,
            merkle_root,
            blake3.blake3(index_bytes).digest(),
            self._previous_manifest_digest,
            committed_at_ns,
            self._key_wraps,
        )
        body_digest = blake3.blake3(body).digest()
        signatures = tuple(
            layout.Signature(
                kid,
                committed_at_ns,
                key.sign(
                    signing.signed_message(
                        self._file_header, block_count, merkle_root, kid, committed_at_ns, body_digest
                    )
                ),
            )
            for key, kid in zip(signing_keys, signer_ids, strict=True)
        )
        manifest = body + layout.encode_signatures(signatures)
        assert len(manifest) <= limits.manifest_bytes_max  # 16 signatures and 64 wraps take under 10 KiB
        return manifest

    def _write(self, parts: Sequence[bytes]) -> None:
        for part in parts:
            self._write_one(part)

    def _write_one(self, part: bytes | memoryview) -> None:
        try:
            self._handle.write(part)
        except OSError as error:
            self._failed = True  # the file now holds a partial record: only close() (truncation) is safe
            raise io_error("write", self._path, error) from error

    def _sync(self) -> None:
        try:
            self._handle.flush()
            os.fdatasync(self._handle.fileno())
        except OSError as error:
            # Never retry a failed sync on the same file (fsyncgate): the written pages may be lost.
            self._failed = True
            raise io_error("sync", self._path, error) from error

    def _start_early_sync(self) -> _EarlySync | None:
        if self._position - self._segment_start < _EARLY_SYNC_BYTES_MIN:
            return None  # a thread costs more than the overlap saves
        try:
            self._handle.flush()
        except OSError as error:
            self._failed = True
            raise io_error("write", self._path, error) from error
        return _EarlySync(self._handle.fileno())

    def _finish_early_sync(self, early_sync: _EarlySync | None) -> None:
        error = None if early_sync is None else early_sync.wait()
        if error is not None:
            self._failed = True  # never retried on the same file (fsyncgate), as in _sync
            raise io_error("sync", self._path, error) from error

    def _require_open(self) -> None:
        if self._closed:
            raise FormatError("the container writer is closed")
        if self._failed:
            raise BackendError("an earlier write or sync failed; close the writer and reopen the file")

    def close(self) -> None:
        """Close; blocks added since the last commit are cut off so the file ends at a complete version."""
        if self._closed:
            return
        self._closed = True
        try:
            self._handle.flush()
            if self._position != self._committed_end:
                self._handle.truncate(self._committed_end)
                os.fdatasync(self._handle.fileno())
        except OSError as error:
            raise io_error("close", self._path, error) from error
        finally:
            self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class _EarlySync:
    """``os.fdatasync`` of a file in a thread (it releases the GIL), started before the commit's own."""

    def __init__(self, descriptor: int) -> None:
        self._error: OSError | None = None
        self._thread = threading.Thread(
            target=self._run, args=(descriptor,), name="maif-early-sync", daemon=True
        )
        self._thread.start()

    def _run(self, descriptor: int) -> None:
        try:
            os.fdatasync(descriptor)
        except OSError as error:
            self._error = error

    def wait(self) -> OSError | None:
        self._thread.join()
        return self._error


def _lock(handle: Any, path: str | os.PathLike[str]) -> None:
    """One writer per file: an advisory exclusive lock (POSIX only; elsewhere the caller must ensure it)."""
    if fcntl is None:
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        raise BackendError(f"{os.fspath(path)!r} is open for writing by another writer") from error


def _check_signing_keys(signing_keys: Sequence[Ed25519PrivateKey]) -> tuple[bytes, ...]:
    if not signing_keys:
        raise SignatureError("a version needs at least one signing key")
    if len(signing_keys) > limits.manifest_signatures_max:
        raise LimitExceededError("signature count", len(signing_keys), limits.manifest_signatures_max)
    ids = tuple(signing.key_id(key.public_key()) for key in signing_keys)
    if len(set(ids)) != len(ids):
        raise SignatureError("the same signing key was given twice")
    return ids


__all__ = ["ContainerWriter"]
