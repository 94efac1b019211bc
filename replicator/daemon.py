"""Run the replicator: apply seen-time events from Kafka to Kask, at least once and never backwards.

Delivery guarantee: at least once. The replicator consumes the event topic in a
consumer group. It stores a record's offset only after Kask confirmed the write,
after the monotonic rules decided that nothing needs writing, or after the
record was parked in the dead-letter topic and the broker acknowledged it. A
crash repeats the records since the last commit, and the monotonic apply makes
repeats harmless: a write happens only when the incoming seen time is newer
than what MediaWiki would read from Kask.

Order and concurrency: records of one key are applied in partition order;
records of different keys are applied concurrently, up to
replicator.max_in_flight at a time. Timeouts, connection errors and 5xx
responses are retried with capped exponential backoff while the record's
partition is paused, and no later offset of that partition is stored meanwhile.
A write that got no response (a timeout, a lost connection or a 504) may still
reach Kask later. So when its record succeeds on a retry, the record finishes
only UNANSWERED_WRITE_HOLD_S after that write failed. The next records of its
key wait for it, and a late arrival of the old write cannot overwrite them.

A record with a schema version newer than the newest one this build supports
stops its partition (paused, nothing past it stored, readiness fails) until a
newer replicator runs. A committed offset that fell out of retention stops its partition too.
Both are logged at ERROR and exported as metrics.

SIGTERM or SIGINT: finish in-flight requests (up to replicator.shutdown_timeout_s),
commit the stored offsets, leave the group, print one summary line, exit 0.
Startup fails with exit status 2 when the event or dead-letter topic is missing
and 3 when Kafka is unreachable. An unreachable Kask does not stop the start:
records wait for it as in an outage, and readiness fails meanwhile.
Endpoints: /metrics, /healthz (the main loop is running) and /readyz (group
joined, no stopped partition, Kask responded recently) on
metrics.listen_address:replicator.metrics_port.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
from collections import Counter as Tally
from dataclasses import dataclass, field

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaException, Message

from echoseen import events, kafka as kafka_module
from echoseen.config import Config
from echoseen.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, ServiceUnavailable
from echoseen.health import HealthServer
from echoseen.logs import RateLimitedLog
from echoseen.ratelimit import TokenBucket
from echoseen.retry import Backoff
from replicator.apply import (REASON_KASK_SERVER_ERROR, Applier, KaskRetryableError, Outcome, RecordRejected,
                              codec_from_config)
from replicator.consumer import KafkaSide, PartitionError, StepRequest, StepResult, TopicPartitionKey
from replicator.dead_letters import DeadLetterError, DeadLetterProducer
from replicator.kask_client import KaskClient, KaskTransportError, key_for_log
from replicator.metrics import ReplicatorMetrics
from replicator.offsets import OffsetTracker

log = logging.getLogger(__name__)

DRY_RUN_GROUP_SUFFIX = ".dry-run"
# Partitions resume consuming once the buffer drained below this share of max_buffered_records.
# NOTE: on a backlog of a million records the replicator's resident memory stays near 330 MiB, most of it in
# the main heap. A buffer of 5,000 records instead of 20,000 did not lower it, and a fixed mmap threshold raised
# it; what keeps it resident is not known yet.
RESUME_BUFFER_RATIO = 0.75
# Maximum wait in the revoke callback for in-flight records of revoked partitions.
REVOKE_DRAIN_TIMEOUT_S = 10.0
# Readiness: Kask must have responded (any status below 500) within this window. While no
# record needs Kask, its /healthz is requested every KASK_PROBE_INTERVAL_S instead.
KASK_READY_WINDOW_S = 30.0
KASK_PROBE_INTERVAL_S = 5.0
# Liveness: the main loop iterates at least every 0.2 s; a revoke callback may hold it for
# REVOKE_DRAIN_TIMEOUT_S plus a commit.
LIVENESS_TIMEOUT_S = 60.0
STARTUP_KAFKA_TIMEOUT_S = 15.0
# A write (POST or DELETE) that got no response may still reach Kask later, through a slow proxy or a
# stalled server. Later records of its key wait until this long after it was sent, so such a late write
# cannot overwrite a newer seen time. NOTE: a guessed bound; a write held up longer can still land late.
UNANSWERED_WRITE_HOLD_S = 10.0
CALLBACK_TIMEOUT_S = REVOKE_DRAIN_TIMEOUT_S + 30.0


@dataclass(eq=False)
class PartitionState:
    """The asyncio side's view of one assigned partition."""

    topic: str
    partition: int
    start_offset: int | None
    tracker: OffsetTracker
    halt: asyncio.Event
    tasks: set[asyncio.Task] = field(default_factory=set)
    retrying: int = 0
    stopped_reason: str | None = None
    stopped_offset: int | None = None
    # Set while a revoke waits for in-flight records: no new attempts start.
    draining: bool = False
    # Set when the partition was revoked or lost: its offsets are no longer stored.
    closed: bool = False

    @property
    def key(self) -> TopicPartitionKey:
        return (self.topic, self.partition)

    @property
    def name(self) -> str:
        return f"{self.topic}:{self.partition}"


class Replicator:
    """The replicator daemon; run() blocks until stop() or a signal, and returns the exit status."""

    def __init__(self, config: Config, dry_run: bool | None = None) -> None:
        self.config = config
        self.settings = config.replicator
        self.dry_run = self.settings.dry_run if dry_run is None else dry_run
        # A dry run commits nothing and must not take partitions away from the real group.
        self.group_id = self.settings.group_id + (DRY_RUN_GROUP_SUFFIX if self.dry_run else "")
        self.metrics = ReplicatorMetrics()
        self.counts: Tally[str] = Tally()
        self.health_port: int | None = None
        self.started = threading.Event()
        self.exit_status: int | None = None

        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kafka_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._kafka: KafkaSide | None = None
        self._applier: Applier | None = None
        self._dead_letters: DeadLetterProducer | None = None
        self._partitions: dict[TopicPartitionKey, PartitionState] = {}
        self._key_tails: dict[bytes | None, asyncio.Task] = {}
        self._pending_stores: dict[TopicPartitionKey, int] = {}
        self._record_slots: asyncio.Semaphore | None = None
        self._buffered = 0
        self._buffer_full = False
        self._stopping = False
        self._last_tick_s = time.monotonic()
        self._kask_last_response_s = float("-inf")
        self._kask_probe: asyncio.Task | None = None
        self._warnings = RateLimitedLog(log, 10.0)
        self._retries = 0

    # -- public control ----------------------------------------------------

    def stop(self) -> None:
        """Ask the daemon to stop; safe from any thread and from a signal handler."""
        self._stop_requested.set()

    def run(self, install_signal_handlers: bool = False) -> int:
        try:
            self.exit_status = asyncio.run(self._run(install_signal_handlers))
        finally:
            self.started.set()
        return self.exit_status

    def liveness(self) -> tuple[bool, str]:
        age_s = time.monotonic() - self._last_tick_s
        if age_s > LIVENESS_TIMEOUT_S:
            return False, f"main loop last ran {age_s:.0f} s ago (limit {LIVENESS_TIMEOUT_S:.0f} s)"
        return True, f"main loop ran {age_s:.1f} s ago"

    def readiness(self) -> tuple[bool, str]:
        problems = []
        if self._kafka is None or not self._kafka.joined:
            problems.append(f"not yet a member of consumer group {self.group_id}")
        # This runs on an HTTP server thread: list() copies the values without running Python code in between.
        stopped = [f"{state.name} ({state.stopped_reason} at offset {state.stopped_offset})"
                   for state in list(self._partitions.values()) if state.stopped_reason]
        if stopped:
            problems.append("stopped partitions: " + ", ".join(sorted(stopped)))
        kask_age_s = time.monotonic() - self._kask_last_response_s
        if kask_age_s > KASK_READY_WINDOW_S:
            problems.append("Kask has not responded " + (f"for {kask_age_s:.0f} s" if kask_age_s != float("inf")
                                                           else "since startup"))
        if problems:
            return False, "; ".join(problems)
        return True, f"{len(self._partitions)} partitions assigned, {self._buffered} records buffered"

    # -- startup -----------------------------------------------------------

    async def _run(self, install_signal_handlers: bool) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        if install_signal_handlers:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)

        log.info("replicator starting%s; effective configuration: %s",
                 " in dry-run mode (nothing is written, nothing committed)" if self.dry_run else "",
                 self.config.summary())
        partition_count = await loop.run_in_executor(None, self._check_topics)
        if partition_count is None:
            return EXIT_CONFIG

        codec = codec_from_config(self.config)
        self._record_slots = asyncio.Semaphore(self.settings.max_in_flight)
        health: HealthServer | None = None
        async with KaskClient(self.config.kask, self.settings.max_in_flight, self._observe_kask) as client:
            self._applier = Applier(client, codec, self.config.kask.max_key_bytes,
                                    TokenBucket(self.settings.max_requests_per_s), self.dry_run)
            kask_version = await self._kask_version(client)
            log.info("connected: Kafka %s topic %s (%d partitions), dead-letter topic %s, group %s; "
                     "Kask %s (/healthz: %s), body format %s, HMAC %s",
                     self.config.kafka.bootstrap_servers, self.config.kafka.topic, partition_count,
                     self.config.kafka.dead_letter_topic, self.group_id, client.base_url, kask_version,
                     codec.body_format.value, "set" if codec.hmac_key else "not set")

            health = HealthServer(self.metrics.registry, self.config.metrics.listen_address,
                                  self.settings.metrics_port, self.liveness, self.readiness).start()
            self.health_port = health.port
            self._kafka_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                         thread_name_prefix="kafka-consumer")
            try:
                self._dead_letters = DeadLetterProducer(self.config, loop)
                self._kafka = KafkaSide(self.config, self.group_id, self, self._count_rebalance, self._count_commit)
                await loop.run_in_executor(self._kafka_executor, self._kafka.open)
                self.started.set()
                await self._main_loop(client)
                return EXIT_OK
            except KafkaException as exc:
                log.error("Kafka failed: %s; stopping", exc)
                return EXIT_UNAVAILABLE
            finally:
                await self._shutdown()
                health.stop()

    def _check_topics(self) -> int | None:
        admin = kafka_module.admin_client(self.config)
        names = (self.config.kafka.topic, self.config.kafka.dead_letter_topic)
        # Only a missing or wrongly configured event or dead-letter topic stops the replicator. The capture's
        # state topic and drift such as a different retention are for `echoseen topics` to report.
        problems = [problem.message for problem in kafka_module.check_topics(self.config, admin, STARTUP_KAFKA_TIMEOUT_S)
                    if problem.blocking and problem.topic in names]
        if problems:
            log.error("the replicator cannot start: %s", "; ".join(problems))
            return None
        metadata = admin.list_topics(self.config.kafka.topic, timeout=STARTUP_KAFKA_TIMEOUT_S)
        return len(metadata.topics[self.config.kafka.topic].partitions)

    async def _kask_version(self, client: KaskClient) -> str:
        try:
            version = await client.server_version()
        except KaskTransportError as exc:
            if exc.certificate_rejected:
                # Retrying cannot fix an untrusted certificate; records would wait forever.
                raise ServiceUnavailable(
                    f"Kask at {self.config.kask.url} ([kask] url) presented a certificate that failed verification: "
                    f"{exc.detail}; set [kask] ca_file to the CA bundle that signed Kask's certificate") from exc
            log.warning("Kask at %s ([kask] url) did not respond to /healthz (%s); starting anyway: records wait "
                        "for Kask and /readyz fails until it responds", self.config.kask.url, exc)
            return "unreachable"
        self._kask_last_response_s = time.monotonic()
        return version

    # -- main loop ---------------------------------------------------------

    async def _main_loop(self, client: KaskClient) -> None:
        assert self._loop is not None and self._kafka is not None
        loop = self._loop
        last_probe_s = time.monotonic()
        while not self._stop_requested.is_set():
            self._last_tick_s = time.monotonic()
            self.metrics.last_tick.set(time.time())

            request = self._step_request()
            result = await loop.run_in_executor(self._kafka_executor, self._kafka.step, request)
            self._apply_step_result(result)

            now = time.monotonic()
            if (now - self._kask_last_response_s > KASK_PROBE_INTERVAL_S and now - last_probe_s > KASK_PROBE_INTERVAL_S
                    and (self._kask_probe is None or self._kask_probe.done())):
                last_probe_s = now
                self._kask_probe = asyncio.create_task(self._probe_kask(client))

    def _step_request(self) -> StepRequest:
        stores, self._pending_stores = self._pending_stores, {}
        limit = self.settings.max_buffered_records
        if self._buffered >= limit:
            self._buffer_full = True
        elif self._buffer_full and self._buffered <= limit * RESUME_BUFFER_RATIO:
            self._buffer_full = False
        paused = {key for key, state in self._partitions.items() if state.retrying or state.stopped_reason}
        return StepRequest(stores=stores, paused=paused, pause_all=self._buffer_full,
                           max_records=max(0, limit - self._buffered))

    def _apply_step_result(self, result: StepResult) -> None:
        for error in result.partition_errors:
            self._stop_partition_on_error(error)
        for message in result.messages:
            self._dispatch(message)
        self.metrics.buffered_records.set(self._buffered)
        self.metrics.paused_partitions.set(result.paused_count)
        if result.watermarks is not None:
            self._update_lag(result.watermarks)

    def _update_lag(self, watermarks: dict[TopicPartitionKey, tuple[int, int]]) -> None:
        now_s = time.time()
        for key, (low, high) in watermarks.items():
            state = self._partitions.get(key)
            if state is None:
                continue
            position = state.tracker.position()
            if position is None:
                position = state.start_offset if state.start_offset is not None else low
            labels = (state.topic, str(state.partition))
            self.metrics.lag_records.labels(*labels).set(max(0, high - position))
            oldest_s = state.tracker.oldest_pending_timestamp_s()
            self.metrics.lag_seconds.labels(*labels).set(max(0.0, now_s - oldest_s) if oldest_s else 0.0)

    async def _probe_kask(self, client: KaskClient) -> None:
        try:
            response = await client.healthz()
        except KaskTransportError as exc:
            self._warnings.log(logging.WARNING, "kask-probe", "Kask at %s ([kask] url) did not respond to /healthz: %s",
                               self.config.kask.url, exc)
            return
        if response.status < 500:
            self._kask_last_response_s = time.monotonic()

    def _observe_kask(self, method: str, status: str, duration_s: float) -> None:
        self.metrics.observe_kask_request(method, status, duration_s)
        self.metrics.kask_in_flight.set(self._applier.client.in_flight if self._applier else 0)
        if status.isdigit() and int(status) < 500:
            self._kask_last_response_s = time.monotonic()

    def _count_rebalance(self, kind: str, count: int) -> None:
        self.metrics.rebalances.labels(kind=kind).inc()

    def _count_commit(self, ok: bool) -> None:
        self.metrics.commits.labels(result="ok" if ok else "failed").inc()

    # -- records -----------------------------------------------------------

    def _dispatch(self, message: Message) -> None:
        key = (message.topic(), message.partition())
        state = self._partitions.get(key)
        if state is None:
            # The assign callback creates the state first; this only guards against a record racing a revoke.
            return
        if state.stopped_reason is not None:
            return
        timestamp_type, timestamp_ms = message.timestamp()
        timestamp_s = timestamp_ms / 1000 if timestamp_type != TIMESTAMP_NOT_AVAILABLE else time.time()
        if not state.tracker.add(message.offset(), timestamp_s):
            return

        record_key = message.key()
        previous = self._key_tails.get(record_key)
        task = asyncio.create_task(self._process(state, message, previous))
        self._key_tails[record_key] = task
        state.tasks.add(task)
        self._buffered += 1
        offset = message.offset()
        task.add_done_callback(lambda done: self._task_done(state, record_key, offset, done))

    def _task_done(self, state: PartitionState, record_key: bytes | None, offset: int, task: asyncio.Task) -> None:
        state.tasks.discard(task)
        self._buffered -= 1
        if self._key_tails.get(record_key) is task:
            del self._key_tails[record_key]
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a property of the record: stop the partition visibly instead of skipping the record.
            error = task.exception()
            log.error("unexpected error while applying the record %s@%d", state.name, offset, exc_info=error)
            self._stop_partition(state, offset, "internal_error", f"{type(error).__name__}: {error}")

    def _halted(self, state: PartitionState, offset: int) -> bool:
        if self._stopping or state.draining or state.closed:
            return True
        return state.stopped_offset is not None and offset >= state.stopped_offset

    async def _process(self, state: PartitionState, message: Message, previous: asyncio.Task | None) -> None:
        # Records of one key wait for the one before them, so they are applied in partition order.
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        offset = message.offset()
        if self._halted(state, offset):
            return

        try:
            event = events.decode(message.key(), message.value())
        except events.UnsupportedSchemaVersion as exc:
            self._stop_partition(state, offset, "unsupported_schema_version", str(exc))
            return
        except events.EventError as exc:
            await self._dead_letter(state, message, exc.reason, exc.detail)
            return

        outcome = await self._apply_with_retries(state, message, event)
        if outcome is not None:
            self._finish(state, message, outcome, event)

    async def _apply_with_retries(self, state: PartitionState, message: Message,
                                  event: events.SeenTimeEvent) -> Outcome | None:
        """Apply until it succeeds; return None when the record was dead-lettered or its partition halted."""
        assert self._applier is not None and self._record_slots is not None
        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_cap_s)
        retrying = False
        attempt = 0
        previous_attempt_s: float | None = None
        # Start of the current run of 5xx failures during which other requests of the same method succeeded.
        singled_out_since_s: float | None = None
        # When the last write of this record that got no response failed; it was sent before that.
        unanswered_write_s: float | None = None
        try:
            while True:
                outcome: Outcome | None = None
                failure: KaskRetryableError | None = None
                async with self._record_slots:
                    if self._halted(state, message.offset()):
                        return None
                    attempt += 1
                    attempt_s = time.monotonic()
                    try:
                        outcome = await self._applier.apply(event)
                    except RecordRejected as exc:
                        rejected = exc
                    except KaskRetryableError as exc:
                        failure = exc

                if outcome is not None:
                    if unanswered_write_s is None:
                        return outcome
                    # The partition may move on meanwhile; only this key's later records wait.
                    if retrying:
                        retrying = False
                        state.retrying -= 1
                    if not await self._outlast_unanswered_write(state, message, unanswered_write_s):
                        return None
                    return outcome
                if failure is None:
                    await self._dead_letter(state, message, rejected.reason, rejected.detail)
                    return None
                if failure.method in ("POST", "DELETE") and (failure.status is None or failure.status == 504):
                    unanswered_write_s = time.monotonic()

                # A 5xx that keeps failing for this record while the same method succeeds for others
                # since this record's previous attempt: the record, not Kask, is the problem.
                since_s = previous_attempt_s if previous_attempt_s is not None else attempt_s
                previous_attempt_s = attempt_s
                if failure.status is not None and self._applier.last_success_s[failure.method] > since_s:
                    singled_out_since_s = singled_out_since_s or since_s
                    failing_s = time.monotonic() - singled_out_since_s
                    if failing_s >= self.settings.dead_letter_after_s:
                        await self._dead_letter(
                            state, message, REASON_KASK_SERVER_ERROR,
                            f"{failure.method} kept failing for {failing_s:.0f} s ({attempt} attempts) while other "
                            f"{failure.method} requests succeeded: {failure.detail}")
                        return None
                else:
                    singled_out_since_s = None

                if not retrying:
                    retrying = True
                    state.retrying += 1
                delay_s = backoff.next_delay_s()
                self._retries += 1
                self.metrics.retries.labels(reason=failure.kind).inc()
                self._warnings.log(logging.WARNING, f"retry-{failure.kind}",
                                   "Kask request for key %s failed (attempt %d): %s; retrying in %.1f s with "
                                   "partition %s paused", key_for_log(event.key), attempt, failure.detail,
                                   delay_s, state.name)
                await self._sleep(state, delay_s)
        finally:
            if retrying:
                state.retrying -= 1

    async def _outlast_unanswered_write(self, state: PartitionState, message: Message, failed_s: float) -> bool:
        """Wait until a write that got no response can no longer land; return False when the partition halted first.

        The record stays unfinished while it waits, and the next records of its key wait for it.
        """
        remaining_s = failed_s + UNANSWERED_WRITE_HOLD_S - time.monotonic()
        if remaining_s > 0:
            self.metrics.unanswered_write_holds.inc()
            await self._sleep(state, remaining_s)
        return not self._halted(state, message.offset())

    async def _dead_letter(self, state: PartitionState, message: Message, reason: str, detail: str) -> None:
        """Park the record in the dead-letter topic, retrying until the broker acknowledges it, then finish it."""
        assert self._dead_letters is not None
        location = f"{message.topic()}:{message.partition()}@{message.offset()}"
        key_text = key_for_log(message.key()) if message.key() is not None else "(no key)"
        if self.dry_run:
            self._warnings.log(logging.WARNING, f"dlq-{reason}", "dry run: would dead-letter the record %s key %s: "
                               "%s: %s", location, key_text, reason, detail)
            self._finish(state, message, Outcome.WOULD_DEAD_LETTER, None)
            return

        backoff = Backoff(self.settings.retry_base_s, self.settings.retry_cap_s)
        retrying = False
        try:
            while True:
                if self._halted(state, message.offset()):
                    return
                try:
                    await self._dead_letters.send(message, reason, detail)
                    break
                except DeadLetterError as exc:
                    if not retrying:
                        retrying = True
                        state.retrying += 1
                    delay_s = backoff.next_delay_s()
                    self._retries += 1
                    self.metrics.retries.labels(reason="dead_letter_produce").inc()
                    self._warnings.log(logging.WARNING, "dlq-produce", "dead-lettering the record %s failed: %s; "
                                       "retrying in %.1f s with the partition paused", location, exc, delay_s)
                    await self._sleep(state, delay_s)
        finally:
            if retrying:
                state.retrying -= 1

        self._warnings.log(logging.WARNING, f"dlq-{reason}", "dead-lettered the record %s key %s: %s: %s",
                           location, key_text, reason, detail)
        self.metrics.dead_lettered.labels(reason=reason).inc()
        self._finish(state, message, Outcome.DEAD_LETTERED, None)

    async def _sleep(self, state: PartitionState, delay_s: float) -> None:
        """Sleep for a retry delay, waking early when the partition halts or the daemon stops."""
        try:
            await asyncio.wait_for(state.halt.wait(), timeout=delay_s)
        except asyncio.TimeoutError:
            pass

    def _finish(self, state: PartitionState, message: Message, outcome: Outcome,
                event: events.SeenTimeEvent | None) -> None:
        self.counts[outcome.value] += 1
        self.metrics.records.labels(outcome=outcome.value).inc()
        if event is not None and outcome in (Outcome.WRITTEN, Outcome.DELETED):
            self.metrics.end_to_end_seconds.observe(max(0.0, time.time() - event.version_us / 1_000_000))
        if state.closed:
            return
        store_offset = state.tracker.finish(message.offset())
        if store_offset is not None and not self.dry_run:
            self._pending_stores[state.key] = store_offset

    def _stop_partition(self, state: PartitionState, offset: int, reason: str, detail: str) -> None:
        if state.stopped_reason is not None and state.stopped_offset is not None and state.stopped_offset <= offset:
            return
        state.stopped_reason = reason
        state.stopped_offset = offset
        self._export_stopped()
        self.metrics.partition_stopped.labels(state.topic, str(state.partition), reason).set(1)
        log.error("partition %s stopped at offset %d (%s): %s. It stays paused and no offset past %d is stored "
                  "until the cause is fixed and the replicator restarts.", state.name, offset, reason, detail, offset)

    def _stop_partition_on_error(self, error: PartitionError) -> None:
        state = self._partitions.get((error.topic, error.partition))
        if state is None:
            return
        offset = error.offset if error.offset is not None else -1
        self._stop_partition(state, offset, error.reason, error.detail + "; move the group's offset with "
                             "`echoseen replay` after checking what the lost records contained")

    def _export_stopped(self) -> None:
        self.metrics.stopped_partitions.set(sum(1 for s in self._partitions.values() if s.stopped_reason))

    # -- rebalance handler (called on the consumer thread) -----------------

    def partitions_assigned(self, assigned: dict[TopicPartitionKey, int | None]) -> None:
        self._call_on_loop(self._assign(assigned))

    def partitions_revoked(self, revoked: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        drain_s = 0.0 if self._stopping else REVOKE_DRAIN_TIMEOUT_S
        return self._call_on_loop(self._release(revoked, drain_s))

    def partitions_lost(self, lost: list[TopicPartitionKey]) -> None:
        self._call_on_loop(self._release(lost, None))

    def _call_on_loop(self, coroutine):
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=CALLBACK_TIMEOUT_S)

    async def _assign(self, assigned: dict[TopicPartitionKey, int | None]) -> None:
        for (topic, partition), start in assigned.items():
            self._partitions[(topic, partition)] = PartitionState(topic, partition, start, OffsetTracker(),
                                                                  asyncio.Event())

    async def _release(self, keys: list[TopicPartitionKey], drain_s: float | None) -> dict[TopicPartitionKey, int]:
        """Finish (up to ``drain_s``) or drop the work of partitions leaving this member; return final offsets.

        ``drain_s`` None means the partitions were lost: nothing is waited for and no offset is returned.
        """
        states = [self._partitions.pop(key) for key in keys if key in self._partitions]
        tasks = set().union(*(state.tasks for state in states)) if states else set()
        if tasks and drain_s:
            # In-flight attempts finish; records that have not started yet wait for the new owner.
            for state in states:
                state.draining = True
                state.halt.set()
            await asyncio.wait(tasks, timeout=drain_s)

        final = {}
        for state in states:
            state.closed = True
            state.halt.set()
            if drain_s is not None and state.tracker.store_offset is not None and not self.dry_run:
                final[state.key] = state.tracker.store_offset
            self._pending_stores.pop(state.key, None)
            self.metrics.remove_partition(state.topic, state.partition)
            if state.stopped_reason:
                try:
                    self.metrics.partition_stopped.remove(state.topic, str(state.partition), state.stopped_reason)
                except KeyError:
                    pass
        for task in tasks:
            task.cancel()
        self._export_stopped()
        return final

    # -- shutdown ----------------------------------------------------------

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = True
        tasks = set().union(*(state.tasks for state in self._partitions.values())) if self._partitions else set()
        for state in self._partitions.values():
            state.halt.set()
        if tasks:
            log.info("stopping: waiting up to %.0f s for %d unfinished records (in-flight Kask requests finish, "
                     "the rest wait for the next start)", self.settings.shutdown_timeout_s, len(tasks))
            done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self._kask_probe is not None:
            self._kask_probe.cancel()

        # Counted before the consumer closes, because the revoke during close drops the partition states.
        unfinished = sum(state.tracker.pending_count for state in self._partitions.values())
        committed = 0
        if self._kafka is not None and self._kafka_executor is not None:
            stores, self._pending_stores = self._pending_stores, {}
            try:
                committed = await loop.run_in_executor(self._kafka_executor, self._kafka.close, stores)
            except KafkaException as exc:
                log.error("closing the Kafka consumer failed: %s", exc)
            self._kafka_executor.shutdown(wait=True)
        if self._dead_letters is not None:
            unacknowledged = await loop.run_in_executor(None, self._dead_letters.close)
            if unacknowledged:
                log.error("%d dead-letter records were not acknowledged; their offsets were not stored, so they "
                          "are processed again at the next start", unacknowledged)

        listed_outcomes = [outcome for outcome in Outcome
                           if self.dry_run or not outcome.value.startswith("would_")]
        summary = " ".join(f"{outcome.value}={self.counts.get(outcome.value, 0)}" for outcome in listed_outcomes)
        log.info("replicator stopped: %s retries=%d unfinished=%d committed_partitions=%d",
                 summary, self._retries, unfinished, committed)


# ---------------------------------------------------------------------------
# The `echoseen replicate` command
# ---------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="read Kask and count outcomes without writing, dead-lettering or committing "
                             "(uses the consumer group <group_id>.dry-run)")


def run(args: argparse.Namespace, config: Config) -> int:
    replicator = Replicator(config, dry_run=True if args.dry_run else None)
    return replicator.run(install_signal_handlers=True)
