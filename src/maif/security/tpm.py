"""Strict parsers and builders for the few TPM 2.0 structures a remote verifier handles.

Everything here is pure: bytes in, typed values out, no TPM and no tpm2-tools. The structures follow TPM 2.0
Library Part 2 (big-endian marshalling): TPM2B_PUBLIC / TPMT_PUBLIC, TPMT_SIGNATURE, TPMS_ATTEST with
TPMS_QUOTE_INFO, TPML_PCR_SELECTION. Input is hostile: every length is checked against a named bound in
:mod:`maif.limits` before it is used, every read is bounds-checked, and a structure must consume its input
exactly (no trailing bytes). Every failure is an :class:`~maif.errors.AttestationError`.

It also holds the verifier's half of the credential protocol (Part 1, section 24, "Credential Protection"):
KDFa (Part 1, 11.4.10.2), the object Name and the qualified Name, and MakeCredential, so that a verifier
can bind an attestation key to an endorsement key without a TPM of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography 47+ keeps CFB among the "decrepit" modes; TPM credential protection requires it.
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from maif import limits
from maif.errors import AttestationError

# --- TPM 2.0 constants (Part 2) -----------------------------------------------------------------
TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_CERTIFY: Final = 0x8017
TPM_ST_ATTEST_QUOTE: Final = 0x8018
TPM_RH_ENDORSEMENT: Final = 0x4000000B

TPM_ALG_RSA: Final = 0x0001
TPM_ALG_SHA1: Final = 0x0004
TPM_ALG_HMAC: Final = 0x0005
TPM_ALG_AES: Final = 0x0006
TPM_ALG_SHA256: Final = 0x000B
TPM_ALG_SHA384: Final = 0x000C
TPM_ALG_SHA512: Final = 0x000D
TPM_ALG_NULL: Final = 0x0010
TPM_ALG_RSASSA: Final = 0x0014
TPM_ALG_RSAES: Final = 0x0015
TPM_ALG_RSAPSS: Final = 0x0016
TPM_ALG_OAEP: Final = 0x0017
TPM_ALG_ECDSA: Final = 0x0018
TPM_ALG_ECDAA: Final = 0x001A
TPM_ALG_ECC: Final = 0x0023
TPM_ALG_CFB: Final = 0x0043

TPM_ECC_NIST_P256: Final = 0x0003
TPM_ECC_NIST_P384: Final = 0x0004
TPM_ECC_NIST_P521: Final = 0x0005

# TPMA_OBJECT bits (Part 2, 8.3).
TPMA_FIXED_TPM: Final = 1 << 1
TPMA_FIXED_PARENT: Final = 1 << 4
TPMA_SENSITIVE_DATA_ORIGIN: Final = 1 << 5
TPMA_RESTRICTED: Final = 1 << 16
TPMA_DECRYPT: Final = 1 << 17
TPMA_SIGN: Final = 1 << 18

# Hash algorithms a verifier accepts anywhere (names, signatures, PCR banks): SHA-1 is refused outright.
HASH_ALGORITHMS: Final[dict[int, str]] = {
    TPM_ALG_SHA256: "sha256",
    TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512",
}
HASH_ALGORITHM_IDS: Final[dict[str, int]] = {name: alg for alg, name in HASH_ALGORITHMS.items()}
_CURVES: Final[dict[int, ec.EllipticCurve]] = {
    TPM_ECC_NIST_P256: ec.SECP256R1(),
    TPM_ECC_NIST_P384: ec.SECP384R1(),
    TPM_ECC_NIST_P521: ec.SECP521R1(),
}
_CRYPTOGRAPHY_HASHES: Final[dict[str, type[hashes.HashAlgorithm]]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def hash_name(alg: int, *, what: str) -> str:
    """The hashlib name of TPM hash algorithm ``alg``; raises unless it is on the allow-list."""
    name = HASH_ALGORITHMS.get(alg)
    if name is None:
        raise AttestationError(f"{what} uses hash algorithm 0x{alg:04x}, which is not allowed")
    return name


def cryptography_hash(name: str) -> hashes.HashAlgorithm:
    return _CRYPTOGRAPHY_HASHES[name]()


def digest(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


class Reader:
    """A bounds-checked big-endian cursor over hostile bytes."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    @property
    def offset(self) -> int:
        return self._offset

    def take(self, size: int) -> bytes:
        assert size >= 0
        end = self._offset + size
        if end > len(self._data):
            raise AttestationError(
                f"{self._what} is truncated: needs {size} bytes at offset {self._offset}, "
                f"has {len(self._data) - self._offset}"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack(">Q", self.take(8))[0]
        return value

    def tpm2b(self, field: str, size_max: int) -> bytes:
        """A TPM2B: u16 size then that many bytes; the size is capped before anything is read."""
        size = self.u16()
        if size > size_max:
            raise AttestationError(
                f"{self._what}: {field} claims {size} bytes, above the limit of {size_max}"
            )
        return self.take(size)

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise AttestationError(
                f"{self._what} has {len(self._data) - self._offset} trailing bytes at offset {self._offset}"
            )


def tpm2b(data: bytes) -> bytes:
    """Marshal ``data`` as a TPM2B (u16 big-endian size, then the bytes)."""
    assert len(data) <= 0xFFFF
    return struct.pack(">H", len(data)) + data


# --- TPMT_PUBLIC ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC (RSA or ECC): the fields a verifier judges, and the key itself."""

    marshalled: bytes  # the TPMT_PUBLIC bytes (without the TPM2B size), hashed into the Name
    key_type: int
    name_alg: str
    attributes: int
    symmetric_alg: int  # TPM_ALG_NULL for signing keys; AES for storage keys such as the EK
    symmetric_key_bits: int
    scheme: int  # TPM_ALG_NULL or the key's fixed signing scheme
    scheme_hash: int  # TPM_ALG_NULL when scheme is NULL
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey

    @property
    def name(self) -> bytes:
        """Name = nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1, 16)."""
        return struct.pack(">H", HASH_ALGORITHM_IDS[self.name_alg]) + digest(self.name_alg, self.marshalled)

    def has_attributes(self, mask: int) -> bool:
        return self.attributes & mask == mask


def parse_tpm2b_public(data: bytes, *, what: str = "TPM2B_PUBLIC") -> TpmPublic:
    """Parse a TPM2B_PUBLIC exactly (size prefix, one RSA or ECC TPMT_PUBLIC, nothing after)."""
    if len(data) > limits.tpm_public_bytes_max + 2:
        raise AttestationError(
            f"{what} is {len(data)} bytes, above the limit of {limits.tpm_public_bytes_max + 2}"
        )
    outer = Reader(data, what)
    marshalled = outer.tpm2b("size", limits.tpm_public_bytes_max)
    outer.finish()
    return parse_tpmt_public(marshalled, what=what)


def parse_tpmt_public(marshalled: bytes, *, what: str = "TPMT_PUBLIC") -> TpmPublic:
    reader = Reader(marshalled, what)
    key_type = reader.u16()
    name_alg = hash_name(reader.u16(), what=f"{what} nameAlg")
    attributes = reader.u32()
    reader.tpm2b("authPolicy", limits.tpm_digest_bytes_max)
    symmetric_alg, symmetric_key_bits = _parse_symmetric(reader, what)
    if key_type == TPM_ALG_RSA:
        scheme, scheme_hash = _parse_scheme(reader, what)
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = _parse_rsa_key(reader, what)
    elif key_type == TPM_ALG_ECC:
        scheme, scheme_hash = _parse_scheme(reader, what)
        public_key = _parse_ecc_key(reader, what)
    else:
        raise AttestationError(f"{what} has key type 0x{key_type:04x}; only RSA and ECC keys are accepted")
    reader.finish()
    return TpmPublic(
        marshalled,
        key_type,
        name_alg,
        attributes,
        symmetric_alg,
        symmetric_key_bits,
        scheme,
        scheme_hash,
        public_key,
    )


def _parse_symmetric(reader: Reader, what: str) -> tuple[int, int]:
    algorithm = reader.u16()
    if algorithm == TPM_ALG_NULL:
        return algorithm, 0
    key_bits = reader.u16()
    mode = reader.u16()
    if algorithm != TPM_ALG_AES or mode != TPM_ALG_CFB or key_bits not in (128, 192, 256):
        raise AttestationError(
            f"{what} has an unsupported symmetric definition (0x{algorithm:04x}, {key_bits})"
        )
    return algorithm, key_bits


def _parse_scheme(reader: Reader, what: str) -> tuple[int, int]:
    scheme = reader.u16()
    if scheme == TPM_ALG_NULL:
        return scheme, TPM_ALG_NULL
    if scheme == TPM_ALG_ECDAA:
        raise AttestationError(f"{what} uses ECDAA, which this verifier does not accept")
    return scheme, reader.u16()


def _parse_rsa_key(reader: Reader, what: str) -> rsa.RSAPublicKey:
    key_bits = reader.u16()
    exponent = reader.u32() or 65537  # 0 means the default exponent 2^16 + 1
    modulus = reader.tpm2b("RSA modulus", limits.tpm_rsa_modulus_bytes_max)
    if key_bits < limits.tpm_rsa_key_bits_min or key_bits != len(modulus) * 8:
        raise AttestationError(f"{what} has an RSA key of {key_bits} bits with a {len(modulus)}-byte modulus")
    if modulus[0] & 0x80 == 0:
        raise AttestationError(f"{what} has an RSA modulus shorter than its declared size")
    try:
        return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    except ValueError as error:
        raise AttestationError(f"{what} holds an invalid RSA public key") from error


def _parse_ecc_key(reader: Reader, what: str) -> ec.EllipticCurvePublicKey:
    curve_id = reader.u16()
    kdf = reader.u16()
    if kdf != TPM_ALG_NULL:
        reader.u16()  # the KDF's hash; a signing key should have none, and we never use it
    curve = _CURVES.get(curve_id)
    if curve is None:
        raise AttestationError(f"{what} uses ECC curve 0x{curve_id:04x}, which is not accepted")
    size = (curve.key_size + 7) // 8
    x = reader.tpm2b("ECC x", limits.tpm_ecc_coordinate_bytes_max)
    y = reader.tpm2b("ECC y", limits.tpm_ecc_coordinate_bytes_max)
    if len(x) > size or len(y) > size:
        raise AttestationError(f"{what} has an ECC point coordinate longer than the curve allows")
    try:
        numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
        return numbers.public_key()
    except ValueError as error:
        raise AttestationError(f"{what} holds a point that is not on its curve") from error


# --- TPMT_SIGNATURE -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TpmSignature:
    """A parsed TPMT_SIGNATURE: the scheme, its hash, and the signature as `cryptography` expects it."""

    scheme: int
    hash_alg: str
    signature: bytes  # RSA: the raw signature; ECDSA: DER-encoded (r, s)


def parse_tpmt_signature(data: bytes) -> TpmSignature:
    """Parse a TPMT_SIGNATURE with an allow-listed scheme (RSASSA, RSAPSS, ECDSA) and hash (no SHA-1)."""
    if len(data) > limits.tpm_signature_bytes_max:
        raise AttestationError(
            f"TPMT_SIGNATURE is {len(data)} bytes, above the limit of {limits.tpm_signature_bytes_max}"
        )
    reader = Reader(data, "TPMT_SIGNATURE")
    scheme = reader.u16()
    if scheme not in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS, TPM_ALG_ECDSA):
        raise AttestationError(f"signature scheme 0x{scheme:04x} is not allowed (RSASSA, RSAPSS, ECDSA only)")
    hash_alg = hash_name(reader.u16(), what="signature")
    if scheme == TPM_ALG_ECDSA:
        r = reader.tpm2b("ECDSA r", limits.tpm_ecc_coordinate_bytes_max)
        s = reader.tpm2b("ECDSA s", limits.tpm_ecc_coordinate_bytes_max)
        signature = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    else:
        signature = reader.tpm2b("RSA signature", limits.tpm_rsa_modulus_bytes_max)
    reader.finish()
    return TpmSignature(scheme, hash_alg, signature)


def verify_signature(key: TpmPublic, signature: TpmSignature, message: bytes) -> None:
    """Verify ``signature`` over ``message`` with ``key``; raises AttestationError unless it verifies.

    A restricted signing key has one fixed scheme: the signature must use exactly that scheme and hash.
    """
    if key.scheme != TPM_ALG_NULL and (key.scheme, key.scheme_hash) != (
        signature.scheme,
        HASH_ALGORITHM_IDS[signature.hash_alg],
    ):
        raise AttestationError("the signature's scheme differs from the scheme fixed in the attestation key")
    algorithm = cryptography_hash(signature.hash_alg)
    try:
        if signature.scheme == TPM_ALG_ECDSA:
            if not isinstance(key.public_key, ec.EllipticCurvePublicKey):
                raise AttestationError("an ECDSA signature cannot come from an RSA key")
            key.public_key.verify(signature.signature, message, ec.ECDSA(algorithm))
            return
        if not isinstance(key.public_key, rsa.RSAPublicKey):
            raise AttestationError("an RSA signature cannot come from an ECC key")
        if signature.scheme == TPM_ALG_RSASSA:
            key.public_key.verify(signature.signature, message, padding.PKCS1v15(), algorithm)
        else:
            # TPMs sign RSAPSS with the salt as long as the digest (or the most the key allows).
            pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            key.public_key.verify(signature.signature, message, pss, algorithm)
    except InvalidSignature as error:
        raise AttestationError("the signature over the attestation does not verify") from error


# --- TPMS_ATTEST ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank and the ascending indices selected in it."""

    bank: str
    indices: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class QuoteInfo:
    """A parsed TPMS_ATTEST of type quote."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_quote(data: bytes) -> QuoteInfo:
    """Parse TPMS_ATTEST strictly: magic, type quote, every TPM2B capped, nothing after pcrDigest."""
    if len(data) > limits.tpm_attest_bytes_max:
        raise AttestationError(
            f"TPMS_ATTEST is {len(data)} bytes, above the limit of {limits.tpm_attest_bytes_max}"
        )
    reader = Reader(data, "TPMS_ATTEST")
    magic = reader.u32()
    if magic != TPM_GENERATED_VALUE:
        raise AttestationError(f"TPMS_ATTEST magic is 0x{magic:08x}, not TPM_GENERATED_VALUE")
    attest_type = reader.u16()
    if attest_type != TPM_ST_ATTEST_QUOTE:
        raise AttestationError(f"TPMS_ATTEST has type 0x{attest_type:04x}, not a quote (0x8018)")
    qualified_signer = reader.tpm2b("qualifiedSigner", limits.tpm_name_bytes_max)
    extra_data = reader.tpm2b("extraData", limits.tpm_extra_data_bytes_max)
    clock, reset_count, restart_count, safe = reader.u64(), reader.u32(), reader.u32(), reader.u8()
    if safe > 1:
        raise AttestationError(f"TPMS_ATTEST clockInfo.safe is {safe}, not a boolean")
    firmware_version = reader.u64()
    selections = _parse_pcr_selections(reader)
    pcr_digest = reader.tpm2b("pcrDigest", limits.tpm_digest_bytes_max)
    reader.finish()
    return QuoteInfo(
        qualified_signer,
        extra_data,
        clock,
        reset_count,
        restart_count,
        bool(safe),
        firmware_version,
        selections,
        pcr_digest,
    )


def _parse_pcr_selections(reader: Reader) -> tuple[PcrSelection, ...]:
    count = reader.u32()
    if count > limits.tpm_pcr_banks_max:
        raise AttestationError(
            f"the quote selects {count} PCR banks, above the limit of {limits.tpm_pcr_banks_max}"
        )
    selections: list[PcrSelection] = []
    for _ in range(count):
        bank = hash_name(reader.u16(), what="the quoted PCR bank")
        size_of_select = reader.u8()
        if size_of_select > limits.tpm_pcr_select_bytes_max:
            raise AttestationError(f"a PCR selection bitmap of {size_of_select} bytes is above the limit")
        bitmap = reader.take(size_of_select)
        indices = tuple(index for index in range(size_of_select * 8) if bitmap[index // 8] >> (index % 8) & 1)
        if any(selection.bank == bank for selection in selections):
            raise AttestationError(f"the quote selects the {bank} bank twice")
        selections.append(PcrSelection(bank, indices))
    return tuple(selections)


def parse_attest_type(data: bytes) -> int:
    """The type field of a TPMS_ATTEST (for diagnostics only; never a substitute for parse_quote)."""
    reader = Reader(data[:6], "TPMS_ATTEST header")
    reader.u32()
    return reader.u16()


# --- Names, KDFa and MakeCredential (Part 1, 11.4.10.2 and 24) -------------------------------------
def qualified_name(parent_qualified_name: bytes, key: TpmPublic) -> bytes:
    """QN(key) = nameAlg || H_nameAlg(QN(parent) || Name(key))."""
    return struct.pack(">H", HASH_ALGORITHM_IDS[key.name_alg]) + digest(
        key.name_alg, parent_qualified_name + key.name
    )


def hierarchy_qualified_name(hierarchy: int) -> bytes:
    """The qualified Name of a hierarchy is its 4-byte handle."""
    return struct.pack(">I", hierarchy)


def kdfa(hash_alg: str, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa: SP 800-108 counter-mode KDF with HMAC; the label gets its terminating zero octet."""
    assert bits > 0 and bits % 8 == 0
    output = b""
    counter = 0
    while len(output) * 8 < bits:
        counter += 1
        block = struct.pack(">I", counter) + label + b"\x00" + context_u + context_v + struct.pack(">I", bits)
        output += hmac.new(key, block, hash_alg).digest()
    return output[: bits // 8]


@dataclass(frozen=True, slots=True)
class MadeCredential:
    """MakeCredential's output: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, each with its size prefix."""

    credential_blob: bytes
    encrypted_secret: bytes


def make_credential(ek: TpmPublic, ak_name: bytes, credential: bytes, *, seed: bytes) -> MadeCredential:
    """Protect ``credential`` so only the TPM holding ``ek`` and the object named ``ak_name`` recovers it.

    The seed is RSA-OAEP encrypted to the EK (label "IDENTITY\\0", hash = the EK's nameAlg); the symmetric
    key (KDFa "STORAGE", context Name(AK)) CFB-encrypts TPM2B(credential); the HMAC key (KDFa "INTEGRITY")
    authenticates the ciphertext together with Name(AK). ``seed`` is a parameter so that tests can replay
    another implementation exactly; callers pass ``os.urandom(digest size)``.
    """
    if not isinstance(ek.public_key, rsa.RSAPublicKey):
        raise AttestationError("MakeCredential is implemented for RSA endorsement keys only")
    if ek.symmetric_alg != TPM_ALG_AES:
        raise AttestationError("the endorsement key has no AES-CFB symmetric definition")
    digest_size = hashlib.new(ek.name_alg).digest_size
    assert len(seed) == digest_size
    if not 0 < len(credential) <= digest_size:
        raise AttestationError("a credential must be between 1 byte and the EK's digest size")
    algorithm = cryptography_hash(ek.name_alg)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=b"IDENTITY\x00")
    encrypted_seed = ek.public_key.encrypt(seed, oaep)
    symmetric_key = kdfa(ek.name_alg, seed, b"STORAGE", ak_name, b"", ek.symmetric_key_bits)
    encryptor = Cipher(algorithms.AES(symmetric_key), CFB(bytes(16))).encryptor()
    encrypted_identity = encryptor.update(tpm2b(credential)) + encryptor.finalize()
    hmac_key = kdfa(ek.name_alg, seed, b"INTEGRITY", b"", b"", digest_size * 8)
    outer_hmac = hmac.new(hmac_key, encrypted_identity + ak_name, ek.name_alg).digest()
    return MadeCredential(tpm2b(tpm2b(outer_hmac) + encrypted_identity), tpm2b(encrypted_seed))
