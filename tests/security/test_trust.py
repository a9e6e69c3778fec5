"""Trust bootstrap: each level is earned by its evidence, and failed evidence fails the bootstrap.

Tokens come from the real OIDC issuer, keys from the real KeyStore, the audit log is real. The TPM side is a
small test double that follows the attestation contract (single-use nonces, the AK enrolled per agent,
extraData = nonce or SHA-256(nonce || binding)), so the many edge cases stay fast; test_manager.py runs
the same chain end to end against a real software TPM.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from typing import Any

import argon2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from maif.errors import AttestationError, AuthenticationError, AuthorizationError, TokenError
from maif.security.attestation import AttestationResult, HardwareAttestation
from maif.security.credentials import CredentialStore
from maif.security.manager import SecurityManager
from maif.security.policy import Action, Resource, Sensitivity
from maif.security.trust import (
    Approval,
    KeyPossessionProof,
    TrustLevel,
    approval_statement,
    possession_statement,
)

FAST_HASHER = argon2.PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1, type=argon2.Type.ID)


class ContractAttestationVerifier:
    """Test double of maif.security.attestation.AttestationVerifier's contract (no TPM structures)."""

    def __init__(self, valid_for_s: float = 120.0) -> None:
        self.enrolled: dict[str, bytes] = {}
        self.nonces: dict[bytes, str] = {}
        self.valid_for_s = valid_for_s
        self.bindings: list[bytes | None] = []

    def close(self) -> None:
        """The contract's close (the real verifier writes its newest TPM clocks there)."""

    def new_challenge(self, agent_id: str) -> bytes:
        nonce = os.urandom(32)
        self.nonces[nonce] = agent_id
        return nonce

    def verify_quote(
        self, agent_id: str, attestation: HardwareAttestation, *, binding: bytes | None = None
    ) -> AttestationResult:
        self.bindings.append(binding)
        if self.nonces.pop(attestation.nonce, None) != agent_id:
            raise AttestationError("nonce not issued to this agent, or already used")
        if self.enrolled.get(agent_id) != attestation.ak_public:
            raise AttestationError("not the AK enrolled for this agent")
        expected = (
            attestation.nonce if binding is None else hashlib.sha256(attestation.nonce + binding).digest()
        )
        if not hmac.compare_digest(attestation.quote, expected):
            raise AttestationError("extraData mismatch")
        now = time.time()
        return AttestationResult(
            agent_id, b"\x00\x0b" + bytes(32), {}, 0, 0, 0, 0, now, now + self.valid_for_s
        )

    def quote(
        self, agent_id: str, *, binding: bytes | None = None, ak: bytes | None = None
    ) -> HardwareAttestation:
        """The agent's side: a challenge, then a 'quote' whose extraData follows the contract."""
        nonce = self.new_challenge(agent_id)
        extra = nonce if binding is None else hashlib.sha256(nonce + binding).digest()
        return HardwareAttestation(
            extra, b"sig", {}, ak if ak is not None else self.enrolled[agent_id], nonce
        )


@pytest.fixture
def tpm() -> ContractAttestationVerifier:
    verifier = ContractAttestationVerifier()
    verifier.enrolled = {"agent-1": b"ak-of-agent-1", "agent-2": b"ak-of-agent-2"}
    return verifier


@pytest.fixture
def approver_keys() -> dict[str, Ed25519PrivateKey]:
    return {f"approver-{index}": Ed25519PrivateKey.generate() for index in range(3)}


@pytest.fixture
def manager(
    oidc_issuer: Any,
    make_manager: Any,
    tpm: ContractAttestationVerifier,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> SecurityManager:
    built: SecurityManager = make_manager(
        oidc_issuer,
        attestation_verifier=tpm,
        approvals_required=2,
        approvers={name: key.public_key() for name, key in approver_keys.items()},
    )
    for agent in ("agent-1", "agent-2"):
        built.keystore.create_key(agent)
    return built


def bootstrap(manager: SecurityManager, *args: Any, **kwargs: Any) -> Any:
    return asyncio.run(manager.bootstrap_trust(*args, **kwargs))


def key_proof(
    manager: SecurityManager, agent: str, nonce: bytes, *, signer_agent: str | None = None
) -> KeyPossessionProof:
    signer = manager.keystore.signer(signer_agent or agent)
    return KeyPossessionProof(signer.key_id, signer.sign(possession_statement(agent, nonce)))


def raw_key(manager: SecurityManager, agent: str) -> bytes:
    current = manager.keystore.current_key(agent)
    assert current is not None
    return current.public_key


def test_a_verified_token_earns_oauth_verified(manager: SecurityManager, oidc_issuer: Any) -> None:
    context = bootstrap(manager, "agent-1", oidc_issuer.token("agent-1", "maif:read maif:write"))
    assert context.trust_level is TrustLevel.OAUTH_VERIFIED
    assert context.can_write() and not context.can_read_sensitive()
    assert context.scopes == {"maif:read", "maif:write"}
    assert context.expires_at <= time.time() + 300 + 1
    assert context.evidence == (f"oauth:{oidc_issuer.url}",)


def test_a_token_for_another_subject_earns_nothing(manager: SecurityManager, oidc_issuer: Any) -> None:
    with pytest.raises(AuthenticationError, match="subject"):
        bootstrap(manager, "agent-2", oidc_issuer.token("agent-1"))
    with pytest.raises(TokenError):
        bootstrap(manager, "agent-1", "not-a-token")
    with pytest.raises(AuthenticationError, match="reserved"):
        bootstrap(manager, "maif:security-manager", oidc_issuer.mint({"sub": "maif:security-manager"}))
    denials = [entry for entry in manager.get_audit_log() if entry.decision == "deny"]
    assert len(denials) == 3 and all(entry.action == "bootstrap_trust" for entry in denials)


def test_hardware_attestation_of_the_same_identity_earns_level_3(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    context = bootstrap(manager, "agent-1", oidc_issuer.token(), tpm.quote("agent-1"))
    assert context.trust_level is TrustLevel.HARDWARE_ATTESTED and context.can_read_sensitive()
    assert tpm.bindings == [None]


def test_a_quote_from_another_agents_tpm_fails_the_bootstrap(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    # agent-1's token with agent-2's (perfectly valid) attestation: the identities must be the same.
    with pytest.raises(AttestationError):
        bootstrap(manager, "agent-1", oidc_issuer.token(), tpm.quote("agent-2"))
    with pytest.raises(AttestationError):
        bootstrap(manager, "agent-1", oidc_issuer.token(), tpm.quote("agent-1", ak=b"ak-of-agent-2"))
    attestation = tpm.quote("agent-1")
    bootstrap(manager, "agent-1", oidc_issuer.token(), attestation)
    with pytest.raises(AttestationError):  # replayed quote: its nonce was used
        bootstrap(manager, "agent-1", oidc_issuer.token(), attestation)


def test_proof_of_a_registered_key_bound_to_the_tpm_earns_level_4(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    attestation = tpm.quote("agent-1", binding=raw_key(manager, "agent-1"))
    proof = key_proof(manager, "agent-1", attestation.nonce)
    context = bootstrap(manager, "agent-1", oidc_issuer.token(), attestation, key_proof=proof)
    assert context.trust_level is TrustLevel.CRYPTOGRAPHICALLY_PROVEN
    assert context.signing_key_id == proof.key_id
    assert tpm.bindings == [raw_key(manager, "agent-1")]


def test_key_proofs_that_do_not_hold_fail_the_bootstrap(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    binding = raw_key(manager, "agent-1")
    # Signed by agent-2's key: not a key of agent-1.
    attestation = tpm.quote("agent-1", binding=binding)
    with pytest.raises(AuthenticationError, match="not a registered key"):
        bootstrap(
            manager,
            "agent-1",
            oidc_issuer.token(),
            attestation,
            key_proof=key_proof(manager, "agent-1", attestation.nonce, signer_agent="agent-2"),
        )
    # Right key, signature over another nonce.
    attestation = tpm.quote("agent-1", binding=binding)
    with pytest.raises(AuthenticationError, match="possession"):
        bootstrap(
            manager,
            "agent-1",
            oidc_issuer.token(),
            attestation,
            key_proof=key_proof(manager, "agent-1", os.urandom(32)),
        )
    # Right proof, but the quote is not bound to that key.
    attestation = tpm.quote("agent-1")
    with pytest.raises(AttestationError):
        bootstrap(
            manager,
            "agent-1",
            oidc_issuer.token(),
            attestation,
            key_proof=key_proof(manager, "agent-1", attestation.nonce),
        )
    # A revoked key proves nothing.
    attestation = tpm.quote("agent-1", binding=binding)
    proof = key_proof(manager, "agent-1", attestation.nonce)
    manager.keystore.revoke(proof.key_id, at=time.time() - 1)
    with pytest.raises(AuthenticationError, match="possession"):
        bootstrap(manager, "agent-1", oidc_issuer.token(), attestation, key_proof=proof)
    with pytest.raises(AuthenticationError, match="hardware attestation"):
        bootstrap(manager, "agent-1", oidc_issuer.token(), key_proof=proof)


def approvals_for(
    keys: dict[str, Ed25519PrivateKey], agent: str, nonce: bytes, names: list[str]
) -> list[Approval]:
    statement = approval_statement(agent, nonce)
    return [Approval(name, keys[name].sign(statement)) for name in names]


def level_4_evidence(
    manager: SecurityManager, tpm: ContractAttestationVerifier
) -> tuple[Any, KeyPossessionProof]:
    attestation = tpm.quote("agent-1", binding=raw_key(manager, "agent-1"))
    return attestation, key_proof(manager, "agent-1", attestation.nonce)


def test_k_of_n_approvals_earn_multi_party_verified(
    manager: SecurityManager,
    oidc_issuer: Any,
    tpm: ContractAttestationVerifier,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    attestation, proof = level_4_evidence(manager, tpm)
    approvals = approvals_for(approver_keys, "agent-1", attestation.nonce, ["approver-0", "approver-2"])
    context = bootstrap(
        manager, "agent-1", oidc_issuer.token(), attestation, key_proof=proof, approvals=approvals
    )
    assert context.trust_level is TrustLevel.MULTI_PARTY_VERIFIED
    assert context.approvers == ("approver-0", "approver-2")


@pytest.mark.parametrize(
    "case", ["too_few", "duplicate", "unregistered", "other_nonce", "other_agent", "forged"]
)
def test_approvals_below_k_fail_the_bootstrap(
    manager: SecurityManager,
    oidc_issuer: Any,
    tpm: ContractAttestationVerifier,
    approver_keys: dict[str, Ed25519PrivateKey],
    case: str,
) -> None:
    attestation, proof = level_4_evidence(manager, tpm)
    nonce = attestation.nonce
    good = approvals_for(approver_keys, "agent-1", nonce, ["approver-0"])
    outsider = Ed25519PrivateKey.generate()
    extra = {
        "too_few": [],
        "duplicate": good,
        "unregistered": [Approval("approver-9", outsider.sign(approval_statement("agent-1", nonce)))],
        "other_nonce": approvals_for(approver_keys, "agent-1", os.urandom(32), ["approver-1"]),
        "other_agent": approvals_for(approver_keys, "agent-2", nonce, ["approver-1"]),
        "forged": [Approval("approver-1", outsider.sign(approval_statement("agent-1", nonce)))],
    }[case]
    with pytest.raises(AuthenticationError, match="1 valid approvals"):
        bootstrap(
            manager, "agent-1", oidc_issuer.token(), attestation, key_proof=proof, approvals=good + extra
        )


def test_approvals_need_a_proven_key_first(
    manager: SecurityManager,
    oidc_issuer: Any,
    tpm: ContractAttestationVerifier,
    approver_keys: dict[str, Ed25519PrivateKey],
) -> None:
    attestation = tpm.quote("agent-1")
    approvals = approvals_for(approver_keys, "agent-1", attestation.nonce, ["approver-0", "approver-1"])
    with pytest.raises(AuthenticationError, match="CRYPTOGRAPHICALLY_PROVEN"):
        bootstrap(manager, "agent-1", oidc_issuer.token(), attestation, approvals=approvals)


def test_context_expires_with_the_first_of_token_and_attestation(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    tpm.valid_for_s = 5
    context = bootstrap(manager, "agent-1", oidc_issuer.token(), tpm.quote("agent-1"))
    assert context.expires_at <= time.time() + 5
    tpm.valid_for_s = 10_000
    token = oidc_issuer.mint({"exp": int(time.time()) + 40})
    context = bootstrap(manager, "agent-1", token, tpm.quote("agent-1"))
    assert context.expires_at == int(time.time()) + 40 or context.expires_at <= time.time() + 40
    assert not context.is_expired(time.time()) and context.is_expired(time.time() + 41)


def test_scopes_still_bound_what_a_high_level_may_do(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    context = bootstrap(manager, "agent-1", oidc_issuer.mint({"scope": "maif:read"}), tpm.quote("agent-1"))
    assert context.trust_level is TrustLevel.HARDWARE_ATTESTED and not context.can_write()
    with pytest.raises(AuthorizationError, match="scopes"):
        manager.authorize(context, Action.WRITE, Resource("b-1", owner="agent-1"))
    manager.authorize(
        context, Action.READ, Resource("b-1", owner="agent-1", sensitivity=Sensitivity.SENSITIVE)
    )


def test_basic_auth_earns_level_1_only(manager: SecurityManager) -> None:
    credentials = CredentialStore(hasher=FAST_HASHER)
    assert CredentialStore()._hasher.type is argon2.Type.ID  # the default is argon2id
    manager.credentials = credentials
    credentials.set_password("agent-7", "a long and careful password", scopes=["maif:read", "maif:write"])
    api_key = credentials.issue_api_key("agent-8", scopes=["maif:full"])
    by_password = manager.authenticate_password("agent-7", "a long and careful password")
    by_key = manager.authenticate_api_key(api_key)
    for context in (by_password, by_key):
        assert context.trust_level is TrustLevel.BASIC_AUTH and not context.can_write()
        with pytest.raises(AuthorizationError, match="OAUTH_VERIFIED"):
            manager.authorize(context, Action.READ, Resource("b-1", owner=context.agent_id))
    with pytest.raises(AuthenticationError):
        manager.authenticate_password("agent-7", "wrong")
    audit_text = repr(manager.get_audit_log())
    assert "a long and careful password" not in audit_text and api_key not in audit_text


def test_a_password_login_named_like_an_issuers_agent_gets_nothing_of_it(
    manager: SecurityManager, oidc_issuer: Any
) -> None:
    """Password and API-key logins use bare names, which can equal an OAuth agent id (ADR 0027): a login
    "agent-1" with every scope must still pass nothing on the issuer's agent-1's resources, because
    BASIC_AUTH (level 1) is below every operation's floor and bootstrap needs the issuer's token."""
    manager.credentials = CredentialStore(hasher=FAST_HASHER)
    manager.credentials.set_password(
        "agent-1", "a long and careful password", scopes=["maif:full", "maif:admin"]
    )
    genuine = asyncio.run(manager.bootstrap_trust("agent-1", oidc_issuer.token("agent-1")))
    collided = manager.authenticate_password("agent-1", "a long and careful password")
    assert collided.agent_id == genuine.agent_id and collided.tenant == genuine.tenant
    resources = [
        Resource("b-1", owner="agent-1"),
        Resource("b-2", owner="agent-1", sensitivity=Sensitivity.SENSITIVE),
        Resource("b-3", owner="agent-1", shared=True),
        Resource("agent:agent-1", owner="agent-1", kind="agent-key"),
    ]
    manager.authorize(genuine, Action.READ, resources[0])  # the issuer's agent-1 reads its public block
    for resource in resources:
        for action in Action:
            with pytest.raises(AuthorizationError, match="needs trust level"):
                manager.authorize(collided, action, resource)


def test_concurrent_bootstraps_each_get_their_own_context(manager: SecurityManager, oidc_issuer: Any) -> None:
    tokens = [
        oidc_issuer.token("agent-1"),
        oidc_issuer.token("agent-2"),
        oidc_issuer.mint({"sub": "agent-2"}),
    ]
    before = len(manager.get_audit_log())

    async def all_at_once() -> list[Any]:
        agents = ["agent-1", "agent-2", "agent-2"] * 5
        return await asyncio.gather(
            *(manager.bootstrap_trust(agent, tokens[index % 3]) for index, agent in enumerate(agents))
        )

    contexts = asyncio.run(all_at_once())
    assert len({context.context_id for context in contexts}) == 15
    assert [context.agent_id for context in contexts] == ["agent-1", "agent-2", "agent-2"] * 5
    assert len(manager.get_audit_log()) - before == 15


def test_approver_registry_configuration_is_checked() -> None:
    keys = {f"a-{index}": Ed25519PrivateKey.generate().public_key() for index in range(3)}
    from maif.errors import ConfigError
    from maif.security.trust import ApproverRegistry

    for required in (0, 4, -1):
        with pytest.raises(ConfigError, match="approvals required"):
            ApproverRegistry(keys, required)
    with pytest.raises(AuthenticationError, match="not configured"):
        ApproverRegistry({}, 0).verify("agent-1", os.urandom(32), [])


def test_evidence_of_the_wrong_shape_is_refused_not_crashed_on(
    manager: SecurityManager, oidc_issuer: Any, tpm: ContractAttestationVerifier
) -> None:
    token = oidc_issuer.token()
    attestation = tpm.quote("agent-1")
    for bad in ({"quote": b""}, b"quote", "quote"):
        with pytest.raises(AttestationError, match="HardwareAttestation"):
            bootstrap(manager, "agent-1", token, bad)
    for proof in ("proof", KeyPossessionProof("id", b"sig")):  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError, match="KeyPossessionProof"):
            bootstrap(manager, "agent-1", token, attestation, key_proof=proof)
    for approvals in ("ab", [("approver-0", b"sig")], [Approval("a", b"s")] * 65):
        with pytest.raises(AuthenticationError, match="approvals must be"):
            bootstrap(manager, "agent-1", token, attestation, approvals=approvals)
    for agent in ("", None, "x" * 300):
        with pytest.raises(AuthenticationError, match="agent id"):
            bootstrap(manager, agent, token)


def test_a_hostile_agent_id_is_refused_and_still_recorded(manager: SecurityManager, oidc_issuer: Any) -> None:
    with pytest.raises(AuthenticationError, match="agent id"):
        bootstrap(manager, "x" * 100_000, oidc_issuer.token())
    last = manager.get_audit_log()[-1]
    assert last.decision == "deny" and last.actor.endswith("<clipped>") and len(last.actor) < 1000


def test_tenants_from_real_tokens_are_isolated(manager: SecurityManager, oidc_issuer: Any) -> None:
    tenant_b = bootstrap(
        manager, "tenant-b-agent", oidc_issuer.token("tenant-b-agent", "maif:read maif:write")
    )
    default = bootstrap(manager, "agent-1", oidc_issuer.token("agent-1", "maif:read maif:write"))
    assert (tenant_b.tenant, default.tenant) == ("tenant-b", "")
    in_b = Resource("doc", owner="tenant-b-agent", tenant="tenant-b")
    in_default = Resource("doc", owner="agent-1", tenant="")
    manager.authorize(tenant_b, Action.WRITE, in_b)
    manager.authorize(default, Action.READ, in_default)
    for context, resource in ((tenant_b, in_default), (default, in_b)):
        for action in (Action.READ, Action.WRITE):
            with pytest.raises(AuthorizationError, match="tenant"):
                manager.authorize(context, action, resource)
    sealed = manager.encrypt_sensitive_data(b"tenant b data", tenant_b)
    assert b"tenant b data" not in sealed
