"""The snapshot: publish every selected key of every server as an origin "snapshot" event.

Delivery guarantee: at least once. Each batch of events is produced under a
:class:`~capture.publisher.Ticket`. The checkpoint moves to a batch's SCAN
cursor only after Kafka acknowledged that batch and every batch before it,
so a crash or a kill never skips a key. Keys between the checkpoint and the
crash are published again after ``--resume``. The replicator applies events
monotonically, so these duplicates, and the order between snapshot and live
events, do not matter.

Values that are not seen times (bad values) are counted and reported with
sample keys but never published, unlike the live capture, which publishes
them for the replicator to dead-letter: a snapshot meets every bad value
that has accumulated over years at once, and one report is more useful to an
operator than a flood of dead letters. Placeholders (19700101000001) carry no
information and are skipped too.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import Any

from capture import backfill_checkpoint
from capture.backfill_checkpoint import Checkpoint, ServerCheckpoint
from capture.backfill_plan import Plan
from capture.backfill_progress import PingMonitor, Progress
from capture.backfill_scan import (Chunk, Finished, Restarted, ScanFeed, Started, drive_feed, feed_settings,
                                   scan_fraction)
from capture.publisher import Publisher, QueueFull, Ticket
from capture.reader import KeyState
from capture.sources import Source
from echoseen import echo_value, events
from echoseen.config import Config
from echoseen.errors import ConfigError, EchoseenError, ServiceUnavailable

log = logging.getLogger(__name__)

SAMPLE_KEYS_PER_REASON = 5
# Upper bound on waiting for Kafka to acknowledge what is queued when the job ends or stops.
FLUSH_TIMEOUT_S = 60.0
PING_COLLECT_INTERVAL_S = 1.0

SKIP_PLACEHOLDER = "placeholder"
SKIP_BEFORE_CUTOFF = "before_cutoff"
SKIP_GONE = "gone"  # deleted or expired between SCAN and the read


class Counts:
    """Counts of one server's work; the checkpoint stores those its cursor covers."""

    __slots__ = ("scanned", "matched", "published", "skipped", "bad_values")

    def __init__(self) -> None:
        self.scanned = 0
        self.matched = 0
        self.published = 0
        self.skipped: dict[str, int] = {}
        self.bad_values: dict[str, int] = {}

    def add(self, other: "Counts | Unit") -> None:
        self.scanned += other.scanned
        self.matched += other.matched
        self.published += other.published
        for reason, count in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count
        for reason, count in other.bad_values.items():
            self.bad_values[reason] = self.bad_values.get(reason, 0) + count

    def to_json(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "matched": self.matched, "published": self.published,
                "skipped": dict(sorted(self.skipped.items())), "bad_values": dict(sorted(self.bad_values.items()))}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "Counts":
        counts = cls()
        counts.scanned = int(document.get("scanned", 0))
        counts.matched = int(document.get("matched", 0))
        counts.published = int(document.get("published", 0))
        counts.skipped = {str(k): int(v) for k, v in document.get("skipped", {}).items()}
        counts.bad_values = {str(k): int(v) for k, v in document.get("bad_values", {}).items()}
        return counts


class Unit:
    """One chunk's events under one ticket, and the scan position it completes."""

    __slots__ = ("epoch", "run_id", "cursor_after", "final", "scanned", "matched", "published", "skipped",
                 "bad_values", "ticket", "abandoned")

    def __init__(self, chunk: Chunk) -> None:
        self.epoch = chunk.epoch
        self.run_id = chunk.run_id
        self.cursor_after = chunk.cursor_after
        self.final = chunk.final
        self.scanned = chunk.scanned
        self.matched = len(chunk.states)
        self.published = 0
        self.skipped: dict[str, int] = {}
        self.bad_values: dict[str, int] = {}
        self.ticket = Ticket(payload=self)
        # Set when the job stopped before every event of the unit was queued; the checkpoint never passes it.
        self.abandoned = False


class BadValueSamples:
    """A few sample keys per bad-value reason, without duplicates."""

    def __init__(self, saved: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.samples: dict[str, list[dict[str, Any]]] = {reason: list(items) for reason, items in (saved or {}).items()}

    def add(self, reason: str, state: KeyState, server: str) -> None:
        items = self.samples.setdefault(reason, [])
        if len(items) >= SAMPLE_KEYS_PER_REASON:
            return
        key = events.key_text(state.key)
        if any(item["key"] == key for item in items):
            return
        items.append(sample_entry(state, server))


def sample_entry(state: KeyState, server: str) -> dict[str, Any]:
    """Describe a bad value's key: its size is bytes for a string and elements (fields, members) otherwise."""
    kind = state.redis_type or "string"
    size = state.size if state.size is not None else len(state.value or b"")
    return {"key": events.key_text(state.key), "type": kind, "size": size,
            "size_unit": "bytes" if kind == "string" else "elements", "server": server}


class ServerRun:
    """The state of one server during this run."""

    def __init__(self, source: Source, entry: ServerCheckpoint) -> None:
        self.source = source
        self.entry = entry
        self.committed = Counts.from_json(entry.counts)
        self.samples = BadValueSamples(entry.counts.get("bad_value_samples"))
        self.this_run = Counts()
        self.inflight: collections.deque[Unit] = collections.deque()
        self.epoch = 0
        self.fraction = checkpoint_fraction(entry)
        self.dbsize = 0
        self.delivery_error: str | None = None
        self.started = False

    def save_counts(self) -> None:
        self.entry.counts = self.committed.to_json() | {"bad_value_samples": self.samples.samples}


def checkpoint_fraction(entry: ServerCheckpoint) -> float:
    return 1.0 if entry.finished else scan_fraction(entry.cursor)


class SnapshotJob:
    """Publish the selected keys of every source, checkpointing acknowledged scan positions."""

    def __init__(self, config: Config, plan: Plan, sources: list[Source], checkpoint: Checkpoint,
                 checkpoint_path: Path, stop: threading.Event, progress: Progress, resumed: bool) -> None:
        self.config = config
        self.plan = plan
        self.sources = sources
        self.checkpoint = checkpoint
        self.checkpoint_path = checkpoint_path
        self.stop = stop
        self.progress = progress
        self.resumed = resumed
        self.ping = PingMonitor(config, sources, config.backfill.ping_sample_interval_s)
        self.runs: dict[str, ServerRun] = {}
        self._publisher: Publisher | None = None
        self._cutoff = plan.cutoff_ts_mw
        self._max_value_bytes = config.redis.max_value_bytes
        self._settings = feed_settings(config, plan.match, plan.filters)
        self._last_checkpoint = 0.0
        self._last_ping_collect = 0.0
        self._current: ServerRun | None = None
        self.failure: EchoseenError | None = None
        # From the first key read to the last acknowledgement: the rate benchmarks compare.
        self._copy_started: float | None = None
        self._copy_ended: float | None = None

    # ------------------------------------------------------------------ driving

    def run(self, publisher: Publisher) -> dict[str, Any]:
        """Scan every source and return the summary.

        A stop and the product's own errors (Redis or Kafka unavailable, a
        failed delivery) end in the summary's status. Ctrl+C twice and
        unexpected exceptions propagate, the latter after the final checkpoint.
        """
        self._publisher = publisher
        started = time.monotonic()
        status, error = "complete", None
        self.ping.start()
        try:
            for source in self.sources:
                entry = self.checkpoint.servers.setdefault(source.name, ServerCheckpoint())
                run = self.runs[source.name] = ServerRun(source, entry)
                if entry.finished:
                    log.info("Redis %s is already complete in the checkpoint; skipping it", source.name)
                    continue
                if not self._scan_server(run):
                    status = "interrupted"
                    break
        except EchoseenError as exc:
            status, error = "failed", str(exc)
            self.failure = exc
        except KeyboardInterrupt:
            # A second Ctrl+C: stop without waiting for Kafka. The checkpoint on disk covers acknowledged keys only.
            self.progress.clear()
            self.ping.stop()
            raise
        except BaseException:
            # An unexpected error still gets the acknowledged work into the checkpoint before it propagates.
            self.progress.clear()
            self._finish("failed", None)
            self.ping.stop()
            raise
        self.progress.clear()
        status, error = self._finish(status, error)
        self.ping.stop()
        return self._summary(status, error, time.monotonic() - started)

    def _scan_server(self, run: ServerRun) -> bool:
        """Scan one server until its feed finished; False when the job was asked to stop."""
        self._current = run
        entry = run.entry
        feed = ScanFeed(self.config, run.source, self._settings, entry.cursor, entry.run_id)
        self.ping.scan_started(run.source.name)
        try:
            finished = drive_feed(feed, lambda message: self._handle(run, message), self._tick, self.stop)
        finally:
            self.ping.scan_stopped(run.source.name)
            self.progress.end(run.fraction, run.this_run.scanned, run.this_run.published)
        if finished:
            log.info("scanned Redis %s to the end: %d keys scanned and %d matched in this run; waiting for "
                     "Kafka to acknowledge the rest", run.source.name, run.this_run.scanned, run.this_run.matched)
        return finished

    def _handle(self, run: ServerRun, message: object) -> None:
        if isinstance(message, Chunk):
            self._publish(run, message)
        elif isinstance(message, Started):
            self._on_started(run, message)
        elif isinstance(message, Restarted):
            run.epoch = message.epoch
            run.entry.cursor = 0
            run.entry.run_id = message.new_run_id
            run.entry.finished = False
            run.entry.restarts += 1
            run.dbsize = message.dbsize
            run.fraction = 0.0
            self.progress.restart(message.dbsize)
        elif isinstance(message, Finished):
            run.fraction = 1.0

    def _on_started(self, run: ServerRun, message: Started) -> None:
        entry = run.entry
        if message.stale_run_id is not None:
            log.warning("the checkpoint of Redis %s was taken on run_id %s, but the server now runs as %s: it "
                        "restarted or failed over since, so the saved cursor is invalid; scanning %s from the "
                        "start", run.source.name, message.stale_run_id, message.run_id, run.source.name)
            entry.restarts += 1
        entry.cursor = message.cursor
        entry.run_id = message.run_id
        run.dbsize = message.dbsize
        run.fraction = checkpoint_fraction(entry)
        run.started = True
        if self._copy_started is None:
            self._copy_started = time.monotonic()
        where = "the start" if message.cursor == 0 else f"cursor {message.cursor} ({100 * run.fraction:.1f} %)"
        log.info("scanning Redis %s (version %s, run_id %s, DBSIZE %d) from %s", run.source.name,
                 message.version, message.run_id, message.dbsize, where)
        self.progress.begin(run.source.name, message.dbsize, run.fraction)

    # ------------------------------------------------------------------ the hot loop

    def _publish(self, run: ServerRun, chunk: Chunk) -> None:
        unit = Unit(chunk)
        ticket = unit.ticket
        publish = self._publisher.publish_encoded
        encode = events.UpsertEncoder(events.ORIGIN_SNAPSHOT, None, run.source.address, run.source.db,
                                      chunk.run_id).encode
        cutoff = self._cutoff
        max_value_bytes = self._max_value_bytes
        placeholder = echo_value.PLACEHOLDER
        skipped = unit.skipped
        published = 0
        for state in chunk.states:
            if not state.exists:
                skipped[SKIP_GONE] = skipped.get(SKIP_GONE, 0) + 1
                continue
            decoded = state.decoded(max_value_bytes)
            seen_time = decoded.seen_time
            if seen_time is None:
                reason = decoded.error.value if decoded.error is not None else "unknown"
                self._bad_value(run, unit, state, reason)
                continue
            if seen_time == placeholder:
                skipped[SKIP_PLACEHOLDER] = skipped.get(SKIP_PLACEHOLDER, 0) + 1
                continue
            if seen_time < cutoff:
                skipped[SKIP_BEFORE_CUTOFF] = skipped.get(SKIP_BEFORE_CUTOFF, 0) + 1
                continue
            key = state.key
            value = encode(key, state.value, seen_time, state.expire_at_ms, state.server_time_us)
            try:
                publish(key, value, ticket)
            except QueueFull:
                if not self._publish_when_room(key, value, ticket):
                    unit.abandoned = True
                    break
            published += 1
        unit.published = published
        ticket.seal()
        run.inflight.append(unit)

        # This run's counts include work not yet acknowledged, except "published", which counts acknowledgements.
        this_run = run.this_run
        this_run.scanned += chunk.scanned
        this_run.matched += unit.matched
        for reason, count in unit.skipped.items():
            this_run.skipped[reason] = this_run.skipped.get(reason, 0) + count
        for reason, count in unit.bad_values.items():
            this_run.bad_values[reason] = this_run.bad_values.get(reason, 0) + count
        run.fraction = chunk.fraction

    def _bad_value(self, run: ServerRun, unit: Unit, state: KeyState, reason: str) -> None:
        unit.bad_values[reason] = unit.bad_values.get(reason, 0) + 1
        run.samples.add(reason, state, run.source.name)

    def _publish_when_room(self, key: bytes, value: bytes, ticket: Ticket) -> bool:
        """Retry an event while the producer's queue is full; False when the job is stopping instead."""
        while not self.stop.is_set():
            time.sleep(0.05)
            try:
                self._publisher.publish_encoded(key, value, ticket)
                return True
            except QueueFull:
                continue
        return False

    # ------------------------------------------------------------------ acknowledgements and checkpoints

    def _drain(self, run: ServerRun) -> None:
        """Fold acknowledged units, oldest first, into the checkpoint; stop at the first incomplete one."""
        inflight = run.inflight
        entry = run.entry
        while inflight and inflight[0].ticket.done:
            unit = inflight[0]
            if unit.ticket.failed:
                if run.delivery_error is None:
                    run.delivery_error = (
                        f"Kafka did not acknowledge {unit.ticket.failed} event(s) from Redis {run.source.name} "
                        f"(last error: {self._publisher.last_error}); check [kafka] bootstrap_servers and the "
                        "broker, then rerun with --resume: the checkpoint stops before these keys")
                return
            if unit.abandoned:
                return
            inflight.popleft()
            run.committed.add(unit)
            run.this_run.published += unit.published
            if unit.epoch == run.epoch and unit.cursor_after is not None:
                entry.cursor = unit.cursor_after
                entry.run_id = unit.run_id
                if unit.final:
                    entry.finished = True

    def _tick(self) -> None:
        now = time.monotonic()
        for run in self.runs.values():
            if run.inflight:
                self._drain(run)
            if run.delivery_error:
                raise _DeliveryFailed(run.delivery_error)
        current = self._current
        if current is not None:
            self.progress.update(current.fraction, current.this_run.scanned, current.this_run.published)
        if now - self._last_ping_collect >= PING_COLLECT_INTERVAL_S:
            self._last_ping_collect = now
            self.ping.collect()
        if now - self._last_checkpoint >= self.config.backfill.checkpoint_interval_s:
            self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        self._last_checkpoint = time.monotonic()
        for run in self.runs.values():
            run.save_counts()
        try:
            backfill_checkpoint.save(self.checkpoint_path, self.checkpoint)
        except OSError as exc:
            raise ConfigError(f"cannot write the backfill checkpoint {str(self.checkpoint_path)!r} ([backfill] "
                              f"checkpoint_file): {exc.strerror}; fix the path or its permissions") from exc

    def _finish(self, status: str, error: str | None) -> tuple[str, str | None]:
        """Wait for Kafka's acknowledgements (bounded), fold them in and write the final checkpoint."""
        if self._publisher is not None:
            unacknowledged = self._publisher.flush(FLUSH_TIMEOUT_S)
            if unacknowledged:
                log.warning("%d events were still unacknowledged after %.0f s; the checkpoint stops before them",
                            unacknowledged, FLUSH_TIMEOUT_S)
        self._copy_ended = time.monotonic()
        for run in self.runs.values():
            self._drain(run)
            if run.delivery_error and error is None:
                status, error = "failed", run.delivery_error
                self.failure = _DeliveryFailed(run.delivery_error)
        if status == "complete" and not self.checkpoint.finished:
            status = "interrupted"
            error = error or "the scan ended before Kafka acknowledged every event"
        try:
            self._write_checkpoint()
        except ConfigError as exc:
            log.error("%s", exc)
            status, error = "failed", str(exc)
            self.failure = exc
        return status, error

    # ------------------------------------------------------------------ summary

    def _summary(self, status: str, error: str | None, duration_s: float) -> dict[str, Any]:
        totals = Counts()
        this_run = Counts()
        copy_s = 0.0
        if self._copy_started is not None and self._copy_ended is not None:
            copy_s = self._copy_ended - self._copy_started
        samples: dict[str, list[dict[str, Any]]] = {}
        servers = []
        for source in self.sources:
            run = self.runs.get(source.name)
            if run is None:
                entry = self.checkpoint.servers.get(source.name, ServerCheckpoint())
                servers.append({"server": source.name, "finished": entry.finished, "cursor": entry.cursor,
                                "run_id": entry.run_id, "restarts": entry.restarts, "scanned_percent": 0.0,
                                "totals": Counts.from_json(entry.counts).to_json(), "this_run": Counts().to_json(),
                                "ping": None})
                continue
            totals.add(run.committed)
            this_run.add(run.this_run)
            for reason, items in run.samples.samples.items():
                merged = samples.setdefault(reason, [])
                merged.extend(items[:SAMPLE_KEYS_PER_REASON - len(merged)])
            servers.append({
                "server": source.name,
                "finished": run.entry.finished,
                "cursor": run.entry.cursor,
                "run_id": run.entry.run_id,
                "restarts": run.entry.restarts,
                "dbsize": run.dbsize,
                "scanned_percent": round(100.0 * (1.0 if run.entry.finished else run.fraction), 2),
                "totals": run.committed.to_json(),
                "this_run": run.this_run.to_json(),
                "ping": self.ping.impact(source.name) if run.started else None,
            })
        return {
            "mode": "snapshot",
            "status": status,
            "error": error,
            "topic": self.config.kafka.topic,
            "selection": self.plan.to_json(),
            "checkpoint_file": str(self.checkpoint_path),
            "resumed": self.resumed,
            "duration_s": round(duration_s, 3),
            "this_run": this_run.to_json() | {
                "copy_s": round(copy_s, 3),
                "scanned_per_s": round(this_run.scanned / copy_s) if copy_s > 0 else 0,
                "published_per_s": round(this_run.published / copy_s) if copy_s > 0 else 0,
            },
            "totals": totals.to_json(),
            "bad_value_samples": samples,
            "servers": servers,
        }


class _DeliveryFailed(ServiceUnavailable):
    """Kafka reported a delivery failure; the job stops and keeps the checkpoint before it."""
