"""The service's upload spool: request bodies land on local disk, bounded, before anything is stored.

Why (docs/adr/0061): a streamed block upload used to be written to the store part by part as it
arrived, so an upload abandoned halfway (client gone, digest mismatch, limit hit) left durable parts
that no manifest names and that an append-only store cannot take back. Now the body is received into an
anonymous spool file (``O_TMPFILE``: no name, gone when closed or when the process dies), its size and
Content-Digest are checked, and only a complete, verified body is written to the store.

Bounds, all refused with a typed problem and nothing stored:

- one body: the caller's cap (``service_upload_bytes_max`` for blocks, ``service_verify_upload_bytes_max``
  for verification), checked against Content-Length before reading and against the bytes as they come;
- all bodies at once: ``service_spool_bytes_max`` reserved across concurrent uploads (503, retry later);
- the disk: a body is refused once writing it would leave less than ``service_spool_free_bytes_min``
  free on the spool's file system (507), so uploads cannot fill the disk the store's log lives on;
- memory: at most ``keep_in_memory_bytes`` plus one received chunk are held; smaller bodies never touch
  the disk.

Uploads to verify are anonymous spool files too (read through their /proc/self/fd path). Named spool
files (exports being streamed out) carry a fixed prefix and are removed when sent; :meth:`Spool.sweep`
removes what a killed process left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from maif import limits
from maif.errors import LimitExceededError
from maif.service.problems import ServiceProblem

_NAMED_PREFIX = "spool-"
_RETRY_AFTER_S = "5"


@dataclass
class Received:
    """A whole request body: in ``memory`` when it fit, else in ``file`` (read it with :meth:`read`)."""

    length: int
    sha256: bytes
    memory: bytes | None
    file: SpoolFile | None

    async def read(self, offset: int, size: int) -> bytes:
        if self.memory is not None:
            return self.memory[offset : offset + size]
        assert self.file is not None
        return await self.file.read(offset, size)


class Spool:
    """One directory of spool files with a shared byte budget (one per service process)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        budget_bytes: int = limits.service_spool_bytes_max,
        free_bytes_min: int = limits.service_spool_free_bytes_min,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.budget_bytes = budget_bytes
        self.free_bytes_min = free_bytes_min
        self.reserved_bytes = 0

    def sweep(self) -> int:
        """Remove named spool files a previous process left (killed mid-export, say); returns how many.
        Call only while no request is being served by this spool."""
        removed = 0
        for path in self.directory.glob(f"{_NAMED_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    def admit(self, declared_length: int | None, cap: int, keep_in_memory_bytes: int = 0) -> None:
        """Refuse before reading a body whose declared length exceeds ``cap``, or, when it will be
        spooled (longer than ``keep_in_memory_bytes``), the free space."""
        if declared_length is None:
            return
        if declared_length > cap:
            raise LimitExceededError("upload size", declared_length, cap)
        if declared_length > keep_in_memory_bytes:
            self._check_free(declared_length)

    @contextlib.asynccontextmanager
    async def anonymous(self) -> AsyncIterator[SpoolFile]:
        """A nameless spool file (``O_TMPFILE`` where the file system has it), released on exit."""
        handle = await asyncio.to_thread(self._anonymous_file)
        spooled = SpoolFile(self, handle)
        try:
            yield spooled
        finally:
            spooled.close()

    def _anonymous_file(self) -> BinaryIO:
        return tempfile.TemporaryFile(mode="w+b", buffering=0, dir=self.directory)

    def named_path(self, kind: str, suffix: str = ".maif") -> Path:
        """A fresh spool path whose removal the caller owns (a response streamed after the handler)."""
        return self.directory / f"{_NAMED_PREFIX}{kind}-{secrets.token_hex(12)}{suffix}"

    async def receive(
        self,
        body: AsyncIterator[bytes],
        *,
        cap: int,
        keep_in_memory_bytes: int,
        stack: contextlib.AsyncExitStack,
    ) -> Received:
        """Read ``body`` whole: in memory when it is at most ``keep_in_memory_bytes`` long, else into an
        anonymous spool file (even when empty) whose lifetime ``stack`` owns. Hashes (SHA-256) as it
        reads."""
        hasher, total = hashlib.sha256(), 0
        buffer = bytearray()
        spooled: SpoolFile | None = None
        async for chunk in body:
            total += len(chunk)
            if total > cap:
                raise LimitExceededError("upload size", total, cap)
            hasher.update(chunk)
            buffer += chunk
            if len(buffer) > keep_in_memory_bytes and len(buffer) >= limits.service_spool_write_bytes_min:
                if spooled is None:
                    spooled = await stack.enter_async_context(self.anonymous())
                await spooled.append(bytes(buffer))
                buffer.clear()
        if spooled is None and keep_in_memory_bytes > 0 and total <= keep_in_memory_bytes:
            return Received(total, hasher.digest(), bytes(buffer), None)
        if spooled is None:
            spooled = await stack.enter_async_context(self.anonymous())
        if buffer:
            await spooled.append(bytes(buffer))
        return Received(total, hasher.digest(), None, spooled)

    # ---- accounting ---------------------------------------------------------------------------------
    def _reserve(self, size: int) -> None:
        if self.reserved_bytes + size > self.budget_bytes:
            raise ServiceProblem(
                503,
                "spool-full",
                "too many uploads are in progress; retry later",
                {"Retry-After": _RETRY_AFTER_S},
            )
        self._check_free(size)
        self.reserved_bytes += size

    def _release(self, size: int) -> None:
        self.reserved_bytes -= size
        assert self.reserved_bytes >= 0

    def _check_free(self, size: int) -> None:
        figures = os.statvfs(self.directory)
        if figures.f_bavail * figures.f_frsize - size < self.free_bytes_min:
            raise ServiceProblem(
                507,
                "insufficient-storage",
                "the server has too little free disk space for this upload",
            )


class SpoolFile:
    """One spool file: appended to, read back by offset, released (budget and file) on close."""

    def __init__(self, spool: Spool, handle: BinaryIO) -> None:
        self._spool = spool
        self._handle = handle
        self.length = 0
        self._closed = False

    async def append(self, data: bytes) -> None:
        self._spool._reserve(len(data))
        self.length += len(data)  # reserved: released on close whatever happens to the write
        await asyncio.to_thread(self._write_all, data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._handle.write(view)
            assert written is not None
            view = view[written:]

    async def read(self, offset: int, size: int) -> bytes:
        return await asyncio.to_thread(os.pread, self._handle.fileno(), size, offset)

    @property
    def proc_path(self) -> Path:
        """A path that opens this very file while it is open (Linux /proc), for APIs that want a path."""
        return Path(f"/proc/self/fd/{self._handle.fileno()}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._spool._release(self.length)
        self._handle.close()


__all__ = ["Received", "Spool", "SpoolFile"]
