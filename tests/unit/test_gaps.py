from capture.gaps import GapLog


def test_disjoint_gaps_stay_separate():
    log = GapLog()
    first = log.record(100, 200, "startup", "run")
    first.cursor, first.scan_started = 42, True
    log.record(300, 400, "disconnected", "run")
    assert [gap.start_us for gap in log.open_gaps()] == [100, 300]
    assert log.open_gaps()[0].cursor == 42


def test_overlapping_gaps_merge_and_restart_scan():
    log = GapLog()
    first = log.record(100, 200, "startup", "run")
    first.cursor, first.scan_started = 42, True
    merged = log.record(150, 300, "pending_overflow", "run")
    assert log.open_gaps() == [merged]
    assert (merged.start_us, merged.end_us, merged.cursor) == (100, 300, 0)
    assert merged.reasons == ["pending_overflow", "startup"]
    assert not log.contains(first)


def test_close_moves_gap_to_recent():
    log = GapLog()
    gap = log.record(100, 200, "startup", "run")
    assert log.close(gap, 500)
    assert log.open_gaps() == []
    assert log.recent_gaps()[0].closed_at_us == 500
    assert not log.close(gap, 600)


def test_new_run_invalidates_cursor():
    log = GapLog()
    gap = log.record(100, 200, "startup", "run-a")
    gap.cursor = 42
    log.invalidate_cursors("run-b")
    assert gap.cursor == 0 and gap.run_id == "run-b"
