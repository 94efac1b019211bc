"""The offset tracker stores only the contiguous finished prefix of a partition."""

from __future__ import annotations

from replicator.offsets import OffsetTracker


def tracker_with(offsets: list[int]) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        assert tracker.add(offset, 1000.0 + offset)
    return tracker


def test_tracker_in_order():
    tracker = tracker_with([0, 1, 2])
    assert tracker.finish(0) == 1
    assert tracker.finish(1) == 2
    assert tracker.finish(2) == 3
    assert tracker.pending_count == 0


def test_tracker_out_of_order_waits_for_gap():
    tracker = tracker_with([10, 11, 12, 13])
    assert tracker.finish(12) is None
    assert tracker.finish(13) is None
    assert tracker.store_offset is None
    assert tracker.finish(11) is None
    assert tracker.store_offset is None
    # The oldest record finishing releases the whole finished prefix at once.
    assert tracker.finish(10) == 14
    assert tracker.store_offset == 14


def test_tracker_unfinished_record_holds_offset():
    tracker = tracker_with(list(range(100)))
    for offset in range(100):
        if offset != 40:
            tracker.finish(offset)
    assert tracker.store_offset == 40
    assert tracker.position() == 40
    assert tracker.pending_count == 60


def test_tracker_offset_gaps():
    # Transaction markers and compaction leave gaps between record offsets.
    tracker = tracker_with([5, 9, 20])
    assert tracker.finish(9) is None
    assert tracker.finish(5) == 10
    assert tracker.finish(20) == 21


def test_tracker_rejects_repeated_offsets():
    tracker = tracker_with([3, 4])
    assert not tracker.add(4, 0.0)
    assert not tracker.add(2, 0.0)
    assert tracker.add(5, 0.0)


def test_tracker_finish_twice_is_harmless():
    tracker = tracker_with([0, 1])
    assert tracker.finish(0) == 1
    assert tracker.finish(0) is None
    assert tracker.store_offset == 1


def test_tracker_oldest_pending_timestamp():
    tracker = tracker_with([0, 1, 2])
    assert tracker.oldest_pending_timestamp_s() == 1000.0
    tracker.finish(1)
    assert tracker.oldest_pending_timestamp_s() == 1000.0
    tracker.finish(0)
    assert tracker.oldest_pending_timestamp_s() == 1002.0
    tracker.finish(2)
    assert tracker.oldest_pending_timestamp_s() is None


def test_tracker_position_before_records():
    tracker = OffsetTracker()
    assert tracker.position() is None
    tracker.add(7, 0.0)
    tracker.finish(7)
    assert tracker.position() == 8
