"""Enrolled attestation keys and TPM clocks survive a restart of the verifier (maif.security.enrollments,
docs/adr/0086), against a real software TPM; the sealed state refuses tampering and a wrong master key.

Before, a restarted service forgot every enrolment: the agent's next quote was refused, and the first
caller to enrol the agent id again (with any TPM chaining to a trusted root) bound its own AK to it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tpm_fixtures import BOOT_MEASUREMENT, QUOTED_INDICES, AttestationKey, SoftwareTpm, run_script

from maif.errors import AttestationError, DecryptionError, FormatError
from maif.security import tpm
from maif.security.attestation import AttestationVerifier, MeasuredEvent, replay_event_log
from maif.security.enrollments import EnrollmentFile
from maif.security.manager import create_maif_security_manager

AGENT = "agent-enrolled"
GOLDEN = replay_event_log([MeasuredEvent(7, BOOT_MEASUREMENT)], selection={"sha256": QUOTED_INDICES})


@pytest.fixture(scope="module")
def swtpm_installed() -> None:
    result = run_script("install", check=False)
    if result.returncode != 0:
        pytest.fail(f"swtpm/tpm2-tools are missing and could not be installed:\n{result.stderr}")


def _tpm(directory: Path) -> Iterator[SoftwareTpm]:
    software_tpm = SoftwareTpm(directory)
    software_tpm.start()
    try:
        software_tpm.extend(7, BOOT_MEASUREMENT)
        yield software_tpm
    finally:
        software_tpm.stop()


@pytest.fixture(scope="module")
def agent_tpm(tmp_path_factory: pytest.TempPathFactory, swtpm_installed: None) -> Iterator[SoftwareTpm]:
    yield from _tpm(tmp_path_factory.mktemp("swtpm-agent"))


@pytest.fixture(scope="module")
def intruder_tpm(tmp_path_factory: pytest.TempPathFactory, swtpm_installed: None) -> Iterator[SoftwareTpm]:
    """Another genuine TPM, manufactured by the same CA as the agent's (both chain to the trusted root)."""
    yield from _tpm(tmp_path_factory.mktemp("swtpm-intruder"))


@pytest.fixture(scope="module")
def roots(agent_tpm: SoftwareTpm, intruder_tpm: SoftwareTpm) -> list[x509.Certificate]:
    return [
        x509.load_pem_x509_certificate(item.endorsement().root_pem) for item in (agent_tpm, intruder_tpm)
    ]


@pytest.fixture(scope="module")
def agent_ak(agent_tpm: SoftwareTpm) -> AttestationKey:
    return agent_tpm.create_ak("ecc")


@pytest.fixture
def master_key() -> bytes:
    return secrets.token_bytes(32)


def _verifier(roots: list[x509.Certificate], state: Path, master_key: bytes) -> AttestationVerifier:
    return AttestationVerifier(roots, golden_pcrs=GOLDEN, state_file=EnrollmentFile(state, master_key))


def test_an_enrolment_survives_a_restart(
    tmp_path: Path, roots: list[x509.Certificate], agent_tpm: SoftwareTpm, agent_ak: AttestationKey,
    intruder_tpm: SoftwareTpm, master_key: bytes,
) -> None:
    state = tmp_path / "attestation.maifstate"
    first = _verifier(roots, state, master_key)
    agent_tpm.enroll(first, AGENT, agent_ak)
    first.close()

    restarted = _verifier(roots, state, master_key)
    enrolled = restarted.enrolled_key(AGENT)
    assert enrolled is not None and enrolled.ak_public == agent_ak.public
    result = restarted.verify_quote(AGENT, agent_tpm.attest(restarted, AGENT, agent_ak))
    assert result.agent_id == AGENT
    # The attack the lost state allowed: another genuine TPM claims the agent id after the restart.
    with pytest.raises(AttestationError, match="already has an enrolled attestation key"):
        intruder_tpm.enroll(restarted, AGENT, intruder_tpm.create_ak("ecc"))
    intruder_attestation = intruder_tpm.attest(restarted, AGENT, intruder_tpm.create_ak("ecc"))
    with pytest.raises(AttestationError, match="other than the one enrolled"):
        restarted.verify_quote(AGENT, intruder_attestation)


def test_a_revocation_survives_a_restart(
    tmp_path: Path, roots: list[x509.Certificate], agent_tpm: SoftwareTpm, agent_ak: AttestationKey,
    master_key: bytes,
) -> None:
    state = tmp_path / "attestation.maifstate"
    first = _verifier(roots, state, master_key)
    agent_tpm.enroll(first, AGENT, agent_ak)
    first.revoke_enrollment(AGENT)
    restarted = _verifier(roots, state, master_key)
    assert restarted.enrolled_key(AGENT) is None
    with pytest.raises(AttestationError, match="no attestation key bound"):
        restarted.verify_quote(AGENT, agent_tpm.attest(restarted, AGENT, agent_ak))


def test_the_newest_clock_is_written_on_close(
    tmp_path: Path, roots: list[x509.Certificate], agent_tpm: SoftwareTpm, agent_ak: AttestationKey,
    master_key: bytes,
) -> None:
    state = tmp_path / "attestation.maifstate"
    verifier = _verifier(roots, state, master_key)
    agent_tpm.enroll(verifier, AGENT, agent_ak)
    attestation = agent_tpm.attest(verifier, AGENT, agent_ak)
    verifier.verify_quote(AGENT, attestation)
    verifier.close()
    quoted = tpm.parse_quote(attestation.quote)
    clocks = EnrollmentFile(state, master_key).load().clocks
    assert [(item.reset_count, item.restart_count, item.clock) for item in clocks] == [
        (quoted.reset_count, quoted.restart_count, quoted.clock)
    ]


def test_another_process_sees_an_enrolment_at_once(
    tmp_path: Path, roots: list[x509.Certificate], agent_tpm: SoftwareTpm, agent_ak: AttestationKey,
    master_key: bytes,
) -> None:
    """Two verifiers on one file (two `maif serve` on one security directory)."""
    state = tmp_path / "attestation.maifstate"
    one, two = _verifier(roots, state, master_key), _verifier(roots, state, master_key)
    agent_tpm.enroll(one, AGENT, agent_ak)
    assert two.verify_quote(AGENT, agent_tpm.attest(two, AGENT, agent_ak)).agent_id == AGENT
    two.revoke_enrollment(AGENT)
    assert one.enrolled_key(AGENT) is None


def test_a_tampered_state_or_a_wrong_key_is_refused(
    tmp_path: Path, roots: list[x509.Certificate], agent_tpm: SoftwareTpm, agent_ak: AttestationKey,
    master_key: bytes,
) -> None:
    state = tmp_path / "attestation.maifstate"
    agent_tpm.enroll(_verifier(roots, state, master_key), AGENT, agent_ak)
    genuine = state.read_bytes()
    with pytest.raises(DecryptionError, match="master key"):
        _verifier(roots, state, secrets.token_bytes(32))
    for offset in (0, 12, len(genuine) // 2, len(genuine) - 1):
        flipped = bytearray(genuine)
        flipped[offset] ^= 0x01
        state.write_bytes(bytes(flipped))
        with pytest.raises((DecryptionError, FormatError)):
            _verifier(roots, state, master_key)
    state.write_bytes(genuine[:40])
    with pytest.raises(FormatError, match="truncated"):
        _verifier(roots, state, master_key)


def test_the_manager_keeps_enrolments_beside_the_keystore(
    tmp_path: Path, agent_tpm: SoftwareTpm, agent_ak: AttestationKey, master_key: bytes
) -> None:
    root = tmp_path / "tpm-root.pem"
    root.write_bytes(agent_tpm.endorsement().root_pem)
    config = {"trusted_tpm_roots": [str(root)]}
    with create_maif_security_manager(
        config, data_dir=tmp_path / "security", master_key=master_key, golden_pcrs=GOLDEN
    ) as manager:
        assert manager.attestation_verifier is not None
        agent_tpm.enroll(manager.attestation_verifier, AGENT, agent_ak)
    assert (tmp_path / "security" / "attestation.maifstate").exists()
    with create_maif_security_manager(
        config, data_dir=tmp_path / "security", master_key=master_key, golden_pcrs=GOLDEN
    ) as restarted:
        assert restarted.attestation_verifier is not None
        assert restarted.attestation_verifier.enrolled_key(AGENT) is not None
