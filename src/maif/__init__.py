"""MAIF: a verifiable container format and a durable store for what AI agents produce.

The public API is the names in ``__all__``; everything else is internal. Submodules load lazily, so
``import maif`` stays fast (the CLI and short scripts do not pay for the storage engine or the
security stack until they use them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "AgentTask": "maif.agents.tasks",
    "MAIFAgent": "maif.agents.agent",
    "maif_agent_cluster": "maif.agents.cluster",
    "MAIFBlock": "maif.format.block",
    "MAIFBlockType": "maif.format.block",
    "MAIFError": "maif.errors",
    "MAIFStorage": "maif.storage.engine",
    "create_maif_storage": "maif.storage.engine",
    "HardwareAttestation": "maif.security.attestation",
    "SecurityContext": "maif.security.trust",
    "SecurityManager": "maif.security.manager",
    "TrustLevel": "maif.security.trust",
    "bootstrap_trust": "maif.security.manager",
    "create_maif_security_manager": "maif.security.manager",
    "decrypt_sensitive_data": "maif.security.manager",
    "encrypt_sensitive_data": "maif.security.manager",
    "get_audit_log": "maif.security.manager",
    "sign_maif_block": "maif.security.manager",
    "verify_maif_block_signature": "maif.security.manager",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from maif.agents.agent import MAIFAgent as MAIFAgent
    from maif.agents.cluster import maif_agent_cluster as maif_agent_cluster
    from maif.agents.tasks import AgentTask as AgentTask
    from maif.errors import MAIFError as MAIFError
    from maif.format.block import MAIFBlock as MAIFBlock
    from maif.format.block import MAIFBlockType as MAIFBlockType
    from maif.security.attestation import HardwareAttestation as HardwareAttestation
    from maif.security.manager import SecurityManager as SecurityManager
    from maif.security.manager import bootstrap_trust as bootstrap_trust
    from maif.security.manager import create_maif_security_manager as create_maif_security_manager
    from maif.security.manager import decrypt_sensitive_data as decrypt_sensitive_data
    from maif.security.manager import encrypt_sensitive_data as encrypt_sensitive_data
    from maif.security.manager import get_audit_log as get_audit_log
    from maif.security.manager import sign_maif_block as sign_maif_block
    from maif.security.manager import verify_maif_block_signature as verify_maif_block_signature
    from maif.security.trust import SecurityContext as SecurityContext
    from maif.security.trust import TrustLevel as TrustLevel
    from maif.storage.engine import MAIFStorage as MAIFStorage
    from maif.storage.engine import create_maif_storage as create_maif_storage


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maif' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
