"""Golden vectors: the committed small.maif is rebuilt byte for byte, and every key field is recomputed
here straight from the formulas in docs/format/SPEC.md, without the writer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import blake3

from maif.format import signing
from maif.format.container import ContainerReader
from maif.format.verify import verify_container

from .golden import make_golden

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
DATA = (GOLDEN / "small.maif").read_bytes()


def test_the_writer_reproduces_the_golden_file_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "again.maif"
    make_golden.build(path)
    assert path.read_bytes() == DATA
    assert blake3.blake3(DATA).hexdigest() == EXPECTED["file_blake3"]


def test_header_matches_section_3() -> None:
    header = b"\x89MAIF\r\n\x1a" + struct.pack("<HHI", 1, 0, 0) + make_golden.FILE_ID
    assert DATA[:32] == header
    assert header.hex() == EXPECTED["file_header"]


def test_first_record_matches_section_4_by_hand() -> None:
    offset, length = EXPECTED["records"][0]
    uuid_bytes = bytes.fromhex("0195f6a0000070008000000000000001")
    record = (
        b"TEXT"
        + bytes([0, 0x01 | 0x02])
        + struct.pack("<dI", 1_767_225_600.0, 11)
        + uuid_bytes
        + struct.pack("<H", 7)
        + b"agent-1"
        + b"hello, maif"
    )
    assert DATA[offset : offset + length] == record


def test_chained_digests_index_and_merkle_root_match_sections_5_and_6() -> None:
    previous = blake3.blake3(b"MAIF-chain-v1\x00" + make_golden.FILE_ID).digest()
    digests = []
    index = b""
    for (offset, length), expected in zip(EXPECTED["records"], EXPECTED["chained_digests"], strict=True):
        previous = blake3.blake3(previous + DATA[offset : offset + length]).digest()
        assert previous.hex() == expected
        digests.append(previous)
        index += struct.pack("<Q", offset) + previous
    index_offset = EXPECTED["records"][-1][0] + EXPECTED["records"][-1][1]
    assert DATA[index_offset : index_offset + len(index)] == index
    assert blake3.blake3(index).hexdigest() == EXPECTED["index_digest"]

    def leaf(d: bytes) -> bytes:
        return blake3.blake3(b"\x00" + d).digest()

    def node(left: bytes, right: bytes) -> bytes:
        return blake3.blake3(b"\x01" + left + right).digest()

    root = node(node(leaf(digests[0]), leaf(digests[1])), leaf(digests[2]))
    assert root.hex() == EXPECTED["merkle_root"]


def test_signature_and_trailer_match_sections_7_and_9() -> None:
    trailer = DATA[-64:]
    index_offset, manifest_offset, manifest_length, version, count, segment_start, checksum, magic = (
        struct.unpack("<QQIIQQ16s8s", trailer)
    )
    assert (magic, version, count, segment_start) == (b"MAIFTRL1", 0, 3, 32)
    assert manifest_offset == index_offset + 3 * 40 and manifest_offset + manifest_length == len(DATA) - 64
    manifest = DATA[manifest_offset : manifest_offset + manifest_length]
    assert checksum == blake3.blake3(manifest + trailer[:40]).digest()[:16]
    body = manifest[: 129 + 108]  # one recipient
    assert blake3.blake3(body).hexdigest() == EXPECTED["manifest_body_digest"]
    assert manifest[129 + 108] == 1  # one signature
    key_id, signed_at, signature = struct.unpack("<16sq64s", manifest[129 + 108 + 1 :])
    public = make_golden.SIGNING_KEY.public_key()
    assert key_id == blake3.blake3(signing.raw_public_bytes(public)).digest()[:16]
    assert key_id.hex() == EXPECTED["signer_key_id"] and signature.hex() == EXPECTED["signature"]
    message = (
        b"MAIF-manifest-signature-v1\x00"
        + DATA[:32]
        + struct.pack("<Q", 3)
        + bytes.fromhex(EXPECTED["merkle_root"])
        + key_id
        + struct.pack("<q", signed_at)
        + blake3.blake3(body).digest()
    )
    public.verify(signature, message)


def test_the_golden_file_verifies_and_decrypts() -> None:
    path = GOLDEN / "small.maif"
    report = verify_container(
        path, [make_golden.SIGNING_KEY.public_key()], decryption_key=make_golden.RECIPIENT_KEY
    )
    assert report.ok, report.problems
    with ContainerReader.open(path, decryption_key=make_golden.RECIPIENT_KEY) as reader:
        for index, (block, _) in enumerate(make_golden.BLOCKS):
            assert reader.block(index) == block
