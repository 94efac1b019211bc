"""Kask failures: an outage, a share of 500 responses, and one key that keeps failing."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from replicator_harness import (OUTAGE_S, RECORDS, StreamProducer, committed_offsets, echo_key, end_offsets,
                                kask_config, load_events, missing_or_wrong, newest_seen, read_records, running,
                                seen_time, upsert, wait_until)

from devstack.cassandra import cql_session
from echoseen import events
from echoseen.kask_body import BodyCodec
from replicator import dead_letters
from replicator.kask_client import encode_key

pytestmark = pytest.mark.stack


def applied_below_committed(config, cassandra_server, committed: dict[int, int]) -> dict[bytes, str]:
    """Check Cassandra directly for every key whose records lie below a committed offset; return problems."""
    expected: dict[bytes, str] = {}
    for message in read_records(config, config.kafka.topic):
        if message.offset() < committed.get(message.partition(), 0):
            event = events.decode(message.key(), message.value())
            if event.seen_time > expected.get(event.key, ""):
                expected[event.key] = event.seen_time
    problems = {}
    codec = BodyCodec()
    with cql_session(cassandra_server, keyspace="kask") as session:
        for key, seen in expected.items():
            row = session.execute("SELECT value FROM values WHERE key = %s", (key.decode(),)).one()
            stored = codec.decode(row.value).seen_time if row is not None else None
            if stored is None or stored < seen:
                problems[key] = f"Cassandra holds {stored}, a committed record holds {seen}"
    return problems


def test_kask_outage_loses_nothing(rep_config, own_kask, cassandra_server, unique_wiki):
    # dead_letter_after_s is shorter than the outage: records must still not be dead-lettered,
    # because no other request succeeds while Kask is down.
    config = kask_config(rep_config, own_kask.url)
    config = replace(config, replicator=replace(config.replicator, dead_letter_after_s=2.0))
    stream = StreamProducer(config, unique_wiki, rate_per_s=40, keys=RECORDS)

    with running(config) as instance:
        stream.start()
        instance.wait_for_total(40)

        own_kask.stop()
        stopped_at = time.monotonic()
        time.sleep(min(3.0, OUTAGE_S / 3))
        during = committed_offsets(config)
        assert applied_below_committed(config, cassandra_server, during) == {}
        assert instance.metric("echoseen_replicator_retries_total") > 0
        assert instance.metric("echoseen_replicator_paused_partitions") > 0
        wait_until(lambda: instance.metric("echoseen_replicator_consumer_lag_seconds") > 0, 5,
                   "lag in seconds while Kask is down")
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped_at) - 1.0))
        # Nothing can be applied while Kask is down, so no offset may move.
        assert committed_offsets(config) == during

        own_kask.restart()
        sent = stream.stop()
        wait_until(lambda: missing_or_wrong(config, newest_seen(sent)) == {}, 120, "every key in Kask", 2.0)
        wait_until(lambda: committed_offsets(config) == end_offsets(config), 30, "offsets committed to the end")
        counts = instance.counts
    assert counts.get("dead_lettered", 0) == 0, counts
    assert sum(counts.values()) >= len(sent)


def test_kask_errors_lose_nothing(rep_config, producer, fault_proxy, kask_server, unique_wiki):
    config = kask_config(rep_config, fault_proxy.url(kask_server.settings.base_uri))
    # Responses lost after the write happened, too: the retry finds the value already there.
    fault_proxy.set_faults(error_rate=0.2, error_after_rate=0.1)
    event_list = load_events(unique_wiki, RECORDS, keys=RECORDS // 2)
    producer.send_all(event_list)

    with running(config) as instance:
        instance.wait_for_total(len(event_list), timeout_s=180)
        wait_until(lambda: committed_offsets(config) == end_offsets(config), 30, "offsets committed to the end")
        retries = instance.metric("echoseen_replicator_retries_total", 'reason="http_5xx"')
        counts = instance.counts
    fault_proxy.clear_faults()
    assert missing_or_wrong(config, newest_seen(event_list)) == {}
    assert retries > 0
    assert fault_proxy.stats["errors_before"] > 0
    assert fault_proxy.stats["errors_after"] > 0
    assert counts.get("dead_lettered", 0) == 0, counts


def test_failing_key_dead_lettered(rep_config, fault_proxy, kask_server, unique_wiki):
    config = kask_config(rep_config, fault_proxy.url(kask_server.settings.base_uri))
    config = replace(config, replicator=replace(config.replicator, dead_letter_after_s=2.0))
    stuck = echo_key(unique_wiki, 999_999)
    stream = StreamProducer(config, unique_wiki, rate_per_s=30, keys=40)

    with running(config) as instance:
        stream.start()
        instance.wait_for_total(20)

        # Every request fails: Kask is down as a whole, so nothing is dead-lettered, however long it lasts.
        fault_proxy.set_faults(error_rate=1.0)
        time.sleep(3.5)
        assert instance.counts.get("dead_lettered", 0) == 0
        fault_proxy.clear_faults()

        # Only one key fails while the others succeed: it is parked after dead_letter_after_s.
        fault_proxy.set_faults(fail_paths=(encode_key(stuck),))
        stream.send(upsert(stuck, seen_time(7)))
        wait_until(lambda: instance.counts.get("dead_lettered", 0) == 1, 60, "the failing key to be dead-lettered")
        sent = stream.stop()
        fault_proxy.clear_faults()
        wait_until(lambda: missing_or_wrong(config, newest_seen(sent)) == {}, 60, "every other key in Kask", 1.0)
        wait_until(lambda: committed_offsets(config) == end_offsets(config), 30, "offsets committed to the end")

    parked = read_records(config, config.kafka.dead_letter_topic)
    assert len(parked) == 1
    headers = dead_letters.headers_dict(parked[0])
    assert parked[0].key() == stuck
    assert headers[dead_letters.HEADER_REASON] == "kask_server_error"
    assert "500" in headers[dead_letters.HEADER_DETAIL]
