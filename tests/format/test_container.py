"""The container writer and reader: round trips, versions, proofs, random access, zero copy, compression."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif.errors import BackendError, BlockNotFoundError, CryptoError, IntegrityError, SignatureError
from maif.format import layout, merkle, signing
from maif.format.block import MAIFBlock
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.verify import verify_container

from .conftest import Builder, sample_block

payloads = st.one_of(st.binary(max_size=600), st.integers(0, 20_000).map(lambda n: b"abc" * n))


@given(st.lists(st.tuples(payloads, st.booleans()), min_size=0, max_size=12), st.integers(0, 3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_round_trip_of_any_blocks_plain_compressed_or_encrypted(
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    recipient_key: X25519PrivateKey,
    items: list[tuple[bytes, bool]],
    splits: int,
) -> None:
    path = tmp_path / f"rt-{os.urandom(4).hex()}.maif"
    blocks = [MAIFBlock(data=data, metadata={"i": i}, agent_id="a") for i, (data, _) in enumerate(items)]
    with ContainerWriter.create(path, recipients=[recipient_key.public_key()]) as writer:
        for i, (block, (_, encrypt)) in enumerate(zip(blocks, items, strict=True)):
            assert writer.add(block, encrypt=encrypt) == i
            if splits and i % (splits + 1) == splits:
                writer.commit([signing_key])
        writer.commit([signing_key])
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        assert len(reader) == len(blocks)
        assert reader.torn_tail_bytes == 0
        for i, block in enumerate(blocks):
            assert reader.block(i) == block
            assert bytes(reader.payload_view(i)) == block.data
            assert reader.find(block.id) == i
    report = verify_container(path, [signing_key.public_key()], decryption_key=recipient_key)
    assert report.ok, report.problems
    path.unlink()


def test_raw_payloads_are_zero_copy_views_of_the_mapping(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    path = tmp_path / "z.maif"
    data = os.urandom(50_000)
    with ContainerWriter.create(path) as writer:
        writer.add(MAIFBlock(data=data))
        writer.commit([signing_key])
    with ContainerReader.open(path) as reader:
        view = reader.payload_view(0)
        assert isinstance(view.obj, mmap.mmap)
        assert view == data
        del view


def test_compression_is_kept_only_when_it_pays(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "c.maif"
    compressible, incompressible, small = b"a" * 100_000, os.urandom(100_000), b"a" * 100
    with ContainerWriter.create(path, compression_threshold=4096) as writer:
        for data in (compressible, incompressible, small):
            writer.add(MAIFBlock(data=data))
        writer.commit([signing_key])
    with ContainerReader.open(path) as reader:
        lengths = [reader.entry(i).length for i in range(3)]
        assert lengths[0] < 1000  # compressed
        assert 100_000 < lengths[1] < 100_100  # stored raw
        assert 100 < lengths[2] < 200  # under the threshold: raw
        assert isinstance(reader.payload_view(1).obj, mmap.mmap)
        assert bytes(reader.payload_view(0)) == compressible


def test_small_block_overhead_is_within_budget(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "o.maif"
    count = 1000
    with ContainerWriter.create(path) as writer:
        for _ in range(count):
            writer.add(MAIFBlock(data=os.urandom(1024), agent_id="agent-1"))
        writer.commit([signing_key])
    overhead_per_block = (path.stat().st_size - count * 1024) / count
    assert overhead_per_block <= 96


def test_versions_stay_verifiable_and_proofs_hold(build: Builder, signing_key: Ed25519PrivateKey) -> None:
    path = build((3, 0, 4, 1))
    with ContainerReader.open(path) as reader:
        versions = reader.versions
        assert [v.block_count for v in versions] == [3, 3, 7, 8]
        leaves = reader.leaf_hashes()
        for old in range(4):
            for new in range(old, 4):
                proof = reader.consistency_proof(old, new)
                merkle.verify_consistency(
                    versions[old].block_count,
                    versions[new].block_count,
                    versions[old].merkle_root,
                    versions[new].merkle_root,
                    proof,
                )
        for version in range(4):
            for index in range(versions[version].block_count):
                proof = reader.inclusion_proof(index, version)
                merkle.verify_inclusion(
                    leaves[index], index, versions[version].block_count, proof, versions[version].merkle_root
                )


def test_a_forged_consistency_proof_is_refused(build: Builder) -> None:
    path = build((3, 4))
    with ContainerReader.open(path) as reader:
        old, new = reader.versions
        proof = reader.consistency_proof(0, 1)
        forged = [bytes(32), *proof[1:]]
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(
                old.block_count, new.block_count, old.merkle_root, new.merkle_root, forged
            )
        with pytest.raises(IntegrityError):
            merkle.verify_consistency(old.block_count, new.block_count, bytes(32), new.merkle_root, proof)


def test_every_earlier_version_verifies_after_appends(build: Builder, signing_key: Ed25519PrivateKey) -> None:
    path = build((2,))
    for round_number in range(3):
        with ContainerWriter.append(path, trusted_keys=[signing_key.public_key()]) as writer:
            writer.add(sample_block(100 + round_number))
            info = writer.commit([signing_key])
        assert info.number == round_number + 1
    data = path.read_bytes()
    with ContainerReader.open(path) as reader:
        ends = [v.end_offset for v in reader.versions]
    for number, end in enumerate(ends):
        prefix = path.with_name(f"v{number}.maif")
        prefix.write_bytes(data[:end])
        report = verify_container(prefix, [signing_key.public_key()])
        assert report.ok, report.problems
        assert len(report.versions) == number + 1


def test_append_refuses_untrusted_or_damaged_files(
    build: Builder, other_signing_key: Ed25519PrivateKey
) -> None:
    path = build((2,))
    with pytest.raises(IntegrityError):
        ContainerWriter.append(path, trusted_keys=[other_signing_key.public_key()])
    with open(path, "ab") as handle:
        handle.write(b"torn")
    with pytest.raises(IntegrityError):
        ContainerWriter.append(path, trusted_keys=[other_signing_key.public_key()])


def test_closing_without_commit_keeps_the_file_at_its_last_version(
    build: Builder, signing_key: Ed25519PrivateKey
) -> None:
    path = build((2,))
    before = path.read_bytes()
    with ContainerWriter.append(path, trusted_keys=[signing_key.public_key()]) as writer:
        writer.add(sample_block(50))
    assert path.read_bytes() == before


def test_a_second_writer_is_refused_while_one_is_open(build: Builder, signing_key: Ed25519PrivateKey) -> None:
    path = build((1,))
    with ContainerWriter.append(path, trusted_keys=[signing_key.public_key()]), pytest.raises(BackendError):
        ContainerWriter.append(path, trusted_keys=[signing_key.public_key()])


def test_commit_requires_distinct_signers_and_co_signing_works(
    build: Builder, signing_key: Ed25519PrivateKey, other_signing_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    with ContainerWriter.create(tmp_path / "s.maif") as writer:
        with pytest.raises(SignatureError):
            writer.commit([])
        with pytest.raises(SignatureError):
            writer.commit([signing_key, signing_key])
    path = build((2,), keys=(signing_key, other_signing_key), name="co.maif")
    for trusted in ([signing_key], [other_signing_key], [signing_key, other_signing_key]):
        report = verify_container(path, [k.public_key() for k in trusted])
        assert report.ok
        assert report.signer_key_ids == [signing.key_id(k.public_key()) for k in trusted]


def test_find_and_entry(build: Builder) -> None:
    path = build((3, 2))
    with ContainerReader.open(path) as reader:
        assert reader.find("block-4") == 4
        with pytest.raises(BlockNotFoundError):
            reader.find("missing")
        entry = reader.entry(4)
        assert entry.version == 1 and entry.index == 4
        with pytest.raises(IndexError):
            reader.entry(5)


def test_encryption_requires_recipients(tmp_path: Path) -> None:
    with ContainerWriter.create(tmp_path / "e.maif") as writer, pytest.raises(CryptoError):
        writer.add(MAIFBlock(data=b"secret"), encrypt=True)


def test_encrypted_payload_is_not_in_the_file_in_clear(
    build: Builder, recipient_key: X25519PrivateKey
) -> None:
    path = build((2,), size=4000, recipients=(recipient_key,), encrypt=True)
    assert sample_block(0, 4000).data[:64] not in path.read_bytes()
    with ContainerReader.open(path, decryption_key=recipient_key) as reader:
        assert reader.block(1) == sample_block(1, 4000)


def test_signing_keys_round_trip_through_pem_files(tmp_path: Path) -> None:
    key = signing.generate_signing_key()
    signing.save_private_key(key, tmp_path / "k.pem")
    signing.save_public_key(key.public_key(), tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    loaded = signing.load_private_key(tmp_path / "k.pem")
    assert signing.key_id(loaded.public_key()) == signing.key_id(key.public_key())
    assert signing.key_id(signing.load_public_key(tmp_path / "k.pub")) == signing.key_id(key.public_key())
    assert len(signing.key_id(key.public_key())) == 16
    (tmp_path / "bad.pem").write_bytes(b"not a key")
    with pytest.raises(CryptoError):
        signing.load_private_key(tmp_path / "bad.pem")
    with pytest.raises(CryptoError):
        signing.load_public_key(tmp_path / "k.pem")
    with pytest.raises(CryptoError):
        signing.load_private_key(tmp_path / "missing.pem")


def test_layout_constants_match_the_spec() -> None:
    assert layout.FILE_HEADER.size == 32
    assert layout.INDEX_ENTRY.size == 40
    assert layout.TRAILER.size == 64
    assert layout.MANIFEST_FIXED.size == 129
    assert len(signing.signed_message(bytes(32), 0, bytes(32), bytes(16), 0, bytes(32))) == 155
