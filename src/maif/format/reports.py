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
    """``ok`` only if there is no problem at all.

    ``signer_key_ids`` are the trusted keys with a valid signature on *some* version (the union);
    ``signers_by_version[k]`` those with a valid signature on version k, each key once, in manifest order.
    A policy such as "A and B signed" must look at the version it relies on, normally the last one
    (:attr:`last_version_signer_key_ids`, or ``verify_container(..., required_signers=...)``): the last
    version's signatures are covered by nothing, so a co-signature can be stripped (SPEC section 7).
    """

    ok: bool
    problems: list[Problem]
    block_count: int
    versions: list[VersionInfo]
    signer_key_ids: list[bytes] = field(default_factory=list)
    signers_by_version: list[list[bytes]] = field(default_factory=list)

    @property
    def last_version_signer_key_ids(self) -> list[bytes]:
        """Trusted keys with a valid signature on the last complete version (empty when there is none)."""
        return list(self.signers_by_version[-1]) if self.signers_by_version else []

    def bad_blocks(self) -> list[int]:
        return sorted({p.block_index for p in self.problems if p.block_index is not None})


@dataclass(frozen=True, slots=True)
class RepairReport:
    bytes_truncated: int
    versions_kept: int


__all__ = ["PROBLEM_KINDS", "Problem", "RepairReport", "VerificationReport"]
