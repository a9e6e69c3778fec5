"""The agent's side of trust levels 3 to 5 over HTTP, with a real software TPM.

tests/security/tpm_fixtures.py drives swtpm and tpm2-tools; it is loaded here under the name the security
tests import it by, so both suites share one module. The helpers build the JSON bodies of
POST /v1/trust/enrollment and POST /v1/trust/bootstrap from what the TPM really produced.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from maif.security.trust import approval_statement


def _tpm_fixtures() -> ModuleType:
    module = sys.modules.get("tpm_fixtures")
    if module is None:
        path = Path(__file__).resolve().parents[1] / "security" / "tpm_fixtures.py"
        spec = importlib.util.spec_from_file_location("tpm_fixtures", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["tpm_fixtures"] = module
        spec.loader.exec_module(module)
    return module


tpm_fixtures = _tpm_fixtures()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def started_tpm(directory: Path, *, measured_boot: bool = True) -> Any:
    """A running swtpm (installed first if needed); with ``measured_boot`` PCR 7 holds BOOT_MEASUREMENT."""
    installed = tpm_fixtures.run_script("install", check=False)
    if installed.returncode != 0:
        raise AssertionError(f"swtpm/tpm2-tools are missing and could not be installed:\n{installed.stderr}")
    tpm = tpm_fixtures.SoftwareTpm(directory)
    tpm.start()
    if measured_boot:
        tpm.extend(7, tpm_fixtures.BOOT_MEASUREMENT)
    tpm.endorsement()
    return tpm


def enrollment_json(tpm: Any, ak: Any, **extra: Any) -> dict[str, Any]:
    """The body of POST /v1/trust/enrollment for ``ak`` of ``tpm``."""
    endorsement = tpm.endorsement()
    return {
        "ek_public_base64": b64(endorsement.ek_public),
        "ek_certificate_base64": b64(endorsement.ek_certificate),
        "intermediates_base64": [b64(endorsement.intermediate_pem)],
        "ak_public_base64": b64(ak.public),
        "ak_pem": ak.pem.decode("ascii"),
        **extra,
    }


def approvals_json(agent_id: str, nonce: bytes, signers: Mapping[str, Any]) -> list[dict[str, str]]:
    """The ``approvals`` member of POST /v1/trust/bootstrap: each signer (an Ed25519 private key, by
    approver id) signs the approval statement naming the agent and this bootstrap's nonce."""
    return [
        {"approver_id": name, "signature_base64": b64(key.sign(approval_statement(agent_id, nonce)))}
        for name, key in signers.items()
    ]


def attestation_json(tpm: Any, ak: Any, nonce: bytes, binding: bytes | None = None) -> dict[str, Any]:
    """A real quote by ``ak`` over the challenge ``nonce`` (or SHA-256(nonce || binding)) and the PCR
    values as the agent reads them: the ``attestation`` member of POST /v1/trust/bootstrap."""
    qualifying = nonce if binding is None else hashlib.sha256(nonce + binding).digest()
    quote, signature = tpm.quote(ak, qualifying)
    return {
        "quote_base64": b64(quote),
        "signature_base64": b64(signature),
        "ak_public_base64": b64(ak.public),
        "nonce_base64": b64(nonce),
        "pcr_values": {
            bank: {str(index): value.hex() for index, value in values.items()}
            for bank, values in tpm.pcr_values().items()
        },
        "platform_id": f"swtpm:{tpm.port}",
    }


__all__ = ["approvals_json", "attestation_json", "b64", "enrollment_json", "started_tpm", "tpm_fixtures"]
