"""Durable whole-file replacement (maif.durable) and the modules that keep their small files with it.

Each writer gets its own temporary file, a failure leaves the old file and no temporary behind, and the
rename is made durable by an fsync of the directory. The credential store used to miss the last step and
shared one temporary name between writers; the tests below failed on it.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import argon2
import pytest

from maif import durable
from maif.errors import StorageError
from maif.security.credentials import CredentialStore

FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def _leftovers(directory: Path, name: str) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if entry.name != name)


def test_concurrent_writers_of_one_path_each_land_whole(tmp_path: Path) -> None:
    target = tmp_path / "file"
    payloads = [bytes([n]) * (256 << 10) for n in range(8)]
    errors: list[BaseException] = []

    def write(payload: bytes) -> None:
        try:
            for _ in range(25):
                durable.write_atomically(target, payload)
        except BaseException as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(payload,)) for payload in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert _leftovers(tmp_path, "file") == []


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file"
    durable.write_atomically(target, b"old")

    def full_disk(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError) as raised:
        durable.write_atomically(target, b"new" * 1000)
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path, "file") == []


def test_the_rename_is_made_durable_and_the_mode_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_directory", lambda directory: synced.append(Path(directory)))
    durable.write_atomically(tmp_path / "secret", b"x", mode=0o600)
    assert synced == [tmp_path]
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600


def test_a_memoryview_of_any_format_is_written_as_its_bytes(tmp_path: Path) -> None:
    import array

    words = array.array("I", range(1000))
    durable.write_atomically(tmp_path / "words", memoryview(words))
    assert (tmp_path / "words").read_bytes() == words.tobytes()


def _credentials(n: int) -> CredentialStore:
    store = CredentialStore(hasher=FAST_HASHER)
    store.set_password(f"user-{n}", "correct horse battery staple")
    return store


def test_credential_saves_sync_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the directory fsync a power loss can bring back the previous file: a revoked key lives."""
    synced: list[Path] = []
    monkeypatch.setattr(durable, "fsync_directory", lambda directory: synced.append(Path(directory)))
    _credentials(0).save(tmp_path / "credentials.json")
    assert synced == [tmp_path]
    assert (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600


def test_concurrent_credential_saves_never_fail_or_mix(tmp_path: Path) -> None:
    target = tmp_path / "credentials.json"
    stores = [_credentials(n) for n in range(4)]
    errors: list[BaseException] = []

    def save(store: CredentialStore) -> None:
        try:
            for _ in range(50):
                store.save(target)
        except BaseException as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=save, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    loaded = CredentialStore.load(target, hasher=FAST_HASHER)
    assert len(loaded._passwords) == 1
    assert _leftovers(tmp_path, "credentials.json") == []


def test_a_credential_save_that_fails_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot save credentials"):
        _credentials(0).save(tmp_path / "missing-directory" / "credentials.json")
