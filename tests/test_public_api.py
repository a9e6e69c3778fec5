"""The public surface is deliberate: adding or removing a name must change this test."""

from __future__ import annotations

import subprocess
import sys

import maif

EXPECTED_PUBLIC_NAMES = sorted(
    [
        "AgentTask",
        "MAIFAgent",
        "maif_agent_cluster",
        "MAIFBlock",
        "MAIFBlockType",
        "MAIFError",
        "MAIFStorage",
        "create_maif_storage",
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
        "__version__",
    ]
)


def test_all_is_pinned() -> None:
    assert sorted(maif.__all__) == EXPECTED_PUBLIC_NAMES


def test_every_public_name_resolves() -> None:
    for name in maif.__all__:
        assert getattr(maif, name) is not None


def test_import_is_lazy() -> None:
    # `import maif` must not drag in the heavy layers; the CLI and short scripts rely on it being fast.
    code = "import sys, maif; print(','.join(m for m in sys.modules if m.startswith('maif.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == ""


SEED_MODULES = {  # the seed's flat modules (its README imported from them), kept for compatibility
    "maif_core": ["MAIFBlock", "MAIFBlockType", "MAIFStorage", "create_maif_storage"],
    "maif_agent": ["AgentTask", "MAIFAgent", "maif_agent_cluster"],
    "maif_security": [
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
    ],
}


def test_seed_modules_re_export_the_same_objects() -> None:
    import importlib

    for module_name, names in SEED_MODULES.items():
        module = importlib.import_module(module_name)
        assert sorted(module.__all__) == sorted(names), module_name
        for name in names:
            assert getattr(module, name) is getattr(maif, name), f"{module_name}.{name}"
