"""Durable state kept in the compacted state topic, outside the Redis being watched.

The capture stores, per source, the time up to which it knows every change
reached Kafka (the watermark), its open and recent gaps with their scan
cursors, and a heartbeat. Keeping this in Kafka rather than in the watched
Redis means a Redis restart cannot erase the evidence of its own gap, and
``echoseen status`` can read it from any host. Verify stores its last result
under its own key in the same topic.

Record keys: ``capture/<host>:<port>/<db>`` and ``verify/last``. Values are
JSON objects; the topic is compacted, so the latest record per key wins.

A capture document holds: ``kind`` ("capture"), ``source``, ``instance``,
``host``, ``pid``, ``run_id`` (of the Redis server), ``watermark_us``
(Redis clock; null before the first heartbeat came back), ``updated_wall_ms``
(the writer's wall clock: its age is the capture heartbeat age),
``open_gaps`` and ``recent_gaps`` (lists of :class:`capture.gaps.Gap` as
JSON), ``stopped`` (true after a clean shutdown) and ``counters``.
A verify document holds: ``kind`` ("verify"), ``finished_wall_ms``,
``passed``, ``categories`` (counts by category), ``bad`` (count) and
``scope`` (what was compared).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from echoseen.config import Config
from echoseen.errors import ServiceUnavailable
from echoseen.kafka import client_settings

log = logging.getLogger(__name__)

CAPTURE_PREFIX = "capture/"
VERIFY_KEY = "verify/last"


def capture_key(source_name: str) -> bytes:
    return (CAPTURE_PREFIX + source_name).encode("utf-8")


def read_all(config: Config, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Read the state topic from the beginning and return the latest document per key."""
    settings = client_settings(config)
    settings.update({
        "group.id": f"echoseen-state-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })
    consumer = Consumer(settings)
    latest: dict[str, dict[str, Any]] = {}
    try:
        try:
            metadata = consumer.list_topics(config.kafka.state_topic, timeout=timeout_s)
        except KafkaException as exc:
            raise ServiceUnavailable(f"cannot reach Kafka at {config.kafka.bootstrap_servers} to read the state "
                                     f"topic: {exc.args[0]}") from exc
        topic = metadata.topics.get(config.kafka.state_topic)
        if topic is None or topic.error is not None:
            raise ServiceUnavailable(f"state topic {config.kafka.state_topic!r} does not exist; create it with "
                                     "`echoseen topics --create`")
        partitions = [TopicPartition(config.kafka.state_topic, index, OFFSET_BEGINNING) for index in topic.partitions]
        remaining = set()
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
            if high > low:
                remaining.add(partition.partition)
        if not remaining:
            return latest
        consumer.assign(partitions)
        while remaining:
            message = consumer.poll(timeout_s)
            if message is None:
                raise ServiceUnavailable(f"reading state topic {config.kafka.state_topic!r} timed out after "
                                         f"{timeout_s:.0f} s")
            if message.error():
                if message.error().code() == -191:  # KafkaError._PARTITION_EOF
                    remaining.discard(message.partition())
                    continue
                raise ServiceUnavailable(f"reading state topic {config.kafka.state_topic!r} failed: "
                                         f"{message.error()}")
            key = (message.key() or b"").decode("utf-8", errors="replace")
            if message.value() is None:
                latest.pop(key, None)
                continue
            try:
                latest[key] = json.loads(message.value())
            except ValueError:
                log.warning("ignoring a state record that is not JSON at %s[%d]@%d", message.topic(),
                            message.partition(), message.offset())
    finally:
        consumer.close()
    return latest


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")
