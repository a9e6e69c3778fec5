"""Provenance: stamp every block an agent produces with where it came from, and sign it.

Each produced block carries ``metadata["provenance"]``: the task id and type, the agent, the handler's
name and version, the attempt, the BLAKE3 digest of the task's input (deterministic MessagePack of
``input_data``) and the digests of the stored input blocks; its ``parents`` are those input blocks plus
the earlier blocks of the same task it was derived from.

When the agent has a security manager and context, each block is signed with the agent's registered key
(``manager.sign_maif_block``) and the envelope is stored as a SECURITY block ``<block id>:sig`` whose only
parent is the signed block (docs/adr/0050-agent-provenance-signatures.md says why not in metadata: a
signature cannot be inside the bytes it signs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import msgspec

from maif.agents.handlers.registry import Handler
from maif.agents.tasks import AgentTask, BlockDraft
from maif.errors import BlockNotFoundError, SignatureError
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.codec import block_digest

SIGNATURE_SUFFIX = ":sig"
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
                metadata={"signs": block.id, "envelope": "maif.security.BlockSignature"},
            )
        )
    return signed


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
    "ProvenanceCheck",
    "block_id_for",
    "dead_letter_block_id",
    "input_digest",
    "signature_blocks",
    "stamp",
    "verify_block",
]
