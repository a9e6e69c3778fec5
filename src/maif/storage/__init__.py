"""Durable storage for MAIF blocks: a write-ahead log, background apply to pluggable backends, tiers.

The entry point is :func:`create_maif_storage` (see :mod:`maif.storage.engine`). Names load lazily so
that importing a backend module does not pull in the whole engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "BlockSummary": "maif.storage.receipts",
    "CheckReport": "maif.storage.receipts",
    "MAIFStorage": "maif.storage.engine",
    "SearchHit": "maif.storage.receipts",
    "WriteReceipt": "maif.storage.receipts",
    "create_maif_storage": "maif.storage.engine",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from maif.storage.engine import MAIFStorage as MAIFStorage
    from maif.storage.engine import create_maif_storage as create_maif_storage
    from maif.storage.receipts import BlockSummary as BlockSummary
    from maif.storage.receipts import CheckReport as CheckReport
    from maif.storage.receipts import SearchHit as SearchHit
    from maif.storage.receipts import WriteReceipt as WriteReceipt


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maif.storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
