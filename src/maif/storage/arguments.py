"""The storage engine's argument checks: one function per public :class:`~maif.storage.engine.MAIFStorage`
entry point, called on the method's first line, returning the arguments in the form the engine uses.

The errors are :mod:`maif.validation`'s: ``ArgumentTypeError`` (also a ``TypeError``) for a wrong type,
``ArgumentValueError`` (also a ``ValueError``, and a ``ConfigError`` as the engine raised before) for a
refused value, ``LimitExceededError`` for a size above a named bound, ``FormatError`` for a malformed
FourCC. Nothing is done before the check, so a refused call leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maif import limits
from maif.errors import ArgumentTypeError, ArgumentValueError
from maif.format.block import MAIFBlock, MAIFBlockType, normalize_block_type
from maif.validation import (
    optional_float,
    optional_str,
    require_float,
    require_instance,
    require_int,
    require_path,
    require_sequence,
    require_str,
    require_str_mapping,
    require_str_sequence,
    require_vector,
    type_of,
)


def block(value: object) -> MAIFBlock:
    """``write_block``'s block."""
    return require_instance("block", value, MAIFBlock)


def blocks(value: object) -> Sequence[MAIFBlock]:
    """``write_blocks``'s blocks: a list or tuple of MAIFBlock (a single block is refused)."""
    items = require_sequence("blocks", value, None, "MAIFBlock")
    for index, item in enumerate(items):
        if not isinstance(item, MAIFBlock):
            raise ArgumentTypeError(f"blocks[{index}] must be a MAIFBlock, got {type_of(item)}")
    return items


def block_id(value: object, name: str = "block_id") -> str:
    """A block id to look up: a non-empty str of at most ``limits.block_id_bytes_max`` UTF-8 bytes."""
    return require_str(name, value, limits.block_id_bytes_max, allow_empty=False)


def _optional_block_id(name: str, value: object) -> str | None:
    return None if value is None else block_id(value, name)


def list_query(agent_id: object, block_type: object, since: object, until: object, parent: object,
               limit: object, after: object
               ) -> tuple[str | None, str | None, float | None, float | None, str | None, int, str | None]:
    """``list_blocks``'s filters; the block type comes back as its FourCC text."""
    type_name: str | None = None
    if block_type is not None:
        if not isinstance(block_type, MAIFBlockType | str):
            raise ArgumentTypeError(f"block_type must be a MAIFBlockType or a FourCC str, got "
                                    f"{type_of(block_type)}")
        normalized = normalize_block_type(block_type)
        type_name = normalized.value if isinstance(normalized, MAIFBlockType) else normalized
    return (optional_str("agent_id", agent_id, limits.agent_id_bytes_max), type_name,
            optional_float("since", since), optional_float("until", until),
            _optional_block_id("parent", parent),
            require_int("limit", limit, 1, limits.engine_list_limit_max),
            _optional_block_id("after", after))


def search(query_vector: object, limit: object, score_threshold: object, filters: object
           ) -> tuple[np.ndarray, int, float | None, dict[str, str] | None]:
    """``semantic_search``'s arguments; the query comes back as a float32 vector."""
    return (require_vector("query_vector", query_vector, limits.vector_dimensions_max),
            require_int("limit", limit, 1, limits.engine_search_limit_max),
            optional_float("score_threshold", score_threshold),
            None if filters is None else require_str_mapping(
                "filters", filters, limits.vector_filter_fields_max, limits.vector_filter_text_bytes_max))


def read_data_fraction(value: object) -> float:
    """``check``'s share of blocks to read back, in [0, 1]."""
    return require_float("read_data_fraction", value, 0.0, 1.0)


def compaction(garbage_fraction_min: object, on_step: object
               ) -> tuple[float, Callable[[str], None] | None]:
    """``compact``'s threshold, in (0, 1], and its optional step callback."""
    fraction = require_float("garbage_fraction_min", garbage_fraction_min, 0.0, 1.0)
    if fraction == 0.0:
        raise ArgumentValueError("garbage_fraction_min must be above 0 (0 would rewrite every pack)")
    if on_step is not None and not callable(on_step):
        raise ArgumentTypeError(f"on_step must be callable or None, got {type_of(on_step)}")
    return fraction, on_step


def export(path: object, selection: object, signing_key: object
           ) -> tuple[Path, tuple[str, ...] | None, Any]:
    """``export``'s destination, block ids (None: all; a str is refused, not split) and Ed25519 key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    checked_path = require_path("path", path)
    ids = None if selection is None else require_str_sequence("selection", selection,
                                                              limits.block_id_bytes_max)
    if not isinstance(signing_key, Ed25519PrivateKey):
        raise ArgumentTypeError(f"signing_key must be an Ed25519PrivateKey, got {type_of(signing_key)}")
    return checked_path, ids, signing_key


def import_maif(path: object, trusted_keys: object) -> tuple[Path, tuple[Any, ...]]:
    """``import_maif``'s source and trusted Ed25519 public keys (a list or tuple)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys = require_sequence("trusted_keys", trusted_keys, None, "Ed25519PublicKey")
    if not keys:
        raise ArgumentValueError("import_maif needs at least one trusted public key")
    for index, key in enumerate(keys):
        if not isinstance(key, Ed25519PublicKey):
            raise ArgumentTypeError(f"trusted_keys[{index}] must be an Ed25519PublicKey, got {type_of(key)}")
    return require_path("path", path), tuple(keys)


def open_options(backends: object, wal_file_ops: object) -> None:
    """``create_maif_storage``'s replacement backends and log file operations (``config`` is checked
    where it is read, :func:`maif.config.load_section`)."""
    from maif.storage.engine import Backends
    from maif.storage.wal import FileOps

    if backends is not None:
        require_instance("backends", backends, Backends)
    if wal_file_ops is not None:
        require_instance("wal_file_ops", wal_file_ops, FileOps)


__all__ = ["block", "block_id", "blocks", "compaction", "export", "import_maif", "list_query", "open_options",
           "read_data_fraction", "search"]
