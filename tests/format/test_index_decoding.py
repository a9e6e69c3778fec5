"""The reader's index decoding (standard-library arrays, no numpy) against a plain struct reference.

Random index regions, valid or damaged: the offsets, the record ends and the entries that break the
no-holes layout must be exactly what decoding entry by entry with ``struct`` gives. The part check's
candidates (blocks whose header announces metadata) likewise, on a real container and a damaged one.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from maif.format import layout
from maif.format.parts import _candidates
from maif.format.reader import ContainerReader, _decode_index, _layout_breaks

SEGMENT_START = 32


def reference(region: bytes, index_offset: int) -> tuple[list[int], list[int], list[int]]:
    starts = [layout.INDEX_ENTRY.unpack_from(region, at)[0] for at in range(0, len(region), 40)]
    stops = [*starts[1:], index_offset] if starts else []
    broken = [
        position
        for position, (start, stop) in enumerate(zip(starts, stops, strict=True))
        if start < SEGMENT_START or stop > index_offset or stop <= start
        or (position == 0 and start != SEGMENT_START)
    ]
    return starts, stops, broken


def contiguous(sizes: list[int]) -> list[int]:
    return [SEGMENT_START + sum(sizes[:position]) for position in range(len(sizes))]


offsets_strategy = st.one_of(
    st.lists(st.integers(1, 5000), max_size=40).map(contiguous),  # valid: in order from the segment's start
    st.lists(st.integers(0, 2**64 - 1), max_size=40),  # anything, above 2**63 and out of order included
)


@given(offsets=offsets_strategy, data=st.data(), index_gap=st.integers(-3, 3))
def test_array_decoding_matches_the_struct_reference(offsets: list[int], data: Any, index_gap: int) -> None:
    digests = [data.draw(st.binary(min_size=32, max_size=32)) for _ in offsets]
    region = b"".join(map(layout.INDEX_ENTRY.pack, offsets, digests))
    end_of_records = max(offsets) + 1 if offsets else 0
    index_offset = min(2**64 - 1, max(SEGMENT_START + 1, end_of_records + index_gap))
    trailer = layout.Trailer(index_offset, index_offset + len(region), 0, 1, len(offsets), SEGMENT_START)
    starts, stops = _decode_index(memoryview(region), index_offset)
    expected_starts, expected_stops, expected_broken = reference(region, index_offset)
    assert starts.tolist() == expected_starts
    assert stops.tolist() == expected_stops
    assert _layout_breaks(starts, stops, trailer) == expected_broken


def test_part_candidates_are_the_blocks_announcing_metadata_plus_those_the_layout_refused(build: Any) -> None:
    path = build((7,))  # conftest.sample_block: blocks 0, 3 and 6 carry metadata
    with ContainerReader.open(path) as reader:
        assert _candidates(reader, set()) == [0, 3, 6]  # gathered in C loops: every offset in the file
        assert _candidates(reader, {5}) == [0, 3, 5, 6]
        index_offset = reader._versions[0].trailer.index_offset
    data = bytearray(path.read_bytes())
    entry_1 = index_offset + layout.INDEX_ENTRY.size
    data[entry_1 : entry_1 + 8] = (1 << 40).to_bytes(8, "little")  # block 1 starts far past the file's end
    path.write_bytes(bytes(data))
    with ContainerReader.open(path) as reader:
        assert set(reader.bad_entries) == {0, 1}
        assert _candidates(reader, set()) == [0, 1, 3, 6]  # the walk that checks each offset
