"""Generate a realistic Echo seen-time keyspace in Redis for tests, the demo and benchmarks.

What is generated
-----------------
Echo seen-time keys, as MediaWiki's Echo extension writes them to its MainStash:

- ``<wikidb>:echo:seen:<type>:time:<local user id>`` and
  ``global:echo:seen:<type>:time:<central id>``, with ``<type>`` ``alert`` or ``message``;
- the value is PHP ``serialize()`` of a 14-digit TS_MW timestamp in UTC, e.g.
  ``s:14:"20190523123456";`` (22 bytes);
- Echo writes with ``SETEX key 31536000 value``, and it started setting TTLs on
  ``KeyspaceSpec.ttl_start`` (2019-10-18 by default). A key whose seen time T is on or after
  that date gets the TTL it would have left at ``as_of``: T + one year - as_of. Keys whose TTL
  would have run out by ``as_of`` are not written, because they would have expired in
  production. A key written before ``ttl_start`` has no TTL. So keys older than one year
  survive only when they were written before ``ttl_start``, as in production.
- ``19700101000001`` is Echo's "nothing seen" placeholder. A fraction of the keys
  (``placeholder_fraction``) hold it. The TTL rule uses the key's write time for them too,
  so placeholders exist both with and without a TTL.

Unrelated MainStash keys are mixed in, one after each run of Echo keys, so that scans meet
them everywhere. The exact set, ``<n>`` being the running number of the unrelated key:

- ``string``: ``global:session:<32 hex digits>`` (a PHP-serialized array, TTL one day) and
  ``<wiki>:edit-stash:<n>`` (a PHP-serialized string, TTL 1 to 24 hours);
- ``counter``: ``<wiki>:page-view-count:<n>``, a bare decimal integer as MediaWiki stores
  integers, no TTL;
- ``hash``: ``<wiki>:jobqueue-stats:<n>`` with the fields ``pushed``, ``claimed``,
  ``abandoned``, no TTL (it stands for other clients that share the server);
- ``near_miss``: keys that a loose pattern such as ``*:echo:seen:*:time:*`` would match but
  that are not Echo seen times, each holding a serialized seen time with a TTL under one
  year, see ``NEAR_MISS_SHAPES``.

Users and keys
--------------
``KeyspaceSpec.keys`` counts Echo seen-time KEYS: exactly that many are written
(placeholders included, expired keys not). Users are generated one after another until that
many keys survive the TTL rule, so the last user may get only part of its keys. The number of
users comes from ``summarize(spec)`` or ``load()``. Each user has:

- a central id (ids increase with gaps, as deleted or unattached accounts leave holes);
- a home wiki, picked with weight 1/rank from the local wikis in ``wikis`` (the first is the
  most popular), and each other local wiki with ``other_wiki_probability``, each with its
  own local user id;
- the ``global`` keyspace (keyed by the central id) with ``global_probability`` when
  ``global`` is in ``wikis``;
- in each of these places: alert and message keys (``both_types_probability``), otherwise
  one of the two, alert three times out of four;
- a "last active" age drawn from ``age_mixture``; each key's seen time is that age plus an
  exponential offset with a mean of two days.

The default age mixture: 50 % active users (exponential, mean 7 days), 20 % occasional users
(uniform over the last 365 days) and 30 % dormant users (uniform over the last 10 years).
With ``as_of`` in late 2026, most dormant keys fall between ``ttl_start`` and one year ago
and are skipped as expired.

Determinism: the entries are a function of every field of the spec. ``as_of`` defaults to
the current time, so pass it explicitly to get the same values in two runs. Echo keys and
unrelated keys come from two random streams, so ``unrelated_fraction`` does not change the
Echo keys. Generation is streamed: memory does not grow with ``keys``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Literal, NamedTuple

import redis

log = logging.getLogger(__name__)

ECHO_TYPES = ("alert", "message")
GLOBAL_KEYSPACE = "global"
ECHO_TTL_S = 31_536_000
PLACEHOLDER_TS = "19700101000001"
ECHO_TTL_START = date(2019, 10, 18)
DEFAULT_WIKIS = ("enwiki", "dewiki", "frwiki", "commonswiki", "wikidatawiki", GLOBAL_KEYSPACE)

# The generator's own strict pattern of an Echo seen-time key. Wiki db names are lower-case
# letters, digits and underscores, and user ids are positive integers without leading zeros.
ECHO_KEY_PATTERN = re.compile(
    r"^(?P<wiki>[a-z0-9_]+):echo:seen:(?P<type>alert|message):time:(?P<user_id>[1-9][0-9]*)$"
)
_WIKI_NAME = re.compile(r"^[a-z0-9_]+$")
_TS_MW = re.compile(r"^[0-9]{14}$")

# Keys that a loose pattern would take for Echo seen times. ``{wiki}`` is a wiki from the
# spec (``global`` included) and ``{n}`` the running number of the unrelated key.
NEAR_MISS_SHAPES = (
    "{wiki}:echo:seen:alert:count:{n}",
    "{wiki}:echo:seenx:alert:time:{n}",
    "{wiki}:echo:seen:notice:time:{n}",
    "{wiki}:echo:seen:all:time:{n}",
    "{wiki}:echo:seen:ALERT:time:{n}",
    "{wiki}:echo:seen:message:time:{n}:extra",
    "{wiki}:echo:seen:alert:time:u{n}",
    "echo:seen:alert:time:{n}",
)

UNRELATED_KINDS = ("string", "counter", "hash", "near_miss")
# One unrelated key takes the next kind of this cycle: 7 strings, 5 counters, 4 hashes and
# 4 near misses in 20. A cycle, unlike a random draw, puts every kind into small keyspaces.
_UNRELATED_CYCLE = (
    "string", "counter", "near_miss", "hash", "string",
    "counter", "string", "hash", "near_miss", "string",
    "counter", "string", "hash", "counter", "near_miss",
    "string", "counter", "hash", "string", "near_miss",
)

# Upper bounds of the age buckets in days, relative to as_of; older keys go to "older".
AGE_BUCKETS_DAYS = (("le_30d", 30), ("le_90d", 90), ("le_1y", 365), ("le_2y", 730))
AGE_BUCKET_OLDER = "older"

_DAY_S = 86_400
_KEY_OFFSET_MEAN_S = 2 * _DAY_S


@dataclass(frozen=True)
class AgeComponent:
    """One part of the mixture that the users' "last active" ages are drawn from."""

    weight: float
    shape: Literal["exponential", "uniform"]
    # Mean age for "exponential", width of the range that starts at as_of for "uniform".
    scale_days: float


DEFAULT_AGE_MIXTURE = (
    AgeComponent(0.5, "exponential", 7),
    AgeComponent(0.2, "uniform", 365),
    AgeComponent(0.3, "uniform", 3650),
)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class KeyspaceSpec:
    """The shape of a generated keyspace; see the module documentation for the model."""

    keys: int = 200_000
    wikis: tuple[str, ...] = DEFAULT_WIKIS
    seed: int = 1
    as_of: datetime = field(default_factory=_utc_now)
    ttl_start: date = ECHO_TTL_START
    ttl_s: int = ECHO_TTL_S
    # Keys whose remaining TTL at as_of is below this are skipped like expired ones, so that
    # no key expires while a load or a test runs. 0 keeps every key that has any TTL left.
    min_ttl_s: int = 3600
    placeholder_fraction: float = 0.02
    age_mixture: tuple[AgeComponent, ...] = DEFAULT_AGE_MIXTURE
    global_probability: float = 0.5
    other_wiki_probability: float = 0.08
    both_types_probability: float = 0.5
    # Unrelated keys per Echo key: 0.1 writes floor(keys * 0.1) unrelated keys.
    unrelated_fraction: float = 0.1
    db: int = 0

    def __post_init__(self) -> None:
        if self.keys < 0:
            raise ValueError(f"keys must be 0 or more, got {self.keys}")

        if not self.wikis:
            raise ValueError("wikis is empty; name at least one wiki db or 'global'")
        if len(set(self.wikis)) != len(self.wikis):
            raise ValueError(f"wikis contains duplicates: {self.wikis}")
        for wiki in self.wikis:
            _check_wiki(wiki)
        object.__setattr__(self, "wikis", tuple(self.wikis))

        if self.as_of.tzinfo is None:
            raise ValueError(f"as_of must be timezone-aware, got the naive datetime {self.as_of}")
        object.__setattr__(self, "as_of", self.as_of.astimezone(timezone.utc))

        if self.ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {self.ttl_s}")
        if self.min_ttl_s < 0:
            raise ValueError(f"min_ttl_s must be 0 or more, got {self.min_ttl_s}")

        for name in ("placeholder_fraction", "global_probability", "other_wiki_probability",
                     "both_types_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.unrelated_fraction < 0:
            raise ValueError(f"unrelated_fraction must be 0 or more, got {self.unrelated_fraction}")

        if not self.age_mixture:
            raise ValueError("age_mixture is empty; give at least one AgeComponent")
        for component in self.age_mixture:
            if component.weight <= 0 or component.scale_days <= 0:
                raise ValueError(f"age component {component} needs a positive weight and scale_days")
            if component.shape not in ("exponential", "uniform"):
                raise ValueError(f"age component shape must be 'exponential' or 'uniform', got {component.shape!r}")

        if self.db < 0:
            raise ValueError(f"db must be 0 or more, got {self.db}")

    @property
    def local_wikis(self) -> tuple[str, ...]:
        return tuple(wiki for wiki in self.wikis if wiki != GLOBAL_KEYSPACE)

    @property
    def unrelated_keys(self) -> int:
        """Number of unrelated keys written next to the Echo keys."""
        return math.floor(self.keys * self.unrelated_fraction)


class Entry(NamedTuple):
    """One Echo seen-time key as it is written: ``ttl_ms`` is the remaining TTL at as_of."""

    key: str
    value: bytes
    ttl_ms: int | None


class UnrelatedEntry(NamedTuple):
    """One unrelated key; ``value`` is a dict of fields for a hash, bytes otherwise."""

    key: str
    kind: str
    value: bytes | dict[bytes, bytes]
    ttl_ms: int | None


# ---------------------------------------------------------------------------------------
# Formatting helpers


def _check_wiki(wiki: str) -> None:
    if not _WIKI_NAME.match(wiki):
        raise ValueError(
            f"invalid wiki db name {wiki!r}: use lower-case letters, digits and underscores, "
            f"or {GLOBAL_KEYSPACE!r} for the cross-wiki keyspace"
        )


def format_ts_mw(moment: datetime) -> str:
    """Format a timezone-aware datetime as a 14-digit MediaWiki timestamp (TS_MW) in UTC."""
    if moment.tzinfo is None:
        raise ValueError(f"format_ts_mw needs a timezone-aware datetime, got the naive {moment}")
    utc = moment.astimezone(timezone.utc)
    return (f"{utc.year:04d}{utc.month:02d}{utc.day:02d}"
            f"{utc.hour:02d}{utc.minute:02d}{utc.second:02d}")


def _ts_mw_from_epoch(epoch_s: int) -> str:
    # Faster than going through datetime, which matters at millions of keys.
    t = time.gmtime(epoch_s)
    return "%04d%02d%02d%02d%02d%02d" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


class _SeenValueFormatter:
    """Serialize epoch seconds as Echo values, caching the date part of each day seen."""

    def __init__(self) -> None:
        self._day_prefixes: dict[int, bytes] = {}

    def __call__(self, epoch_s: int) -> bytes:
        day, second_of_day = divmod(epoch_s, _DAY_S)
        prefix = self._day_prefixes.get(day)
        if prefix is None:
            t = time.gmtime(day * _DAY_S)
            prefix = b's:14:"%04d%02d%02d' % (t.tm_year, t.tm_mon, t.tm_mday)
            self._day_prefixes[day] = prefix
        hours, rest = divmod(second_of_day, 3600)
        minutes, seconds = divmod(rest, 60)
        return b'%b%02d%02d%02d";' % (prefix, hours, minutes, seconds)


def php_serialize_ts(ts: str) -> bytes:
    """Serialize a TS_MW string as PHP's serialize() does: ``s:14:"<ts>";``."""
    if not _TS_MW.match(ts):
        raise ValueError(f"invalid TS_MW timestamp {ts!r}: expected 14 digits, YYYYMMDDHHMMSS")
    return b's:14:"' + ts.encode("ascii") + b'";'


def echo_key(wiki: str, seen_type: str, user_id: int) -> str:
    """Build the Redis key of one seen time; ``wiki`` is a wiki db name or ``global``."""
    _check_wiki(wiki)
    if seen_type not in ECHO_TYPES:
        raise ValueError(f"invalid seen-time type {seen_type!r}: expected one of {ECHO_TYPES}")
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 1:
        raise ValueError(f"invalid user id {user_id!r}: expected a positive integer")
    return f"{wiki}:echo:seen:{seen_type}:time:{user_id}"


def _php_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b's:%d:"%s";' % (len(raw), raw)


# ---------------------------------------------------------------------------------------
# Generation


class _Item(NamedTuple):
    # "echo" (written), "expired" (skipped by the TTL rule) or "unrelated".
    category: str
    key: str
    value: bytes | dict[bytes, bytes]
    ttl_ms: int | None
    # Echo items only: seen time in epoch seconds (None for a placeholder) and user ordinal.
    wiki: str = ""
    seen_type: str = ""
    seen_at_s: int | None = None
    user_index: int = 0
    # Unrelated items only: one of UNRELATED_KINDS.
    unrelated_kind: str = ""


def _epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


class _AgeSampler:
    def __init__(self, mixture: Sequence[AgeComponent]) -> None:
        weights = [component.weight for component in mixture]
        self._cumulative = [sum(weights[: i + 1]) for i in range(len(weights))]
        self._total = self._cumulative[-1]
        self._components = [(c.shape == "exponential", c.scale_days * _DAY_S) for c in mixture]

    def sample_s(self, uniform: Callable[[], float]) -> int:
        index = bisect.bisect_right(self._cumulative, uniform() * self._total)
        is_exponential, scale_s = self._components[min(index, len(self._components) - 1)]
        if is_exponential:
            return int(-math.log(1.0 - uniform()) * scale_s)
        return int(uniform() * scale_s)


def _generate_echo(spec: KeyspaceSpec) -> Iterator[_Item]:
    """Yield Echo items, written and expired, until ``spec.keys`` have been written."""
    # Draws use rng.random() directly: randrange() and expovariate() cost several times more,
    # which adds up to tens of seconds at ten million keys.
    uniform = random.Random(spec.seed).random
    ages = _AgeSampler(spec.age_mixture)
    local_wikis = spec.local_wikis
    has_global = GLOBAL_KEYSPACE in spec.wikis
    home_cumulative = [sum(1.0 / (rank + 1) for rank in range(i + 1)) for i in range(len(local_wikis))]
    next_local_id = {wiki: 0 for wiki in local_wikis}
    both_types_below = spec.both_types_probability
    alert_only_below = both_types_below + (1.0 - both_types_below) * 0.75
    format_value = _SeenValueFormatter()

    as_of_ms = _epoch_ms(spec.as_of)
    as_of_s = as_of_ms // 1000
    ttl_start_s = _epoch_ms(datetime(spec.ttl_start.year, spec.ttl_start.month, spec.ttl_start.day,
                                     tzinfo=timezone.utc)) // 1000
    ttl_ms = spec.ttl_s * 1000
    min_ttl_ms = max(1, spec.min_ttl_s * 1000)
    placeholder_value = php_serialize_ts(PLACEHOLDER_TS)

    written = 0
    central_id = 0
    user_index = 0
    while written < spec.keys:
        user_index += 1
        central_id += 1 + int(uniform() * 3)
        user_age_s = ages.sample_s(uniform)

        # Step 1: the places where this user has seen times, each with its user id.
        places: list[tuple[str, int]] = []
        if local_wikis:
            home = bisect.bisect_right(home_cumulative, uniform() * home_cumulative[-1])
            home = min(home, len(local_wikis) - 1)
            for position, wiki in enumerate(local_wikis):
                if position == home or uniform() < spec.other_wiki_probability:
                    next_local_id[wiki] += 1 + int(uniform() * 4)
                    places.append((wiki, next_local_id[wiki]))
        if has_global and (not local_wikis or uniform() < spec.global_probability):
            places.append((GLOBAL_KEYSPACE, central_id))

        # Step 2: the keys of each place, each with its own seen time.
        for wiki, user_id in places:
            roll = uniform()
            if roll < both_types_below:
                types = ECHO_TYPES
            elif roll < alert_only_below:
                types = ("alert",)
            else:
                types = ("message",)
            for seen_type in types:
                offset_s = int(-math.log(1.0 - uniform()) * _KEY_OFFSET_MEAN_S)
                seen_at_s = as_of_s - user_age_s - offset_s
                is_placeholder = uniform() < spec.placeholder_fraction
                key = f"{wiki}:echo:seen:{seen_type}:time:{user_id}"

                # Step 3: the TTL rule. Echo set no TTL before ttl_start.
                remaining_ms: int | None = None
                if seen_at_s >= ttl_start_s:
                    remaining_ms = seen_at_s * 1000 + ttl_ms - as_of_ms
                    if remaining_ms < min_ttl_ms:
                        yield _Item("expired", key, b"", remaining_ms, wiki, seen_type, seen_at_s, user_index)
                        continue

                if is_placeholder:
                    yield _Item("echo", key, placeholder_value, remaining_ms, wiki, seen_type, None, user_index)
                else:
                    yield _Item("echo", key, format_value(seen_at_s), remaining_ms, wiki, seen_type,
                                seen_at_s, user_index)
                written += 1
                if written == spec.keys:
                    return


def _make_unrelated(spec: KeyspaceSpec, rng: random.Random, number: int, as_of_s: int) -> _Item:
    kind = _UNRELATED_CYCLE[number % len(_UNRELATED_CYCLE)]
    wiki = spec.wikis[rng.randrange(len(spec.wikis))]

    if kind == "string":
        if number % 2 == 0:
            key = f"global:session:{rng.getrandbits(128):032x}"
            user_id = rng.randrange(1, 50_000_000)
            value = (b'a:2:{s:6:"userId";i:%d;s:7:"expires";i:%d;}' % (user_id, as_of_s + _DAY_S))
            return _Item("unrelated", key, value, _DAY_S * 1000, unrelated_kind=kind)
        key = f"{wiki}:edit-stash:{number}"
        value = _php_string(f"stashed edit {rng.getrandbits(48):012x}")
        return _Item("unrelated", key, value, rng.randrange(3600, _DAY_S) * 1000, unrelated_kind=kind)

    if kind == "counter":
        key = f"{wiki}:page-view-count:{number}"
        return _Item("unrelated", key, b"%d" % rng.randrange(1, 1_000_000), None, unrelated_kind=kind)

    if kind == "hash":
        key = f"{wiki}:jobqueue-stats:{number}"
        fields = {
            b"pushed": b"%d" % rng.randrange(0, 100_000),
            b"claimed": b"%d" % rng.randrange(0, 100_000),
            b"abandoned": b"%d" % rng.randrange(0, 100),
        }
        return _Item("unrelated", key, fields, None, unrelated_kind=kind)

    shape = NEAR_MISS_SHAPES[_near_miss_ordinal(number) % len(NEAR_MISS_SHAPES)]
    key = shape.format(wiki=wiki, n=number)
    remaining_s = rng.randrange(3600, spec.ttl_s) if spec.ttl_s > 3600 else spec.ttl_s
    written_at_s = as_of_s - (spec.ttl_s - remaining_s)
    value = php_serialize_ts(_ts_mw_from_epoch(written_at_s))
    return _Item("unrelated", key, value, remaining_s * 1000, unrelated_kind=kind)


_NEAR_MISS_SLOTS = tuple(i for i, kind in enumerate(_UNRELATED_CYCLE) if kind == "near_miss")


def _near_miss_ordinal(number: int) -> int:
    # Counts the near misses before this one, so that consecutive near misses take
    # consecutive shapes and every shape appears once the keyspace has eight of them.
    cycles, slot = divmod(number, len(_UNRELATED_CYCLE))
    return cycles * len(_NEAR_MISS_SLOTS) + _NEAR_MISS_SLOTS.index(slot)


def _generate(spec: KeyspaceSpec) -> Iterator[_Item]:
    """Yield every item of the keyspace in load order: Echo keys with unrelated keys between them."""
    unrelated_rng = random.Random(f"echoseen-keyspace-unrelated-{spec.seed}")
    as_of_s = _epoch_ms(spec.as_of) // 1000
    written = 0
    unrelated = 0
    for item in _generate_echo(spec):
        yield item
        if item.category != "echo":
            continue
        written += 1
        while unrelated < math.floor(written * spec.unrelated_fraction):
            yield _make_unrelated(spec, unrelated_rng, unrelated, as_of_s)
            unrelated += 1


def expected_entries(spec: KeyspaceSpec) -> Iterator[Entry]:
    """Yield the Echo seen-time keys that ``load(spec)`` writes, in the order it writes them.

    Placeholders are included and skipped (expired) keys are not. ``ttl_ms`` is the remaining
    TTL at ``spec.as_of``, None for a key without TTL.
    """
    for item in _generate(spec):
        if item.category == "echo":
            yield Entry(item.key, item.value, item.ttl_ms)


def expected_unrelated(spec: KeyspaceSpec) -> Iterator[UnrelatedEntry]:
    """Yield the unrelated keys that ``load(spec)`` writes, in the order it writes them."""
    for item in _generate(spec):
        if item.category == "unrelated":
            yield UnrelatedEntry(item.key, item.unrelated_kind, item.value, item.ttl_ms)


def sample_echo_keys(spec: KeyspaceSpec, count: int) -> list[str]:
    """Return ``count`` Echo keys of the keyspace picked uniformly at random (reservoir sampling).

    Returns every key when the keyspace has fewer than ``count``. Deterministic for a spec.
    It generates the whole keyspace once, so it takes about as long as generating the
    entries for ``load``, and keeps only ``count`` keys in memory.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    rng = random.Random(f"echoseen-keyspace-sample-{spec.seed}")
    sample: list[str] = []
    for seen, entry in enumerate(expected_entries(spec)):
        if seen < count:
            sample.append(entry.key)
        else:
            slot = rng.randrange(seen + 1)
            if slot < count:
                sample[slot] = entry.key
    return sample


# ---------------------------------------------------------------------------------------
# Counting and loading


@dataclass
class KeyspaceCounts:
    """Counts of what a keyspace holds; ``summarize`` and ``load`` fill it the same way.

    ``age_buckets`` counts Echo keys by the age of their stored seen time at as_of. A bucket
    contains the ages up to its bound and above the previous one. Placeholders are not in any
    bucket because their value carries no time, so the buckets add up to
    ``echo_keys - placeholders``.
    """

    echo_keys: int = 0
    users: int = 0
    echo_keys_by_wiki: dict[str, dict[str, int]] = field(default_factory=dict)
    placeholders: int = 0
    placeholders_with_ttl: int = 0
    echo_keys_without_ttl: int = 0
    expired_skipped: int = 0
    unrelated_by_kind: dict[str, int] = field(default_factory=dict)
    age_buckets: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, spec: KeyspaceSpec) -> "KeyspaceCounts":
        return cls(
            echo_keys_by_wiki={wiki: {seen_type: 0 for seen_type in ECHO_TYPES} for wiki in spec.wikis},
            unrelated_by_kind={kind: 0 for kind in UNRELATED_KINDS},
            age_buckets={name: 0 for name, _ in AGE_BUCKETS_DAYS} | {AGE_BUCKET_OLDER: 0},
        )

    @property
    def unrelated_keys(self) -> int:
        return sum(self.unrelated_by_kind.values())

    @property
    def total_keys(self) -> int:
        """Number of keys written: Echo keys and unrelated keys."""
        return self.echo_keys + self.unrelated_keys

    def to_dict(self) -> dict:
        return {
            "echo_keys": self.echo_keys,
            "users": self.users,
            "echo_keys_by_wiki": self.echo_keys_by_wiki,
            "placeholders": self.placeholders,
            "placeholders_with_ttl": self.placeholders_with_ttl,
            "echo_keys_without_ttl": self.echo_keys_without_ttl,
            "expired_skipped": self.expired_skipped,
            "unrelated_keys": self.unrelated_keys,
            "unrelated_by_kind": self.unrelated_by_kind,
            "age_buckets": self.age_buckets,
            "total_keys": self.total_keys,
        }


class _Counter:
    """Adds items to a KeyspaceCounts; bucket bounds are fixed once per spec."""

    def __init__(self, spec: KeyspaceSpec) -> None:
        self.counts = KeyspaceCounts.empty(spec)
        self._as_of_s = _epoch_ms(spec.as_of) // 1000
        self._bucket_bounds_s = [days * _DAY_S for _, days in AGE_BUCKETS_DAYS]
        self._bucket_names = [name for name, _ in AGE_BUCKETS_DAYS] + [AGE_BUCKET_OLDER]
        self._last_user = 0

    def add(self, item: _Item) -> None:
        counts = self.counts
        if item.category == "unrelated":
            counts.unrelated_by_kind[item.unrelated_kind] += 1
            return
        if item.category == "expired":
            counts.expired_skipped += 1
            return

        counts.echo_keys += 1
        counts.echo_keys_by_wiki[item.wiki][item.seen_type] += 1
        if item.user_index != self._last_user:
            counts.users += 1
            self._last_user = item.user_index
        if item.ttl_ms is None:
            counts.echo_keys_without_ttl += 1
        if item.seen_at_s is None:
            counts.placeholders += 1
            if item.ttl_ms is not None:
                counts.placeholders_with_ttl += 1
            return
        age_s = self._as_of_s - item.seen_at_s
        bucket = bisect.bisect_left(self._bucket_bounds_s, age_s)
        counts.age_buckets[self._bucket_names[bucket]] += 1


def summarize(spec: KeyspaceSpec) -> KeyspaceCounts:
    """Count what ``load(spec)`` would write, without Redis; takes one generation pass."""
    counter = _Counter(spec)
    for item in _generate(spec):
        counter.add(item)
    return counter.counts


@dataclass(frozen=True)
class LoadResult:
    """Outcome of ``load``: the counts of what it wrote, and its speed in keys (Echo and unrelated) per second."""

    counts: KeyspaceCounts
    elapsed_s: float
    keys_per_s: float

    def to_dict(self) -> dict:
        return self.counts.to_dict() | {
            "elapsed_s": round(self.elapsed_s, 3),
            "keys_per_s": round(self.keys_per_s),
        }


def _client_db(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def _encode_command(item: _Item) -> bytes:
    """Encode the write of one item as a RESP command: SET, SET with PX, or HSET."""
    key = item.key.encode()
    if isinstance(item.value, dict):
        parts = [b"HSET", key]
        for field_name, field_value in item.value.items():
            parts.append(field_name)
            parts.append(field_value)
        encoded = [b"*%d\r\n" % len(parts)]
        for part in parts:
            encoded.append(b"$%d\r\n%b\r\n" % (len(part), part))
        return b"".join(encoded)
    if item.ttl_ms is None:
        return (b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                % (len(key), key, len(item.value), item.value))
    ttl = b"%d" % item.ttl_ms
    return (b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$2\r\nPX\r\n$%d\r\n%b\r\n"
            % (len(key), key, len(item.value), item.value, len(ttl), ttl))


def _write_pipelined(connection: redis.connection.AbstractConnection, spec: KeyspaceSpec,
                     counter: _Counter, batch_size: int) -> None:
    # One batch stays in flight: Redis executes batch N while Python generates batch N + 1,
    # and the replies of batch N are read just before batch N + 1 is sent.
    in_flight = 0
    batch: list[bytes] = []
    for item in _generate(spec):
        counter.add(item)
        if item.category == "expired":
            continue
        batch.append(_encode_command(item))
        if len(batch) >= batch_size:
            for _ in range(in_flight):
                connection.read_response()
            connection.send_packed_command([b"".join(batch)])
            in_flight = len(batch)
            batch.clear()

    if batch:
        connection.send_packed_command([b"".join(batch)])
        in_flight += len(batch)
    for _ in range(in_flight):
        connection.read_response()


def load(client: redis.Redis, spec: KeyspaceSpec, *, batch_size: int = 10_000,
         flush: bool = False) -> LoadResult:
    """Write the keyspace of ``spec`` into Redis and return what was written.

    Writes go out in non-transactional pipelines of ``batch_size`` commands on one
    connection: ``SET`` with ``PX`` for keys with a TTL, plain ``SET`` otherwise, ``HSET``
    for hashes. The commands are encoded here rather than through redis-py's Pipeline, which
    made the load about three times slower. Loading the same spec twice leaves the same
    data. ``flush`` empties the database first (FLUSHDB). The client must be connected to
    ``spec.db``. An error reply from Redis raises redis.ResponseError.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    client_db = _client_db(client)
    if client_db != spec.db:
        raise ValueError(
            f"the Redis client uses database {client_db} but the spec asks for database {spec.db}; "
            f"connect the client to database {spec.db} or change KeyspaceSpec.db"
        )
    if flush:
        client.flushdb()

    log.info("loading %d Echo keys and %d unrelated keys into Redis db %d (seed %d, as of %s)",
             spec.keys, spec.unrelated_keys, spec.db, spec.seed, spec.as_of.isoformat())
    counter = _Counter(spec)
    started = time.monotonic()
    connection = client.connection_pool.get_connection()
    try:
        _write_pipelined(connection, spec, counter, batch_size)
    except BaseException:
        # Replies may still be unread, so the connection must not go back to the pool as is.
        connection.disconnect()
        raise
    finally:
        client.connection_pool.release(connection)

    elapsed_s = time.monotonic() - started
    counts = counter.counts
    rate = counts.total_keys / elapsed_s if elapsed_s > 0 else 0.0
    log.info("loaded %d keys (%d Echo, %d unrelated, %d skipped as expired) in %.1f s, %.0f keys/s",
             counts.total_keys, counts.echo_keys, counts.unrelated_keys, counts.expired_skipped,
             elapsed_s, rate)
    return LoadResult(counts, elapsed_s, rate)


# ---------------------------------------------------------------------------------------
# Live writes


@dataclass(frozen=True)
class LiveWriteResult:
    """Outcome of a LiveWriter run: the last value written to each key, the number of writes and the timing."""

    last_values: dict[str, bytes]
    writes: int
    elapsed_s: float
    # Number of writes per written TS_MW value, i.e. per second of the (offset) clock.
    writes_by_second: dict[str, int]

    @property
    def rate_per_s(self) -> float:
        return self.writes / self.elapsed_s if self.elapsed_s > 0 else 0.0


class LiveWriter:
    """Write seen times "now" to random existing keys at a steady rate, as Echo does.

    Every write is ``SETEX key ttl_s <serialized TS_MW>``. The writes of one tick go out in
    one pipeline, and each tick sends the writes that are due by then, so the rate stays
    steady when a tick is late. The value is the wall clock plus ``clock_offset_s`` (negative
    for an application server whose clock runs behind), truncated to the second.

    ``run()`` blocks; ``stop()`` ends it early from another thread.
    """

    def __init__(self, client: redis.Redis, keys: Sequence[str], rate_per_s: float, duration_s: float,
                 *, clock_offset_s: float = 0.0, seed: int = 0, tick_s: float = 0.05,
                 ttl_s: int = ECHO_TTL_S) -> None:
        if not keys:
            raise ValueError("keys is empty; pass existing Echo keys, e.g. from sample_echo_keys()")
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        if duration_s < 0:
            raise ValueError(f"duration_s must be 0 or more, got {duration_s}")
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self._client = client
        self._keys = list(keys)
        self._rate_per_s = rate_per_s
        self._duration_s = duration_s
        self._clock_offset_s = clock_offset_s
        self._rng = random.Random(seed)
        self._tick_s = tick_s
        self._ttl_s = ttl_s
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> LiveWriteResult:
        total = round(self._rate_per_s * self._duration_s)
        last_values: dict[str, bytes] = {}
        writes_by_second: dict[str, int] = {}
        pipe = self._client.pipeline(transaction=False)
        written = 0
        tick = 0
        started = time.monotonic()
        finished = started

        while written < total and not self._stop.is_set():
            # Write number i is due at i / rate seconds after the start.
            elapsed_s = time.monotonic() - started
            due = min(total, math.floor(elapsed_s * self._rate_per_s) + 1)
            if due > written:
                ts = _ts_mw_from_epoch(int(time.time() + self._clock_offset_s))
                value = php_serialize_ts(ts)
                for _ in range(due - written):
                    key = self._keys[self._rng.randrange(len(self._keys))]
                    # SETEX as Echo sends it; redis-py's setex() is deprecated in favour of SET EX.
                    pipe.execute_command("SETEX", key, self._ttl_s, value)
                    last_values[key] = value
                writes_by_second[ts] = writes_by_second.get(ts, 0) + due - written
                pipe.execute()
                written = due
                finished = time.monotonic()

            tick += 1
            delay_s = started + tick * self._tick_s - time.monotonic()
            if delay_s > 0 and written < total:
                self._stop.wait(delay_s)

        elapsed_s = finished - started
        log.info("live writer wrote %d seen times to %d keys in %.1f s (requested %.0f/s for %.1f s)",
                 written, len(last_values), elapsed_s, self._rate_per_s, self._duration_s)
        return LiveWriteResult(last_values, written, elapsed_s, writes_by_second)


def write_live(client: redis.Redis, keys: Sequence[str], rate_per_s: float, duration_s: float,
               **options) -> LiveWriteResult:
    """Run a LiveWriter to the end; ``options`` are LiveWriter's keyword arguments."""
    return LiveWriter(client, keys, rate_per_s, duration_s, **options).run()


# ---------------------------------------------------------------------------------------
# Command line


def _parse_as_of(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment


def _format_counts(result: LoadResult) -> str:
    counts = result.counts
    lines = [
        f"Echo keys:          {counts.echo_keys}",
        f"users:              {counts.users}",
        f"placeholders:       {counts.placeholders} ({counts.placeholders_with_ttl} with TTL)",
        f"Echo keys, no TTL:  {counts.echo_keys_without_ttl}",
        f"skipped as expired: {counts.expired_skipped}",
        f"unrelated keys:     {counts.unrelated_keys}",
        f"total keys:         {counts.total_keys}",
        f"elapsed:            {result.elapsed_s:.1f} s ({result.keys_per_s:.0f} keys/s)",
        "Echo keys by wiki:",
    ]
    for wiki, by_type in counts.echo_keys_by_wiki.items():
        lines.append(f"  {wiki:<16} " + "  ".join(f"{t} {n}" for t, n in by_type.items()))
    lines.append("unrelated keys by kind: " + ", ".join(f"{k} {n}" for k, n in counts.unrelated_by_kind.items()))
    lines.append("Echo keys by age:       " + ", ".join(f"{k} {n}" for k, n in counts.age_buckets.items()))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.keyspace",
        description="Load a generated Echo seen-time keyspace into Redis and print what was written.",
    )
    parser.add_argument("--url", required=True,
                        help="Redis URL; its path selects the database, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--keys", type=int, default=KeyspaceSpec.keys,
                        help="number of Echo seen-time keys to write (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default %(default)s)")
    parser.add_argument("--as-of", type=_parse_as_of, default=None,
                        help="ISO 8601 time the keyspace is generated for, UTC unless given (default: now)")
    parser.add_argument("--wikis", default=",".join(DEFAULT_WIKIS),
                        help="comma-separated wiki db names, 'global' for the cross-wiki keyspace "
                             "(default %(default)s)")
    parser.add_argument("--placeholder-fraction", type=float, default=KeyspaceSpec.placeholder_fraction,
                        help="fraction of Echo keys that hold the placeholder (default %(default)s)")
    parser.add_argument("--unrelated-fraction", type=float, default=KeyspaceSpec.unrelated_fraction,
                        help="unrelated keys per Echo key (default %(default)s)")
    parser.add_argument("--min-ttl-s", type=int, default=KeyspaceSpec.min_ttl_s,
                        help="skip keys with less remaining TTL than this, in seconds (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="commands per pipeline (default %(default)s)")
    parser.add_argument("--flush", action="store_true", help="empty the database (FLUSHDB) before loading")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = redis.Redis.from_url(args.url)
    options = {} if args.as_of is None else {"as_of": args.as_of}
    try:
        spec = KeyspaceSpec(
            keys=args.keys,
            wikis=tuple(wiki.strip() for wiki in args.wikis.split(",") if wiki.strip()),
            seed=args.seed,
            placeholder_fraction=args.placeholder_fraction,
            unrelated_fraction=args.unrelated_fraction,
            min_ttl_s=args.min_ttl_s,
            db=_client_db(client),
            **options,
        )
    except ValueError as exc:
        parser.error(str(exc))

    result = load(client, spec, batch_size=args.batch_size, flush=args.flush)
    if args.json:
        print(json.dumps(result.to_dict() | {"seed": spec.seed, "as_of": spec.as_of.isoformat()}, indent=2))
    else:
        print(_format_counts(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
