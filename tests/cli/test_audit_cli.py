"""`maif audit verify` and `maif audit show`: offline checks with documented exit codes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from typer.testing import CliRunner

from maif.cli.audit import audit_app
from maif.cli.exit_codes import ExitCode
from maif.security.audit import HEADER_BYTES, AuditLog
from maif.security.keys import MemorySigner, raw_public_key

runner = CliRunner()


@pytest.fixture
def signer() -> MemorySigner:
    return MemorySigner()


@pytest.fixture
def log_path(tmp_path: Path, signer: MemorySigner) -> Path:
    path = tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        for number in range(7):
            log.append(
                {
                    "actor": "agent-1",
                    "action": "read",
                    "resource": f"block/{number}",
                    "decision": "deny" if number == 4 else "allow",
                    "reason": "policy",
                }
            )
    return path


def _hex_key(signer: MemorySigner) -> str:
    return raw_public_key(signer.public_key).hex()


def test_verify_succeeds_with_a_hex_or_pem_trusted_key(
    tmp_path: Path, log_path: Path, signer: MemorySigner
) -> None:
    result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), "--json"])
    assert result.exit_code == ExitCode.OK, result.output
    document = json.loads(result.stdout)
    assert document["ok"] and document["entries"] == 7 and document["unsigned_tail_entries"] == 0
    pem = tmp_path / "auditor.pub"
    pem.write_bytes(signer.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", str(pem)])
    assert result.exit_code == ExitCode.OK, result.output
    assert "verified" in result.stdout


def test_verify_names_the_first_bad_entry(tmp_path: Path, log_path: Path, signer: MemorySigner) -> None:
    data = bytearray(log_path.read_bytes())
    offset = HEADER_BYTES
    for _ in range(2):  # skip entry 0 and entry 1; entry 2's record starts 40 bytes into its frame
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 40 + length
    data[offset + 45] ^= 0x04
    log_path.write_bytes(bytes(data))
    result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), "--json"])
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE
    document = json.loads(result.stdout)
    assert not document["ok"] and "entry 2" in document["error"]["message"]


def test_verify_refuses_an_untrusted_signer(log_path: Path) -> None:
    result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", _hex_key(MemorySigner())])
    assert result.exit_code == ExitCode.SIGNATURE_UNTRUSTED
    assert "not trusted" in result.stderr


def test_unsigned_tail_fails_unless_allowed(tmp_path: Path, signer: MemorySigner) -> None:
    path = tmp_path / "open.log"
    log = AuditLog.open(path, signer, checkpoint_every_entries=100, checkpoint_every_s=3600)
    for number in range(3):
        log.append({"action": "read", "decision": "allow", "resource": f"r{number}"})
        if number == 0:
            log.checkpoint()  # an unsigned tail is only ever accepted after a verified checkpoint
    result = runner.invoke(audit_app, ["verify", str(path), "--trust", _hex_key(signer)])
    assert result.exit_code == ExitCode.SIGNATURE_UNTRUSTED
    assert "not covered by a signed checkpoint" in result.stderr
    result = runner.invoke(
        audit_app, ["verify", str(path), "--trust", _hex_key(signer), "--allow-unsigned-tail"]
    )
    assert result.exit_code == ExitCode.OK
    log.close()
    result = runner.invoke(audit_app, ["verify", str(path), "--trust", _hex_key(signer)])
    assert result.exit_code == ExitCode.OK


def test_bad_inputs_have_their_own_exit_codes(tmp_path: Path, log_path: Path, signer: MemorySigner) -> None:
    not_a_log = tmp_path / "x"
    not_a_log.write_bytes(b"not an audit log" * 10)
    result = runner.invoke(audit_app, ["verify", str(not_a_log), "--trust", _hex_key(signer)])
    assert result.exit_code == ExitCode.MALFORMED_FILE
    result = runner.invoke(audit_app, ["verify", str(tmp_path / "missing"), "--trust", _hex_key(signer)])
    assert result.exit_code == ExitCode.MALFORMED_FILE
    result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", "zz" * 32])
    assert result.exit_code == ExitCode.KEY_ERROR
    result = runner.invoke(audit_app, ["verify", str(log_path)])
    assert result.exit_code == ExitCode.USAGE_ERROR


def test_show_lists_entries_and_checkpoints(log_path: Path) -> None:
    result = runner.invoke(audit_app, ["show", str(log_path), "--json"])
    assert result.exit_code == ExitCode.OK, result.output
    records = json.loads(result.stdout)["records"]
    entries = [r for r in records if r["type"] == "entry"]
    assert [e["index"] for e in entries] == list(range(7))
    assert entries[4]["decision"] == "deny"
    assert [r["tree_size"] for r in records if r["type"] == "checkpoint"] == [3, 6, 7]
    result = runner.invoke(audit_app, ["show", str(log_path), "--start", "5", "--limit", "1", "--json"])
    assert [r.get("index") for r in json.loads(result.stdout)["records"]] == [5, None]
    result = runner.invoke(audit_app, ["show", str(log_path)])
    assert result.exit_code == ExitCode.OK and "checkpoint" in result.stdout


def test_saved_checkpoint_catches_a_log_cut_back_later(
    tmp_path: Path, log_path: Path, signer: MemorySigner
) -> None:
    saved = tmp_path / "witness.ckpt"
    result = runner.invoke(audit_app, ["checkpoint", str(log_path), "--output", str(saved), "--json"])
    assert result.exit_code == ExitCode.OK, result.output
    assert json.loads(result.stdout)["tree_size"] == 7
    trust = ["--trust", _hex_key(signer)]
    assert runner.invoke(audit_app, ["verify", str(log_path), *trust, "--witness", str(saved)]).exit_code == 0
    data = log_path.read_bytes()
    offset, checkpoints_seen = HEADER_BYTES, 0
    while checkpoints_seen < 2:  # keep everything up to the second checkpoint (6 entries)
        (length,) = struct.unpack_from("<I", data, offset)
        checkpoints_seen += data[offset + 40 : offset + 40 + length].find(b"checkpoint") >= 0
        offset += 40 + length
    log_path.write_bytes(data[:offset])
    # The log alone cannot tell; the head remembered by the verify above can (ADR 0088).
    assert runner.invoke(audit_app, ["verify", str(log_path), *trust, "--no-remember"]).exit_code == 0
    assert runner.invoke(audit_app, ["verify", str(log_path), *trust]).exit_code == ExitCode.INTEGRITY_FAILURE
    witnessed = ["verify", str(log_path), *trust, "--no-remember", "--witness", str(saved)]
    result = runner.invoke(audit_app, witnessed)
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE
    assert "truncated" in result.stderr
    saved.write_bytes(b"\x00junk")
    result = runner.invoke(audit_app, witnessed)
    assert result.exit_code == ExitCode.MALFORMED_FILE


# ---- red-team findings (issue 14): nothing signed, and what a passing verify proves -----------------


def _unsigned_log(path: Path, signer: MemorySigner, count: int) -> AuditLog:
    """A log whose every entry is chained but none signed (left open: close would sign them)."""
    log = AuditLog.open(path, signer, checkpoint_every_entries=100, checkpoint_every_s=3600)
    for number in range(count):
        log.append({"action": "read", "decision": "allow", "resource": f"r{number}"})
    return log


def test_a_log_cut_to_its_header_is_refused(log_path: Path, signer: MemorySigner) -> None:
    log_path.write_bytes(log_path.read_bytes()[:HEADER_BYTES])
    for extra in ([], ["--allow-unsigned-tail"]):
        result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), *extra])
        assert result.exit_code == ExitCode.SIGNATURE_UNTRUSTED, result.output
        assert "no entry is covered by a signed checkpoint" in result.stderr


def test_allow_unsigned_tail_never_accepts_a_log_with_no_signed_checkpoint(
    tmp_path: Path, signer: MemorySigner
) -> None:
    log = _unsigned_log(tmp_path / "rewritten.log", signer, 5)
    result = runner.invoke(
        audit_app,
        ["verify", str(tmp_path / "rewritten.log"), "--trust", _hex_key(signer), "--allow-unsigned-tail"],
    )
    assert result.exit_code == ExitCode.SIGNATURE_UNTRUSTED, result.output
    assert "no entry is covered by a signed checkpoint" in result.stderr
    log.checkpoint()
    log.append({"action": "read", "decision": "allow", "resource": "after"})
    result = runner.invoke(
        audit_app,
        ["verify", str(tmp_path / "rewritten.log"), "--trust", _hex_key(signer), "--allow-unsigned-tail"],
    )
    assert result.exit_code == ExitCode.OK, result.output
    assert "6 entries, signed head at entry 4" in result.stdout
    assert "entries after 4 unsigned" in result.stdout
    log.close()


def test_verify_states_what_was_proven_and_that_freshness_was_not_checked(
    tmp_path: Path, log_path: Path, signer: MemorySigner
) -> None:
    result = runner.invoke(audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), "--no-remember"])
    assert result.exit_code == ExitCode.OK, result.output
    text = " ".join(result.stdout.split())
    assert "7 entries, signed head at entry 6 (time " in text
    assert f"key id {signer.key_id.hex()}" in text
    assert "freshness not checked: pass --witness <exported signed head>" in text
    assert "to detect a truncated or older copy" in text
    result = runner.invoke(
        audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), "--json", "--no-remember"]
    )
    document = json.loads(result.stdout)
    assert document["signed_head"]["tree_size"] == 7 and document["freshness_checked"] is False
    saved = tmp_path / "head.ckpt"
    assert runner.invoke(audit_app, ["checkpoint", str(log_path), "--output", str(saved)]).exit_code == 0
    result = runner.invoke(
        audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), "--witness", str(saved)]
    )
    assert result.exit_code == ExitCode.OK, result.output
    assert "freshness not checked" not in result.stdout
    assert "at least as new as the witness" in " ".join(result.stdout.split())


def test_an_older_genuine_copy_is_refused_against_a_witness_of_the_newer_head(
    tmp_path: Path, signer: MemorySigner
) -> None:
    path = tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        for number in range(4):
            log.append({"action": "read", "decision": "allow", "resource": f"r{number}"})
    older = tmp_path / "older.log"
    older.write_bytes(path.read_bytes())  # a genuine, fully signed copy taken at 4 entries
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        for number in range(4, 9):
            log.append({"action": "read", "decision": "allow", "resource": f"r{number}"})
    saved = tmp_path / "newer.ckpt"
    assert runner.invoke(audit_app, ["checkpoint", str(path), "--output", str(saved)]).exit_code == 0
    trust = ["--trust", _hex_key(signer)]
    assert runner.invoke(audit_app, ["verify", str(older), *trust]).exit_code == ExitCode.OK
    result = runner.invoke(audit_app, ["verify", str(older), *trust, "--witness", str(saved)])
    assert result.exit_code == ExitCode.INTEGRITY_FAILURE, result.output
    assert "truncated" in result.stderr
    assert runner.invoke(audit_app, ["verify", str(path), *trust, "--witness", str(saved)]).exit_code == 0


def test_require_witness_refuses_to_run_without_one(log_path: Path, signer: MemorySigner) -> None:
    result = runner.invoke(
        audit_app, ["verify", str(log_path), "--trust", _hex_key(signer), "--require-witness"]
    )
    assert result.exit_code == ExitCode.USAGE_ERROR, result.output
    assert "needs --witness" in result.stderr


def test_archive_moves_old_segments_and_what_remains_and_the_archive_both_verify(
    tmp_path: Path, signer: MemorySigner
) -> None:
    from maif.security.audit_chain import SegmentedAuditLog, list_segments

    directory = tmp_path / "audit"
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=3) as log:
        for number in range(20):
            log.append({"actor": "agent-1", "action": "read", "resource": f"b/{number}", "decision": "allow"})
        newest = log.segment_number
    key = _hex_key(signer)
    archived = runner.invoke(audit_app, ["archive", str(directory), "--before-segment", "4", "--json"])
    assert archived.exit_code == 0, archived.output
    moved = json.loads(archived.output)["moved"]
    archive = tmp_path / "audit-archive"
    assert [Path(name).parent for name in moved] == [archive] * 4
    assert [number for number, _ in list_segments(directory)] == list(range(4, newest + 1))
    # What remains never verifies as if it were the whole history...
    assert runner.invoke(audit_app, ["verify", str(directory), "--trust", key]).exit_code != 0
    # ...but does from the first segment left, and says what is missing.
    remains = runner.invoke(audit_app, ["verify", str(directory), "--trust", key, "--from-segment", "4"])
    assert remains.exit_code == 0, remains.output
    assert "segments 0..3" in remains.output and "archived" in remains.output
    document = runner.invoke(
        audit_app, ["verify", str(directory), "--trust", key, "--from-segment", "4", "--json"]
    )
    assert json.loads(document.output)["archived"]["segments"] == [0, 3]
    # The archive is an older part of the log whose newer head was remembered above: say so to verify it.
    assert runner.invoke(audit_app, ["verify", str(archive), "--trust", key]).exit_code == 1
    assert runner.invoke(audit_app, ["verify", str(archive), "--trust", key, "--no-remember"]).exit_code == 0
    # The newest segment (the one a writer appends to) never moves.
    refused = runner.invoke(audit_app, ["archive", str(directory), "--before-segment", str(newest + 1)])
    assert refused.exit_code != 0 and list_segments(directory)
