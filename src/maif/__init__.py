"""MAIF: a verifiable container format and a durable store for what AI agents produce.

The public API is the names in ``__all__``; everything else is internal. Submodules load lazily, so
``import maif`` stays fast (the CLI and short scripts do not pay for the storage engine or the
security stack until they use them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "MAIFBlock": "maif.format.block",
    "MAIFBlockType": "maif.format.block",
    "MAIFError": "maif.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from maif.errors import MAIFError as MAIFError
    from maif.format.block import MAIFBlock as MAIFBlock
    from maif.format.block import MAIFBlockType as MAIFBlockType


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maif' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
