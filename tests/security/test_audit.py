"""The audit log records every decision durably and any tampering with it is detected and located.

The attacks edit the file's bytes directly (flip, delete, reorder, duplicate, insert, truncate), forge
checkpoints and proofs, and re-chain altered entries the way an attacker who knows the format but not
the signing key would.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from maif.errors import (
    CryptoError,
    DurabilityError,
    FormatError,
    IntegrityError,
    LimitExceededError,
    MAIFError,
    SignatureError,
    StorageError,
    StoreClosedError,
)
from maif.format import merkle
from maif.security.audit import (
    HEADER_BYTES,
    AuditEntry,
    AuditLog,
    SignedCheckpoint,
    checkpoint_payload,
    decode_checkpoint,
    encode_checkpoint,
    read_audit_log,
    verify_audit_consistency,
    verify_audit_inclusion,
    verify_audit_log,
    verify_checkpoint,
)
from maif.security.keys import KeyInfo, KeyStore, MemorySigner, generate_master_key, raw_public_key

ENCODER = msgspec.msgpack.Encoder()


def event(number: int, decision: str = "allow") -> dict[str, object]:
    return {
        "actor": f"agent-{number % 3}",
        "action": "write",
        "resource": f"block/{number}",
        "decision": decision,
        "reason": "trust level 3 >= 2",
    }


@pytest.fixture
def signer() -> MemorySigner:
    return MemorySigner()


def write_log(path: Path, signer: MemorySigner, count: int, *, every: int = 3) -> None:
    with AuditLog.open(path, signer, checkpoint_every_entries=every, checkpoint_every_s=3600) as log:
        for number in range(count):
            log.append(event(number, "deny" if number % 4 == 3 else "allow"))


def frames(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset, end, record) for each frame, parsed independently of the module under test."""
    offset = HEADER_BYTES
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        end = offset + 40 + length
        yield offset, end, data[offset + 40 : end]
        offset = end


def frame_bytes(record: bytes) -> bytes:
    length = struct.pack("<I", len(record))
    return (
        length
        + struct.pack("<I", len(record) ^ 0xFFFFFFFF)
        + blake3.blake3(length + record).digest()
        + record
    )


def is_entry(record: bytes) -> bool:
    return isinstance(msgspec.msgpack.decode(record, type=AuditEntry | SignedCheckpoint), AuditEntry)


# ---- the happy path --------------------------------------------------------------------------------


def test_appended_entries_read_back_and_verify(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=4) as log:
        appended = [log.append(event(number)) for number in range(10)]
        assert [e.index for e in appended] == list(range(10))
        assert list(log.entries()) == appended
        assert list(log.entries(3, 5)) == appended[3:5]
        assert appended[0].prev_hash == blake3.blake3(path.read_bytes()[:32]).digest()
        for previous, current in itertools.pairwise(appended):
            assert current.prev_hash == previous.hash
    report = verify_audit_log(path, [signer.public_key])
    assert (report.entries, report.checkpoints, report.unsigned_tail_entries) == (10, 3, 0)
    assert report.fully_signed and report.signing_key_ids == [signer.key_id]
    assert report.root == merkle.root([e.hash for e in appended])
    with AuditLog.open(path, signer) as reopened:
        assert reopened.size == 10 and reopened.recovered_tail_bytes == 0
        reopened.append(event(10))
    assert verify_audit_log(path, [signer.public_key]).entries == 11


def test_incremental_root_matches_the_reference_merkle_root(tmp_path: Path, signer: MemorySigner) -> None:
    with AuditLog.open(tmp_path / "a", signer, checkpoint_every_entries=1) as log:
        hashes = []
        for number in range(40):
            hashes.append(log.append(event(number)).hash)
            checkpoint = log.latest_checkpoint
            assert checkpoint is not None and checkpoint.tree_size == number + 1
            assert checkpoint.root == merkle.root(hashes) == log.root()


def test_secrets_never_reach_the_file(tmp_path: Path, signer: MemorySigner) -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJlLWJ5dGVz"
    path = tmp_path / "a"
    with AuditLog.open(path, signer) as log:
        entry = log.append(
            {
                "action": "bootstrap_trust",
                "decision": "deny",
                "actor": "agent-1",
                "reason": f"token {jwt} expired",
                "access_token": "opaque-secret-1",
                "password": "hunter2-secret",
                "key": b"\x01" * 32,
                "scopes": ["maif:read", jwt],
                "pem": "-----BEGIN PRIVATE KEY-----\nMC4CAQ==\n-----END PRIVATE KEY-----",
                "trust_level": 3,
            }
        )
    data = path.read_bytes()
    for secret in (jwt.encode(), b"opaque-secret-1", b"hunter2-secret", b"\x01" * 32, b"MC4CAQ=="):
        assert secret not in data
    assert entry.details["trust_level"] == 3
    assert entry.details["scopes"][0] == "maif:read"
    assert "redacted" in entry.reason


def test_malformed_and_oversized_events_are_refused(tmp_path: Path, signer: MemorySigner) -> None:
    with AuditLog.open(tmp_path / "a", signer) as log:
        for bad in (
            {"action": "x"},
            {"action": "x", "decision": "maybe"},
            {"decision": "allow"},
            {"action": "x", "decision": "allow", "time": float("nan")},
            {"action": "x", "decision": "allow", "nested": {"a": 1}},
        ):
            with pytest.raises(FormatError):
                log.append(bad)
        with pytest.raises(LimitExceededError):
            log.append({"action": "x", "decision": "allow", "reason": "r" * 5000})
        with pytest.raises(LimitExceededError):
            log.append({"action": "x", "decision": "allow", **{f"k{i}": "v" * 4000 for i in range(20)}})
        assert log.size == 0


# ---- tampering with the file ---------------------------------------------------------------------


def test_every_flipped_byte_is_detected_and_located(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "audit.log"
    write_log(path, signer, 5, every=2)
    original = path.read_bytes()
    owner: list[int | None] = [None] * HEADER_BYTES  # the entry index a byte belongs to
    entries_before = 0
    for offset, end, record in frames(original):
        owner.extend([entries_before] * (end - offset))  # a checkpoint frame: the next entry is suspect
        entries_before += is_entry(record)
    assert len(owner) == len(original)
    damaged_path = tmp_path / "damaged.log"
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x01 << (position % 8)
        damaged_path.write_bytes(bytes(damaged))
        with pytest.raises(MAIFError) as caught:
            verify_audit_log(damaged_path, [signer.public_key])
        if owner[position] is not None:
            assert isinstance(caught.value, IntegrityError), (position, caught.value)
            assert caught.value.block_index == owner[position], (position, caught.value)
        if position % 11 == 0:  # the writer refuses to open it as well
            with pytest.raises(MAIFError):
                AuditLog.open(damaged_path, signer).close()


def _entry_frames(data: bytes) -> list[tuple[int, int]]:
    return [(offset, end) for offset, end, record in frames(data) if is_entry(record)]


def _expect_located(path: Path, signer: MemorySigner, index: int) -> None:
    with pytest.raises(IntegrityError) as caught:
        verify_audit_log(path, [signer.public_key])
    assert caught.value.block_index == index, caught.value
    with pytest.raises(IntegrityError):
        AuditLog.open(path, signer)


def test_deleted_entry_is_detected(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 8)
    data = path.read_bytes()
    start, end = _entry_frames(data)[4]
    path.write_bytes(data[:start] + data[end:])
    _expect_located(path, signer, 4)


def test_reordered_entries_are_detected(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 8, every=100)
    data = path.read_bytes()
    (s1, e1), (s2, e2) = _entry_frames(data)[2:4]
    path.write_bytes(data[:s1] + data[s2:e2] + data[s1:e1] + data[e2:])
    _expect_located(path, signer, 2)


def test_duplicated_entry_is_detected(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 6, every=100)
    data = path.read_bytes()
    start, end = _entry_frames(data)[3]
    path.write_bytes(data[:end] + data[start:end] + data[end:])
    _expect_located(path, signer, 4)


def test_inserted_entry_is_detected(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 6, every=100)
    data = path.read_bytes()
    entries = list(read_audit_log(path))
    start, _ = _entry_frames(data)[3]
    forged = AuditEntry(
        index=3,
        time=time.time(),
        prev_hash=entries[2].hash,
        actor="mallory",
        action="grant",
        resource="everything",
        decision="allow",
        reason="",
        details={},
    )
    path.write_bytes(data[:start] + frame_bytes(ENCODER.encode(forged)) + data[start:])
    _expect_located(path, signer, 4)


def test_rechained_forgery_without_the_key_fails_at_the_checkpoint(tmp_path: Path,
                                                                   signer: MemorySigner) -> None:
    """An attacker who rewrites entry 3 and recomputes every later hash and frame still cannot re-sign."""
    path = tmp_path / "a"
    write_log(path, signer, 6, every=3)
    records = list(read_audit_log(path))
    previous_hash = blake3.blake3(path.read_bytes()[:32]).digest()
    rebuilt = [path.read_bytes()[:HEADER_BYTES]]
    for record in records:
        if isinstance(record, AuditEntry):
            decision = "allow" if record.index == 3 else record.decision  # entry 3 was a deny
            record = msgspec.structs.replace(record, prev_hash=previous_hash, decision=decision)
            previous_hash = record.hash
        rebuilt.append(frame_bytes(ENCODER.encode(record)))
    path.write_bytes(b"".join(rebuilt))
    with pytest.raises(IntegrityError, match="signs a root") as caught:
        verify_audit_log(path, [signer.public_key])
    assert caught.value.block_index == 3  # entries 0..2 were vouched for by the checkpoint before them


def test_middle_damage_is_never_silently_dropped(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 5)
    data = bytearray(path.read_bytes())
    _, end = _entry_frames(bytes(data))[2]
    data[end - 1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        AuditLog.open(path, signer)
    assert caught.value.block_index == 2


def test_last_complete_frame_with_bad_digest_is_refused_not_dropped(
    tmp_path: Path, signer: MemorySigner
) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 3, every=100)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the final checkpoint's last byte
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        AuditLog.open(path, signer)


# ---- crashes: torn tails -------------------------------------------------------------------------


def test_torn_tail_is_cut_and_the_log_continues(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 4, every=2)  # checkpoints at 2 and 4: a torn tail after a signed head
    complete = path.read_bytes()
    last_start, _ = _entry_frames(complete)[-1]
    # cut inside the final checkpoint frame (every length), and inside the last entry frame
    last_frame_start = list(frames(complete))[-1][0]
    for cut in [*range(last_frame_start + 1, len(complete)), last_start + 3, last_start + 41]:
        path.write_bytes(complete[:cut])
        report = verify_audit_log(path, [signer.public_key], allow_unsigned_tail=True)
        assert report.torn_tail_bytes > 0
        with AuditLog.open(path, signer) as log:
            assert log.recovered_tail_bytes == report.torn_tail_bytes
            assert log.size in (3, 4)
            log.append(event(99))
        verified = verify_audit_log(path, [signer.public_key])
        assert verified.torn_tail_bytes == 0 and verified.fully_signed


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 3)
    with path.open("ab") as handle:
        handle.write(bytes(300))  # the file size grew in a crash but the data never reached the disk
    assert verify_audit_log(path, [signer.public_key]).torn_tail_bytes == 300
    with AuditLog.open(path, signer) as log:
        assert log.size == 3 and log.recovered_tail_bytes == 300


def test_cut_at_a_frame_boundary_leaves_an_unsigned_tail(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 5, every=2)
    data = path.read_bytes()
    last_checkpoint_start = list(frames(data))[-1][0]
    path.write_bytes(data[:last_checkpoint_start])
    with pytest.raises(SignatureError, match="not covered") as caught:
        verify_audit_log(path, [signer.public_key])
    assert caught.value.block_index == 4
    report = verify_audit_log(path, [signer.public_key], allow_unsigned_tail=True)
    assert report.entries == 5 and report.signed_entries == 4 and report.unsigned_tail_entries == 1
    assert not report.fully_signed


# ---- checkpoints ---------------------------------------------------------------------------------


def _checkpoints(path: Path) -> list[SignedCheckpoint]:
    return [r for r in read_audit_log(path) if isinstance(r, SignedCheckpoint)]


def test_checkpoint_by_an_untrusted_key_is_refused(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 4)
    with pytest.raises(SignatureError, match="not trusted"):
        verify_audit_log(path, [MemorySigner().public_key])
    checkpoint = _checkpoints(path)[-1]
    with pytest.raises(SignatureError):
        verify_checkpoint(checkpoint, [MemorySigner().public_key])
    verify_checkpoint(checkpoint, [signer.public_key])


def test_checkpoint_resigned_by_an_attacker_key_is_refused(tmp_path: Path, signer: MemorySigner) -> None:
    """The attacker replaces every checkpoint with one signed by its own key under the victim's key id."""
    path = tmp_path / "a"
    write_log(path, signer, 4, every=2)
    attacker = MemorySigner()
    rebuilt = [path.read_bytes()[:HEADER_BYTES]]
    for record in read_audit_log(path):
        if isinstance(record, SignedCheckpoint):
            signature = attacker.sign(record.signed_payload())
            record = msgspec.structs.replace(record, signature=signature)
        rebuilt.append(frame_bytes(ENCODER.encode(record)))
    path.write_bytes(b"".join(rebuilt))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_audit_log(path, [signer.public_key])


def test_checkpoint_with_a_wrong_root_is_refused_even_if_validly_signed(
    tmp_path: Path, signer: MemorySigner
) -> None:
    """A compromised writer signs a root that is not the entries' root: the verifier recomputes it."""
    path = tmp_path / "a"
    write_log(path, signer, 3, every=100)
    data = path.read_bytes()
    checkpoint = _checkpoints(path)[-1]
    wrong_root = bytes(32)
    forged = msgspec.structs.replace(
        checkpoint,
        root=wrong_root,
        signature=signer.sign(
            checkpoint_payload(
                checkpoint.log_id, checkpoint.tree_size, wrong_root, checkpoint.timestamp, checkpoint.key_id
            )
        ),
    )
    verify_checkpoint(forged, [signer.public_key])  # the signature itself is fine...
    last_start = list(frames(data))[-1][0]
    path.write_bytes(data[:last_start] + frame_bytes(ENCODER.encode(forged)))
    with pytest.raises(IntegrityError, match="signs a root"):  # ...but the log does not have that root
        verify_audit_log(path, [signer.public_key])


def test_checkpoint_claiming_another_size_or_log_is_refused(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 4, every=2)
    data = path.read_bytes()
    first = _checkpoints(path)[0]
    # a validly signed old checkpoint (size 2) replayed at the end: a rolled-back size
    path.write_bytes(data + frame_bytes(ENCODER.encode(first)))
    with pytest.raises(IntegrityError, match="claims 2 entries"):
        verify_audit_log(path, [signer.public_key])
    other = tmp_path / "b"
    write_log(other, signer, 4, every=2)
    foreign = _checkpoints(other)[-1]  # same key, same size, another log
    last_start = list(frames(data))[-1][0]
    path.write_bytes(data[:last_start] + frame_bytes(ENCODER.encode(foreign)))
    with pytest.raises(IntegrityError, match="another log"):
        verify_audit_log(path, [signer.public_key])


def test_rolled_back_checkpoint_is_refused_by_consistency_check(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    with AuditLog.open(path, signer) as log:
        for number in range(5):
            log.append(event(number))
        old = log.checkpoint()
        for number in range(5, 13):
            log.append(event(number))
        new = log.checkpoint()
        proof = log.consistency_proof(old.tree_size, new.tree_size)
    verify_audit_consistency(old, new, proof, [signer.public_key])
    with pytest.raises(IntegrityError, match="rolled back"):
        verify_audit_consistency(new, old, proof, [signer.public_key])
    for position in range(len(proof)):
        forged = list(proof)
        forged[position] = bytes(a ^ 1 for a in forged[position])
        with pytest.raises(IntegrityError):
            verify_audit_consistency(old, new, forged, [signer.public_key])
    for forged in (proof[:-1], [*proof, proof[0]], []):
        with pytest.raises(IntegrityError):
            verify_audit_consistency(old, new, forged, [signer.public_key])
    with pytest.raises(SignatureError):
        verify_audit_consistency(old, new, proof, [MemorySigner().public_key])
    assert decode_checkpoint(encode_checkpoint(new)) == new
    with pytest.raises(FormatError):
        decode_checkpoint(b"\x93garbage")


def test_forged_inclusion_proofs_are_refused(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    with AuditLog.open(path, signer) as log:
        entries = [log.append(event(number)) for number in range(11)]
        checkpoint = log.checkpoint()
        for entry in entries:
            proof = log.inclusion_proof(entry.index, checkpoint.tree_size)
            verify_audit_inclusion(entry, proof, checkpoint, trusted_keys=[signer.public_key])
        entry = entries[6]
        proof = log.inclusion_proof(6)
        older_proof = log.inclusion_proof(6, 8)
    for position in range(len(proof)):
        forged = list(proof)
        forged[position] = bytes(32)
        with pytest.raises(IntegrityError):
            verify_audit_inclusion(entry, forged, checkpoint)
    altered = msgspec.structs.replace(entry, decision="deny" if entry.decision == "allow" else "allow")
    moved = msgspec.structs.replace(entry, index=5)
    for bad_entry, bad_proof in (
        (altered, proof),
        (moved, proof),
        (entry, older_proof),
        (entry, proof[:-1]),
        (entry, [*proof, proof[0]]),
    ):
        with pytest.raises(IntegrityError):
            verify_audit_inclusion(bad_entry, bad_proof, checkpoint)
    untrusted = msgspec.structs.replace(checkpoint, root=merkle.root([e.hash for e in entries[:10]]))
    with pytest.raises(SignatureError):
        verify_audit_inclusion(entry, proof, untrusted, trusted_keys=[signer.public_key])


def test_rotated_and_revoked_keys(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = KeyStore.open(tmp_path / "keys", generate_master_key(), clock=lambda: now[0])
    old_info = store.create_key("auditor")
    path = tmp_path / "a"
    with AuditLog.open(
        path,
        store.signer("auditor"),
        clock=lambda: now[0],
        checkpoint_every_entries=2,
        checkpoint_every_s=3600,
    ) as log:
        log.append(event(0))
        log.append(event(1))
        now[0] += 10
        new_info = store.rotate("auditor")
        log.append(event(2))
        with pytest.raises(CryptoError, match="may no longer sign"):
            log.append(event(3))  # a checkpoint is due and the rotated-out key refuses to sign it...
        assert log.size == 4  # ...but the entry itself was recorded durably
        log.replace_signer(store.signer("auditor"))
        log.append(event(4))
        log.checkpoint()
    old_public = old_info.public_key_object()
    new_public = new_info.public_key_object()
    verify_audit_log(path, [old_public, new_public])
    verify_audit_log(path, store.keys("auditor"))  # KeyInfo: windows are enforced too
    with pytest.raises(SignatureError):
        verify_audit_log(path, [new_public])
    store.revoke(old_info.key_id, at=now[0] - 20)  # compromise discovered: revoked before its checkpoint
    with pytest.raises(SignatureError, match="outside the validity"):
        verify_audit_log(path, store.keys("auditor"))
    assert all(isinstance(k, KeyInfo) for k in store.keys("auditor"))
    assert raw_public_key(new_public) == new_info.public_key


# ---- durability and concurrency -------------------------------------------------------------------


def test_concurrent_appenders_share_syncs_and_keep_the_chain(
    tmp_path: Path, signer: MemorySigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = []
    real_fdatasync = os.fdatasync

    def slow_fdatasync(descriptor: int) -> None:
        syncs.append(descriptor)
        time.sleep(0.01)  # a slow disk makes appenders queue up behind one sync
        real_fdatasync(descriptor)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    path = tmp_path / "a"
    threads_count, per_thread = 8, 25
    with AuditLog.open(path, signer, checkpoint_every_entries=16) as log:

        def work(worker: int) -> None:
            for number in range(per_thread):
                log.append(event(worker * 1000 + number))

        threads = [threading.Thread(target=work, args=(worker,)) for worker in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.size == threads_count * per_thread
    assert len(syncs) < threads_count * per_thread  # group commit: fewer syncs than appends
    report = verify_audit_log(path, [signer.public_key])
    assert report.entries == threads_count * per_thread and report.fully_signed
    resources = sorted(e.resource for e in read_audit_log(path) if isinstance(e, AuditEntry))
    assert len(set(resources)) == threads_count * per_thread


def test_failed_sync_stops_the_log(
    tmp_path: Path, signer: MemorySigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a"
    log = AuditLog.open(path, signer)
    log.append(event(0))

    def failing_fdatasync(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(DurabilityError):
        log.append(event(1))
    monkeypatch.undo()
    with pytest.raises(DurabilityError):  # never retried on the same file
        log.append(event(2))
    log.close()


def test_one_writer_at_a_time_and_closed_logs_refuse(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    log = AuditLog.open(path, signer)
    with pytest.raises(StorageError, match="another process"):
        AuditLog.open(path, signer)
    log.close()
    with pytest.raises(StoreClosedError):
        log.append(event(0))
    AuditLog.open(path, signer).close()


def test_a_signer_whose_key_id_lies_is_refused(tmp_path: Path, signer: MemorySigner) -> None:
    signer.key_id = bytes(16)
    with pytest.raises(MAIFError, match="key_id"):
        AuditLog.open(tmp_path / "a", signer)


def test_not_an_audit_log(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"hello world, this is not an audit log at all" * 3)
    with pytest.raises(FormatError):
        verify_audit_log(path, [signer.public_key])
    with pytest.raises(FormatError):
        AuditLog.open(path, signer)
    with pytest.raises(StorageError):
        verify_audit_log(tmp_path / "missing", [signer.public_key])


_APPENDER = """
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from maif.security.audit import AuditLog
from maif.security.keys import key_id_of

class Signer:
    def __init__(self, raw):
        self._key = Ed25519PrivateKey.from_private_bytes(raw)
        self.public_key = self._key.public_key()
        self.key_id = key_id_of(self.public_key)
    def sign(self, data):
        return self._key.sign(data)

log = AuditLog.open(sys.argv[1], Signer(bytes.fromhex(sys.argv[2])), checkpoint_every_entries=7)
number = log.size
while True:
    entry = log.append({"action": "write", "decision": "allow", "resource": f"block/{number}"})
    print(entry.index, flush=True)
    number += 1
"""


def test_kill_9_mid_append_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    """A process killed at an arbitrary moment: every append that returned is there after reopening."""
    import signal
    import subprocess
    import sys

    private_key = Ed25519PrivateKey.generate()
    signer = MemorySigner(private_key)
    path = tmp_path / "crash.log"
    acknowledged = -1
    for kill_after in (10, 40, 90):  # past the first checkpoint (7): a log with nothing signed never verifies
        child = subprocess.Popen(
            [sys.executable, "-c", _APPENDER, str(path), private_key.private_bytes_raw().hex()],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        for _ in range(kill_after):
            acknowledged = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
        child.wait()
        report = verify_audit_log(path, [signer.public_key], allow_unsigned_tail=True)
        assert report.entries > acknowledged
        with AuditLog.open(path, signer) as log:
            entries = list(log.entries())
        assert [e.resource for e in entries] == [f"block/{n}" for n in range(len(entries))]
    assert verify_audit_log(path, [signer.public_key]).fully_signed


def test_hostile_frames_with_valid_digests_are_refused(tmp_path: Path, signer: MemorySigner) -> None:
    """Frames an attacker builds with correct digests but bad contents: each refused, located, no hang."""
    path = tmp_path / "a"
    write_log(path, signer, 2, every=100)
    data = path.read_bytes()
    good = list(read_audit_log(path))
    assert isinstance(good[1], AuditEntry)
    entry = good[1]
    canonical = ENCODER.encode(entry)
    index_field = ENCODER.encode("index") + b"\x01"
    assert index_field in canonical
    non_canonical = canonical.replace(index_field, ENCODER.encode("index") + b"\xcf" + (1).to_bytes(8, "big"))
    short_hash = ENCODER.encode(msgspec.structs.asdict(entry) | {"type": "entry", "prev_hash": bytes(31)})
    extra_field = ENCODER.encode(msgspec.structs.asdict(entry) | {"type": "entry", "admin": True})
    last_entry_start = _entry_frames(data)[1][0]
    prefix = data[:last_entry_start]
    for record in (
        b"\xc1",
        b"\x92\x01\x02",
        ENCODER.encode({"type": "other"}),
        non_canonical,
        short_hash,
        extra_field,
    ):
        path.write_bytes(prefix + frame_bytes(record))
        with pytest.raises(IntegrityError) as caught:
            verify_audit_log(path, [signer.public_key])
        assert caught.value.block_index == 1
    huge = struct.pack("<II", 1 << 31, (1 << 31) ^ 0xFFFFFFFF) + bytes(32)
    path.write_bytes(prefix + huge)
    with pytest.raises(IntegrityError, match="outside"):
        verify_audit_log(path, [signer.public_key])


def test_a_witness_checkpoint_catches_truncation_and_replacement(tmp_path: Path,
                                                                 signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 9, every=3)
    data = path.read_bytes()
    witness = _checkpoints(path)[-1]
    verify_audit_log(path, [signer.public_key], witness=witness)
    second_checkpoint_end = [end for _, end, record in frames(data) if not is_entry(record)][1]
    path.write_bytes(data[:second_checkpoint_end])  # cut back to an earlier signed state
    assert verify_audit_log(path, [signer.public_key]).fully_signed  # the file alone cannot tell...
    with pytest.raises(IntegrityError, match="no longer holds") as caught:  # ...the witness can
        verify_audit_log(path, [signer.public_key], witness=witness)
    assert caught.value.block_index == 6
    write_log(tmp_path / "b", signer, 12, every=3)  # a fresh log by the same key replacing the old one
    with pytest.raises(IntegrityError, match="another log id"):
        verify_audit_log(tmp_path / "b", [signer.public_key], witness=witness)
    with pytest.raises(SignatureError):
        verify_audit_log(
            tmp_path / "b",
            [MemorySigner().public_key, signer.public_key],
            witness=msgspec.structs.replace(witness, signature=bytes(64)),
        )


def test_every_inclusion_and_consistency_proof_of_a_log_verifies(tmp_path: Path,
                                                                 signer: MemorySigner) -> None:
    with AuditLog.open(tmp_path / "a", signer) as log:
        hashes = [log.append(event(number)).hash for number in range(13)]
        entries = list(log.entries())
        roots = [log.root(size) for size in range(14)]
        assert roots == [merkle.root(hashes[:size]) for size in range(14)]
        for size in range(1, 14):
            for index in range(size):
                merkle.verify_inclusion(
                    hashes[index], index, size, log.inclusion_proof(index, size), roots[size]
                )
            for old_size in range(size + 1):
                proof = log.consistency_proof(old_size, size)
                merkle.verify_consistency(old_size, size, roots[old_size], roots[size], proof)
        assert entries[12].hash == hashes[12]
        with pytest.raises(IntegrityError):
            log.inclusion_proof(13)
        with pytest.raises(IntegrityError):
            log.consistency_proof(5, 14)


# ---- model-based and fuzz tests ------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=300), cut=st.integers(min_value=0, max_value=400))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path: Path, garbage: bytes, cut: int) -> None:
    path = tmp_path / "fuzz.log"
    if not path.exists():
        write_log(path, MemorySigner(), 2, every=100)
    base = path.read_bytes()
    target = tmp_path / "fuzzed.log"
    target.write_bytes(base[: HEADER_BYTES + cut] + garbage)
    key = MemorySigner().public_key
    with contextlib.suppress(MAIFError):  # refusing is fine; any other exception fails the test
        verify_audit_log(target, [key])
    with contextlib.suppress(MAIFError):
        list(read_audit_log(target))


class AuditLogMachine(RuleBasedStateMachine):
    """Appends, checkpoints, reopenings and torn writes, checked against a list of what was appended."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "model.log"
        self.signer = MemorySigner()
        self.model: list[str] = []
        self.checkpoints: list[SignedCheckpoint] = []
        self.log = AuditLog.open(self.path, self.signer, checkpoint_every_entries=5, checkpoint_every_s=3600)

    @rule(decision=st.sampled_from(["allow", "deny"]), tag=st.integers(0, 10**6))
    def append(self, decision: str, tag: int) -> None:
        entry = self.log.append({"action": "write", "decision": decision, "resource": f"r/{tag}"})
        assert entry.index == len(self.model)
        self.model.append(f"r/{tag}")

    @rule()
    def checkpoint(self) -> None:
        checkpoint = self.log.checkpoint()
        assert checkpoint.tree_size == len(self.model)
        if self.checkpoints:
            old = self.checkpoints[-1]
            proof = self.log.consistency_proof(old.tree_size, checkpoint.tree_size)
            verify_audit_consistency(old, checkpoint, proof, [self.signer.public_key])
        self.checkpoints.append(checkpoint)

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = AuditLog.open(self.path, self.signer, checkpoint_every_entries=5, checkpoint_every_s=3600)

    @rule(keep=st.integers(1, 60), zeros=st.booleans())
    def crash_mid_append(self, keep: int, zeros: bool) -> None:
        self.log.close()
        partial = frame_bytes(b"\x81\xa4type\xa5entry" + bytes(50))
        tail = bytes(keep) if zeros else partial[: min(keep, len(partial) - 1)]
        with self.path.open("ab") as handle:
            handle.write(tail)
        self.log = AuditLog.open(self.path, self.signer, checkpoint_every_entries=5, checkpoint_every_s=3600)
        assert self.log.recovered_tail_bytes == len(tail)

    @rule(data=st.data())
    def prove_inclusion(self, data: st.DataObject) -> None:
        if not self.checkpoints or self.checkpoints[-1].tree_size == 0:
            return
        checkpoint = self.checkpoints[-1]
        index = data.draw(st.integers(0, checkpoint.tree_size - 1))
        entry = next(self.log.entries(index, index + 1))
        proof = self.log.inclusion_proof(index, checkpoint.tree_size)
        verify_audit_inclusion(entry, proof, checkpoint, trusted_keys=[self.signer.public_key])

    @invariant()
    def same_size(self) -> None:
        assert self.log.size == len(self.model)

    def teardown(self) -> None:
        self.log.close()
        if not self.model:  # nothing was ever signed over an entry: nothing is proven, never verifies
            with pytest.raises(SignatureError, match="no entry is covered"):
                verify_audit_log(self.path, [self.signer.public_key])
            self.directory.cleanup()
            return
        report = verify_audit_log(self.path, [self.signer.public_key])
        assert report.entries == len(self.model) and report.fully_signed
        assert [e.resource for e in read_audit_log(self.path) if isinstance(e, AuditEntry)] == self.model
        self.directory.cleanup()


TestAuditLogModel = AuditLogMachine.TestCase
TestAuditLogModel.settings = settings(max_examples=20, stateful_step_count=25, deadline=None)


def test_checkpoint_times_must_not_go_backwards(tmp_path: Path, signer: MemorySigner) -> None:
    """Even validly signed (a compromised writer), a checkpoint dated before the previous one is refused."""
    path = tmp_path / "a"
    write_log(path, signer, 4, every=2)
    data = path.read_bytes()
    first, last = _checkpoints(path)[0], _checkpoints(path)[-1]
    for when in (first.timestamp - 1, float("nan")):
        payload = checkpoint_payload(last.log_id, last.tree_size, last.root, when, last.key_id)
        forged = msgspec.structs.replace(last, timestamp=when, signature=signer.sign(payload))
        last_start = list(frames(data))[-1][0]
        path.write_bytes(data[:last_start] + frame_bytes(ENCODER.encode(forged)))
        with pytest.raises(IntegrityError, match=r"backwards|finite"):
            verify_audit_log(path, [signer.public_key])


def test_reading_entries_rechecks_the_disk(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    with AuditLog.open(path, signer) as log:
        log.append(event(0))
        log.append(event(1))
        data = path.read_bytes()
        start, end = _entry_frames(data)[0]
        record = msgspec.msgpack.decode(data[start + 40 : end], type=AuditEntry)
        altered = ENCODER.encode(msgspec.structs.replace(record, decision="deny"))
        path.write_bytes(data[:start] + frame_bytes(altered) + data[end:])  # changed behind the writer
        with pytest.raises(IntegrityError):
            list(log.entries())
        path.write_bytes(data)


# ---- appends from an event loop ---------------------------------------------------------------------


def test_async_appends_share_syncs_and_never_need_the_shared_worker_pool(
    tmp_path: Path, signer: MemorySigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import concurrent.futures

    import maif.security.audit as audit_module

    syncs = []
    real_fdatasync = os.fdatasync

    def counting_fdatasync(descriptor: int) -> None:
        syncs.append(descriptor)
        time.sleep(0.002)  # a slow disk: appends arriving meanwhile must join the next sync
        real_fdatasync(descriptor)

    monkeypatch.setattr(audit_module.os, "fdatasync", counting_fdatasync)
    path = tmp_path / "async.log"

    async def scenario() -> list[AuditEntry]:
        loop = asyncio.get_running_loop()
        shared_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(shared_pool)
        blocker = threading.Event()
        occupied = loop.run_in_executor(None, blocker.wait)  # the shared pool is now fully busy
        with AuditLog.open(path, signer, checkpoint_every_entries=64) as log:
            entries = await asyncio.wait_for(
                asyncio.gather(*(log.append_async(event(number)) for number in range(300))), timeout=60
            )
        blocker.set()
        await occupied
        return entries

    entries = asyncio.run(scenario())
    assert sorted(entry.index for entry in entries) == list(range(300))
    assert len(syncs) < 300 / 4, f"{len(syncs)} syncs for 300 concurrent appends: no group commit"
    report = verify_audit_log(path, [signer.public_key])
    assert report.entries == 300 and report.fully_signed  # verify_audit_log raises on any damage


def test_an_async_append_after_a_failed_sync_is_refused(
    tmp_path: Path, signer: MemorySigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import maif.security.audit as audit_module

    def failing_fdatasync(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def scenario() -> None:
        with AuditLog.open(tmp_path / "failing.log", signer) as log:
            monkeypatch.setattr(audit_module.os, "fdatasync", failing_fdatasync)
            with pytest.raises(DurabilityError):
                await log.append_async(event(1))
            with pytest.raises(DurabilityError):
                await log.append_async(event(2))  # the log stays failed: never acknowledged
            monkeypatch.undo()

    asyncio.run(scenario())


def test_a_log_with_nothing_signed_never_verifies(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "a"
    write_log(path, signer, 3)
    path.write_bytes(path.read_bytes()[:HEADER_BYTES])  # cut to the header: nothing left, nothing signed
    for allow in (False, True):
        with pytest.raises(SignatureError, match="no entry is covered by a signed checkpoint"):
            verify_audit_log(path, [signer.public_key], allow_unsigned_tail=allow)


def test_the_sanitisers_shortcuts_keep_its_verdicts() -> None:
    """One combined secret pattern, no UTF-8 encoding of short texts, remembered detail-name verdicts
    (docs/adr/0089): the same redactions and the same size refusals as before."""
    from maif import limits
    from maif.security.audit import sanitize_event

    base = {"actor": "agent-1", "action": "write", "decision": "allow", "time": 1.0}
    four_byte = "\U0001f600"
    at_bound = four_byte * (limits.audit_event_text_bytes_max // 4)
    assert sanitize_event({**base, "resource": at_bound})["resource"] == at_bound
    with pytest.raises(LimitExceededError):
        sanitize_event({**base, "resource": at_bound + "x"})
    jwt = "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"
    pem = "-----BEGIN EC PRIVATE KEY-----"
    for text in (jwt, pem, f"prefix {pem} suffix"):
        assert sanitize_event({**base, "reason": text})["reason"] == "<redacted: token or key material>"
    for _ in range(2):  # the second time from the remembered verdicts
        details = sanitize_event({**base, "api_key": "k", "scope": "maif:write", "my_token": "t"})["details"]
        assert details == {"api_key": "<redacted>", "scope": "maif:write", "my_token": "<redacted>"}
        with pytest.raises(LimitExceededError):
            sanitize_event({**base, "n" * (limits.audit_event_text_bytes_max + 1): 1})
