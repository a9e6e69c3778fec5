"""`load_or_create_seed_key` when several processes start at once (several `maif worker` on one machine
sharing the default key file): every one gets the same key, and none reads a half-written file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CHILD = """
import sys, time
from pathlib import Path
from maif.format.signing import load_or_create_seed_key
from maif.format.signing import key_id
start = float(sys.argv[2])
while time.time() < start:
    pass
key = load_or_create_seed_key(Path(sys.argv[1]), "worker key")
print(key_id(key.public_key()).hex())
"""


def test_processes_racing_to_create_the_key_all_get_the_one_key(tmp_path: Path) -> None:
    import time

    for round_number in range(5):
        path = tmp_path / f"round-{round_number}" / "worker.key"
        start = time.time() + 1.0
        children = [
            subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(start)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(8)
        ]
        outputs = [child.communicate(timeout=60) for child in children]
        failures = [error for child, (_, error) in zip(children, outputs, strict=True) if child.returncode]
        assert not failures, failures[0]
        assert len({output.strip() for output, _ in outputs}) == 1
        assert path.stat().st_mode & 0o777 == 0o600
        assert [item.name for item in path.parent.iterdir()] == ["worker.key"]  # no temporary file left


def test_a_creation_cut_short_leaves_no_key_file_behind(tmp_path: Path, monkeypatch: Any) -> None:
    """The disk fills (or the process dies) while the new key is written: before, an empty key file
    stayed under the final name and every later start failed on it. Now the key appears under its name
    only complete, so the next start creates it."""
    import pytest

    from maif.errors import CryptoError
    from maif.format import signing

    path = tmp_path / "config" / "worker.key"
    real_write = os.write

    def disk_full(descriptor: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(signing.os, "write", disk_full)
    with pytest.raises(CryptoError, match="No space left"):
        signing.load_or_create_seed_key(path, "worker key")
    monkeypatch.setattr(signing.os, "write", real_write)
    assert not path.exists() and list(path.parent.iterdir()) == []
    key = signing.load_or_create_seed_key(path, "worker key")
    assert signing.load_or_create_seed_key(path, "worker key").public_key() == key.public_key()
