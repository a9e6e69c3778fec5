"""Every bound MAIF enforces, as a named constant, with the relations between them asserted at import.

Names end in the unit and ``_max``/``_min`` (``block_payload_bytes_max``). A parser checks the
relevant bound *before* it allocates or decodes; exceeding one raises ``LimitExceededError``.
Each subsystem owns one section below; keep new bounds in their section and add an assertion for any
relation another bound relies on.
"""

from __future__ import annotations

from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

# --- identity strings (shared) -----------------------------------------------------------------
agent_id_bytes_max: Final = 256
"""UTF-8 length of an agent id; agent ids name producers in every block and audit record."""

# --- format: blocks and containers ------------------------------------------------------------
block_id_bytes_max: Final = 256
"""UTF-8 length of a block id (producer-chosen, or a 36-character UUIDv7)."""

block_version_bytes_max: Final = 64
"""UTF-8 length of a block's version label."""

block_payload_bytes_max: Final = 1 * GiB
"""Largest payload of one block, before compression or encryption."""

block_metadata_bytes_max: Final = 64 * KiB
"""Largest encoded (MessagePack) metadata map of one block."""

block_parents_max: Final = 256
"""Most parent references one block may carry (the provenance graph's in-degree)."""

container_blocks_max: Final = 1 << 28
"""Most blocks in one .maif container (bounds the index a reader allocates)."""

manifest_bytes_max: Final = 1 * MiB
"""Largest encoded manifest (root, signatures, recipient key wraps)."""

manifest_signatures_max: Final = 16
"""Most co-signatures on one manifest."""

recipients_max: Final = 64
"""Most recipient keys a container's data key may be wrapped for."""

# --- storage engine ----------------------------------------------------------------------------

# --- security ----------------------------------------------------------------------------------

# --- agent runtime -----------------------------------------------------------------------------

# --- sanity relations --------------------------------------------------------------------------
assert block_metadata_bytes_max < block_payload_bytes_max
assert block_parents_max * 16 < block_metadata_bytes_max * 4
assert manifest_signatures_max <= 255 and recipients_max <= 255
