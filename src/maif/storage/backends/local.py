"""The embedded, durable backends on the local filesystem: no server needed.

    data_dir/packs/          LocalChunkStore: append-only pack files + pack index (maif.storage.packs)
    data_dir/index.sqlite    LocalMetadataIndex: SQLite in WAL mode (maif.storage.index)
    data_dir/vectors/        LocalVectorIndex: faiss HNSW (float16 walk, float32 ranking), persisted on flush
                             (maif.storage.faiss_vectors; usearch generations are converted at open)
    any directory            LocalObjectStore: the cold tier as files, written atomically

Blocking file work runs in worker threads (``asyncio.to_thread``) so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from maif import limits
from maif.durable import write_atomically
from maif.errors import BackendError, BlockNotFoundError, StoreClosedError
from maif.storage.backends.base import Capabilities, ChunkStore, ObjectStore, check_object_key
from maif.storage.faiss_vectors import FaissVectorIndex
from maif.storage.index import SqliteMetadataIndex
from maif.storage.packs import ChunkLocation, CompactionResult, PackStore

ResultT = TypeVar("ResultT")

LocalMetadataIndex = SqliteMetadataIndex
LocalVectorIndex = FaissVectorIndex


class LocalChunkStore(ChunkStore):
    """:class:`ChunkStore` over a :class:`~maif.storage.packs.PackStore` directory."""

    capabilities = Capabilities(durable=True, shared_between_processes=False)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        compression_threshold: int = 4096,
        pack_bytes_max: int = limits.pack_bytes_max,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.packs = PackStore(
            directory, compression_threshold=compression_threshold, pack_bytes_max=pack_bytes_max, clock=clock
        )
        self._closed = False

    async def _run(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        if self._closed:
            raise StoreClosedError("chunk store is closed")
        try:
            return await asyncio.to_thread(function, *args)
        except OSError as error:
            raise BackendError(f"pack store {self.packs.directory} failed: {error.strerror}") from error

    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]]) -> int:
        return await self._run(self.packs.put_chunks, chunks)

    async def put_chunk_data(self, pieces: Sequence[bytes | memoryview]) -> tuple[list[bytes], int]:
        return await self._run(self.packs.put_chunk_data, pieces)

    async def get_chunk(self, digest: bytes) -> bytes:
        return await self._run(self.packs.get_chunk, digest)

    def get_chunk_nowait(self, digest: bytes) -> bytes | None:
        """The chunk read on the calling thread when it lies in a local pack (a pread, from the page
        cache in the common case), else None: the caller then uses :meth:`get_chunk`."""
        if self._closed:
            raise StoreClosedError("chunk store is closed")
        if not self.packs.is_local(digest):
            return None
        try:
            return self.packs.get_chunk(digest)
        except OSError as error:
            raise BackendError(f"pack store {self.packs.directory} failed: {error.strerror}") from error

    async def has_chunks(self, digests: Sequence[bytes]) -> set[bytes]:
        if self._closed:
            raise StoreClosedError("chunk store is closed")
        return self.packs.has(digests)

    async def flush(self) -> None:
        await self._run(self.packs.flush)

    async def scrub(self, read_data_fraction: float) -> list[str]:
        return await self._run(self.packs.scrub, read_data_fraction)

    async def compact(self, is_live: Callable[[bytes, ChunkLocation, bytes], bool],
                      garbage_fraction_min: float,
                      on_step: Callable[[str], None] | None = None) -> CompactionResult:
        """:meth:`PackStore.compact` in a worker thread."""
        return await self._run(self.packs.compact, is_live, garbage_fraction_min, on_step)

    async def reconcile(self) -> list[str]:
        """What opening the packs rebuilt (nothing lost), one line each; the engine reports it."""
        return list(self.packs.repairs)

    async def put_records(self, records: Sequence[bytes]) -> int:
        return await self._run(self.packs.put_records, records)

    async def scan_records(self) -> AsyncIterator[tuple[list[bytes], list[str]]]:
        for pack_id in await self._run(self.packs.local_record_packs):
            yield await self._run(self.packs.records_in_pack, pack_id)

    async def stats(self) -> dict[str, int | float]:
        return await self._run(self.packs.stats)

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await asyncio.to_thread(self.packs.close)
        finally:
            self._closed = True


class LocalObjectStore(ObjectStore):
    """Objects as files under a root directory; ``put`` is atomic (temporary file, fsync, rename)."""

    capabilities = Capabilities(durable=True, shared_between_processes=True)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._closed = False

    def _path(self, key: str) -> Path:
        if self._closed:
            raise StoreClosedError("object store is closed")
        return self.root / check_object_key(key)

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(_atomic_write, path, bytes(data))
        except OSError as error:
            raise BackendError(f"cannot store object {key!r}: {error.strerror}") from error

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlockNotFoundError(f"no object {key!r}") from None
        except OSError as error:
            raise BackendError(f"cannot read object {key!r}: {error.strerror}") from error

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(_read_range, path, offset, length)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlockNotFoundError(f"no object {key!r}") from None
        except OSError as error:
            raise BackendError(f"cannot read object {key!r}: {error.strerror}") from error

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def list(self, prefix: str = "") -> list[str]:
        if self._closed:
            raise StoreClosedError("object store is closed")
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and "~" not in path.name:
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    async def close(self) -> None:
        self._closed = True


def _read_range(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, mode=0o666)


__all__ = ["LocalChunkStore", "LocalMetadataIndex", "LocalObjectStore", "LocalVectorIndex"]
