"""Kafka client settings and topic checks shared by every command.

Settings from ``[kafka] client`` pass through to librdkafka unchanged, so
security.protocol, SASL and TLS work as librdkafka documents them; the SASL
password is injected from its secret source and never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from echoseen.config import Config
from echoseen.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# Protects against records that were produced but not acknowledged when the
# broker went away: librdkafka keeps retrying for this long before reporting
# a delivery failure, which the capture then records as a gap.
DELIVERY_TIMEOUT_MS = 120_000


def client_settings(config: Config) -> dict[str, Any]:
    settings: dict[str, Any] = {"bootstrap.servers": config.kafka.bootstrap_servers}
    settings.update(config.kafka.client)
    password = config.kafka_sasl_password()
    if password:
        settings["sasl.password"] = password.reveal()
    return settings


def producer_settings(config: Config, **overrides: Any) -> dict[str, Any]:
    """Idempotent producer: acks=all, ordered retries per partition, compressed batches."""
    settings = client_settings(config)
    settings.update({
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "delivery.timeout.ms": DELIVERY_TIMEOUT_MS,
        "queue.buffering.max.messages": config.capture.max_produce_queue,
    })
    settings.update(overrides)
    return settings


def admin_client(config: Config) -> AdminClient:
    return AdminClient(client_settings(config))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    purpose: str


def topic_specs(config: Config) -> list[TopicSpec]:
    """The topics the product needs, with the settings `echoseen topics` creates and checks."""
    kafka = config.kafka
    size = str(kafka.max_message_bytes)
    return [
        TopicSpec(kafka.topic, kafka.partitions,
                  {"cleanup.policy": "delete", "retention.ms": str(kafka.retention_ms), "max.message.bytes": size},
                  "seen-time events"),
        TopicSpec(kafka.dead_letter_topic, 1,
                  {"cleanup.policy": "delete", "retention.ms": "-1", "max.message.bytes": size},
                  "records the replicator could never apply"),
        TopicSpec(kafka.state_topic, 1,
                  {"cleanup.policy": "compact", "max.message.bytes": size, "min.compaction.lag.ms": "60000"},
                  "capture position, gaps and heartbeat; last verify result"),
    ]


def describe_topic_problems(config: Config, admin: AdminClient, timeout_s: float = 10.0) -> list[str]:
    """Return one message per missing or misconfigured topic; an empty list means all is well."""
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailable(f"cannot reach Kafka at {config.kafka.bootstrap_servers} ([kafka] bootstrap_servers): "
                          f"{exc.args[0]}") from exc
    problems = []
    present = []
    for spec in topic_specs(config):
        topic = metadata.topics.get(spec.name)
        if topic is None or topic.error is not None:
            problems.append(f"topic {spec.name!r} ({spec.purpose}) does not exist; "
                            "create it with `echoseen topics --create`")
            continue
        present.append(spec)
    if not present:
        return problems
    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in present]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    for spec, resource in zip(present, resources):
        try:
            actual = {name: entry.value for name, entry in futures[resource].result().items()}
        except KafkaException as exc:
            problems.append(f"cannot read the settings of topic {spec.name!r}: {exc.args[0]}")
            continue
        if spec.config.get("cleanup.policy") == "compact" and actual.get("cleanup.policy") != "compact":
            problems.append(f"topic {spec.name!r} has cleanup.policy={actual.get('cleanup.policy')}, expected "
                            "compact; fix it with `echoseen topics --create --fix`")
    return problems


def create_topics(config: Config, admin: AdminClient, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; return a line per topic describing what happened."""
    metadata = admin.list_topics(timeout=timeout_s)
    lines = []
    new_topics = []
    for spec in topic_specs(config):
        if spec.name in metadata.topics and metadata.topics[spec.name].error is None:
            lines.append(f"exists   {spec.name} ({len(metadata.topics[spec.name].partitions)} partitions)")
            continue
        new_topics.append(NewTopic(spec.name, num_partitions=spec.partitions,
                                   replication_factor=config.kafka.replication_factor, config=spec.config))
    if new_topics:
        for name, future in admin.create_topics(new_topics, request_timeout=timeout_s).items():
            future.result()
            lines.append(f"created  {name}")
    return lines
