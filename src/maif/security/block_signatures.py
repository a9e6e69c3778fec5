"""The block signature envelope, shared by the security manager and by `maif worker`, and checkable with
nothing but a public key.

An envelope is MessagePack of :class:`BlockSignature`: who signed (``agent_id``, ``key_id``), when
(``signed_at``), at which trust level, the BLAKE3 digest of the block (``maif.format.codec.block_digest``)
and the Ed25519 signature over :func:`block_signature_payload` of those fields. The security manager
signs with an agent's registered key and checks against its keystore (docs/adr/0050); a worker signs with
its own key file and anyone holding that public key checks it (docs/adr/0085). This module holds what
both share, so an offline verifier does not load the manager.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from maif import limits
from maif.errors import SignatureError

BLOCK_SIGNATURE_DOMAIN: Final = b"MAIF block signature v1\0"
ENVELOPE_VERSION: Final = 1
_TRUST_LEVEL_MAX: Final = 5  # TrustLevel.MULTI_PARTY_VERIFIED
_DIGEST_BYTES: Final = 32


class BlockSignature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The self-describing envelope over one block's digest (MessagePack)."""

    version: int
    agent_id: str
    key_id: bytes
    signed_at: float
    trust_level: int
    digest: bytes  # BLAKE3 of the block (maif.format.codec.block_digest) or of the raw bytes
    signature: bytes  # Ed25519 over signed_payload()

    def signed_payload(self) -> bytes:
        return block_signature_payload(
            self.agent_id, self.key_id, self.signed_at, self.trust_level, self.digest
        )


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(BlockSignature)


def block_signature_payload(
    agent_id: str, key_id: bytes, signed_at: float, trust_level: int, digest: bytes
) -> bytes:
    """The exact bytes a block signature covers: domain, agent, key, time, level and digest."""
    agent = agent_id.encode("utf-8")
    return (
        BLOCK_SIGNATURE_DOMAIN
        + struct.pack("<I", len(agent))
        + agent
        + key_id
        + struct.pack("<dB", signed_at, trust_level)
        + digest
    )


def sign_digest(
    private_key: Ed25519PrivateKey,
    key_id: bytes,
    agent_id: str,
    digest: bytes,
    *,
    signed_at: float,
    trust_level: int,
) -> bytes:
    """The encoded envelope: ``private_key``'s signature over ``digest`` for ``agent_id``. Ed25519 is
    deterministic, so the same inputs (the same ``signed_at``) give the same bytes."""
    assert len(digest) == _DIGEST_BYTES and 0 <= trust_level <= _TRUST_LEVEL_MAX
    payload = block_signature_payload(agent_id, key_id, signed_at, trust_level, digest)
    envelope = BlockSignature(
        ENVELOPE_VERSION, agent_id, key_id, signed_at, trust_level, digest, private_key.sign(payload)
    )
    return _ENCODER.encode(envelope)


def decode_block_signature(signature_data: object) -> BlockSignature:
    """The envelope in ``signature_data``, bounded and checked for shape (not for who signed it)."""
    if (
        not isinstance(signature_data, bytes)
        or len(signature_data) > limits.block_signature_envelope_bytes_max
    ):
        raise SignatureError("signature envelope is not bytes of bounded size")
    try:
        envelope = _DECODER.decode(signature_data)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise SignatureError("signature envelope is malformed") from error
    if envelope.version != ENVELOPE_VERSION:
        raise SignatureError(f"signature envelope version {envelope.version} is not {ENVELOPE_VERSION}")
    if not 0 <= envelope.trust_level <= _TRUST_LEVEL_MAX or len(envelope.digest) != _DIGEST_BYTES:
        raise SignatureError("signature envelope has an invalid trust level or digest")
    return envelope


def verify_envelope(envelope: BlockSignature, public_key: Ed25519PublicKey) -> None:
    """Raise :class:`SignatureError` unless ``public_key`` made ``envelope``'s signature."""
    try:
        public_key.verify(envelope.signature, envelope.signed_payload())
    except InvalidSignature as error:
        raise SignatureError(f"signature by key {envelope.key_id.hex()} does not verify") from error


__all__ = [
    "BLOCK_SIGNATURE_DOMAIN",
    "ENVELOPE_VERSION",
    "BlockSignature",
    "block_signature_payload",
    "decode_block_signature",
    "sign_digest",
    "verify_envelope",
]
