"""`echoseen lag` on a real Kafka: per-partition offsets, lag in records and seconds, exit statuses."""

from __future__ import annotations

import time

import pytest

from ops_helpers import seen_time_event, wait_until
from echoseen.errors import EXIT_FAILED, EXIT_OK
from operations.lag import measure_lag

pytestmark = pytest.mark.stack


def test_lag_never_committed_json(kafka_ops):
    old_ms = int(time.time() * 1000) - 120_000
    kafka_ops.produce([(b"k%d" % index, b"v", old_ms + index) for index in range(10)], partition=1)
    kafka_ops.produce([(b"j%d" % index, b"v", None) for index in range(3)], partition=2)

    result = kafka_ops.cli("lag", "--json")

    assert result.status == EXIT_OK, result.stderr
    document = result.json()
    partitions = {row["partition"]: row for row in document["partitions"]}
    assert sorted(partitions) == [0, 1, 2, 3]
    assert all(row["committed"] is None for row in partitions.values())
    assert partitions[1]["lag_records"] == 10
    assert partitions[1]["position"] == 0
    assert partitions[1]["oldest_unconsumed_ms"] == old_ms
    assert partitions[1]["lag_seconds"] >= 120
    assert partitions[2]["lag_records"] == 3
    assert partitions[0]["lag_records"] == 0
    assert partitions[0]["lag_seconds"] == 0
    assert document["total_lag_records"] == 13
    assert document["max_lag_seconds"] == partitions[1]["lag_seconds"]
    assert document["group_id"] == kafka_ops.config.replicator.group_id
    assert document["member_count"] == 0


def test_lag_thresholds_exit_status(kafka_ops):
    old_ms = int(time.time() * 1000) - 60_000
    kafka_ops.produce([(b"k%d" % index, b"v", old_ms) for index in range(5)], partition=0)

    assert kafka_ops.cli("lag", "--max-records", "5").status == EXIT_OK
    over_records = kafka_ops.cli("lag", "--max-records", "4")
    assert over_records.status == EXIT_FAILED
    assert "exceeds --max-records 4" in over_records.stdout
    assert kafka_ops.cli("lag", "--max-seconds", "3600").status == EXIT_OK
    over_seconds = kafka_ops.cli("lag", "--max-seconds", "30", "--json")
    assert over_seconds.status == EXIT_FAILED
    assert over_seconds.json()["violations"]

    # A caught-up group has no lag in seconds at all.
    kafka_ops.commit({0: 5})
    caught_up = kafka_ops.cli("lag", "--max-records", "0", "--max-seconds", "0", "--json")
    assert caught_up.status == EXIT_OK, caught_up.stdout
    assert caught_up.json()["max_lag_seconds"] == 0
    assert caught_up.json()["partitions"][0]["committed"] == 5


def test_lag_table_output(kafka_ops):
    kafka_ops.produce([(b"k", b"v", None)] * 4, partition=3)
    kafka_ops.commit({3: 1})

    result = kafka_ops.cli("lag")

    assert result.status == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"group {kafka_ops.config.replicator.group_id} on topic {kafka_ops.config.kafka.topic}")
    assert lines[1].split() == ["PARTITION", "COMMITTED", "LOG-START", "LOG-END", "LAG-RECORDS", "LAG-SECONDS",
                                "OLDEST-UNCONSUMED"]
    row = next(line.split() for line in lines if line.startswith("3 "))
    assert row[:5] == ["3", "1", "0", "4", "3"]
    total = next(line.split() for line in lines if line.startswith("total"))
    assert total[1] == "3"


def test_lag_grows_after_replicator_stops(stack_ops, unique_wiki):
    ops = stack_ops
    keys = [f"{unique_wiki}:echo:seen:alert:time:{index}" for index in range(20)]
    ops.produce([(*seen_time_event(key, "20240101000000"), None) for key in keys])
    replicator = ops.start_replicator()
    wait_until(lambda: measure_lag(ops.config).total_records == 0, 60, "the replicator to catch up")
    assert ops.cli("lag", "--max-records", "0").status == EXIT_OK

    assert replicator.stop() == 0
    ops.produce([(*seen_time_event(key, "20240102000000"), None) for key in keys[:10]])
    first = ops.cli("lag", "--json").json()
    time.sleep(2.5)
    ops.produce([(*seen_time_event(key, "20240103000000"), None) for key in keys])
    second = ops.cli("lag", "--json").json()

    assert first["total_lag_records"] == 10
    assert second["total_lag_records"] == 30
    assert first["max_lag_seconds"] is not None
    assert second["max_lag_seconds"] >= first["max_lag_seconds"] + 2.0
    assert all(row["committed"] is not None for row in second["partitions"] if row["log_end"] > 0)
    assert second["group_state"] in ("empty", "dead")
