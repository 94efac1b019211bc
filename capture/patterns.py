"""Key patterns: Redis glob syntax, the client-side matcher, and the channels the capture subscribes to.

Patterns use Redis's glob syntax (``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]``
and ``\\`` escapes), the syntax of SCAN MATCH and PSUBSCRIBE, so one pattern
list drives the subscription, the scans and the client-side filter alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Keys the capture itself writes in each watched Redis. The hash tag keeps
# every such key of one node in a slot that node owns (see sources.py).
HEARTBEAT_PREFIX = "echoseen:capture:heartbeat"
LOCK_PREFIX = "echoseen:capture:lock"


def glob_to_regex(pattern: str) -> str:
    """Translate a Redis glob pattern into an equivalent Python regular expression."""
    out = []
    index = 0
    length = len(pattern)
    while index < length:
        char = pattern[index]
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "\\" and index + 1 < length:
            index += 1
            out.append(re.escape(pattern[index]))
        elif char == "[":
            closing = _bracket_end(pattern, index)
            if closing is None:
                out.append(re.escape(char))
            else:
                body = pattern[index + 1:closing]
                negate = body.startswith("^")
                if negate:
                    body = body[1:]
                members = []
                cursor = 0
                while cursor < len(body):
                    if body[cursor] == "\\" and cursor + 1 < len(body):
                        members.append(re.escape(body[cursor + 1]))
                        cursor += 2
                    elif cursor + 2 < len(body) and body[cursor + 1] == "-":
                        low, high = sorted((body[cursor], body[cursor + 2]))
                        members.append(f"{re.escape(low)}-{re.escape(high)}")
                        cursor += 3
                    else:
                        members.append(re.escape(body[cursor]))
                        cursor += 1
                out.append(("[^" if negate else "[") + "".join(members) + "]")
                index = closing
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def _bracket_end(pattern: str, start: int) -> int | None:
    index = start + 1
    while index < len(pattern):
        if pattern[index] == "\\":
            index += 2
            continue
        if pattern[index] == "]":
            return index
        index += 1
    return None


@dataclass(frozen=True)
class KeyFilter:
    """Decide whether a key is watched: it matches one of the glob patterns and, when given, the whole-key regex."""

    patterns: tuple[str, ...]
    key_regex: str = ""

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("at least one key pattern is needed")
        combined = "|".join(f"(?:{glob_to_regex(pattern)})" for pattern in self.patterns)
        object.__setattr__(self, "_regex", re.compile(f"(?s:{combined})\\Z".encode("utf-8")))
        shape = re.compile(f"(?:{self.key_regex})\\Z".encode("utf-8")) if self.key_regex else None
        object.__setattr__(self, "_shape", shape)

    @classmethod
    def from_config(cls, config) -> "KeyFilter":
        return cls(tuple(config.redis.key_patterns), config.redis.key_regex)

    def matches(self, key: bytes) -> bool:
        if self._regex.match(key) is None:  # type: ignore[attr-defined]
            return False
        return self._shape is None or self._shape.match(key) is not None  # type: ignore[attr-defined]

    def scan_match(self) -> str | None:
        """Return one glob that matches every watched key, for SCAN MATCH; None when only scanning all keys is safe.

        For several patterns this is their longest common prefix, ``*``, and
        their longest common suffix (``*:echo:seen:*:time:*`` for the Echo
        defaults), a superset that the client-side filter then narrows.
        """
        if len(self.patterns) == 1:
            return self.patterns[0]
        if any(("[" in pattern or "\\" in pattern) for pattern in self.patterns):
            return None
        prefix = _common_prefix(self.patterns)
        suffix = _common_prefix([pattern[len(prefix):][::-1] for pattern in self.patterns])[::-1]
        return f"{prefix}*{suffix}"


def _common_prefix(texts: list[str] | tuple[str, ...]) -> str:
    first, last = min(texts), max(texts)
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length]


def keyspace_channel_pattern(db: int, key_pattern: str) -> str:
    return f"__keyspace@{db}__:{key_pattern}"


def keyevent_channel(db: int, event: str) -> str:
    return f"__keyevent@{db}__:{event}"


# Events that can change or remove a watched key's value; with keyevent
# channels the capture subscribes to exactly these.
KEYEVENT_EVENTS = ("set", "expire", "persist", "del", "unlink", "expired", "evicted",
                   "rename_from", "rename_to", "move_from", "move_to", "restore", "copy_to",
                   "setrange", "append", "incrby", "incrbyfloat", "getdel", "getex")

# notify-keyspace-events classes each channel mode needs: g (generic: del, expire,
# rename, persist, ...), $ (string commands), x (expired), e (evicted).
REQUIRED_CLASSES = "g$xe"


def required_flags(channel_mode: str) -> str:
    return ("K" if channel_mode == "keyspace" else "E") + REQUIRED_CLASSES


def missing_flags(current: str, channel_mode: str) -> str:
    """Return the notify-keyspace-events flags that ``current`` lacks for ``channel_mode``.

    The class alias ``A`` stands for ``g$lshzxet`` (plus newer classes), so it covers g$xe.
    """
    have = set(current)
    if "A" in have:
        have |= set("g$lshzxet")
    return "".join(flag for flag in required_flags(channel_mode) if flag not in have)
