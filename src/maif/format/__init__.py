"""The .maif container format: block model, codec, container reader and writer, Merkle trees, signing, AEAD.

Pure: imports nothing from storage, security policy or the network, so anyone can verify a .maif file
offline with this package and a public key. Submodules load lazily (``import maif`` stays fast); every
public name is re-exported here. The byte-level specification is docs/format/SPEC.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "MAIFBlock": "block",
    "MAIFBlockType": "block",
    "new_block_id": "block",
    "encode_block": "codec",
    "decode_block": "codec",
    "block_digest": "codec",
    "generate_signing_key": "signing",
    "key_id": "signing",
    "save_private_key": "signing",
    "load_private_key": "signing",
    "save_public_key": "signing",
    "load_public_key": "signing",
    "generate_recipient_key": "aead",
    "ContainerWriter": "container",
    "ContainerReader": "container",
    "BlockEntry": "container",
    "VersionInfo": "container",
    "verify_container": "verify",
    "VerificationReport": "reports",
    "Problem": "reports",
    "repair_container": "repair",
    "RepairReport": "reports",
    "add_parts": "parts",
    "parse_part": "parts",
    "PartInfo": "parts",
    "PartSequence": "parts",
    "WrittenParts": "parts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'maif.format' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"maif.format.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
