"""The values the agent runtime passes around: tasks, dead-letter records, block drafts.

An :class:`AgentTask` is what a caller submits; a handler turns it into :class:`BlockDraft` values, and
the agent turns drafts into stored, provenance-stamped (and optionally signed) :class:`MAIFBlock` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maif import limits
from maif.errors import AgentError
from maif.format.block import MAIFBlockType


@dataclass(frozen=True, slots=True)
class AgentTask:
    """One unit of work. ``priority``: higher runs first (ties run in submission order).

    ``input_blocks`` names stored blocks the task reads; they become the parents of every block the
    task produces, and their digests are recorded in the provenance. ``submitted_at`` (Unix seconds) is
    set by the distributed queue: the timestamp of a worker's results, so they do not depend on when or
    where the task ran (docs/adr/0074-distributed-agents.md).
    """

    task_id: str
    task_type: str
    input_data: dict[str, Any]
    priority: int = 1
    input_blocks: tuple[str, ...] = ()
    submitted_at: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not 0 < len(self.task_id) <= limits.task_id_chars_max:
            raise AgentError(f"task_id must be a string of 1 to {limits.task_id_chars_max} characters")
        if not isinstance(self.task_type, str) or not self.task_type:
            raise AgentError("task_type must be a non-empty string")
        if not isinstance(self.input_data, dict):
            raise AgentError(f"input_data must be a dict, got {type(self.input_data).__name__}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool):
            raise AgentError(f"priority must be an int, got {type(self.priority).__name__}")
        if not isinstance(self.input_blocks, list | tuple):  # a str would become its letters
            raise AgentError(f"input_blocks must be a list or tuple of block ids, got "
                             f"{type(self.input_blocks).__name__}")
        object.__setattr__(self, "input_blocks", tuple(self.input_blocks))
        if not all(isinstance(block_id, str) for block_id in self.input_blocks):
            raise AgentError("input_blocks must be block id strings")
        if self.submitted_at is not None and (
            not isinstance(self.submitted_at, int | float) or isinstance(self.submitted_at, bool)
            or not 0 <= self.submitted_at < 1e11
        ):
            raise AgentError("submitted_at must be None or Unix seconds")


@dataclass(frozen=True, slots=True)
class BlockDraft:
    """A block a handler wants stored; the agent assigns its id, agent, provenance and parents.

    ``derived_from`` lists indices of earlier drafts of the same task this one was made from (a
    thumbnail from its image); they become parents next to the task's input blocks.
    """

    block_type: MAIFBlockType | str
    data: bytes
    metadata: dict[str, Any] = field(default_factory=dict)
    derived_from: tuple[int, ...] = ()
    role: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task that failed ``attempts`` times: why, and where its durable record is (if written)."""

    task_id: str
    task_type: str
    reason: str
    attempts: int
    failed_at: float
    record_block_id: str | None


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What a finished task produced: the ids of its stored blocks and, in the same order, the store's
    write receipts for them (id, digest, log position: each block was durable before the task counted
    as done). A signed block's signature is stored as the block ``<id>:sig``."""

    task_id: str
    block_ids: tuple[str, ...]
    attempts: int
    latency_ms: float
    receipts: tuple[Any, ...] = ()


__all__ = ["AgentTask", "BlockDraft", "DeadLetter", "TaskOutcome"]
