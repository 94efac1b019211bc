"""Headers of dead-letter records, and the consumer settings the offset guarantees rely on."""

from __future__ import annotations

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message

from echoseen import config as config_module
from replicator import dead_letters
from replicator.consumer import consumer_settings


def source_record(headers=None) -> Message:
    return Message(topic="echoseen.seen-times", partition=7, offset=12345, key=b"enwiki:echo:seen:alert:time:1",
                   value=b"not json", headers=headers, timestamp=(TIMESTAMP_CREATE_TIME, 1_700_000_000_123))


def test_headers_name_source_and_reason():
    headers = dead_letters.dead_letter_headers(source_record(), "invalid_json", "record value is not JSON",
                                               "echoseen-replicator", 1_800_000_000_000)
    values = dict(headers)
    assert values[dead_letters.HEADER_REASON] == b"invalid_json"
    assert values[dead_letters.HEADER_DETAIL] == b"record value is not JSON"
    assert values[dead_letters.HEADER_SOURCE_TOPIC] == b"echoseen.seen-times"
    assert values[dead_letters.HEADER_SOURCE_PARTITION] == b"7"
    assert values[dead_letters.HEADER_SOURCE_OFFSET] == b"12345"
    assert values[dead_letters.HEADER_SOURCE_TIMESTAMP_MS] == b"1700000000123"
    assert values[dead_letters.HEADER_GROUP_ID] == b"echoseen-replicator"
    assert values[dead_letters.HEADER_PARKED_AT_MS] == b"1800000000000"


def test_headers_keep_original_headers_first():
    original = [("traceparent", b"00-abc-def-01"), (dead_letters.HEADER_REASON, b"old")]
    headers = dead_letters.dead_letter_headers(source_record(original), "schema_violation", "x", "g", 1)
    assert headers[0] == ("traceparent", b"00-abc-def-01")
    # A record dead-lettered again carries only the newest reason.
    assert [value for name, value in headers if name == dead_letters.HEADER_REASON] == [b"schema_violation"]


def test_headers_cut_long_detail():
    detail = "é" * 5000
    headers = dict(dead_letters.dead_letter_headers(source_record(), "kask_rejected", detail, "g", 1))
    cut = headers[dead_letters.HEADER_DETAIL]
    assert len(cut) <= dead_letters.MAX_DETAIL_BYTES
    # Cutting never splits a UTF-8 sequence.
    assert cut.decode("utf-8") == "é" * (len(cut) // 2)


def test_headers_dict_reads_text():
    record = source_record([("a", b"1"), ("b", None), ("c", b"\xff")])
    assert dead_letters.headers_dict(record) == {"a": "1", "b": "", "c": "\\xff"}


def test_consumer_settings_store_offsets_explicitly():
    config = config_module.load(None, environ={})
    settings = consumer_settings(config, "group-a")
    assert settings["group.id"] == "group-a"
    assert settings["group.protocol"] == "classic"
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    assert settings["enable.auto.offset.store"] is False
    assert settings["enable.auto.commit"] is False
    assert settings["auto.offset.reset"] == "error"
    assert settings["isolation.level"] == "read_committed"
    assert settings["session.timeout.ms"] == 45_000
    assert settings["heartbeat.interval.ms"] < settings["session.timeout.ms"]
