"""Provenance: stamp every block an agent produces with where it came from, and sign it.

Each produced block carries ``metadata["provenance"]``: the task id and type, the agent, the handler's
name and version, the attempt, the BLAKE3 digest of the task's input (deterministic MessagePack of
``input_data``) and the digests of the stored input blocks; its ``parents`` are those input blocks plus
the earlier blocks of the same task it was derived from.

When the agent has a security manager and context, each block is signed with the agent's registered key
(``manager.sign_maif_block``) and the envelope is stored as a SECURITY block ``<block id>:sig`` whose only
parent is the signed block (docs/adr/0050-agent-provenance-signatures.md says why not in metadata: a
signature cannot be inside the bytes it signs).

The blocks `maif worker` stores (results and dead-letter records) are signed by the worker's own Ed25519
key (:class:`WorkerSigner`, docs/adr/0085-signed-worker-results.md): the envelope is the same
``BlockSignature``, dated by the signed block's own timestamp (the task's submission time), stored as
``<block id>:sig:<key id>``; :func:`verify_worker_result` checks it with nothing but the public keys the
caller trusts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from maif.agents.handlers.registry import Handler
from maif.agents.tasks import AgentTask, BlockDraft
from maif.errors import BlockNotFoundError, SignatureError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import block_digest
from maif.format.signing import key_id
from maif.security.block_signatures import decode_block_signature, sign_digest, verify_envelope

SIGNATURE_SUFFIX = ":sig"
WORKER_SIGNATURE_INFIX = ":sig:"
_ENVELOPE_NAME = "maif.security.BlockSignature"
_ENCODER = msgspec.msgpack.Encoder(order="deterministic")


def input_digest(input_data: dict[str, Any]) -> str:
    """BLAKE3 (hex) of the task input's deterministic MessagePack encoding."""
    try:
        encoded = _ENCODER.encode(input_data)
    except (TypeError, msgspec.EncodeError) as error:
        raise TypeError(f"task input_data is not MessagePack-encodable: {error}") from error
    return blake3.blake3(encoded).hexdigest()


def block_id_for(namespace: str, task_id: str, index: int) -> str:
    """Deterministic, so a re-run of the same task replaces rather than duplicates its blocks; the
    namespace is the agent id, or the task stream for the agents of `maif worker`."""
    return f"{namespace}:{task_id}:{index}"


def dead_letter_block_id(namespace: str, task_id: str) -> str:
    """The id of the stored record of a task that failed for good."""
    return block_id_for(namespace, task_id, 0) + ":dead-letter"


def stamp(
    agent_id: str,
    task: AgentTask,
    handler: Handler,
    drafts: Sequence[BlockDraft],
    inputs: Sequence[MAIFBlock],
    attempt: int | None,
    *,
    namespace: str | None = None,
    timestamp: float | None = None,
) -> list[MAIFBlock]:
    """The drafts as blocks with ids (``<namespace or agent>:<task>:<n>``), agent, parents and the
    provenance record. Reproducible results (a worker's) pass ``attempt=None`` (not recorded) and the
    task's submission time as ``timestamp``: their bytes then depend only on the task and the handler."""
    input_ids = tuple(block.id for block in inputs)
    record = {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "agent_id": agent_id,
        "handler": handler.name,
        "handler_version": handler.version,
        **({} if attempt is None else {"attempt": attempt}),
        "input_digest": input_digest(task.input_data),
        "input_block_digests": {block.id: block_digest(block).hex() for block in inputs},
    }
    blocks: list[MAIFBlock] = []
    for index, draft in enumerate(drafts):
        assert all(0 <= earlier < index for earlier in draft.derived_from), "derived_from must point back"
        derived = tuple(blocks[earlier].id for earlier in draft.derived_from)
        metadata = {**draft.metadata, "provenance": {**record, "role": draft.role}}
        blocks.append(
            MAIFBlock(
                id=block_id_for(agent_id if namespace is None else namespace, task.task_id, index),
                block_type=draft.block_type,
                data=draft.data,
                metadata=metadata,
                agent_id=agent_id,
                version=handler.version,
                parents=derived + input_ids,
                **({} if timestamp is None else {"timestamp": timestamp}),
            )
        )
    return blocks


def signature_blocks(manager: Any, context: Any, blocks: Sequence[MAIFBlock]) -> list[MAIFBlock]:
    """One SECURITY block per block: the manager's signature envelope over its digest."""
    signed: list[MAIFBlock] = []
    for block in blocks:
        envelope = manager.sign_maif_block(block, context)
        signed.append(
            MAIFBlock(
                id=block.id + SIGNATURE_SUFFIX,
                block_type=MAIFBlockType.SECURITY,
                data=envelope,
                agent_id=block.agent_id,
                parents=(block.id,),
                metadata={"signs": block.id, "envelope": _ENVELOPE_NAME},
            )
        )
    return signed


def worker_signature_block_id(block_id: str, signer_key_id: str) -> str:
    """``<block id>:sig:<key id hex>``: one signature block per signing key, so two workers that both ran
    a task (a redelivery) store two signatures, not two versions of one."""
    return block_id + WORKER_SIGNATURE_INFIX + signer_key_id


class WorkerSigner:
    """Signs blocks with one worker's Ed25519 key, reproducibly: the envelope is dated by the block's own
    timestamp and Ed25519 is deterministic, so signing the same block again gives the same bytes (the
    shared store takes a second delivery's write as the same write, ADR 0074)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self.key_id_hex = self.key_id.hex()

    def __call__(self, blocks: Sequence[MAIFBlock]) -> list[MAIFBlock]:
        return [self.signature_block(block) for block in blocks]

    def signature_block(self, block: MAIFBlock) -> MAIFBlock:
        envelope = sign_digest(self.private_key, self.key_id, block.agent_id, block_digest(block),
                               signed_at=block.timestamp, trust_level=0)
        return MAIFBlock(
            id=worker_signature_block_id(block.id, self.key_id_hex),
            block_type=MAIFBlockType.SECURITY,
            data=envelope,
            agent_id=block.agent_id,
            parents=(block.id,),
            metadata={"signs": block.id, "envelope": _ENVELOPE_NAME, "key_id": self.key_id_hex},
            timestamp=block.timestamp,
        )


@dataclass(frozen=True, slots=True)
class WorkerSignatureCheck:
    block_id: str
    signer_key_id: str
    signed_at: float
    provenance: dict[str, Any]


async def verify_worker_result(
    storage: Any, block_id: str, trusted_keys: Sequence[Ed25519PublicKey]
) -> WorkerSignatureCheck:
    """Check that a key in ``trusted_keys`` signed the stored block ``block_id`` as it is now; the first
    trusted signer found is returned. Raises SignatureError when no trusted key signed it, or when a
    signature stored under a trusted key's id does not verify (the block or the signature was changed,
    or a signature was moved here from another block). The keys come from the caller, never the store."""
    block = await storage.read_block(block_id)
    for public_key in trusted_keys:
        signer = key_id(public_key)
        try:
            signature = await storage.read_block(worker_signature_block_id(block_id, signer.hex()))
        except BlockNotFoundError:
            continue
        if signature.parents != (block_id,) or signature.metadata.get("signs") != block_id:
            raise SignatureError(f"the signature of {block_id!r} by key {signer.hex()} points elsewhere")
        envelope = decode_block_signature(signature.data)
        if envelope.key_id != signer or envelope.agent_id != block.agent_id:
            raise SignatureError(f"the signature of {block_id!r} names another key or agent")
        if envelope.digest != block_digest(block):
            raise SignatureError(f"block {block_id!r} does not match the digest key {signer.hex()} signed")
        verify_envelope(envelope, public_key)
        return WorkerSignatureCheck(block_id, signer.hex(), envelope.signed_at,
                                    dict(block.metadata.get("provenance", {})))
    raise SignatureError(f"block {block_id!r} has no signature by any of {len(trusted_keys)} trusted keys")


@dataclass(frozen=True, slots=True)
class ProvenanceCheck:
    block_id: str
    signed: bool
    signature_valid: bool
    trust_level: int
    provenance: dict[str, Any]


async def verify_block(storage: Any, manager: Any, block_id: str) -> ProvenanceCheck:
    """Read a block and its signature block and verify the signature with the agent's registered key.

    Raises SignatureError when the block has no signature block or the signature does not verify.
    """
    block = await storage.read_block(block_id)
    try:
        signature = await storage.read_block(block_id + SIGNATURE_SUFFIX)
    except BlockNotFoundError as error:
        raise SignatureError(f"block {block_id!r} has no signature block") from error
    if signature.parents != (block_id,) or signature.agent_id != block.agent_id:
        raise SignatureError(f"signature block of {block_id!r} does not point at it")
    valid, level = manager.verify_maif_block_signature(block, signature.data, block.agent_id)
    if not valid:
        raise SignatureError(f"signature of block {block_id!r} does not verify for agent {block.agent_id!r}")
    return ProvenanceCheck(block_id, True, True, int(level), dict(block.metadata.get("provenance", {})))


__all__ = [
    "SIGNATURE_SUFFIX",
    "WORKER_SIGNATURE_INFIX",
    "ProvenanceCheck",
    "WorkerSignatureCheck",
    "WorkerSigner",
    "block_id_for",
    "dead_letter_block_id",
    "input_digest",
    "signature_blocks",
    "stamp",
    "verify_block",
    "verify_worker_result",
    "worker_signature_block_id",
]
