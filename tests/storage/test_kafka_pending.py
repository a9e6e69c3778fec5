"""The Kafka log's bookkeeping of this node's acknowledged writes not yet in the shared index
(maif.storage.kafkalog.PendingPositions), without servers; the log itself runs against a real broker in
tests/distributed/test_kafka_log.py."""

from __future__ import annotations

from maif.format.block import MAIFBlock
from maif.storage.applier import LogItem
from maif.storage.kafkalog import PendingPositions, log_key


def item(sequence: int, partition: int, offset: int) -> LogItem:
    block = MAIFBlock(id=f"b{sequence}", data=b"x", agent_id="a" if sequence % 2 else "")
    return LogItem(block, b"", b"", None, lsn=sequence, position=(partition, offset))


def test_items_leave_once_their_partition_is_applied_past_them_in_any_order() -> None:
    pending = PendingPositions()
    items = [item(1, 0, 10), item(2, 1, 3), item(3, 0, 11), item(4, 1, 4), item(5, 0, 12)]
    for each in items:
        pending.add(each)
    assert pending.applied({0: 11}) == [items[0]]  # offset 11 not applied yet: position is the next one
    assert pending.oldest_sequence() == 2 and pending.count == 4
    assert pending.applied({0: 11, 1: 0, 7: 100}) == []  # no progress, unknown partition: nothing
    assert sorted(each.lsn for each in pending.applied({1: 5, 0: 12})) == [2, 3, 4]
    assert pending.oldest_sequence() == 5
    assert pending.applied({0: 13}) == [items[4]]
    assert pending.oldest_sequence() is None and pending.count == 0


def test_records_are_keyed_by_agent_id_else_block_id() -> None:
    assert log_key(item(1, 0, 0)) == b"a"
    assert log_key(item(2, 0, 0)) == b"b2"
