"""Media the demo makes itself, with the standard library only: PNG images and a float32 .npy file.

PNG per ISO/IEC 15948 (signature, IHDR, one IDAT of zlib-deflated scanlines with filter type 0, IEND; each
chunk framed by its length and closed by a CRC-32 of type and data). NPY per the numpy format 1.0 (magic,
version, a little-endian u16 header length, a Python-literal header padded with spaces to a multiple of 64
bytes and ending in a newline, then the raw little-endian data).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Pixel = tuple[int, int, int]


def encode_png(width: int, height: int, pixel: Callable[[int, int], Pixel]) -> bytes:
    """An 8-bit RGB PNG of ``width`` x ``height`` whose colour at (x, y) is ``pixel(x, y)``."""
    assert 0 < width <= 4096 and 0 < height <= 4096
    scanlines = bytearray()
    for y in range(height):
        scanlines.append(0)  # filter type 0: the row is stored as is
        for x in range(width):
            scanlines.extend(pixel(x, y))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # depth 8, colour type 2 (RGB)
    return b"".join(
        (
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(bytes(scanlines), 9)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(chunk_type: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(chunk_type + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", crc)


def sunset_png(size: int = 96) -> bytes:
    """A sun setting over the sea: a vertical gradient sky, a disc, and darker water below the horizon."""
    horizon, centre, radius = size * 5 // 8, size // 2, size // 5

    def pixel(x: int, y: int) -> Pixel:
        if y >= horizon:
            return (20, 40 + 60 * (y - horizon) // size, 90)
        if (x - centre) ** 2 + (y - horizon) ** 2 <= radius * radius:
            return (250, 200, 60)
        return (255, 120 + 100 * y // horizon, 80 + 60 * y // horizon)

    return encode_png(size, size, pixel)


def interference_png(size: int = 96) -> bytes:
    """Two overlapping circular waves, the pattern of two stones dropped in a pond."""

    def pixel(x: int, y: int) -> Pixel:
        first = math.sin(math.hypot(x - size * 0.3, y - size * 0.4) / 3.0)
        second = math.sin(math.hypot(x - size * 0.7, y - size * 0.6) / 3.0)
        level = int(127.5 + 63.75 * (first + second))
        return (level // 3, level // 2 + 40, level)

    return encode_png(size, size, pixel)


def encode_float32_npy(rows: Sequence[Sequence[float]]) -> bytes:
    """A 2-D float32 array (one row per vector) in .npy format 1.0, C order."""
    width = len(rows[0]) if rows else 0
    assert all(len(row) == width for row in rows)
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({len(rows)}, {width}), }}"
    unpadded = 10 + len(header) + 1
    header += " " * (-unpadded % 64) + "\n"
    values = [value for row in rows for value in row]
    return (
        b"\x93NUMPY\x01\x00"
        + struct.pack("<H", len(header))
        + header.encode("latin-1")
        + struct.pack(f"<{len(values)}f", *values)
    )


def letter_frequencies(text: str) -> list[float]:
    """The 26 letter frequencies of ``text`` (case-folded), normalised to unit length."""
    counts = [0] * 26
    for character in text.lower():
        if "a" <= character <= "z":
            counts[ord(character) - ord("a")] += 1
    norm = math.sqrt(sum(count * count for count in counts)) or 1.0
    return [count / norm for count in counts]


__all__ = ["encode_float32_npy", "encode_png", "interference_png", "letter_frequencies", "sunset_png"]
