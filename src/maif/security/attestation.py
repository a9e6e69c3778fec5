"""TPM 2.0 remote attestation: enroll an agent's attestation key, then verify its quotes.

The predecessor accepted any "quote" of non-zero length. This verifier accepts a quote only when all of
these hold, checked in this order (Keylime's checkquote is the model):

1. The agent has an enrolled attestation key (AK) and the quote names exactly that key. Enrollment
   (:meth:`AttestationVerifier.begin_enrollment` / :meth:`~AttestationVerifier.complete_enrollment`) walks
   the endorsement key (EK) certificate to a trusted root, checks the EK certificate's key is the TPM's EK,
   checks the AK's attributes (fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign, not decrypt),
   and binds the AK to the EK with MakeCredential; only a TPM that holds both keys can activate it.
2. The TPMT_SIGNATURE uses an allow-listed scheme and hash (no SHA-1) and verifies over the raw TPMS_ATTEST
   bytes, before a single field of them is parsed.
3. TPMS_ATTEST parses strictly as a quote, and its qualifiedSigner is the AK's qualified Name under the EK.
4. extraData is a nonce this verifier issued to this agent (single use, short TTL, deleted on first use),
   or SHA-256(nonce || binding) when the caller binds another key to the quote.
5. The TPM's (resetCount, restartCount, clock) has not gone backwards since this AK's last accepted quote.
6. The supplied PCR values cover exactly the quoted selection, hash to the quoted pcrDigest, and equal the
   golden values (which may come from replaying an event log, see :func:`replay_event_log`).

Every failure raises :class:`~maif.errors.AttestationError` with the reason; nothing is only logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID

from maif import limits
from maif.errors import AttestationError
from maif.security import tpm
from maif.security.enrollments import (
    CLOCK_FLUSH_INTERVAL_S,
    AttestationState,
    ClockRecord,
    EnrolledRecord,
    EnrollmentFile,
)

__all__ = [
    "AttestationResult",
    "AttestationVerifier",
    "EnrolledKey",
    "EnrollmentChallenge",
    "GoldenPcrs",
    "HardwareAttestation",
    "MeasuredEvent",
    "load_certificate",
    "replay_event_log",
    "verify_ek_certificate_chain",
]

NONCE_BYTES: Final = 32
CREDENTIAL_BYTES: Final = 32
_AK_ATTRIBUTES_REQUIRED: Final = (
    tpm.TPMA_FIXED_TPM
    | tpm.TPMA_FIXED_PARENT
    | tpm.TPMA_SENSITIVE_DATA_ORIGIN
    | tpm.TPMA_RESTRICTED
    | tpm.TPMA_SIGN
)
_EK_ATTRIBUTES_REQUIRED: Final = (
    tpm.TPMA_FIXED_TPM | tpm.TPMA_FIXED_PARENT | tpm.TPMA_RESTRICTED | tpm.TPMA_DECRYPT
)
# Critical extensions an EK or CA certificate may carry; any other critical extension refuses the chain.
_KNOWN_CRITICAL_EXTENSIONS: Final = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.CERTIFICATE_POLICIES,
        ExtensionOID.SUBJECT_DIRECTORY_ATTRIBUTES,
    }
)
_TPM2_TOOLS_CREDENTIAL_MAGIC: Final = 0xBADCC0DE
GoldenPcrs = Mapping[str, Mapping[int, bytes | Iterable[bytes]]]
"""A PCR policy: bank -> PCR index -> its golden value, or the collection of values allowed for it."""
_PcrPolicy = Mapping[str, Mapping[int, frozenset[bytes]]]
_TPM2_TOOLS_CREDENTIAL_VERSION: Final = 1


# --- evidence and results --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HardwareAttestation:
    """The evidence an agent sends: a TPM quote and everything needed to check it.

    ``platform_id`` is informational only and never trusted.
    """

    quote: bytes  # TPMS_ATTEST exactly as the TPM signed it
    signature: bytes  # TPMT_SIGNATURE
    pcr_values: Mapping[str, Mapping[int, bytes]]  # {"sha256": {0: 32 bytes, ...}}
    ak_public: bytes  # TPM2B_PUBLIC of the attestation key
    nonce: bytes  # the challenge this quote answers
    platform_id: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready form: bytes as hex, PCRs as {bank: {index: hex}}."""
        return {
            "quote": self.quote.hex(),
            "signature": self.signature.hex(),
            "pcr_values": {
                bank: {str(index): value.hex() for index, value in sorted(values.items())}
                for bank, values in self.pcr_values.items()
            },
            "ak_public": self.ak_public.hex(),
            "nonce": self.nonce.hex(),
            "platform_id": self.platform_id,
        }

    @classmethod
    def from_json_dict(cls, document: Mapping[str, Any]) -> HardwareAttestation:
        """Parse :meth:`to_json_dict` output; raises AttestationError on any malformed field."""
        try:
            pcr_document = document["pcr_values"]
            if not isinstance(pcr_document, Mapping) or len(pcr_document) > limits.tpm_pcr_banks_max:
                raise AttestationError("pcr_values must be a map of at most a few banks")
            if any(len(values) > limits.tpm_pcr_select_bytes_max * 8 for values in pcr_document.values()):
                raise AttestationError("a PCR bank lists more PCRs than a TPM has")
            pcr_values = {
                str(bank): {_pcr_index(index): bytes.fromhex(value) for index, value in values.items()}
                for bank, values in pcr_document.items()
            }
            return cls(
                quote=bytes.fromhex(document["quote"]),
                signature=bytes.fromhex(document["signature"]),
                pcr_values=pcr_values,
                ak_public=bytes.fromhex(document["ak_public"]),
                nonce=bytes.fromhex(document["nonce"]),
                platform_id=str(document.get("platform_id", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise AttestationError("the attestation document is malformed") from error


def _pcr_index(value: object) -> int:
    index = int(str(value), 10)
    if not 0 <= index < limits.tpm_pcr_select_bytes_max * 8:
        raise AttestationError(f"PCR index {index} is out of range")
    return index


@dataclass(frozen=True, slots=True)
class EnrollmentChallenge:
    """MakeCredential's output for the agent's TPM to activate (TPM2_ActivateCredential)."""

    agent_id: str
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET
    expires_at: float

    def tpm2_tools_credential_file(self) -> bytes:
        """The file `tpm2_activatecredential -i` reads: magic, version, then the two TPM2B structures."""
        header = struct.pack(">II", _TPM2_TOOLS_CREDENTIAL_MAGIC, _TPM2_TOOLS_CREDENTIAL_VERSION)
        return header + self.credential_blob + self.encrypted_secret


@dataclass(frozen=True, slots=True)
class EnrolledKey:
    """An attestation key bound to a certified endorsement key; the only AK accepted for ``agent_id``."""

    agent_id: str
    ak_public: bytes  # TPM2B_PUBLIC
    ak_name: bytes
    ak_qualified_name: bytes  # QN(AK) under the EK, as a quote's qualifiedSigner must read
    ek_name: bytes
    ek_certificate_sha256: bytes
    enrolled_at: float


@dataclass(frozen=True, slots=True)
class AttestationResult:
    """What a verified quote proves, and until when the caller may rely on it."""

    agent_id: str
    ak_name: bytes
    pcr_values: Mapping[str, Mapping[int, bytes]]
    reset_count: int
    restart_count: int
    clock: int
    firmware_version: int
    verified_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class _PendingEnrollment:
    ak_public: bytes
    ak: tpm.TpmPublic
    ak_qualified_name: bytes
    ek_name: bytes
    ek_certificate_sha256: bytes
    secret: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class _ClockState:
    reset_count: int
    restart_count: int
    clock: int


# --- event log replay ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MeasuredEvent:
    """One event-log entry: PCR ``pcr`` of ``bank`` was extended with H(data).

    The JSON form accepted by :func:`replay_event_log` is ``{"pcr": 7, "bank": "sha256", "data": "<hex>"}``
    or, when the log only records the digest, ``{"pcr": 7, "bank": "sha256", "digest": "<hex>"}``.
    """

    pcr: int
    data: bytes = b""
    bank: str = "sha256"
    digest: bytes | None = None  # H(data) when the log records only the digest


def replay_event_log(
    events: Iterable[MeasuredEvent | Mapping[str, Any]],
    *,
    selection: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, dict[int, bytes]]:
    """Golden PCR values from an event log: every PCR starts at zero and pcr = H(pcr || H(event)).

    The result holds every PCR named in ``selection`` (unextended ones stay zero) and every PCR an event
    extended. Use it as ``golden_pcrs`` of :class:`AttestationVerifier`.
    """
    pcrs: dict[str, dict[int, bytes]] = {}
    for bank, indices in (selection or {}).items():
        size = _bank_digest_size(bank)
        for index in indices:
            pcrs.setdefault(bank, {})[_pcr_index(index)] = bytes(size)
    for count, raw_event in enumerate(events, start=1):
        if count > limits.tpm_event_log_events_max:
            raise AttestationError(f"the event log has more than {limits.tpm_event_log_events_max} events")
        event = raw_event if isinstance(raw_event, MeasuredEvent) else _event_from_json(raw_event)
        hash_alg = tpm.hash_name(tpm.HASH_ALGORITHM_IDS.get(event.bank, 0), what="an event's bank")
        size = hashlib.new(hash_alg).digest_size
        event_digest = event.digest if event.digest is not None else tpm.digest(hash_alg, event.data)
        if len(event_digest) != size or len(event.data) > limits.tpm_event_bytes_max:
            raise AttestationError(f"an event for PCR {event.pcr} has a digest or data of the wrong size")
        bank_values = pcrs.setdefault(event.bank, {})
        index = _pcr_index(event.pcr)
        bank_values[index] = tpm.digest(hash_alg, bank_values.get(index, bytes(size)) + event_digest)
    return pcrs


def _event_from_json(document: Mapping[str, Any]) -> MeasuredEvent:
    try:
        digest_hex = document.get("digest")
        return MeasuredEvent(
            pcr=_pcr_index(document["pcr"]),
            bank=str(document.get("bank", "sha256")),
            data=bytes.fromhex(document.get("data", "")),
            digest=bytes.fromhex(digest_hex) if digest_hex is not None else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise AttestationError("an event-log entry is malformed") from error


# --- EK certificate chain --------------------------------------------------------------------------
def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """A DER or PEM certificate, size-capped before parsing."""
    if len(data) > limits.tpm_certificate_bytes_max:
        raise AttestationError(
            f"{what} is {len(data)} bytes, above the limit of {limits.tpm_certificate_bytes_max}"
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise AttestationError(f"{what} is not a well-formed X.509 certificate") from error


def verify_ek_certificate_chain(
    ek_certificate: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trusted_roots: Sequence[x509.Certificate],
    *,
    now: float,
) -> list[x509.Certificate]:
    """Walk from the EK certificate to a trusted root by hand; returns the chain, leaf first.

    Each link: the issuer's name matches and its key verifies the signature (SHA-1 or weaker refused);
    every certificate is inside its validity window at ``now``; every issuer is a CA (basic constraints,
    path length, keyCertSign); the leaf is not a CA and may encipher keys; no unknown critical extension.
    """
    _check_certificate(ek_certificate, now=now, what="the EK certificate")
    _check_ek_leaf(ek_certificate)
    chain = [ek_certificate]
    current = ek_certificate
    while len(chain) <= limits.tpm_certificate_chain_depth_max:
        root = _find_issuer(current, trusted_roots)
        if root is not None:
            _check_ca(root, chain, now=now, what="the trusted root")
            chain.append(root)
            return chain
        issuer = _find_issuer(current, intermediates)
        if issuer is None:
            raise AttestationError(
                f"no trusted root or supplied intermediate issued {current.subject.rfc4514_string()!r}",
                hint="supply the intermediate CA certificates, and check trusted_tpm_roots",
            )
        _check_ca(issuer, chain, now=now, what="an intermediate CA certificate")
        chain.append(issuer)
        current = issuer
    raise AttestationError(
        f"the EK certificate chain is longer than {limits.tpm_certificate_chain_depth_max}"
    )


def _find_issuer(
    certificate: x509.Certificate, candidates: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for candidate in candidates:
        if candidate.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):  # wrong issuer, unsupported key, bad signature
            continue
        return candidate
    return None


def _check_certificate(certificate: x509.Certificate, *, now: float, what: str) -> None:
    if not certificate.not_valid_before_utc.timestamp() <= now <= certificate.not_valid_after_utc.timestamp():
        raise AttestationError(
            f"{what} ({certificate.subject.rfc4514_string()!r}) is outside its validity period"
        )
    hash_algorithm = certificate.signature_hash_algorithm
    if hash_algorithm is None or hash_algorithm.name not in ("sha256", "sha384", "sha512"):
        raise AttestationError(f"{what} is signed with a hash this verifier does not accept")
    try:
        extensions = certificate.extensions
    except ValueError as error:
        raise AttestationError(f"{what} has malformed extensions") from error
    for extension in extensions:
        if extension.critical and extension.oid not in _KNOWN_CRITICAL_EXTENSIONS:
            raise AttestationError(f"{what} has an unknown critical extension {extension.oid.dotted_string}")


def _check_ek_leaf(certificate: x509.Certificate) -> None:
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise AttestationError("the EK certificate is a CA certificate")
    key_usage = _extension(certificate, x509.KeyUsage)
    if key_usage is None or not key_usage.key_encipherment:
        raise AttestationError("the EK certificate does not allow key encipherment")


def _check_ca(
    certificate: x509.Certificate, chain_below: Sequence[x509.Certificate], *, now: float, what: str
) -> None:
    _check_certificate(certificate, now=now, what=what)
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise AttestationError(f"{what} ({certificate.subject.rfc4514_string()!r}) is not a CA")
    intermediates_below = len(chain_below) - 1
    if constraints.path_length is not None and intermediates_below > constraints.path_length:
        raise AttestationError(f"{what} allows a path length of {constraints.path_length} only")
    key_usage = _extension(certificate, x509.KeyUsage)
    if key_usage is None or not key_usage.key_cert_sign:
        raise AttestationError(f"{what} may not sign certificates (keyUsage)")


def _extension(certificate: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


# --- the verifier ----------------------------------------------------------------------------------
class AttestationVerifier:
    """Issues challenges, enrolls attestation keys and verifies TPM 2.0 quotes. Thread-safe.

    ``golden_pcrs`` is the PCR policy: a quote must select exactly these PCRs and carry exactly these
    values. Without golden values every quote is refused (fail closed): the TPM alone proves which key
    signed, not what ran.

    With ``state_file`` the enrolments and each AK's newest clock are kept there and reloaded on start
    (:mod:`maif.security.enrollments`); without it they live as long as this object. Call :meth:`close`
    when done, so the newest clocks are written.
    """

    def __init__(
        self,
        trusted_roots: Sequence[x509.Certificate],
        *,
        golden_pcrs: GoldenPcrs | None = None,
        nonce_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        enrollment_ttl_s: float = 300.0,
        result_valid_for_s: float = 300.0,
        state_file: EnrollmentFile | None = None,
    ) -> None:
        if not trusted_roots:
            raise AttestationError("an attestation verifier needs at least one trusted TPM root certificate")
        if not (nonce_ttl_s > 0 and enrollment_ttl_s > 0 and result_valid_for_s > 0):
            raise AttestationError("attestation TTLs must be positive")
        self._trusted_roots = tuple(trusted_roots)
        self._golden = _freeze_policy(golden_pcrs) if golden_pcrs is not None else None
        self._nonce_ttl_s = nonce_ttl_s
        self._enrollment_ttl_s = enrollment_ttl_s
        self._result_valid_for_s = result_valid_for_s
        self._clock = clock
        self._lock = threading.Lock()
        self._nonces: dict[str, OrderedDict[bytes, float]] = {}  # per agent, oldest first
        self._nonce_expiry: OrderedDict[tuple[str, bytes], float] = OrderedDict()  # all agents, oldest first
        self._pending: OrderedDict[str, _PendingEnrollment] = OrderedDict()
        self._enrolled: dict[str, EnrolledKey] = {}
        self._enrolled_ak: dict[str, tpm.TpmPublic] = {}  # parsed and checked once, at enrollment
        self._last_clock: dict[bytes, _ClockState] = {}
        # Enrolments and clocks survive a restart in this sealed file (maif.security.enrollments).
        self._state_file = state_file
        self._generation = 0
        self._clocks_written_at = time.monotonic()
        self._clocks_unwritten = False
        if state_file is not None:
            with self._lock, state_file.locked():
                self._adopt(state_file.load())

    # -- challenges --
    def new_challenge(self, agent_id: str) -> bytes:
        """32 random bytes for ``agent_id`` to quote over: single use, valid for ``nonce_ttl_s``."""
        _check_agent_id(agent_id)
        nonce = os.urandom(NONCE_BYTES)
        now = self._clock()
        with self._lock:
            self._drop_expired_nonces(now)
            agent_nonces = self._nonces.setdefault(agent_id, OrderedDict())
            if len(agent_nonces) >= limits.attestation_nonces_per_agent_max:
                oldest, _ = agent_nonces.popitem(last=False)
                del self._nonce_expiry[(agent_id, oldest)]
            if len(self._nonce_expiry) >= limits.attestation_outstanding_nonces_max:
                raise AttestationError("too many outstanding attestation challenges; try again shortly")
            agent_nonces[nonce] = now + self._nonce_ttl_s
            self._nonce_expiry[(agent_id, nonce)] = now + self._nonce_ttl_s
        return nonce

    def _drop_expired_nonces(self, now: float) -> None:
        """Forget expired challenges, oldest first (one TTL for all, so issue order is expiry order)."""
        while self._nonce_expiry:
            (agent_id, nonce), expires_at = next(iter(self._nonce_expiry.items()))
            if expires_at >= now:
                return
            del self._nonce_expiry[(agent_id, nonce)]
            self._forget_agent_nonce(agent_id, nonce)

    def _forget_agent_nonce(self, agent_id: str, nonce: bytes) -> float | None:
        agent_nonces = self._nonces.get(agent_id)
        if agent_nonces is None:
            return None
        expires_at = agent_nonces.pop(nonce, None)
        if not agent_nonces:
            del self._nonces[agent_id]
        return expires_at

    def _consume_nonce(self, agent_id: str, nonce: bytes) -> None:
        """Delete ``nonce`` on first use; raises unless it was issued to ``agent_id`` and is unexpired."""
        if len(nonce) != NONCE_BYTES:
            raise AttestationError("the attestation carries no challenge nonce issued by this verifier")
        with self._lock:
            expires_at = self._forget_agent_nonce(agent_id, nonce)
            if expires_at is None:
                raise AttestationError("the nonce was not issued to this agent, or was already used")
            del self._nonce_expiry[(agent_id, nonce)]
        if expires_at < self._clock():
            raise AttestationError("the challenge nonce has expired")

    # -- enrollment --
    def begin_enrollment(
        self,
        agent_id: str,
        *,
        ek_public: bytes,
        ek_certificate: bytes,
        intermediates: Sequence[bytes],
        ak_public: bytes,
        ak_pem: bytes | None = None,
    ) -> EnrollmentChallenge:
        """Check the EK certificate chain, the EK and the AK, then MakeCredential for ActivateCredential.

        ``ak_pem``, when given, must be the same key as ``ak_public`` (tools often hand both around).
        """
        _check_agent_id(agent_id)
        now = self._clock()
        with self._lock:
            self._refresh_state()
            if agent_id in self._enrolled:
                raise AttestationError(
                    f"agent {agent_id!r} already has an enrolled attestation key",
                    hint="revoke_enrollment first to replace it",
                )
        ek = tpm.parse_tpm2b_public(ek_public, what="the EK public area")
        certificate = load_certificate(ek_certificate, what="the EK certificate")
        chain_intermediates = [
            load_certificate(item, what="an intermediate certificate") for item in intermediates
        ]
        verify_ek_certificate_chain(certificate, chain_intermediates, self._trusted_roots, now=now)
        _check_ek(ek, certificate)
        ak = _check_ak_public(ak_public)
        if ak_pem is not None:
            _check_pem_matches(ak, ak_pem)
        secret = os.urandom(CREDENTIAL_BYTES)
        seed = os.urandom(hashlib.new(ek.name_alg).digest_size)
        made = tpm.make_credential(ek, ak.name, secret, seed=seed)
        # tpm2_createak makes the AK a child of the EK, so a quote's qualifiedSigner is QN(AK) under QN(EK).
        ek_qualified_name = tpm.qualified_name(tpm.hierarchy_qualified_name(tpm.TPM_RH_ENDORSEMENT), ek)
        pending = _PendingEnrollment(
            ak_public,
            ak,
            tpm.qualified_name(ek_qualified_name, ak),
            ek.name,
            hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest(),
            secret,
            now + self._enrollment_ttl_s,
        )
        with self._lock:
            self._pending.pop(agent_id, None)
            if len(self._pending) >= limits.attestation_pending_enrollments_max:
                self._pending.popitem(last=False)
            self._pending[agent_id] = pending
        return EnrollmentChallenge(agent_id, made.credential_blob, made.encrypted_secret, pending.expires_at)

    def complete_enrollment(self, agent_id: str, activated_secret: bytes) -> EnrolledKey:
        """Accept the AK of a begun enrollment if ``activated_secret`` is what its TPM had to activate."""
        _check_agent_id(agent_id)
        with self._lock:
            pending = self._pending.pop(agent_id, None)  # single use: a wrong answer ends the enrollment
        if pending is None:
            raise AttestationError(f"no enrollment in progress for agent {agent_id!r}")
        now = self._clock()
        if pending.expires_at < now:
            raise AttestationError("the enrollment challenge has expired")
        if not hmac.compare_digest(pending.secret, activated_secret):
            raise AttestationError("the activated credential is wrong: the AK and EK are not in one TPM")
        enrolled = EnrolledKey(
            agent_id,
            pending.ak_public,
            pending.ak.name,
            pending.ak_qualified_name,
            pending.ek_name,
            pending.ek_certificate_sha256,
            now,
        )
        with self._lock, self._changing_state():
            if agent_id in self._enrolled:
                raise AttestationError(f"agent {agent_id!r} already has an enrolled attestation key")
            if len(self._enrolled) >= limits.attestation_enrolled_agents_max:
                raise AttestationError("this verifier holds the most enrolled agents it allows")
            self._enrolled[agent_id] = enrolled
            self._enrolled_ak[agent_id] = pending.ak
        return enrolled

    def enrolled_key(self, agent_id: str) -> EnrolledKey | None:
        with self._lock:
            self._refresh_state()
            return self._enrolled.get(agent_id)

    def revoke_enrollment(self, agent_id: str) -> None:
        """Forget the agent's AK (and its clock history); its quotes are refused until it enrolls again."""
        with self._lock, self._changing_state():
            enrolled = self._enrolled.pop(agent_id, None)
            self._enrolled_ak.pop(agent_id, None)
            if enrolled is not None:
                self._last_clock.pop(enrolled.ak_name, None)

    def set_golden_pcrs(self, golden_pcrs: GoldenPcrs) -> None:
        """Replace the PCR policy (for example after an approved platform update)."""
        frozen = _freeze_policy(golden_pcrs)
        with self._lock:
            self._golden = frozen

    # -- quotes --
    def verify_quote(
        self, agent_id: str, attestation: HardwareAttestation, *, binding: bytes | None = None
    ) -> AttestationResult:
        """Verify ``attestation`` for ``agent_id``; raises AttestationError on any failure.

        With ``binding`` the quote's extraData must be SHA-256(nonce || binding) instead of the nonce.
        """
        _check_agent_id(agent_id)
        _check_evidence_types(attestation)
        if binding is not None and not isinstance(binding, bytes):
            raise AttestationError("a quote binding must be bytes")
        with self._lock:
            self._refresh_state()
            enrolled = self._enrolled.get(agent_id)
            enrolled_ak = self._enrolled_ak.get(agent_id)
            golden = self._golden
        self._consume_nonce(agent_id, attestation.nonce)
        if enrolled is None or enrolled_ak is None:
            raise AttestationError(
                f"agent {agent_id!r} has no attestation key bound through ActivateCredential"
            )
        quote, hash_alg = _signed_quote(enrolled, enrolled_ak, attestation)
        expected_extra_data = attestation.nonce
        if binding is not None:
            expected_extra_data = hashlib.sha256(attestation.nonce + binding).digest()
        if not hmac.compare_digest(quote.extra_data, expected_extra_data):
            raise AttestationError("the quote's extraData is not the challenge issued for it")
        _check_pcrs(quote, attestation.pcr_values, hash_alg, golden)
        self._advance_clock(enrolled.ak_name, quote)
        now = self._clock()
        return AttestationResult(
            agent_id,
            enrolled.ak_name,
            _freeze_golden(attestation.pcr_values),
            quote.reset_count,
            quote.restart_count,
            quote.clock,
            quote.firmware_version,
            now,
            now + self._result_valid_for_s,
        )

    def _advance_clock(self, ak_name: bytes, quote: tpm.QuoteInfo) -> None:
        """Refuse a TPM whose boot counters or clock went backwards; remember the newest."""
        current = _ClockState(quote.reset_count, quote.restart_count, quote.clock)
        with self._lock:
            last = self._last_clock.get(ak_name)
            if last is not None:
                if current.reset_count < last.reset_count:
                    raise AttestationError("the TPM's resetCount went backwards (state rollback or replay)")
                same_boot = current.reset_count == last.reset_count
                if same_boot and current.restart_count < last.restart_count:
                    raise AttestationError("the TPM's restartCount went backwards (state rollback or replay)")
                if same_boot and current.restart_count == last.restart_count and current.clock < last.clock:
                    raise AttestationError("the TPM's clock went backwards (state rollback or replay)")
            self._last_clock[ak_name] = current
            self._clocks_unwritten = True
            if time.monotonic() - self._clocks_written_at >= CLOCK_FLUSH_INTERVAL_S:
                self._write_clocks()

    # -- durable state --
    def close(self) -> None:
        """Write the clocks accepted since the last write (no-op without a state file)."""
        with self._lock:
            self._write_clocks()

    def _write_clocks(self) -> None:
        if self._state_file is not None and self._clocks_unwritten:
            with self._changing_state():
                pass

    def _refresh_state(self) -> None:
        """Adopt the state file when another process replaced it (call with the lock held)."""
        if self._state_file is not None and self._state_file.stale():
            with self._state_file.locked():
                self._adopt(self._state_file.load())

    @contextlib.contextmanager
    def _changing_state(self) -> Iterator[None]:
        """Change enrolments on the newest copy of the state and write it before the change counts
        (call with the lock held). A change that raises, or whose write fails, is undone."""
        if self._state_file is None:
            yield
            return
        with self._state_file.locked():
            if self._state_file.stale():
                self._adopt(self._state_file.load())
            saved = (dict(self._enrolled), dict(self._enrolled_ak), dict(self._last_clock))
            try:
                yield
                state = self._snapshot()
                self._state_file.save(state)
            except BaseException:
                self._enrolled, self._enrolled_ak, self._last_clock = saved
                raise
            self._generation = state.generation
            self._clocks_written_at = time.monotonic()
            self._clocks_unwritten = False

    def _adopt(self, state: AttestationState) -> None:
        """The file's enrolments replace ours; for clocks the later of ours and the file's wins."""
        enrolled: dict[str, EnrolledKey] = {}
        enrolled_ak: dict[str, tpm.TpmPublic] = {}
        for record in state.enrolled:
            enrolled[record.agent_id] = EnrolledKey(
                record.agent_id, record.ak_public, record.ak_name, record.ak_qualified_name, record.ek_name,
                record.ek_certificate_sha256, record.enrolled_at,
            )
            enrolled_ak[record.agent_id] = _check_ak_public(record.ak_public)
        clocks = dict(self._last_clock)
        for item in state.clocks:
            stored = _ClockState(item.reset_count, item.restart_count, item.clock)
            mine = clocks.get(item.ak_name)
            if mine is None or _clock_key(stored) > _clock_key(mine):
                clocks[item.ak_name] = stored
        self._enrolled, self._enrolled_ak, self._last_clock = enrolled, enrolled_ak, clocks
        self._generation = state.generation

    def _snapshot(self) -> AttestationState:
        return AttestationState(
            self._generation + 1,
            [
                EnrolledRecord(key.agent_id, key.ak_public, key.ak_name, key.ak_qualified_name, key.ek_name,
                               key.ek_certificate_sha256, key.enrolled_at)
                for key in self._enrolled.values()
            ],
            [
                ClockRecord(ak_name, state.reset_count, state.restart_count, state.clock)
                for ak_name, state in self._last_clock.items()
            ],
        )


def _clock_key(state: _ClockState) -> tuple[int, int, int]:
    return (state.reset_count, state.restart_count, state.clock)


# --- checks ----------------------------------------------------------------------------------------
def _check_agent_id(agent_id: str) -> None:
    if not isinstance(agent_id, str) or not agent_id:
        raise AttestationError("an agent id must be a non-empty string")
    if len(agent_id.encode("utf-8", "surrogatepass")) > limits.agent_id_bytes_max:
        raise AttestationError(f"an agent id is longer than {limits.agent_id_bytes_max} bytes")


def _signed_quote(
    enrolled: EnrolledKey, enrolled_ak: tpm.TpmPublic, attestation: HardwareAttestation
) -> tuple[tpm.QuoteInfo, str]:
    """The quote, parsed only after its signature by the enrolled AK verified; and the signature's hash."""
    if not hmac.compare_digest(attestation.ak_public, enrolled.ak_public):
        raise AttestationError(
            "the quote names an attestation key other than the one enrolled for this agent"
        )
    # Same bytes as the enrolled AK, whose attributes were checked at enrollment: reuse the parsed key.
    assert enrolled_ak.name == enrolled.ak_name
    signature = tpm.parse_tpmt_signature(attestation.signature)
    if len(attestation.quote) > limits.tpm_attest_bytes_max:
        raise AttestationError("TPMS_ATTEST is larger than any quote")
    tpm.verify_signature(enrolled_ak, signature, attestation.quote)
    quote = tpm.parse_quote(attestation.quote)
    if quote.qualified_signer != enrolled.ak_qualified_name:
        raise AttestationError("the quote's qualifiedSigner is not the enrolled AK under its EK")
    return quote, signature.hash_alg


def _check_evidence_types(attestation: HardwareAttestation) -> None:
    if not isinstance(attestation, HardwareAttestation):
        raise AttestationError("the evidence is not a HardwareAttestation")
    for name in ("quote", "signature", "ak_public", "nonce"):
        if not isinstance(getattr(attestation, name), bytes):
            raise AttestationError(f"the attestation's {name} must be bytes")


def _check_ak_public(ak_public: bytes) -> tpm.TpmPublic:
    ak = tpm.parse_tpm2b_public(ak_public, what="the AK public area")
    if not ak.has_attributes(_AK_ATTRIBUTES_REQUIRED) or ak.attributes & tpm.TPMA_DECRYPT:
        raise AttestationError(
            f"the AK's attributes 0x{ak.attributes:08x} are not fixedTPM|fixedParent|sensitiveDataOrigin|"
            "restricted|sign without decrypt"
        )
    if ak.scheme not in (tpm.TPM_ALG_RSASSA, tpm.TPM_ALG_RSAPSS, tpm.TPM_ALG_ECDSA):
        raise AttestationError(f"the AK's signing scheme 0x{ak.scheme:04x} is not allowed")
    tpm.hash_name(ak.scheme_hash, what="the AK's signing scheme")
    return ak


def _check_ek(ek: tpm.TpmPublic, certificate: x509.Certificate) -> None:
    if not ek.has_attributes(_EK_ATTRIBUTES_REQUIRED) or ek.attributes & tpm.TPMA_SIGN:
        raise AttestationError("the EK public area is not a restricted decryption key fixed to its TPM")
    certified_key = certificate.public_key()
    if not isinstance(certified_key, rsa.RSAPublicKey) or not isinstance(ek.public_key, rsa.RSAPublicKey):
        raise AttestationError("only RSA endorsement keys are supported")
    if certified_key.public_numbers() != ek.public_key.public_numbers():
        raise AttestationError("the EK certificate certifies a different key than the TPM's EK")


def _check_pem_matches(ak: tpm.TpmPublic, ak_pem: bytes) -> None:
    if len(ak_pem) > limits.tpm_certificate_bytes_max:
        raise AttestationError("the AK PEM is too large")
    try:
        pem_key = serialization.load_pem_public_key(ak_pem)
    except (ValueError, TypeError) as error:
        raise AttestationError("the AK PEM is not a public key") from error
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if pem_key.public_bytes(der, spki) != ak.public_key.public_bytes(der, spki):
        raise AttestationError("the AK PEM is a different key than the AK public area")


def _check_pcrs(
    quote: tpm.QuoteInfo,
    supplied: Mapping[str, Mapping[int, bytes]],
    hash_alg: str,
    golden: _PcrPolicy | None,
) -> None:
    """Supplied values cover exactly the selection, hash to pcrDigest, and are allowed golden values."""
    if not isinstance(supplied, Mapping) or len(supplied) > limits.tpm_pcr_banks_max:
        raise AttestationError("the supplied PCR values are not a map of PCR banks")
    supplied = _freeze_golden(supplied)  # checks banks, indices and value sizes
    selected = {(selection.bank, index) for selection in quote.selections for index in selection.indices}
    supplied_keys = {(bank, index) for bank, values in supplied.items() for index in values}
    if not selected:
        raise AttestationError("the quote selects no PCR")
    if supplied_keys != selected:
        raise AttestationError("the supplied PCR values do not cover exactly the quoted selection")
    concatenated = b"".join(
        supplied[selection.bank][index] for selection in quote.selections for index in selection.indices
    )
    if not hmac.compare_digest(tpm.digest(hash_alg, concatenated), quote.pcr_digest):
        raise AttestationError("the supplied PCR values do not hash to the quoted pcrDigest")
    if golden is None:
        raise AttestationError("no golden PCR values are configured; refusing to judge the platform state")
    golden_keys = {(bank, index) for bank, values in golden.items() for index in values}
    if golden_keys != selected:
        raise AttestationError("the quoted PCR selection differs from the golden policy's PCRs")
    for bank, index in sorted(selected):
        if supplied[bank][index] not in golden[bank][index]:  # PCR values are public: no timing to hide
            raise AttestationError(f"PCR {bank}:{index} differs from its golden value")


def _freeze_policy(golden: GoldenPcrs) -> _PcrPolicy:
    """The golden policy with one or several allowed digests per PCR, each checked like a PCR value."""
    if not isinstance(golden, Mapping) or len(golden) > limits.tpm_pcr_banks_max:
        raise AttestationError("the golden PCR policy is not a map of PCR banks")
    policy: dict[str, Mapping[int, frozenset[bytes]]] = {}
    for bank, values in golden.items():
        if not isinstance(values, Mapping):
            raise AttestationError(f"the golden values of bank {bank} are not a map")
        allowed: dict[int, frozenset[bytes]] = {}
        for index, value in values.items():
            digests = [value] if isinstance(value, bytes) else list(value)
            if not 0 < len(digests) <= limits.tpm_golden_values_per_pcr_max:
                raise AttestationError(
                    f"PCR {bank}:{index} needs 1 to {limits.tpm_golden_values_per_pcr_max} allowed values"
                )
            size = _bank_digest_size(bank)
            allowed[_pcr_index(index)] = frozenset(_pcr_value(bank, index, item, size) for item in digests)
        policy[bank] = MappingProxyType(allowed)
    return MappingProxyType(policy)


def _freeze_golden(pcrs: Mapping[str, Mapping[int, bytes]]) -> Mapping[str, Mapping[int, bytes]]:
    frozen: dict[str, Mapping[int, bytes]] = {}
    for bank, values in pcrs.items():
        size = _bank_digest_size(bank)
        if not isinstance(values, Mapping):
            raise AttestationError(f"the PCR values of bank {bank} are not a map")
        checked: dict[int, bytes] = {}
        for index, value in values.items():
            checked[_pcr_index(index)] = _pcr_value(bank, index, value, size)
        frozen[bank] = MappingProxyType(checked)
    return MappingProxyType(frozen)


def _bank_digest_size(bank: str) -> int:
    return hashlib.new(tpm.hash_name(tpm.HASH_ALGORITHM_IDS.get(bank, 0), what="a PCR bank")).digest_size


def _pcr_value(bank: str, index: object, value: object, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise AttestationError(f"PCR {bank}:{index} is not a {size}-byte value")
    return value
