"""The verdict of comparing one key's Redis value with what MediaWiki would read from Kask.

Both sides are reduced to a TS_MW seen time first: Redis values with the
Echo value codec, Kask bodies with the RESTBagOStuff body codec. TS_MW
strings have a fixed width, so comparing them as text compares times.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from capture.reader import KeyState
from echoseen import echo_value
from echoseen.kask_body import ReadBack


class Category(str, Enum):
    """Outcome of one key; see MEANINGS for what each one means to an operator."""

    EQUAL = "equal"
    KASK_NEWER = "kask_newer"
    PLACEHOLDER_IN_REDIS_MISSING_IN_KASK = "placeholder_in_redis_missing_in_kask"
    OLDER_THAN_CUTOFF = "older_than_cutoff"
    REDIS_KEY_GONE = "redis_key_gone"
    UNADDRESSABLE = "unaddressable"
    BAD_VALUE_IN_REDIS = "bad_value_in_redis"
    KASK_OLDER = "kask_older"
    MISSING_IN_KASK = "missing_in_kask"
    UNDECODABLE_IN_KASK = "undecodable_in_kask"


MEANINGS = {
    Category.EQUAL: "Kask holds the same seen time as Redis",
    Category.KASK_NEWER: "Kask is newer than Redis (expected while MediaWiki writes Kask first)",
    Category.PLACEHOLDER_IN_REDIS_MISSING_IN_KASK: "Redis holds the 'nothing seen' placeholder and Kask nothing "
                                                   "readable: MediaWiki reads both as nothing seen",
    Category.OLDER_THAN_CUTOFF: "Redis seen time is before --cutoff, so the key was not meant to be copied",
    Category.REDIS_KEY_GONE: "the key expired or was deleted in Redis between the scan and the comparison",
    Category.UNADDRESSABLE: "Kask cannot store this key (it contains '/', is not UTF-8 or is too long)",
    Category.BAD_VALUE_IN_REDIS: "the Redis value is not a seen time MediaWiki could have written",
    Category.KASK_OLDER: "Kask holds an older seen time than Redis",
    Category.MISSING_IN_KASK: "Kask holds nothing for a key Redis has",
    Category.UNDECODABLE_IN_KASK: "Kask holds a body MediaWiki cannot read (wrong format, bad MAC or payload)",
}

# Categories that fail verify. bad_value_in_redis joins them with --bad-values-fail.
ALWAYS_BAD = frozenset({Category.KASK_OLDER, Category.MISSING_IN_KASK, Category.UNDECODABLE_IN_KASK})


def bad_categories(bad_values_fail: bool) -> frozenset[Category]:
    """Return the categories that fail verify.

    Verify rechecks exactly these keys, because a write still in flight may fix them.
    """
    return ALWAYS_BAD | ({Category.BAD_VALUE_IN_REDIS} if bad_values_fail else frozenset())


@dataclass(frozen=True)
class Verdict:
    category: Category
    redis_seen_time: str | None = None
    kask_seen_time: str | None = None
    detail: str = ""


def redis_side(state: KeyState, max_value_bytes: int) -> Verdict | echo_value.Decoded:
    """Return a final verdict when the Redis side alone decides it, else the decoded Redis value."""
    if not state.exists:
        return Verdict(Category.REDIS_KEY_GONE)
    decoded = state.decoded(max_value_bytes)
    if decoded.seen_time is None:
        return Verdict(Category.BAD_VALUE_IN_REDIS, detail=decoded.error.value if decoded.error else "")
    return decoded


def classify(redis_seen_time: str, stored: ReadBack | None, cutoff_ts_mw: str | None) -> Verdict:
    """Compare a valid Redis seen time with what MediaWiki reads from Kask (None for a 404)."""
    kask_seen_time = stored.seen_time if stored is not None else None

    if redis_seen_time == echo_value.PLACEHOLDER:
        # The replicator never writes a placeholder, and MediaWiki reads a missing or
        # undecodable Kask value the same way as the placeholder: nothing seen.
        if kask_seen_time is None:
            detail = "" if stored is None else f"Kask body unreadable ({stored.unreadable.value})"
            return Verdict(Category.PLACEHOLDER_IN_REDIS_MISSING_IN_KASK, redis_seen_time, None, detail)
        if kask_seen_time == redis_seen_time:
            return Verdict(Category.EQUAL, redis_seen_time, kask_seen_time)
        return Verdict(Category.KASK_NEWER, redis_seen_time, kask_seen_time)

    if stored is None:
        verdict = Verdict(Category.MISSING_IN_KASK, redis_seen_time)
    elif kask_seen_time is None:
        verdict = Verdict(Category.UNDECODABLE_IN_KASK, redis_seen_time, None,
                          stored.unreadable.value if stored.unreadable else "")
    elif kask_seen_time == redis_seen_time:
        return Verdict(Category.EQUAL, redis_seen_time, kask_seen_time)
    elif kask_seen_time > redis_seen_time:
        return Verdict(Category.KASK_NEWER, redis_seen_time, kask_seen_time)
    else:
        verdict = Verdict(Category.KASK_OLDER, redis_seen_time, kask_seen_time)

    # Keys older than the backfill's cutoff were deliberately not copied.
    if cutoff_ts_mw is not None and redis_seen_time < cutoff_ts_mw:
        return Verdict(Category.OLDER_THAN_CUTOFF, redis_seen_time, kask_seen_time,
                       f"was {verdict.category.value}")
    return verdict
