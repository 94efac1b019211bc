"""Kafka reads and writes shared by the operator tools: group offsets, members, watermarks and record times.

Every call here is bounded by a timeout of a few seconds, so a tool fails
with ServiceUnavailable (exit status 3) instead of hanging when Kafka is down.
None of these functions joins the replicator's consumer group: committed
offsets are read and altered through the Admin API, and records are read by a
consumer that only assigns partitions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import (OFFSET_INVALID, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, OffsetSpec

from echoseen.config import Config
from echoseen.errors import ConfigError, EchoseenError, ServiceUnavailable
from echoseen.kafka import client_settings, describe_unreachable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0

# Errors a group coordinator returns while it loads or moves; the request succeeds when repeated.
_RETRIABLE_COORDINATOR_CODES = frozenset({
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError._WAIT_COORD,
})

T = TypeVar("T")


class TopicNotFound(ConfigError):
    """A topic the tool needs does not exist: the topics were not created, or a name is wrong (exit status 2)."""


def tool_settings(config: Config, timeout_s: float) -> dict[str, Any]:
    """Client settings for a short-lived tool: the configured ones plus connect timeouts of ``timeout_s``.

    librdkafka's own log lines (one per failed connect, many per second while a
    broker is down) are kept out of the output unless the log level is DEBUG:
    the tools report a failure once, with the setting to check.
    """
    settings = client_settings(config)
    timeout_ms = max(1000, int(timeout_s * 1000))
    settings.setdefault("socket.connection.setup.timeout.ms", timeout_ms)
    settings.setdefault("socket.timeout.ms", max(timeout_ms, 10_000))
    if not logging.getLogger().isEnabledFor(logging.DEBUG) and "log_level" not in config.kafka.client:
        settings["log_level"] = 0
        # A Python log callback that librdkafka's threads call while the interpreter
        # exits can crash the process; with log_level 0 it has nothing to log anyway.
        settings.pop("logger", None)
    return settings


def unreachable(config: Config, exc: BaseException | str, client: AdminClient | None = None) -> ServiceUnavailable:
    detail = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if isinstance(detail, KafkaError):
        detail = detail.str()
    return ServiceUnavailable(describe_unreachable(config, detail, client))


def connect_admin(config: Config, timeout_s: float = DEFAULT_TIMEOUT_S) -> AdminClient:
    """Return an Admin client after one metadata request proved that Kafka responds within ``timeout_s``."""
    admin = AdminClient(tool_settings(config, timeout_s))
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise unreachable(config, exc, admin) from exc
    return admin


def probe_consumer(config: Config, timeout_s: float = DEFAULT_TIMEOUT_S, **overrides: Any) -> Consumer:
    """Return a consumer for assign(), offsets_for_times() and watermarks that never joins a group.

    librdkafka requires a group.id even for a consumer that only assigns, so it
    gets a unique throwaway one; it never subscribes and never commits.
    """
    settings = tool_settings(config, timeout_s)
    settings.update({
        "group.id": f"echoseen-tool-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        # One small fetch per partition is enough to learn a record's timestamp.
        "fetch.max.bytes": 1_048_576,
        "max.partition.fetch.bytes": 65_536,
        "queued.max.messages.kbytes": 4096,
    })
    settings.update(overrides)
    return Consumer(settings)


def with_coordinator_retry(config: Config, operation: str, call: Callable[[], T], timeout_s: float) -> T:
    """Run a request that a group coordinator serves, repeating it while the coordinator is loading or moving."""
    deadline = time.monotonic() + max(timeout_s, 1.0)
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code in _RETRIABLE_COORDINATOR_CODES and time.monotonic() < deadline:
                log.debug("%s: coordinator not ready (%s); retrying", operation, error)
                time.sleep(0.2)
                continue
            if code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
                        KafkaError.REQUEST_TIMED_OUT) or code in _RETRIABLE_COORDINATOR_CODES:
                raise unreachable(config, exc) from exc
            raise ServiceUnavailable(f"{operation} failed: {error}") from exc


def partition_ids(config: Config, admin: AdminClient, topic: str, timeout_s: float,
                  setting: str = "[kafka] topic") -> list[int]:
    """Return the partition numbers of ``topic``; TopicNotFound, naming ``setting``, when it does not exist."""
    try:
        metadata = admin.list_topics(topic, timeout=timeout_s)
    except KafkaException as exc:
        raise unreachable(config, exc) from exc
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        raise TopicNotFound(f"topic {topic!r} does not exist on {config.kafka.bootstrap_servers}; create it with "
                            f"`echoseen topics --create` or fix {setting}")
    return sorted(described.partitions)


@dataclass(frozen=True)
class Watermarks:
    """Offsets of a partition: ``low`` is the first offset still stored, ``high`` the log-end offset."""

    low: int
    high: int

    @property
    def records(self) -> int:
        return max(0, self.high - self.low)


def watermarks(config: Config, admin: AdminClient, topic: str, partitions: Iterable[int],
               timeout_s: float) -> dict[int, Watermarks]:
    """Read the earliest and log-end offsets of each partition with two ListOffsets requests."""
    partitions = list(partitions)
    if not partitions:
        return {}
    found: dict[str, dict[int, int]] = {}
    for name, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
        request = {TopicPartition(topic, partition): spec for partition in partitions}
        try:
            futures = admin.list_offsets(request, request_timeout=timeout_s)
            found[name] = {tp.partition: future.result().offset for tp, future in futures.items()}
        except KafkaException as exc:
            raise unreachable(config, exc) from exc
    return {partition: Watermarks(found["low"][partition], found["high"][partition]) for partition in partitions}


def group_consumer(config: Config, group_id: str, timeout_s: float) -> Consumer:
    """Return a consumer that carries ``group_id`` only to read or commit its offsets; it never subscribes.

    Offsets go through a consumer rather than the Admin API because the
    Admin API's ListConsumerGroupOffsets crashes librdkafka (2.16.0 and
    earlier) with a NULL consumer-group handle when the broker returns
    NOT_COORDINATOR, which it does on the first request for a group.
    A consumer that never subscribes does not join the group, and Kafka
    accepts its commits only while the group has no active members.
    """
    settings = tool_settings(config, timeout_s)
    settings.update({"group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False})
    return Consumer(settings)


def committed_offsets(config: Config, group_id: str, topic: str, partitions: Iterable[int],
                      timeout_s: float) -> dict[int, int | None]:
    """Return the group's committed offset per partition; None where the group never committed one."""
    consumer = group_consumer(config, group_id, timeout_s)
    try:
        request = [TopicPartition(topic, partition) for partition in partitions]

        def fetch() -> dict[int, int | None]:
            offsets: dict[int, int | None] = {}
            for tp in consumer.committed(request, timeout=timeout_s):
                if tp.error is not None:
                    raise KafkaException(tp.error)
                offsets[tp.partition] = None if tp.offset == OFFSET_INVALID or tp.offset < 0 else tp.offset
            return offsets

        return with_coordinator_retry(config, f"reading the committed offsets of group {group_id!r}", fetch,
                                      timeout_s)
    finally:
        consumer.close()


@dataclass(frozen=True)
class GroupMember:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[int, ...]

    def describe(self) -> str:
        assigned = ",".join(str(partition) for partition in self.partitions) or "none"
        return f"member id {self.member_id}, client id {self.client_id}, host {self.host}, partitions {assigned}"


@dataclass(frozen=True)
class GroupInfo:
    group_id: str
    state: str
    members: tuple[GroupMember, ...]


def describe_group(config: Config, admin: AdminClient, group_id: str, topic: str, timeout_s: float) -> GroupInfo:
    """Return the group's state and active members (with their partitions of ``topic``)."""

    def fetch() -> GroupInfo:
        description = admin.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id].result()
        members = []
        for member in description.members:
            assignment = getattr(member, "assignment", None)
            assigned = tuple(sorted(tp.partition for tp in (assignment.topic_partitions if assignment else [])
                                    if tp.topic == topic))
            members.append(GroupMember(member.member_id, member.client_id, member.host.lstrip("/"), assigned))
        state = getattr(description.state, "name", str(description.state)).lower()
        return GroupInfo(group_id, state, tuple(members))

    return with_coordinator_retry(config, f"describing group {group_id!r}", fetch, timeout_s)


def first_record_timestamps_ms(config: Config, topic: str, positions: dict[int, int],
                               timeout_s: float) -> dict[int, int | None]:
    """Return the timestamp of the first record at or after each position, read without joining a group.

    Partitions whose record does not arrive within ``timeout_s`` (or that
    carries no timestamp) map to None.
    """
    if not positions:
        return {}
    consumer = probe_consumer(config, timeout_s)
    found: dict[int, int | None] = {}
    try:
        consumer.assign([TopicPartition(topic, partition, offset) for partition, offset in positions.items()])
        deadline = time.monotonic() + timeout_s
        while len(found) < len(positions) and time.monotonic() < deadline:
            message = consumer.poll(min(0.5, max(0.05, deadline - time.monotonic())))
            if message is None:
                continue
            if message.error():
                log.debug("reading %s[%s]: %s", topic, message.partition(), message.error())
                continue
            partition = message.partition()
            if partition in found or partition not in positions:
                continue
            kind, timestamp_ms = message.timestamp()
            found[partition] = None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms
            # Nothing more is needed from this partition; stop fetching it.
            consumer.pause([TopicPartition(topic, partition)])
    finally:
        consumer.close()
    for partition in positions:
        found.setdefault(partition, None)
    return found


def offsets_for_time(config: Config, topic: str, partitions: Iterable[int], timestamp_ms: int,
                     timeout_s: float) -> dict[int, int | None]:
    """Return per partition the first offset whose record timestamp is at or after ``timestamp_ms``.

    None means no such record exists (every record is older).
    """
    consumer = probe_consumer(config, timeout_s)
    try:
        request = [TopicPartition(topic, partition, timestamp_ms) for partition in partitions]
        try:
            result = consumer.offsets_for_times(request, timeout=timeout_s)
        except KafkaException as exc:
            raise unreachable(config, exc) from exc
    finally:
        consumer.close()
    offsets: dict[int, int | None] = {}
    for tp in result:
        if tp.error is not None:
            raise ServiceUnavailable(f"looking up offsets by time in {topic}[{tp.partition}] failed: {tp.error}")
        offsets[tp.partition] = tp.offset if tp.offset >= 0 else None
    return offsets


def alter_committed_offsets(config: Config, group_id: str, topic: str, offsets: dict[int, int],
                            timeout_s: float) -> None:
    """Commit ``offsets`` for the group; Kafka rejects this while the group has active members."""
    consumer = group_consumer(config, group_id, timeout_s)
    request = [TopicPartition(topic, partition, offset) for partition, offset in sorted(offsets.items())]

    def commit() -> None:
        try:
            result = consumer.commit(offsets=request, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            if code in (KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS):
                raise EchoseenError(f"Kafka rejected the new offsets of group {group_id!r} ({error.str()}): a "
                                    "consumer joined the group meanwhile; stop it and run the command again") from exc
            raise
        failures = [f"partition {tp.partition}: {tp.error}" for tp in result or [] if tp.error is not None]
        if failures:
            raise EchoseenError(f"Kafka rejected the new offsets of group {group_id!r}: {'; '.join(failures)}")

    try:
        with_coordinator_retry(config, f"committing offsets for group {group_id!r}", commit, timeout_s)
    finally:
        consumer.close()
