"""Coverage-guided fuzz target for the .maif reader, verifier and repair (atheris; not part of the tests).

Run:  .venv/bin/python fuzz/fuzz_container.py -max_total_time=600 [corpus_dir]
Any exception that is not a MAIFError is a finding, and so is a verification report that differs between
the compiled core and the pure-Python reference (ADR 0090). Seeds: a small signed file, plain and
encrypted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from maif.errors import MAIFError
    from maif.format import native
    from maif.format.block import MAIFBlock
    from maif.format.codec import decode_block
    from maif.format.container import ContainerReader, ContainerWriter
    from maif.format.repair import repair_container
    from maif.format.verify import verify_container

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RECIPIENT_KEY = X25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
WORK = Path(tempfile.mkdtemp(prefix="maif-fuzz-"))


def seed_corpus(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for encrypt in (False, True):
        path = WORK / f"seed-{encrypt}.maif"
        with ContainerWriter.create(path, recipients=[RECIPIENT_KEY.public_key()]) as writer:
            for index, size in enumerate((300, 5000, 20)):
                writer.add(
                    MAIFBlock(
                        id=f"b{index}",
                        data=bytes(range(256)) * (size // 256),
                        agent_id="a",
                        metadata={"i": index},
                    ),
                    encrypt=encrypt,
                )
                if index == 1:
                    writer.commit([SIGNING_KEY])
            writer.commit([SIGNING_KEY])
        (directory / path.name).write_bytes(path.read_bytes())
        path.unlink()


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(MAIFError):
        decode_block(data)
    path = WORK / "input.maif"
    path.write_bytes(data)
    report = verify_container(path, [SIGNING_KEY.public_key()], decryption_key=RECIPIENT_KEY)
    core = native._core
    if core is not None:
        native._core = None  # the same input through the pure-Python reference
        try:
            reference = verify_container(path, [SIGNING_KEY.public_key()], decryption_key=RECIPIENT_KEY)
        finally:
            native._core = core
        if (report.ok, report.problems) != (reference.ok, reference.problems):
            raise AssertionError(f"compiled core {report.problems} != reference {reference.problems}")
    try:
        with ContainerReader.open(path, decryption_key=RECIPIENT_KEY) as reader:
            for index in range(len(reader)):
                with contextlib.suppress(MAIFError):
                    reader.block(index)
    except MAIFError:
        pass
    with contextlib.suppress(MAIFError):
        repair_container(path)


def main() -> None:
    corpus = Path(sys.argv[-1]) if len(sys.argv) > 1 and not sys.argv[-1].startswith("-") else WORK / "corpus"
    seed_corpus(corpus)
    if str(corpus) not in sys.argv:
        sys.argv.append(str(corpus))
    os.environ.setdefault("MAIF_FUZZ", "1")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
