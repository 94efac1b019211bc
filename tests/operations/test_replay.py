"""`echoseen replay` on a real Kafka (and Kask with the replicator): plans, refusals and executed rewinds."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from confluent_kafka import Consumer

from echoseen.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from operations.lag import measure_lag
from ops_helpers import seen_time_event, wait_until

pytestmark = pytest.mark.stack


def iso_utc(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat()


def test_replay_plan_changes_nothing(kafka_ops):
    kafka_ops.produce([(b"k", b"v", None)] * 6, partition=0)
    kafka_ops.produce([(b"k", b"v", None)] * 4, partition=1)
    kafka_ops.commit({0: 6, 1: 3})

    result = kafka_ops.cli("replay", "--to-earliest")

    assert result.status == EXIT_OK, result.stderr
    assert "dry run: nothing changed" in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line[:1].isdigit()}
    assert rows["0"][:6] == ["0", "6", "6", "0", "6", "0"]
    assert rows["1"][:6] == ["1", "3", "3", "0", "3", "0"]
    total = next(line.split() for line in result.stdout.splitlines() if line.startswith("total"))
    assert total[1:] == ["9", "0"]
    assert kafka_ops.committed()[0] == 6
    assert kafka_ops.committed()[1] == 3


def test_replay_offsets_and_shift(kafka_ops):
    kafka_ops.produce([(b"k", b"v", None)] * 10, partition=0)
    kafka_ops.produce([(b"k", b"v", None)] * 10, partition=2)
    kafka_ops.commit({0: 10, 2: 10})

    plan = kafka_ops.cli("replay", "--to-offset", "0:4", "--to-offset", "7", "--json").json()
    new = {row["partition"]: row["new"] for row in plan["plan"]}
    assert new == {0: 4, 1: 0, 2: 7, 3: 0}
    assert plan["executed"] is False

    shifted = kafka_ops.cli("replay", "--shift-by", "-3", "--partitions", "0,2", "--execute", "--json")
    assert shifted.status == EXIT_OK, shifted.stderr
    assert shifted.json()["executed"] is True
    assert kafka_ops.committed()[0] == 7
    assert kafka_ops.committed()[2] == 7

    clamped = kafka_ops.cli("replay", "--shift-by", "-100", "--partitions", "2", "--json").json()
    assert clamped["plan"][0]["new"] == 0
    assert "clamped" in clamped["plan"][0]["note"]


def test_replay_rejects_naive_datetime(kafka_ops):
    result = kafka_ops.cli("replay", "--to-datetime", "2024-05-01T10:00:00")

    assert result.status == EXIT_CONFIG
    assert "has no timezone" in result.stderr
    assert "Z for UTC" in result.stderr


def test_replay_refuses_active_member(kafka_ops):
    kafka_ops.produce([(b"k", b"v", None)] * 3, partition=0)
    member = Consumer({"bootstrap.servers": kafka_ops.bootstrap, "group.id": kafka_ops.config.replicator.group_id,
                       "client.id": "ops-test-member", "enable.auto.commit": False})
    member.subscribe([kafka_ops.config.kafka.topic])
    try:
        wait_until(lambda: member.poll(0.5) is not None or bool(member.assignment()), 30, "the member to join")
        result = kafka_ops.cli("replay", "--to-earliest", "--execute")
    finally:
        member.close()

    assert result.status == EXIT_FAILED
    assert "1 active member" in result.stdout
    assert "client id ops-test-member" in result.stdout
    assert "member id ops-test-member-" in result.stdout
    assert "host 127.0.0.1" in result.stdout
    assert "nothing changed" in result.stdout


def test_replay_datetime_with_replicator(stack_ops, kask_http, unique_wiki):
    ops = stack_ops
    keys = [f"{unique_wiki}:echo:seen:alert:time:{index}" for index in range(16)]
    early_ms = int(time.time() * 1000) - 600_000
    late_ms = early_ms + 300_000
    early = ops.produce([(*seen_time_event(key, "20240101000000"), early_ms) for key in keys])
    late = ops.produce([(*seen_time_event(key, "20240301000000"), late_ms) for key in keys[:8]])
    replicator = ops.start_replicator()
    wait_until(lambda: measure_lag(ops.config).total_records == 0, 60, "the replicator to catch up")

    # A running replicator blocks the replay, and is named.
    rejected = ops.cli("replay", "--to-datetime", iso_utc(late_ms - 1000), "--execute")
    assert rejected.status == EXIT_FAILED
    assert "client id echoseen-replicator-" in rejected.stdout
    assert replicator.stop() == 0

    # Lose the late values in Kask, then replay everything from the late records on.
    for key in keys[:8]:
        kask_http.delete(key)
    result = ops.cli("replay", "--to-datetime", iso_utc(late_ms - 1000), "--execute", "--json")
    assert result.status == EXIT_OK, result.stderr
    first_late = {}
    for partition, offset in late:
        first_late[partition] = min(offset, first_late.get(partition, offset))
    ends = {}
    for partition, offset in early + late:
        ends[partition] = max(offset + 1, ends.get(partition, 0))
    expected_new = {partition: first_late.get(partition, ends.get(partition, 0))
                    for partition in range(ops.config.kafka.partitions)}
    plan = {row["partition"]: row for row in result.json()["plan"]}
    assert {partition: row["new"] for partition, row in plan.items()} == expected_new
    assert result.json()["total_reprocess"] == len(late)
    assert ops.committed() == expected_new
    assert measure_lag(ops.config).total_records == len(late)

    ops.start_replicator()
    wait_until(lambda: measure_lag(ops.config).total_records == 0, 60, "the replicator to reprocess")
    for key in keys[:8]:
        assert kask_http.get(key) == b'JSON.."20240301000000"', key
    for key in keys[8:]:
        assert kask_http.get(key) == b'JSON.."20240101000000"', key
