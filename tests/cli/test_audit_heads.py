"""`maif audit verify` checks freshness by default (issue 14, ADR 0088): the signed head it verified
last time on this machine is remembered (keyed by the log's identity, not its path) and a later copy
that no longer holds it (cut back, older, dropped segments) is refused, wherever that copy lies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from maif.cli import audit_heads
from maif.cli.audit import audit_app
from maif.cli.exit_codes import ExitCode
from maif.security.audit import AuditLog, encode_checkpoint
from maif.security.audit_chain import SegmentedAuditLog, list_segments
from maif.security.keys import MemorySigner, raw_public_key

runner = CliRunner()


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    return home


def _append(log: AuditLog | SegmentedAuditLog, first: int, count: int) -> None:
    for number in range(first, first + count):
        log.append({"actor": "agent-1", "action": "read", "resource": f"b/{number}", "decision": "allow"})


def _verify(path: Path, signer: MemorySigner, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        audit_app, ["verify", str(path), "--trust", raw_public_key(signer.public_key).hex(), *extra]
    )
    return result.exit_code, " ".join((result.stdout + result.stderr).split())


def test_an_older_copy_of_a_log_file_is_refused_once_a_newer_head_was_verified(tmp_path: Path) -> None:
    signer, path = MemorySigner(), tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        _append(log, 0, 4)
    older = tmp_path / "elsewhere" / "older.log"
    older.parent.mkdir()
    shutil.copyfile(path, older)  # a genuine, fully signed copy at 4 entries
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        _append(log, 4, 5)

    code, text = _verify(path, signer)
    assert code == ExitCode.OK and "first verification of this log on this machine" in text
    code, text = _verify(path, signer)
    assert code == ExitCode.OK and "verified on this machine before, which it still holds unchanged" in text
    # The older copy verifies on its own (every entry signed) but not against the remembered head,
    # although it lies at another path: heads are keyed by the log id.
    assert _verify(older, signer, "--no-remember")[0] == ExitCode.OK
    code, text = _verify(older, signer)
    assert code == ExitCode.INTEGRITY_FAILURE, text
    assert "older than, or diverges from, the signed head over 9 entries" in text
    # Cutting the live log back right after its first checkpoint is refused the same way.
    shutil.copyfile(older, path)
    assert _verify(path, signer)[0] == ExitCode.INTEGRITY_FAILURE
    # A refused verify never lowers the remembered head.
    assert _verify(older, signer)[0] == ExitCode.INTEGRITY_FAILURE


def test_a_segmented_log_cut_back_or_replaced_by_an_older_copy_is_refused(tmp_path: Path) -> None:
    signer, directory = MemorySigner(), tmp_path / "audit"
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=4) as log:
        _append(log, 0, 10)
    older = tmp_path / "older-copy"
    shutil.copytree(directory, older)
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=4) as log:
        _append(log, 10, 20)
        newest = log.segment_number
    assert _verify(directory, signer)[0] == ExitCode.OK
    code, text = _verify(older, signer)
    assert code == ExitCode.INTEGRITY_FAILURE and "is gone (segments dropped)" in text, text
    # Dropping the newest segments of the live directory: what is left is a well-linked signed chain.
    for number, segment in list_segments(directory):
        if number >= newest - 1:
            segment.unlink()
    assert _verify(directory, signer, "--no-remember")[0] == ExitCode.OK
    assert _verify(directory, signer)[0] == ExitCode.INTEGRITY_FAILURE


def test_the_head_advances_and_archived_segments_stay_fresh(tmp_path: Path) -> None:
    signer, directory = MemorySigner(), tmp_path / "audit"
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=3) as log:
        _append(log, 0, 7)
        identity = log.chain_id
    assert _verify(directory, signer)[0] == ExitCode.OK
    remembered = audit_heads.recall(audit_heads.heads_directory(), identity)
    assert remembered is not None and remembered.segment == 2
    with SegmentedAuditLog.open(directory, signer, segment_entries_max=3) as log:
        _append(log, 7, 9)
        newest = log.segment_number
    runner.invoke(audit_app, ["archive", str(directory), "--before-segment", "4"])
    code, text = _verify(directory, signer, "--from-segment", "4")
    assert code == ExitCode.OK and "verified on this machine before" in text, text
    advanced = audit_heads.recall(audit_heads.heads_directory(), identity)
    assert advanced is not None and advanced.segment == newest
    assert advanced.checkpoint.timestamp >= remembered.checkpoint.timestamp


def test_a_forged_or_damaged_remembered_head_is_refused_never_trusted(tmp_path: Path) -> None:
    signer, path = MemorySigner(), tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        _append(log, 0, 4)
        log_id = log.log_id
    heads = audit_heads.heads_directory()
    # A head signed by another key (someone who can write the auditor's state, not the log's key).
    with AuditLog.open(tmp_path / "other.log", MemorySigner()) as other:
        _append(other, 0, 9)
        foreign = other.checkpoint()
    forged = foreign.__class__(log_id, 9, foreign.root, foreign.timestamp, foreign.key_id, foreign.signature)
    audit_heads.remember(heads, log_id, None, forged)
    code, text = _verify(path, signer)
    assert code == ExitCode.SIGNATURE_UNTRUSTED and "remembered in" in text, text
    audit_heads.head_file(heads, log_id).write_text('{"format": "maif-audit-head/1", "identity": 1}')
    code, text = _verify(path, signer, "--json")
    assert code == ExitCode.MALFORMED_FILE and "damaged" in text, text
    assert _verify(path, signer, "--no-remember")[0] == ExitCode.OK
    audit_heads.head_file(heads, log_id).unlink()
    assert _verify(path, signer)[0] == ExitCode.OK
    stored = json.loads(audit_heads.head_file(heads, log_id).read_text())
    assert bytes.fromhex(stored["checkpoint"]) == encode_checkpoint(
        audit_heads.recall(heads, log_id).checkpoint  # type: ignore[union-attr]
    )


def test_no_remember_neither_reads_nor_writes_state(tmp_path: Path, state_home: Path) -> None:
    signer, path = MemorySigner(), tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        _append(log, 0, 4)
    code, text = _verify(path, signer, "--no-remember")
    assert code == ExitCode.OK and "freshness not checked" in text
    assert not state_home.exists()
    result = runner.invoke(
        audit_app, ["verify", str(path), "--trust", raw_public_key(signer.public_key).hex(), "--json"]
    )
    document = json.loads(result.stdout)
    assert document["freshness_checked"] is False and document["remembered_in"].startswith(str(state_home))
    result = runner.invoke(
        audit_app, ["verify", str(path), "--trust", raw_public_key(signer.public_key).hex(), "--json"]
    )
    document = json.loads(result.stdout)
    assert document["freshness_checked"] is True and document["remembered_head"]["tree_size"] == 4


def test_a_verify_finishing_late_never_moves_the_head_back(tmp_path: Path) -> None:
    """Two verifies race: the one of an older copy checked the old head and writes last."""
    signer, path = MemorySigner(), tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        _append(log, 0, 3)
        older = log.checkpoint()
        _append(log, 3, 3)
        newer = log.checkpoint()
        log_id = log.log_id
    heads = audit_heads.heads_directory()
    audit_heads.remember(heads, log_id, None, newer)
    audit_heads.remember(heads, log_id, None, older)
    remembered = audit_heads.recall(heads, log_id)
    assert remembered is not None and remembered.checkpoint == newer


def test_a_signed_head_served_as_json_is_a_witness(tmp_path: Path) -> None:
    """GET /v1/audit serves a segment's signed head as JSON (hex fields): saved as it comes, the page or
    its ``checkpoint`` object is a --witness, so a remote auditor has a head from the first verify on."""
    signer, path = MemorySigner(), tmp_path / "audit.log"
    with AuditLog.open(path, signer, checkpoint_every_entries=3) as log:
        _append(log, 0, 6)
        head = log.checkpoint()
    served = {
        "log_id": head.log_id.hex(),
        "tree_size": head.tree_size,
        "root": head.root.hex(),
        "timestamp": head.timestamp,
        "key_id": head.key_id.hex(),
        "signature": head.signature.hex(),
    }
    page, alone = tmp_path / "page.json", tmp_path / "head.json"
    page.write_text(json.dumps({"tree_size": 6, "entries": [], "checkpoint": served}))
    alone.write_text(json.dumps(served))
    older = tmp_path / "replacement.log"
    with AuditLog.open(older, signer, checkpoint_every_entries=3) as log:
        _append(log, 0, 6)
    for witness in (page, alone):
        code, text = _verify(path, signer, "--no-remember", "--witness", str(witness))
        assert code == ExitCode.OK and "at least as new as the witness" in text, text
    # Another log with the same entries and key (a replacement) is not the witnessed log.
    code, text = _verify(older, signer, "--no-remember", "--witness", str(alone))
    assert code == ExitCode.INTEGRITY_FAILURE and "replaced" in text, text
    forged = {**served, "tree_size": 5}
    alone.write_text(json.dumps(forged))
    assert _verify(path, signer, "--no-remember", "--witness", str(alone))[0] == ExitCode.SIGNATURE_UNTRUSTED
    for damaged in ('{"checkpoint": null}', '{"log_id": "zz"}', "[1]", '{"checkpoint": {"tree_size": "6"}}'):
        alone.write_text(damaged)
        code, text = _verify(path, signer, "--no-remember", "--witness", str(alone))
        assert code == ExitCode.MALFORMED_FILE and "not a signed audit checkpoint" in text, (damaged, text)
