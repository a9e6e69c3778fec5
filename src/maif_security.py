"""The seed's ``maif_security`` module, kept so that code written against the seed runs unchanged.

The seed's demo imported ``from maif_security import create_maif_security_manager, HardwareAttestation,
TrustLevel``. These are the very objects :mod:`maif` exports; new code imports from ``maif``. Unlike the
seed, nothing here accepts an unsigned or self-made token or a TPM quote of random bytes: every check is
real and fails closed (docs/ARCHITECTURE.md, trust bootstrap).
"""

from __future__ import annotations

from maif import (
    HardwareAttestation,
    SecurityContext,
    SecurityManager,
    TrustLevel,
    bootstrap_trust,
    create_maif_security_manager,
    decrypt_sensitive_data,
    encrypt_sensitive_data,
    get_audit_log,
    sign_maif_block,
    verify_maif_block_signature,
)

__all__ = [
    "HardwareAttestation",
    "SecurityContext",
    "SecurityManager",
    "TrustLevel",
    "bootstrap_trust",
    "create_maif_security_manager",
    "decrypt_sensitive_data",
    "encrypt_sensitive_data",
    "get_audit_log",
    "sign_maif_block",
    "verify_maif_block_signature",
]
