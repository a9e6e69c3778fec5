"""Regenerate the golden vectors: tests/format/golden/small.maif and expected.json.

Fixed Ed25519 and X25519 keys, a fixed file id, a fixed clock and UnsafeDeterministicRandom (test-only)
make the output byte-for-byte reproducible. Run from the repository root:
    .venv/bin/python tests/format/golden/make_golden.py
Only regenerate when the format version changes; test_golden.py checks the committed files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from maif.format.aead import UnsafeDeterministicRandom
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.container import ContainerReader, ContainerWriter

HERE = Path(__file__).parent
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("11" * 32))
RECIPIENT_KEY = X25519PrivateKey.from_private_bytes(bytes.fromhex("22" * 32))
FILE_ID = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
CLOCK_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z

BLOCKS = [
    (
        MAIFBlock(
            id="0195f6a0-0000-7000-8000-000000000001",
            block_type=MAIFBlockType.TEXT,
            data=b"hello, maif",
            timestamp=1_767_225_600.0,
            agent_id="agent-1",
        ),
        False,
    ),
    (
        MAIFBlock(
            id="note-2",
            block_type="CUST",
            data=b"\x00\x01\x02",
            metadata={"lang": "en", "n": 2},
            timestamp=1_767_225_601.5,
            agent_id="agent-1",
            version="2",
            parents=("0195f6a0-0000-7000-8000-000000000001",),
        ),
        False,
    ),
    (
        MAIFBlock(
            id="secret-3", block_type=MAIFBlockType.EMBEDDING, data=b"\x10" * 16, timestamp=1_767_225_602.0
        ),
        True,
    ),
]


def build(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random = UnsafeDeterministicRandom(b"maif golden vectors v1")
    with ContainerWriter.create(
        path,
        file_id=FILE_ID,
        compression_threshold=1 << 30,
        recipients=[RECIPIENT_KEY.public_key()],
        _random=random,
        _clock_ns=lambda: CLOCK_NS,
    ) as writer:
        for block, encrypt in BLOCKS:
            writer.add(block, encrypt=encrypt)
        writer.commit([SIGNING_KEY])


def expected_fields(path: Path) -> dict[str, object]:
    with ContainerReader.open(path) as reader:
        manifest = reader.manifests[-1]
        return {
            "file_size": path.stat().st_size,
            "file_blake3": blake3.blake3(path.read_bytes()).hexdigest(),
            "file_header": reader.file_header.hex(),
            "records": [[reader.entry(i).offset, reader.entry(i).length] for i in range(len(reader))],
            "chained_digests": [reader.digest(i).hex() for i in range(len(reader))],
            "merkle_root": manifest.merkle_root.hex(),
            "index_digest": manifest.index_digest.hex(),
            "manifest_body_digest": manifest.body_digest.hex(),
            "signer_key_id": manifest.signatures[0].key_id.hex(),
            "signature": manifest.signatures[0].signature.hex(),
        }


if __name__ == "__main__":
    target = HERE / "small.maif"
    target.unlink(missing_ok=True)
    build(target)
    (HERE / "expected.json").write_text(json.dumps(expected_fields(target), indent=2) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes) and expected.json")
