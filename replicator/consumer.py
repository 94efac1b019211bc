"""The replicator's Kafka consumer, driven from one dedicated thread.

confluent_kafka's Consumer is not safe for concurrent calls, so every call on
it (consume, pause, resume, store_offsets, commit, committed, close) and every
rebalance callback runs on the single thread of the executor the daemon gives
this class. The asyncio side talks to it through :meth:`KafkaSide.step`: each
call passes the offsets to store and the partitions that must be paused, and
returns the next batch of records.

Offsets: enable.auto.offset.store is false, so an offset is stored only after
the daemon reported its record (and every earlier one of the partition) finished.
Stored offsets are committed every replicator.commit_interval_s, in the revoke
callback for the revoked partitions, and at shutdown. Lost partitions are
dropped without a commit.

Start positions: auto.offset.reset is ``error``, so a committed offset that
fell out of retention is never reset silently. With confluent-kafka 2.16.1
(librdkafka 2.16.0) the consumer then delivers an error event with code
``_AUTO_OFFSET_RESET`` that names the topic, the partition and the committed
offset. It consumes nothing more from that partition, and the daemon stops the
partition and reports it. The same error, without an offset, would also come
for a partition that has no committed offset at all, so the assign callback
reads the committed offsets itself and assigns partitions without one from
OFFSET_BEGINNING explicitly: a new group reads the whole topic, including the
backfill.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition)

from echoseen import kafka as kafka_module
from echoseen.config import Config
from echoseen.logs import RateLimitedLog

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]

CONSUME_BATCH_RECORDS = 500
CONSUME_TIMEOUT_S = 0.2
COMMITTED_TIMEOUT_S = 10.0
COMMITTED_ATTEMPTS = 3
WATERMARK_INTERVAL_S = 1.0


class RebalanceHandler(Protocol):
    """Callbacks of the daemon for partitions that come and go; they run on the consumer thread and may block."""

    def partitions_assigned(self, assigned: dict[TopicPartitionKey, int | None]) -> None:
        """New partitions with their start offsets (None: the beginning of the partition)."""

    def partitions_revoked(self, revoked: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Finish or drop the work of revoked partitions; return the final offsets to commit."""

    def partitions_lost(self, lost: list[TopicPartitionKey]) -> None:
        """Drop the work of partitions another member may already own."""


@dataclass
class StepRequest:
    """Offsets to store and partitions to pause, passed by the asyncio side with each consumer step."""

    stores: dict[TopicPartitionKey, int] = field(default_factory=dict)
    paused: set[TopicPartitionKey] = field(default_factory=set)
    pause_all: bool = False
    # Upper bound on the records this step returns, so the buffer stays near max_buffered_records.
    max_records: int = CONSUME_BATCH_RECORDS


@dataclass(frozen=True)
class PartitionError:
    """A partition the consumer cannot read from its committed offset."""

    topic: str
    partition: int
    offset: int | None
    reason: str
    detail: str


@dataclass
class StepResult:
    messages: list[Message]
    partition_errors: list[PartitionError]
    # (low, high) watermarks of assigned partitions, about once per WATERMARK_INTERVAL_S; None in between.
    watermarks: dict[TopicPartitionKey, tuple[int, int]] | None
    paused_count: int
    assigned_count: int


def consumer_settings(config: Config, group_id: str) -> dict[str, object]:
    replicator = config.replicator
    session_timeout_ms = int(replicator.session_timeout_s * 1000)
    settings = kafka_module.client_settings(config)
    settings.update({
        "group.id": group_id,
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        # Records of an aborted redrive transaction must not be applied.
        "isolation.level": "read_committed",
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(100, min(3000, session_timeout_ms // 3)),
        "client.id": f"echoseen-replicator-{socket.gethostname()}",
    })
    # librdkafka prefetches up to 64 MiB of records by default, about 150,000 events. Kask takes a few thousand
    # records per second, so 16 MiB is still several seconds of work and bounds that part of the replicator's
    # memory on a backlog. [kafka.client] may set other values.
    settings.setdefault("queued.max.messages.kbytes", 16_384)
    settings.setdefault("fetch.max.bytes", 16 * 1_048_576)
    return settings


class KafkaSide:
    """The consumer and everything it owns; every method runs on the consumer thread."""

    def __init__(self, config: Config, group_id: str, handler: RebalanceHandler,
                 on_rebalance: Callable[[str, int], None] | None = None,
                 on_commit: Callable[[bool], None] | None = None) -> None:
        self.config = config
        self.topic = config.kafka.topic
        self.group_id = group_id
        self.handler = handler
        self._on_rebalance = on_rebalance or (lambda kind, count: None)
        self._on_commit = on_commit or (lambda ok: None)
        self._consumer: Consumer | None = None
        self._assigned: set[TopicPartitionKey] = set()
        self._paused: set[TopicPartitionKey] = set()
        self._stored: dict[TopicPartitionKey, int] = {}
        self._uncommitted = False
        self._last_commit_s = time.monotonic()
        self._last_watermarks_s = 0.0
        self._errors = RateLimitedLog(log, 10.0)
        self.joined = False
        self.commit_failures = 0

    # -- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        self._consumer = Consumer(consumer_settings(self.config, self.group_id))
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)

    def close(self, final_stores: dict[TopicPartitionKey, int]) -> int:
        """Store and commit the final offsets, leave the group and close; return the partitions committed."""
        if self._consumer is None:
            return 0
        self._store(final_stores)
        committed = self._commit(force=True)
        # close() runs the revoke callback for the remaining partitions, which commits again if needed.
        self._consumer.close()
        self._consumer = None
        return committed

    # -- one step ----------------------------------------------------------

    def step(self, request: StepRequest) -> StepResult:
        consumer = self._require_consumer()
        self._store(request.stores)
        self._reconcile_pauses(request)
        self._commit(force=False)

        messages: list[Message] = []
        errors: list[PartitionError] = []
        # Even with every partition paused, consume() or poll() must run: they serve the rebalance callbacks.
        batch = self._next_batch(consumer, max(1, min(CONSUME_BATCH_RECORDS, request.max_records)))
        for message in batch:
            error = message.error()
            if error is None:
                messages.append(message)
            else:
                partition_error = self._handle_error(message, error)
                if partition_error is not None:
                    errors.append(partition_error)

        watermarks = None
        now = time.monotonic()
        if now - self._last_watermarks_s >= WATERMARK_INTERVAL_S:
            self._last_watermarks_s = now
            watermarks = {}
            for topic, partition in self._assigned:
                try:
                    offsets = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
                except KafkaException:
                    offsets = None
                # Cached watermarks come from fetch responses; before the first one they are unknown.
                if offsets is not None and offsets[1] >= 0:
                    watermarks[(topic, partition)] = offsets
        return StepResult(messages, errors, watermarks, len(self._paused), len(self._assigned))

    @staticmethod
    def _next_batch(consumer: Consumer, limit: int) -> list[Message]:
        """Return up to ``limit`` records without holding back the ones already fetched.

        consume(n, timeout) returns only when it has n records or the timeout
        passed, so at a low rate every record would wait up to
        CONSUME_TIMEOUT_S. Taking what is ready without waiting, and else
        waiting in poll(), which returns with the first record, keeps that
        delay out of the end-to-end latency.
        """
        batch = consumer.consume(limit, 0)
        if batch:
            return batch
        first = consumer.poll(CONSUME_TIMEOUT_S)
        if first is None:
            return []
        if limit == 1:
            return [first]
        return [first, *consumer.consume(limit - 1, 0)]

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise RuntimeError("the Kafka consumer is not open")
        return self._consumer

    def _store(self, stores: dict[TopicPartitionKey, int]) -> None:
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in stores.items()
                   if (topic, partition) in self._assigned]
        if not offsets:
            return
        try:
            self._require_consumer().store_offsets(offsets=offsets)
        except KafkaException as exc:
            # A partition revoked since the daemon computed the offset; its work was already dropped.
            self._errors.log(logging.WARNING, "store", "storing offsets failed: %s", exc)
            return
        for entry in offsets:
            self._stored[(entry.topic, entry.partition)] = entry.offset
        self._uncommitted = True

    def _commit(self, force: bool) -> int:
        """Commit the stored offsets when due (or when forced); return how many partitions were committed."""
        now = time.monotonic()
        if not self._uncommitted or (not force and now - self._last_commit_s < self.config.replicator.commit_interval_s):
            return 0
        self._last_commit_s = now
        try:
            committed = self._require_consumer().commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                self._uncommitted = False
                return 0
            self.commit_failures += 1
            self._on_commit(False)
            self._errors.log(logging.WARNING, "commit", "committing offsets of group %s failed (retried in %.1f s): %s",
                             self.group_id, self.config.replicator.commit_interval_s, exc)
            return 0
        self._uncommitted = False
        self._on_commit(True)
        return len(committed or [])

    def _reconcile_pauses(self, request: StepRequest) -> None:
        consumer = self._require_consumer()
        wanted = set(self._assigned) if request.pause_all else (request.paused & self._assigned)
        to_pause = wanted - self._paused
        to_resume = (self._paused - wanted) & self._assigned
        if to_pause:
            consumer.pause([TopicPartition(topic, partition) for topic, partition in sorted(to_pause)])
            self._paused |= to_pause
        if to_resume:
            consumer.resume([TopicPartition(topic, partition) for topic, partition in sorted(to_resume)])
            self._paused -= to_resume

    def _handle_error(self, message: Message, error: KafkaError) -> PartitionError | None:
        if error.fatal():
            raise KafkaException(error)
        if error.code() != KafkaError._AUTO_OFFSET_RESET or message.topic() is None:
            self._errors.log(logging.WARNING, f"consumer-{error.code()}", "Kafka consumer error: %s", error.str())
            return None

        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if offset is None or offset < 0:
            # No committed offset although the assign callback found none either: start at the beginning,
            # as the assign callback would have.
            log.warning("partition %s:%d has no committed offset; assigning it from the earliest offset",
                        topic, partition)
            consumer = self._require_consumer()
            consumer.incremental_unassign([TopicPartition(topic, partition)])
            consumer.incremental_assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            return None
        return PartitionError(topic, partition, offset, "offset_out_of_range",
                              f"committed offset {offset} of {topic}:{partition} is no longer in the log "
                              f"(retention or deleted records): {error.str()}")

    # -- rebalance callbacks -----------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.joined = True
        self._on_rebalance("assigned", len(partitions))
        if not partitions:
            return

        # Read the committed offsets so partitions without one start at the beginning explicitly.
        committed = self._committed(consumer, partitions)
        start: dict[TopicPartitionKey, int | None] = {}
        assignment = []
        if committed is None:
            # Let librdkafka fetch the committed offsets itself; a partition without one then reports
            # _AUTO_OFFSET_RESET without an offset, and _handle_error assigns it from the beginning.
            for entry in partitions:
                start[(entry.topic, entry.partition)] = None
                assignment.append(TopicPartition(entry.topic, entry.partition))
        else:
            for entry in committed:
                key = (entry.topic, entry.partition)
                if entry.offset >= 0:
                    start[key] = entry.offset
                    assignment.append(TopicPartition(entry.topic, entry.partition, entry.offset))
                else:
                    start[key] = None
                    assignment.append(TopicPartition(entry.topic, entry.partition, OFFSET_BEGINNING))
        self.handler.partitions_assigned(start)
        consumer.incremental_assign(assignment)
        self._assigned |= set(start)
        if committed is None:
            log.info("assigned %d partitions of %s; librdkafka reads their committed offsets", len(start), self.topic)
        else:
            log.info("assigned %d partitions of %s: %s", len(start), self.topic, _describe_starts(start))

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition] | None:
        for attempt in range(1, COMMITTED_ATTEMPTS + 1):
            try:
                return consumer.committed(partitions, timeout=COMMITTED_TIMEOUT_S)
            except KafkaException as exc:
                log.warning("reading committed offsets of group %s failed (attempt %d of %d): %s",
                            self.group_id, attempt, COMMITTED_ATTEMPTS, exc)
        return None

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_rebalance("revoked", len(partitions))
        keys = [(entry.topic, entry.partition) for entry in partitions]
        final = self.handler.partitions_revoked(keys)
        offsets = []
        for key in keys:
            offset = max(final.get(key, -1), self._stored.get(key, -1))
            if offset >= 0:
                offsets.append(TopicPartition(key[0], key[1], offset))
        if offsets:
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
                self._on_commit(True)
                log.info("revoked %d partitions; committed offsets %s", len(keys), _describe_offsets(offsets))
            except KafkaException as exc:
                self.commit_failures += 1
                self._on_commit(False)
                log.warning("committing offsets of %d revoked partitions failed; the new owner repeats "
                            "their records since the last commit: %s", len(offsets), exc)
        else:
            log.info("revoked %d partitions; nothing to commit", len(keys))
        self._forget(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_rebalance("lost", len(partitions))
        keys = [(entry.topic, entry.partition) for entry in partitions]
        log.warning("lost %d partitions (the group moved on without this member); their unfinished work is "
                    "dropped and nothing is committed for them", len(keys))
        self.handler.partitions_lost(keys)
        self._forget(keys)

    def _forget(self, keys: list[TopicPartitionKey]) -> None:
        for key in keys:
            self._assigned.discard(key)
            self._paused.discard(key)
            self._stored.pop(key, None)


def _describe_starts(start: dict[TopicPartitionKey, int | None]) -> str:
    return ", ".join(f"{partition}@{'earliest' if offset is None else offset}"
                     for (_, partition), offset in sorted(start.items()))


def _describe_offsets(offsets: list[TopicPartition]) -> str:
    return ", ".join(f"{entry.partition}@{entry.offset}" for entry in offsets)
