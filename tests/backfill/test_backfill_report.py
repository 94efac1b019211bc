"""`--report` against a generated keyspace whose distribution is known, and the errors at startup."""

from __future__ import annotations

import bisect
import subprocess
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from backfill_helpers import AS_OF, ECHOSEEN, parse_args, read_events, run_backfill, spec, write_config

from capture import backfill
from capture.patterns import KeyFilter
from devstack.keyspace import AGE_BUCKETS_DAYS, expected_entries, expected_unrelated, load
from devstack.process import free_port
from echoseen import echo_value
from echoseen.errors import EXIT_OK, EXIT_UNAVAILABLE, ConfigError, ServiceUnavailable

pytestmark = pytest.mark.stack

BUCKETS = [name for name, _ in AGE_BUCKETS_DAYS] + ["older"]


def expected_rows(keyspace, cutoff_ts_mw: str = "") -> dict[tuple[str, str], dict]:
    """Per (wiki, type): keys, age buckets, no-TTL, placeholders and keys before the cutoff, from the generator."""
    as_of_s = int(keyspace.as_of.timestamp())
    bounds_s = [days * 86_400 for _, days in AGE_BUCKETS_DAYS]
    rows: dict[tuple[str, str], dict] = {}
    for entry in expected_entries(keyspace):
        wiki, _, _, seen_type, _, _ = entry.key.split(":")
        row = rows.setdefault((wiki, seen_type), {"keys": 0, "no_ttl": 0, "placeholders": 0, "before_cutoff": 0,
                                                  "age_buckets": dict.fromkeys(BUCKETS, 0)})
        row["keys"] += 1
        if entry.ttl_ms is None:
            row["no_ttl"] += 1
        seen = echo_value.decode(entry.value).seen_time
        if seen == echo_value.PLACEHOLDER:
            row["placeholders"] += 1
            continue
        age_s = as_of_s - echo_value.epoch_s_from_ts_mw(seen)
        row["age_buckets"][BUCKETS[bisect.bisect_left(bounds_s, age_s)]] += 1
        if seen < cutoff_ts_mw:
            row["before_cutoff"] += 1
    return rows


def test_report_matches_generator(bf_config, redis_client, unique_wiki):
    wikis = (unique_wiki, f"{unique_wiki}b", "global")
    keyspace = spec(30_000, wikis)
    counts = load(redis_client, keyspace).counts

    status, report = run_backfill(bf_config, "--report", "--as-of", AS_OF.isoformat(), "--cutoff", "2026-03-01")

    assert status == EXIT_OK
    assert report["status"] == "complete"
    assert report["as_of"] == "2026-11-20T12:00:00Z"
    rows = {(row["wiki"], row["type"]): row for row in report["rows"]}
    expected = expected_rows(keyspace, "20260301000000")
    for place, wanted in expected.items():
        row = rows[place]
        assert row["keys"] == wanted["keys"], place
        assert row["age_buckets"] == wanted["age_buckets"], place
        assert row["no_ttl"] == wanted["no_ttl"], place
        assert row["placeholders"] == wanted["placeholders"], place
        assert row["before_cutoff"] == wanted["before_cutoff"], place
        assert row["bad_values"] == 0, place

    # The generator's own totals agree with the report's.
    echo_rows = [rows[place] for place in expected]
    for wiki, by_type in counts.echo_keys_by_wiki.items():
        for seen_type, number in by_type.items():
            assert rows[(wiki, seen_type)]["keys"] == number
    for bucket in BUCKETS:
        assert sum(row["age_buckets"][bucket] for row in echo_rows) == counts.age_buckets[bucket], bucket
    assert sum(row["placeholders"] for row in echo_rows) == counts.placeholders
    assert sum(row["no_ttl"] for row in echo_rows) == counts.echo_keys_without_ttl

    # Keys the configured patterns match that are not Echo-shaped are reported apart, not as some wiki's keys.
    watched = KeyFilter.from_config(bf_config)
    look_alikes = [entry for entry in expected_unrelated(keyspace) if watched.matches(entry.key.encode())]
    other = rows.get(("(other)", "(other)"), {"keys": 0})
    assert other["keys"] == len(look_alikes)
    assert set(rows) - set(expected) <= {("(other)", "(other)")}

    # What Kask does to lifetimes, with the counts it applies to.
    copied = [entry for entry in expected_entries(keyspace)
              if echo_value.decode(entry.value).seen_time not in (None, echo_value.PLACEHOLDER)
              and echo_value.decode(entry.value).seen_time >= "20260301000000"]
    lifetimes = report["kask_lifetimes"]
    assert lifetimes["would_copy"] == len(copied) + other.get("would_copy", 0)
    assert lifetimes["without_redis_ttl"] == sum(1 for entry in copied if entry.ttl_ms is None)
    assert "default_ttl" in lifetimes["explanation"]
    assert "not carried over" in lifetimes["explanation"]

    # A report publishes nothing.
    assert read_events(bf_config) == []


def test_report_counts_bad_values(bf_config, redis_client, unique_wiki):
    load(redis_client, spec(1_000, (unique_wiki,), unrelated_fraction=0))
    redis_client.set(f"{unique_wiki}:echo:seen:alert:time:999999991", b"garbage")
    redis_client.set(f"{unique_wiki}:echo:seen:alert:time:999999992", b"")
    redis_client.rpush(f"{unique_wiki}:echo:seen:message:time:999999993", b"a", b"b")

    status, report = run_backfill(bf_config, "--report", "--as-of", AS_OF.isoformat())

    assert status == EXIT_OK
    assert report["bad_values"] == {"empty": 1, "not_a_string": 1, "not_php_serialized": 1}
    samples = report["bad_value_samples"]
    assert samples["not_a_string"][0]["key"] == f"{unique_wiki}:echo:seen:message:time:999999993"
    assert samples["not_a_string"][0]["type"] == "list"
    assert samples["not_a_string"][0]["size"] == 2
    assert samples["not_php_serialized"][0]["size"] == len(b"garbage")
    assert report["totals"]["bad_values"] == 3


def test_report_text_output(bf_config, redis_client, unique_wiki, capsys):
    load(redis_client, spec(1_000, (unique_wiki,), unrelated_fraction=0))

    status = backfill.run(parse_args("--report", "--cutoff", "2026-01-01", "--as-of", AS_OF.isoformat()), bf_config)

    assert status == EXIT_OK
    text = capsys.readouterr().out
    assert f"{unique_wiki}  alert" in text
    assert "before cutoff" in text
    assert "The cutoff would skip" in text
    assert "Lifetimes in Kask" in text
    assert "keys that would be copied" in text


def test_report_relative_to_now_by_default(bf_config, redis_client, unique_wiki):
    load(redis_client, spec(500, (unique_wiki,), unrelated_fraction=0))
    before = datetime.now(timezone.utc).replace(microsecond=0)

    status, report = run_backfill(bf_config, "--report")

    assert status == EXIT_OK
    as_of = datetime.strptime(report["as_of"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert before <= as_of <= datetime.now(timezone.utc)


def test_missing_topic_named(make_config, redis_server, kafka_server, redis_client):
    config = make_config(redis_server=redis_server, kafka_server=kafka_server)

    with pytest.raises(ConfigError) as failure:
        run_backfill(config)

    message = str(failure.value)
    assert config.kafka.topic in message
    assert "does not exist" in message
    assert "[kafka] topic" in message


def test_kafka_unreachable_named(make_config, redis_server, redis_client):
    config = make_config(redis_server=redis_server)
    config = replace(config, kafka=replace(config.kafka, bootstrap_servers=f"127.0.0.1:{free_port()}"))

    with pytest.raises(ServiceUnavailable) as failure:
        run_backfill(config)

    assert "bootstrap_servers" in str(failure.value)


def test_redis_unreachable_exit_status(make_config, tmp_path):
    config = make_config()
    config = replace(config, redis=replace(config.redis, servers=(f"redis://127.0.0.1:{free_port()}/0",),
                                           socket_timeout_s=1.0))
    config_path = write_config(config, tmp_path / "backfill.toml")

    result = subprocess.run([ECHOSEEN, "backfill", "--config", str(config_path)], capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == EXIT_UNAVAILABLE
    assert "cannot connect to Redis" in result.stderr
    assert "[redis] servers" in result.stderr
