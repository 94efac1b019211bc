"""The monotonic apply rules as a table: every decision the replicator can take for one event."""

from __future__ import annotations

import pytest

from echoseen import echo_value
from echoseen.events import OP_DELETE, OP_UPSERT, SeenTimeEvent
from echoseen.kask_body import ReadBack, Unreadable
from replicator.apply import (REASON_BAD_VALUE, REASON_UNADDRESSABLE_KEY, Action, RecordRejected, check_event,
                              decide_delete, decide_upsert, needs_kask)

OLDER = "20240101000000"
STORED = "20240601120000"
NEWER = "20241231235959"
PLACEHOLDER = echo_value.PLACEHOLDER
KEY = b"enwiki:echo:seen:alert:time:42"


def epoch_us(seen_time: str) -> int:
    return echo_value.epoch_s_from_ts_mw(seen_time) * 1_000_000


def upsert(seen_time: str | None, key: bytes = KEY, value_error: str | None = None) -> SeenTimeEvent:
    value = echo_value.encode(seen_time) if seen_time else b"garbage"
    return SeenTimeEvent(op=OP_UPSERT, key=key, value=value, seen_time=seen_time, value_error=value_error,
                         expire_at_ms=None, version_us=epoch_us(STORED), origin="live", notification="set",
                         source_server="127.0.0.1:6379", source_db=0, source_run_id="run")


def delete(notification: str | None, version_us: int, key: bytes = KEY) -> SeenTimeEvent:
    return SeenTimeEvent(op=OP_DELETE, key=key, value=None, seen_time=None, value_error=None, expire_at_ms=None,
                         version_us=version_us, origin="live", notification=notification,
                         source_server="127.0.0.1:6379", source_db=0, source_run_id="run")


UPSERT_TABLE = [
    # (case, incoming, what MediaWiki reads from Kask (None = 404), expected action)
    ("missing", STORED, None, Action.WRITE),
    ("other_format", STORED, ReadBack(None, Unreadable.OTHER_FORMAT), Action.WRITE),
    ("bad_mac", STORED, ReadBack(None, Unreadable.BAD_MAC), Action.WRITE),
    ("bad_payload", STORED, ReadBack(None, Unreadable.BAD_PAYLOAD), Action.WRITE),
    ("not_a_timestamp", STORED, ReadBack(None, Unreadable.NOT_A_TIMESTAMP), Action.WRITE),
    ("stored_placeholder", OLDER, ReadBack(PLACEHOLDER), Action.WRITE),
    ("newer", NEWER, ReadBack(STORED), Action.WRITE),
    ("equal", STORED, ReadBack(STORED), Action.ALREADY_APPLIED),
    ("older", OLDER, ReadBack(STORED), Action.STALE),
    ("newer_by_one_second", "20240601120001", ReadBack(STORED), Action.WRITE),
    ("older_by_one_second", "20240601115959", ReadBack(STORED), Action.STALE),
    ("incoming_placeholder_missing", PLACEHOLDER, None, Action.SKIP_PLACEHOLDER),
    ("incoming_placeholder_unreadable", PLACEHOLDER, ReadBack(None, Unreadable.BAD_PAYLOAD),
     Action.SKIP_PLACEHOLDER),
    ("incoming_placeholder_stored", PLACEHOLDER, ReadBack(STORED), Action.SKIP_PLACEHOLDER),
]


@pytest.mark.parametrize("case, incoming, stored, expected", UPSERT_TABLE, ids=[row[0] for row in UPSERT_TABLE])
def test_upsert_decision(case, incoming, stored, expected):
    assert decide_upsert(incoming, stored) is expected


DELETE_TABLE = [
    # (case, notification, delete version, what MediaWiki reads from Kask, expected action)
    ("expired_keeps_kask", "expired", epoch_us(NEWER), ReadBack(STORED), Action.SKIP_EXPIRY),
    ("evicted_keeps_kask", "evicted", epoch_us(NEWER), ReadBack(STORED), Action.SKIP_EXPIRY),
    ("gone_after_set", "set", epoch_us(NEWER), ReadBack(STORED), Action.SKIP_EXPIRY),
    ("gone_on_scan", None, epoch_us(NEWER), ReadBack(STORED), Action.SKIP_EXPIRY),
    ("del_newer_than_kask", "del", epoch_us(NEWER), ReadBack(STORED), Action.DELETE),
    ("unlink_newer_than_kask", "unlink", epoch_us(NEWER), ReadBack(STORED), Action.DELETE),
    ("rename_from_newer_than_kask", "rename_from", epoch_us(NEWER), ReadBack(STORED), Action.DELETE),
    ("move_from_newer_than_kask", "move_from", epoch_us(NEWER), ReadBack(STORED), Action.DELETE),
    ("del_same_second", "del", epoch_us(STORED) + 999_999, ReadBack(STORED), Action.DELETE),
    ("del_older_than_kask", "del", epoch_us(OLDER), ReadBack(STORED), Action.STALE),
    ("del_missing", "del", epoch_us(NEWER), None, Action.ALREADY_APPLIED),
    ("del_unreadable", "del", epoch_us(OLDER), ReadBack(None, Unreadable.OTHER_FORMAT), Action.DELETE),
    ("del_placeholder", "del", epoch_us(OLDER), ReadBack(PLACEHOLDER), Action.DELETE),
]


@pytest.mark.parametrize("case, notification, version_us, stored, expected", DELETE_TABLE,
                         ids=[row[0] for row in DELETE_TABLE])
def test_delete_decision(case, notification, version_us, stored, expected):
    assert decide_delete(delete(notification, version_us), stored) is expected


def test_bad_value_rejected():
    with pytest.raises(RecordRejected) as raised:
        check_event(upsert(None, value_error="not_php_serialized"), max_key_bytes=1024)
    assert raised.value.reason == REASON_BAD_VALUE
    assert "not_php_serialized" in raised.value.detail


@pytest.mark.parametrize("key", [b"enwiki/echo:seen", b"", b".", b"..", b"enwiki:\xff\xfe:seen", b"k" * 1025])
def test_unaddressable_key_rejected(key):
    with pytest.raises(RecordRejected) as raised:
        check_event(upsert(STORED, key=key), max_key_bytes=1024)
    assert raised.value.reason == REASON_UNADDRESSABLE_KEY


def test_key_at_limit_accepted():
    check_event(upsert(STORED, key=b"k" * 1024), max_key_bytes=1024)


def test_unaddressable_key_skipped_without_kask():
    # Neither a placeholder nor an expiry needs Kask, so their key is never sent and never rejected.
    check_event(upsert(PLACEHOLDER, key=b"a/b"), max_key_bytes=1024)
    check_event(delete("expired", epoch_us(NEWER), key=b"a/b"), max_key_bytes=1024)


def test_needs_kask_cases():
    assert needs_kask(upsert(STORED))
    assert not needs_kask(upsert(PLACEHOLDER))
    assert needs_kask(delete("del", epoch_us(NEWER)))
    assert not needs_kask(delete("expired", epoch_us(NEWER)))
    assert not needs_kask(delete("evicted", epoch_us(NEWER)))
