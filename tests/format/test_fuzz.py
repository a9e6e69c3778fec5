"""Hostile inputs: mutated and random container bytes never raise anything but a typed MAIF error.

Each example writes the bytes to a file, opens, verifies (quick and full), reads every block, asks for
proofs and repairs. Any exception that is not a MAIFError (or IndexError from our own API misuse guard)
is a bug. Longer campaigns: fuzz/fuzz_container.py (atheris), not part of the test run.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maif.errors import MAIFError
from maif.format import layout
from maif.format.container import ContainerReader, ContainerWriter
from maif.format.repair import repair_container
from maif.format.verify import verify_container

from .conftest import sample_block


def exercise(data: bytes, trusted: list[Ed25519PublicKey], recipient: X25519PrivateKey | None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.maif"
        path.write_bytes(data)
        verify_container(path, trusted, full=True, decryption_key=recipient)
        verify_container(path, trusted, full=False)
        try:
            with ContainerReader.open(path, decryption_key=recipient) as reader:
                for index in range(len(reader)):
                    for action in (reader.block, reader.payload_view, reader.entry, reader.check_block):
                        with contextlib.suppress(MAIFError):
                            action(index)
                    with contextlib.suppress(MAIFError):
                        for _ in reader.stream_block(index).chunks:
                            pass
                    reader.release(index)
                if reader.versions:
                    if reader.versions[-1].block_count:
                        reader.inclusion_proof(0)
                    reader.consistency_proof(0)
                with contextlib.suppress(MAIFError):
                    reader.find("block-1")
        except MAIFError:
            pass
        with contextlib.suppress(MAIFError):
            repair_container(path)


@pytest.fixture(scope="module")
def base_files(
    tmp_path_factory: pytest.TempPathFactory, signing_key: Ed25519PrivateKey, recipient_key: X25519PrivateKey
) -> list[bytes]:
    files = []
    for encrypt in (False, True):
        path = tmp_path_factory.mktemp("fuzz") / "base.maif"
        with ContainerWriter.create(path, recipients=[recipient_key.public_key()]) as writer:
            for index, size in enumerate((300, 5000, 20)):
                writer.add(sample_block(index, size), encrypt=encrypt)
                if index == 1:
                    writer.commit([signing_key])
            writer.commit([signing_key])
        files.append(path.read_bytes())
    return files


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_containers_raise_only_typed_errors(
    base_files: list[bytes],
    signing_key: Ed25519PrivateKey,
    recipient_key: X25519PrivateKey,
    data: st.DataObject,
) -> None:
    original = bytearray(base_files[data.draw(st.integers(0, 1))])
    mutations = data.draw(
        st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    )
    for position, value in mutations:
        original[position] = value
    cut = data.draw(st.integers(0, len(original)))
    mutant = bytes(original[:cut]) if data.draw(st.booleans()) else bytes(original)
    exercise(mutant, [signing_key.public_key()], recipient_key)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_random_bytes_behind_a_valid_header_raise_only_typed_errors(
    body: bytes, with_trailer_magic: bool
) -> None:
    data = layout.encode_file_header(bytes(16)) + body
    if with_trailer_magic:
        data += layout.TRAILER_MAGIC
    exercise(data, [], None)
