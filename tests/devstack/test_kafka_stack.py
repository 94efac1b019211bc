"""Tests of devstack.kafka against a real Kafka node started from the Maven jars."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from devstack.kafka import KafkaServer, create_topic, ensure_kafka_jars, start_kafka
from devstack.process import StackError, port_is_open


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    server = start_kafka(tmp_path_factory.mktemp("kafka"))
    try:
        yield server
    finally:
        server.stop()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def produce_one(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0, "record still queued after 30 s"


def consume_all(bootstrap: str, topic: str, expected_count: int, timeout_s: float = 30.0) -> list[tuple[bytes, bytes]]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": unique_name("test-group"),
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    records: list[tuple[bytes, bytes]] = []
    try:
        remaining_polls = int(timeout_s / 0.5)
        while len(records) < expected_count and remaining_polls > 0:
            remaining_polls -= 1
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, f"consumer error: {message.error()}"
            records.append((message.key(), message.value()))
    finally:
        consumer.close()
    return records


def topic_partition_count(bootstrap: str, topic: str) -> int | None:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        return None
    return len(described.partitions)


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_jars_cached_with_log4j_binding() -> None:
    libs_dir = ensure_kafka_jars()
    names = {path.name for path in libs_dir.glob("*.jar")}

    assert any(name.startswith("kafka_2.13-") for name in names)
    assert any(name.startswith("log4j-slf4j-impl-") for name in names)
    assert any(name.startswith("log4j-core-") for name in names)
    assert ensure_kafka_jars() == libs_dir


def test_kafka_bootstrap_on_loopback(kafka: KafkaServer) -> None:
    host, port = kafka.bootstrap.split(":")

    assert host == "127.0.0.1"
    assert port_is_open(int(port))
    assert kafka.process is not None
    assert kafka.process.is_running()


def test_kafka_produce_consume(kafka: KafkaServer) -> None:
    topic = unique_name("roundtrip")
    create_topic(kafka.bootstrap, topic, 3, {"cleanup.policy": "compact"})

    produce_one(kafka.bootstrap, topic, b"user:42", b"2024-05-01T10:00:00Z")
    records = consume_all(kafka.bootstrap, topic, expected_count=1)

    assert records == [(b"user:42", b"2024-05-01T10:00:00Z")]


def test_kafka_topic_config_applied(kafka: KafkaServer) -> None:
    topic = unique_name("compacted")
    create_topic(kafka.bootstrap, topic, 2, {"cleanup.policy": "compact", "min.compaction.lag.ms": "1000"})

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    configs = admin.describe_configs([resource])[resource].result(timeout=30)

    assert configs["cleanup.policy"].value == "compact"
    assert configs["min.compaction.lag.ms"].value == "1000"
    assert topic_partition_count(kafka.bootstrap, topic) == 2


def test_kafka_broker_settings(kafka: KafkaServer) -> None:
    resource = ConfigResource(ConfigResource.Type.BROKER, "1")
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    configs = admin.describe_configs([resource])[resource].result(timeout=30)

    assert configs["auto.create.topics.enable"].value == "false"
    assert configs["group.initial.rebalance.delay.ms"].value == "0"
    assert configs["offsets.topic.replication.factor"].value == "1"
    assert configs["transaction.state.log.replication.factor"].value == "1"
    assert configs["share.coordinator.state.topic.replication.factor"].value == "1"


def test_create_topic_existing(kafka: KafkaServer) -> None:
    topic = unique_name("twice")
    create_topic(kafka.bootstrap, topic, 1)

    with pytest.raises(StackError, match="TOPIC_ALREADY_EXISTS"):
        create_topic(kafka.bootstrap, topic, 1)
    create_topic(kafka.bootstrap, topic, 1, exist_ok=True)


def test_create_topic_rejects_zero_partitions(kafka: KafkaServer) -> None:
    with pytest.raises(ValueError, match="partitions"):
        create_topic(kafka.bootstrap, unique_name("empty"), 0)


def test_kafka_rejects_managed_property(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log.dirs"):
        start_kafka(tmp_path, extra_properties={"log.dirs": str(tmp_path / "elsewhere")})


def test_kafka_restart_keeps_topics(kafka: KafkaServer) -> None:
    topic = unique_name("durable")
    create_topic(kafka.bootstrap, topic, 2)
    produce_one(kafka.bootstrap, topic, b"k", b"before restart")
    bootstrap_before = kafka.bootstrap
    pid_before = kafka.process.pid

    kafka.restart()

    assert kafka.bootstrap == bootstrap_before
    assert kafka.process.pid != pid_before
    assert process_is_gone(pid_before)
    assert topic_partition_count(kafka.bootstrap, topic) == 2
    assert consume_all(kafka.bootstrap, topic, expected_count=1) == [(b"k", b"before restart")]


def test_kafka_kill_then_start(kafka: KafkaServer) -> None:
    topic = unique_name("crash")
    create_topic(kafka.bootstrap, topic, 1)
    produce_one(kafka.bootstrap, topic, b"k", b"before crash")
    pid_before = kafka.process.pid

    kafka.kill()

    assert process_is_gone(pid_before)
    assert not kafka.is_running()

    kafka.start()

    assert topic_partition_count(kafka.bootstrap, topic) == 1
    assert consume_all(kafka.bootstrap, topic, expected_count=1) == [(b"k", b"before crash")]


def test_kafka_second_start_reuses_storage(tmp_path: Path) -> None:
    first = start_kafka(tmp_path)
    try:
        create_topic(first.bootstrap, "kept", 1)
        meta_before = (tmp_path / "data" / "meta.properties").read_text()
    finally:
        first.stop()

    second = start_kafka(tmp_path)
    try:
        assert second.ports.controller == first.ports.controller
        assert (tmp_path / "data" / "meta.properties").read_text() == meta_before
        assert topic_partition_count(second.bootstrap, "kept") == 1
    finally:
        second.stop()


def test_kafka_stop_leaves_no_process(tmp_path: Path) -> None:
    server = start_kafka(tmp_path)
    pid = server.process.pid

    server.stop()

    assert process_is_gone(pid)
    assert not port_is_open(server.ports.broker)
    assert not port_is_open(server.ports.controller)
    assert (tmp_path / "logs" / "server.log").stat().st_size > 0
