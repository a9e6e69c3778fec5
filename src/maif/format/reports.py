"""The results of verification and repair, shared by :mod:`verify`, :mod:`repair` and :mod:`container`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maif.format.reader import VersionInfo


@dataclass(frozen=True, slots=True)
class Problem:
    """One defect: a block (``block_index``) or, when ``block_index`` is None, a named ``region``
    (``file``, ``tail``, ``version k manifest``, ``version k index``)."""

    block_index: int | None
    reason: str
    region: str = "block"

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


__all__ = ["Problem", "RepairReport", "VerificationReport"]
