"""Attacks on .maif files, each of which must be refused and located: byte flips, forged signatures,
moved, duplicated, spliced and truncated blocks, tampered ciphertext, wrong keys, torn tails."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif.errors import DecryptionError, IntegrityError
from maif.format import codec, layout, signing
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.repair import repair_container
from maif.format.verify import VerificationReport, verify_container

from .conftest import Builder, sample_block


def regions(path: Path) -> tuple[list[tuple[int, int]], list[tuple[int, int, int]]]:
    """(record byte ranges by block index, index ranges as (start, end, first block index))."""
    with ContainerReader.open(path) as reader:
        records = [
            (reader.entry(i).offset, reader.entry(i).offset + reader.entry(i).length)
            for i in range(len(reader))
        ]
        indexes = []
        first = 0
        for number, version in enumerate(reader.versions):
            region = reader.index_region(number)
            start = reader._versions[number].trailer.index_offset
            indexes.append((start, start + len(region), first))
            first = version.block_count
    return records, indexes


def verify_bytes(tmp_path: Path, data: bytes, key: Ed25519PrivateKey, **kwargs: object) -> VerificationReport:
    path = tmp_path / "mutant.maif"
    path.write_bytes(data)
    return verify_container(path, [key.public_key()], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("encrypt", [False, True])
def test_every_single_byte_change_is_detected_and_located(
    build: Builder,
    signing_key: Ed25519PrivateKey,
    recipient_key: X25519PrivateKey,
    tmp_path: Path,
    encrypt: bool,
) -> None:
    path = build((2, 1), size=12, recipients=(recipient_key,), encrypt=encrypt)
    original = path.read_bytes()
    assert verify_container(path, [signing_key.public_key()]).ok
    records, indexes = regions(path)
    for position in range(len(original)):
        for mask in (0x01, 0xFF):
            mutant = bytearray(original)
            mutant[position] ^= mask
            report = verify_bytes(tmp_path, bytes(mutant), signing_key)
            assert not report.ok, f"byte {position} ^ {mask:#x} went unnoticed"
            for block, (start, end) in enumerate(records):
                if start <= position < end:
                    assert block in report.bad_blocks(), (position, report.problems)
            for start, end, first in indexes:
                if start <= position < end:
                    entry = first + (position - start) // layout.INDEX_ENTRY.size
                    located = entry in report.bad_blocks() or any(
                        p.region.endswith("index") for p in report.problems
                    )
                    assert located, (position, report.problems)


def test_every_flag_bit_flipped_is_detected(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = build((3,))
    original = path.read_bytes()
    records, _ = regions(path)
    for block, (start, _) in enumerate(records):
        for flag_byte in (start + 4, start + 5):
            for bit in range(8):
                mutant = bytearray(original)
                mutant[flag_byte] ^= 1 << bit
                report = verify_bytes(tmp_path, bytes(mutant), signing_key)
                assert report.bad_blocks() == [block]


def resign(path: Path, signers: list[Ed25519PrivateKey]) -> bytes:
    """The file with its last manifest's signatures replaced by ``signers``' (a well-formed forgery)."""
    data = path.read_bytes()
    with ContainerReader.open(path) as reader:
        version = reader._versions[-1]
        header = reader.file_header
    manifest, trailer = version.manifest, version.trailer
    now = manifest.committed_at_ns
    signatures = tuple(
        layout.Signature(
            signing.key_id(key.public_key()),
            now,
            key.sign(
                signing.signed_message(
                    header,
                    manifest.block_count,
                    manifest.merkle_root,
                    signing.key_id(key.public_key()),
                    now,
                    manifest.body_digest,
                )
            ),
        )
        for key in signers
    )
    new_manifest = manifest.body + layout.encode_signatures(signatures)
    new_trailer = layout.Trailer(
        trailer.index_offset,
        trailer.manifest_offset,
        len(new_manifest),
        trailer.version_number,
        trailer.block_count,
        trailer.segment_start,
    )
    return data[: trailer.manifest_offset] + new_manifest + layout.encode_trailer(new_trailer, new_manifest)


def test_a_file_re_signed_by_an_untrusted_key_is_refused(
    build: Builder, signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    forged = resign(build((2,)), [other_signing_key])
    report = verify_bytes(tmp_path, forged, signing_key)
    assert not report.ok
    assert any("no valid signature by a trusted key" in p.reason for p in report.problems)
    assert verify_bytes(tmp_path, forged, other_signing_key).ok  # well-formed: only trust refuses it


def test_a_file_with_no_signature_is_refused(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    report = verify_bytes(tmp_path, resign(build((2,)), []), signing_key)
    assert not report.ok
    assert any("no valid signature" in p.reason for p in report.problems)


def test_a_signature_claiming_a_trusted_key_id_but_made_by_another_is_refused(
    build: Builder, signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = build((2,))
    with ContainerReader.open(path) as reader:
        version = reader._versions[-1]
    manifest, trailer = version.manifest, version.trailer
    forged_signature = layout.Signature(
        signing.key_id(signing_key.public_key()),
        manifest.committed_at_ns,
        other_signing_key.sign(b"anything"),
    )
    new_manifest = manifest.body + layout.encode_signatures((forged_signature,))
    data = (
        path.read_bytes()[: trailer.manifest_offset]
        + new_manifest
        + layout.encode_trailer(trailer, new_manifest)
    )
    report = verify_bytes(tmp_path, data, signing_key)
    assert any("does not verify" in p.reason for p in report.problems)


def test_unsigned_empty_file_and_missing_trust_are_refused(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    header_only = layout.encode_file_header(bytes(16))
    assert not verify_bytes(tmp_path, header_only, signing_key).ok
    assert not verify_container(build((1,)), []).ok
    assert not verify_bytes(tmp_path, b"", signing_key).ok


def test_truncation_inside_a_version_is_detected(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    data = build((3,)).read_bytes()
    for cut in (1, 40, len(data) // 2, len(data) - 1):
        assert not verify_bytes(tmp_path, data[:cut], signing_key).ok


def test_reordered_duplicated_and_dropped_records_are_located(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = build((4,), size=30)
    data = path.read_bytes()
    records, _ = regions(path)
    (a0, a1), (b0, b1) = records[1], records[2]
    assert a1 - a0 == b1 - b0
    swapped = data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:]
    assert set(verify_bytes(tmp_path, swapped, signing_key).bad_blocks()) >= {1, 2}
    duplicated = data[:b0] + data[a0:a1] + data[b1:]
    assert 2 in verify_bytes(tmp_path, duplicated, signing_key).bad_blocks()
    dropped = data[:a0] + data[a1:]
    assert not verify_bytes(tmp_path, dropped, signing_key).ok


def test_blocks_spliced_from_another_file_signed_by_the_same_key_are_detected(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    first = build((3,), name="first.maif")
    second = tmp_path / "second.maif"
    with ContainerWriter.create(second) as writer:
        for index in range(3):
            writer.add(msgspec.structs.replace(sample_block(index), data=bytes(40)))
        writer.commit([signing_key])
    mine, theirs = first.read_bytes(), second.read_bytes()
    records, _ = regions(first)
    assert records == regions(second)[0]
    start, end = records[1]
    spliced = mine[:start] + theirs[start:end] + mine[end:]
    assert spliced != mine
    assert verify_bytes(tmp_path, spliced, signing_key).bad_blocks() == [1]
    # a whole body under another file's header: every signature covers the header
    transplanted = theirs[:32] + mine[32:]
    report = verify_bytes(tmp_path, transplanted, signing_key)
    assert not report.ok and any("signature" in p.reason for p in report.problems)
    # the same version of one file appended after the other file's versions: the chain of manifests breaks
    assert not verify_bytes(tmp_path, mine + theirs[32:], signing_key).ok


def test_tampered_ciphertext_or_header_of_an_encrypted_block_is_refused(
    build: Builder, signing_key: Ed25519PrivateKey, recipient_key: X25519PrivateKey, tmp_path: Path
) -> None:
    path = build((2,), size=100, recipients=(recipient_key,), encrypt=True)
    data = path.read_bytes()
    records, _ = regions(path)
    start, end = records[1]
    for position in (start + 6, start + 14, end - 30, end - 1):  # timestamp, length, ciphertext, tag
        mutant = bytearray(data)
        mutant[position] ^= 0x01
        target = tmp_path / "enc.maif"
        target.write_bytes(bytes(mutant))
        with ContainerReader.open(target, decryption_key=recipient_key) as reader:
            with pytest.raises(IntegrityError):
                reader.block(1)
            with pytest.raises((DecryptionError, IntegrityError)):
                reader.block(1, verify=False)  # the AEAD alone refuses it too
        report = verify_container(target, [signing_key.public_key()], decryption_key=recipient_key)
        assert report.bad_blocks() == [1]


def test_the_wrong_key_cannot_decrypt(build: Builder, recipient_key: X25519PrivateKey) -> None:
    path = build((1,), recipients=(recipient_key,), encrypt=True)
    with (
        ContainerReader.open(path, decryption_key=X25519PrivateKey.generate()) as reader,
        pytest.raises(DecryptionError),
    ):
        reader.block(0)
    with ContainerReader.open(path) as reader, pytest.raises(Exception, match="no decryption key"):
        reader.block(0)


def test_a_torn_tail_at_every_offset_opens_at_the_previous_version_and_repairs(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = build((2, 2), size=20)
    data = path.read_bytes()
    with ContainerReader.open(path) as reader:
        previous_end, last_end = reader.versions[0].end_offset, reader.versions[1].end_offset
    assert last_end == len(data)
    target = tmp_path / "torn.maif"
    for cut in range(previous_end + 1, last_end):
        target.write_bytes(data[:cut])
        with ContainerReader.open(target) as reader:
            assert len(reader.versions) == 1
            assert reader.torn_tail_bytes == cut - previous_end
            assert len(reader) == 2
            assert reader.block(1).id == "block-1"
        report = verify_container(target, [signing_key.public_key()])
        assert not report.ok and [p.region for p in report.problems] == ["tail"]
        repaired = repair_container(target)
        assert (repaired.bytes_truncated, repaired.versions_kept) == (cut - previous_end, 1)
        assert target.read_bytes() == data[:previous_end]
        assert verify_container(target, [signing_key.public_key()]).ok


def test_a_torn_first_version_leaves_an_empty_container(build: Builder, tmp_path: Path) -> None:
    data = build((2,)).read_bytes()
    target = tmp_path / "torn0.maif"
    target.write_bytes(data[:-1])
    assert repair_container(target).versions_kept == 0
    assert target.read_bytes() == data[:32]


def test_a_fake_trailer_inside_a_payload_is_not_trusted(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "fake.maif"
    fake = layout.TRAILER_MAGIC * 4
    with ContainerWriter.create(path) as writer:
        writer.add(MAIFBlock(data=fake * 10))
        writer.commit([signing_key])
        writer.add(MAIFBlock(data=fake * 10))
        writer.commit([signing_key])
    data = path.read_bytes()
    target = tmp_path / "fake-torn.maif"
    target.write_bytes(data[:-3])
    with ContainerReader.open(target) as reader:
        assert len(reader.versions) == 1


def test_the_codec_digest_is_independent_of_storage(build: Builder, recipient_key: X25519PrivateKey) -> None:
    path = build((2,), size=5000, recipients=(recipient_key,), encrypt=True)
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        assert codec.block_digest(reader.block(1)) == codec.block_digest(sample_block(1, 5000))


def test_every_bad_block_is_reported_not_just_the_first(
    build: Builder, signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    path = build((3, 3), size=50)
    records, _ = regions(path)
    mutant = bytearray(path.read_bytes())
    for block in (0, 2, 4, 5):
        end = records[block][1]
        mutant[end - 1] ^= 0x40  # the last payload byte
    report = verify_bytes(tmp_path, bytes(mutant), signing_key)
    assert report.bad_blocks() == [0, 2, 4, 5]
    assert all("digest" in p.reason for p in report.problems)
    quick = verify_bytes(tmp_path, bytes(mutant), signing_key, full=False)
    assert quick.ok  # quick mode reads no block bytes: that is what full mode is for
