"""`maif audit public-key`: the audit log's signing key for `maif audit verify --trust`, read without
changing anything."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from typer.testing import CliRunner

from maif.cli.exit_codes import ExitCode
from maif.cli.main import app
from maif.format import signing
from maif.security.manager import create_maif_security_manager

runner = CliRunner()


def test_the_exported_key_verifies_the_log_and_nothing_is_created(tmp_path: Path) -> None:
    security = tmp_path / "security"
    master_key = secrets.token_bytes(32)
    with create_maif_security_manager(None, data_dir=security, master_key=master_key) as manager:
        for number in range(3):
            manager.audit_log.append({"action": "test.decision", "decision": "allow",
                                      "details": {"n": number}})
        manager.audit_log.checkpoint()
    before = sorted(path.relative_to(security) for path in security.rglob("*"))
    environment = {"MAIF_MASTER_KEY": master_key.hex()}
    result = runner.invoke(app, ["audit", "public-key", str(security), "-o", str(tmp_path / "audit.pub"),
                                 "--json"], env=environment)
    assert result.exit_code == 0, result.stdout
    document = json.loads(result.stdout)
    raw = document["public_key"]
    assert signing.load_public_key(tmp_path / "audit.pub").public_bytes_raw().hex() == raw
    assert sorted(path.relative_to(security) for path in security.rglob("*")) == before  # read-only
    for trust in (raw, str(tmp_path / "audit.pub")):
        verified = runner.invoke(app, ["audit", "verify", str(security / "audit"), "--trust", trust])
        assert verified.exit_code == 0, verified.stdout
    stranger = os.urandom(32)  # a wrong master key cannot open the keystore: a typed refusal
    refused = runner.invoke(app, ["audit", "public-key", str(security), "--json"],
                            env={"MAIF_MASTER_KEY": stranger.hex()})
    assert refused.exit_code == ExitCode.KEY_ERROR and json.loads(refused.stdout)["ok"] is False


def test_a_directory_without_a_keystore_is_refused_and_left_empty(tmp_path: Path) -> None:
    result = runner.invoke(app, ["audit", "public-key", str(tmp_path), "--json"])
    assert result.exit_code == ExitCode.USAGE_ERROR
    assert "no keystore" in json.loads(result.stdout)["error"]["message"]
    assert list(tmp_path.iterdir()) == []
