"""The keystore keeps keys secret at rest, refuses every tampered or foreign input, and honours time.

Attacks here are real: bytes of the encrypted file are flipped, files truncated, wrong master keys
tried, sealed keys swapped between agents, signatures replayed outside their key's window.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.errors import ConfigError, CryptoError, DecryptionError, MAIFError, SignatureError
from maif.security.keys import (
    KeyStore,
    Signer,
    generate_master_key,
    key_id_of,
    master_key_from_environment,
    raw_public_key,
)


class FakeClock:
    """A clock the test moves by hand, so validity windows are exact."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def master_key() -> bytes:
    return generate_master_key()


@pytest.fixture
def store(tmp_path: Path, master_key: bytes, clock: FakeClock) -> KeyStore:
    return KeyStore.open(tmp_path / "keys.maifks", master_key, clock=clock)


def _sign(store: KeyStore, agent_id: str, data: bytes) -> tuple[bytes, bytes]:
    signer = store.signer(agent_id)
    return signer.sign(data), signer.key_id


def test_keys_survive_reopen_and_sign_verifiably(tmp_path: Path, master_key: bytes, clock: FakeClock) -> None:
    store = KeyStore.open(tmp_path / "k", master_key, clock=clock)
    info = store.create_key("agent-a")
    signature, key_id = _sign(store, "agent-a", b"block bytes")
    assert key_id == info.key_id == key_id_of(info.public_key)
    reopened = KeyStore.open(tmp_path / "k", master_key, clock=clock)
    assert reopened.keys("agent-a") == [info]
    reopened.verify("agent-a", b"block bytes", signature, key_id=key_id, signed_at=clock.now)
    signer = reopened.signer("agent-a")
    assert isinstance(signer, Signer)
    assert raw_public_key(signer.public_key) == info.public_key


def test_private_key_never_appears_in_the_file(store: KeyStore) -> None:
    store.create_key("agent-a")
    signer = store.signer("agent-a")
    private_raw = signer._private_key.private_bytes_raw()  # type: ignore[attr-defined]
    data = store.path.read_bytes()
    assert private_raw not in data
    assert b"agent-a" not in data  # the index is encrypted too
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_wrong_master_key_is_a_typed_error(tmp_path: Path, store: KeyStore) -> None:
    store.create_key("agent-a")
    with pytest.raises(DecryptionError, match="master key"):
        KeyStore.open(store.path, generate_master_key())
    with pytest.raises(CryptoError):
        KeyStore.open(store.path, b"short")


def test_every_flipped_byte_of_the_keystore_is_refused(
    tmp_path: Path, store: KeyStore, master_key: bytes
) -> None:
    store.create_key("agent-a")
    original = store.path.read_bytes()
    target = tmp_path / "flipped"
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        target.write_bytes(bytes(damaged))
        with pytest.raises(MAIFError):
            KeyStore.open(target, master_key)


def test_truncated_keystore_is_refused(tmp_path: Path, store: KeyStore, master_key: bytes) -> None:
    store.create_key("agent-a")
    original = store.path.read_bytes()
    target = tmp_path / "cut"
    for length in (0, 8, 37, 38, 54, len(original) - 1):
        target.write_bytes(original[:length])
        with pytest.raises(MAIFError):
            KeyStore.open(target, master_key)


def test_sealed_key_moved_to_another_agent_does_not_open(store: KeyStore) -> None:
    """AEAD associated data binds agent id, key id and public key: a swapped sealed key is refused."""
    store.create_key("agent-a")
    store.create_key("agent-b")
    with store._mutate() as records:  # an insider with the index key rewrites the records
        first, second = records
        records[0] = type(first)(
            **{
                **_fields(first),
                "sealed_private_key": second.sealed_private_key,
                "wrapped_data_key": second.wrapped_data_key,
            }
        )
    with pytest.raises(DecryptionError):
        store.signer("agent-a")
    store.signer("agent-b")


def _fields(record: object) -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(record)  # type: ignore[arg-type]


def test_revoked_key_stops_signing_and_refuses_later_signatures(store: KeyStore, clock: FakeClock) -> None:
    info = store.create_key("agent-a")
    signer = store.signer("agent-a")
    early = signer.sign(b"before")
    signed_early = clock.now
    clock.now += 10
    store.revoke(info.key_id, at=clock.now - 5)
    with pytest.raises(CryptoError):
        signer.sign(b"after")  # a signer handed out earlier stops at once
    with pytest.raises(CryptoError):
        store.signer("agent-a")
    store.verify("agent-a", b"before", early, key_id=info.key_id, signed_at=signed_early)
    late = Ed25519PrivateKey.generate().sign(b"x")  # any bytes: refused before the signature is looked at
    with pytest.raises(SignatureError, match="revoked"):
        store.verify("agent-a", b"before", early, key_id=info.key_id, signed_at=clock.now - 5)
    with pytest.raises(SignatureError):
        store.verify("agent-a", b"x", late, key_id=info.key_id, signed_at=clock.now)
    store.revoke(info.key_id, at=clock.now + 100)  # revocation never moves later
    assert store.key(info.key_id).revoked_at == clock.now - 5


def test_revocation_by_another_process_is_seen(
    tmp_path: Path, store: KeyStore, master_key: bytes, clock: FakeClock
) -> None:
    info = store.create_key("agent-a")
    signature, _ = _sign(store, "agent-a", b"data")
    other = KeyStore.open(store.path, master_key, clock=clock)
    clock.now += 1
    other.revoke(info.key_id, at=clock.now - 0.5)
    with pytest.raises(SignatureError):
        store.verify("agent-a", b"data", signature, key_id=info.key_id, signed_at=clock.now)
    assert store.generation == other.generation == 2


def test_signature_outside_the_validity_window_is_refused(store: KeyStore, clock: FakeClock) -> None:
    start = clock.now
    info = store.create_key("agent-a", valid_for_s=60)
    signature, key_id = _sign(store, "agent-a", b"data")
    store.verify("agent-a", b"data", signature, key_id=key_id, signed_at=start + 30)
    for when in (start - 1, start + 61, float("nan"), float("inf")):
        with pytest.raises(SignatureError):
            store.verify("agent-a", b"data", signature, key_id=key_id, signed_at=when)
    clock.now = start + 61
    with pytest.raises(CryptoError):
        store.signer("agent-a")  # expired keys do not sign
    assert store.current_key("agent-a") is None
    assert info.not_after == start + 60


def test_future_dated_signature_is_refused(store: KeyStore, clock: FakeClock) -> None:
    store.create_key("agent-a")
    signature, key_id = _sign(store, "agent-a", b"data")
    with pytest.raises(SignatureError, match="future"):
        store.verify("agent-a", b"data", signature, key_id=key_id, signed_at=clock.now + 3600)


def test_another_agents_key_is_refused(store: KeyStore, clock: FakeClock) -> None:
    store.create_key("agent-a")
    store.create_key("agent-b")
    signature, key_id = _sign(store, "agent-b", b"data")
    with pytest.raises(SignatureError, match="not a key of agent"):
        store.verify("agent-a", b"data", signature, key_id=key_id, signed_at=clock.now)
    with pytest.raises(SignatureError):
        store.verify("agent-a", b"data", signature, key_id=bytes(16), signed_at=clock.now)


def test_altered_data_or_signature_is_refused(store: KeyStore, clock: FakeClock) -> None:
    store.create_key("agent-a")
    signature, key_id = _sign(store, "agent-a", b"data")
    with pytest.raises(SignatureError):
        store.verify("agent-a", b"datA", signature, key_id=key_id, signed_at=clock.now)
    for position in range(len(signature)):
        forged = bytearray(signature)
        forged[position] ^= 0x80
        with pytest.raises(SignatureError):
            store.verify("agent-a", b"data", bytes(forged), key_id=key_id, signed_at=clock.now)
    with pytest.raises(SignatureError):
        store.verify("agent-a", b"data", signature[:63], key_id=key_id, signed_at=clock.now)


def test_rotation_keeps_old_signatures_valid(store: KeyStore, clock: FakeClock) -> None:
    old = store.create_key("agent-a")
    old_signer = store.signer("agent-a")
    old_signature = old_signer.sign(b"v1")
    signed_at = clock.now
    clock.now += 100
    new = store.rotate("agent-a")
    assert new.key_id != old.key_id
    assert [k.key_id for k in store.keys("agent-a")] == [old.key_id, new.key_id]
    store.verify("agent-a", b"v1", old_signature, key_id=old.key_id, signed_at=signed_at)
    with pytest.raises(CryptoError):
        old_signer.sign(b"v2")  # the retired key no longer signs
    clock.now += 1
    with pytest.raises(SignatureError):  # nor are signatures it claims to have made after rotation valid
        store.verify("agent-a", b"v1", old_signature, key_id=old.key_id, signed_at=clock.now)
    new_signature, new_key_id = _sign(store, "agent-a", b"v2")
    assert new_key_id == new.key_id
    store.verify("agent-a", b"v2", new_signature, key_id=new.key_id, signed_at=clock.now)


def test_create_and_rotate_refuse_the_wrong_state(store: KeyStore) -> None:
    with pytest.raises(CryptoError, match="no current key"):
        store.rotate("nobody")
    store.create_key("agent-a")
    with pytest.raises(CryptoError, match="already has a current key"):
        store.create_key("agent-a")
    with pytest.raises(CryptoError):
        store.signer("nobody")
    with pytest.raises(CryptoError):
        store.revoke(bytes(16))
    with pytest.raises(MAIFError):
        store.create_key("x" * 1000)


def test_changing_the_master_key_keeps_keys(
    tmp_path: Path, store: KeyStore, master_key: bytes, clock: FakeClock
) -> None:
    store.create_key("agent-a")
    signature, key_id = _sign(store, "agent-a", b"data")
    new_master = generate_master_key()
    store.change_master_key(new_master)
    with pytest.raises(DecryptionError):
        KeyStore.open(store.path, master_key)
    reopened = KeyStore.open(store.path, new_master, clock=clock)
    reopened.verify("agent-a", b"data", signature, key_id=key_id, signed_at=clock.now)
    reopened.signer("agent-a").sign(b"still works")


def test_external_kms_key_is_verified_but_never_signed_locally(store: KeyStore, clock: FakeClock) -> None:
    kms_key = Ed25519PrivateKey.generate()  # stands in for the private half that stays inside a KMS
    public = raw_public_key(kms_key.public_key())
    info = store.import_public_key("agent-k", public)
    assert info.external and info.key_id == key_id_of(public)
    store.verify("agent-k", b"data", kms_key.sign(b"data"), key_id=info.key_id, signed_at=clock.now)
    with pytest.raises(CryptoError, match="external signer"):
        store.signer("agent-k")
    with pytest.raises(CryptoError):
        store.import_public_key("agent-k", b"\x01" * 31)


def test_key_ids_match_the_container_format() -> None:
    signing = pytest.importorskip("maif.format.signing")
    public_key = Ed25519PrivateKey.generate().public_key()
    assert key_id_of(public_key) == signing.key_id(public_key)


def test_master_key_from_environment_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_master_key()
    monkeypatch.setenv("MAIF_MASTER_KEY", key.hex())
    assert master_key_from_environment() == key
    import base64

    monkeypatch.setenv("MAIF_MASTER_KEY", base64.b64encode(key).decode())
    assert master_key_from_environment() == key
    monkeypatch.setenv("MAIF_MASTER_KEY", "00" * 31)
    with pytest.raises(ConfigError):
        master_key_from_environment()
    monkeypatch.delenv("MAIF_MASTER_KEY")
    with pytest.raises(ConfigError):
        master_key_from_environment()
    key_file = tmp_path / "master.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    assert master_key_from_environment(file=key_file) == key
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group"):
        master_key_from_environment(file=key_file)
    with pytest.raises(ConfigError):
        master_key_from_environment(file=tmp_path / "missing")


def test_two_writers_never_lose_each_others_keys(tmp_path: Path, master_key: bytes, clock: FakeClock) -> None:
    """Each change reloads under the file lock, so interleaved writers merge instead of overwriting."""
    first = KeyStore.open(tmp_path / "k", master_key, clock=clock)
    second = KeyStore.open(tmp_path / "k", master_key, clock=clock)
    for number in range(5):
        first.create_key(f"a{number}")
        second.create_key(f"b{number}")
    second.rotate("a0")
    agents = {f"a{n}" for n in range(5)} | {f"b{n}" for n in range(5)}
    for store in (first, second, KeyStore.open(tmp_path / "k", master_key, clock=clock)):
        assert all(len(store.keys(agent)) == (2 if agent == "a0" else 1) for agent in agents)


def test_a_failed_write_leaves_the_previous_keystore_intact(
    store: KeyStore, master_key: bytes, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = store.create_key("agent-a")
    before = store.path.read_bytes()

    def failing_replace(source: object, destination: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CryptoError, match="could not be written"):
        store.revoke(info.key_id)
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []
    reopened = KeyStore.open(store.path, master_key, clock=clock)
    assert reopened.key(info.key_id).revoked_at is None
    reopened.signer("agent-a")
