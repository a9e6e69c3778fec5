"""zstd payload compression, kept only when it pays.

A payload at or above the container's ``compression_threshold`` is compressed; the compressed form is
kept only if it is at most 7/8 of the original (saves at least 12.5%), so incompressible data is stored
raw and stays readable zero-copy. Large payloads are first probed on a sample so that incompressible
media (images, video, encrypted data) cost one small trial instead of a full compression pass.
Decompression is bounded by the declared plaintext length and must produce exactly that many bytes.
"""

from __future__ import annotations

from typing import Final

import zstandard

from maif.errors import FormatError

COMPRESSION_LEVEL: Final = 3
KEEP_RATIO_NUMERATOR: Final = 7
KEEP_RATIO_DENOMINATOR: Final = 8
PROBE_THRESHOLD_BYTES: Final = 1 << 20
PROBE_SAMPLE_BYTES: Final = 128 << 10

_compressor: zstandard.ZstdCompressor | None = None
_large_compressor: zstandard.ZstdCompressor | None = None


def _pays(original_size: int, compressed_size: int) -> bool:
    return compressed_size * KEEP_RATIO_DENOMINATOR <= original_size * KEEP_RATIO_NUMERATOR


def compress_if_pays(payload: bytes) -> bytes | None:
    """The zstd frame of ``payload`` if it saves at least 12.5%, else None."""
    global _compressor, _large_compressor
    if _compressor is None:
        _compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
        _large_compressor = zstandard.ZstdCompressor(level=1, threads=-1)
    if len(payload) >= PROBE_THRESHOLD_BYTES:
        assert _large_compressor is not None
        sample = payload[:PROBE_SAMPLE_BYTES]
        if not _pays(len(sample), len(_compressor.compress(sample))):
            return None
        compressed = _large_compressor.compress(payload)
    else:
        compressed = _compressor.compress(payload)
    return compressed if _pays(len(payload), len(compressed)) else None


def decompress_exact(frame: bytes | memoryview, plaintext_length: int) -> bytes:
    """The payload in a zstd ``frame``: exactly ``plaintext_length`` bytes, or FormatError."""
    if plaintext_length == 0:  # zstandard reads a zero output bound as "unbounded"
        raise FormatError("a compressed payload must not be empty")
    try:
        payload = zstandard.ZstdDecompressor().decompress(frame, max_output_size=plaintext_length)
    except zstandard.ZstdError as error:
        raise FormatError(f"compressed payload does not decompress: {error}") from error
    if len(payload) != plaintext_length:
        raise FormatError(
            f"compressed payload decompressed to {len(payload)} bytes, header says {plaintext_length}"
        )
    return payload


__all__ = ["compress_if_pays", "decompress_exact"]
