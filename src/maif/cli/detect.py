"""Which block type a file becomes when `maif pack` stores it: magic bytes first, then the extension.

The order, first match wins:

1. magic bytes: PNG, JPEG, GIF, WebP -> IMAG; WAV, FLAC, MP3 (ID3 tag or MPEG audio frame), Ogg -> AUDI;
   MP4/MOV (ISO base media ``ftyp``), WebM/Matroska (EBML) -> VIDE; a .npy array of float32 -> EMBD;
2. the extension (case-insensitive), for media whose magic bytes were not recognised;
3. JSON whose top level is an object with an ``@context`` key (JSON-LD) -> KGRF;
4. valid UTF-8 without NUL bytes -> TEXT (an empty file is text);
5. anything else -> ``BLOB`` (:data:`BINARY_BLOCK_TYPE`).

The result also names a media type, recorded in the block's metadata for whoever reads it later.
"""

from __future__ import annotations

import ast
import struct
from typing import NamedTuple

import msgspec

from maif import limits
from maif.format.block import MAIFBlockType

BINARY_BLOCK_TYPE = "BLOB"
"""The FourCC of a block holding bytes of no recognised kind."""


class Detection(NamedTuple):
    """A file's block type and media type."""

    block_type: MAIFBlockType | str
    media_type: str


_IMAGE, _AUDIO, _VIDEO = MAIFBlockType.IMAGE, MAIFBlockType.AUDIO, MAIFBlockType.VIDEO

_BY_EXTENSION: dict[str, Detection] = {
    ".png": Detection(_IMAGE, "image/png"),
    ".jpg": Detection(_IMAGE, "image/jpeg"),
    ".jpeg": Detection(_IMAGE, "image/jpeg"),
    ".gif": Detection(_IMAGE, "image/gif"),
    ".webp": Detection(_IMAGE, "image/webp"),
    ".wav": Detection(_AUDIO, "audio/wav"),
    ".flac": Detection(_AUDIO, "audio/flac"),
    ".mp3": Detection(_AUDIO, "audio/mpeg"),
    ".ogg": Detection(_AUDIO, "audio/ogg"),
    ".mp4": Detection(_VIDEO, "video/mp4"),
    ".webm": Detection(_VIDEO, "video/webm"),
    ".mkv": Detection(_VIDEO, "video/x-matroska"),
}

_NPY_MAGIC = b"\x93NUMPY"
_FLOAT32_DESCRIPTORS = frozenset({"<f4", "=f4", "|f4", "f4", "float32"})


def detect(data: bytes, name: str) -> Detection:
    """The block type and media type of a file with contents ``data`` and file name ``name``."""
    by_magic = _detect_by_magic(data)
    if by_magic is not None:
        return by_magic
    dot = name.rfind(".")
    if dot > 0:
        by_extension = _BY_EXTENSION.get(name[dot:].lower())
        if by_extension is not None:
            return by_extension
    if _is_json_ld(data):
        return Detection(MAIFBlockType.KNOWLEDGE_GRAPH, "application/ld+json")
    if _is_text(data):
        return Detection(MAIFBlockType.TEXT, "text/plain; charset=utf-8")
    return Detection(BINARY_BLOCK_TYPE, "application/octet-stream")


def _detect_by_magic(data: bytes) -> Detection | None:
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Detection(_IMAGE, "image/png")
    if head.startswith(b"\xff\xd8\xff"):
        return Detection(_IMAGE, "image/jpeg")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Detection(_IMAGE, "image/gif")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return Detection(_IMAGE, "image/webp")
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return Detection(_AUDIO, "audio/wav")
    if head.startswith(b"fLaC"):
        return Detection(_AUDIO, "audio/flac")
    if head.startswith(b"ID3") or _is_mpeg_audio_frame(head):
        return Detection(_AUDIO, "audio/mpeg")
    if head.startswith(b"OggS"):
        return Detection(_AUDIO, "audio/ogg")
    if head[4:8] == b"ftyp":
        return Detection(_VIDEO, "video/mp4")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        # EBML: WebM declares its doctype "webm" in the header; everything else is Matroska.
        media = "video/webm" if b"webm" in data[:64] else "video/x-matroska"
        return Detection(_VIDEO, media)
    if head.startswith(_NPY_MAGIC) and is_float32_npy(data):
        return Detection(MAIFBlockType.EMBEDDING, "application/x-npy")
    return None


def _is_mpeg_audio_frame(head: bytes) -> bool:
    # An MPEG-1/2 Layer III frame header: 11 sync bits, then a version and layer that are not "reserved".
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return False
    version_bits, layer_bits = (head[1] >> 3) & 0x3, (head[1] >> 1) & 0x3
    bitrate_index, rate_index = head[2] >> 4, (head[2] >> 2) & 0x3
    return version_bits != 1 and layer_bits == 1 and bitrate_index not in (0, 15) and rate_index != 3


def is_float32_npy(data: bytes) -> bool:
    """Whether ``data`` is a complete .npy file (format 1.0-3.0) holding a float32 array.

    Parsed by hand and capped (the header is a Python literal: ``ast.literal_eval`` only, never eval),
    so recognising an embedding never imports numpy or trusts a size the file claims.
    """
    if len(data) < 10 or not data.startswith(_NPY_MAGIC):
        return False
    major = data[6]
    if major == 1:
        header_length, header_start = struct.unpack_from("<H", data, 8)[0], 10
    elif major in (2, 3) and len(data) >= 12:
        header_length, header_start = struct.unpack_from("<I", data, 8)[0], 12
    else:
        return False
    if header_length > limits.cli_npy_header_bytes_max or header_start + header_length > len(data):
        return False
    header = _parse_npy_header(data[header_start : header_start + header_length])
    if header is None:
        return False
    descriptor, shape = header
    element_count = 1
    for dimension in shape:
        element_count *= dimension
    return (
        descriptor in _FLOAT32_DESCRIPTORS and len(data) - header_start - header_length == element_count * 4
    )


def _parse_npy_header(raw: bytes) -> tuple[str, tuple[int, ...]] | None:
    try:
        header = ast.literal_eval(raw.decode("latin-1"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    descriptor, shape = header.get("descr"), header.get("shape")
    if not isinstance(descriptor, str) or not isinstance(shape, tuple) or not 1 <= len(shape) <= 2:
        return None
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        return None
    if header.get("fortran_order") not in (False, True):
        return None
    return descriptor, shape


def _is_json_ld(data: bytes) -> bool:
    if len(data) > limits.cli_jsonld_sniff_bytes_max or data.lstrip()[:1] != b"{":
        return False
    try:
        document = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return isinstance(document, dict) and "@context" in document


def _is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


__all__ = ["BINARY_BLOCK_TYPE", "Detection", "detect", "is_float32_npy"]
