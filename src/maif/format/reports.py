"""The results of verification and repair, shared by :mod:`verify`, :mod:`repair` and :mod:`container`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from maif.format.reader import VersionInfo


PROBLEM_KINDS: Final = ("integrity", "format", "limit", "signature")
"""What a problem is about: bytes that fail a digest, chain, Merkle root or AEAD tag (``integrity``); bytes
that break a SPEC rule (``format``); a value above a named bound (``limit``); a signature that is missing,
invalid or not by a trusted key (``signature``)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One defect: a block (``block_index``) or, when ``block_index`` is None, a named ``region``
    (``file``, ``tail``, ``version k manifest``, ``version k index``); ``kind`` is one of PROBLEM_KINDS."""

    block_index: int | None
    reason: str
    region: str = "block"
    kind: str = "integrity"

    def __post_init__(self) -> None:
        assert self.kind in PROBLEM_KINDS, self.kind

    def describe(self) -> str:
        where = f"block {self.block_index}" if self.block_index is not None else self.region
        return f"{where}: {self.reason}"


@dataclass(slots=True)
class VerificationReport:
    """``ok`` only if there is no problem at all; ``signer_key_ids`` are trusted keys that signed."""

    ok: bool
    problems: list[Problem]
    block_count: int
    versions: list[VersionInfo]
    signer_key_ids: list[bytes] = field(default_factory=list)

    def bad_blocks(self) -> list[int]:
        return sorted({p.block_index for p in self.problems if p.block_index is not None})


@dataclass(frozen=True, slots=True)
class RepairReport:
    bytes_truncated: int
    versions_kept: int


__all__ = ["PROBLEM_KINDS", "Problem", "RepairReport", "VerificationReport"]
