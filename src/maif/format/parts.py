"""Part sets: one payload larger than a block, stored as consecutive blocks (docs/format/SPEC.md section 15).

A payload of any size is cut into parts of a writer-chosen size; each part is an ordinary block (hashed,
compressed when it pays, optionally encrypted) whose metadata carries a ``part`` map::

    {"set": "<32 hex: 16 random bytes>", "index": 0, "count": 3, "offset": 0, "total": 3221225472}
    ... the last part also: "blake3": "<64 hex: H(whole payload)>"

:func:`add_parts` writes a set from an iterable of part payloads, hashing the whole payload as it goes,
so memory holds one part at a time. :class:`PartSequence` checks a container's blocks in index order and
refuses a set with a missing, duplicated, reordered or foreign part, or whose reassembled bytes do not
hash to its digest; :func:`part_set_problems` runs it over a whole container for full verification, and
`maif unpack` feeds it while it writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import compress
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import blake3

from maif import limits
from maif.errors import FormatError, IntegrityError, MAIFError
from maif.format import codec
from maif.format.block import MAIFBlock, MAIFBlockType
from maif.format.reports import Problem

if TYPE_CHECKING:
    from maif.format.reader import ContainerReader
    from maif.format.writer import ContainerWriter

PART_KEY: Final = "part"
SET_ID_BYTES: Final = 16
DIGEST_HEX_CHARACTERS: Final = 64
_REQUIRED_KEYS: Final = frozenset({"set", "index", "count", "offset", "total"})
_LAST_PART_KEYS: Final = _REQUIRED_KEYS | {"blake3"}
_HEX_DIGITS: Final = frozenset("0123456789abcdef")
# A part's metadata map is encoded with sorted keys, so this fixstr key is in the bytes of every part.
_PART_KEY_ENCODED: Final = b"\xa4part"
_FIELD_FLAGS_AT: Final = 5
"""Offset of a block header's field_flags byte (after the fourcc and storage_flags, codec.FIXED_HEADER)."""
_HAS_METADATA: Final = bytes(1 if flags & codec.FIELD_METADATA else 0 for flags in range(256))
"""A field_flags byte translated to 1 when the header announces metadata, else 0."""
_PARALLEL_HASH_BYTES_MIN: Final = 1 << 20


class WrittenParts(NamedTuple):
    """What :func:`add_parts` wrote: the set id, each part's block index, the first part's block id and
    the whole payload's BLAKE3 (hex)."""

    set_id: str
    indexes: list[int]
    first_block_id: str
    digest: str


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One block's place in its part set (the decoded ``part`` map)."""

    set_id: str
    index: int
    count: int
    offset: int
    total: int
    digest: str | None
    """Hex BLAKE3 of the whole payload: on the last part only."""

    @property
    def is_last(self) -> bool:
        return self.index == self.count - 1


def part_count(total_bytes: int, part_bytes: int) -> int:
    """How many parts a payload of ``total_bytes`` takes at ``part_bytes`` per part (1 means no set)."""
    check_part_bytes(part_bytes)
    return max(1, -(-total_bytes // part_bytes))


def check_part_bytes(part_bytes: int) -> None:
    if not 1 <= part_bytes <= limits.block_payload_bytes_max:
        raise FormatError(
            f"part size must be 1 to {limits.block_payload_bytes_max} bytes, got {part_bytes}"
        )


def part_metadata(info: PartInfo) -> dict[str, Any]:
    part: dict[str, Any] = {
        "set": info.set_id,
        "index": info.index,
        "count": info.count,
        "offset": info.offset,
        "total": info.total,
    }
    if info.digest is not None:
        part["blake3"] = info.digest
    return part


def parse_part(metadata: Mapping[str, Any]) -> PartInfo | None:
    """The block's :class:`PartInfo`, None for a block outside any set; FormatError for a malformed map."""
    part = metadata.get(PART_KEY)
    if part is None:
        return None
    if not isinstance(part, dict):
        raise FormatError("metadata 'part' must be a map")
    keys = set(part)
    if keys not in (_REQUIRED_KEYS, _LAST_PART_KEYS):
        raise FormatError(f"metadata 'part' must hold exactly {sorted(_REQUIRED_KEYS)} (+ 'blake3' on the "
                          f"last part), got {sorted(map(str, keys))}")
    set_id = _hex(part["set"], SET_ID_BYTES * 2, "part set id")
    index, count = _count(part["index"], "part index"), _count(part["count"], "part count")
    offset, total = _count(part["offset"], "part offset"), _count(part["total"], "part set total size")
    if not 2 <= count <= limits.container_blocks_max or index >= count:
        raise FormatError(f"part {index} of {count}: a set has 2 to {limits.container_blocks_max} parts")
    digest = _hex(part["blake3"], DIGEST_HEX_CHARACTERS, "part set digest") if "blake3" in part else None
    if (digest is not None) != (index == count - 1):
        raise FormatError("the last part of a set, and only the last, carries the whole payload's 'blake3'")
    return PartInfo(set_id, index, count, offset, total, digest)


def _hex(value: object, characters: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != characters or not _HEX_DIGITS.issuperset(value):
        raise FormatError(f"{what} must be {characters} lowercase hex digits")
    return value


def _count(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 63):
        raise FormatError(f"{what} must be an integer in [0, 2^63)")
    return value


def add_parts(
    writer: ContainerWriter,
    parts: Iterable[bytes],
    total_bytes: int,
    *,
    part_bytes: int,
    block_type: MAIFBlockType | str,
    metadata: Mapping[str, Any],
    agent_id: str = "",
    encrypt: bool = False,
    set_id: str | None = None,
    on_part: Callable[[int, int], None] = lambda index, size: None,
) -> WrittenParts:
    """Write a payload of ``total_bytes`` as a part set.

    ``parts`` yields the payload cut at ``part_bytes`` (every part that size, the last the remainder);
    a part of another size means the source changed while it was read, and raises FormatError (the
    caller discards the uncommitted blocks: closing the writer without a commit cuts them off).
    ``on_part(index, size)`` is called after each part is written.
    """
    count = part_count(total_bytes, part_bytes)
    if count < 2:
        raise FormatError(f"a payload of {total_bytes} bytes fits one block of {part_bytes}: not a part set")
    if PART_KEY in metadata:
        raise FormatError("metadata must not already hold a 'part' map")
    set_id = os.urandom(SET_ID_BYTES).hex() if set_id is None else _hex(set_id, SET_ID_BYTES * 2, "set id")
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    indexes: list[int] = []
    first_block_id = ""
    offset = 0
    for data in parts:
        index = len(indexes)
        expected = part_bytes if index < count - 1 else total_bytes - offset
        if index >= count or len(data) != expected:
            raise FormatError(
                f"part {index} of {count} is {len(data)} bytes, expected {expected}: "
                "the input changed while it was being read"
            )
        hasher.update(data)
        digest = hasher.hexdigest() if index == count - 1 else None
        info = PartInfo(set_id, index, count, offset, total_bytes, digest)
        block = MAIFBlock(
            block_type=block_type,
            data=data,
            metadata={**metadata, PART_KEY: part_metadata(info)},
            agent_id=agent_id,
        )
        indexes.append(writer.add(block, encrypt=encrypt))
        first_block_id = first_block_id or block.id
        size = len(data)
        del data, block  # before the next part is read: one part in memory at a time
        offset += size
        on_part(index, size)
    if len(indexes) != count:
        raise FormatError(f"only {len(indexes)} of {count} parts were given: the input changed while read")
    return WrittenParts(set_id, indexes, first_block_id, hasher.hexdigest())


class _OpenSet:
    __slots__ = ("count", "hasher", "label", "next_index", "offset", "set_id", "total")

    def __init__(self, info: PartInfo, label: object) -> None:
        self.set_id, self.count, self.total, self.label = info.set_id, info.count, info.total, label
        self.next_index = 0
        self.offset = 0
        self.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)


class PartSequence:
    """Checks blocks in index order against the part-set rules of SPEC section 15.

    For each block: :meth:`begin` with its part info (None outside a set), :meth:`feed` with its payload
    pieces (only for a part), :meth:`end`; :meth:`finish` after the last block. Each refusal is an
    IntegrityError naming the block; the open set is dropped so the blocks after it are checked afresh.
    Memory: one hash state, plus the ids of the sets already seen (16 bytes per set of >= 2 blocks:
    less than the reader's own index holds for those blocks).
    """

    def __init__(self) -> None:
        self._open: _OpenSet | None = None
        self._seen: set[bytes] = set()

    @property
    def in_set(self) -> bool:
        return self._open is not None

    def begin(self, index: int, info: PartInfo | None, payload_length: int, label: object = None) -> None:
        """``label`` (the recorded path, if any) must be the same in every part of a set."""
        current = self._open
        if current is not None and (info is None or info.set_id != current.set_id):
            self._open = None
            missing = f"{current.next_index}..{current.count - 1}"
            raise IntegrityError(
                f"part set {current.set_id} stops after part {current.next_index - 1} of {current.count}: "
                f"parts {missing} are missing (another block follows)",
                block_index=index,
            )
        if info is None:
            return
        if current is None:
            self._start(index, info, label)
        else:
            self._continue(index, info, label, current)
        assert self._open is not None
        if payload_length == 0 or info.offset + payload_length > info.total:
            self._open = None
            raise IntegrityError(
                f"part {info.index} of set {info.set_id} holds {payload_length} bytes at offset "
                f"{info.offset}, outside the set's {info.total} bytes",
                block_index=index,
            )

    def _start(self, index: int, info: PartInfo, label: object) -> None:
        if info.index != 0:
            raise IntegrityError(
                f"part {info.index} of set {info.set_id} is not preceded by part {info.index - 1} "
                "(a missing, reordered or foreign part)",
                block_index=index,
            )
        key = bytes.fromhex(info.set_id)
        if key in self._seen:
            raise IntegrityError(f"part set {info.set_id} occurs twice (a duplicated set)", block_index=index)
        if info.offset != 0:
            raise IntegrityError(f"the first part of set {info.set_id} has offset {info.offset}, not 0",
                                 block_index=index)
        self._seen.add(key)
        self._open = _OpenSet(info, label)

    def _continue(self, index: int, info: PartInfo, label: object, current: _OpenSet) -> None:
        problem = None
        if info.index < current.next_index:
            problem = f"part {info.index} of set {info.set_id} occurs again (a duplicated part)"
        elif info.index > current.next_index:
            problem = (f"set {info.set_id} goes from part {current.next_index - 1} to part {info.index}: "
                       "a part is missing or out of order")
        elif info.count != current.count or info.total != current.total or label != current.label:
            problem = f"part {info.index} does not belong to set {info.set_id} (count, size or path differ)"
        elif info.offset != current.offset:
            problem = f"part {info.index} of set {info.set_id} has offset {info.offset}, not {current.offset}"
        if problem is not None:
            self._open = None
            raise IntegrityError(problem, block_index=index)

    def feed(self, piece: bytes | memoryview) -> None:
        assert self._open is not None
        self._open.hasher.update(piece)

    def end(self, index: int, info: PartInfo | None, payload_length: int) -> bool:
        """Account for the block just fed; True when it completed its set (whose digest then matched)."""
        current = self._open
        if info is None or current is None:
            return False
        current.next_index += 1
        current.offset += payload_length
        if not info.is_last:
            return False
        self._open = None
        if current.offset != current.total:
            raise IntegrityError(
                f"set {current.set_id} holds {current.offset} bytes, its parts declare {current.total}",
                block_index=index,
            )
        if current.hasher.hexdigest() != info.digest:
            raise IntegrityError(
                f"the reassembled payload of set {current.set_id} does not match its BLAKE3 digest",
                block_index=index,
            )
        return True

    def abandon(self) -> None:
        """Drop the open set without judging it (its remaining blocks cannot be read)."""
        self._open = None

    def finish(self, block_count: int) -> None:
        current = self._open
        self._open = None
        if current is not None:
            raise IntegrityError(
                f"the container ends inside part set {current.set_id}: parts "
                f"{current.next_index}..{current.count - 1} of {current.count} are missing",
                block_index=block_count - 1 if block_count else None,
            )


def part_set_problems(
    reader: ContainerReader, skip: set[int], *, decrypt: bool
) -> list[Problem]:
    """Every part-set problem in the container (full verification, after each block's own checks).

    ``skip`` holds blocks already reported; they break any set they are in. Encrypted blocks are
    checked only with ``decrypt`` (their metadata is sealed). Only blocks whose header announces
    metadata can be parts: the others are found in one vectorised pass over the header
    bytes and passed over in runs, so a container of small blocks without metadata costs almost nothing.
    """
    problems: list[Problem] = []
    sequence = PartSequence()
    after_last = 0
    for index in _candidates(reader, skip):
        if index > after_last:  # a run of blocks that cannot be parts: the first one ends any open set
            _judge(problems, after_last, sequence.begin, after_last, None, 0)
        _judge(problems, index, _check_one, reader, index, sequence, skip, decrypt)
        after_last = index + 1
    if len(reader) > after_last:
        _judge(problems, after_last, sequence.begin, after_last, None, 0)
    _judge(problems, None, sequence.finish, len(reader))
    return problems


def _judge(problems: list[Problem], index: int | None, check: Callable[..., None], *arguments: Any) -> None:
    """Run one check; its refusal becomes a problem of the block it names (else ``index``)."""
    try:
        check(*arguments)
    except IntegrityError as error:
        where = error.block_index if error.block_index is not None else index
        reason = error.message.removesuffix(f" (block {error.block_index})")
        problems.append(Problem(where, reason, kind="integrity"))
    except MAIFError as error:
        from maif.format.verify import kind_of  # verify imports this module

        problems.append(Problem(index, error.message, kind=kind_of(error)))


def _candidates(reader: ContainerReader, skip: set[int]) -> list[int]:
    """Blocks that may be parts, in index order: a header with the METADATA flag, plus every block in
    ``skip`` or refused by the layout check (their flag bytes cannot be trusted)."""
    mapping, offsets = reader._mapping, reader._offsets
    if not len(reader) or mapping is None:
        return sorted(skip | set(reader.bad_entries))
    if max(offsets) + _FIELD_FLAGS_AT < len(mapping):
        # Every header's flags byte, gathered and tested in C loops (map, translate, compress): a
        # container of a million blocks is not walked in Python.
        flags = bytes(map(mapping.__getitem__, map(_FIELD_FLAGS_AT.__add__, offsets)))
        found = set(compress(range(len(offsets)), flags.translate(_HAS_METADATA)))
    else:  # an offset beyond the file (a damaged index): such a block is a candidate
        size = len(mapping)
        found = {
            index
            for index, offset in enumerate(offsets)
            if offset + _FIELD_FLAGS_AT >= size or mapping[offset + _FIELD_FLAGS_AT] & codec.FIELD_METADATA
        }
    return sorted(found | skip | set(reader.bad_entries))


def _check_one(
    reader: ContainerReader, index: int, sequence: PartSequence, skip: set[int], decrypt: bool
) -> None:
    if index in skip:
        sequence.abandon()
        return
    record = reader.record(index)
    if not record[_FIELD_FLAGS_AT] & codec.FIELD_METADATA:  # the header is in the clear, encrypted or not
        sequence.begin(index, None, 0)
        return
    encrypted = record[4] & codec.STORAGE_ENCRYPTED
    if encrypted and not decrypt:
        sequence.abandon()  # its metadata is sealed: whether it is a part cannot be known
        return
    if not encrypted:
        header = codec.decode_header(record, 0, len(record))
        metadata_end = header.body_offset + header.metadata_length
        if _PART_KEY_ENCODED not in bytes(record[header.body_offset : metadata_end]):
            sequence.begin(index, None, 0)
            return
    block = reader.stream_block(index, verify=False)
    info = parse_part(block.metadata)
    length = block.header.payload_length
    sequence.begin(index, info, length, block.metadata.get("path"))
    if info is None:
        return
    try:
        for piece in block.chunks:
            sequence.feed(piece)
    finally:
        if length >= _PARALLEL_HASH_BYTES_MIN:
            reader.release(index)
    sequence.end(index, info, length)


__all__ = [
    "PART_KEY",
    "PartInfo",
    "PartSequence",
    "WrittenParts",
    "add_parts",
    "check_part_bytes",
    "parse_part",
    "part_count",
    "part_metadata",
    "part_set_problems",
]
