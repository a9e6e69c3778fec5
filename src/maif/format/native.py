"""The container's compiled core (``_core.c``, ADR 0090), when it is built and not switched off.

The core runs the per-record hot loops of full verification and of writing small blocks. It only ever
proves a record valid or hands it back: anything unusual runs the pure-Python code, which stays the
reference and produces every error. ``MAIF_PURE_PYTHON=1`` in the environment (read at import) forces
the pure-Python path; so does a missing extension, silently (command-line output must not change).
"""

from __future__ import annotations

import os
from types import ModuleType

from maif import limits


def _load() -> ModuleType | None:
    if os.environ.get("MAIF_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from maif.format import _core
    except ImportError:
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


_core: ModuleType | None = _load()


def core() -> ModuleType | None:
    """The compiled core, or None when the pure-Python path is in use."""
    return _core


def pure_python() -> bool:
    """Whether the pure-Python reference path is the one running."""
    return _core is None


__all__ = ["core", "pure_python"]
