"""TPM 2.0 attestation against a real software TPM: the honest path is accepted, every attack refused.

Each test that attacks asserts the AttestationError and, where the order of checks matters, which check
refused it. The TPMs are session-scoped (manufacture about 1 s, then each tool call a few ms).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import os
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tpm_fixtures
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tpm_fixtures import (
    BOOT_MEASUREMENT,
    QUOTED_INDICES,
    AttestationKey,
    Endorsement,
    SoftwareTpm,
    run_script,
)

from maif.errors import AttestationError
from maif.security import tpm
from maif.security.attestation import (
    AttestationVerifier,
    EnrollmentChallenge,
    HardwareAttestation,
    MeasuredEvent,
    replay_event_log,
    verify_ek_certificate_chain,
)

RSA_AGENT = "agent-rsa"
ECC_AGENT = "agent-ecc"
# The default EK template's authPolicy: PolicySecret(TPM_RH_ENDORSEMENT) (TCG EK Credential Profile).
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")


# --- fixtures: real TPMs ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def swtpm_installed() -> None:
    result = run_script("install", check=False)
    if result.returncode != 0:
        pytest.fail(f"swtpm/tpm2-tools are missing and could not be installed:\n{result.stderr}")


def _started_tpm(directory: Path) -> SoftwareTpm:
    software_tpm = SoftwareTpm(directory)
    software_tpm.start()
    return software_tpm


@pytest.fixture(scope="session")
def tpm_a(tmp_path_factory: pytest.TempPathFactory, swtpm_installed: None) -> Iterator[SoftwareTpm]:
    software_tpm = _started_tpm(tmp_path_factory.mktemp("swtpm-a"))
    try:
        software_tpm.extend(7, BOOT_MEASUREMENT)
        yield software_tpm
    finally:
        software_tpm.stop()


@pytest.fixture(scope="session")
def tpm_b(tmp_path_factory: pytest.TempPathFactory, swtpm_installed: None) -> Iterator[SoftwareTpm]:
    software_tpm = _started_tpm(tmp_path_factory.mktemp("swtpm-b"))
    try:
        yield software_tpm
    finally:
        software_tpm.stop()


@pytest.fixture
def tpm_c(tmp_path: Path, swtpm_installed: None) -> Iterator[SoftwareTpm]:
    """A TPM of its own for tests that power-cycle it."""
    software_tpm = _started_tpm(tmp_path / "swtpm-c")
    try:
        software_tpm.extend(7, BOOT_MEASUREMENT)
        yield software_tpm
    finally:
        software_tpm.stop()


@pytest.fixture(scope="session")
def endorsement_a(tpm_a: SoftwareTpm) -> Endorsement:
    return tpm_a.endorsement()


@pytest.fixture(scope="session")
def endorsement_b(tpm_b: SoftwareTpm) -> Endorsement:
    return tpm_b.endorsement()


@pytest.fixture(scope="session")
def root_a(endorsement_a: Endorsement) -> x509.Certificate:
    return x509.load_pem_x509_certificate(endorsement_a.root_pem)


@pytest.fixture(scope="session")
def golden() -> dict[str, dict[int, bytes]]:
    return replay_event_log([MeasuredEvent(7, BOOT_MEASUREMENT)], selection={"sha256": QUOTED_INDICES})


@pytest.fixture(scope="session")
def rsa_ak(tpm_a: SoftwareTpm, endorsement_a: Endorsement) -> AttestationKey:
    return tpm_a.create_ak("rsa")


@pytest.fixture(scope="session")
def ecc_ak(tpm_a: SoftwareTpm, endorsement_a: Endorsement) -> AttestationKey:
    return tpm_a.create_ak("ecc")


@pytest.fixture(scope="session")
def foreign_ak(tpm_b: SoftwareTpm, endorsement_b: Endorsement) -> AttestationKey:
    return tpm_b.create_ak("rsa")


VerifierFactory = Callable[..., AttestationVerifier]


@pytest.fixture(scope="session")
def make_verifier(root_a: x509.Certificate, golden: dict[str, dict[int, bytes]]) -> VerifierFactory:
    def make(**options: object) -> AttestationVerifier:
        options.setdefault("golden_pcrs", golden)
        return AttestationVerifier([root_a], **options)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def verifier(
    make_verifier: VerifierFactory, tpm_a: SoftwareTpm, rsa_ak: AttestationKey, ecc_ak: AttestationKey
) -> AttestationVerifier:
    """A verifier with both AKs of TPM A enrolled through real ActivateCredential."""
    shared = make_verifier()
    tpm_a.enroll(shared, RSA_AGENT, rsa_ak)
    tpm_a.enroll(shared, ECC_AGENT, ecc_ak)
    return shared


@pytest.fixture
def rsa_attestation(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> HardwareAttestation:
    return tpm_a.attest(verifier, RSA_AGENT, rsa_ak)


def refused(match: str) -> Any:
    return pytest.raises(AttestationError, match=match)


def with_fresh_nonce(
    verifier: AttestationVerifier,
    attestation: HardwareAttestation,
    agent_id: str = RSA_AGENT,
    **changes: object,
) -> HardwareAttestation:
    """The same evidence with a newly issued nonce, so that only the change under test can refuse it."""
    return dataclasses.replace(attestation, nonce=verifier.new_challenge(agent_id), **changes)  # type: ignore[arg-type]


# --- the honest path --------------------------------------------------------------------------------
@pytest.mark.parametrize(("agent_id", "ak_fixture"), [(RSA_AGENT, "rsa_ak"), (ECC_AGENT, "ecc_ak")])
def test_real_quote_is_accepted(
    verifier: AttestationVerifier,
    tpm_a: SoftwareTpm,
    golden: dict[str, dict[int, bytes]],
    agent_id: str,
    ak_fixture: str,
    request: pytest.FixtureRequest,
) -> None:
    ak: AttestationKey = request.getfixturevalue(ak_fixture)
    result = verifier.verify_quote(agent_id, tpm_a.attest(verifier, agent_id, ak))
    assert result.agent_id == agent_id
    assert result.ak_name == (ak.directory / "ak.name").read_bytes()  # our Name == the TPM's Name
    assert {bank: dict(values) for bank, values in result.pcr_values.items()} == golden
    assert result.reset_count >= 1 and result.clock > 0
    assert result.expires_at > result.verified_at


@pytest.mark.parametrize("kind", ["rsapss", "ecc384"])
def test_real_quote_with_other_allowed_schemes_is_accepted(
    make_verifier: VerifierFactory, tpm_a: SoftwareTpm, endorsement_a: Endorsement, kind: str
) -> None:
    ak = tpm_a.create_ak(kind)
    public = tpm.parse_tpm2b_public(ak.public)
    expected_scheme = tpm.TPM_ALG_RSAPSS if kind == "rsapss" else tpm.TPM_ALG_ECDSA
    assert public.scheme == expected_scheme
    fresh = make_verifier()
    tpm_a.enroll(fresh, f"agent-{kind}", ak)
    attestation = tpm_a.attest(fresh, f"agent-{kind}", ak)
    signature = tpm.parse_tpmt_signature(attestation.signature)
    assert signature.hash_alg == ("sha384" if kind == "ecc384" else "sha256")  # pcrDigest uses this hash
    assert fresh.verify_quote(f"agent-{kind}", attestation).ak_name == (ak.directory / "ak.name").read_bytes()


def test_quote_bound_to_a_key_is_accepted_only_with_that_binding(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    signing_key = os.urandom(32)
    bound = tpm_a.attest(verifier, RSA_AGENT, rsa_ak, binding=signing_key)
    assert verifier.verify_quote(RSA_AGENT, bound, binding=signing_key).agent_id == RSA_AGENT
    other = tpm_a.attest(verifier, RSA_AGENT, rsa_ak, binding=signing_key)
    with refused("extraData"):
        verifier.verify_quote(RSA_AGENT, other, binding=os.urandom(32))
    unbound = tpm_a.attest(verifier, RSA_AGENT, rsa_ak)
    with refused("extraData"):
        verifier.verify_quote(RSA_AGENT, unbound, binding=signing_key)


def test_attestation_survives_a_json_round_trip(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    document = rsa_attestation.to_json_dict()
    assert (
        verifier.verify_quote(RSA_AGENT, HardwareAttestation.from_json_dict(document)).agent_id == RSA_AGENT
    )
    with refused("malformed"):
        HardwareAttestation.from_json_dict({**document, "quote": "not hex"})


# --- MakeCredential, checked against tpm2-tools and a real TPM ---------------------------------------
def _ek_like_public(key: rsa.RSAPublicKey) -> bytes:
    """A TPM2B_PUBLIC with the default EK template around ``key`` (AES-128-CFB, restricted decrypt)."""
    attributes = tpm.TPMA_FIXED_TPM | tpm.TPMA_FIXED_PARENT | tpm.TPMA_SENSITIVE_DATA_ORIGIN | (1 << 7)
    attributes |= tpm.TPMA_RESTRICTED | tpm.TPMA_DECRYPT
    body = struct.pack(">HHI", tpm.TPM_ALG_RSA, tpm.TPM_ALG_SHA256, attributes) + tpm.tpm2b(EK_POLICY)
    body += struct.pack(">HHHH", tpm.TPM_ALG_AES, 128, tpm.TPM_ALG_CFB, tpm.TPM_ALG_NULL)
    body += struct.pack(">HI", 2048, 0) + tpm.tpm2b(key.public_numbers().n.to_bytes(256, "big"))
    return tpm.tpm2b(body)


def test_make_credential_matches_tpm2_tools_byte_for_byte(tmp_path: Path, swtpm_installed: None) -> None:
    ek_private = rsa.generate_private_key(65537, 2048)
    ek_public = _ek_like_public(ek_private.public_key())
    (tmp_path / "ek.pub").write_bytes(ek_public)
    credential = os.urandom(32)
    (tmp_path / "secret.bin").write_bytes(credential)
    ak_name = struct.pack(">H", tpm.TPM_ALG_SHA256) + os.urandom(32)
    subprocess.run(
        [
            "tpm2_makecredential",
            "-T",
            "none",
            "-u",
            tmp_path / "ek.pub",
            "-s",
            tmp_path / "secret.bin",
            "-n",
            ak_name.hex(),
            "-o",
            tmp_path / "credential.out",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    reader = tpm.Reader((tmp_path / "credential.out").read_bytes(), "tpm2-tools credential file")
    assert (reader.u32(), reader.u32()) == (0xBADCC0DE, 1)
    tool_blob, tool_secret = reader.tpm2b("blob", 1024), reader.tpm2b("secret", 1024)
    reader.finish()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\x00")
    seed = ek_private.decrypt(
        tool_secret, oaep
    )  # the tool's random seed, recovered with the EK's private key
    ours = tpm.make_credential(tpm.parse_tpm2b_public(ek_public), ak_name, credential, seed=seed)
    assert ours.credential_blob == tpm.tpm2b(tool_blob)
    assert ek_private.decrypt(ours.encrypted_secret[2:], oaep) == seed


def test_kdfa_matches_its_definition() -> None:
    # KDFa(SHA-256, key, "STORAGE", u, v, 128) = HMAC(key, [1] || "STORAGE\0" || u || v || [128])[:16].
    key, context_u = b"k" * 32, b"u" * 34
    block = struct.pack(">I", 1) + b"STORAGE\x00" + context_u + struct.pack(">I", 128)
    assert (
        tpm.kdfa("sha256", key, b"STORAGE", context_u, b"", 128)
        == hmac.new(key, block, "sha256").digest()[:16]
    )
    long_output = tpm.kdfa("sha256", key, b"INTEGRITY", b"", b"", 512)
    assert len(long_output) == 64 and long_output[:32] != long_output[32:]


# --- nonces -------------------------------------------------------------------------------------------
def test_wrong_nonce_is_refused(verifier: AttestationVerifier, rsa_attestation: HardwareAttestation) -> None:
    with refused("extraData"):
        verifier.verify_quote(RSA_AGENT, with_fresh_nonce(verifier, rsa_attestation))


def test_reused_nonce_is_refused(verifier: AttestationVerifier, rsa_attestation: HardwareAttestation) -> None:
    verifier.verify_quote(RSA_AGENT, rsa_attestation)
    with refused("not issued to this agent, or was already used"):
        verifier.verify_quote(RSA_AGENT, rsa_attestation)


def test_nonce_is_spent_even_by_a_failed_attempt(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    with refused("does not verify"):
        verifier.verify_quote(
            RSA_AGENT, dataclasses.replace(rsa_attestation, quote=b"\x00" + rsa_attestation.quote[1:])
        )
    with refused("already used"):
        verifier.verify_quote(RSA_AGENT, rsa_attestation)


def test_missing_nonce_is_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    with refused("no challenge nonce"):
        verifier.verify_quote(RSA_AGENT, dataclasses.replace(rsa_attestation, nonce=b""))


def test_never_issued_nonce_is_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    with refused("not issued"):
        verifier.verify_quote(RSA_AGENT, dataclasses.replace(rsa_attestation, nonce=os.urandom(32)))


def test_nonce_issued_to_another_agent_is_refused(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    nonce = verifier.new_challenge(ECC_AGENT)
    quote, signature = tpm_a.quote(rsa_ak, nonce)
    attestation = HardwareAttestation(quote, signature, tpm_a.pcr_values(), rsa_ak.public, nonce)
    with refused("not issued to this agent"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_expired_nonce_is_refused(
    make_verifier: VerifierFactory, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    now = [1_900_000_000.0]
    timed = make_verifier(clock=lambda: now[0], nonce_ttl_s=30.0)
    tpm_a.enroll(timed, RSA_AGENT, rsa_ak)
    attestation = tpm_a.attest(timed, RSA_AGENT, rsa_ak)
    now[0] += 31.0
    with refused("expired"):
        timed.verify_quote(RSA_AGENT, attestation)


def test_challenges_per_agent_are_bounded(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    from maif import limits

    oldest = verifier.new_challenge(RSA_AGENT)
    for _ in range(limits.attestation_nonces_per_agent_max):
        verifier.new_challenge(RSA_AGENT)
    quote, signature = tpm_a.quote(rsa_ak, oldest)
    with refused("not issued"):
        verifier.verify_quote(
            RSA_AGENT, HardwareAttestation(quote, signature, tpm_a.pcr_values(), rsa_ak.public, oldest)
        )


# --- PCRs ----------------------------------------------------------------------------------------------
def _pcrs_with(attestation: HardwareAttestation, **changes: bytes | None) -> dict[str, dict[int, bytes]]:
    values = {bank: dict(bank_values) for bank, bank_values in attestation.pcr_values.items()}
    for key, value in changes.items():
        index = int(key.removeprefix("pcr"))
        if value is None:
            del values["sha256"][index]
        else:
            values["sha256"][index] = value
    return values


def test_altered_pcr_value_is_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    altered = bytearray(rsa_attestation.pcr_values["sha256"][0])
    altered[0] ^= 1
    attestation = dataclasses.replace(
        rsa_attestation, pcr_values=_pcrs_with(rsa_attestation, pcr0=bytes(altered))
    )
    with refused("do not hash to the quoted pcrDigest"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_extra_pcr_is_refused(verifier: AttestationVerifier, rsa_attestation: HardwareAttestation) -> None:
    attestation = dataclasses.replace(rsa_attestation, pcr_values=_pcrs_with(rsa_attestation, pcr4=bytes(32)))
    with refused("cover exactly the quoted selection"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_missing_pcr_is_refused(verifier: AttestationVerifier, rsa_attestation: HardwareAttestation) -> None:
    attestation = dataclasses.replace(rsa_attestation, pcr_values=_pcrs_with(rsa_attestation, pcr3=None))
    with refused("cover exactly the quoted selection"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_pcr_value_of_wrong_size_is_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    attestation = dataclasses.replace(rsa_attestation, pcr_values=_pcrs_with(rsa_attestation, pcr0=bytes(20)))
    with refused("not a 32-byte value"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_selection_other_than_the_policy_is_refused(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    # A genuine quote with genuine values, over PCRs 0-3 only: it leaves out PCR 7, which the policy needs.
    attestation = tpm_a.attest(verifier, RSA_AGENT, rsa_ak, pcrs="sha256:0,1,2,3")
    with refused("selection differs from the golden policy"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_pcr_values_supplied_for_another_selection_are_refused(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_attestation: HardwareAttestation
) -> None:
    attestation = dataclasses.replace(rsa_attestation, pcr_values=tpm_a.pcr_values("sha256:0,1,2,3,8"))
    with refused("cover exactly the quoted selection"):
        verifier.verify_quote(RSA_AGENT, attestation)


def test_value_differing_from_golden_is_refused(
    make_verifier: VerifierFactory, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    # The policy expects a boot that measured something else into PCR 7; the TPM's real PCR 7 differs.
    other_boot = replay_event_log([MeasuredEvent(7, b"another-boot")], selection={"sha256": QUOTED_INDICES})
    strict = make_verifier(golden_pcrs=other_boot)
    tpm_a.enroll(strict, RSA_AGENT, rsa_ak)
    with refused("PCR sha256:7 differs from its golden value"):
        strict.verify_quote(RSA_AGENT, tpm_a.attest(strict, RSA_AGENT, rsa_ak))


def test_no_golden_values_means_no_acceptance(
    make_verifier: VerifierFactory, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    unconfigured = make_verifier(golden_pcrs=None)
    tpm_a.enroll(unconfigured, RSA_AGENT, rsa_ak)
    with refused("no golden PCR values"):
        unconfigured.verify_quote(RSA_AGENT, tpm_a.attest(unconfigured, RSA_AGENT, rsa_ak))


def test_event_log_replay() -> None:
    event = b"kernel command line"
    expected = hashlib.sha256(bytes(32) + hashlib.sha256(event).digest()).digest()
    expected = hashlib.sha256(expected + hashlib.sha256(b"initrd").digest()).digest()
    from_objects = replay_event_log(
        [MeasuredEvent(8, event), MeasuredEvent(8, b"initrd")], selection={"sha256": [0]}
    )
    from_json = replay_event_log(
        [
            {"pcr": 8, "bank": "sha256", "data": event.hex()},
            {"pcr": 8, "digest": hashlib.sha256(b"initrd").hexdigest()},
        ],
        selection={"sha256": [0]},
    )
    assert from_objects == from_json == {"sha256": {0: bytes(32), 8: expected}}
    with refused("malformed"):
        replay_event_log([{"bank": "sha256"}])
    with refused("not allowed"):
        replay_event_log([{"pcr": 1, "bank": "sha1", "data": ""}])
    with refused("wrong size"):
        replay_event_log([{"pcr": 1, "digest": "00" * 20}])


# --- TPMS_ATTEST tampering -----------------------------------------------------------------------------
@pytest.mark.parametrize(("agent_id", "ak_fixture"), [(RSA_AGENT, "rsa_ak"), (ECC_AGENT, "ecc_ak")])
def test_every_single_bit_flip_in_the_quote_is_refused(
    verifier: AttestationVerifier,
    tpm_a: SoftwareTpm,
    agent_id: str,
    ak_fixture: str,
    request: pytest.FixtureRequest,
) -> None:
    ak: AttestationKey = request.getfixturevalue(ak_fixture)
    original = tpm_a.attest(verifier, agent_id, ak)
    accepted = 0
    for bit in range(len(original.quote) * 8):
        flipped = bytearray(original.quote)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            verifier.verify_quote(
                agent_id, with_fresh_nonce(verifier, original, agent_id, quote=bytes(flipped))
            )
        except AttestationError as error:
            assert "signature" in str(error)  # refused before a single field was parsed
        else:
            accepted += 1
    assert accepted == 0
    assert verifier.verify_quote(agent_id, original).agent_id == agent_id  # the untouched quote still passes


def test_bit_flips_in_the_signature_are_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    for bit in range(0, len(rsa_attestation.signature) * 8, 7):
        flipped = bytearray(rsa_attestation.signature)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(AttestationError):
            verifier.verify_quote(
                RSA_AGENT, with_fresh_nonce(verifier, rsa_attestation, signature=bytes(flipped))
            )


def test_certify_attestation_from_the_same_ak_is_refused_by_type(
    verifier: AttestationVerifier,
    tpm_a: SoftwareTpm,
    rsa_ak: AttestationKey,
    rsa_attestation: HardwareAttestation,
) -> None:
    certify_info, certify_signature = tpm_a.certify(rsa_ak)
    assert tpm.parse_attest_type(certify_info) == tpm.TPM_ST_ATTEST_CERTIFY
    forged = dataclasses.replace(rsa_attestation, quote=certify_info, signature=certify_signature)
    with refused(r"type 0x8017, not a quote"):  # the signature is genuine: only the type check stops it
        verifier.verify_quote(RSA_AGENT, forged)


def test_parser_refuses_wrong_magic_and_type(rsa_attestation: HardwareAttestation) -> None:
    quote = rsa_attestation.quote
    assert tpm.parse_quote(quote).extra_data == rsa_attestation.nonce
    with refused("magic"):
        tpm.parse_quote(b"\xff\x54\x43\x48" + quote[4:])
    with refused("not a quote"):
        tpm.parse_quote(quote[:4] + struct.pack(">H", tpm.TPM_ST_ATTEST_CERTIFY) + quote[6:])


def test_truncated_and_trailing_quotes_are_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    quote = rsa_attestation.quote
    for size in range(len(quote)):
        with refused("truncated|magic"):
            tpm.parse_quote(quote[:size])
    with refused("trailing"):
        tpm.parse_quote(quote + b"\x00")
    for tampered in (quote[:-1], quote + b"\x00", quote + quote):
        with refused("signature"):
            verifier.verify_quote(RSA_AGENT, with_fresh_nonce(verifier, rsa_attestation, quote=tampered))


def test_oversized_tpm2b_lengths_are_refused(
    rsa_attestation: HardwareAttestation, rsa_ak: AttestationKey
) -> None:
    quote = rsa_attestation.quote
    signer_size = struct.unpack(">H", quote[6:8])[0]
    extra_offset = 8 + signer_size
    with refused("qualifiedSigner claims 65535 bytes"):
        tpm.parse_quote(quote[:6] + b"\xff\xff" + quote[8:])
    with refused("extraData claims 65535 bytes"):
        tpm.parse_quote(quote[:extra_offset] + b"\xff\xff" + quote[extra_offset + 2 :])
    with refused("pcrDigest claims 65535 bytes"):
        tpm.parse_quote(quote[:-34] + b"\xff\xff" + quote[-32:])
    with refused("above the limit"):
        tpm.parse_quote(quote + bytes(2000))
    with refused("size claims 65535 bytes"):
        tpm.parse_tpm2b_public(b"\xff\xff" + rsa_ak.public[2:])
    with refused("RSA signature claims 65535 bytes"):
        tpm.parse_tpmt_signature(rsa_attestation.signature[:4] + b"\xff\xff" + rsa_attestation.signature[6:])


def test_sha1_pcr_bank_is_refused(rsa_attestation: HardwareAttestation) -> None:
    quote = rsa_attestation.quote
    selection_offset = len(quote) - 34 - 6 - 4  # count, then {hash, sizeofSelect, 3-byte bitmap}, then digest
    assert quote[selection_offset : selection_offset + 4] == b"\x00\x00\x00\x01"
    patched = (
        quote[: selection_offset + 4] + struct.pack(">H", tpm.TPM_ALG_SHA1) + quote[selection_offset + 6 :]
    )
    with refused("0x0004, which is not allowed"):
        tpm.parse_quote(patched)


@pytest.mark.parametrize(
    ("scheme", "hash_alg", "reason"),
    [
        (tpm.TPM_ALG_HMAC, tpm.TPM_ALG_SHA256, "scheme 0x0005 is not allowed"),
        (tpm.TPM_ALG_RSAES, tpm.TPM_ALG_SHA256, "scheme 0x0015 is not allowed"),
        (tpm.TPM_ALG_RSASSA, tpm.TPM_ALG_SHA1, "0x0004, which is not allowed"),
        (tpm.TPM_ALG_RSASSA, 0x0012, "0x0012, which is not allowed"),  # SM3_256
        (tpm.TPM_ALG_RSAPSS, tpm.TPM_ALG_SHA256, "differs from the scheme fixed in the attestation key"),
        (tpm.TPM_ALG_RSASSA, tpm.TPM_ALG_SHA384, "differs from the scheme fixed in the attestation key"),
    ],
)
def test_disallowed_signature_algorithms_are_refused(
    verifier: AttestationVerifier,
    rsa_attestation: HardwareAttestation,
    scheme: int,
    hash_alg: int,
    reason: str,
) -> None:
    signature = struct.pack(">HH", scheme, hash_alg) + rsa_attestation.signature[4:]
    with refused(reason):
        verifier.verify_quote(RSA_AGENT, with_fresh_nonce(verifier, rsa_attestation, signature=signature))


def test_zero_filled_quote_is_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    for quote, signature in (
        (bytes(len(rsa_attestation.quote)), rsa_attestation.signature),
        (bytes(len(rsa_attestation.quote)), bytes(len(rsa_attestation.signature))),
        (bytes(1), bytes(1)),
    ):
        with pytest.raises(AttestationError):
            verifier.verify_quote(
                RSA_AGENT, with_fresh_nonce(verifier, rsa_attestation, quote=quote, signature=signature)
            )


def test_every_prefix_of_real_structures_is_refused_cleanly(
    rsa_attestation: HardwareAttestation, ecc_ak: AttestationKey, endorsement_a: Endorsement
) -> None:
    for data, parse in (
        (rsa_attestation.quote, tpm.parse_quote),
        (rsa_attestation.signature, tpm.parse_tpmt_signature),
        (ecc_ak.public, tpm.parse_tpm2b_public),
        (endorsement_a.ek_public, tpm.parse_tpm2b_public),
    ):
        parse(data)  # type: ignore[operator]
        for size in range(len(data)):
            with pytest.raises(AttestationError):
                parse(data[:size])  # type: ignore[operator]


# --- wrong keys -----------------------------------------------------------------------------------------
def test_quote_from_another_tpm_is_refused(
    verifier: AttestationVerifier, tpm_b: SoftwareTpm, foreign_ak: AttestationKey, rsa_ak: AttestationKey
) -> None:
    foreign = tpm_b.attest(verifier, RSA_AGENT, foreign_ak)
    with refused("other than the one enrolled"):
        verifier.verify_quote(RSA_AGENT, foreign)
    claimed = with_fresh_nonce(verifier, foreign, ak_public=rsa_ak.public)  # claims to be the enrolled AK
    with refused("signature over the attestation does not verify"):
        verifier.verify_quote(RSA_AGENT, claimed)


def test_ak_of_another_tpm_cannot_be_enrolled_under_this_ek(
    make_verifier: VerifierFactory, tpm_b: SoftwareTpm, endorsement_a: Endorsement, foreign_ak: AttestationKey
) -> None:
    # Keylime CVE-2022-1053 shape: a genuine, certified EK (TPM A) presented with an AK that lives elsewhere.
    fresh = make_verifier()
    challenge = fresh.begin_enrollment(
        "intruder",
        ek_public=endorsement_a.ek_public,
        ek_certificate=endorsement_a.ek_certificate,
        intermediates=[endorsement_a.intermediate_pem],
        ak_public=foreign_ak.public,
    )
    with pytest.raises(subprocess.CalledProcessError):  # TPM B cannot recover a seed sealed to TPM A's EK
        tpm_b.activate(foreign_ak, challenge.tpm2_tools_credential_file())
    with refused("activated credential is wrong"):
        fresh.complete_enrollment("intruder", os.urandom(32))
    with refused("no attestation key bound"):
        fresh.verify_quote("intruder", tpm_b.attest(fresh, "intruder", foreign_ak))


def test_ak_not_restricted_is_refused(
    make_verifier: VerifierFactory,
    verifier: AttestationVerifier,
    endorsement_a: Endorsement,
    rsa_ak: AttestationKey,
    rsa_attestation: HardwareAttestation,
) -> None:
    public = bytearray(rsa_ak.public)
    attributes = struct.unpack(">I", public[6:10])[0]
    assert attributes & tpm.TPMA_RESTRICTED
    public[6:10] = struct.pack(">I", attributes & ~tpm.TPMA_RESTRICTED)
    with refused("not fixedTPM|fixedParent|sensitiveDataOrigin|restricted|sign"):
        make_verifier().begin_enrollment(
            "unrestricted",
            ek_public=endorsement_a.ek_public,
            ek_certificate=endorsement_a.ek_certificate,
            intermediates=[endorsement_a.intermediate_pem],
            ak_public=bytes(public),
        )
    with refused("other than the one enrolled"):
        verifier.verify_quote(RSA_AGENT, dataclasses.replace(rsa_attestation, ak_public=bytes(public)))
    decrypting = bytearray(rsa_ak.public)
    decrypting[6:10] = struct.pack(">I", attributes | tpm.TPMA_DECRYPT)
    with refused("without decrypt"):
        make_verifier().begin_enrollment(
            "decrypting",
            ek_public=endorsement_a.ek_public,
            ek_certificate=endorsement_a.ek_certificate,
            intermediates=[endorsement_a.intermediate_pem],
            ak_public=bytes(decrypting),
        )


def test_real_unrestricted_tpm_key_is_refused(
    make_verifier: VerifierFactory,
    verifier: AttestationVerifier,
    tpm_a: SoftwareTpm,
    endorsement_a: Endorsement,
) -> None:
    signing_key = tpm_a.create_unrestricted_signing_key()
    public = tpm.parse_tpm2b_public(signing_key.public)
    assert public.has_attributes(tpm.TPMA_FIXED_TPM | tpm.TPMA_SIGN)
    assert not public.attributes & tpm.TPMA_RESTRICTED
    with refused("not fixedTPM|fixedParent|sensitiveDataOrigin|restricted|sign"):
        make_verifier().begin_enrollment(
            "unrestricted",
            ek_public=endorsement_a.ek_public,
            ek_certificate=endorsement_a.ek_certificate,
            intermediates=[endorsement_a.intermediate_pem],
            ak_public=signing_key.public,
            ak_pem=signing_key.pem,
        )
    # Its genuine quote, presented for an agent whose enrolled AK is restricted, is refused too.
    quote = tpm_a.attest(verifier, RSA_AGENT, signing_key)
    with refused("other than the one enrolled"):
        verifier.verify_quote(RSA_AGENT, quote)


def test_each_nonce_is_accepted_once_under_concurrency(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            verifier.verify_quote(RSA_AGENT, rsa_attestation)
            outcomes.append("accepted")
        except AttestationError:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["accepted"] + ["refused"] * 7


def test_ak_pem_or_public_that_differs_is_refused(
    make_verifier: VerifierFactory,
    verifier: AttestationVerifier,
    endorsement_a: Endorsement,
    rsa_ak: AttestationKey,
    ecc_ak: AttestationKey,
    rsa_attestation: HardwareAttestation,
) -> None:
    with refused("AK PEM is a different key"):
        make_verifier().begin_enrollment(
            "mismatch",
            ek_public=endorsement_a.ek_public,
            ek_certificate=endorsement_a.ek_certificate,
            intermediates=[endorsement_a.intermediate_pem],
            ak_public=rsa_ak.public,
            ak_pem=ecc_ak.pem,
        )
    with refused("other than the one enrolled"):
        verifier.verify_quote(RSA_AGENT, dataclasses.replace(rsa_attestation, ak_public=ecc_ak.public))


def test_ak_never_activated_is_refused(
    make_verifier: VerifierFactory, tpm_a: SoftwareTpm, endorsement_a: Endorsement, rsa_ak: AttestationKey
) -> None:
    fresh = make_verifier()
    with refused("no attestation key bound"):
        fresh.verify_quote(RSA_AGENT, tpm_a.attest(fresh, RSA_AGENT, rsa_ak))
    challenge = fresh.begin_enrollment(
        RSA_AGENT,
        ek_public=endorsement_a.ek_public,
        ek_certificate=endorsement_a.ek_certificate,
        intermediates=[endorsement_a.intermediate_pem],
        ak_public=rsa_ak.public,
    )
    with refused("no attestation key bound"):  # begun, but never activated
        fresh.verify_quote(RSA_AGENT, tpm_a.attest(fresh, RSA_AGENT, rsa_ak))
    secret = tpm_a.activate(rsa_ak, challenge.tpm2_tools_credential_file())
    with refused("activated credential is wrong"):
        fresh.complete_enrollment(RSA_AGENT, bytes(a ^ 1 for a in secret))
    with refused("no enrollment in progress"):  # a wrong answer ends the enrollment: no second guess
        fresh.complete_enrollment(RSA_AGENT, secret)


def test_enrollment_expires_and_enrolled_agent_cannot_be_re_enrolled(
    make_verifier: VerifierFactory,
    tpm_a: SoftwareTpm,
    endorsement_a: Endorsement,
    rsa_ak: AttestationKey,
    ecc_ak: AttestationKey,
) -> None:
    now = [1_900_000_000.0]
    fresh = make_verifier(clock=lambda: now[0], enrollment_ttl_s=10.0)
    options = {
        "ek_public": endorsement_a.ek_public,
        "ek_certificate": endorsement_a.ek_certificate,
        "intermediates": [endorsement_a.intermediate_pem],
    }
    challenge = fresh.begin_enrollment(RSA_AGENT, ak_public=rsa_ak.public, **options)  # type: ignore[arg-type]
    secret = tpm_a.activate(rsa_ak, challenge.tpm2_tools_credential_file())
    now[0] += 11.0
    with refused("expired"):
        fresh.complete_enrollment(RSA_AGENT, secret)
    tpm_a.enroll(fresh, RSA_AGENT, rsa_ak)
    with refused("already has an enrolled attestation key"):
        fresh.begin_enrollment(RSA_AGENT, ak_public=ecc_ak.public, **options)  # type: ignore[arg-type]
    fresh.revoke_enrollment(RSA_AGENT)
    with refused("no attestation key bound"):
        fresh.verify_quote(RSA_AGENT, tpm_a.attest(fresh, RSA_AGENT, rsa_ak))


# --- EK certificate chain ---------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    public_key: object,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    days: tuple[int, int] = (-1, 365),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())  # type: ignore[arg-type]
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass
class CraftedChain:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate

    def der(self, certificate: x509.Certificate) -> bytes:
        return certificate.public_bytes(serialization.Encoding.DER)


def _crafted_chain(
    ek_key: object, *, leaf_days: tuple[int, int] = (-1, 365), intermediate_days: tuple[int, int] = (-1, 365)
) -> CraftedChain:
    root_key, intermediate_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _certificate("Test TPM Root", root_key.public_key(), "Test TPM Root", root_key, ca=True)
    intermediate = _certificate(
        "Test TPM CA",
        intermediate_key.public_key(),
        "Test TPM Root",
        root_key,
        ca=True,
        days=intermediate_days,
    )
    leaf = _certificate("EK", ek_key, "Test TPM CA", intermediate_key, ca=False, days=leaf_days)
    return CraftedChain(root, intermediate, leaf)


def _ek_key(endorsement: Endorsement) -> rsa.RSAPublicKey:
    key = tpm.parse_tpm2b_public(endorsement.ek_public).public_key
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def _begin(
    verifier: AttestationVerifier,
    endorsement: Endorsement,
    ak: AttestationKey,
    *,
    certificate: bytes,
    intermediates: list[bytes],
) -> EnrollmentChallenge:
    return verifier.begin_enrollment(
        "chain-test",
        ek_public=endorsement.ek_public,
        ek_certificate=certificate,
        intermediates=intermediates,
        ak_public=ak.public,
    )


def test_ek_chain_missing_its_intermediate_is_refused(
    make_verifier: VerifierFactory, endorsement_a: Endorsement, rsa_ak: AttestationKey
) -> None:
    with refused("no trusted root or supplied intermediate issued"):
        _begin(
            make_verifier(), endorsement_a, rsa_ak, certificate=endorsement_a.ek_certificate, intermediates=[]
        )


def test_ek_chain_to_an_untrusted_root_is_refused(
    golden: dict[str, dict[int, bytes]],
    endorsement_a: Endorsement,
    endorsement_b: Endorsement,
    rsa_ak: AttestationKey,
) -> None:
    # TPM B's local CA is a real CA with the same names as TPM A's: a name match alone must not suffice.
    other_root = x509.load_pem_x509_certificate(endorsement_b.root_pem)
    assert other_root.subject == x509.load_pem_x509_certificate(endorsement_a.root_pem).subject
    untrusting = AttestationVerifier([other_root], golden_pcrs=golden)
    with refused("no trusted root or supplied intermediate issued"):
        _begin(
            untrusting,
            endorsement_a,
            rsa_ak,
            certificate=endorsement_a.ek_certificate,
            intermediates=[endorsement_a.intermediate_pem],
        )


def test_crafted_chain_is_accepted_only_while_valid_and_matching(
    golden: dict[str, dict[int, bytes]],
    tpm_a: SoftwareTpm,
    endorsement_a: Endorsement,
    rsa_ak: AttestationKey,
) -> None:
    chain = _crafted_chain(_ek_key(endorsement_a))
    trusting = AttestationVerifier([chain.root], golden_pcrs=golden)
    challenge = _begin(
        trusting,
        endorsement_a,
        rsa_ak,
        certificate=chain.der(chain.leaf),
        intermediates=[chain.der(chain.intermediate)],
    )
    trusting.complete_enrollment("chain-test", tpm_a.activate(rsa_ak, challenge.tpm2_tools_credential_file()))

    expired = _crafted_chain(_ek_key(endorsement_a), leaf_days=(-30, -1))
    with refused("EK certificate .* outside its validity period"):
        _begin(
            AttestationVerifier([expired.root], golden_pcrs=golden),
            endorsement_a,
            rsa_ak,
            certificate=expired.der(expired.leaf),
            intermediates=[expired.der(expired.intermediate)],
        )

    expired_ca = _crafted_chain(_ek_key(endorsement_a), intermediate_days=(-30, -1))
    with refused("intermediate CA certificate .* outside its validity period"):
        _begin(
            AttestationVerifier([expired_ca.root], golden_pcrs=golden),
            endorsement_a,
            rsa_ak,
            certificate=expired_ca.der(expired_ca.leaf),
            intermediates=[expired_ca.der(expired_ca.intermediate)],
        )

    other_key = _crafted_chain(rsa.generate_private_key(65537, 2048).public_key())
    with refused("certifies a different key"):
        _begin(
            AttestationVerifier([other_key.root], golden_pcrs=golden),
            endorsement_a,
            rsa_ak,
            certificate=other_key.der(other_key.leaf),
            intermediates=[other_key.der(other_key.intermediate)],
        )


def test_leaf_issued_by_a_non_ca_is_refused(
    golden: dict[str, dict[int, bytes]], endorsement_a: Endorsement, rsa_ak: AttestationKey
) -> None:
    root_key, issuer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _certificate("Test TPM Root", root_key.public_key(), "Test TPM Root", root_key, ca=True)
    not_a_ca = _certificate("Test TPM CA", issuer_key.public_key(), "Test TPM Root", root_key, ca=False)
    leaf = _certificate("EK", _ek_key(endorsement_a), "Test TPM CA", issuer_key, ca=False)
    der = serialization.Encoding.DER
    with refused("is not a CA"):
        _begin(
            AttestationVerifier([root], golden_pcrs=golden),
            endorsement_a,
            rsa_ak,
            certificate=leaf.public_bytes(der),
            intermediates=[not_a_ca.public_bytes(der)],
        )


def test_real_chain_outside_its_validity_window_is_refused(
    root_a: x509.Certificate, endorsement_a: Endorsement
) -> None:
    leaf = x509.load_der_x509_certificate(endorsement_a.ek_certificate)
    intermediate = x509.load_pem_x509_certificate(endorsement_a.intermediate_pem)
    chain = verify_ek_certificate_chain(
        leaf, [intermediate], [root_a], now=leaf.not_valid_before_utc.timestamp()
    )
    assert [certificate.subject for certificate in chain] == [
        leaf.subject,
        intermediate.subject,
        root_a.subject,
    ]
    with refused("outside its validity period"):
        verify_ek_certificate_chain(
            leaf, [intermediate], [root_a], now=leaf.not_valid_before_utc.timestamp() - 1
        )


def test_ek_public_that_differs_from_its_certificate_is_refused(
    make_verifier: VerifierFactory,
    endorsement_a: Endorsement,
    endorsement_b: Endorsement,
    rsa_ak: AttestationKey,
) -> None:
    with refused("certifies a different key"):
        make_verifier().begin_enrollment(
            "swap",
            ek_public=endorsement_b.ek_public,
            ek_certificate=endorsement_a.ek_certificate,
            intermediates=[endorsement_a.intermediate_pem],
            ak_public=rsa_ak.public,
        )


# --- TPM clock and boot counters --------------------------------------------------------------------------
def test_older_quote_after_a_newer_one_is_refused_as_clock_regression(
    verifier: AttestationVerifier, tpm_a: SoftwareTpm, rsa_ak: AttestationKey
) -> None:
    older = tpm_a.attest(verifier, RSA_AGENT, rsa_ak)
    newer = tpm_a.attest(verifier, RSA_AGENT, rsa_ak)
    assert tpm.parse_quote(newer.quote).clock >= tpm.parse_quote(older.quote).clock
    verifier.verify_quote(RSA_AGENT, newer)
    if tpm.parse_quote(newer.quote).clock == tpm.parse_quote(older.quote).clock:
        pytest.skip("both quotes fell in the same TPM millisecond")
    with refused("clock went backwards"):
        verifier.verify_quote(RSA_AGENT, older)


def test_restart_and_reset_count_regressions_are_refused(tpm_c: SoftwareTpm) -> None:
    endorsement = tpm_c.endorsement()
    golden_c = replay_event_log([MeasuredEvent(7, BOOT_MEASUREMENT)], selection={"sha256": QUOTED_INDICES})
    fresh = AttestationVerifier([x509.load_pem_x509_certificate(endorsement.root_pem)], golden_pcrs=golden_c)
    ak = tpm_c.create_ak("rsa")
    tpm_c.persist(ak, 0x81000100)  # survives the TPM Reset below; a saved context would not
    tpm_c.enroll(fresh, RSA_AGENT, ak)
    first_boot = tpm_c.attest(fresh, RSA_AGENT, ak)
    tpm_c.reboot("resume")
    after_resume, also_after_resume = tpm_c.attest(fresh, RSA_AGENT, ak), tpm_c.attest(fresh, RSA_AGENT, ak)
    tpm_c.reboot("reset")
    tpm_c.extend(7, BOOT_MEASUREMENT)  # a reset clears the PCRs; the next boot measures the same again
    after_reset = tpm_c.attest(fresh, RSA_AGENT, ak)
    counters = [
        (tpm.parse_quote(item.quote).reset_count, tpm.parse_quote(item.quote).restart_count)
        for item in (first_boot, after_resume, after_reset)
    ]
    assert counters[1] == (counters[0][0], counters[0][1] + 1) and counters[2] == (counters[0][0] + 1, 0)
    # Every quote below is genuine, fresh (its own unused nonce), with golden PCRs: only the counters refuse.
    fresh.verify_quote(RSA_AGENT, after_resume)
    with refused("restartCount went backwards"):
        fresh.verify_quote(RSA_AGENT, first_boot)
    fresh.verify_quote(RSA_AGENT, after_reset)
    with refused("resetCount went backwards"):
        fresh.verify_quote(RSA_AGENT, also_after_resume)


# --- inputs of the wrong shape ------------------------------------------------------------------------------
def test_malformed_arguments_are_refused(
    verifier: AttestationVerifier, rsa_attestation: HardwareAttestation
) -> None:
    with refused("non-empty string"):
        verifier.verify_quote("", rsa_attestation)
    with refused("longer than"):
        verifier.new_challenge("a" * 1000)
    with refused("must be bytes"):
        verifier.verify_quote(RSA_AGENT, dataclasses.replace(rsa_attestation, quote="ff54"))  # type: ignore[arg-type]
    with refused("not a map"):
        verifier.verify_quote(RSA_AGENT, dataclasses.replace(rsa_attestation, pcr_values={"sha256": [b""]}))  # type: ignore[dict-item]
    with refused("trusted TPM root"):
        AttestationVerifier([])


def test_outstanding_challenges_are_bounded_and_expire(
    make_verifier: VerifierFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maif import limits

    monkeypatch.setattr(limits, "attestation_outstanding_nonces_max", 4)
    now = [1_900_000_000.0]
    bounded = make_verifier(clock=lambda: now[0], nonce_ttl_s=10.0)
    for agent_number in range(4):
        bounded.new_challenge(f"agent-{agent_number}")
    with refused("too many outstanding"):
        bounded.new_challenge("agent-4")
    now[0] += 11.0  # every earlier challenge has expired and is swept on the next issue
    for agent_number in range(4):
        bounded.new_challenge(f"agent-{agent_number + 4}")


# --- fuzzing the parsers and the verifier with mutations of real TPM output ---------------------------
def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 = overwrite a byte, 1 = insert one, 2 = delete one."""
    mutated = bytearray(data)
    for kind, position, value in edits:
        index = position % (len(mutated) + 1)
        if kind == 0 and index < len(mutated):
            mutated[index] = value
        elif kind == 1:
            mutated.insert(index, value)
        elif kind == 2 and index < len(mutated):
            del mutated[index]
    return bytes(mutated)


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 4096), st.integers(0, 255)), min_size=1, max_size=6
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, structure=st.sampled_from(["quote", "signature", "ak_public", "ek_public"]))
def test_parsers_raise_only_attestation_errors_on_mutated_real_structures(
    rsa_attestation: HardwareAttestation,
    ecc_ak: AttestationKey,
    endorsement_a: Endorsement,
    edits: list[tuple[int, int, int]],
    structure: str,
) -> None:
    originals = {
        "quote": (rsa_attestation.quote, tpm.parse_quote),
        "signature": (rsa_attestation.signature, tpm.parse_tpmt_signature),
        "ak_public": (ecc_ak.public, tpm.parse_tpm2b_public),
        "ek_public": (endorsement_a.ek_public, tpm.parse_tpm2b_public),
    }
    data, parse = originals[structure]
    with contextlib.suppress(AttestationError):  # anything else (IndexError, ValueError...) fails the test
        parse(_mutate(data, edits))  # type: ignore[operator]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_parsers_raise_only_attestation_errors_on_random_bytes(data: bytes) -> None:
    for parse in (tpm.parse_quote, tpm.parse_tpmt_signature, tpm.parse_tpm2b_public):
        with contextlib.suppress(AttestationError):
            parse(data)  # type: ignore[operator]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, field=st.sampled_from(["quote", "signature", "ak_public"]))
def test_verifier_refuses_every_mutated_real_attestation(
    verifier: AttestationVerifier,
    rsa_attestation: HardwareAttestation,
    edits: list[tuple[int, int, int]],
    field: str,
) -> None:
    original = getattr(rsa_attestation, field)
    mutated = _mutate(original, edits)
    assume(mutated != original)
    with pytest.raises(AttestationError):
        verifier.verify_quote(RSA_AGENT, with_fresh_nonce(verifier, rsa_attestation, **{field: mutated}))


def test_swtpm_script_starts_once_and_stops_only_its_own_process(
    tmp_path: Path, swtpm_installed: None
) -> None:
    software_tpm = SoftwareTpm(tmp_path / "lifecycle")
    software_tpm.start()
    try:
        pid = int((software_tpm.workdir / "swtpm.pid").read_text())
        assert run_script("status", software_tpm.workdir, check=False).returncode == 0
        again = run_script("start", software_tpm.workdir, software_tpm.port, check=False)
        assert again.returncode != 0 and "already running" in again.stderr
        assert (software_tpm.workdir / "ca" / "issuercert.pem").exists()  # manufactured with a local CA
    finally:
        software_tpm.stop()
    assert not Path(f"/proc/{pid}").exists()
    assert run_script("status", software_tpm.workdir, check=False).returncode != 0
    assert not (software_tpm.workdir / "swtpm.pid").exists()


def test_a_tpm_left_by_a_killed_test_run_is_reaped_and_a_live_runs_tpm_is_not(
    tmp_path: Path, swtpm_installed: None
) -> None:
    orphan, live = SoftwareTpm(tmp_path / "orphan"), SoftwareTpm(tmp_path / "live")
    orphan.start()
    live.start()
    try:
        orphan_pid = int((orphan.workdir / "swtpm.pid").read_text())
        live_pid = int((live.workdir / "swtpm.pid").read_text())
        (orphan.workdir / "owner").write_text("999999999 1")  # as if its pytest had been killed
        assert tpm_fixtures.reap_orphaned_tpms(tmp_path / "next") == 1
        assert not Path(f"/proc/{orphan_pid}").exists()
        assert Path(f"/proc/{live_pid}").exists()
    finally:
        orphan.stop()
        live.stop()
