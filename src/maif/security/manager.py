"""The security manager: the seed's API, wiring identity, attestation, keys, policy, the gate and audit.

    manager = create_maif_security_manager(config, data_dir="./maif-data/security", master_key=key)
    context = await manager.bootstrap_trust("agent-1", token)                   # OAUTH_VERIFIED
    envelope = manager.sign_maif_block(block, context)                          # audited, needs write_own
    ok, level = manager.verify_maif_block_signature(block, envelope, "agent-1") # the REGISTERED key only
    sealed = manager.encrypt_sensitive_data(b"...", context)                    # AES-256-GCM envelope
    manager.begin_enrollment(context, "agent-1", ...)   # the caller's own TPM (then complete_enrollment)
    manager.register_agent_key(context, "agent-1", public_key, signature)       # needs level 3

Trust is bootstrapped from evidence (see :mod:`maif.security.trust` for the levels): the token's agent id
(its issuer's ``agent_prefix`` and its ``sub``, so two issuers never share an agent) must be the agent id
at every level (otherwise any valid token could act as any agent); a hardware
attestation, a proof of key possession or approvals that are presented and fail make the whole
bootstrap fail (never a silent downgrade). Agent ids starting with ``maif:`` are reserved for MAIF's
own keys (the audit log's signing key) and refused.

The manager decides and records; it stores nothing but its keystore and audit log.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import blake3
import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from maif import limits
from maif.config import RESERVED_AGENT_PREFIX, ConfigSource, SecurityConfig, load_section, user_config_dir
from maif.errors import (
    AttestationError,
    AuthenticationError,
    AuthorizationError,
    ConfigError,
    DecryptionError,
    MAIFError,
    SignatureError,
)
from maif.format.block import MAIFBlock
from maif.format.codec import block_digest
from maif.security.attestation import (
    AttestationVerifier,
    EnrolledKey,
    EnrollmentChallenge,
    GoldenPcrs,
    HardwareAttestation,
    load_certificate,
)
from maif.security.audit import AuditEntry, AuditLog
from maif.security.audit_chain import SegmentedAuditLog
from maif.security.block_signatures import (
    BlockSignature,
    block_signature_payload,
    decode_block_signature,
)
from maif.security.credentials import BasicIdentity, CredentialStore
from maif.security.enrollments import EnrollmentFile
from maif.security.gate import Gate, Grant, audit_event
from maif.security.identity import TokenVerifier, VerifiedToken
from maif.security.keys import KeyInfo, KeyStore, Signer, generate_master_key, master_key_from_environment
from maif.security.policy import Action, Policy, Resource, Sensitivity, default_policy, permissions_for
from maif.security.trust import (
    Approval,
    ApproverRegistry,
    ContextSealer,
    KeyPossessionProof,
    SecurityContext,
    TrustLevel,
    possession_statement,
    registration_statement,
)

_T = TypeVar("_T")
AUDIT_SIGNER_AGENT_ID = "maif:security-manager"
_SEALED_DOMAIN = b"MAIF sealed data v1\0"
_ENVELOPE_VERSION = 1
_BASIC_AUTH_LIFETIME_S = 3600.0


class SealedData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The envelope :meth:`SecurityManager.encrypt_sensitive_data` returns (MessagePack)."""

    version: int
    agent_id: str
    purpose: str
    kek_id: bytes
    wrap_nonce: bytes
    wrapped_data_key: bytes
    nonce: bytes
    ciphertext: bytes


_ENCODER = msgspec.msgpack.Encoder()
_SEALED_DECODER = msgspec.msgpack.Decoder(SealedData)


def digest_of(block_data: bytes | MAIFBlock) -> bytes:
    """BLAKE3 of a block's canonical encoding, or of raw bytes (e.g. a batch's Merkle root)."""
    if isinstance(block_data, MAIFBlock):
        return block_digest(block_data)
    if not isinstance(block_data, bytes | bytearray | memoryview):
        raise SignatureError(f"block data must be bytes or a MAIFBlock, got {type(block_data).__name__}")
    return blake3.blake3(block_data, max_threads=blake3.blake3.AUTO).digest()


class SecurityManager:
    """Bootstraps trust, authorises through the gate, signs, verifies, seals and audits."""

    def __init__(
        self,
        config: SecurityConfig,
        *,
        token_verifier: TokenVerifier,
        keystore: KeyStore,
        audit_log: AuditLog | SegmentedAuditLog,
        master_key: bytes,
        attestation_verifier: AttestationVerifier | None = None,
        credentials: CredentialStore | None = None,
        approvers: ApproverRegistry | None = None,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.token_verifier = token_verifier
        self.keystore = keystore
        self.attestation_verifier = attestation_verifier
        self.credentials = credentials or CredentialStore()
        self.approvers = approvers or ApproverRegistry({}, 0)
        self._audit = audit_log
        self._clock = clock
        self._sealer = ContextSealer()
        self.gate = Gate(policy or default_policy(config), self._sealer, audit_log, clock=clock)
        self._kek = HKDF(hashes.SHA256(), 32, salt=None, info=b"MAIF sensitive data KEK v1").derive(
            master_key
        )
        self._kek_id = blake3.blake3(self._kek, derive_key_context="MAIF 2026-11 KEK id").digest()[:16]

    # ---- trust ------------------------------------------------------------------------------------

    def new_challenge(self, agent_id: str) -> bytes:
        """A single-use nonce for the agent's TPM quote (and its key proof and approvals)."""
        return self._require_attestation().new_challenge(agent_id)

    async def bootstrap_trust(
        self,
        agent_id: str,
        oauth_token: str,
        hardware_attestation: HardwareAttestation | None = None,
        *,
        key_proof: KeyPossessionProof | None = None,
        approvals: Sequence[Approval] = (),
    ) -> SecurityContext:
        """A sealed context at the highest level the evidence proves; raises if any evidence fails."""
        # The durable audit append (an fdatasync) runs in a worker thread, like token and quote checks.
        try:
            context = await self._bootstrap(agent_id, oauth_token, hardware_attestation, key_proof, approvals)
        except MAIFError as error:
            await asyncio.to_thread(
                self._record_decision, agent_id, "bootstrap_trust", f"agent:{agent_id}", "deny", error.message
            )
            raise
        await asyncio.to_thread(
            self._record_decision,
            agent_id,
            "bootstrap_trust",
            f"agent:{agent_id}",
            "allow",
            context.trust_level.name,
            context,
        )
        return context

    async def _bootstrap(
        self,
        agent_id: str,
        oauth_token: str,
        attestation: HardwareAttestation | None,
        key_proof: KeyPossessionProof | None,
        approvals: Sequence[Approval],
    ) -> SecurityContext:
        _check_agent_id(agent_id)
        _check_evidence_types(attestation, key_proof, approvals)
        token = await self.token_verifier.verify_async(oauth_token)
        if token.agent_id != agent_id:
            raise AuthenticationError(
                "token subject (sub), after its issuer's agent_prefix, is not the agent id being bootstrapped"
            )
        level, expires_at = TrustLevel.OAUTH_VERIFIED, token.expires_at
        evidence = [f"oauth:{token.issuer}"]
        signing_key_id: bytes | None = None
        approver_ids: tuple[str, ...] = ()
        if attestation is None and (key_proof is not None or approvals):
            raise AuthenticationError(
                "key proofs and approvals are bound to a hardware attestation; none given"
            )
        if attestation is not None:
            key = self._proven_key(agent_id, attestation.nonce, key_proof) if key_proof else None
            result = await asyncio.to_thread(
                self._require_attestation().verify_quote,
                agent_id,
                attestation,
                binding=key.public_key if key else None,
            )
            level, expires_at = TrustLevel.HARDWARE_ATTESTED, min(expires_at, result.expires_at)
            evidence.append(f"tpm:{result.ak_name.hex()}")
            if key is not None:
                level, signing_key_id = TrustLevel.CRYPTOGRAPHICALLY_PROVEN, key.key_id
                expires_at = min(expires_at, key.not_after if key.not_after is not None else expires_at)
                evidence.append(f"key:{key.key_id.hex()}")
            if approvals:
                if key is None:
                    raise AuthenticationError("multi-party approval needs CRYPTOGRAPHICALLY_PROVEN first")
                approver_ids = self.approvers.verify(agent_id, attestation.nonce, approvals)
                level = TrustLevel.MULTI_PARTY_VERIFIED
                evidence.append("approvals:" + ",".join(approver_ids))
        return self._mint(agent_id, level, token, expires_at, tuple(evidence), signing_key_id, approver_ids)

    def _mint(
        self,
        agent_id: str,
        level: TrustLevel,
        token: VerifiedToken,
        expires_at: float,
        evidence: tuple[str, ...],
        signing_key_id: bytes | None,
        approver_ids: tuple[str, ...],
    ) -> SecurityContext:
        now = self._clock()
        return self._sealer.mint(
            agent_id=agent_id,
            trust_level=level,
            scopes=token.scopes,
            permissions=permissions_for(level, token.scopes, self.config),
            tenant=token.tenant,
            issued_at=now,
            expires_at=expires_at,
            evidence=evidence,
            token_id=token.token_id,
            signing_key_id=signing_key_id,
            approvers=approver_ids,
        )

    def _proven_key(self, agent_id: str, nonce: bytes, proof: KeyPossessionProof) -> KeyInfo:
        """The registered key the agent proved it holds by signing the challenge nonce."""
        key = next((info for info in self.keystore.keys(agent_id) if info.key_id == proof.key_id), None)
        if key is None:
            raise AuthenticationError(
                f"key {proof.key_id.hex()} is not a registered key of agent {agent_id!r}"
            )
        try:
            self.keystore.verify(
                agent_id,
                possession_statement(agent_id, nonce),
                proof.signature,
                key_id=proof.key_id,
                signed_at=self._clock(),
            )
        except SignatureError as error:
            raise AuthenticationError(f"proof of key possession refused: {error.message}") from error
        return key

    # ---- enrolment and key registration (POST /v1/trust/... are thin shells over these) -------------

    def begin_enrollment(
        self,
        context: SecurityContext,
        agent_id: str,
        *,
        ek_public: bytes,
        ek_certificate: bytes,
        intermediates: Sequence[bytes],
        ak_public: bytes,
        ak_pem: bytes | None = None,
    ) -> EnrollmentChallenge:
        """Enrol ``agent_id``'s TPM: the caller may enrol only its own identity (the gate refuses writing
        another agent's resource); returns MakeCredential's challenge for the TPM to activate. Audited."""
        return self._on_own_identity(
            context,
            agent_id,
            "tpm-enrollment",
            lambda: self._require_attestation().begin_enrollment(
                agent_id,
                ek_public=ek_public,
                ek_certificate=ek_certificate,
                intermediates=intermediates,
                ak_public=ak_public,
                ak_pem=ak_pem,
            ),
        )

    def complete_enrollment(
        self, context: SecurityContext, agent_id: str, activated_secret: bytes
    ) -> EnrolledKey:
        """Accept the AK of a begun enrolment of the caller's own identity if its TPM activated the
        credential. Audited."""
        return self._on_own_identity(
            context,
            agent_id,
            "tpm-enrollment",
            lambda: self._require_attestation().complete_enrollment(agent_id, activated_secret),
        )

    def register_agent_key(
        self, context: SecurityContext, agent_id: str, public_key: bytes, signature: bytes
    ) -> KeyInfo:
        """Register an Ed25519 public key as ``agent_id``'s current key (the one CRYPTOGRAPHICALLY_PROVEN
        binds to its TPM). Only the agent itself, from a HARDWARE_ATTESTED context, with a signature by
        that key over :func:`registration_statement`: a stolen token alone cannot replace an agent's key.
        The previous current key stops signing now (its older signatures stay verifiable). Audited."""

        def register() -> KeyInfo:
            if context.trust_level < TrustLevel.HARDWARE_ATTESTED:
                raise AuthorizationError(
                    "registering a signing key needs HARDWARE_ATTESTED (3): bootstrap with a TPM quote first"
                )
            if not isinstance(public_key, bytes) or len(public_key) != 32 or not isinstance(signature, bytes):
                raise AuthenticationError("a key registration is a raw 32-byte Ed25519 key and a signature")
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(
                    signature, registration_statement(agent_id, public_key)
                )
            except (InvalidSignature, ValueError) as error:
                raise AuthenticationError(
                    "the key registration is not signed by the key being registered"
                ) from error
            return self.keystore.import_public_key(agent_id, public_key)

        return self._on_own_identity(context, agent_id, "agent-key", register)

    def _on_own_identity(
        self, context: SecurityContext, agent_id: str, kind: str, operation: Callable[[], _T]
    ) -> _T:
        """Authorise writing ``agent_id``'s identity (only its owner passes: WRITE on another agent's
        unshared resource has no policy), run ``operation`` and audit its outcome."""
        _check_agent_id(agent_id)
        self.gate.authorize(
            context,
            Action.WRITE,
            Resource(f"agent:{agent_id}", owner=agent_id, tenant=context.tenant, kind=kind),
        )
        try:
            result = operation()
        except MAIFError as error:
            self._record_decision(context.agent_id, kind, f"agent:{agent_id}", "deny", error.message, context)
            raise
        self._record_decision(context.agent_id, kind, f"agent:{agent_id}", "allow", "done", context)
        return result

    def authenticate_password(self, principal: str, password: str) -> SecurityContext:
        """BASIC_AUTH from a password (argon2id); see :class:`CredentialStore`."""
        return self._basic(principal, lambda: self.credentials.verify_password(principal, password))

    def authenticate_api_key(self, api_key: str) -> SecurityContext:
        """BASIC_AUTH from an API key."""
        return self._basic("<api key>", lambda: self.credentials.verify_api_key(api_key))

    def _basic(self, claimed: str, verify: Callable[[], BasicIdentity]) -> SecurityContext:
        try:
            identity = verify()
            _check_agent_id(identity.principal)
        except MAIFError as error:
            self._record_decision(claimed, "authenticate_basic", f"agent:{claimed}", "deny", error.message)
            raise
        now = self._clock()
        level = TrustLevel.BASIC_AUTH
        context = self._sealer.mint(
            agent_id=identity.principal,
            trust_level=level,
            scopes=identity.scopes,
            permissions=permissions_for(level, identity.scopes, self.config),
            tenant=identity.tenant,
            issued_at=now,
            expires_at=now + _BASIC_AUTH_LIFETIME_S,
            evidence=(f"basic:{identity.method}",),
        )
        self._record_decision(
            identity.principal,
            "authenticate_basic",
            f"agent:{identity.principal}",
            "allow",
            level.name,
            context,
        )
        return context

    def authorize(self, context: SecurityContext, action: Action, resource: Resource) -> Grant:
        """The gate's decision: a :class:`Grant`, or :class:`~maif.errors.AuthorizationError`. Audited."""
        return self.gate.authorize(context, action, resource)

    async def authorize_async(self, context: SecurityContext, action: Action, resource: Resource) -> Grant:
        """:meth:`authorize` for an event loop (see Gate.authorize_async): no worker thread is held while
        the audit record is made durable."""
        return await self.gate.authorize_async(context, action, resource)

    def authorize_many(
        self, context: SecurityContext, action: Action, resources: Sequence[Resource]
    ) -> list[Grant]:
        """Grants for a batch, all or none, recorded as one audit entry (see Gate.authorize_many)."""
        return self.gate.authorize_many(context, action, resources)

    # ---- signatures -------------------------------------------------------------------------------

    def sign_maif_block(self, block_data: bytes | MAIFBlock, context: SecurityContext) -> bytes:
        """A signature envelope over the block's BLAKE3 digest, by the agent's registered current key."""
        digest = digest_of(block_data)
        self.gate.authorize(
            context,
            Action.WRITE,
            Resource(digest.hex(), owner=context.agent_id, tenant=context.tenant, kind="block-signature"),
        )
        signer: Signer = self.keystore.signer(context.agent_id)
        signed_at = self._clock()
        level = int(context.trust_level)
        payload = block_signature_payload(context.agent_id, signer.key_id, signed_at, level, digest)
        envelope = BlockSignature(
            _ENVELOPE_VERSION, context.agent_id, signer.key_id, signed_at, level, digest, signer.sign(payload)
        )
        return _ENCODER.encode(envelope)

    def verify_maif_block_signature(
        self, block_data: bytes | MAIFBlock, signature_data: bytes, expected_agent_id: str
    ) -> tuple[bool, TrustLevel]:
        """(True, the signer's trust level when signing) if a REGISTERED key of ``expected_agent_id``
        signed this block inside its validity window; else (False, UNTRUSTED). Audited."""
        try:
            envelope = self._checked_signature(block_data, signature_data, expected_agent_id)
        except MAIFError as error:
            self._record_decision(expected_agent_id, "verify_block_signature", "block", "deny", error.message)
            return False, TrustLevel.UNTRUSTED
        self._record_decision(
            expected_agent_id,
            "verify_block_signature",
            f"block:{envelope.digest.hex()}",
            "allow",
            f"key {envelope.key_id.hex()}",
        )
        return True, TrustLevel(envelope.trust_level)

    def _checked_signature(
        self, block_data: bytes | MAIFBlock, signature_data: bytes, expected_agent_id: str
    ) -> BlockSignature:
        envelope = decode_block_signature(signature_data)
        if envelope.agent_id != expected_agent_id:
            raise SignatureError("signature envelope names another agent")
        if envelope.digest != digest_of(block_data):
            raise SignatureError("block does not match the signed digest")
        self.keystore.verify(
            expected_agent_id,
            envelope.signed_payload(),
            envelope.signature,
            key_id=envelope.key_id,
            signed_at=envelope.signed_at,
        )
        return envelope

    # ---- sealed data ------------------------------------------------------------------------------

    def encrypt_sensitive_data(
        self, data: bytes, context: SecurityContext, *, purpose: str = "default"
    ) -> bytes:
        """AES-256-GCM envelope (random data key wrapped by the manager's KEK); the associated data binds
        the agent, its tenant and ``purpose``. Needs write permission on the agent's own sensitive data."""
        self.gate.authorize(context, Action.WRITE, _sealed_resource(context, purpose))
        if not isinstance(data, bytes | bytearray | memoryview) or len(data) > limits.block_payload_bytes_max:
            raise DecryptionError("sensitive data must be bytes of at most block_payload_bytes_max")
        associated = self._associated_data(context, purpose)
        data_key, nonce, wrap_nonce = AESGCM.generate_key(256), os.urandom(12), os.urandom(12)
        sealed = SealedData(
            _ENVELOPE_VERSION,
            context.agent_id,
            purpose,
            self._kek_id,
            wrap_nonce,
            AESGCM(self._kek).encrypt(wrap_nonce, data_key, associated + b"\0data key"),
            nonce,
            AESGCM(data_key).encrypt(nonce, bytes(data), associated),
        )
        return _ENCODER.encode(sealed)

    def decrypt_sensitive_data(
        self, data: bytes, context: SecurityContext, *, purpose: str = "default"
    ) -> bytes:
        """The plaintext, or :class:`DecryptionError` (tampering, another agent/tenant/purpose, another
        KEK). Needs read permission on the agent's own sensitive data (HARDWARE_ATTESTED by default)."""
        self.gate.authorize(context, Action.READ, _sealed_resource(context, purpose))
        if not isinstance(data, bytes) or len(data) > limits.sealed_data_bytes_max:
            raise DecryptionError("sealed data is not bytes of bounded size")
        try:
            sealed = _SEALED_DECODER.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise DecryptionError("sealed data is malformed") from error
        if sealed.version != _ENVELOPE_VERSION or sealed.kek_id != self._kek_id:
            raise DecryptionError("sealed data is of another version or under another key-encryption key")
        if sealed.agent_id != context.agent_id or sealed.purpose != purpose:
            raise DecryptionError("sealed data was sealed for another agent or purpose")
        # The associated data is rebuilt from the caller's context, never read from the envelope.
        associated = self._associated_data(context, purpose)
        try:
            data_key = AESGCM(self._kek).decrypt(
                sealed.wrap_nonce, sealed.wrapped_data_key, associated + b"\0data key"
            )
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, associated)
        except (InvalidTag, ValueError) as error:
            raise DecryptionError(
                "sealed data refused: tampered, or sealed for another agent or purpose"
            ) from error

    def _associated_data(self, context: SecurityContext, purpose: str) -> bytes:
        parts = [context.agent_id.encode("utf-8"), context.tenant.encode("utf-8"), purpose.encode("utf-8")]
        return _SEALED_DOMAIN + b"".join(struct.pack("<I", len(part)) + part for part in parts) + self._kek_id

    # ---- audit and lifetime -----------------------------------------------------------------------

    def get_audit_log(self, start: int = 0, stop: int | None = None) -> list[AuditEntry]:
        """The recorded decisions (read back from the tamper-evident log; of a segmented log, the current
        segment, whose indices start at 0)."""
        return list(self._audit.entries(start, stop))

    @property
    def audit_log(self) -> AuditLog | SegmentedAuditLog:
        return self._audit

    def close(self) -> None:
        try:
            if self.attestation_verifier is not None:
                self.attestation_verifier.close()  # the newest TPM clocks (maif.security.enrollments)
        finally:
            self._audit.close()

    def __enter__(self) -> SecurityManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _require_attestation(self) -> AttestationVerifier:
        if self.attestation_verifier is None:
            raise AttestationError(
                "hardware attestation is not configured", hint="set trusted_tpm_roots in the security config"
            )
        return self.attestation_verifier

    def _record_decision(
        self,
        actor: str,
        action: str,
        resource: str,
        decision: str,
        reason: str,
        context: SecurityContext | None = None,
    ) -> None:
        # Names here may come straight from a caller (a refused agent id): clip them so a hostile one
        # cannot make the record itself fail and hide the refusal.
        event = audit_event(context, action, _clipped(resource), decision, _clipped(reason), self._clock())
        event["actor"] = _clipped(actor) if isinstance(actor, str) else "<invalid>"
        self._audit.append(event)


def _clipped(text: str) -> str:
    limit = limits.agent_id_bytes_max * 2
    return text if len(text) <= limit else text[:limit] + "...<clipped>"


def _sealed_resource(context: SecurityContext, purpose: str) -> Resource:
    return Resource(
        f"sealed:{purpose}",
        owner=context.agent_id,
        tenant=context.tenant,
        sensitivity=Sensitivity.SENSITIVE,
        kind="sealed-data",
    )


def _check_evidence_types(attestation: object, key_proof: object, approvals: object) -> None:
    if attestation is not None and not isinstance(attestation, HardwareAttestation):
        raise AttestationError("hardware_attestation must be a HardwareAttestation")
    if key_proof is not None and not (
        isinstance(key_proof, KeyPossessionProof)
        and isinstance(key_proof.key_id, bytes)
        and isinstance(key_proof.signature, bytes)
    ):
        raise AuthenticationError("key_proof must be a KeyPossessionProof of bytes")
    if not isinstance(approvals, list | tuple) or len(approvals) > limits.approvers_max:
        raise AuthenticationError(f"approvals must be a list of at most {limits.approvers_max} Approval")
    if not all(
        isinstance(item, Approval) and isinstance(item.approver_id, str) and isinstance(item.signature, bytes)
        for item in approvals
    ):
        raise AuthenticationError("approvals must be Approval objects of a text id and bytes")


def _check_agent_id(agent_id: object) -> None:
    if (
        not isinstance(agent_id, str)
        or not 0 < len(agent_id.encode("utf-8", "replace")) <= limits.agent_id_bytes_max
    ):
        raise AuthenticationError("agent id must be a non-empty string of at most agent_id_bytes_max bytes")
    if agent_id.startswith(RESERVED_AGENT_PREFIX):
        raise AuthenticationError(f"agent ids starting with {RESERVED_AGENT_PREFIX!r} are reserved for MAIF")


# ---- construction -------------------------------------------------------------------------------


def create_maif_security_manager(
    config: ConfigSource | SecurityConfig = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    master_key: bytes | None = None,
    attestation_verifier: AttestationVerifier | None = None,
    golden_pcrs: GoldenPcrs | None = None,
    token_verifier: TokenVerifier | None = None,
    credentials: CredentialStore | None = None,
    approvers: Mapping[str, Ed25519PublicKey] | None = None,
    approvals_required: int | None = None,
    protected_directories: Sequence[str | os.PathLike[str]] = (),
    clock: Callable[[], float] = time.time,
) -> SecurityManager:
    """A manager whose keystore and audit log live in ``data_dir`` (default ``./maif-data/security``).

    The audit log is the segment directory ``data_dir/audit`` (verify it with ``maif audit verify``).

    ``config`` is a dict, a JSON/TOML path or a :class:`SecurityConfig`. The master key comes from
    ``master_key``, else ``MAIF_MASTER_KEY``, else the key file (:func:`master_key_file_of`: the config's
    ``master_key_file``, default ``~/.config/maif/master.key``, created owner-only on first run). A key
    file inside ``data_dir`` or any of ``protected_directories`` (the store's data directory) is refused
    unless ``unsafe_master_key_in_data_dir`` is set (docs/adr/0081). ``trusted_tpm_roots`` and
    ``golden_pcrs`` build the attestation verifier (``attestation_verifier`` overrides it; the argument
    ``golden_pcrs`` overrides the config's); ``approvers`` (id -> Ed25519 public key) and
    ``approvals_required`` set up MULTI_PARTY_VERIFIED, from the config when not given.
    """
    security = config if isinstance(config, SecurityConfig) else load_section(SecurityConfig, config)
    directory = Path(data_dir if data_dir is not None else "./maif-data/security")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = master_key if master_key is not None else _master_key(security, directory, protected_directories)
    keystore = KeyStore.open(directory / "keys.maifkeys", key, clock=clock)
    if keystore.current_key(AUDIT_SIGNER_AGENT_ID) is None:
        keystore.create_key(AUDIT_SIGNER_AGENT_ID)
    # A segment directory never fills up (docs/adr/0022); a single-file log from before moves in as segment 0.
    audit_log = SegmentedAuditLog.open(
        directory / "audit",
        keystore.signer(AUDIT_SIGNER_AGENT_ID),
        clock=clock,
        legacy_file=directory / "audit.log",
        segment_entries_max=security.audit_segment_entries,
        segment_bytes_max=security.audit_segment_bytes,
    )
    try:
        if attestation_verifier is None and security.trusted_tpm_roots:
            roots = [_load_root(source) for source in security.trusted_tpm_roots]
            policy = golden_pcrs if golden_pcrs is not None else security.golden_pcr_policy() or None
            attestation_verifier = AttestationVerifier(
                roots, golden_pcrs=policy, clock=clock,
                state_file=EnrollmentFile(directory / "attestation.maifstate", key),
            )
        return SecurityManager(
            security,
            token_verifier=token_verifier
            or TokenVerifier(security.oauth_providers, audience=security.audience),
            keystore=keystore,
            audit_log=audit_log,
            master_key=key,
            attestation_verifier=attestation_verifier,
            credentials=credentials,
            approvers=_approver_registry(security, approvers, approvals_required),
            clock=clock,
        )
    except BaseException:
        audit_log.close()
        raise


def _approver_registry(
    security: SecurityConfig, approvers: Mapping[str, Ed25519PublicKey] | None, required: int | None
) -> ApproverRegistry:
    if approvers is None:
        try:
            approvers = {
                name: Ed25519PublicKey.from_public_bytes(raw)
                for name, raw in security.approver_keys().items()
            }
        except ValueError as error:
            raise ConfigError("an approver's public key is not an Ed25519 public key") from error
    return ApproverRegistry(approvers, security.approvals_required if required is None else required)


def audit_public_key(data_dir: str | os.PathLike[str] | None = None, *,
                     master_key: bytes | None = None,
                     config: ConfigSource | SecurityConfig = None) -> Ed25519PublicKey:
    """The audit log's current signing key, read without changing anything (the trust anchor for
    ``maif audit verify --trust``). The master key comes as for :func:`create_maif_security_manager`
    (``master_key_file`` from ``config`` and MAIF_SECURITY_* variables), but is never created; a
    directory without a keystore or without an audit key is a ConfigError."""
    directory = Path(data_dir if data_dir is not None else "./maif-data/security")
    keystore_path = directory / "keys.maifkeys"
    if not keystore_path.is_file():
        raise ConfigError(f"no keystore in {directory}",
                          hint="point at the security directory of a store whose service has run once")
    security = config if isinstance(config, SecurityConfig) else load_section(SecurityConfig, config)
    key = master_key if master_key is not None else _master_key(security, directory, (), create=False)
    info = KeyStore.open(keystore_path, key).current_key(AUDIT_SIGNER_AGENT_ID)
    if info is None:
        raise ConfigError(f"the keystore in {directory} holds no audit signing key yet",
                          hint="the security manager creates it the first time it opens")
    return info.public_key_object()


# ---- the master key, kept off the disk tree of the log it protects (docs/adr/0081) ---------------------

_LEGACY_MASTER_KEY_FILE = "master.key"


def default_master_key_file() -> Path:
    """``$XDG_CONFIG_HOME/maif/master.key`` (``~/.config/maif/master.key``): the user's, not the store's."""
    return user_config_dir() / "master.key"


def master_key_file_of(security: SecurityConfig, directory: Path) -> Path:
    """Where the master key file is looked for (and created on first run) when MAIF_MASTER_KEY is unset."""
    if security.master_key_file is not None:
        return Path(security.master_key_file).expanduser()
    if security.unsafe_master_key_in_data_dir:
        return directory / _LEGACY_MASTER_KEY_FILE  # the layout before ADR 0081, asked for by name
    return default_master_key_file()


def check_master_key_location(
    key_file: Path, protected: Sequence[str | os.PathLike[str]], *, unsafe_allowed: bool
) -> None:
    """Refuse a key file inside a protected directory (the keystore and audit log's, the store's): a copy
    of that directory (a backup, a snapshot, a stolen disk image) would carry the key that opens it."""
    resolved = Path(os.path.realpath(key_file))
    for directory in protected:
        inside = Path(os.path.realpath(directory))
        if not resolved.is_relative_to(inside):
            continue
        if not unsafe_allowed:
            raise ConfigError(
                f"the master key file {key_file} is inside {directory}, beside the data it protects",
                hint="keep it elsewhere: set MAIF_MASTER_KEY from a secret store, or "
                f"security.master_key_file to a path outside {directory} (default "
                f"{default_master_key_file()}); to keep it there anyway, set "
                "security.unsafe_master_key_in_data_dir = true",
            )
        warnings.warn(
            f"unsafe_master_key_in_data_dir: the master key file {key_file} is inside {directory}; a copy of "
            "that directory opens the keystore and can re-sign the audit log",
            UnsafeConfigurationWarning,
            stacklevel=4,
        )
        return


class UnsafeConfigurationWarning(UserWarning):
    """A setting named ``unsafe_...`` is in effect."""


def _master_key(
    security: SecurityConfig,
    directory: Path,
    protected: Sequence[str | os.PathLike[str]],
    *,
    create: bool = True,
) -> bytes:
    if "MAIF_MASTER_KEY" in os.environ:
        return master_key_from_environment()
    key_file = master_key_file_of(security, directory)
    check_master_key_location(
        key_file, [directory, *protected], unsafe_allowed=security.unsafe_master_key_in_data_dir
    )
    if key_file.exists():
        return master_key_from_environment(file=key_file)
    legacy = directory / _LEGACY_MASTER_KEY_FILE
    if legacy.exists():
        raise ConfigError(
            f"the master key {legacy} sits beside the keystore and audit log it protects; it is no longer "
            "read from there",
            hint=f"move it out (mv {legacy} {key_file}), or set MAIF_MASTER_KEY or security.master_key_file; "
            "to keep it there, set security.unsafe_master_key_in_data_dir = true",
        )
    if (directory / "keys.maifkeys").exists():
        # A keystore without its key: inventing a new key would orphan every sealed key in it.
        raise ConfigError(
            "no master key for the existing keystore in " + str(directory),
            hint=f"set MAIF_MASTER_KEY (64 hex digits), or restore {key_file} (mode 0600)",
        )
    if not create:
        raise ConfigError(
            f"no master key: MAIF_MASTER_KEY is not set and {key_file} does not exist",
            hint="set MAIF_MASTER_KEY, or security.master_key_file (MAIF_SECURITY_MASTER_KEY_FILE)",
        )
    return _create_master_key_file(key_file)


def _create_master_key_file(key_file: Path) -> bytes:
    """First run with no key anywhere: make one, owner-only, in its own directory, and say so.

    The default file is the user's (``~/.config/maif``), outside the store, so a copy of the store does
    not carry it; production deployments should pass MAIF_MASTER_KEY from a secret store instead, which
    the warning tells them.
    """
    key = generate_master_key()
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, key.hex().encode("ascii") + b"\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    warnings.warn(
        f"created a new master key in {key_file}; back it up (the keystore cannot be opened without it), "
        "and for production supply MAIF_MASTER_KEY from a secret store",
        stacklevel=3,
    )
    return key


def _load_root(source: str) -> x509.Certificate:
    """A trusted TPM root given as PEM text or as the path of a PEM/DER file."""
    if source.lstrip().startswith("-----BEGIN"):
        try:
            return load_certificate(source.encode("ascii", "replace"), what="trusted TPM root")
        except AttestationError as error:
            raise ConfigError(error.message) from error
    path = Path(source)
    try:
        if path.stat().st_size > limits.tpm_certificate_bytes_max:
            raise ConfigError(
                f"trusted TPM root {path} is larger than {limits.tpm_certificate_bytes_max} bytes"
            )
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read trusted TPM root {path}: {error.strerror}") from error
    try:
        return load_certificate(data, what=f"trusted TPM root {path}")
    except AttestationError as error:
        raise ConfigError(
            error.message, hint="trusted_tpm_roots holds PEM text or paths of PEM/DER files"
        ) from error


# ---- the seed's module-level functions -----------------------------------------------------------


async def bootstrap_trust(
    manager: SecurityManager,
    agent_id: str,
    oauth_token: str,
    hardware_attestation: HardwareAttestation | None = None,
    **evidence: Any,
) -> SecurityContext:
    return await manager.bootstrap_trust(agent_id, oauth_token, hardware_attestation, **evidence)


def sign_maif_block(
    manager: SecurityManager, block_data: bytes | MAIFBlock, context: SecurityContext
) -> bytes:
    return manager.sign_maif_block(block_data, context)


def verify_maif_block_signature(
    manager: SecurityManager, block_data: bytes | MAIFBlock, signature_data: bytes, expected_agent_id: str
) -> tuple[bool, TrustLevel]:
    return manager.verify_maif_block_signature(block_data, signature_data, expected_agent_id)


def encrypt_sensitive_data(
    manager: SecurityManager, data: bytes, context: SecurityContext, **options: Any
) -> bytes:
    return manager.encrypt_sensitive_data(data, context, **options)


def decrypt_sensitive_data(
    manager: SecurityManager, data: bytes, context: SecurityContext, **options: Any
) -> bytes:
    return manager.decrypt_sensitive_data(data, context, **options)


def get_audit_log(manager: SecurityManager) -> list[AuditEntry]:
    return manager.get_audit_log()


__all__ = [
    "AUDIT_SIGNER_AGENT_ID",
    "BlockSignature",
    "SealedData",
    "SecurityManager",
    "UnsafeConfigurationWarning",
    "audit_public_key",
    "block_signature_payload",
    "bootstrap_trust",
    "check_master_key_location",
    "create_maif_security_manager",
    "decrypt_sensitive_data",
    "default_master_key_file",
    "digest_of",
    "encrypt_sensitive_data",
    "get_audit_log",
    "master_key_file_of",
    "sign_maif_block",
    "verify_maif_block_signature",
]
