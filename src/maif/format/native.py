"""The container's compiled core (``_core.c``, ADR 0090), when it is built and not switched off.

The core runs the per-record hot loops of full verification and of writing small blocks, and the pack
writer's per-frame loops (ADR 0092: hashing chunks and records, staging frames, index entries). It only ever
proves a record valid or hands it back: anything unusual runs the pure-Python code, which stays the
reference and produces every error. ``MAIF_PURE_PYTHON=1`` in the environment (read at import) forces
the pure-Python path; so does a missing extension or a stale one (built from an older ``_core.c``, whose
``ABI`` is not :data:`ABI`), silently (command-line output must not change).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Final

from maif import limits

ABI: Final = 3
"""The interface version of ``_core.c`` this code calls (its ``MAIF_CORE_ABI``; bump both together)."""


def usable(module: object) -> bool:
    """Whether ``module`` is a build of the ``_core.c`` this code was written against."""
    return getattr(module, "ABI", None) == ABI


def extension() -> ModuleType | None:
    """The compiled core whatever ``MAIF_PURE_PYTHON`` says, its limits set; None when it is not built
    or stale. For tests that run the same input on both paths (:func:`switched_to`)."""
    try:
        from maif.format import _core
    except ImportError:
        return None
    if not usable(_core):
        return None
    _core.set_limits(
        limits.block_payload_bytes_max,
        limits.block_id_bytes_max,
        limits.agent_id_bytes_max,
        limits.block_version_bytes_max,
        limits.block_parents_max,
        limits.block_metadata_bytes_max,
    )
    return _core


def _load() -> ModuleType | None:
    if os.environ.get("MAIF_PURE_PYTHON", "") not in ("", "0"):
        return None
    return extension()


_core: ModuleType | None = _load()


@contextmanager
def switched_to(module: ModuleType | None) -> Iterator[None]:
    """Run on ``module`` (the compiled core, or None: the pure-Python reference) until the block ends;
    for tests comparing both paths (not thread-safe: the switch is process-wide)."""
    global _core
    saved = _core
    _core = module
    try:
        yield
    finally:
        _core = saved


def core() -> ModuleType | None:
    """The compiled core, or None when the pure-Python path is in use."""
    return _core


def pure_python() -> bool:
    """Whether the pure-Python reference path is the one running."""
    return _core is None


__all__ = ["core", "pure_python"]
