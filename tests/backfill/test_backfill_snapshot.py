"""The snapshot against the real stack: what reaches Kafka, and what the replicator makes of it in Kask."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from backfill_helpers import (AS_OF, BAD_STRING_VALUES, expected_by_key, kask_bodies, key_counts, publishable, read_events,
                      run_backfill, seen_time, spec)
from confluent_kafka import Consumer, TopicPartition

from devstack.cassandra import cql_session
from devstack.keyspace import LiveWriter, expected_entries, expected_unrelated, load, sample_echo_keys
from echoseen import echo_value, events
from echoseen.kafka import admin_client, create_topics
from echoseen.kask_body import BodyCodec, BodyFormat

pytestmark = pytest.mark.stack

KASK_HTTP_SAMPLE = 2000
KASK_KEYS = 10_000
LIVE_KEYS = 8_000

# Tests about one rule load keyspaces without unrelated keys (unrelated_fraction=0); which keys count as
# Echo keys is the subject of test_snapshot_publishes_every_key.


def add_bad_values(client, wiki: str) -> dict[bytes, str]:
    """Write one bad value per reason under watched keys; return key -> expected reason."""
    bad = {}
    for index, (reason, value) in enumerate(BAD_STRING_VALUES.items()):
        key = f"{wiki}:echo:seen:alert:time:{900_000_000 + index}".encode()
        client.set(key, value)
        bad[key] = reason
    hash_key = f"{wiki}:echo:seen:message:time:900000100".encode()
    client.hset(hash_key, mapping={"seen": "20190523123456"})
    bad[hash_key] = "not_a_string"
    return bad


def end_offsets(config) -> dict[int, int]:
    reader = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": "backfill-end-offsets"})
    try:
        topic = config.kafka.topic
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        return {index: reader.get_watermark_offsets(TopicPartition(topic, index), timeout=10)[1]
                for index in partitions}
    finally:
        reader.close()


def committed_offsets(config) -> dict[int, int]:
    reader = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers,
                       "group.id": config.replicator.group_id})
    try:
        topic = config.kafka.topic
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        entries = reader.committed([TopicPartition(topic, index) for index in partitions], timeout=10)
        return {entry.partition: entry.offset for entry in entries}
    finally:
        reader.close()


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def kask_rows(cassandra_server, prefixes: tuple[str, ...]) -> dict[bytes, bytes]:
    """Every row of Kask's table whose key starts with one of the prefixes, read from Cassandra directly."""
    rows = {}
    with cql_session(cassandra_server, "kask") as session:
        for row in session.execute('SELECT key, value FROM "values"'):
            if row.key.startswith(prefixes):
                rows[row.key.encode()] = bytes(row.value)
    return rows


def test_snapshot_publishes_every_key(make_config, redis_server, kafka_server, redis_client, unique_wiki):
    config = make_config(redis_server=redis_server, kafka_server=kafka_server,
                         backfill={"checkpoint_interval_s": 0.5, "ping_sample_interval_s": 0.2})
    create_topics(config, admin_client(config))
    wikis = (f"{unique_wiki}a", f"{unique_wiki}b", "global")
    keyspace = spec(200_000, wikis)
    loaded = load(redis_client, keyspace)
    assert loaded.counts.echo_keys == 200_000
    assert loaded.counts.unrelated_keys > 0
    expected = expected_by_key(keyspace)
    bad = add_bad_values(redis_client, wikis[0])
    placeholders = {key for key, value in expected.items() if seen_time(value) == echo_value.PLACEHOLDER}
    assert placeholders, "the keyspace should hold placeholders"

    status, summary = run_backfill(config)

    # The summary: complete, placeholders skipped, each bad value counted under its reason with its key.
    assert status == 0, summary
    assert summary["status"] == "complete"
    totals = summary["totals"]
    assert totals["skipped"].get("placeholder") == len(placeholders)
    for reason in set(bad.values()):
        assert totals["bad_values"].get(reason) == list(bad.values()).count(reason), (reason, totals["bad_values"])
    sampled = {item["key"].encode() for items in summary["bad_value_samples"].values() for item in items}
    assert set(bad) <= sampled
    hash_sample = summary["bad_value_samples"]["not_a_string"][0]
    assert hash_sample["type"] == "hash"
    assert hash_sample["size_unit"] == "elements"
    ping = summary["servers"][0]["ping"]
    assert ping["before"]["samples"] > 0
    assert ping["during"]["samples"] > 0
    assert summary["this_run"]["published"] == totals["published"]

    # Kafka: every Echo key with a seen time, once or more, with the value Redis holds.
    decoded = read_events(config)
    counts = key_counts(decoded)
    wanted = publishable(expected)
    missing = wanted - set(counts)
    assert not missing, f"{len(missing)} Echo keys never published, e.g. {sorted(missing)[:5]}"
    assert not placeholders & set(counts), "placeholders were published"
    assert not set(bad) & set(counts), "bad values were published"
    for event in decoded:
        assert event.origin == events.ORIGIN_SNAPSHOT
        assert event.op == events.OP_UPSERT
        assert event.notification is None
    wrong = [event.key for event in decoded if event.key in expected and event.value != expected[event.key]]
    assert not wrong, f"published values differ from Redis, e.g. {wrong[:5]}"
    duplicates = sum(count - 1 for count in counts.values())
    print(f"published {len(decoded)} events for {len(counts)} keys, {duplicates} duplicates")
    assert totals["published"] == len(decoded)

    # Keys that are not Echo seen times never reach the topic, including those that merely look like them.
    unrelated = {entry.key.encode() for entry in expected_unrelated(keyspace)}
    published_unrelated = sorted(unrelated & set(counts))
    assert not published_unrelated, (f"{len(published_unrelated)} keys that are not Echo seen times were "
                                     f"published, e.g. {published_unrelated[:5]}")
    assert set(counts) == wanted


def test_snapshot_reaches_kask(make_config, redis_server, kafka_server, kask_server, cassandra_server, redis_client,
                               unique_wiki, tmp_path):
    from helpers import Daemon

    config = make_config(redis_server=redis_server, kafka_server=kafka_server, kask_server=kask_server,
                         backfill={"checkpoint_interval_s": 0.5, "ping_sample_interval_s": 0})
    create_topics(config, admin_client(config))
    # Unique wiki names and no global keys: Kask is shared by every test of the session.
    # NOTE: 10,000 keys, not 200,000: the replicator stored about 320 keys/s on this 2-core machine under load,
    # so the full keyspace would take about ten minutes here.
    wikis = (unique_wiki, f"{unique_wiki}b")
    keyspace = spec(KASK_KEYS, wikis, unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)
    wanted = publishable(expected)
    placeholders = set(expected) - wanted

    status, summary = run_backfill(config)
    assert status == 0, summary

    # NOTE: the replicator runs as a subprocess (`echoseen replicate`), as an operator would run it.
    replicator = Daemon(tmp_path / "replicator", "replicate", config).start()
    try:
        replicator.wait_ready()
        target = end_offsets(config)
        wait_until(lambda: committed_offsets(config) == target, 180, "the replicator to commit every record")
    finally:
        assert replicator.stop() == 0, replicator.log()[-3000:]

    # Every key is stored with the body MediaWiki reads back; placeholders are not stored.
    codec = BodyCodec(BodyFormat(config.kask.body_format))
    stored = kask_rows(cassandra_server, tuple(f"{wiki}:" for wiki in wikis))
    absent = wanted - set(stored)
    assert not absent, f"{len(absent)} keys missing in Kask, e.g. {sorted(absent)[:5]}"
    wrong_bodies = [key for key in wanted if stored[key] != codec.encode(seen_time(expected[key]))]
    assert not wrong_bodies, f"Kask bodies differ, e.g. {[(key, stored[key]) for key in wrong_bodies[:3]]}"
    assert not placeholders & set(stored), "placeholders reached Kask"
    # The same through Kask's HTTP API, for a sample.
    sample = sorted(wanted)[::max(1, len(wanted) // KASK_HTTP_SAMPLE)]
    bodies = kask_bodies(config.kask.url, sample)
    wrong_reads = [key for key in sample if codec.decode(bodies[key]).seen_time != seen_time(expected[key])]
    assert not wrong_reads, f"Kask returns other seen times, e.g. {wrong_reads[:5]}"


def test_cutoff_skips_older_keys(bf_config, redis_client, unique_wiki):
    keyspace = spec(20_000, (unique_wiki, "global"), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)
    cutoff = "2026-06-01"
    older = {key for key, value in expected.items()
             if seen_time(value) not in (None, echo_value.PLACEHOLDER) and seen_time(value) < "20260601000000"}
    assert older, "the keyspace should hold keys older than the cutoff"

    status, summary = run_backfill(bf_config, "--cutoff", cutoff)

    assert status == 0, summary
    assert summary["selection"]["cutoff"] == "2026-06-01T00:00:00Z"
    assert summary["totals"]["skipped"].get("before_cutoff") == len(older)
    published = set(key_counts(read_events(bf_config)))
    assert published == publishable(expected, "20260601000000")
    assert not older & published


def test_cutoff_from_config_with_zone(bf_config, redis_client, unique_wiki):
    keyspace = spec(5_000, (unique_wiki,), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)
    # 02:00 at UTC+02:00 is midnight UTC.
    config = replace(bf_config, backfill=replace(bf_config.backfill, cutoff="2026-10-01T02:00:00+02:00"))

    status, summary = run_backfill(config)

    assert status == 0, summary
    assert summary["selection"]["cutoff"] == "2026-10-01T00:00:00Z"
    assert set(key_counts(read_events(config))) == publishable(expected, "20261001000000")


def test_canary_wiki_only(bf_config, redis_client, unique_wiki):
    other = f"{unique_wiki}other"
    keyspace = spec(20_000, (unique_wiki, other, "global"), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)

    status, summary = run_backfill(bf_config, "--wiki", unique_wiki)

    assert status == 0, summary
    assert summary["selection"]["scan_match"] == f"{unique_wiki}:echo:seen:*:time:*"
    published = set(key_counts(read_events(bf_config)))
    chosen = {key: value for key, value in expected.items() if key.startswith(f"{unique_wiki}:".encode())}
    assert chosen
    assert published == publishable(chosen)


def test_canary_two_wikis_and_pattern(bf_config, redis_client, unique_wiki):
    other = f"{unique_wiki}other"
    keyspace = spec(10_000, (unique_wiki, other, "global"), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)

    status, summary = run_backfill(bf_config, "--wiki", "global", "--pattern", f"{other}:echo:seen:message:*")

    assert status == 0, summary
    published = set(key_counts(read_events(bf_config)))
    chosen = {key: value for key, value in expected.items()
              if key.startswith(b"global:") or key.startswith(f"{other}:echo:seen:message:".encode())}
    assert published == publishable(chosen)


def test_live_writes_during_backfill(make_config, redis_server, kafka_server, kask_server, redis_client, unique_wiki,
                                     tmp_path):
    from helpers import Daemon

    config = make_config(redis_server=redis_server, kafka_server=kafka_server, kask_server=kask_server,
                         backfill={"checkpoint_interval_s": 0.5, "ping_sample_interval_s": 0,
                                   "max_keys_per_s": 5_000})
    create_topics(config, admin_client(config))
    keyspace = spec(LIVE_KEYS, (unique_wiki, f"{unique_wiki}b"), seed=11, unrelated_fraction=0)
    load(redis_client, keyspace)
    live_keys = sample_echo_keys(keyspace, LIVE_KEYS // 5)

    # NOTE: the capture and the replicator run as subprocesses (`echoseen capture`, `echoseen replicate`).
    capture = Daemon(tmp_path / "capture", "capture", config).start()
    replicator = Daemon(tmp_path / "replicator", "replicate", config).start()
    try:
        capture.wait_ready()
        replicator.wait_ready()
        writer = LiveWriter(redis_server.client(), live_keys, rate_per_s=1_000, duration_s=60, seed=3)
        results = []
        thread = threading.Thread(target=lambda: results.append(writer.run()), daemon=True)
        thread.start()
        try:
            status, summary = run_backfill(config)
        finally:
            writer.stop()
            thread.join(timeout=30)
        assert status == 0, summary
        assert results and results[0].writes > 0

        # Once the capture has published the last live write and the replicator has committed everything,
        # Kask contains what Redis contains now: the newest value of every key.
        time.sleep(2)
        wait_until(lambda: committed_offsets(config) == end_offsets(config), 180,
                   "the replicator to commit every record")
    finally:
        assert capture.stop() == 0, capture.log()[-3000:]
        assert replicator.stop() == 0, replicator.log()[-3000:]

    codec = BodyCodec(BodyFormat(config.kask.body_format))
    current = {key: redis_client.get(key) for key in expected_by_key(keyspace)}
    wanted = publishable(current)
    bodies = kask_bodies(config.kask.url, sorted(wanted))
    absent = [key for key in wanted if bodies[key] is None]
    differing = [(key, codec.decode(bodies[key]).seen_time, seen_time(current[key])) for key in wanted
                 if bodies[key] is not None and codec.decode(bodies[key]).seen_time != seen_time(current[key])]
    assert not absent, f"{len(absent)} keys missing in Kask, e.g. {absent[:5]}"
    assert not differing, f"{len(differing)} keys differ (key, Kask, Redis), e.g. {differing[:5]}"
    # The live writes are the newest values of the keys they touched.
    for key, value in results[0].last_values.items():
        assert current[key.encode()] == value, key
    print(f"live writes: {results[0].writes} to {len(results[0].last_values)} keys during the backfill")


def test_snapshot_events_match_schema_fields(bf_config, redis_client, unique_wiki, redis_server):
    keyspace = spec(2_000, (unique_wiki,), unrelated_fraction=0)
    load(redis_client, keyspace)
    expected = expected_by_key(keyspace)
    run_id = redis_client.info("server")["run_id"]

    status, _ = run_backfill(bf_config)

    assert status == 0
    decoded = read_events(bf_config)
    assert decoded
    server_time_s = redis_client.time()[0]
    for event in decoded:
        assert event.source_server == f"127.0.0.1:{redis_server.port}"
        assert event.source_db == 0
        assert event.source_run_id == run_id
        assert event.seen_time == seen_time(expected[event.key])
        assert abs(event.version_us / 1e6 - server_time_s) < 120
        if event.expire_at_ms is not None:
            assert event.expire_at_ms > AS_OF.timestamp() * 1000


def test_cluster_every_primary(make_config, kafka_server, unique_wiki, tmp_path):
    from devstack.redis_server import start_redis_cluster

    cluster = start_redis_cluster(tmp_path / "cluster")
    try:
        keyspace = spec(6_000, (unique_wiki, f"{unique_wiki}b"), unrelated_fraction=0)
        expected = expected_by_key(keyspace)
        client = cluster.client()
        pipe = client.pipeline()
        for entry in expected_entries(keyspace):
            pipe.set(entry.key, entry.value, px=entry.ttl_ms)
        pipe.execute()
        client.close()
        config = make_config(kafka_server=kafka_server, backfill={"ping_sample_interval_s": 0.2})
        config = replace(config, redis=replace(config.redis, cluster=True,
                                               servers=(f"redis://127.0.0.1:{cluster.nodes[0].port}",)))
        create_topics(config, admin_client(config))

        status, summary = run_backfill(config)

        assert status == 0, summary
        assert sorted(server["server"] for server in summary["servers"]) == sorted(
            f"127.0.0.1:{node.port}/0" for node in cluster.nodes)
        assert all(server["finished"] for server in summary["servers"])
        assert all(server["totals"]["published"] > 0 for server in summary["servers"])
        assert set(key_counts(read_events(config))) == publishable(expected)
    finally:
        cluster.stop()
