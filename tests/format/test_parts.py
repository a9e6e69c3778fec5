"""Part sets (SPEC section 15): a payload of any size as consecutive blocks, whole or refused.

The attacks are written by a signer the verifier trusts (a buggy or hostile producer): the chain and the
signature hold, so only the part-set rules stand between them and a wrong file on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif.errors import FormatError, IntegrityError
from maif.format import codec
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.parts import (
    PartInfo,
    PartSequence,
    add_parts,
    parse_part,
    part_count,
    part_metadata,
)
from maif.format.verify import verify_container

PAYLOAD = bytes((index * 31 + 7) % 256 for index in range(10_000))
PART_BYTES = 4096  # 3 parts: 4096, 4096, 1808


def _pieces(payload: bytes, size: int) -> list[bytes]:
    return [payload[start : start + size] for start in range(0, len(payload), size)]


def _write_set(path: Path, key: Ed25519PrivateKey, **options: object) -> None:
    with ContainerWriter.create(path, **options) as writer:  # type: ignore[arg-type]
        writer.add(MAIFBlock(data=b"before", metadata={"path": "a.txt"}))
        add_parts(
            writer,
            _pieces(PAYLOAD, PART_BYTES),
            len(PAYLOAD),
            part_bytes=PART_BYTES,
            block_type="BINA",
            metadata={"path": "big.bin"},
            encrypt=bool(options.get("recipients")),
        )
        writer.add(MAIFBlock(data=b"after", metadata={"path": "z.txt"}))
        writer.commit([key])


def _reassemble(reader: ContainerReader) -> dict[str, bytes]:
    """Every part set in the file, reassembled through PartSequence (which checks it)."""
    sequence, found, pieces = PartSequence(), {}, []
    for index in range(len(reader)):
        block = reader.stream_block(index)
        info = parse_part(block.metadata)
        sequence.begin(index, info, block.header.payload_length, block.metadata.get("path"))
        for piece in block.chunks:
            if info is not None:
                sequence.feed(piece)
                pieces.append(bytes(piece))
        if sequence.end(index, info, block.header.payload_length):
            found[block.metadata["path"]] = b"".join(pieces)
            pieces = []
    sequence.finish(len(reader))
    return found


def test_a_payload_round_trips_as_a_part_set_and_verifies(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "parts.maif"
    _write_set(path, signing_key)
    assert verify_container(path, [signing_key.public_key()]).ok
    with ContainerReader.open(path) as reader:
        assert len(reader) == 5
        assert _reassemble(reader) == {"big.bin": PAYLOAD}
        last = parse_part(reader.block(3).metadata)
    assert last is not None and last.digest == blake3.blake3(PAYLOAD).hexdigest()
    assert (last.index, last.count, last.offset, last.total) == (2, 3, 2 * PART_BYTES, len(PAYLOAD))


def test_encrypted_parts_are_checked_with_the_key_and_skipped_without(
    tmp_path: Path, signing_key: Ed25519PrivateKey, recipient_key: X25519PrivateKey
) -> None:
    path = tmp_path / "sealed.maif"
    _write_set(path, signing_key, recipients=[recipient_key.public_key()])
    trusted = [signing_key.public_key()]
    assert verify_container(path, trusted, decryption_key=recipient_key).ok
    assert verify_container(path, trusted).ok  # metadata is sealed: nothing to judge, nothing refused
    assert b"big.bin" not in path.read_bytes()


def _info(set_id: str, index: int, count: int = 3, total: int = 12, payload: bytes = b"abcd" * 3) -> PartInfo:
    digest = blake3.blake3(payload).hexdigest() if index == count - 1 else None
    return PartInfo(set_id, index, count, 4 * index, total, digest)


SET_A, SET_B = "aa" * 16, "bb" * 16


def _part(info: PartInfo, data: bytes = b"abcd", path: str = "f") -> MAIFBlock:
    return MAIFBlock(data=data, metadata={"path": path, "part": part_metadata(info)})


# Each case: the blocks a trusted signer wrote, and the block index the verifier must blame.
ATTACKS: dict[str, tuple[Callable[[], list[MAIFBlock]], int, str]] = {
    "missing middle part": (lambda: [_part(_info(SET_A, 0)), _part(_info(SET_A, 2))], 1, "missing"),
    "missing last part": (lambda: [_part(_info(SET_A, 0)), _part(_info(SET_A, 1))], 1, "ends inside"),
    "missing first part": (lambda: [_part(_info(SET_A, 1)), _part(_info(SET_A, 2))], 0, "not preceded"),
    "duplicated part": (
        lambda: [_part(_info(SET_A, index)) for index in (0, 1, 1, 2)],
        2,
        "duplicated part",
    ),
    "reordered parts": (
        lambda: [_part(_info(SET_A, 0)), _part(_info(SET_A, 2)), _part(_info(SET_A, 1))],
        1,
        "out of order",
    ),
    "foreign part of another set": (
        lambda: [_part(_info(SET_A, 0)), _part(_info(SET_B, 1)), _part(_info(SET_A, 2))],
        1,
        "missing",
    ),
    "foreign part under the same set id": (
        lambda: [_part(_info(SET_A, 0)), _part(_info(SET_A, 1), path="other"), _part(_info(SET_A, 2))],
        1,
        "does not belong",
    ),
    "a lone block inside a set": (
        lambda: [_part(_info(SET_A, 0)), MAIFBlock(data=b"x"), *(_part(_info(SET_A, i)) for i in (1, 2))],
        1,
        "missing",
    ),
    "duplicated set": (
        lambda: [_part(_info(SET_A, i)) for i in range(3)] * 2,
        3,
        "occurs twice",
    ),
    "swapped payload bytes": (
        lambda: [_part(_info(SET_A, 0), b"abcd"), _part(_info(SET_A, 1), b"abce"), _part(_info(SET_A, 2))],
        2,
        "does not match its BLAKE3",
    ),
    "wrong offset": (
        lambda: [_part(_info(SET_A, 0)), _part(PartInfo(SET_A, 1, 3, 5, 12, None)), _part(_info(SET_A, 2))],
        1,
        "offset",
    ),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_verify_refuses_a_broken_part_set_signed_by_a_trusted_key(
    tmp_path: Path, signing_key: Ed25519PrivateKey, name: str
) -> None:
    blocks, blamed, reason = ATTACKS[name]
    path = tmp_path / "attack.maif"
    with ContainerWriter.create(path) as writer:
        for block in blocks():
            writer.add(block)
        writer.commit([signing_key])
    trusted = [signing_key.public_key()]
    assert verify_container(path, trusted, full=False).ok  # the chain and signature hold
    report = verify_container(path, trusted)
    assert not report.ok
    problem = report.problems[0]
    assert (problem.block_index, problem.kind) == (blamed, "integrity"), report.problems
    assert reason in problem.reason
    with ContainerReader.open(path) as reader, pytest.raises(IntegrityError, match=reason):
        _reassemble(reader)


@pytest.mark.parametrize(
    "part",
    [
        "not a map",
        {"set": SET_A, "index": 0, "count": 2, "offset": 0},  # a key missing
        {"set": SET_A, "index": 0, "count": 2, "offset": 0, "total": 8, "extra": 1},
        {"set": SET_A.upper(), "index": 0, "count": 2, "offset": 0, "total": 8},
        {"set": SET_A, "index": True, "count": 2, "offset": 0, "total": 8},
        {"set": SET_A, "index": 2, "count": 2, "offset": 0, "total": 8},
        {"set": SET_A, "index": 0, "count": 1, "offset": 0, "total": 8},  # a set has >= 2 parts
        {"set": SET_A, "index": 1, "count": 2, "offset": 4, "total": 8},  # last part without digest
        {"set": SET_A, "index": 0, "count": 2, "offset": 0, "total": 8, "blake3": "00" * 32},
    ],
)
def test_malformed_part_maps_are_format_errors(
    tmp_path: Path, signing_key: Ed25519PrivateKey, part: object
) -> None:
    with pytest.raises(FormatError):
        parse_part({"part": part})
    path = tmp_path / "malformed.maif"
    with ContainerWriter.create(path) as writer:
        writer.add(MAIFBlock(data=b"abcd", metadata={"part": part}))
        writer.commit([signing_key])
    report = verify_container(path, [signing_key.public_key()])
    assert [(problem.block_index, problem.kind) for problem in report.problems] == [(0, "format")]


def test_add_parts_refuses_a_source_that_changed_while_read(tmp_path: Path) -> None:
    with ContainerWriter.create(tmp_path / "x.maif") as writer:
        with pytest.raises(FormatError, match="changed"):
            add_parts(writer, [b"abcd", b"ab"], 12, part_bytes=4, block_type="BINA", metadata={})
        with pytest.raises(FormatError, match="changed"):
            add_parts(writer, [b"abcd", b"abcd"], 12, part_bytes=4, block_type="BINA", metadata={})
        with pytest.raises(FormatError, match="not a part set"):
            add_parts(writer, [b"abcd"], 4, part_bytes=4, block_type="BINA", metadata={})
    assert part_count(0, 4) == 1 and part_count(4, 4) == 1 and part_count(5, 4) == 2


def test_spec_section_15_vector() -> None:
    """The test vector printed in docs/format/SPEC.md section 15, recomputed from the formulas."""
    payload = bytes(range(10))
    digest = blake3.blake3(payload).hexdigest()
    metadata = {"path": "ten.bin", "part": part_metadata(PartInfo("0f" * 16, 2, 3, 8, 10, digest))}
    encoded = codec.encode_metadata(metadata)
    assert encoded.hex() == SPEC_VECTOR_LAST_PART_METADATA_HEX
    assert parse_part(codec.decode_metadata(encoded)) == PartInfo("0f" * 16, 2, 3, 8, 10, digest)
    assert digest == SPEC_VECTOR_DIGEST_HEX


SPEC_VECTOR_DIGEST_HEX = "87fcf07cac5be3c91735b34e535c67286e4e7a63bf152d95f2cf4cd1a244758b"
SPEC_VECTOR_LAST_PART_METADATA_HEX = (
    "82a47061727486a6626c616b6533d940"
    + SPEC_VECTOR_DIGEST_HEX.encode().hex()
    + "a5636f756e7403a5696e64657802a66f666673657408a3736574d920"
    + ("0f" * 16).encode().hex()
    + "a5746f74616c0aa470617468a774656e2e62696e"
)


def test_part_sequence_reports_nothing_for_blocks_outside_sets() -> None:
    sequence = PartSequence()
    for index in range(3):
        sequence.begin(index, None, 10)
        assert not sequence.end(index, None, 10)
    sequence.finish(3)
