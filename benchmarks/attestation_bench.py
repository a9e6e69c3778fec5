"""TPM 2.0 quote verification latency, against quotes made by a real software TPM (swtpm).

The script starts its own swtpm (scripts/servers/swtpm.sh, 127.0.0.1, a free port pair), enrolls an RSA
and an ECC attestation key through real MakeCredential / ActivateCredential, has the TPM make
``--quotes`` quotes per key (each over a fresh challenge, since a nonce is single use), then times
``AttestationVerifier.verify_quote`` on each. Measured in the same run, per key type:

* ``verify_quote`` latency (median and p99, microseconds): the whole verifier, every check;
* peer: the bare signature verification over the same TPMS_ATTEST bytes with `cryptography` (the
  physical floor of any verifier that checks the signature), and the ratio of the two medians;
* for context, the agent's side: one ``tpm2_quote`` through the script (process start included), and
  ``begin_enrollment`` (EK chain walk + MakeCredential).

    .venv/bin/python benchmarks/attestation_bench.py [--quotes 200]

Writes benchmarks/results/attestation.json. Never part of the test run. Needs swtpm and tpm2-tools
(scripts/servers/swtpm.sh install).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "security"))
from tpm_fixtures import (  # the swtpm driver lives beside the tests
    BOOT_MEASUREMENT,
    QUOTED_INDICES,
    AttestationKey,
    SoftwareTpm,
    run_script,
)

from maif.security import tpm
from maif.security.attestation import (
    AttestationVerifier,
    HardwareAttestation,
    MeasuredEvent,
    replay_event_log,
)

RESULTS = Path(__file__).parent / "results" / "attestation.json"


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_us(action: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    action()
    return (time.perf_counter_ns() - start) / 1000


def bare_signature_check(attestation: HardwareAttestation) -> Callable[[], None]:
    key = tpm.parse_tpm2b_public(attestation.ak_public).public_key
    signature = tpm.parse_tpmt_signature(attestation.signature)
    algorithm = tpm.cryptography_hash(signature.hash_alg)
    if isinstance(key, rsa.RSAPublicKey):
        rsa_key = key
        return lambda: rsa_key.verify(signature.signature, attestation.quote, padding.PKCS1v15(), algorithm)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    ec_key = key
    return lambda: ec_key.verify(signature.signature, attestation.quote, ec.ECDSA(algorithm))


def measure_key(
    software_tpm: SoftwareTpm, verifier: AttestationVerifier, agent_id: str, ak: AttestationKey, quotes: int
) -> dict[str, Any]:
    quote_ms: list[float] = []
    verify_us: list[float] = []
    bare_us: list[float] = []
    # One round at a time: a verifier holds only a few outstanding challenges per agent (a bound).
    for _ in range(quotes):
        start = time.perf_counter()
        attestation = software_tpm.attest(verifier, agent_id, ak)
        quote_ms.append((time.perf_counter() - start) * 1000)
        verify_us.append(timed_us(lambda: verifier.verify_quote(agent_id, attestation)))  # noqa: B023
        bare_us.append(timed_us(bare_signature_check(attestation)))
    return {
        "quotes": quotes,
        "verify_quote_us_median": statistics.median(verify_us),
        "verify_quote_us_p99": percentile(verify_us, 0.99),
        "peer_bare_signature_verify_us_median": statistics.median(bare_us),
        "ratio_verify_quote_to_bare_signature": statistics.median(verify_us) / statistics.median(bare_us),
        "agent_quote_and_pcrread_ms_median": statistics.median(quote_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotes", type=int, default=200)
    arguments = parser.parse_args()
    if run_script("install", check=False).returncode != 0:
        raise SystemExit("swtpm and tpm2-tools are missing: run scripts/servers/swtpm.sh install as root")
    with tempfile.TemporaryDirectory(prefix="maif-attestation-bench-") as directory:
        software_tpm = SoftwareTpm(Path(directory) / "swtpm")
        software_tpm.start()
        try:
            results = run(software_tpm, arguments.quotes)
        finally:
            software_tpm.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def run(software_tpm: SoftwareTpm, quotes: int) -> dict[str, Any]:
    software_tpm.extend(7, BOOT_MEASUREMENT)
    endorsement = software_tpm.endorsement()
    golden = replay_event_log([MeasuredEvent(7, BOOT_MEASUREMENT)], selection={"sha256": QUOTED_INDICES})
    verifier = AttestationVerifier([x509.load_pem_x509_certificate(endorsement.root_pem)], golden_pcrs=golden)
    results: dict[str, Any] = {
        "machine": {"cpus": 2, "python": platform.python_version(), "system": platform.platform()},
        "parameters": {"quotes_per_key": quotes, "pcrs": "sha256:0,1,2,3,7"},
    }
    for kind in ("rsa", "ecc"):
        ak = software_tpm.create_ak(kind)
        begin_us = timed_us(
            lambda ak=ak, kind=kind: verifier.begin_enrollment(
                f"bench-{kind}",
                ek_public=endorsement.ek_public,
                ek_certificate=endorsement.ek_certificate,
                intermediates=[endorsement.intermediate_pem],
                ak_public=ak.public,
            )
        )
        verifier.revoke_enrollment(f"bench-{kind}")
        software_tpm.enroll(verifier, f"agent-{kind}", ak)
        results[kind] = measure_key(software_tpm, verifier, f"agent-{kind}", ak, quotes)
        results[kind]["begin_enrollment_us"] = begin_us
    return results


if __name__ == "__main__":
    main()
