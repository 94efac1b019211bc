import pytest

from capture.patterns import KeyFilter, glob_to_regex, missing_flags
from echoseen.config import ECHO_KEY_PATTERNS, ECHO_KEY_REGEX

ECHO = KeyFilter(ECHO_KEY_PATTERNS, ECHO_KEY_REGEX)


@pytest.mark.parametrize("key", [
    b"enwiki:echo:seen:alert:time:12345",
    b"global:echo:seen:message:time:7",
    b"zh_yuewiki:echo:seen:alert:time:1",
])
def test_echo_filter_accepts_seen_time_keys(key):
    assert ECHO.matches(key)


@pytest.mark.parametrize("key", [
    b"enwiki:echo:seen:alert:count:5",
    b"enwiki:echo:seenx:alert:time:5",
    b"enwiki:echo:seen:notice:time:5",
    b"enwiki:page-view-count:5",
    b"echoseen:capture:heartbeat:abc:1",
    b"enwiki:echo:seen:alert:time:u123",
    b"enwiki:echo:seen:message:time:123:extra",
    b"en:wiki:echo:seen:alert:time:5",
])
def test_echo_filter_rejects_other_keys(key):
    assert not ECHO.matches(key)


def test_scan_match_is_superset_of_patterns():
    assert ECHO.scan_match() == "*:echo:seen:*:time:*"
    assert KeyFilter(("enwiki:*",)).scan_match() == "enwiki:*"
    assert KeyFilter(("a[bc]:*", "d:*")).scan_match() is None


def test_glob_translation_covers_redis_syntax():
    import re
    regex = re.compile(glob_to_regex(r"h[^e]llo\*[a-c]?"))
    assert regex.fullmatch("hallo*bz")
    assert not regex.fullmatch("hello*bz")
    assert not regex.fullmatch("hallo*dz")


def test_missing_flags():
    assert missing_flags("", "keyspace") == "Kg$xe"
    assert missing_flags("KEA", "keyspace") == ""
    assert missing_flags("Kg$x", "keyspace") == "e"
    assert missing_flags("Kg$xe", "keyevent") == "E"
