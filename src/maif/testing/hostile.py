"""Crafting hostile .maif files: raw block records sealed into a container that is *validly signed*.

The writer never produces a record that breaks a rule of docs/format/SPEC.md section 4, so these helpers
build records byte by byte and seal them the way a hostile signer would: correct chained digests, index,
Merkle root, manifest, Ed25519 signature and trailer. Only the record breaks a rule, so a verifier that
accepts such a file has skipped that rule. They are written independently of the writer (only the
fixed-layout encoders of :mod:`maif.format.layout` and :mod:`maif.format.signing` are shared).

:data:`SECTION_4_VIOLATIONS` lists one record per rule a reader MUST apply, with the error that names it;
the format and CLI tests run every reader entry point over it.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from maif.errors import FormatError, LimitExceededError, MAIFError
from maif.format import layout, merkle, signing

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

FILE_ID = bytes(range(16))
COMMITTED_AT_NS = 1_767_225_600_000_000_000
FIXED_HEADER = struct.Struct("<4sBBdI")  # SPEC 4.1: type, storage flags, field flags, timestamp, length

# storage flags and field flags (SPEC 4.1)
COMPRESSED, ENCRYPTED = 0x01, 0x02
ID_UUID, AGENT, VERSION, PARENTS, METADATA = 0x01, 0x02, 0x04, 0x08, 0x10

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_FRAME = struct.pack("<II", 0x184D2A50, 4) + b"skip"
_ZSTD_BLOCK_BYTES = 128 * 1024


def text_id(block_id: str) -> bytes:
    """A text block id field: u16 length, UTF-8."""
    raw = block_id.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def path_metadata(path: str) -> bytes:
    """Canonical MessagePack of ``{"path": path}``: a fixmap, then fixstr or str8 strings."""
    raw = path.encode("utf-8")
    assert len(raw) < 256
    prefix = bytes([0xA0 | len(raw)]) if len(raw) < 32 else bytes([0xD9, len(raw)])
    return b"\x81\xa4path" + prefix + raw


def record(
    stored: bytes = b"payload",
    *,
    fourcc: bytes = b"TEXT",
    storage_flags: int = 0,
    field_flags: int = 0,
    timestamp: float = 1_700_000_000.0,
    payload_length: int | None = None,
    fields: bytes | None = None,
    metadata: bytes = b"",
) -> bytes:
    """One record: fixed header, the optional fields (default: the text id ``hostile``), metadata, stored
    payload. A non-empty ``metadata`` sets the METADATA flag and adds its u32 length after ``fields``."""
    if fields is None:
        fields = text_id("hostile")
    if metadata:
        field_flags |= METADATA
        fields += struct.pack("<I", len(metadata))
    length = len(stored) if payload_length is None else payload_length
    fixed = FIXED_HEADER.pack(fourcc, storage_flags, field_flags, timestamp, length)
    return fixed + fields + metadata + stored


def zstd_zero_frame(size: int, *, declare_size: bool = True) -> bytes:
    """A zstd frame of ``size`` zero bytes made of RLE blocks (4 stored bytes per 128 KiB): 1 GiB takes
    33 KB. Window 128 KiB; the content size field is written when ``declare_size``."""
    descriptor = 0xC0 if declare_size else 0x00  # frame content size in 8 bytes, or absent
    header = ZSTD_MAGIC + bytes([descriptor, 0x38]) + (struct.pack("<Q", size) if declare_size else b"")
    full, rest = divmod(size, _ZSTD_BLOCK_BYTES)
    sizes = [_ZSTD_BLOCK_BYTES] * full + ([rest] if rest or not full else [])
    blocks = [
        ((block_size << 3) | (1 << 1) | (index == len(sizes) - 1)).to_bytes(3, "little") + b"\x00"
        for index, block_size in enumerate(sizes)
    ]
    return header + b"".join(blocks)


def zstd_frame(data: bytes, *, declare_size: bool = True) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(write_content_size=declare_size).compress(data)


def one_gib_zstd_bomb(path: Path, key: Ed25519PrivateKey) -> Path:
    """A signed container of one valid block: 1 GiB of zeros as a 33 KB zstd frame that declares it."""
    bomb = record(
        zstd_zero_frame(1 << 30),
        storage_flags=COMPRESSED,
        payload_length=1 << 30,
        metadata=path_metadata("bomb.bin"),
    )
    return signed_container(path, [bomb], key)


_PEAK_RSS_REPORT = """
import atexit, sys

def _report_peak_rss():
    # VmHWM (this process's own peak), not ru_maxrss: Linux carries the parent's peak into ru_maxrss
    # across (v)fork and exec, so under a large pytest parent ru_maxrss reports the parent's memory.
    status = open("/proc/self/status").read()
    sys.stderr.write(f"\\npeak_rss_mb={int(status.split('VmHWM:')[1].split()[0]) // 1024}\\n")

atexit.register(_report_peak_rss)
"""


def run_measuring_peak_rss(
    script: str, arguments: Sequence[str]
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``script`` in a fresh Python process (``sys.argv[1:]`` = ``arguments``); its result and its own
    peak resident set in MB (Linux: /proc/self/status VmHWM, reported at exit)."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_REPORT + script, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, int(result.stderr.rsplit("peak_rss_mb=", 1)[1])


def signed_container(path: Path, records: Sequence[bytes], key: Ed25519PrivateKey,
                     offsets: Mapping[int, int] | None = None) -> Path:
    """Write ``records`` as version 0 of a container signed by ``key``: all but the records is valid,
    unless ``offsets`` overrides the index offsets of chosen positions (entries that break the layout)."""
    header = layout.encode_file_header(FILE_ID)
    previous = layout.chain_genesis(FILE_ID)
    offset, index, digests = layout.FILE_HEADER.size, bytearray(), []
    chosen = offsets or {}
    for position, stored in enumerate(records):
        previous = blake3.blake3(previous + stored).digest()
        digests.append(previous)
        index += layout.INDEX_ENTRY.pack(chosen.get(position, offset), previous)
        offset += len(stored)
    root = merkle.root(merkle.leaf_hashes_of(digests))
    body = layout.encode_manifest_body(
        0,
        len(records),
        layout.FILE_HEADER.size,
        root,
        blake3.blake3(bytes(index)).digest(),
        bytes(32),
        COMMITTED_AT_NS,
        (),
    )
    key_id = signing.key_id(key.public_key())
    message = signing.signed_message(
        header, len(records), root, key_id, COMMITTED_AT_NS, blake3.blake3(body).digest()
    )
    signature = layout.Signature(key_id, COMMITTED_AT_NS, key.sign(message))
    manifest = body + layout.encode_signatures((signature,))
    trailer = layout.Trailer(
        offset, offset + len(index), len(manifest), 0, len(records), layout.FILE_HEADER.size
    )
    path.write_bytes(
        header + b"".join(records) + bytes(index) + manifest + layout.encode_trailer(trailer, manifest)
    )
    return path


@dataclass(frozen=True)
class Violation:
    """A record that breaks one SPEC section 4 rule, and the error (type and message pattern) naming it."""

    name: str
    record: bytes
    error: type[MAIFError]
    match: str

    @property
    def kind(self) -> str:
        """The verification problem kind it earns (``maif.format.reports.PROBLEM_KINDS``)."""
        return "limit" if issubclass(self.error, LimitExceededError) else "format"


def _violations() -> tuple[Violation, ...]:
    path = path_metadata("hostile.bin")
    sized, unsized = zstd_frame(b"a" * 5000), zstd_frame(b"b" * 9000, declare_size=False)
    wide_window = ZSTD_MAGIC + b"\x00\x70" + bytes(8)  # window 16 MiB, no content size

    def plain(**fields: Any) -> bytes:
        return record(metadata=path, **fields)

    def compressed(stored: bytes, length: int) -> bytes:
        return record(stored, storage_flags=COMPRESSED, payload_length=length, metadata=path)

    one_frame = "exactly one valid zstd frame"
    not_a_map = "not a valid MessagePack map"
    cases = [
        ("reserved storage flag bit", plain(storage_flags=0x04), FormatError, "reserved storage flag"),
        ("FourCC with a space", plain(fourcc=b"TE T"), FormatError, "FourCC"),
        ("NaN timestamp", plain(timestamp=math.nan), FormatError, "finite"),
        ("canonical UUID stored as text", plain(fields=text_id("0195f6a0-0000-7000-8000-000000000001")),
         FormatError, "16 raw bytes"),
        ("explicit default version label", plain(field_flags=VERSION, fields=text_id("v") + b"\x031.0"),
         FormatError, "default value"),
        ("unsorted metadata keys", record(metadata=b"\x82\xa1b\x01\xa1a\x02"), FormatError, "canonical"),
        ("non-shortest integer", record(metadata=b"\x81\xa1a\xcd\x00\x01"), FormatError, "canonical"),
        ("integer where a map is required", record(metadata=b"\x01"), FormatError, not_a_map),
        ("array where a map is required", record(metadata=b"\x91\x01"), FormatError, not_a_map),
        ("empty metadata map", record(metadata=b"\x80"), FormatError, "empty"),
        ("metadata nested past its bound", record(metadata=b"\x81\xa1a" + b"\x91" * 32 + b"\xc0"),
         LimitExceededError, "nesting depth"),
        ("two zstd frames", compressed(sized + sized, 5000), FormatError, one_frame),
        ("two zstd frames without declared sizes", compressed(unsized + unsized, 18000), FormatError,
         one_frame),
        ("zstd frame then a skippable frame", compressed(sized + SKIPPABLE_FRAME, 5000), FormatError,
         one_frame),
        ("unsized zstd frame then a skippable frame", compressed(unsized + SKIPPABLE_FRAME, 9000),
         FormatError, one_frame),
        ("zstd window past its bound", compressed(wide_window, 5000), LimitExceededError, "window"),
        ("COMPRESSED with payload length 0", compressed(b"", 0), FormatError, "must not be empty"),
        ("payload length over 1 GiB with 1 stored byte", plain(stored=b"x", payload_length=(1 << 30) + 1),
         LimitExceededError, "block payload size"),
    ]
    return tuple(Violation(*case) for case in cases)


SECTION_4_VIOLATIONS: tuple[Violation, ...] = _violations()

__all__ = [
    "AGENT",
    "COMPRESSED",
    "ENCRYPTED",
    "ID_UUID",
    "METADATA",
    "PARENTS",
    "SECTION_4_VIOLATIONS",
    "SKIPPABLE_FRAME",
    "VERSION",
    "ZSTD_MAGIC",
    "Violation",
    "path_metadata",
    "record",
    "signed_container",
    "text_id",
    "zstd_frame",
    "zstd_zero_frame",
]
