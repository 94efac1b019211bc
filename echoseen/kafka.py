"""Kafka client settings and topic checks shared by every command.

Settings from ``[kafka] client`` pass through to librdkafka unchanged, so
security.protocol, SASL and TLS work as librdkafka documents them; the SASL
password is injected from its secret source and never logged.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from echoseen.config import Config
from echoseen.errors import ConfigError, ServiceUnavailable

log = logging.getLogger(__name__)

# Protects against records that were produced but not acknowledged when the
# broker went away: librdkafka keeps retrying for this long before reporting
# a delivery failure, which the capture then records as a gap.
DELIVERY_TIMEOUT_MS = 120_000


# librdkafka logs every failed connection attempt, several lines a second per client while a broker is
# down. Lines that differ only in numbers (ports, milliseconds) pass once per this interval.
CLIENT_LOG_INTERVAL_S = 10.0
_DIGITS = re.compile(r"[0-9]+")


class RepeatedLineFilter(logging.Filter):
    """Pass one line of each kind per interval and count the others, reported with the next line that passes."""

    def __init__(self, interval_s: float = CLIENT_LOG_INTERVAL_S, max_kinds: int = 1000) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.max_kinds = max_kinds
        self._lock = threading.Lock()
        self._last_passed: dict[tuple[int, str], float] = {}
        self._held_back: dict[tuple[int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.levelno, _DIGITS.sub("#", record.getMessage()))
        now = time.monotonic()
        with self._lock:
            last = self._last_passed.get(kind)
            if last is not None and now - last < self.interval_s:
                self._held_back[kind] = self._held_back.get(kind, 0) + 1
                return False
            if len(self._last_passed) >= self.max_kinds:
                self._last_passed.clear()
                self._held_back.clear()
            self._last_passed[kind] = now
            held_back = self._held_back.pop(kind, 0)
        if held_back:
            text = record.getMessage().replace("%", "%%")
            record.msg = f"{text} (%d similar lines held back in the last %.0f s)"
            record.args = (held_back, self.interval_s)
        return True


def log_errors_as_warnings(record: logging.LogRecord) -> bool:
    """Lower librdkafka's ERROR lines to WARNING, because the product logs at ERROR what a failure means for it.

    librdkafka reports every refused connection at ERROR, while the daemons retry
    or stop with an ERROR line of their own that names the setting to check.
    """
    if record.levelno > logging.WARNING:
        record.levelno = logging.WARNING
        record.levelname = logging.getLevelName(logging.WARNING)
    return True


# librdkafka's own log lines go through this logger instead of straight to stderr.
client_log = logging.getLogger("echoseen.kafka.client")
client_log.addFilter(log_errors_as_warnings)
client_log.addFilter(RepeatedLineFilter())


# SASL mechanisms that authenticate with a user name and a password.
PASSWORD_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})


class _SecurityErrors:
    """The latest SASL and TLS errors that this process's Kafka clients reported through error_cb.

    librdkafka fails a metadata request with a bare "Broker transport failure".
    The reason (rejected credentials, an untrusted certificate) only reaches
    error_cb, which runs when the client is polled.
    """

    def __init__(self) -> None:
        self.authentication: str | None = None
        self.tls: str | None = None

    def record(self, error: KafkaError) -> None:
        text = error.str()
        if error.code() == KafkaError._AUTHENTICATION or "SASL authentication" in text:
            self.authentication = text
        elif "SSL" in text or "certificate" in text:
            self.tls = text


_security_errors = _SecurityErrors()


def client_settings(config: Config) -> dict[str, Any]:
    """Return librdkafka settings: bootstrap servers, [kafka] client and the SASL password from its secret source.

    Raises ConfigError when [kafka] client asks for a password-based SASL mechanism but no password is set.
    """
    settings: dict[str, Any] = {"bootstrap.servers": config.kafka.bootstrap_servers, "logger": client_log,
                                "log_level": 4, "error_cb": _security_errors.record}
    settings.update(config.kafka.client)
    password = config.kafka_sasl_password()
    if password:
        settings["sasl.password"] = password.reveal()
    _check_sasl_password(settings)
    return settings


def _check_sasl_password(settings: dict[str, Any]) -> None:
    protocol = str(settings.get("security.protocol", "")).upper()
    mechanism = str(settings.get("sasl.mechanism", settings.get("sasl.mechanisms", "GSSAPI"))).upper()
    if protocol.startswith("SASL_") and mechanism in PASSWORD_MECHANISMS and not settings.get("sasl.password"):
        raise ConfigError(f"[kafka] client sets security.protocol={protocol} and sasl.mechanism={mechanism}, but no "
                          "SASL password is set: put it in the file named by [kafka] sasl_password_file or in the "
                          "environment variable named by [kafka] sasl_password_env")


def describe_unreachable(config: Config, detail: object, client: AdminClient | Producer | None = None) -> str:
    """Return the message for a failed Kafka request, with the SASL or TLS error behind it when one was reported.

    ``client`` (never a Consumer, whose poll() would consume records) is polled
    once so that its pending error callbacks run.
    """
    if client is not None:
        client.poll(0)
    where = f"cannot reach Kafka at {config.kafka.bootstrap_servers} ([kafka] bootstrap_servers)"
    if _security_errors.authentication:
        return (f"{where}: the broker rejected the SASL credentials: {_security_errors.authentication}; check "
                "sasl.username and sasl.mechanism in [kafka] client and the password in the file named by [kafka] "
                "sasl_password_file or the variable named by [kafka] sasl_password_env")
    if _security_errors.tls:
        return (f"{where}: the TLS handshake failed: {_security_errors.tls}; check ssl.ca.location in [kafka] "
                "client: it must name the CA that signed the brokers' certificates")
    return (f"{where}: {detail}; check that the brokers run, the address is right and [kafka] client holds the "
            "right security settings")


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


@dataclass(frozen=True)
class TopicProblem:
    """One way a topic differs from its TopicSpec.

    ``setting`` is "existence", "partitions" or a topic config name. ``blocking``
    problems stop the daemons from working correctly (a missing topic, a wrong
    cleanup.policy); the others are drift that `echoseen topics` reports.
    ``fix`` names what repairs it: "create" (`echoseen topics --create`),
    "alter" (`echoseen topics --fix`) or "" (no automatic fix).
    """

    topic: str
    setting: str
    expected: str
    actual: str | None
    blocking: bool
    fix: str
    message: str


# Topic configs where a larger value than the expected one is fine (-1 means unlimited).
_AT_LEAST_CONFIGS = frozenset({"retention.ms", "max.message.bytes", "min.compaction.lag.ms"})


def _config_matches(name: str, expected: str, actual: str | None) -> bool:
    if actual is None:
        return False
    if name == "cleanup.policy":
        return set(actual.replace(" ", "").split(",")) == set(expected.split(","))
    if name in _AT_LEAST_CONFIGS:
        try:
            expected_number, actual_number = int(expected), int(actual)
        except ValueError:
            return actual == expected
        if actual_number == -1:
            return True
        return expected_number != -1 and actual_number >= expected_number
    return actual == expected


def check_topics(config: Config, admin: AdminClient, timeout_s: float = 10.0) -> list[TopicProblem]:
    """Compare every topic the product needs with its TopicSpec: existence, partition count and configs."""
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailable(describe_unreachable(config, exc.args[0], admin)) from exc
    problems = []
    present = []
    for spec in topic_specs(config):
        topic = metadata.topics.get(spec.name)
        if topic is None or topic.error is not None:
            problems.append(TopicProblem(
                spec.name, "existence", "exists", None, True, "create",
                f"topic {spec.name!r} ({spec.purpose}) does not exist; create it with `echoseen topics --create`"))
            continue
        present.append(spec)
        problems.extend(_partition_problems(spec, len(topic.partitions),
                                            is_event_topic=spec.name == config.kafka.topic))
    if not present:
        return problems

    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in present]
    futures = admin.describe_configs(resources, request_timeout=timeout_s)
    for spec, resource in zip(present, resources):
        try:
            actual = {name: entry.value for name, entry in futures[resource].result().items()}
        except KafkaException as exc:
            problems.append(TopicProblem(spec.name, "describe", "", None, False, "",
                                         f"cannot read the settings of topic {spec.name!r}: {exc.args[0]}"))
            continue
        for name, expected in spec.config.items():
            if _config_matches(name, expected, actual.get(name)):
                continue
            expected_text = expected if name not in _AT_LEAST_CONFIGS or expected == "-1" else f"at least {expected}"
            problems.append(TopicProblem(
                spec.name, name, expected, actual.get(name), name == "cleanup.policy", "alter",
                f"topic {spec.name!r} has {name}={actual.get(name)}, expected {expected_text}; fix it with "
                "`echoseen topics --fix`"))
    return problems


def _partition_problems(spec: TopicSpec, actual: int, is_event_topic: bool) -> list[TopicProblem]:
    # Only the event topic's count is configured ([kafka] partitions); the
    # single-partition topics work with any count.
    if not is_event_topic or actual == spec.partitions:
        return []
    return [TopicProblem(
        spec.name, "partitions", str(spec.partitions), str(actual), False, "",
        f"topic {spec.name!r} has {actual} partitions, [kafka] partitions is {spec.partitions}; `echoseen topics "
        "--fix` does not change partition counts, because adding partitions moves keys to other partitions and "
        f"breaks their order: set [kafka] partitions to {actual}, or recreate the topic while nothing uses it")]


def describe_topic_problems(config: Config, admin: AdminClient, timeout_s: float = 10.0,
                            include_drift: bool = False) -> list[str]:
    """Return one message per missing or misconfigured topic; an empty list means all is well.

    By default only blocking problems are returned (a missing topic or a wrong
    cleanup.policy), because that is what the daemons check at startup. With
    ``include_drift`` the partition count and the other settings count too.
    """
    return [problem.message for problem in check_topics(config, admin, timeout_s)
            if problem.blocking or include_drift]


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
