"""The .maif container API in one place: writer, reader, verification and repair.

A file is a 32-byte header followed by versions; each version is the new block records, their index,
a signed manifest and a fixed 64-byte trailer (docs/format/SPEC.md). The implementation lives in
:mod:`maif.format.writer` (append-only streaming writer), :mod:`maif.format.reader` (memory-mapped
random-access reader), :mod:`maif.format.verify` and :mod:`maif.format.repair`; this module is the
name the API contract gives them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from maif.format.reader import BlockEntry, BlockStream, ContainerReader, VersionInfo, chained_digest
from maif.format.reports import Problem, RepairReport, VerificationReport
from maif.format.writer import ContainerWriter

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey


def verify_container(
    path: str | os.PathLike[str],
    trusted_keys: Sequence[Ed25519PublicKey],
    *,
    full: bool = True,
    decryption_key: X25519PrivateKey | None = None,
    required_signers: Sequence[Ed25519PublicKey] = (),
) -> VerificationReport:
    """See :func:`maif.format.verify.verify_container`."""
    from maif.format import verify

    return verify.verify_container(
        path, trusted_keys, full=full, decryption_key=decryption_key, required_signers=required_signers
    )


def repair_container(path: str | os.PathLike[str]) -> RepairReport:
    """See :func:`maif.format.repair.repair_container`."""
    from maif.format import repair

    return repair.repair_container(path)


__all__ = [
    "BlockEntry",
    "BlockStream",
    "ContainerReader",
    "ContainerWriter",
    "Problem",
    "RepairReport",
    "VerificationReport",
    "VersionInfo",
    "chained_digest",
    "repair_container",
    "verify_container",
]
