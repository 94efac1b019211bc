"""Records in the event topic that no capture wrote, among live events: parked, or the partition stops.

A record that is not JSON, or JSON that fails the schema, can never become
valid: the replicator parks it in the dead-letter topic and moves on. A
record with a newer schema version may be valid for a newer replicator, so
it is never parked. Its partition stops there while the other partitions keep
moving: readiness fails, the error names both versions, no later offset is
committed, and a restart stops at the same record.
"""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Producer

from echoseen import echo_value, events
from fault_harness import LOAD_S, Load, echo_keys, wait_for
from helpers import read_topic

pytestmark = pytest.mark.stack

STOPPED_PARTITION = 0


def produce(config, records: list[tuple[bytes, bytes]], partition: int) -> list[int]:
    """Produce records to one partition of the event topic; return their offsets."""
    producer = Producer({"bootstrap.servers": config.kafka.bootstrap_servers, "acks": "all"})
    offsets: list[int] = []

    def delivered(error, message) -> None:
        assert error is None, f"delivery failed: {error}"
        offsets.append(message.offset())

    for key, value in records:
        producer.produce(config.kafka.topic, key=key, value=value, partition=partition, on_delivery=delivered)
        # One at a time, so the offsets come back in the order produced.
        assert producer.flush(30) == 0
    return offsets


def newer_schema_record(key: str) -> tuple[bytes, bytes]:
    event = events.SeenTimeEvent(
        op=events.OP_UPSERT, key=key.encode(), value=echo_value.encode("20240601000000"), seen_time="20240601000000",
        value_error=None, expire_at_ms=None, version_us=int(time.time() * 1e6), origin=events.ORIGIN_LIVE,
        notification="set", source_server="127.0.0.1:6379", source_db=0, source_run_id="future")
    document = event.to_json_dict()
    document.update(schema_version=events.SCHEMA_VERSION + 1, priority="high")
    return key.encode(), json.dumps(document).encode()


def partition_lag(pipeline) -> dict[int, dict]:
    return {entry["partition"]: entry for entry in pipeline.lag()["partitions"]}


def test_bad_records_parked_or_partition_stopped(build_pipeline, unique_wiki):
    pipeline = build_pipeline()
    keys = echo_keys(unique_wiki)
    config = pipeline.config
    pipeline.capture()
    replicator = pipeline.replicator()

    with Load(pipeline.redis_client, keys):
        time.sleep(LOAD_S)
        offsets = produce(config, [
            (b"not-json", b"{not json"),
            (b"fails-schema", json.dumps({"schema_version": events.SCHEMA_VERSION, "op": "upsert"}).encode()),
            newer_schema_record(f"{unique_wiki}:echo:seen:alert:time:999999"),
        ], STOPPED_PARTITION)
        time.sleep(LOAD_S)
    stopped_offset = offsets[2]

    # The two invalid records are parked with their reasons.
    parked = pipeline.dead_letters(2)
    assert parked["not-json"]["echoseen.dlq.reason"] == "invalid_json"
    assert parked["fails-schema"]["echoseen.dlq.reason"] == "schema_violation"

    # The newer schema version stops its partition: readiness fails and the error names the versions.
    wait_for(lambda: replicator.metric("echoseen_replicator_stopped_partitions") == 1, 60, "the partition to stop")
    status, body = replicator.probe("/readyz")
    assert status == 503
    assert f":{STOPPED_PARTITION} (unsupported_schema_version at offset {stopped_offset})" in body["detail"]
    errors = [line for line in replicator.log().splitlines() if " ERROR " in line]
    assert any(f"schema_version {events.SCHEMA_VERSION + 1}" in line
               and f"versions up to {events.SCHEMA_VERSION}" in line for line in errors), errors

    # The other partitions keep moving; the stopped one commits nothing past the record.
    def others_caught_up() -> dict[int, dict] | None:
        lag = partition_lag(pipeline)
        done = all(entry["lag_records"] == 0 for partition, entry in lag.items() if partition != STOPPED_PARTITION)
        return lag if done else None

    lag = wait_for(others_caught_up, 90, "every other partition committed to its end", interval_s=1.0)
    assert lag[STOPPED_PARTITION]["committed"] == stopped_offset
    assert lag[STOPPED_PARTITION]["lag_records"] > 0

    # Verify finds the keys whose newest event waits behind the record, and only those.
    partition_of = {record.key().decode(): record.partition()
                    for record in read_topic(config.kafka.bootstrap_servers, config.kafka.topic)
                    if record.key() in {key.encode() for key in keys}}
    result, document = pipeline.verify()
    behind = [sample["key"] for category in ("missing_in_kask", "kask_older")
              for sample in document["samples"].get(category, [])]
    assert result.status == 1
    assert behind
    assert {partition_of[key] for key in behind} == {STOPPED_PARTITION}

    # A restart stops at the same record instead of skipping it.
    assert replicator.stop() == 0
    again = pipeline.replicator(wait_ready=False)
    wait_for(lambda: _metric_or_none(again, "echoseen_replicator_stopped_partitions") == 1, 60,
             "the restarted replicator to stop the partition again")
    assert partition_lag(pipeline)[STOPPED_PARTITION]["committed"] == stopped_offset
    assert again.stop() == 0


def _metric_or_none(daemon, name: str) -> float | None:
    try:
        return daemon.metric(name)
    except OSError:
        return None
