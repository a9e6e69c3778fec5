"""Block types come from content first, then the extension, as docs/cli.md promises."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from maif.cli.demo_media import encode_float32_npy, sunset_png
from maif.cli.detect import BINARY_BLOCK_TYPE, detect, is_float32_npy
from maif.format.block import MAIFBlockType


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected_type", "expected_media"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, MAIFBlockType.IMAGE, "image/png"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 20, MAIFBlockType.IMAGE, "image/jpeg"),
        (b"GIF89a" + b"\x00" * 20, MAIFBlockType.IMAGE, "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", MAIFBlockType.IMAGE, "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", MAIFBlockType.AUDIO, "audio/wav"),
        (b"fLaC\x00\x00\x00\x22", MAIFBlockType.AUDIO, "audio/flac"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", MAIFBlockType.AUDIO, "audio/mpeg"),
        (b"\xff\xfb\x90\x64" + b"\x00" * 20, MAIFBlockType.AUDIO, "audio/mpeg"),
        (b"OggS\x00\x02" + b"\x00" * 20, MAIFBlockType.AUDIO, "audio/ogg"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 8, MAIFBlockType.VIDEO, "video/mp4"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x82\x84webm", MAIFBlockType.VIDEO, "video/webm"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x82\x88matroska", MAIFBlockType.VIDEO, "video/x-matroska"),
    ],
)
def test_magic_bytes_decide_regardless_of_the_name(
    data: bytes, expected_type: object, expected_media: str
) -> None:
    detection = detect(data, "misleading-name.txt")
    assert detection.block_type == expected_type
    assert detection.media_type == expected_media


def test_the_extension_decides_when_the_magic_is_unknown() -> None:
    assert detect(b"\x00\x01\x02garbage", "clip.MKV").block_type == MAIFBlockType.VIDEO
    assert detect(b"\x00\x01\x02garbage", "song.flac").block_type == MAIFBlockType.AUDIO
    assert detect(b"\x00\x01\x02garbage", "photo.jpeg").block_type == MAIFBlockType.IMAGE


def test_json_ld_text_and_binary() -> None:
    assert detect(b' {"@context": "https://schema.org/", "name": "x"}', "a.json").block_type == (
        MAIFBlockType.KNOWLEDGE_GRAPH
    )
    assert detect(b'{"name": "plain json"}', "a.json").block_type == MAIFBlockType.TEXT
    assert detect(b'[{"@context": {}}]', "a.json").block_type == MAIFBlockType.TEXT
    assert detect("caf\u00e9 \u2615\n".encode(), "notes").block_type == MAIFBlockType.TEXT
    assert detect(b"", "empty").block_type == MAIFBlockType.TEXT
    assert detect(b"text with a NUL\x00", "x").block_type == BINARY_BLOCK_TYPE
    assert detect(b"\xc3\x28 invalid utf-8", "x").block_type == BINARY_BLOCK_TYPE


def test_only_float32_npy_is_an_embedding() -> None:
    assert detect(_npy(np.ones((3, 8), dtype=np.float32)), "e.npy").block_type == MAIFBlockType.EMBEDDING
    assert detect(_npy(np.ones(5, dtype=np.float32)), "e.npy").block_type == MAIFBlockType.EMBEDDING
    assert detect(_npy(np.ones((3, 8), dtype=np.float64)), "e.npy").block_type == BINARY_BLOCK_TYPE
    assert detect(_npy(np.ones((2, 2, 2), dtype=np.float32)), "e.npy").block_type == BINARY_BLOCK_TYPE
    ours = encode_float32_npy([[0.5, 0.25], [1.0, 2.0]])
    assert np.load(io.BytesIO(ours)).tolist() == [[0.5, 0.25], [1.0, 2.0]]
    assert is_float32_npy(ours)


@pytest.mark.parametrize(
    "data",
    [
        b"\x93NUMPY",
        b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4'",  # header longer than the file
        b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16,  # unknown major version
        b"\x93NUMPY\x01\x00\x10\x00__import__('os')",  # not a literal: never evaluated
        b"\x93NUMPY\x01\x00\x0a\x00{[1]: 2}  ",  # unhashable key
        b"\x93NUMPY\x01\x00\x40\x00" + b"[" * 64,  # nesting
    ],
)
def test_hostile_npy_headers_are_refused_quietly(data: bytes) -> None:
    assert not is_float32_npy(data)
    assert detect(data, "e.npy").block_type == BINARY_BLOCK_TYPE


def test_npy_whose_data_length_disagrees_with_its_shape_is_not_an_embedding() -> None:
    valid = _npy(np.ones((4, 4), dtype=np.float32))
    assert not is_float32_npy(valid[:-4])
    assert not is_float32_npy(valid + struct.pack("<f", 1.0))


def test_generated_png_is_a_real_png() -> None:
    png = sunset_png(32)
    assert detect(png, "x").block_type == MAIFBlockType.IMAGE
    # IHDR: width and height as big-endian u32 right after the chunk type
    assert struct.unpack(">II", png[16:24]) == (32, 32)
