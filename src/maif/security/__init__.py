"""maif.security decides and never stores: who is asking, how well that is proven, and what they may do.

    identity.py     JWT access tokens verified against the configured issuers' JWKS (OIDC)
    credentials.py  BASIC_AUTH: argon2id passwords and hashed API keys
    attestation.py  TPM 2.0 quotes from enrolled attestation keys (tpm.py parses TPM structures)
    trust.py        trust levels, the evidence behind them, sealed security contexts
    policy.py       composable authorisation policies; the seed's operation table
    gate.py         context + action + resource -> Grant (or a refusal), every decision audited
    keys.py         per-agent Ed25519 keys, encrypted at rest
    audit.py        the tamper-evident, Merkle-checkpointed audit log
    manager.py      the seed's SecurityManager API wiring all of the above

Names load lazily so that importing one part does not import the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "AccessRequest": "maif.security.policy",
    "Action": "maif.security.policy",
    "AllOf": "maif.security.policy",
    "AnyOf": "maif.security.policy",
    "Approval": "maif.security.trust",
    "AttestationVerifier": "maif.security.attestation",
    "AuditLog": "maif.security.audit",
    "BasicIdentity": "maif.security.credentials",
    "CredentialStore": "maif.security.credentials",
    "Gate": "maif.security.gate",
    "Grant": "maif.security.gate",
    "HardwareAttestation": "maif.security.attestation",
    "KeyPossessionProof": "maif.security.trust",
    "KeyStore": "maif.security.keys",
    "Operation": "maif.security.policy",
    "Policy": "maif.security.policy",
    "Resource": "maif.security.policy",
    "SecurityContext": "maif.security.trust",
    "SecurityManager": "maif.security.manager",
    "Sensitivity": "maif.security.policy",
    "TokenVerifier": "maif.security.identity",
    "TrustLevel": "maif.security.trust",
    "VerifiedToken": "maif.security.identity",
    "approval_statement": "maif.security.trust",
    "bootstrap_trust": "maif.security.manager",
    "create_maif_security_manager": "maif.security.manager",
    "decrypt_sensitive_data": "maif.security.manager",
    "default_policy": "maif.security.policy",
    "encrypt_sensitive_data": "maif.security.manager",
    "get_audit_log": "maif.security.manager",
    "possession_statement": "maif.security.trust",
    "sign_maif_block": "maif.security.manager",
    "verify_maif_block_signature": "maif.security.manager",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from maif.security.attestation import AttestationVerifier as AttestationVerifier
    from maif.security.attestation import HardwareAttestation as HardwareAttestation
    from maif.security.audit import AuditLog as AuditLog
    from maif.security.credentials import BasicIdentity as BasicIdentity
    from maif.security.credentials import CredentialStore as CredentialStore
    from maif.security.gate import Gate as Gate
    from maif.security.gate import Grant as Grant
    from maif.security.identity import TokenVerifier as TokenVerifier
    from maif.security.identity import VerifiedToken as VerifiedToken
    from maif.security.keys import KeyStore as KeyStore
    from maif.security.manager import SecurityManager as SecurityManager
    from maif.security.manager import bootstrap_trust as bootstrap_trust
    from maif.security.manager import create_maif_security_manager as create_maif_security_manager
    from maif.security.manager import decrypt_sensitive_data as decrypt_sensitive_data
    from maif.security.manager import encrypt_sensitive_data as encrypt_sensitive_data
    from maif.security.manager import get_audit_log as get_audit_log
    from maif.security.manager import sign_maif_block as sign_maif_block
    from maif.security.manager import verify_maif_block_signature as verify_maif_block_signature
    from maif.security.policy import AccessRequest as AccessRequest
    from maif.security.policy import Action as Action
    from maif.security.policy import AllOf as AllOf
    from maif.security.policy import AnyOf as AnyOf
    from maif.security.policy import Operation as Operation
    from maif.security.policy import Policy as Policy
    from maif.security.policy import Resource as Resource
    from maif.security.policy import Sensitivity as Sensitivity
    from maif.security.policy import default_policy as default_policy
    from maif.security.trust import Approval as Approval
    from maif.security.trust import KeyPossessionProof as KeyPossessionProof
    from maif.security.trust import SecurityContext as SecurityContext
    from maif.security.trust import TrustLevel as TrustLevel
    from maif.security.trust import approval_statement as approval_statement
    from maif.security.trust import possession_statement as possession_statement


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maif.security' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
