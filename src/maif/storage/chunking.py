"""Content-defined chunking: split a payload into chunks whose boundaries follow the content.

With fixed-size chunks one inserted byte shifts every later boundary and defeats deduplication; with
FastCDC (the ``fastcdc`` package, normalized chunking) boundaries are chosen by a rolling hash of the
bytes themselves, so an edit only changes the chunks it touches. Each chunk is addressed by its BLAKE3
digest; identical chunks in different blocks, versions or agents are stored once by the ChunkStore.

The sizes below are justified by ``benchmarks/dedup_bench.py`` (see docs/adr/0031-fastcdc-parameters.md):
16 KiB minimum, 64 KiB average, 256 KiB maximum. A payload shorter than twice the minimum cannot hold
two chunks, so it is returned whole as one chunk without running FastCDC.
"""

from __future__ import annotations

from typing import Final

import blake3
from fastcdc import fastcdc

from maif import limits
from maif.errors import ConfigError

chunk_min_bytes: Final = 16 * 1024
chunk_avg_bytes: Final = 64 * 1024
chunk_max_bytes: Final = 256 * 1024

# FastCDC's own bounds on its parameters (from the FastCDC paper as the package implements it).
_FASTCDC_MIN_BYTES_FLOOR: Final = 64
_FASTCDC_MAX_BYTES_CEILING: Final = 1 << 30

assert chunk_min_bytes < chunk_avg_bytes < chunk_max_bytes <= limits.chunk_bytes_max


def chunk_digest(data: bytes | memoryview) -> bytes:
    """The 32-byte BLAKE3 content address of one chunk."""
    return blake3.blake3(data).digest()


def split_payload(data: bytes, *, min_chunk_bytes: int | None = None) -> list[tuple[bytes, memoryview]]:
    """Split ``data`` into ``(BLAKE3 digest, chunk view)`` pairs, in payload order.

    ``min_chunk_bytes`` overrides the FastCDC minimum; the average and maximum scale with it (x4, x16),
    keeping the documented ratios. The views share ``data``'s buffer: no payload bytes are copied.
    An empty payload yields no chunks.
    """
    return [(chunk_digest(piece), piece) for piece in split_views(data, min_chunk_bytes=min_chunk_bytes)]


def split_views(data: bytes, *, min_chunk_bytes: int | None = None) -> list[memoryview]:
    """The chunks of :func:`split_payload` without their digests (for a store that computes them:
    ``ChunkStore.put_chunk_data``)."""
    min_size = chunk_min_bytes if min_chunk_bytes is None else min_chunk_bytes
    avg_size, max_size = _scaled_sizes(min_size)
    view = memoryview(data)
    if len(view) == 0:
        return []
    if len(view) < 2 * min_size:
        return [view]
    chunks = [view[chunk.offset : chunk.offset + chunk.length]
              for chunk in fastcdc(data, min_size=min_size, avg_size=avg_size, max_size=max_size, fat=False)]
    assert sum(len(piece) for piece in chunks) == len(view), "FastCDC chunks must tile the payload"
    return chunks


def _scaled_sizes(min_size: int) -> tuple[int, int]:
    if min_size == chunk_min_bytes:
        return chunk_avg_bytes, chunk_max_bytes
    if not isinstance(min_size, int) or min_size < _FASTCDC_MIN_BYTES_FLOOR:
        raise ConfigError(
            f"min_chunk_bytes must be an integer >= {_FASTCDC_MIN_BYTES_FLOOR}, got {min_size!r}"
        )
    max_size = min_size * 16
    if max_size > min(limits.chunk_bytes_max, _FASTCDC_MAX_BYTES_CEILING):
        raise ConfigError(f"min_chunk_bytes {min_size} makes chunks larger than limits.chunk_bytes_max")
    return min_size * 4, max_size


__all__ = ["chunk_avg_bytes", "chunk_digest", "chunk_max_bytes", "chunk_min_bytes", "split_payload",
           "split_views"]
