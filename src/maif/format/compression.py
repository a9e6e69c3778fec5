"""zstd payload compression, kept only when it pays.

A payload at or above the container's ``compression_threshold`` is compressed; the compressed form is
kept only if it is at most 7/8 of the original (saves at least 12.5%), so incompressible data is stored
raw and stays readable zero-copy. Large payloads are first probed on a sample so that incompressible
media (images, video, encrypted data) cost one small trial instead of a full compression pass.
Decompression treats the frame as hostile (docs/format/SPEC.md section 4.2). The stored payload must be
exactly one zstd frame: no second frame, no skippable frame, no byte after it. The frame's window must be
at most ``limits.block_zstd_window_bytes_max`` (what a decoder allocates), and its output must be exactly
the declared plaintext length. Output is produced in steps: each step feeds the decoder only as many input
bytes as can expand to ``limits.decompression_buffer_bytes_max`` (a zstd block regenerates at most
128 KiB from at least 4 stored bytes), so a 33 KB frame that expands to 1 GiB is streamed in bounded
pieces, and output beyond the declared length is refused the moment it appears.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import Final

import zstandard

from maif import limits
from maif.errors import FormatError, LimitExceededError

COMPRESSION_LEVEL: Final = 3
KEEP_RATIO_NUMERATOR: Final = 7
KEEP_RATIO_DENOMINATOR: Final = 8
PROBE_THRESHOLD_BYTES: Final = 1 << 20
PROBE_SAMPLE_BYTES: Final = 128 << 10
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_BLOCK_REGENERATED_BYTES_MAX: Final = zstandard.BLOCKSIZE_MAX  # 128 KiB: zstd's block size bound
_BLOCK_STORED_BYTES_MIN: Final = 4  # a 3-byte block header and 1 byte (an RLE block); empty blocks add 0
# Input bytes fed per step: the blocks completed in one step (at most one begun earlier, plus one per 4
# new bytes) regenerate at most the decompression buffer.
_STEP_INPUT_BYTES: Final = _BLOCK_STORED_BYTES_MIN * (
    limits.decompression_buffer_bytes_max // _BLOCK_REGENERATED_BYTES_MAX - 1
)
_STEP_OUTPUT_CHUNK_BYTES: Final = 1 << 20

_compressor: zstandard.ZstdCompressor | None = None
_local = threading.local()
_large_compressor: zstandard.ZstdCompressor | None = None
_local = threading.local()


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


def iter_decompressed(frame: bytes | memoryview, plaintext_length: int) -> Iterator[bytes]:
    """The payload in a zstd ``frame`` in pieces of at most ``limits.decompression_buffer_bytes_max``
    bytes; exactly ``plaintext_length`` bytes in all, or FormatError (LimitExceededError for a window or
    length above its bound). Refusals found at the end (short output, bytes after the frame) come after
    the last piece: a consumer that wrote the pieces somewhere must discard them on error."""
    declared = _check_frame_header(frame, plaintext_length)
    if declared and plaintext_length <= limits.decompression_buffer_bytes_max:
        yield _decompress_declared(frame, plaintext_length)
    else:
        yield from _decompress_in_steps(frame, plaintext_length)


def decompress_exact(frame: bytes | memoryview, plaintext_length: int) -> bytes:
    """The payload in a zstd ``frame``: exactly ``plaintext_length`` bytes, or FormatError.

    Memory grows with the output actually produced, never with what a header declares.
    """
    if _check_frame_header(frame, plaintext_length):
        return _decompress_declared(frame, plaintext_length)
    output = io.BytesIO()
    for piece in _decompress_in_steps(frame, plaintext_length):
        output.write(piece)
    return output.getvalue()  # BytesIO hands over its buffer without a copy


def _decompress_declared(frame: bytes | memoryview, plaintext_length: int) -> bytes:
    """One call into zstd for a frame that declares ``plaintext_length`` bytes: zstd allocates exactly that,
    and itself refuses another output size or any byte after the frame. (It does not check trailing bytes
    for a frame without a declared size, which is why those go through :func:`_decompress_in_steps`.)"""
    try:
        payload = _thread_decompressor().decompress(
            frame, max_output_size=plaintext_length, read_across_frames=False, allow_extra_data=False
        )
    except zstandard.ZstdError as error:
        raise FormatError(f"compressed payload is not exactly one valid zstd frame: {error}") from error
    if len(payload) != plaintext_length:
        raise FormatError(
            f"compressed payload decompressed to {len(payload)} bytes, header says {plaintext_length}"
        )
    return payload


def _thread_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor for one-shot calls (a context must not be shared between threads, and
    making one per call costs more than decompressing a small payload)."""
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor(max_window_size=limits.block_zstd_window_bytes_max)
        _local.decompressor = decompressor
    return decompressor


def _decompress_in_steps(frame: bytes | memoryview, plaintext_length: int) -> Iterator[bytes]:
    # One decompressor per read: a decompressor's context is not shared between threads or streams.
    decompressor = zstandard.ZstdDecompressor(max_window_size=limits.block_zstd_window_bytes_max)
    decoder = decompressor.decompressobj(write_size=_STEP_OUTPUT_CHUNK_BYTES, read_across_frames=False)
    view = memoryview(frame).cast("B")
    position = produced = 0
    while not decoder.eof:
        if position == len(view):
            raise FormatError("compressed payload ends inside its zstd frame")
        step = view[position : position + _STEP_INPUT_BYTES]
        position += len(step)
        try:
            piece = decoder.decompress(step)
        except zstandard.ZstdError as error:
            raise FormatError(f"compressed payload does not decompress: {error}") from error
        produced += len(piece)
        if produced > plaintext_length:  # the read's budget: refused before the excess is kept
            raise FormatError(
                f"compressed payload decompresses to more than its header's {plaintext_length} bytes"
            )
        if piece:
            yield piece
    if decoder.unused_data or position != len(view):
        raise FormatError(
            "compressed payload is not exactly one valid zstd frame: bytes follow the frame "
            "(a second frame, a skippable frame or trailing data)"
        )
    if produced != plaintext_length:
        raise FormatError(
            f"compressed payload decompressed to {produced} bytes, header says {plaintext_length}"
        )


def _check_frame_header(frame: bytes | memoryview, plaintext_length: int) -> bool:
    """Checks that need no decoding (length, magic, window, dictionary, declared size); whether the frame
    declares its content size (it then equals ``plaintext_length``)."""
    if plaintext_length == 0:  # zstd reads a zero output bound as "unbounded"; SPEC: invalid
        raise FormatError("a compressed payload must not be empty (COMPRESSED with payload length 0)")
    if plaintext_length > limits.decompressed_read_bytes_max:
        raise LimitExceededError(
            "decompressed payload size", plaintext_length, limits.decompressed_read_bytes_max
        )
    if bytes(frame[: len(ZSTD_MAGIC)]) != ZSTD_MAGIC:
        raise FormatError("compressed payload is not a zstd frame (it must start with the zstd magic)")
    try:
        parameters = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as error:
        raise FormatError(f"compressed payload has a malformed zstd frame header: {error}") from error
    if parameters.window_size > limits.block_zstd_window_bytes_max:
        raise LimitExceededError(
            "zstd window size of a compressed payload",
            parameters.window_size,
            limits.block_zstd_window_bytes_max,
        )
    if parameters.dict_id:
        raise FormatError("compressed payload needs a zstd dictionary; MAIF frames use none")
    declared: int = parameters.content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        return False
    if declared != plaintext_length:
        raise FormatError(f"zstd frame declares {declared} bytes, the block header says {plaintext_length}")
    return True


__all__ = ["ZSTD_MAGIC", "compress_if_pays", "decompress_exact", "iter_decompressed"]
