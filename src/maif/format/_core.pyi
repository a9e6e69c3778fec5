# Type stub of the compiled core (_core.c); see maif.format.native and ADR 0090.
from typing import Any

def set_limits(
    payload_bytes_max: int,
    id_bytes_max: int,
    agent_id_bytes_max: int,
    version_bytes_max: int,
    parents_max: int,
    metadata_bytes_max: int,
    /,
) -> None: ...
def unproven_records(
    file: Any, offsets: Any, ends: Any, first: int, stop: int, large_min: int, /
) -> list[int | tuple[int, int, int]]: ...
def chain_mismatches(
    file: Any,
    offsets: Any,
    ends: Any,
    entries: bytes,
    genesis: bytes,
    first: int,
    stop: int,
    bytes_budget: int,
    large_min: int,
    hasher: Any,
    mismatches: list[int],
    /,
) -> tuple[int, int]: ...
def leaf_hashes(entries: Any, stride: int, digest_at: int, hasher: Any, /) -> list[bytes]: ...
def merkle_root(leaf_hashes: list[bytes], hasher: Any, /) -> bytes | None: ...
def encode_records(
    blocks: list[Any],
    first: int,
    block_class: type,
    known_fourccs: dict[object, bytes],
    previous_digest: bytes,
    position: int,
    compression_threshold: int,
    record_bytes_max: int,
    blocks_max: int,
    batch_bytes: int,
    hasher: Any,
    records: bytearray,
    index: bytearray,
    encode_metadata: Any,
    /,
) -> tuple[int, int, bytes]: ...
