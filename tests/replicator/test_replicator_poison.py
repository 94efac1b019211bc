"""Records that can never be applied, a newer schema version, and an offset out of retention."""

from __future__ import annotations

import json
import logging

import pytest
from confluent_kafka import TopicPartition
from replicator_harness import (bad_value, committed_offsets, consumer, echo_key, end_offsets, kask_bodies,
                                missing_or_wrong, raw_event, read_records, running, seen_time, upsert, wait_until)

from echoseen import kafka as kafka_module
from echoseen.kask_body import BodyCodec
from replicator import dead_letters

pytestmark = pytest.mark.stack


def test_poison_records_dead_lettered(rep_config, producer, unique_wiki):
    good_before, good_after = echo_key(unique_wiki, 1), echo_key(unique_wiki, 2)
    slash_key = f"{unique_wiki}:echo:seen:alert:time:3/4"
    producer.send(upsert(good_before, seen_time(1)), partition=0)
    producer.send_raw(b"poison-json", b"{not json", partition=0)
    producer.send_raw(b"poison-schema", json.dumps({"schema_version": 1, "op": "upsert"}).encode(), partition=0)
    producer.send_raw(slash_key.encode(), raw_event(slash_key), partition=0)
    producer.send(bad_value(echo_key(unique_wiki, 5), b"i:5;", "not_a_string"), partition=0)
    producer.send_raw(b"\xffbad-utf8:echo:seen:alert:time:6",
                      raw_event("\\xffbad-utf8:echo:seen:alert:time:6"), partition=0)
    producer.send(upsert(good_after, seen_time(2)), partition=0)
    producer.flush()

    with running(rep_config) as instance:
        instance.wait_for_total(7)
        wait_until(lambda: committed_offsets(rep_config)[0] == 7, 30, "partition 0 committed past the poison")
        counts = instance.counts
        assert instance.metric("echoseen_replicator_dead_lettered_records_total", 'reason="invalid_json"') == 1
    assert counts == {"written": 2, "dead_lettered": 5}
    assert missing_or_wrong(rep_config, {good_before: seen_time(1), good_after: seen_time(2)}) == {}

    parked = read_records(rep_config, rep_config.kafka.dead_letter_topic)
    by_offset = {int(dead_letters.headers_dict(m)[dead_letters.HEADER_SOURCE_OFFSET]): m for m in parked}
    assert sorted(by_offset) == [1, 2, 3, 4, 5]
    expected_reasons = {1: "invalid_json", 2: "schema_violation", 3: "unaddressable_key", 4: "bad_value",
                        5: "unaddressable_key"}
    for offset, reason in expected_reasons.items():
        headers = dead_letters.headers_dict(by_offset[offset])
        assert headers[dead_letters.HEADER_REASON] == reason
        assert headers[dead_letters.HEADER_SOURCE_TOPIC] == rep_config.kafka.topic
        assert headers[dead_letters.HEADER_SOURCE_PARTITION] == "0"
        assert headers[dead_letters.HEADER_GROUP_ID] == rep_config.replicator.group_id
        assert int(headers[dead_letters.HEADER_SOURCE_TIMESTAMP_MS]) > 0
        assert headers[dead_letters.HEADER_DETAIL]
    # Key and value are kept byte for byte.
    assert by_offset[1].key() == b"poison-json"
    assert by_offset[1].value() == b"{not json"
    assert by_offset[5].key() == b"\xffbad-utf8:echo:seen:alert:time:6"
    assert "'/'" in dead_letters.headers_dict(by_offset[3])[dead_letters.HEADER_DETAIL]

    # A restart in the same group starts after them: nothing is parked twice.
    producer.send(upsert(good_after, seen_time(3)), partition=0)
    producer.flush()
    with running(rep_config) as again:
        again.wait_for_total(1)
        counts = again.counts
    assert counts == {"written": 1}
    assert len(read_records(rep_config, rep_config.kafka.dead_letter_topic)) == 5


def test_newer_schema_stops_partition(rep_config, producer, unique_wiki, caplog):
    before, blocked, other = echo_key(unique_wiki, 1), echo_key(unique_wiki, 2), echo_key(unique_wiki, 3)
    producer.send(upsert(before, seen_time(1)), partition=0)
    producer.send_raw(b"future", raw_event("future", schema_version=2, new_field="x"), partition=0)
    producer.send(upsert(blocked, seen_time(2)), partition=0)
    for step in range(10):
        producer.send(upsert(other, seen_time(10 + step)), partition=1)
    producer.flush()

    with caplog.at_level(logging.ERROR, logger="replicator.daemon"), running(rep_config) as instance:
        wait_until(lambda: committed_offsets(rep_config)[1] == 10, 30, "partition 1 committed to its end")
        wait_until(lambda: committed_offsets(rep_config)[0] == 1, 30, "partition 0 committed up to the record")
        status, body = instance.http("/readyz")
        assert status == 503
        assert "unsupported_schema_version" in body["detail"]
        assert instance.metric("echoseen_replicator_stopped_partitions") == 1
        assert instance.metric("echoseen_replicator_partition_stopped",
                               'reason="unsupported_schema_version"') == 1
        # Later records of the partition wait, even a moment later.
        assert committed_offsets(rep_config)[0] == 1
        assert instance.counts.get("dead_lettered", 0) == 0

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any("schema_version 2" in message and "versions up to 1" in message for message in errors), errors
    assert kask_bodies(rep_config, [before, blocked, other]) == {
        before: BodyCodec().encode(seen_time(1)),
        blocked: None,
        other: BodyCodec().encode(seen_time(19)),
    }
    assert read_records(rep_config, rep_config.kafka.dead_letter_topic) == []


def test_offset_out_of_retention_stops_partition(rep_config, producer, unique_wiki, caplog):
    for step in range(10):
        producer.send(upsert(echo_key(unique_wiki, step), seen_time(step)), partition=0)
    producer.send(upsert(echo_key(unique_wiki, 100), seen_time(100)), partition=1)
    producer.flush()
    group = consumer(rep_config, rep_config.replicator.group_id)
    group.commit(offsets=[TopicPartition(rep_config.kafka.topic, 0, 3)], asynchronous=False)
    group.close()
    admin = kafka_module.admin_client(rep_config)
    for future in admin.delete_records([TopicPartition(rep_config.kafka.topic, 0, 7)]).values():
        future.result()

    with caplog.at_level(logging.ERROR, logger="replicator.daemon"), running(rep_config) as instance:
        wait_until(lambda: instance.metric("echoseen_replicator_stopped_partitions") == 1, 30,
                   "partition 0 to stop")
        wait_until(lambda: committed_offsets(rep_config)[1] == 1, 30, "partition 1 committed")
        status, body = instance.http("/readyz")
        assert status == 503
        assert "offset_out_of_range" in body["detail"]
        # The committed offset stays where it was: no silent reset to the start or the end.
        assert committed_offsets(rep_config)[0] == 3
        assert instance.counts == {"written": 1}
    assert any("offset_out_of_range" in record.getMessage() for record in caplog.records)
    assert end_offsets(rep_config)[0] == 10
