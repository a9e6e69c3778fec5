"""Test vectors for the precise wording of SPEC.md and PACKS.md (issue 14, item 5): each test builds or
reads exact bytes and asserts one rule as the code implements it. The SPEC statement each test pins is
named in its docstring."""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif import limits
from maif.errors import (
    CryptoError,
    DecryptionError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    SignatureError,
)
from maif.format import aead, codec, layout, signing
from maif.format.compression import compress_if_pays, decompress_exact, iter_decompressed
from maif.format.container import ContainerReader, ContainerWriter, verify_container
from maif.storage import packs
from maif.testing.hostile import ENCRYPTED, record, signed_container

from .conftest import Builder, sample_block

# --- helpers: the last version's raw regions, and a rewrite of its signatures -------------------------


def last_version(data: bytes) -> tuple[layout.Trailer, bytes]:
    """The trailer at the end of ``data`` and the raw manifest bytes it names."""
    trailer = layout.decode_trailer(data, len(data) - layout.TRAILER.size)
    return trailer, data[trailer.manifest_offset : len(data) - layout.TRAILER.size]


def with_signatures(path: Path, signatures: tuple[layout.Signature, ...]) -> None:
    """Replace the last version's signatures (outside the signed body) and reseal its trailer."""
    data = path.read_bytes()
    trailer, raw = last_version(data)
    manifest = layout.decode_manifest(raw, trailer.manifest_offset)
    new_manifest = manifest.body + layout.encode_signatures(signatures)
    new_trailer = layout.Trailer(
        trailer.index_offset,
        trailer.manifest_offset,
        len(new_manifest),
        trailer.version_number,
        trailer.block_count,
        trailer.segment_start,
    )
    path.write_bytes(
        data[: trailer.manifest_offset] + new_manifest + layout.encode_trailer(new_trailer, new_manifest)
    )


def key_id_of(key: Ed25519PrivateKey) -> bytes:
    return signing.key_id(key.public_key())


# --- section 7: where the manifest body ends -----------------------------------------------------------


def test_the_manifest_body_is_its_first_129_plus_108_r_bytes(
    build: Builder, recipient_key: X25519PrivateKey, signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 7: the body ends after the key wraps; the signature count byte is the first byte after it."""
    second_recipient = X25519PrivateKey.from_private_bytes(bytes(range(5, 37)))
    path = build((2,), recipients=(recipient_key, second_recipient), encrypt=True)
    trailer, raw = last_version(path.read_bytes())
    recipients = 2
    body_length = 129 + 108 * recipients
    assert raw[128] == recipients  # recipient count: the last byte of the fixed part
    assert raw[body_length] == 1  # signature count: not part of the body
    assert len(raw) == body_length + 1 + 88 * 1
    manifest = layout.decode_manifest(raw, trailer.manifest_offset)
    assert manifest.body == raw[:body_length]
    entry = raw[body_length + 1 :]
    message = signing.signed_message(
        path.read_bytes()[:32],
        manifest.block_count,
        manifest.merkle_root,
        entry[:16],
        struct.unpack("<q", entry[16:24])[0],
        blake3.blake3(raw[:body_length]).digest(),
    )
    signing_key.public_key().verify(entry[24:], message)
    assert len(message) == 155


# --- section 9 and PACKS.md: half-open byte ranges ------------------------------------------------------


def test_the_trailer_checksum_covers_trailer_bytes_0_to_40_half_open(build: Builder) -> None:
    """SPEC 9: checksum = H16(manifest || trailer[0, 40)): bytes 0 through 39, not the checksum itself."""
    data = build((3,)).read_bytes()
    trailer_bytes = data[-64:]
    _, manifest = last_version(data)
    assert trailer_bytes[40:56] == blake3.blake3(manifest + trailer_bytes[:40]).digest()[:16]
    assert trailer_bytes[40:56] != blake3.blake3(manifest + trailer_bytes[:39]).digest()[:16]


def test_pack_checks_cover_the_header_bytes_before_the_check_half_open() -> None:
    """PACKS.md: check4 over frame header [0, 44), check8 over index entry [0, 56), seal over [0, body)."""
    digest = bytes(range(32))
    header = packs.frame_header(digest, 1, 5000, 321)
    assert header[44:48] == blake3.blake3(header[:44]).digest()[:4]
    entry = packs._encode_entry(digest, packs.ChunkLocation(7, 16, 1, 5000, 321))
    assert len(entry) == 64 and entry[56:64] == blake3.blake3(entry[:56]).digest()[:8]
    assert packs.seal_trailer(1234, digest)[8:16] == struct.pack("<Q", 1234)


# --- section 4.2: the AEAD associated data --------------------------------------------------------------


def test_associated_data_is_the_whole_block_header_and_the_global_block_index(
    build: Builder, recipient_key: X25519PrivateKey
) -> None:
    """SPEC 4.2: AD = domain || file id || u64 global index || every header byte up to the body."""
    path = build((2, 2), recipients=(recipient_key,), encrypt=True)
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        index = 3  # version 1's second block: index 1 within its version
        assert reader.entry(index).version == 1
        stored = bytes(reader.record(index))
        header = codec.decode_header(stored, 0, len(stored))
        assert header.parents and header.agent_id  # optional fields present in the header bytes
        data_key = aead.unwrap_data_key(list(reader.manifests[-1].key_wraps), recipient_key, reader.file_id)
        body = stored[header.body_offset :]
        whole_header = stored[: header.body_offset]
        domain_and_file = b"MAIF-block-v1\x00" + reader.file_id
        plain = aead.decrypt_body(data_key, body, domain_and_file + struct.pack("<Q", index) + whole_header)
        assert plain[header.metadata_length :] == sample_block(index).data
        for wrong in (
            domain_and_file + struct.pack("<Q", 1) + whole_header,  # index within the version
            domain_and_file + struct.pack("<Q", index) + whole_header[:18],  # fixed part only
        ):
            with pytest.raises(DecryptionError):
                aead.decrypt_body(data_key, body, wrong)


# --- section 4.2: what "exactly one zstd frame" allows --------------------------------------------------


def test_a_frame_may_carry_a_content_checksum_which_is_then_checked() -> None:
    """SPEC 4.2: the content checksum is optional; when present a reader verifies it."""
    payload = b"abc" * 3000
    for declare_size in (True, False):
        compressor = zstandard.ZstdCompressor(write_checksum=True, write_content_size=declare_size)
        frame = compressor.compress(payload)
        assert decompress_exact(frame, len(payload)) == payload
        assert b"".join(iter_decompressed(frame, len(payload))) == payload
        broken = frame[:-1] + bytes([frame[-1] ^ 1])  # the checksum is the frame's last 4 bytes
        with pytest.raises(FormatError, match="checksum"):
            decompress_exact(broken, len(payload))
        with pytest.raises(FormatError, match="checksum"):
            b"".join(iter_decompressed(broken, len(payload)))


def test_the_writers_frames_declare_their_size_and_carry_no_checksum_or_dictionary() -> None:
    """SPEC 4.2: what this writer emits (readers accept more, within the one-frame rule)."""
    for payload in (b"abc" * 3000, bytes(3 << 20)):
        frame = compress_if_pays(payload)
        assert frame is not None
        parameters = zstandard.get_frame_parameters(frame)
        assert parameters.content_size == len(payload)
        assert not parameters.has_checksum and parameters.dict_id == 0
        assert parameters.window_size <= 2 << 20


@pytest.mark.parametrize(
    "after",
    [b"junk", struct.pack("<II", 0x184D2A50, 4) + b"skip", zstandard.ZstdCompressor().compress(b"two")],
    ids=["junk", "skippable frame", "second frame"],
)
def test_a_pack_frame_like_a_container_payload_is_exactly_one_zstd_frame(after: bytes) -> None:
    """PACKS.md: a compressed chunk's stored bytes are exactly one zstd frame (as in SPEC 4.2); bytes
    after it are refused as damage before any byte is returned (they were ignored before issue 14)."""
    raw = b"abc" * 3000
    frame = zstandard.ZstdCompressor().compress(raw)
    digest = blake3.blake3(raw).digest()
    assert packs.decode_chunk(digest, packs.FLAG_ZSTD, frame, len(raw), "test") == raw
    with pytest.raises(IntegrityError, match="exactly one valid zstd frame"):
        packs.decode_chunk(digest, packs.FLAG_ZSTD, frame + after, len(raw), "test")


# --- section 4.2: shortest form with msgspec's float64-only floats --------------------------------------


@pytest.mark.parametrize(
    ("stored", "canonical"),
    [
        (b"\x81\xa1x\xcb" + struct.pack(">d", 1.5), True),  # float 64: the only float form
        (b"\x81\xa1x\xca" + struct.pack(">f", 1.5), False),  # float 32, exact, still refused
        (b"\x81\xa1x\xcb" + struct.pack(">d", 1.0), True),  # an integral float stays a float
        (b"\x81\xa1x\x01", True),  # positive fixint
        (b"\x81\xa1x\xcc\x01", False),  # uint 8 where a fixint fits
        (b"\x81\xa1x\xd9\x01a", False),  # str 8 where a fixstr fits
    ],
)
def test_shortest_form_means_float64_for_every_float_and_the_smallest_int_and_length(
    stored: bytes, canonical: bool
) -> None:
    """SPEC 4.2: "shortest form" is msgspec's encoding: floats always float 64, the rest smallest."""
    if canonical:
        assert codec.encode_metadata(codec.decode_metadata(stored)) == stored
    else:
        with pytest.raises(FormatError, match="canonical"):
            codec.decode_metadata(stored)


# --- section 4.2: nesting depth --------------------------------------------------------------------------


def test_nesting_depth_counts_every_map_and_array_from_the_top_level_map_as_1() -> None:
    """SPEC 4.2: 32 levels are accepted (an empty innermost map counts), 33 refused as over a limit."""
    depth_max = limits.block_metadata_depth_max
    assert depth_max == 32
    level = b"\x81\xa1a"  # {"a": ...}
    for deepest in (level * depth_max + b"\x01", level * (depth_max - 1) + b"\x80"):
        assert codec.encode_metadata(codec.decode_metadata(deepest)) == deepest
    for too_deep in (level * (depth_max + 1) + b"\x01", level * depth_max + b"\x90"):
        with pytest.raises(LimitExceededError, match="nesting depth"):
            codec.decode_metadata(too_deep)


# --- section 8: key wraps in every version ---------------------------------------------------------------


def test_every_version_repeats_the_key_wraps_and_a_reader_uses_the_last_ones(
    build: Builder, recipient_key: X25519PrivateKey, signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 8: the writer repeats the wraps byte for byte; the reader unwraps the last version's only."""
    path = build((1, 1), recipients=(recipient_key,), encrypt=True)
    with ContainerReader.open(path) as reader:
        first, last = reader.manifests
        assert first.key_wraps == last.key_wraps and len(first.key_wraps) == 1
        first_end = reader.versions[0].end_offset
    data = bytearray(path.read_bytes())
    trailer = layout.decode_trailer(data, first_end - 64)  # read before the manifest changes
    data[trailer.manifest_offset + 129 + 60] ^= 1  # version 0's wrapped key
    manifest = bytes(data[trailer.manifest_offset : first_end - 64])
    data[first_end - 64 : first_end] = layout.encode_trailer(trailer, manifest)
    path.write_bytes(bytes(data))
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        assert reader.block(0).data == sample_block(0).data  # version 0's wraps are never unwrapped
    report = verify_container(path, [signing_key.public_key()], decryption_key=recipient_key)
    # the wraps are signed with their version, and that manifest is linked from the next one
    assert {p.region for p in report.problems} == {"version 0 manifest", "version 1 manifest"}


def resign_last_version(path: Path, body: bytes, keys: tuple[Ed25519PrivateKey, ...]) -> None:
    """Replace the last version's manifest body with ``body``, signed anew by ``keys`` (a hostile signer:
    every signature valid), and reseal its trailer."""
    data = path.read_bytes()
    trailer, raw = last_version(data)
    manifest = layout.decode_manifest(raw, trailer.manifest_offset)
    signatures = []
    for key in keys:
        message = signing.signed_message(
            data[:32], manifest.block_count, manifest.merkle_root, key_id_of(key),
            manifest.committed_at_ns, blake3.blake3(body).digest(),
        )
        signatures.append(layout.Signature(key_id_of(key), manifest.committed_at_ns, key.sign(message)))
    new_manifest = body + layout.encode_signatures(tuple(signatures))
    new_trailer = layout.Trailer(
        trailer.index_offset, trailer.manifest_offset, len(new_manifest), trailer.version_number,
        trailer.block_count, trailer.segment_start,
    )
    path.write_bytes(
        data[: trailer.manifest_offset] + new_manifest + layout.encode_trailer(new_trailer, new_manifest)
    )


def test_a_version_whose_key_wraps_differ_from_the_previous_versions_is_refused(
    build: Builder, recipient_key: X25519PrivateKey, signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 8: a writer MUST copy the key wraps byte for byte, so a verifier MUST refuse a version whose
    wraps differ. Attack: a signer of a later version adds a recipient of its own (the data key wrapped
    for an outsider): every signature holds, and the outsider would read every earlier block."""
    path = build((1, 1), recipients=(recipient_key,), encrypt=True)
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        data_key, file_id = reader._data_key, reader.file_id
    assert data_key is not None
    outsider = X25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
    added = aead.wrap_data_key(data_key, outsider.public_key(), file_id, aead.system_random)
    trailer, raw = last_version(path.read_bytes())
    body = layout.decode_manifest(raw, trailer.manifest_offset).body
    body = body[:128] + bytes([2]) + body[129:] + added.encode()  # recipient count 1 -> 2, one wrap more
    resign_last_version(path, body, (signing_key,))
    with ContainerReader.open(path, decryption_key=outsider) as reader:
        assert reader.block(0).data == sample_block(0).data  # the outsider can read version 0's block
    for decryption_key in (None, recipient_key):
        report = verify_container(path, [signing_key.public_key()], decryption_key=decryption_key)
        assert [(p.region, p.kind) for p in report.problems] == [("version 1 manifest", "format")]
        assert "key wraps" in report.problems[0].reason
        quick = verify_container(path, [signing_key.public_key()], full=False)
        assert [p.region for p in quick.problems] == ["version 1 manifest"]


# --- section 7: zero, duplicate and stripped signatures --------------------------------------------------


def test_a_manifest_with_zero_signatures_parses_but_never_verifies(
    build: Builder, signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 7: s = 0 is well-formed (the reader opens it) and is refused by every verifier."""
    path = build((2,))
    with_signatures(path, ())
    assert last_version(path.read_bytes())[1][129] == 0
    with ContainerReader.open(path) as reader:
        assert reader.versions[0].signer_key_ids == ()
    report = verify_container(path, [signing_key.public_key()])
    assert [(p.region, p.reason) for p in report.problems] == [
        ("version 0 manifest", "no valid signature by a trusted key")
    ]


def test_duplicate_signatures_by_one_key_count_once(build: Builder, signing_key: Ed25519PrivateKey) -> None:
    """SPEC 7: the writer refuses a key twice; a verifier accepts a duplicate entry and counts it once."""
    with pytest.raises(SignatureError, match="twice"):
        build((1,), keys=(signing_key, signing_key), name="twice.maif")
    path = build((1,))
    with ContainerReader.open(path) as reader:
        (entry,) = reader.manifests[-1].signatures
    with_signatures(path, (entry, entry))
    report = verify_container(path, [signing_key.public_key()])
    assert report.ok and report.signer_key_ids == [key_id_of(signing_key)]


def test_the_last_versions_signatures_can_be_stripped_earlier_ones_cannot(
    build: Builder, signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 7 (Signatures outside the body): dropping a co-signature of the last version leaves a file
    that verifies; a verifier that needs both signers must check the last version's signer set itself."""
    trusted = [signing_key.public_key(), other_signing_key.public_key()]
    path = build((1,), keys=(signing_key, other_signing_key))
    with ContainerReader.open(path) as reader:
        first, _ = reader.manifests[-1].signatures
    with_signatures(path, (first,))
    report = verify_container(path, trusted)
    assert report.ok and report.signer_key_ids == [key_id_of(signing_key)]

    # In an earlier version the signatures are inside the next version's previous manifest digest.
    path = build((1, 1), keys=(signing_key, other_signing_key), name="two.maif")
    data = bytearray(path.read_bytes())
    with ContainerReader.open(path) as reader:
        end = reader.versions[0].end_offset
        first, second = reader.manifests[0].signatures
    trailer = layout.decode_trailer(data, end - 64)  # read before the manifest changes
    second_at = data.index(second.signature, 0, end) - 24
    data[second_at : second_at + 88] = layout.SIGNATURE_ENTRY.pack(
        first.key_id, first.signed_at_ns, first.signature
    )
    data[end - 64 : end] = layout.encode_trailer(trailer, bytes(data[trailer.manifest_offset : end - 64]))
    path.write_bytes(bytes(data))
    report = verify_container(path, trusted)
    assert [p.reason for p in report.problems] == ["does not link to the previous version's manifest"]


def test_the_report_names_the_signers_of_each_version_and_a_required_signer_set_is_enforced(
    tmp_path: Path, signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 7: the union of signers over versions cannot express "A and B signed the last version"; the
    report gives each version's signers, and required_signers fails a file whose last version lacks one.
    Each version here is signed by both, then the co-signature on the last one is stripped."""
    a, b = signing_key, other_signing_key
    path = tmp_path / "two-signers.maif"
    with ContainerWriter.create(path) as writer:
        writer.add(sample_block(0))
        writer.commit([a, b])
        writer.add(sample_block(1))
        writer.commit([a, b])
    with ContainerReader.open(path) as reader:
        first, _ = reader.manifests[-1].signatures
    with_signatures(path, (first, first))  # B's signature gone, A's duplicated: A still counts once
    trusted = [a.public_key(), b.public_key()]
    report = verify_container(path, trusted)
    assert report.ok
    assert report.signer_key_ids == [key_id_of(a), key_id_of(b)]  # the union: B signed version 0
    assert report.signers_by_version == [[key_id_of(a), key_id_of(b)], [key_id_of(a)]]
    assert report.last_version_signer_key_ids == [key_id_of(a)]

    assert verify_container(path, trusted, required_signers=[a.public_key()]).ok
    refused = verify_container(path, [a.public_key()], required_signers=[a.public_key(), b.public_key()])
    assert not refused.ok  # b is trusted because it is required, and it did not sign the last version
    assert [(p.region, p.kind) for p in refused.problems] == [("version 1 manifest", "signature")]
    assert key_id_of(b).hex() in refused.problems[0].reason


# --- section 4.2 / 8: ENCRYPTED records in a file without recipients --------------------------------------


def encrypted_without_recipients(path: Path, key: Ed25519PrivateKey) -> Path:
    sealed = bytes(aead.NONCE_BYTES) + bytes(16 + aead.TAG_BYTES)
    return signed_container(path, [record(sealed, storage_flags=ENCRYPTED, payload_length=16)], key)


def test_an_encrypted_record_without_recipients_is_never_written_and_never_readable(
    tmp_path: Path, recipient_key: X25519PrivateKey, signing_key: Ed25519PrivateKey
) -> None:
    """SPEC 8: a writer refuses to encrypt without recipients; a reader cannot decrypt such a record."""
    writer = ContainerWriter.create(tmp_path / "plain.maif")
    with writer, pytest.raises(CryptoError, match="no recipients"):
        writer.add(sample_block(0), encrypt=True)
    path = encrypted_without_recipients(tmp_path / "hostile.maif", signing_key)
    with ContainerReader.open(path) as reader, pytest.raises(CryptoError, match="no decryption key"):
        reader.block(0)
    report = verify_container(path, [signing_key.public_key()], decryption_key=recipient_key)
    assert report.bad_blocks() == [0]


def test_verification_without_a_key_reports_an_encrypted_record_in_a_file_without_recipients(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = encrypted_without_recipients(tmp_path / "hostile.maif", signing_key)
    assert verify_container(path, [signing_key.public_key()]).bad_blocks() == [0]


# --- section 10: the torn-tail search is not aligned -----------------------------------------------------


def test_the_torn_tail_search_finds_a_trailer_at_any_byte_offset(build: Builder) -> None:
    """SPEC 10: every byte offset is a candidate; nothing in the format aligns a version's end."""
    path = build((1,), size=41)
    data = path.read_bytes()
    trailer_offset = len(data) - layout.TRAILER.size
    assert trailer_offset % 8 != 0
    for tail in (b"x", b"xyz", data[-64:-1]):  # any length, even most of a trailer
        path.write_bytes(data + tail)
        with ContainerReader.open(path) as reader:
            assert (reader.valid_end, reader.torn_tail_bytes) == (len(data), len(tail))
