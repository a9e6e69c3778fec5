"""Shared fixtures for the container tests: keys, and small signed files built through the public API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.container import ContainerWriter


@pytest.fixture(scope="session")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="session")
def other_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


@pytest.fixture(scope="session")
def recipient_key() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes(range(2, 34)))


def sample_block(index: int, size: int = 40) -> MAIFBlock:
    return MAIFBlock(
        id=f"block-{index}",
        block_type=MAIFBlockType.TEXT if index % 2 else MAIFBlockType.EMBEDDING,
        data=bytes((index * 7 + i) % 251 for i in range(size)),
        metadata={"n": index} if index % 3 == 0 else {},
        timestamp=1_700_000_000.0 + index,
        agent_id="agent-1",
        parents=(f"block-{index - 1}",) if index else (),
    )


Builder = Callable[..., Path]


@pytest.fixture
def build(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Builder:
    """build(versions=[3, 2], encrypt=False, name="a.maif", size=40) -> path of a signed container."""

    def builder(
        versions: tuple[int, ...] = (3,),
        *,
        name: str = "a.maif",
        size: int = 40,
        recipients: tuple[X25519PrivateKey, ...] = (),
        encrypt: bool = False,
        keys: tuple[Ed25519PrivateKey, ...] | None = None,
        file_id: bytes | None = None,
    ) -> Path:
        path = tmp_path / name
        signers = keys or (signing_key,)
        counter = 0
        writer = ContainerWriter.create(
            path, recipients=[r.public_key() for r in recipients], file_id=file_id
        )
        with writer:
            for count in versions:
                for _ in range(count):
                    writer.add(sample_block(counter, size), encrypt=encrypt)
                    counter += 1
                writer.commit(list(signers))
        return path

    return builder
