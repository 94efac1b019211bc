"""The publisher: the Kafka producer behind the capture, the catch-up and the backfill.

It produces with an idempotent producer (``acks=all``, ordered retries,
compressed batches) and reports every delivery, success or failure, to the
:class:`Ticket` the record was produced under. Callers use tickets to learn
when a batch is durable in Kafka; that is what lets the capture advance its
watermark and the backfill advance its checkpoint only past acknowledged work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from echoseen import events
from echoseen.config import Config
from echoseen.kafka import producer_settings
from echoseen.logs import RateLimitedLog

log = logging.getLogger(__name__)


class Ticket:
    """Counts the outstanding deliveries of one batch and calls back once all of them are settled.

    The thread that creates a ticket adds its records and seals it; delivery
    reports settle them from the Kafka client's thread.
    """

    __slots__ = ("added", "settled", "failed", "sealed", "on_done", "_lock", "done", "payload", "report")

    def __init__(self, on_done: Callable[["Ticket"], None] | None = None, payload: object = None) -> None:
        self.added = 0
        self.settled = 0
        self.failed = 0
        self.sealed = False
        self.done = False
        self.on_done = on_done
        self.payload = payload
        self._lock = threading.Lock()
        # The delivery callback Publisher.publish_encoded() shares among the ticket's records.
        self.report: Callable[[KafkaError | None, Message], None] | None = None

    @property
    def outstanding(self) -> int:
        return self.added - self.settled

    def add(self) -> None:
        # No lock: only the owning thread adds, and only before seal(). settle() compares the counts only once
        # the ticket is sealed, so it never reads a count that is still moving.
        self.added += 1

    def settle(self, ok: bool) -> None:
        with self._lock:
            self.settled += 1
            if not ok:
                self.failed += 1
            finished = self.sealed and self.settled == self.added and not self.done
            if finished:
                self.done = True
        if finished and self.on_done:
            self.on_done(self)

    def seal(self) -> None:
        """Mark that no more records join this ticket; fires on_done now if all were already settled."""
        with self._lock:
            self.sealed = True
            finished = self.settled == self.added and not self.done
            if finished:
                self.done = True
        if finished and self.on_done:
            self.on_done(self)


class QueueFull(Exception):
    """The producer's local queue is full: Kafka is not taking records fast enough or not at all."""


class Publisher:
    """A thread-safe producer with a background thread that serves delivery reports."""

    def __init__(self, config: Config, on_delivered: Callable[[events.SeenTimeEvent | None, float], None]
                 | None = None, client_id: str = "echoseen-capture") -> None:
        self.topic = config.kafka.topic
        self._on_delivered = on_delivered
        self._errors = RateLimitedLog(log)
        self._producer = Producer(producer_settings(config, **{
            "client.id": client_id,
            "error_cb": self._on_client_error,
        }))
        self.last_error: str | None = None
        self.last_success_monotonic = time.monotonic()
        self.delivered = 0
        self.failed = 0
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def _on_client_error(self, error: KafkaError) -> None:
        self.last_error = str(error)
        self._errors.log(logging.WARNING, "client", "Kafka client error: %s", error)

    def publish(self, event: events.SeenTimeEvent, ticket: Ticket, topic: str | None = None) -> None:
        """Queue one event under a ticket; raise QueueFull when the local queue has no room."""
        key, value = events.encode(event)

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self._delivery_failed(error, message, ticket)
                return
            self._delivery_succeeded()
            if self._on_delivered is not None:
                self._on_delivered(event, time.time())
            ticket.settle(True)

        self._produce(topic or self.topic, key, value, ticket, delivered)

    def publish_encoded(self, key: bytes, value: bytes, ticket: Ticket) -> None:
        """Queue an event encoded by the caller under a ticket; raise QueueFull when the local queue has no room.

        The records of one ticket share one delivery callback, and on_delivered
        is not called: this is the backfill's path, which counts by ticket.
        """
        report = ticket.report
        if report is None:
            report = ticket.report = self._ticket_reporter(ticket)
        self._produce(self.topic, key, value, ticket, report)

    def _ticket_reporter(self, ticket: Ticket) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self._delivery_failed(error, message, ticket)
                return
            self._delivery_succeeded()
            ticket.settle(True)

        return delivered

    def _produce(self, topic: str, key: bytes, value: bytes, ticket: Ticket,
                 delivered: Callable[[KafkaError | None, Message], None]) -> None:
        ticket.add()
        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
        except BufferError as exc:
            ticket.settle(True)  # nothing was queued, so nothing will be reported for it
            raise QueueFull(str(exc)) from exc
        except KafkaException:
            ticket.settle(False)
            raise

    def _delivery_succeeded(self) -> None:
        self.delivered += 1
        self.last_success_monotonic = time.monotonic()

    def _delivery_failed(self, error: KafkaError, message: Message, ticket: Ticket) -> None:
        self.failed += 1
        self.last_error = str(error)
        self._errors.log(logging.ERROR, "delivery", "delivery of key %r to %s failed: %s",
                         events.key_text(message.key() or b""), message.topic(), error)
        ticket.settle(False)

    def produce_raw(self, topic: str, key: bytes | None, value: bytes | None, ticket: Ticket) -> None:
        """Queue a record that is not an event (state records); delivery is reported to the ticket."""
        ticket.add()

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self._errors.log(logging.ERROR, "state", "write to %s failed: %s", topic, error)
            ticket.settle(error is None)

        try:
            self._producer.produce(topic, value=value, key=key, on_delivery=delivered)
        except BufferError as exc:
            ticket.settle(False)
            raise QueueFull(str(exc)) from exc

    def queue_length(self) -> int:
        return len(self._producer)

    def flush(self, timeout_s: float) -> int:
        """Wait for every queued record to be delivered or to fail; return how many are still queued."""
        return self._producer.flush(timeout_s)

    def partition_count(self, timeout_s: float = 10.0) -> int:
        metadata = self._producer.list_topics(self.topic, timeout=timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return 0
        return len(topic.partitions)

    def close(self, timeout_s: float) -> int:
        remaining = self.flush(timeout_s)
        self._stop.set()
        self._poller.join(timeout=5)
        return remaining
