"""`echoseen topics` on a real Kafka: check, --create and --fix."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from echoseen.errors import EXIT_FAILED, EXIT_OK
from echoseen.kafka import admin_client, describe_topic_problems
from ops_helpers import Ops

pytestmark = pytest.mark.stack


@pytest.fixture
def bare_ops(kafka_server, make_config, tmp_path) -> Ops:
    """Ops whose topics do not exist yet."""
    return Ops(make_config(kafka_server=kafka_server), tmp_path)


def set_topic_config(ops: Ops, topic: str, name: str, value: str) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    admin = admin_client(ops.config)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_topics_missing_then_created(bare_ops):
    names = (bare_ops.config.kafka.topic, bare_ops.config.kafka.dead_letter_topic, bare_ops.config.kafka.state_topic)

    check = bare_ops.cli("topics")
    assert check.status == EXIT_FAILED
    for name in names:
        assert f"topic '{name}'" in check.stdout
    assert check.stdout.count("create it with `echoseen topics --create`") == 3

    created = bare_ops.cli("topics", "--create")
    assert created.status == EXIT_OK, created.stdout + created.stderr
    for name in names:
        assert f"created  {name}" in created.stdout
    assert "all topics are as expected" in created.stdout

    document = bare_ops.cli("topics", "--json").json()
    assert document["ok"] is True
    by_name = {topic["name"]: topic for topic in document["topics"]}
    assert by_name[names[0]]["partitions"] == bare_ops.config.kafka.partitions
    assert by_name[names[0]]["configs"]["retention.ms"] == str(bare_ops.config.kafka.retention_ms)
    assert by_name[names[1]]["configs"]["retention.ms"] == "-1"
    assert by_name[names[2]]["configs"]["cleanup.policy"] == "compact"


def test_topics_fix_settings(kafka_ops):
    topic = kafka_ops.config.kafka.topic
    state_topic = kafka_ops.config.kafka.state_topic
    set_topic_config(kafka_ops, topic, "retention.ms", "3600000")
    set_topic_config(kafka_ops, state_topic, "cleanup.policy", "delete")

    check = kafka_ops.cli("topics")
    assert check.status == EXIT_FAILED
    assert f"topic '{topic}' has retention.ms=3600000, expected at least" in check.stdout
    assert f"topic '{state_topic}' has cleanup.policy=delete, expected compact" in check.stdout
    # The daemons' startup check reports the wrong cleanup.policy but not the shorter retention.
    startup = describe_topic_problems(kafka_ops.config, admin_client(kafka_ops.config))
    assert len(startup) == 1
    assert "cleanup.policy=delete" in startup[0]

    fixed = kafka_ops.cli("topics", "--fix")
    assert fixed.status == EXIT_OK, fixed.stdout
    assert f"altered  {topic}: retention.ms 3600000 -> {kafka_ops.config.kafka.retention_ms}" in fixed.stdout
    assert f"altered  {state_topic}: cleanup.policy delete -> compact" in fixed.stdout
    assert kafka_ops.cli("topics").status == EXIT_OK


def test_topics_partition_count_not_fixed(kafka_ops):
    other = kafka_ops.with_config(kafka={"partitions": kafka_ops.config.kafka.partitions + 2})

    result = other.cli("topics", "--fix")

    assert result.status == EXIT_FAILED
    assert "does not change partition counts" in result.stdout
    assert f"set [kafka] partitions to {kafka_ops.config.kafka.partitions}" in result.stdout
    assert "altered" not in result.stdout
