"""The applier's record building: each block's type as its FourCC text, whatever form it was given in."""

from __future__ import annotations

import pytest

from maif.format.block import MAIFBlock, MAIFBlockType
from maif.storage.applier import LogItem, record_of, type_name, vector_attributes


@pytest.mark.parametrize("kind", list(MAIFBlockType))
def test_every_seed_type_is_named_by_its_fourcc_text(kind: MAIFBlockType) -> None:
    block = MAIFBlock(block_type=kind, data=b"x", agent_id="a")
    assert type(type_name(block)) is str
    assert type_name(block) == kind.value == block.type_name
    record = record_of(LogItem(block=block, encoded=b"", digest=b"d" * 32, vector=None, lsn=7), (b"c" * 32,))
    assert record.block_type == kind.value and type(record.block_type) is str
    assert vector_attributes(block) == {"agent_id": "a", "block_type": kind.value}


def test_another_fourcc_stays_the_text_it_was_given() -> None:
    block = MAIFBlock(block_type="ZZZZ", data=b"x")
    assert type_name(block) == "ZZZZ" == block.type_name
