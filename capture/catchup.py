"""The catch-up scanner of one source: closes gaps by scanning the keyspace.

For the oldest open gap it SCANs every watched key (throttled) and publishes,
as ``catchup`` events, the keys whose seen time is not older than the gap's
start minus the clock-skew margin. Placeholders carry no information and are
skipped; values that are not seen times are counted as bad values.

The gap's cursor advances only past batches Kafka acknowledged, and it is
persisted with the capture's state, so a restart resumes the scan instead of
starting over. A Redis restart does reset it, because a SCAN cursor means
nothing to a new server run. The gap closes once the scan wrapped around and every
event it produced was acknowledged; a failed delivery restarts the scan.

NOTE: a key deleted inside a gap is not seen by a scan, so its delete is not
replicated. Echo never deletes seen-time keys on purpose, and expiry never
deletes in Kask, so this only matters for deletes made by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import redis

from capture.gaps import Gap, GapLog
from capture.metrics import CaptureMetrics
from capture.patterns import KeyFilter
from capture.publisher import Publisher, QueueFull, Ticket
from capture.reader import KeyReader, build_event
from capture.sources import Source
from echoseen import echo_value, events
from echoseen.ratelimit import TokenBucket
from echoseen.retry import Backoff

log = logging.getLogger(__name__)


class CatchupScanner:
    def __init__(self, source: Source, client_factory, reader_factory, publisher: Publisher, gap_log: GapLog,
                 metrics: CaptureMetrics, key_filter: KeyFilter, own_key_prefix: bytes, scan_count: int,
                 max_keys_per_s: float, clock_skew_margin_s: float, max_value_bytes: int,
                 run_id_provider, server_time_provider) -> None:
        self.source = source
        self._client_factory = client_factory
        self._reader_factory = reader_factory
        self.publisher = publisher
        self.gap_log = gap_log
        self.metrics = metrics
        self.key_filter = key_filter
        self._own_key_prefix = own_key_prefix
        self.scan_count = scan_count
        self.bucket = TokenBucket(max_keys_per_s)
        self.skew_margin_us = int(clock_skew_margin_s * 1_000_000)
        self.max_value_bytes = max_value_bytes
        self._run_id = run_id_provider
        self._server_time_us = server_time_provider
        self._match = key_filter.scan_match()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"catchup-{source.name}", daemon=True)
        self._label = source.name
        self.keys_published = 0
        self.active_gap: Gap | None = None

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.gap_log.changed.set()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        backoff = Backoff(base_s=0.5, cap_s=15.0)
        while not self._stop.is_set():
            gap = self.gap_log.next_to_scan()
            if gap is None:
                self.gap_log.changed.wait(1.0)
                self.gap_log.changed.clear()
                continue
            try:
                self._scan(gap)
                backoff.reset()
            except (redis.RedisError, OSError) as exc:
                delay_s = backoff.next_delay_s()
                log.warning("catch-up scan of %s for gap %s failed: %s; retrying in %.1f s (attempt %d)",
                            self.source.name, gap.id, exc, delay_s, backoff.attempt)
                self._stop.wait(delay_s)
        self.active_gap = None

    def _wait_for_kafka(self) -> None:
        # Scanning while Kafka refuses records would only fill the local queue; wait for it to drain.
        while not self._stop.is_set() and self.publisher.queue_length() > 100_000:
            self._stop.wait(0.5)

    def _scan(self, gap: Gap) -> None:
        self.active_gap = gap
        run_id = self._run_id()
        if gap.run_id != run_id:
            gap.cursor, gap.run_id = 0, run_id
        threshold = echo_value.ts_mw_from_epoch_us(max(0, gap.start_us - self.skew_margin_us))
        started = time.monotonic()
        log.info("catch-up scan of %s for gap %s (%s) starts at cursor %d: publishing keys seen at or after %s",
                 self.source.name, gap.id, ",".join(gap.reasons), gap.cursor, threshold)
        gap.scan_started = True
        client = self._client_factory()
        reader = self._reader_factory()
        in_flight: deque[tuple[int, Ticket]] = deque()
        failed_batches = 0

        def settled(ticket: Ticket) -> None:
            nonlocal failed_batches
            if ticket.failed:
                failed_batches += 1

        cursor = gap.cursor
        try:
            while not self._stop.is_set():
                if not self.gap_log.contains(gap):
                    log.info("gap %s was merged into a newer gap; its scan stops here", gap.id)
                    return
                self._wait_for_kafka()
                cursor, keys = client.scan(cursor, match=self._match, count=self.scan_count)
                keys = [key for key in keys
                        if self.key_filter.matches(key) and not key.startswith(self._own_key_prefix)]
                self.bucket.acquire(max(len(keys), 1))
                ticket = Ticket(on_done=settled)
                self._publish(reader, keys, threshold, ticket, gap)
                ticket.seal()
                in_flight.append((cursor, ticket))
                gap.cursor = self._acknowledged_cursor(in_flight, gap.cursor)
                if cursor == 0:
                    break
            if self._stop.is_set():
                return
            self._await(in_flight)
            if failed_batches or gap.needs_rescan:
                log.warning("catch-up scan of %s for gap %s had failed deliveries; scanning again",
                            self.source.name, gap.id)
                gap.cursor, gap.needs_rescan = 0, False
                return
            if self.gap_log.close(gap, self._server_time_us()):
                log.info("gap %s on %s closed: window %.1f s (%s), %d keys scanned, %d published, scan took %.1f s",
                         gap.id, self.source.name, (gap.end_us - gap.start_us) / 1e6, ",".join(gap.reasons),
                         gap.scanned_keys, gap.published_keys, time.monotonic() - started)
        finally:
            client.close()
            self.active_gap = None

    def _publish(self, reader: KeyReader, keys: list[bytes], threshold: str, ticket: Ticket, gap: Gap) -> None:
        if not keys:
            return
        states = reader.read(keys)
        gap.scanned_keys += len(states)
        self.metrics.catchup_scanned.labels(self._label).inc(len(states))
        run_id = self._run_id()
        for state in states:
            if not state.exists:
                continue
            decoded = state.decoded(self.max_value_bytes)
            if decoded.seen_time is None:
                self.metrics.bad_values.labels(self._label, decoded.error.value).inc()
                continue
            if decoded.is_placeholder or decoded.seen_time < threshold:
                continue
            event = build_event(state, events.ORIGIN_CATCHUP, None, self.source, run_id, self.max_value_bytes)
            while True:
                try:
                    self.publisher.publish(event, ticket)
                    break
                except QueueFull:
                    self.metrics.produce_errors.labels("queue_full").inc()
                    if self._stop.wait(0.5):
                        return
            gap.published_keys += 1
            self.keys_published += 1
            self.metrics.catchup_published.labels(self._label).inc()

    @staticmethod
    def _acknowledged_cursor(in_flight: deque[tuple[int, Ticket]], current: int) -> int:
        """Return the cursor after the last batch whose events, and all before it, are acknowledged."""
        cursor = current
        while in_flight and in_flight[0][1].done:
            cursor, _ = in_flight.popleft()
        return cursor

    def _await(self, in_flight: deque[tuple[int, Ticket]]) -> None:
        while in_flight and not self._stop.is_set():
            if all(ticket.done for _, ticket in in_flight):
                return
            self._stop.wait(0.05)
