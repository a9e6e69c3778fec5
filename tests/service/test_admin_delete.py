"""Deleting another agent's block, and compacting the store, are administration: they need a caller at
MULTI_PARTY_VERIFIED with the maif:admin scope. The administrator proves it over the service's own routes
(POST /v1/attestation/challenge, then POST /v1/trust/bootstrap with a real software TPM quote, a key
proof and two approvals; tests/security/tpm_fixtures.py drives swtpm). The app runs in this process over
a real store and a real security manager, because the served configuration registers no approvers.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tpm_agent import approvals_json, attestation_json, b64, started_tpm, tpm_fixtures

from maif.security.attestation import AttestationVerifier, MeasuredEvent, replay_event_log
from maif.security.keys import raw_public_key
from maif.security.manager import SecurityManager, create_maif_security_manager
from maif.security.trust import possession_statement
from maif.service.app import create_app
from maif.storage import create_maif_storage

ADMIN = "admin-1"


@pytest.fixture(scope="module")
def software_tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tpm = started_tpm(tmp_path_factory.mktemp("admin-swtpm"))
    try:
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture(scope="module")
def admin_ak(software_tpm: Any) -> Any:
    return software_tpm.create_ak("ecc")


@pytest.fixture(scope="module")
def verifier(
    tmp_path_factory: pytest.TempPathFactory, software_tpm: Any, admin_ak: Any
) -> AttestationVerifier:
    """Built from the swtpm's root as trusted_tpm_roots; the administrator's AK enrolled by
    ActivateCredential (as in tests/security/test_manager.py)."""
    directory = tmp_path_factory.mktemp("admin-enrolling")
    root = directory / "tpm-root.pem"
    root.write_bytes((software_tpm.workdir / "ca" / "swtpm-localca-rootca-cert.pem").read_bytes())
    golden = replay_event_log(
        [MeasuredEvent(7, tpm_fixtures.BOOT_MEASUREMENT)], selection={"sha256": tpm_fixtures.QUOTED_INDICES}
    )
    with create_maif_security_manager(
        {"trusted_tpm_roots": [str(root)]},
        data_dir=directory,
        master_key=secrets.token_bytes(32),
        golden_pcrs=golden,
    ) as enrolling:
        built = enrolling.attestation_verifier
    assert built is not None
    software_tpm.enroll(built, ADMIN, admin_ak)
    return built


def level_5_evidence(
    manager: SecurityManager, tpm: Any, ak: Any, nonce: bytes, approvers: dict[str, Ed25519PrivateKey]
) -> dict[str, Any]:
    """The administrator's side of POST /v1/trust/bootstrap: a quote over the challenge bound to its key,
    the proof it holds that key, and the approvals."""
    signer = manager.keystore.signer(ADMIN)
    return {
        "attestation": attestation_json(tpm, ak, nonce, raw_public_key(signer.public_key)),
        "key_proof": {
            "key_id_hex": signer.key_id.hex(),
            "signature_base64": b64(signer.sign(possession_statement(ADMIN, nonce))),
        },
        "approvals": approvals_json(ADMIN, nonce, approvers),
    }


def test_an_administrator_deletes_another_agents_block_and_compacts(
    tmp_path: Path,
    oidc_issuer: Any,
    tokens: dict[str, str],
    software_tpm: Any,
    admin_ak: Any,
    verifier: AttestationVerifier,
) -> None:
    approvers = {f"approver-{index}": Ed25519PrivateKey.generate() for index in range(2)}
    manager = create_maif_security_manager(
        oidc_issuer.config(),
        data_dir=tmp_path / "security",
        master_key=secrets.token_bytes(32),
        attestation_verifier=verifier,
        approvers={name: key.public_key() for name, key in approvers.items()},
        approvals_required=2,
    )
    manager.keystore.create_key(ADMIN)
    admin_token = oidc_issuer.token(ADMIN, "maif:read maif:admin")
    try:
        asyncio.run(
            _scenario(tmp_path, manager, tokens["agent-1"], admin_token, software_tpm, admin_ak, approvers)
        )
    finally:
        manager.close()
    # Every decision is in the manager's audit log: the administrator's deletion as an allowed
    # "administer" on the block.
    entries = manager.get_audit_log()
    assert any(
        entry.actor == ADMIN
        and entry.action == "administer"
        and entry.resource == "block:agents-block"
        and entry.decision == "allow"
        for entry in entries
    )


async def _scenario(
    tmp_path: Path,
    manager: SecurityManager,
    agent_token: str,
    admin_token: str,
    tpm: Any,
    ak: Any,
    approvers: dict[str, Ed25519PrivateKey],
) -> None:
    agent = {"Authorization": f"Bearer {agent_token}"}
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with await create_maif_storage({"data_dir": str(tmp_path / "data")}) as storage:
        app = create_app(storage, manager, spool_dir=tmp_path / "spool")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://maif.test", timeout=60) as http:
            written = await http.post(
                "/v1/blocks",
                json={"id": "agents-block", "payload_base64": b64(b"agent data")},
                headers=agent,
            )
            assert written.status_code == 201, written.text
            # With only its token (OAUTH_VERIFIED) the administrator may not delete, nor compact.
            assert (await http.delete("/v1/blocks/agents-block", headers=admin)).status_code == 403
            assert (await http.post("/v1/admin/compact", headers=admin)).status_code == 403

            challenge = await http.post("/v1/attestation/challenge", headers=admin)
            assert challenge.status_code == 200, challenge.text
            nonce = base64.b64decode(challenge.json()["nonce_base64"])
            evidence = level_5_evidence(manager, tpm, ak, nonce, approvers)
            session = await http.post("/v1/trust/bootstrap", json=evidence, headers=admin)
            assert session.status_code == 200, session.text
            assert session.json()["trust_level_name"] == "MULTI_PARTY_VERIFIED"
            elevated = {**admin, "MAIF-Session": session.json()["session_id"]}

            absent = await http.delete("/v1/blocks/no-such-block", headers=elevated)
            assert absent.status_code == 404 and absent.headers["content-type"] == "application/problem+json"
            deleted = await http.delete("/v1/blocks/agents-block", headers=elevated)
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["block_id"] == "agents-block" and deleted.json()["lsn"] > 0
            assert (await http.get("/v1/blocks/agents-block", headers=agent)).status_code == 404

            compacted = await http.post(
                "/v1/admin/compact", params={"garbage_fraction": 0.5}, headers=elevated
            )
            assert compacted.status_code == 200, compacted.text
            assert compacted.json()["bytes_reclaimed"] >= 0 and compacted.json()["packs_examined"] >= 0
            assert (await http.post("/v1/admin/compact", headers=agent)).status_code == 403
        stats = await storage.get_stats()
        assert stats["deletes_total"] == 1 and stats["compactions_total"] == 1
