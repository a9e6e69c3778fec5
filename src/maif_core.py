"""The seed's ``maif_core`` module, kept so that code written against the seed's README runs unchanged.

The seed's Quick Start began ``from maif_core import create_maif_storage, MAIFBlock, MAIFBlockType``.
These are the very objects :mod:`maif` exports (no copies, no wrappers); new code imports from ``maif``.
"""

from __future__ import annotations

from maif import MAIFBlock, MAIFBlockType, MAIFStorage, create_maif_storage

__all__ = ["MAIFBlock", "MAIFBlockType", "MAIFStorage", "create_maif_storage"]
