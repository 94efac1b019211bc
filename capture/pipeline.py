"""The live pipeline of one source: coalescing pending keys, reading them, publishing, advancing the watermark.

Notifications only say "read this key again", so pending keys are kept in an
insertion-ordered map: a key notified 100 times while it waits is read once.
Each entry carries the sequence number of its first insertion, and batches
leave the map in that order. A heartbeat barrier notes the last sequence
number enqueued when the heartbeat came back; once every batch up to that
number has been acknowledged by Kafka, the watermark moves to the
heartbeat's server time.

Nothing is dropped silently. When the pending map would grow past
``max_pending_keys``, when Kafka's local queue is full, when a batch read
fails or when a delivery fails, a gap starting at the current watermark is
recorded (covering every key whose notification was not yet acknowledged),
and the catch-up scan closes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque

import redis

from capture.gaps import GapLog
from capture.metrics import CaptureMetrics
from capture.publisher import Publisher, QueueFull, Ticket
from capture.reader import KeyReader, build_event
from capture.sources import Source
from echoseen import events
from echoseen.logs import RateLimitedLog
from echoseen.retry import Backoff

log = logging.getLogger(__name__)


class SourcePipeline:
    """Pending keys and the worker thread that turns them into events, for one source."""

    def __init__(self, source: Source, reader_factory, publisher: Publisher, gap_log: GapLog,
                 metrics: CaptureMetrics, batch_size: int, max_pending_keys: int, max_value_bytes: int,
                 run_id: str, watermark_us: int | None) -> None:
        self.source = source
        self._reader_factory = reader_factory
        self._reader: KeyReader | None = None
        self.publisher = publisher
        self.gap_log = gap_log
        self.metrics = metrics
        self.batch_size = batch_size
        self.max_pending_keys = max_pending_keys
        self.max_value_bytes = max_value_bytes
        self.run_id = run_id

        self._cond = threading.Condition()
        self._pending: OrderedDict[bytes, tuple[int, str]] = OrderedDict()
        self._enqueued_seq = 0
        self._dispatched_seq = 0
        self._tickets: deque[tuple[int, int, Ticket]] = deque()
        self._barriers: deque[tuple[int, int]] = deque()
        self.watermark_us = watermark_us
        self.last_server_time_us = 0
        # Server time at which the first subscription of this process was confirmed; set by the subscriber.
        self.subscribed_since_us: int | None = None

        self.notifications = 0
        self.published = 0
        self.bad_values = 0
        self._bad_log = RateLimitedLog(log)
        self._stop = threading.Event()
        self._drain = False
        self._thread = threading.Thread(target=self._run, name=f"pipeline-{source.name}", daemon=True)
        self._label = source.name

    # -- input side, called by the subscriber thread --------------------------------------------------

    def offer(self, batch: list[tuple[bytes, str]]) -> None:
        """Enqueue notified keys; a key already waiting is coalesced."""
        coalesced = 0
        with self._cond:
            pending = self._pending
            for key, event in batch:
                entry = pending.get(key)
                if entry is not None:
                    pending[key] = (entry[0], event)
                    coalesced += 1
                    continue
                self._enqueued_seq += 1
                pending[key] = (self._enqueued_seq, event)
            self.notifications += len(batch)
            if len(self._pending) > self.max_pending_keys:
                self._overflow("pending_overflow",
                               f"{len(self._pending)} keys waiting, more than max_pending_keys "
                               f"{self.max_pending_keys}")
            self._cond.notify()
        if coalesced:
            self.metrics.coalesced.labels(self._label).inc(coalesced)

    def barrier(self, server_time_us: int) -> None:
        """Note that every change before ``server_time_us`` has now been enqueued."""
        with self._cond:
            self._barriers.append((self._enqueued_seq, server_time_us))
            self.last_server_time_us = max(self.last_server_time_us, server_time_us)
            self._advance()

    def record_gap(self, start_us: int, end_us: int, reason: str) -> None:
        gap = self.gap_log.record(start_us, end_us, reason, self.run_id)
        self.metrics.gaps.labels(self._label, reason).inc()
        self.metrics.gap_duration.labels(self._label).observe(max(0, end_us - start_us) / 1e6)
        log.warning("gap recorded on %s: %s from %s to %s (%.1f s); open gap %s now spans %.1f s and will be "
                    "closed by a catch-up scan", self.source.name, reason, _fmt_us(start_us), _fmt_us(end_us),
                    max(0, end_us - start_us) / 1e6, gap.id, max(0, gap.end_us - gap.start_us) / 1e6)

    def pending_count(self) -> int:
        with self._cond:
            return len(self._pending)

    # -- gaps on the pipeline's own failures --------------------------------------------------------------

    def _gap_start_us(self) -> int:
        # Without a watermark yet, nothing has been acknowledged since the first subscription; the time
        # before it is covered by the startup gap (or, on a first start, by the backfill).
        if self.watermark_us is not None:
            return self.watermark_us
        return self.subscribed_since_us or self.last_server_time_us

    def _overflow(self, reason: str, detail: str) -> None:
        """Drop the pending keys after recording a gap that covers them. Caller holds the lock."""
        dropped = len(self._pending)
        self._dispatched_seq = self._enqueued_seq
        self._pending.clear()
        log.error("%s on %s: %s; dropped %d pending keys and recorded a gap to catch up instead",
                  reason, self.source.name, detail, dropped)
        self.record_gap(self._gap_start_us(), max(self.last_server_time_us, self._gap_start_us()), reason)
        self._advance()

    # -- watermark ----------------------------------------------------------------------------------------

    def _acked_through(self) -> int:
        if self._tickets:
            return self._tickets[0][0] - 1
        return self._dispatched_seq

    def _advance(self) -> None:
        """Move the watermark past every barrier whose keys are all acknowledged. Caller holds the lock."""
        while self._tickets and self._tickets[0][2].done:
            self._tickets.popleft()
        acked = self._acked_through()
        while self._barriers and self._barriers[0][0] <= acked:
            _, server_time_us = self._barriers.popleft()
            if self.watermark_us is None or server_time_us > self.watermark_us:
                self.watermark_us = server_time_us

    def _ticket_done(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.failed:
                self.metrics.produce_errors.labels("delivery_failed").inc(ticket.failed)
                self.record_gap(self._gap_start_us(), max(self.last_server_time_us, self._gap_start_us()),
                                "delivery_failed")
            self._advance()

    # -- worker -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, drain: bool, timeout_s: float) -> None:
        """Stop the worker; with ``drain`` it first reads and publishes every pending key."""
        with self._cond:
            self._drain = drain
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=timeout_s)

    def _take_batch(self) -> tuple[list[bytes], list[str], Ticket] | None:
        with self._cond:
            while not self._pending:
                if self._stop.is_set():
                    return None
                self._cond.wait(0.5)
            if self._stop.is_set() and not self._drain:
                return None
            keys, notifications = [], []
            first_seq = last_seq = 0
            while self._pending and len(keys) < self.batch_size:
                key, (seq, event) = self._pending.popitem(last=False)
                if not keys:
                    first_seq = seq
                last_seq = seq
                keys.append(key)
                notifications.append(event)
            self._dispatched_seq = last_seq
            ticket = Ticket(on_done=self._ticket_done)
            self._tickets.append((first_seq, last_seq, ticket))
            self.metrics.pending_keys.labels(self._label).set(len(self._pending))
            return keys, notifications, ticket

    def _run(self) -> None:
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        while True:
            taken = self._take_batch()
            if taken is None:
                return
            keys, notifications, ticket = taken
            try:
                self._publish_batch(keys, notifications, ticket)
                backoff.reset()
            except (redis.RedisError, OSError) as exc:
                self.metrics.read_errors.labels(self._label).inc()
                with self._cond:
                    log.warning("reading %d keys from %s failed: %s", len(keys), self.source.name, exc)
                    self.record_gap(self._gap_start_us(), max(self.last_server_time_us, self._gap_start_us()),
                                    "read_failed")
                self._reader = None
                delay_s = backoff.next_delay_s()
                log.warning("reconnecting the reader of %s in %.1f s (attempt %d)", self.source.name, delay_s,
                            backoff.attempt)
                self._stop.wait(delay_s)
            finally:
                ticket.seal()

    def _publish_batch(self, keys: list[bytes], notifications: list[str], ticket: Ticket) -> None:
        if self._reader is None:
            self._reader = self._reader_factory()
        states = self._reader.read(keys)
        if states:
            self.last_server_time_us = max(self.last_server_time_us, states[-1].server_time_us)
        for state, notification in zip(states, notifications):
            event = build_event(state, events.ORIGIN_LIVE, notification, self.source, self.run_id,
                                self.max_value_bytes)
            if event is None:
                self.bad_values += 1
                self.metrics.bad_values.labels(self._label, state.bad_reason).inc()
                self._bad_log.log(logging.WARNING, "bad_value",
                                  "not publishing key %r on %s: %s (type %s, size %s)",
                                  events.key_text(state.key), self.source.name, state.bad_reason,
                                  state.redis_type, state.size)
                continue
            try:
                self.publisher.publish(event, ticket)
                self.published += 1
            except QueueFull as exc:
                self.metrics.produce_errors.labels("queue_full").inc()
                with self._cond:
                    self._overflow("kafka_queue_full", f"the Kafka client queue is full ({exc}); Kafka is not "
                                   "acknowledging records")
                return


def _fmt_us(epoch_us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_us / 1e6)) + f".{epoch_us % 1_000_000 // 1000:03d}Z"
