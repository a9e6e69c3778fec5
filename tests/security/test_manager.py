"""The security manager end to end: real OIDC tokens, a real software TPM, the real KeyStore and AuditLog.

Nothing here is a double: the tokens come from oidc-provider's client_credentials grant, the quotes from
swtpm through tpm2-tools (tests/security/tpm_fixtures.py), the keys from maif.security.keys and every
decision lands in maif.security.audit's log, which is verified offline at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tpm_fixtures import BOOT_MEASUREMENT, QUOTED_INDICES, AttestationKey, SoftwareTpm, run_script

from maif.errors import AuthorizationError, ConfigError, CryptoError, DecryptionError, MAIFError
from maif.format import merkle
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.security import manager as manager_module
from maif.security.attestation import AttestationVerifier, MeasuredEvent, replay_event_log
from maif.security.audit import verify_audit_log
from maif.security.keys import key_id_of, raw_public_key
from maif.security.manager import (
    AUDIT_SIGNER_AGENT_ID,
    BlockSignature,
    SealedData,
    SecurityManager,
    block_signature_payload,
    create_maif_security_manager,
)
from maif.security.policy import Action, Resource
from maif.security.trust import (
    Approval,
    KeyPossessionProof,
    SecurityContext,
    TrustLevel,
    approval_statement,
    possession_statement,
)


# ---- a real software TPM with two enrolled agents ---------------------------------------------------
@pytest.fixture(scope="module")
def software_tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftwareTpm]:
    installed = run_script("install", check=False)
    if installed.returncode != 0:
        pytest.fail(f"swtpm/tpm2-tools are missing and could not be installed:\n{installed.stderr}")
    tpm = SoftwareTpm(tmp_path_factory.mktemp("manager-swtpm"))
    tpm.start()
    try:
        tpm.extend(7, BOOT_MEASUREMENT)
        tpm.endorsement()
        yield tpm
    finally:
        tpm.stop()


@pytest.fixture(scope="module")
def attestation_keys(software_tpm: SoftwareTpm) -> dict[str, AttestationKey]:
    return {"agent-1": software_tpm.create_ak("ecc"), "admin-1": software_tpm.create_ak("rsa")}


@pytest.fixture
def approver_keys() -> dict[str, Ed25519PrivateKey]:
    return {f"approver-{index}": Ed25519PrivateKey.generate() for index in range(3)}


@pytest.fixture(scope="module")
def enrolled_verifier(
    tmp_path_factory: pytest.TempPathFactory,
    software_tpm: SoftwareTpm,
    attestation_keys: dict[str, AttestationKey],
) -> AttestationVerifier:
    """Built by create_maif_security_manager from trusted_tpm_roots; AKs enrolled by ActivateCredential."""
    directory = tmp_path_factory.mktemp("enrolling-manager")
    root = directory / "tpm-root.pem"
    root.write_bytes((software_tpm.workdir / "ca" / "swtpm-localca-rootca-cert.pem").read_bytes())
    golden = replay_event_log([MeasuredEvent(7, BOOT_MEASUREMENT)], selection={"sha256": QUOTED_INDICES})
    with create_maif_security_manager(
        {"trusted_tpm_roots": [str(root)]},
        data_dir=directory,
        master_key=secrets.token_bytes(32),
        golden_pcrs=golden,
    ) as enrolling:
        verifier = enrolling.attestation_verifier
    assert verifier is not None
    for agent, ak in attestation_keys.items():
        software_tpm.enroll(verifier, agent, ak)
    return verifier


@pytest.fixture
def manager(
    oidc_issuer: Any,
    make_manager: Any,
    enrolled_verifier: AttestationVerifier,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> SecurityManager:
    built: SecurityManager = make_manager(
        oidc_issuer,
        attestation_verifier=enrolled_verifier,
        approvers={name: key.public_key() for name, key in approver_keys.items()},
        approvals_required=2,
    )
    for agent in ("agent-1", "admin-1", "agent-2"):
        built.keystore.create_key(agent)
    return built


def bootstrap(manager: SecurityManager, *args: Any, **kwargs: Any) -> SecurityContext:
    return asyncio.run(manager.bootstrap_trust(*args, **kwargs))


def attested(
    manager: SecurityManager,
    tpm: SoftwareTpm,
    ak: AttestationKey,
    agent: str,
    token: str,
    *,
    prove_key: bool = False,
    approvers: dict[str, Ed25519PrivateKey] | None = None,
) -> SecurityContext:
    """The agent's whole side of a bootstrap: quote (bound to its key), key proof, approvals."""
    assert manager.attestation_verifier is not None
    signer = manager.keystore.signer(agent)
    binding = raw_public_key(signer.public_key) if prove_key else None
    attestation = tpm.attest(manager.attestation_verifier, agent, ak, binding=binding)
    proof = None
    if prove_key:
        proof = KeyPossessionProof(signer.key_id, signer.sign(possession_statement(agent, attestation.nonce)))
    approvals = [
        Approval(name, key.sign(approval_statement(agent, attestation.nonce)))
        for name, key in (approvers or {}).items()
    ]
    return bootstrap(manager, agent, token, attestation, key_proof=proof, approvals=approvals)


# ---- the trust chain on real hardware evidence ------------------------------------------------------
def test_real_evidence_climbs_every_trust_level(
    manager: SecurityManager,
    oidc_issuer: Any,
    software_tpm: SoftwareTpm,
    attestation_keys: dict[str, AttestationKey],
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    ak = attestation_keys["agent-1"]
    token = oidc_issuer.token("agent-1", "maif:read maif:write maif:full")
    assert bootstrap(manager, "agent-1", token).trust_level is TrustLevel.OAUTH_VERIFIED
    level3 = attested(manager, software_tpm, ak, "agent-1", token)
    assert level3.trust_level is TrustLevel.HARDWARE_ATTESTED and level3.can_read_sensitive()
    level4 = attested(manager, software_tpm, ak, "agent-1", token, prove_key=True)
    assert level4.trust_level is TrustLevel.CRYPTOGRAPHICALLY_PROVEN
    two = {name: approver_keys[name] for name in ("approver-0", "approver-1")}
    level5 = attested(manager, software_tpm, ak, "agent-1", token, prove_key=True, approvers=two)
    assert level5.trust_level is TrustLevel.MULTI_PARTY_VERIFIED
    # agent-1's client has no maif:admin scope: level 5 alone does not make an administrator.
    with pytest.raises(AuthorizationError, match="scopes"):
        manager.authorize(level5, Action.ADMINISTER, Resource("store", owner="agent-1", kind="store"))


def test_administration_needs_level_5_and_the_admin_scope(
    manager: SecurityManager,
    oidc_issuer: Any,
    software_tpm: SoftwareTpm,
    attestation_keys: dict[str, AttestationKey],
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    ak = attestation_keys["admin-1"]
    token = oidc_issuer.token("admin-1", "maif:read maif:admin")
    store = Resource("store", owner="admin-1", kind="store")
    level4 = attested(manager, software_tpm, ak, "admin-1", token, prove_key=True)
    with pytest.raises(AuthorizationError, match="MULTI_PARTY_VERIFIED"):
        manager.authorize(level4, Action.ADMINISTER, store)
    level5 = attested(manager, software_tpm, ak, "admin-1", token, prove_key=True, approvers=approver_keys)
    grant = manager.authorize(level5, Action.ADMINISTER, store)
    grant.require(Action.ADMINISTER, "store")


def test_a_real_quote_of_another_agent_is_refused(
    manager: SecurityManager,
    oidc_issuer: Any,
    software_tpm: SoftwareTpm,
    attestation_keys: dict[str, AttestationKey],
) -> None:
    assert manager.attestation_verifier is not None
    # admin-1's genuine quote, presented with agent-1's token for agent-1.
    quote = software_tpm.attest(manager.attestation_verifier, "admin-1", attestation_keys["admin-1"])
    with pytest.raises(Exception, match=r"nonce|attestation key|enrolled"):
        bootstrap(manager, "agent-1", oidc_issuer.token("agent-1"), quote)
    assert manager.get_audit_log()[-1].decision == "deny"


# ---- block signatures -------------------------------------------------------------------------------
@pytest.fixture
def writer(manager: SecurityManager, oidc_issuer: Any) -> SecurityContext:
    return bootstrap(manager, "agent-1", oidc_issuer.token("agent-1", "maif:read maif:write"))


def test_signed_blocks_verify_against_the_registered_key(
    manager: SecurityManager, writer: SecurityContext
) -> None:
    block = MAIFBlock("b-1", MAIFBlockType.TEXT, b"hello", {"lang": "en"}, 1.0, "agent-1")
    envelope = manager.sign_maif_block(block, writer)
    decoded = msgspec.msgpack.decode(envelope, type=BlockSignature)
    assert decoded.agent_id == "agent-1" and decoded.trust_level == TrustLevel.OAUTH_VERIFIED
    assert decoded.key_id == manager.keystore.signer("agent-1").key_id
    assert manager.verify_maif_block_signature(block, envelope, "agent-1") == (
        True,
        TrustLevel.OAUTH_VERIFIED,
    )
    raw = manager.sign_maif_block(b"raw bytes", writer)
    assert manager.verify_maif_block_signature(b"raw bytes", raw, "agent-1")[0]
    changed = MAIFBlock("b-1", MAIFBlockType.TEXT, b"hellp", {"lang": "en"}, 1.0, "agent-1")
    assert manager.verify_maif_block_signature(changed, envelope, "agent-1") == (False, TrustLevel.UNTRUSTED)
    assert manager.verify_maif_block_signature(block, envelope, "agent-2") == (False, TrustLevel.UNTRUSTED)
    assert manager.verify_maif_block_signature(b"raw bytez", raw, "agent-1")[0] is False


def forged(envelope: bytes, **changes: Any) -> bytes:
    decoded = msgspec.msgpack.decode(envelope, type=BlockSignature)
    return msgspec.msgpack.encode(msgspec.structs.replace(decoded, **changes))


def test_forged_envelopes_are_refused(manager: SecurityManager, writer: SecurityContext) -> None:
    block = b"payload"
    envelope = manager.sign_maif_block(block, writer)
    decoded = msgspec.msgpack.decode(envelope, type=BlockSignature)
    attacker = Ed25519PrivateKey.generate()
    attacker_id = key_id_of(attacker.public_key())

    def attacker_signed(**changes: Any) -> bytes:
        fields = {**msgspec.structs.asdict(decoded), **changes}
        payload = block_signature_payload(
            fields["agent_id"], fields["key_id"], fields["signed_at"], fields["trust_level"], fields["digest"]
        )
        return forged(envelope, **changes, signature=attacker.sign(payload))

    agent2 = manager.keystore.signer("agent-2")
    agent2_payload = block_signature_payload("agent-1", agent2.key_id, decoded.signed_at, 2, decoded.digest)
    forgeries = [
        forged(envelope, trust_level=5),  # claims a higher level
        forged(envelope, signed_at=decoded.signed_at - 1),  # re-dated
        attacker_signed(key_id=attacker_id),  # the attacker's own (unregistered) key
        attacker_signed(),  # the agent's key id, the attacker's signature
        forged(envelope, key_id=agent2.key_id, signature=agent2.sign(agent2_payload)),  # another agent's key
        attacker_signed(key_id=attacker_id, signed_at=time.time() + 3600),
        forged(envelope, version=2),
        forged(envelope, trust_level=9),
        envelope[:-1],
        envelope + b"\x00",
        b"",
        b"\x00" * 5000,
        json.dumps({"agent_id": "agent-1"}).encode(),
    ]
    for bad in forgeries:
        assert manager.verify_maif_block_signature(block, bad, "agent-1") == (False, TrustLevel.UNTRUSTED)
    assert manager.verify_maif_block_signature(block, envelope, "agent-1")[0]


def test_revocation_and_rotation_respect_the_validity_window(
    manager: SecurityManager, writer: SecurityContext
) -> None:
    before = manager.sign_maif_block(b"signed before", writer)
    old_key = manager.keystore.signer("agent-1").key_id
    manager.keystore.rotate("agent-1")
    after_rotation = manager.sign_maif_block(b"signed after rotation", writer)
    assert manager.verify_maif_block_signature(b"signed before", before, "agent-1")[0]
    assert manager.verify_maif_block_signature(b"signed after rotation", after_rotation, "agent-1")[0]
    # Revoked back to before the first signature (a suspected compromise): the old key's work is refused.
    manager.keystore.revoke(old_key, at=time.time() - 3600)
    assert not manager.verify_maif_block_signature(b"signed before", before, "agent-1")[0]
    assert manager.verify_maif_block_signature(b"signed after rotation", after_rotation, "agent-1")[0]


def test_signing_needs_permission_and_a_key(manager: SecurityManager, oidc_issuer: Any) -> None:
    reader = bootstrap(manager, "other-service", oidc_issuer.token("other-service", "maif:read"))
    with pytest.raises(AuthorizationError, match="scopes"):
        manager.sign_maif_block(b"x", reader)
    no_key = bootstrap(manager, "agent-1", oidc_issuer.mint({"sub": "agent-1"}))
    manager.keystore.revoke(manager.keystore.signer("agent-1").key_id)
    with pytest.raises(CryptoError):
        manager.sign_maif_block(b"x", no_key)


def test_a_batch_root_signs_many_blocks_at_once(manager: SecurityManager, writer: SecurityContext) -> None:
    blocks = [
        MAIFBlock(f"b-{index}", data=f"payload {index}".encode(), agent_id="agent-1") for index in range(100)
    ]
    from maif.format.codec import block_digest

    leaves = merkle.leaf_hashes_of([block_digest(block) for block in blocks])
    root = merkle.root(leaves)
    envelope = manager.sign_maif_block(root, writer)
    assert manager.verify_maif_block_signature(root, envelope, "agent-1")[0]
    proof = merkle.inclusion_proof(leaves, 42)
    merkle.verify_inclusion(leaves[42], 42, len(leaves), proof, root)


# ---- sealed data ------------------------------------------------------------------------------------
@pytest.fixture
def attested_reader(
    manager: SecurityManager,
    oidc_issuer: Any,
    software_tpm: SoftwareTpm,
    attestation_keys: dict[str, AttestationKey],
) -> SecurityContext:
    token = oidc_issuer.token("agent-1", "maif:read maif:write")
    return attested(manager, software_tpm, attestation_keys["agent-1"], "agent-1", token)


def test_sealed_data_round_trips_only_for_its_owner_and_purpose(
    manager: SecurityManager,
    writer: SecurityContext,
    attested_reader: SecurityContext,
    oidc_issuer: Any,
    software_tpm: SoftwareTpm,
    attestation_keys: dict[str, AttestationKey],
) -> None:
    secret = b"the patient's diagnosis " + secrets.token_bytes(16)
    sealed = manager.encrypt_sensitive_data(secret, writer, purpose="medical")
    assert secret not in sealed
    assert manager.decrypt_sensitive_data(sealed, attested_reader, purpose="medical") == secret
    with pytest.raises(AuthorizationError, match="HARDWARE_ATTESTED"):  # level 2 may seal, not unseal
        manager.decrypt_sensitive_data(sealed, writer, purpose="medical")
    with pytest.raises(DecryptionError):
        manager.decrypt_sensitive_data(sealed, attested_reader, purpose="billing")
    admin_token = oidc_issuer.token("admin-1", "maif:read maif:write")
    other = attested(manager, software_tpm, attestation_keys["admin-1"], "admin-1", admin_token)
    with pytest.raises(DecryptionError):
        manager.decrypt_sensitive_data(sealed, other, purpose="medical")
    audit_bytes = manager.audit_log.path.read_bytes()
    assert secret not in audit_bytes and admin_token.encode() not in audit_bytes


def test_tampered_sealed_data_is_refused(
    manager: SecurityManager, writer: SecurityContext, attested_reader: SecurityContext
) -> None:
    sealed = manager.encrypt_sensitive_data(b"x" * 1000, writer)
    decoded = msgspec.msgpack.decode(sealed, type=SealedData)

    def flipped(value: bytes, index: int = 0) -> bytes:
        return value[:index] + bytes([value[index] ^ 1]) + value[index + 1 :]

    tampered = [
        msgspec.structs.replace(decoded, ciphertext=flipped(decoded.ciphertext, 500)),
        msgspec.structs.replace(decoded, ciphertext=flipped(decoded.ciphertext, len(decoded.ciphertext) - 1)),
        msgspec.structs.replace(decoded, ciphertext=decoded.ciphertext[:-16]),
        msgspec.structs.replace(decoded, nonce=flipped(decoded.nonce)),
        msgspec.structs.replace(decoded, wrapped_data_key=flipped(decoded.wrapped_data_key)),
        msgspec.structs.replace(decoded, wrap_nonce=flipped(decoded.wrap_nonce)),
        msgspec.structs.replace(decoded, kek_id=flipped(decoded.kek_id)),
        msgspec.structs.replace(decoded, agent_id="agent-2"),
        msgspec.structs.replace(decoded, purpose="other"),
        msgspec.structs.replace(decoded, version=2),
    ]
    for bad in tampered:
        with pytest.raises(DecryptionError):
            manager.decrypt_sensitive_data(msgspec.msgpack.encode(bad), attested_reader)
    for garbage in (b"", sealed[:-3], b"\xff" * 100):
        with pytest.raises(DecryptionError):
            manager.decrypt_sensitive_data(garbage, attested_reader)
    assert manager.decrypt_sensitive_data(sealed, attested_reader) == b"x" * 1000


def test_another_managers_master_key_cannot_open_sealed_data(
    manager: SecurityManager, writer: SecurityContext, attested_reader: SecurityContext, tmp_path: Path
) -> None:
    sealed = manager.encrypt_sensitive_data(b"secret", writer)
    decoded = msgspec.msgpack.decode(sealed, type=SealedData)
    relabelled = msgspec.msgpack.encode(msgspec.structs.replace(decoded, kek_id=bytes(16)))
    with pytest.raises(DecryptionError, match="key-encryption key"):
        manager.decrypt_sensitive_data(relabelled, attested_reader)


# ---- audit, configuration, the seed's functions -----------------------------------------------------
def test_every_decision_is_in_a_verifiable_audit_log(
    manager: SecurityManager, writer: SecurityContext, oidc_issuer: Any
) -> None:
    envelope = manager.sign_maif_block(b"block", writer)
    manager.verify_maif_block_signature(b"block", envelope, "agent-1")
    manager.verify_maif_block_signature(b"other", envelope, "agent-1")
    with pytest.raises(AuthorizationError):
        manager.decrypt_sensitive_data(b"", writer)
    token = oidc_issuer.token()
    with pytest.raises(Exception, match="subject"):
        bootstrap(manager, "agent-2", token)
    entries = manager.get_audit_log()
    summary = [(entry.actor, entry.action, entry.decision) for entry in entries]
    assert ("agent-1", "bootstrap_trust", "allow") in summary
    assert ("agent-1", "write", "allow") in summary
    assert ("agent-1", "verify_block_signature", "allow") in summary
    assert ("agent-1", "verify_block_signature", "deny") in summary
    assert ("agent-1", "read", "deny") in summary
    assert ("agent-2", "bootstrap_trust", "deny") in summary
    path = manager.audit_log.path
    audit_key = manager.keystore.current_key(AUDIT_SIGNER_AGENT_ID)
    assert audit_key is not None
    manager.close()
    assert token.encode() not in path.read_bytes()
    report = verify_audit_log(path, [audit_key])
    assert report.entries == len(entries) and report.fully_signed


def test_manager_from_a_config_file_and_the_seed_functions(
    oidc_issuer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "maif.json"
    config_path.write_text(json.dumps({"security": {**oidc_issuer.config(), "min_trust_level_write": 2}}))
    monkeypatch.setenv("MAIF_MASTER_KEY", secrets.token_hex(32))
    with create_maif_security_manager(str(config_path), data_dir=tmp_path / "sec") as manager:
        manager.keystore.create_key("agent-1")
        context = asyncio.run(manager_module.bootstrap_trust(manager, "agent-1", oidc_issuer.token()))
        envelope = manager_module.sign_maif_block(manager, b"data", context)
        assert manager_module.verify_maif_block_signature(manager, b"data", envelope, "agent-1")[0]
        sealed = manager_module.encrypt_sensitive_data(manager, b"data", context)
        with pytest.raises(AuthorizationError):
            manager_module.decrypt_sensitive_data(manager, sealed, context)
        assert len(manager_module.get_audit_log(manager)) >= 4
    import maif.security as security

    assert security.create_maif_security_manager is create_maif_security_manager
    assert security.TrustLevel.MULTI_PARTY_VERIFIED == 5


@pytest.mark.parametrize(
    "roots",
    [["/no/such/root.pem"], ["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"]],
)
def test_an_unreadable_trusted_tpm_root_is_a_config_error(tmp_path: Path, roots: list[str]) -> None:
    with pytest.raises(ConfigError, match="trusted TPM root"):
        create_maif_security_manager(
            {"trusted_tpm_roots": roots}, data_dir=tmp_path / "roots", master_key=bytes(32)
        )


def test_the_manager_refuses_a_typo(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown security setting"):
        create_maif_security_manager(
            {"min_trust_level_wirte": 3}, data_dir=tmp_path / "b", master_key=bytes(32)
        )


def test_nothing_is_allowed_once_decisions_cannot_be_recorded(
    manager: SecurityManager, writer: SecurityContext, oidc_issuer: Any
) -> None:
    manager.audit_log.close()
    with pytest.raises(AuthorizationError, match="audit log"):
        manager.sign_maif_block(b"block", writer)
    with pytest.raises(AuthorizationError, match="audit log"):
        manager.encrypt_sensitive_data(b"data", writer)
    with pytest.raises(MAIFError):
        bootstrap(manager, "agent-1", oidc_issuer.token())
