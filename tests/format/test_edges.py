"""Edge cases: hostile tails, damaged middles, bounds, wrong keys, lazy imports, deterministic randomness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif import limits
from maif.errors import BackendError, CryptoError, FormatError, LimitExceededError, UnsupportedVersionError
from maif.format import aead, layout
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter, repair_container, verify_container

from .conftest import Builder


def test_a_tail_full_of_fake_trailer_magic_is_bounded(build: Builder, tmp_path: Path) -> None:
    data = build((1,)).read_bytes()
    hostile = tmp_path / "hostile.maif"
    hostile.write_bytes(data + layout.TRAILER_MAGIC * (limits.trailer_candidates_max + 10))
    with pytest.raises(LimitExceededError):
        ContainerReader.open(hostile)
    report = verify_container(hostile, [])
    assert not report.ok and report.problems[0].region == "file"


def test_damage_between_versions_is_an_error_not_a_torn_tail(build: Builder, tmp_path: Path) -> None:
    path = build((1, 1, 1))
    with ContainerReader.open(path) as reader:
        first_trailer_end = reader.versions[0].end_offset
    data = bytearray(path.read_bytes())
    data[first_trailer_end - 1] ^= 0x01  # the first version's trailer magic
    damaged = tmp_path / "damaged.maif"
    damaged.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="trailer of version 0"):
        ContainerReader.open(damaged)
    with pytest.raises(FormatError):
        repair_container(damaged)
    assert damaged.read_bytes() == bytes(data)  # repair refused and left the evidence alone


def test_an_unknown_major_version_is_refused(build: Builder, tmp_path: Path) -> None:
    data = bytearray(build((1,)).read_bytes())
    data[8] = 2
    path = tmp_path / "v2.maif"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedVersionError):
        ContainerReader.open(path)


def test_full_verification_with_the_wrong_key_reports_every_encrypted_block(
    build: Builder, signing_key: Ed25519PrivateKey, recipient_key: X25519PrivateKey
) -> None:
    path = build((3,), recipients=(recipient_key,), encrypt=True)
    report = verify_container(path, [signing_key.public_key()], decryption_key=X25519PrivateKey.generate())
    assert report.bad_blocks() == [0, 1, 2]
    assert verify_container(path, [signing_key.public_key()]).ok  # integrity needs no decryption key


def test_a_recipient_among_several_can_decrypt(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    keys = [X25519PrivateKey.generate() for _ in range(3)]
    path = tmp_path / "multi.maif"
    with ContainerWriter.create(path, recipients=[key.public_key() for key in keys]) as writer:
        writer.add(MAIFBlock(id="s", data=b"for three readers"), encrypt=True)
        writer.commit([signing_key])
    for key in keys:
        with ContainerReader.open(path, decryption_key=key) as reader:
            assert reader.block(0).data == b"for three readers"


def test_appending_encrypted_blocks_needs_the_decryption_key(
    build: Builder, signing_key: Ed25519PrivateKey, recipient_key: X25519PrivateKey
) -> None:
    path = build((1,), recipients=(recipient_key,), encrypt=True)
    with ContainerWriter.append(path, trusted_keys=[signing_key.public_key()]) as writer:
        with pytest.raises(CryptoError):
            writer.add(MAIFBlock(data=b"x"), encrypt=True)
        writer.add(MAIFBlock(id="plain", data=b"x"))
        writer.commit([signing_key])
    with ContainerWriter.append(
        path, trusted_keys=[signing_key.public_key()], decryption_key=recipient_key
    ) as writer:
        writer.add(MAIFBlock(id="secret", data=b"y"), encrypt=True)
        writer.commit([signing_key])
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        assert reader.block(reader.find("secret")).data == b"y"
    assert verify_container(path, [signing_key.public_key()], decryption_key=recipient_key).ok


def test_create_refuses_an_existing_file_and_bad_arguments(build: Builder, tmp_path: Path) -> None:
    path = build((1,))
    with pytest.raises(BackendError):  # the file exists: create never overwrites
        ContainerWriter.create(path)
    with pytest.raises(FormatError):
        ContainerWriter.create(tmp_path / "x.maif", file_id=b"short")
    with pytest.raises(FormatError):
        ContainerWriter.create(tmp_path / "y.maif", compression_threshold=-1)


def test_a_closed_writer_refuses_more_work(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    writer = ContainerWriter.create(tmp_path / "closed.maif")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(FormatError):
        writer.add(MAIFBlock(data=b"x"))
    with pytest.raises(FormatError):
        writer.commit([signing_key])


def test_manifest_decoder_bounds_counts_before_reading() -> None:
    body = layout.encode_manifest_body(0, 0, 32, bytes(32), bytes(32), bytes(32), 0, ())
    with pytest.raises(LimitExceededError):
        layout.decode_manifest(body + bytes([limits.manifest_signatures_max + 1]), 0)
    hostile_wraps = body[:-1] + bytes([limits.recipients_max + 1]) + b"\x00"
    with pytest.raises(LimitExceededError):
        layout.decode_manifest(hostile_wraps, 0)
    with pytest.raises(FormatError):
        layout.decode_manifest(body + b"\x01", 0)  # one signature announced, none present


def test_unsafe_deterministic_random_warns_and_repeats() -> None:
    with pytest.warns(UserWarning, match="tests only"):
        first = aead.UnsafeDeterministicRandom(b"seed")
    with pytest.warns(UserWarning):
        second = aead.UnsafeDeterministicRandom(b"seed")
    assert first(12) + first(20) == second(32)


def test_importing_maif_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, maif, maif.format\n"
        "heavy = [m for m in ('numpy', 'cryptography', 'zstandard', 'msgspec', 'maif.format.container')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
