"""Tests of the Echo keyspace generator against a private redis-server."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import tracemalloc
from collections import Counter
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
import redis

from devstack import keyspace
from devstack.keyspace import (
    ECHO_KEY_PATTERN,
    NEAR_MISS_SHAPES,
    PLACEHOLDER_TS,
    UNRELATED_KINDS,
    KeyspaceSpec,
    echo_key,
    expected_entries,
    expected_unrelated,
    format_ts_mw,
    php_serialize_ts,
    summarize,
)

AS_OF = datetime(2026, 6, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)
# One year after Echo started setting TTLs, so keys between one and two years old exist.
AS_OF_2020 = datetime(2020, 6, 1, tzinfo=timezone.utc)
SPEC = KeyspaceSpec(keys=20_000, seed=7, as_of=AS_OF)
VALUE_PATTERN = re.compile(rb'^s:14:"([0-9]{14})";$')
DAY_S = 86_400


def epoch_ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def seen_at_s(value: bytes) -> int | None:
    """Return the seen time of a value in epoch seconds, None for the placeholder."""
    ts = VALUE_PATTERN.match(value).group(1).decode()
    if ts == PLACEHOLDER_TS:
        return None
    return int(datetime.strptime(ts, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc).timestamp())


@pytest.fixture
def redis_db(keyspace_redis):
    client = keyspace_redis.client()
    client.flushall()
    yield client
    client.close()


def scan_all(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(count=5000))


# ---------------------------------------------------------------------------------------
# Helpers


def test_format_ts_mw_converts_to_utc():
    moment = datetime(2019, 5, 23, 14, 34, 56, tzinfo=timezone(timedelta(hours=2)))

    assert format_ts_mw(moment) == "20190523123456"


def test_format_ts_mw_rejects_naive():
    with pytest.raises(ValueError, match="timezone-aware"):
        format_ts_mw(datetime(2019, 5, 23, 12, 34, 56))


def test_php_serialize_ts_exact_bytes():
    value = php_serialize_ts("20190523123456")

    assert value == b's:14:"20190523123456";'
    assert len(value) == 22


@pytest.mark.parametrize("bad", ["2019052312345", "201905231234567", "2019-05-23T12", ""])
def test_php_serialize_ts_rejects_bad(bad):
    with pytest.raises(ValueError, match="14 digits"):
        php_serialize_ts(bad)


def test_echo_key_shapes():
    assert echo_key("enwiki", "alert", 12345) == "enwiki:echo:seen:alert:time:12345"
    assert echo_key("global", "message", 7) == "global:echo:seen:message:time:7"


@pytest.mark.parametrize("wiki, seen_type, user_id", [
    ("enwiki", "notice", 1),
    ("en:wiki", "alert", 1),
    ("EnWiki", "alert", 1),
    ("enwiki", "alert", 0),
    ("enwiki", "alert", "5"),
])
def test_echo_key_rejects_bad(wiki, seen_type, user_id):
    with pytest.raises(ValueError):
        echo_key(wiki, seen_type, user_id)


def test_spec_rejects_naive_as_of():
    with pytest.raises(ValueError, match="timezone-aware"):
        KeyspaceSpec(as_of=datetime(2026, 1, 1))


@pytest.mark.parametrize("changes", [
    {"keys": -1},
    {"placeholder_fraction": 1.5},
    {"unrelated_fraction": -0.1},
    {"wikis": ()},
    {"wikis": ("enwiki", "enwiki")},
    {"wikis": ("en wiki",)},
    {"ttl_s": 0},
])
def test_spec_rejects_bad(changes):
    with pytest.raises(ValueError):
        replace(SPEC, **changes)


# ---------------------------------------------------------------------------------------
# Generated entries


def test_entries_deterministic_for_seed():
    first = list(expected_entries(SPEC))
    second = list(expected_entries(replace(SPEC)))
    other_seed = list(expected_entries(replace(SPEC, seed=8)))

    assert first == second
    assert list(expected_unrelated(SPEC)) == list(expected_unrelated(SPEC))
    assert first != other_seed


def test_entries_independent_of_unrelated_fraction():
    assert list(expected_entries(SPEC)) == list(expected_entries(replace(SPEC, unrelated_fraction=0.5)))


def test_entries_count_and_shapes():
    entries = list(expected_entries(SPEC))
    keys = [entry.key for entry in entries]

    assert len(entries) == SPEC.keys
    assert len(set(keys)) == len(keys)
    for entry in entries:
        assert ECHO_KEY_PATTERN.match(entry.key), entry.key
        assert VALUE_PATTERN.match(entry.value), entry.value
        assert len(entry.value) == 22
    wikis = {ECHO_KEY_PATTERN.match(key).group("wiki") for key in keys}
    assert wikis == set(SPEC.wikis)


def test_entries_seen_times_not_after_as_of():
    as_of_s = epoch_ms(AS_OF) // 1000
    for entry in expected_entries(SPEC):
        seen_s = seen_at_s(entry.value)
        if seen_s is not None:
            assert seen_s <= as_of_s, entry


def test_users_may_have_several_keys():
    places_by_user = {}
    for item in keyspace._generate(SPEC):
        if item.category == "echo":
            places_by_user.setdefault(item.user_index, []).append((item.wiki, item.seen_type))
    counts = summarize(SPEC)

    assert len(places_by_user) == counts.users
    assert counts.users < SPEC.keys
    assert any(len(places) == 1 for places in places_by_user.values())
    # Both types in one place, and local and global keys for one user, are both common.
    assert any(len({wiki for wiki, _ in places}) < len(places) for places in places_by_user.values())
    assert any({wiki for wiki, _ in places} >= {"enwiki", "global"} for places in places_by_user.values())
    assert any(len({wiki for wiki, _ in places} - {"global"}) >= 2 for places in places_by_user.values())


@pytest.mark.parametrize("as_of", [AS_OF, AS_OF_2020])
def test_ttl_rules(as_of):
    spec = replace(SPEC, as_of=as_of)
    as_of_ms = epoch_ms(as_of)
    ttl_start_s = epoch_ms(datetime(2019, 10, 18, tzinfo=timezone.utc)) // 1000
    with_ttl = 0
    without_ttl = 0

    for entry in expected_entries(spec):
        seen_s = seen_at_s(entry.value)
        if entry.ttl_ms is None:
            without_ttl += 1
        else:
            with_ttl += 1
            assert entry.ttl_ms >= spec.min_ttl_s * 1000, entry
            assert entry.ttl_ms <= spec.ttl_s * 1000, entry
        if seen_s is None:
            continue
        if seen_s < ttl_start_s:
            assert entry.ttl_ms is None, entry
        else:
            assert entry.ttl_ms == (seen_s + spec.ttl_s) * 1000 - as_of_ms, entry
        if as_of_ms // 1000 - seen_s > spec.ttl_s:
            # Older than one year: only keys written before TTLs existed survive.
            assert entry.ttl_ms is None, entry

    assert with_ttl > 0
    assert without_ttl > 0


def test_ttl_min_zero_keeps_only_live_keys():
    spec = replace(SPEC, min_ttl_s=0)

    for entry in expected_entries(spec):
        if entry.ttl_ms is not None:
            assert entry.ttl_ms > 0, entry
    assert summarize(spec).expired_skipped > 0


def test_placeholder_fraction_roughly_as_configured():
    spec = replace(SPEC, placeholder_fraction=0.1)
    placeholders = [e for e in expected_entries(spec) if e.value == php_serialize_ts(PLACEHOLDER_TS)]
    counts = summarize(spec)

    assert 0.08 * spec.keys < len(placeholders) < 0.12 * spec.keys
    assert counts.placeholders == len(placeholders)
    assert 0 < counts.placeholders_with_ttl < counts.placeholders
    assert counts.placeholders_with_ttl == sum(1 for e in placeholders if e.ttl_ms is not None)


def test_placeholder_fraction_zero():
    spec = replace(SPEC, placeholder_fraction=0.0)

    assert summarize(spec).placeholders == 0


def test_unrelated_keys_present_and_not_echo():
    unrelated = list(expected_unrelated(SPEC))
    echo_keys = {entry.key for entry in expected_entries(SPEC)}
    kinds = Counter(entry.kind for entry in unrelated)
    near_misses = [entry.key for entry in unrelated if entry.kind == "near_miss"]

    assert len(unrelated) == SPEC.unrelated_keys == 2000
    assert set(kinds) == set(UNRELATED_KINDS)
    assert len({entry.key for entry in unrelated}) == len(unrelated)
    for entry in unrelated:
        assert not ECHO_KEY_PATTERN.match(entry.key), entry.key
        assert entry.key not in echo_keys
    for shape in NEAR_MISS_SHAPES:
        shape_pattern = re.compile("^" + re.escape(shape).replace(r"\{wiki\}", "[a-z0-9_]+").replace(r"\{n\}", "[0-9]+") + "$")
        assert any(shape_pattern.match(key) for key in near_misses), shape


def test_unrelated_keys_mixed_in():
    # The first unrelated key comes after the tenth Echo key at a fraction of 0.1, and the
    # unrelated keys are spread over the whole keyspace rather than written at the end.
    items = list(keyspace._generate(SPEC))
    positions = [i for i, item in enumerate(items) if item.category == "unrelated"]
    written = [item for item in items if item.category != "expired"]

    assert written[10].category == "unrelated"
    assert positions[-1] > len(items) * 0.9
    assert positions[len(positions) // 2] < len(items) * 0.6


def test_unrelated_every_kind_in_small_keyspace():
    spec = replace(SPEC, keys=200)

    assert {entry.kind for entry in expected_unrelated(spec)} == set(UNRELATED_KINDS)


def test_age_buckets_match_entries():
    counts = summarize(SPEC)
    as_of_s = epoch_ms(AS_OF) // 1000
    expected = Counter()
    for entry in expected_entries(SPEC):
        seen_s = seen_at_s(entry.value)
        if seen_s is None:
            continue
        age_days = (as_of_s - seen_s) / DAY_S
        if age_days <= 30:
            expected["le_30d"] += 1
        elif age_days <= 90:
            expected["le_90d"] += 1
        elif age_days <= 365:
            expected["le_1y"] += 1
        elif age_days <= 730:
            expected["le_2y"] += 1
        else:
            expected["older"] += 1

    assert counts.age_buckets == {name: expected[name] for name in counts.age_buckets}
    assert sum(counts.age_buckets.values()) + counts.placeholders == counts.echo_keys
    assert counts.age_buckets["le_30d"] > counts.echo_keys / 3
    assert counts.age_buckets["older"] > 0


def test_age_buckets_between_one_and_two_years():
    # In mid-2020, keys from one to two years back were written before TTLs existed and survive.
    counts = summarize(replace(SPEC, as_of=AS_OF_2020))
    recent_counts = summarize(SPEC)

    assert counts.age_buckets["le_2y"] > 0
    assert recent_counts.age_buckets["le_2y"] == 0


def test_summarize_counts_consistent():
    counts = summarize(SPEC)
    entries = list(expected_entries(SPEC))
    by_wiki = Counter()
    for entry in entries:
        match = ECHO_KEY_PATTERN.match(entry.key)
        by_wiki[(match.group("wiki"), match.group("type"))] += 1

    assert counts.echo_keys == SPEC.keys
    assert counts.echo_keys_without_ttl == sum(1 for entry in entries if entry.ttl_ms is None)
    for wiki, by_type in counts.echo_keys_by_wiki.items():
        for seen_type, count in by_type.items():
            assert count == by_wiki[(wiki, seen_type)], (wiki, seen_type)
    assert counts.total_keys == SPEC.keys + SPEC.unrelated_keys
    assert counts.expired_skipped > 0


def test_entries_iteration_memory_light():
    spec = replace(SPEC, keys=100_000)
    tracemalloc.start()
    try:
        count = sum(1 for _ in expected_entries(spec))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == spec.keys
    # 100,000 entries kept in memory would take well over 10 MB.
    assert peak_bytes < 2_000_000


def test_sample_echo_keys_deterministic():
    sample = keyspace.sample_echo_keys(SPEC, 100)
    keys = {entry.key for entry in expected_entries(SPEC)}

    assert sample == keyspace.sample_echo_keys(SPEC, 100)
    assert len(sample) == len(set(sample)) == 100
    assert set(sample) <= keys
    # A uniform sample reaches beyond the first tenth of the keyspace.
    first_tenth = {entry.key for entry in itertools.islice(expected_entries(SPEC), SPEC.keys // 10)}
    assert not set(sample) <= first_tenth


# ---------------------------------------------------------------------------------------
# Loading into Redis


def test_load_counts_match_redis(redis_db):
    result = keyspace.load(redis_db, SPEC)
    counts = result.counts
    keys = scan_all(redis_db)

    by_wiki = Counter()
    echo_keys = []
    other_keys = []
    for key in keys:
        match = ECHO_KEY_PATTERN.match(key.decode())
        if match:
            by_wiki[(match.group("wiki"), match.group("type"))] += 1
            echo_keys.append(key)
        else:
            other_keys.append(key)

    pipe = redis_db.pipeline(transaction=False)
    for key in echo_keys:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute()
    values = replies[0::2]
    ttls = replies[1::2]
    for key in other_keys:
        pipe.type(key)
    types = Counter(pipe.execute())

    assert len(keys) == redis_db.dbsize() == counts.total_keys
    assert len(echo_keys) == counts.echo_keys == SPEC.keys
    for wiki, by_type in counts.echo_keys_by_wiki.items():
        for seen_type, count in by_type.items():
            assert by_wiki[(wiki, seen_type)] == count, (wiki, seen_type)
    assert sum(1 for v in values if v == php_serialize_ts(PLACEHOLDER_TS)) == counts.placeholders
    assert sum(1 for t in ttls if t == -1) == counts.echo_keys_without_ttl
    assert len(other_keys) == counts.unrelated_keys
    assert types[b"hash"] == counts.unrelated_by_kind["hash"]
    assert types[b"string"] == (counts.unrelated_by_kind["string"] + counts.unrelated_by_kind["counter"]
                                + counts.unrelated_by_kind["near_miss"])
    assert result.keys_per_s > 0
    assert counts.to_dict() == summarize(SPEC).to_dict()


def test_load_values_and_ttls_match_expected(redis_db):
    started_ms = time.time() * 1000
    keyspace.load(redis_db, SPEC)
    entries = list(expected_entries(SPEC))
    pipe = redis_db.pipeline(transaction=False)
    for entry in entries:
        pipe.get(entry.key)
        pipe.pttl(entry.key)
    replies = pipe.execute()
    # The TTLs count from the load, so they have shrunk by at most the time since it started.
    slack_ms = time.time() * 1000 - started_ms + 50

    for entry, value, ttl_ms in zip(entries, replies[0::2], replies[1::2]):
        assert value == entry.value, entry
        if entry.ttl_ms is None:
            assert ttl_ms == -1, entry
        else:
            assert entry.ttl_ms - slack_ms <= ttl_ms <= entry.ttl_ms, (entry, ttl_ms)


def test_load_unrelated_match_expected(redis_db):
    keyspace.load(redis_db, SPEC)

    for entry in expected_unrelated(SPEC):
        if entry.kind == "hash":
            assert redis_db.hgetall(entry.key) == entry.value, entry
        else:
            assert redis_db.get(entry.key) == entry.value, entry
        if entry.ttl_ms is None:
            assert redis_db.pttl(entry.key) == -1, entry
        else:
            assert 0 < redis_db.pttl(entry.key) <= entry.ttl_ms, entry
        if entry.kind == "counter":
            assert redis_db.object("encoding", entry.key) == b"int", entry


def test_load_twice_same_state(redis_db):
    spec = replace(SPEC, keys=2000)
    keyspace.load(redis_db, spec)
    first = {key: redis_db.dump(key) for key in scan_all(redis_db)}
    keyspace.load(redis_db, spec)
    second = {key: redis_db.dump(key) for key in scan_all(redis_db)}

    assert first == second


def test_load_small_batches(redis_db):
    spec = replace(SPEC, keys=1000)
    result = keyspace.load(redis_db, spec, batch_size=7)

    assert redis_db.dbsize() == result.counts.total_keys == 1100


def test_load_flush_removes_other_keys(redis_db):
    redis_db.set("leftover", "1")
    keyspace.load(redis_db, replace(SPEC, keys=100), flush=True)

    assert redis_db.exists("leftover") == 0


def test_load_rejects_other_db(redis_db):
    with pytest.raises(ValueError, match="database 0 but the spec asks for database 3"):
        keyspace.load(redis_db, replace(SPEC, db=3))


def test_load_into_other_db(keyspace_redis):
    client = keyspace_redis.client(db=2)
    client.flushall()
    try:
        keyspace.load(client, replace(SPEC, keys=100, db=2))

        assert client.dbsize() == 110
        assert keyspace_redis.client(db=0).dbsize() == 0
    finally:
        client.close()


def test_load_error_reply_raises(redis_db):
    # SET overwrites a key of any type, but HSET on a string gets a WRONGTYPE error reply.
    spec = replace(SPEC, keys=100)
    first_hash = next(entry for entry in expected_unrelated(spec) if entry.kind == "hash")
    redis_db.set(first_hash.key, "a string")

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        keyspace.load(redis_db, spec)
    assert redis_db.ping()


def test_cli_prints_json(keyspace_redis, capsys):
    client = keyspace_redis.client()
    client.flushall()
    try:
        status = keyspace.main(["--url", keyspace_redis.url(), "--keys", "3000", "--seed", "3",
                                "--as-of", "2026-06-01T12:00:00", "--json"])
        output = json.loads(capsys.readouterr().out)

        assert status == 0
        assert output["echo_keys"] == 3000
        assert output["total_keys"] == client.dbsize() == 3300
        assert output["as_of"] == "2026-06-01T12:00:00+00:00"
        expected = summarize(replace(SPEC, keys=3000, seed=3, as_of=datetime(2026, 6, 1, 12, tzinfo=timezone.utc)))
        for name, value in expected.to_dict().items():
            assert output[name] == value, name
    finally:
        client.close()


def test_cli_prints_text(keyspace_redis, capsys):
    status = keyspace.main(["--url", keyspace_redis.url(), "--keys", "100", "--flush"])
    output = capsys.readouterr().out

    assert status == 0
    assert "Echo keys:          100" in output
    assert "unrelated keys by kind: string" in output


# ---------------------------------------------------------------------------------------
# Live writes


def test_live_writer_rate_and_values(redis_db):
    spec = replace(SPEC, keys=5000)
    keyspace.load(redis_db, spec)
    candidates = keyspace.sample_echo_keys(spec, 300)
    rate_per_s = 1000
    duration_s = 3.0
    started_s = time.time()

    result = keyspace.write_live(redis_db, candidates, rate_per_s, duration_s, seed=5)
    finished_s = time.time()

    assert result.writes == 3000
    # Paced, not sent in one burst: the last write is due 2.999 s after the first.
    assert result.elapsed_s >= duration_s - 0.1
    assert sum(result.writes_by_second.values()) == result.writes
    assert len(result.writes_by_second) >= 3
    # A late tick catches up, but no second gets twice the rate unless a tick is a second late.
    assert max(result.writes_by_second.values()) <= 2 * rate_per_s
    assert set(result.last_values) <= set(candidates)
    assert len(result.last_values) > 250
    for key, value in result.last_values.items():
        assert redis_db.get(key) == value, key
        assert 31_536_000_000 - 60_000 < redis_db.pttl(key) <= 31_536_000_000, key
        assert int(started_s) <= seen_at_s(value) <= finished_s, (key, value)
    assert redis_db.dbsize() == 5500


def test_live_writer_clock_offset(redis_db):
    keys = [echo_key("enwiki", "alert", user_id) for user_id in range(1, 51)]
    started_s = time.time()

    result = keyspace.write_live(redis_db, keys, 200, 0.5, clock_offset_s=-3600)
    finished_s = time.time()

    assert result.writes == 100
    for key, value in result.last_values.items():
        assert redis_db.get(key) == value
        assert int(started_s) - 3600 <= seen_at_s(value) <= finished_s - 3600


def test_live_writer_stop_early(redis_db):
    writer = keyspace.LiveWriter(redis_db, ["enwiki:echo:seen:alert:time:1"], 100, 60)
    results = []
    thread = threading.Thread(target=lambda: results.append(writer.run()))
    thread.start()
    time.sleep(0.5)
    writer.stop()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert 0 < results[0].writes < 6000
    assert redis_db.get("enwiki:echo:seen:alert:time:1") == results[0].last_values["enwiki:echo:seen:alert:time:1"]


def test_live_writer_rejects_bad():
    with pytest.raises(ValueError, match="keys is empty"):
        keyspace.LiveWriter(None, [], 10, 1)
    with pytest.raises(ValueError, match="rate_per_s"):
        keyspace.LiveWriter(None, ["k"], 0, 1)


def test_spec_defaults_match_echo():
    assert KeyspaceSpec().ttl_start == date(2019, 10, 18)
    assert KeyspaceSpec().ttl_s == 31_536_000
