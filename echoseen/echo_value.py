"""Echo seen-time values as MediaWiki stores them in Redis.

Echo writes the user's seen time as a 14-digit MediaWiki timestamp (TS_MW,
``YYYYMMDDHHMMSS``, UTC), and MediaWiki's Redis store PHP-serializes every
non-integer value, so a well-formed value is exactly the 22 bytes
``s:14:"20190523123456";``. ``19700101000001`` is Echo's "nothing seen"
placeholder and carries no information.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum

PLACEHOLDER = "19700101000001"

SERIALIZED_LENGTH = 22

_TS_MW = re.compile(rb"[0-9]{14}")
_PHP_STRING = re.compile(rb's:([0-9]+):"(.*)";', re.DOTALL)


class BadValue(str, Enum):
    """Why a value under a watched key is not a seen time MediaWiki could have written."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_A_STRING = "not_a_string"
    NOT_UTF8 = "not_utf8"
    NOT_PHP_SERIALIZED = "not_php_serialized"
    WRONG_LENGTH_PREFIX = "wrong_length_prefix"
    NOT_A_TIMESTAMP = "not_a_timestamp"


@dataclass(frozen=True, slots=True)
class Decoded:
    """The result of decoding one value: a seen time, or the reason there is none."""

    seen_time: str | None
    error: BadValue | None = None

    @property
    def is_placeholder(self) -> bool:
        return self.seen_time == PLACEHOLDER


def is_valid_ts_mw(text: str) -> bool:
    """Return True for a 14-digit string that names a real UTC second."""
    if len(text) != 14 or not text.isascii() or not text.isdigit():
        return False
    # Slicing fixed-width fields is several times faster than strptime on the hot path of every read.
    try:
        datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                 int(text[12:14]))
    except ValueError:
        return False
    return True


def decode(value: bytes, max_bytes: int = 1024) -> Decoded:
    """Decode a Redis string value into a seen time.

    Only the exact form MediaWiki writes is accepted: a PHP-serialized string
    whose length prefix matches its UTF-8 byte length and whose content is a
    valid TS_MW timestamp.
    """
    if not value:
        return Decoded(None, BadValue.EMPTY)
    if len(value) > max_bytes:
        return Decoded(None, BadValue.TOO_LARGE)
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return Decoded(None, BadValue.NOT_UTF8)

    match = _PHP_STRING.fullmatch(value)
    if match is None:
        return Decoded(None, BadValue.NOT_PHP_SERIALIZED)
    declared_length, content = int(match.group(1)), match.group(2)
    if declared_length != len(content):
        return Decoded(None, BadValue.WRONG_LENGTH_PREFIX)

    if not _TS_MW.fullmatch(content):
        return Decoded(None, BadValue.NOT_A_TIMESTAMP)
    text = content.decode("ascii")
    if not is_valid_ts_mw(text):
        return Decoded(None, BadValue.NOT_A_TIMESTAMP)
    return Decoded(text)


def encode(seen_time: str) -> bytes:
    """PHP-serialize a TS_MW timestamp the way MediaWiki's Redis store does."""
    if not is_valid_ts_mw(seen_time):
        raise ValueError(f"invalid TS_MW timestamp {seen_time!r}: expected 14 digits YYYYMMDDHHMMSS")
    return b's:14:"' + seen_time.encode("ascii") + b'";'


def ts_mw_from_datetime(moment: datetime) -> str:
    """Format an aware datetime as TS_MW in UTC."""
    if moment.tzinfo is None:
        raise ValueError(f"datetime {moment.isoformat()} has no timezone; pass an aware datetime")
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S")


def datetime_from_ts_mw(seen_time: str) -> datetime:
    """Parse TS_MW as a UTC datetime."""
    return datetime.strptime(seen_time, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def ts_mw_from_epoch_us(epoch_us: int) -> str:
    """Format microseconds since the Unix epoch as TS_MW, truncating to the second."""
    return datetime.fromtimestamp(epoch_us // 1_000_000, tz=timezone.utc).strftime("%Y%m%d%H%M%S")


def epoch_s_from_ts_mw(seen_time: str) -> int:
    return int(datetime_from_ts_mw(seen_time).timestamp())
