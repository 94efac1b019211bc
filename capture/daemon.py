"""Run the capture daemon: publish every change of a watched Redis key to Kafka.

Delivery guarantee: Redis pub/sub is at-most-once, so the capture treats it
as a hint and proves completeness separately. Every notification means "read
this key again"; the key is re-read atomically (value, absolute expiry,
server time) and published. Notifications may be missed at startup, on a
reconnect, an output-buffer kill, CLIENT KILL, a Redis restart or failover,
an overflowing pending set or Kafka queue, a failed delivery, or when the
subscription stops returning the capture's heartbeat. Each such window is
recorded as a gap and closed by a catch-up scan. The watermark (the Redis time up to
which every change is acknowledged by Kafka) and the open gaps are kept in
the compacted state topic, so a crash or restart resumes from there.

Exit statuses: 0 after SIGTERM or SIGINT, 2 for configuration errors (such
as missing notify-keyspace-events flags or a missing topic), 3 when a service
is unreachable at startup, 1 when the daemon must stop (another capture took
its lock, a worker thread died).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
import time
import uuid
from typing import Any

import redis

from capture import state as state_store
from capture.catchup import CatchupScanner
from capture.gaps import Gap, GapLog
from capture.heartbeat import HeartbeatWriter, acquire_lock, release_lock
from capture.metrics import CaptureMetrics
from capture.patterns import LOCK_PREFIX, KeyFilter, missing_flags, required_flags
from capture.pipeline import SourcePipeline, _fmt_us
from capture.publisher import Publisher, Ticket
from capture.reader import KeyReader, server_version
from capture.sources import Source, connect, describe_connect_error, discover_primaries, node_hash_tag
from echoseen import __version__
from echoseen.config import Config
from echoseen.errors import ConfigError, EchoseenError, ServiceUnavailable
from echoseen.health import HealthServer
from echoseen.kafka import describe_topic_problems, admin_client

log = logging.getLogger(__name__)

TOPOLOGY_CHECK_INTERVAL_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-config-set", action="store_true",
                        help="run CONFIG SET notify-keyspace-events when the flags the capture needs are missing "
                             "(same as [capture] allow_config_set = true)")


class SourceRunner:
    """Everything that watches one source: subscriber, pipeline, heartbeat, catch-up."""

    def __init__(self, config: Config, source: Source, publisher: Publisher, metrics: CaptureMetrics,
                 key_filter: KeyFilter, instance: str, saved: dict[str, Any] | None,
                 inherited_gap_start_us: int | None = None, allow_config_set: bool = False) -> None:
        self.config = config
        self.source = source
        self.publisher = publisher
        self.metrics = metrics
        self.key_filter = key_filter
        self.instance = instance
        self.saved = saved
        self.inherited_gap_start_us = inherited_gap_start_us
        self.allow_config_set = allow_config_set
        self.run_id = ""
        self.initial_us: int | None = None
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self.fatal: str | None = None
        self.started = False

    # -- startup ------------------------------------------------------------------------------------------

    def _client(self, **kwargs) -> redis.Redis:
        return connect(self.config, self.source, client_name="echoseen-capture", **kwargs)

    def prepare(self) -> str:
        """Connect, check the server, take the lock and build the threads; return the 'connected' log text."""
        self.client = self._client()
        try:
            info = self.client.info("server")
            flags = self._check_notify_flags()
        except (redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(describe_connect_error(self.source, exc)) from exc
        self.run_id = str(info.get("run_id", ""))
        version = server_version(self.client)
        self.tag = node_hash_tag(self.client, self.source)
        acquire_lock(self.client, self.source, self.tag, self.instance, self.config.capture.instance_lock_ttl_s,
                     wait_s=self.config.capture.instance_lock_ttl_s + 2)

        saved_gaps = [Gap.from_json(gap) for gap in (self.saved or {}).get("open_gaps", [])]
        recent_gaps = [Gap.from_json(gap) for gap in (self.saved or {}).get("recent_gaps", [])]
        self.gap_log = GapLog(saved_gaps, recent_gaps)
        self.gap_log.invalidate_cursors(self.run_id)
        watermark = (self.saved or {}).get("watermark_us")
        self.initial_us = (self.saved or {}).get("initial_us")

        def reader_factory() -> KeyReader:
            return KeyReader(self._client(), self.source, self.config.redis.max_value_bytes,
                             force_pttl=self.config.redis.force_pttl, version=version)

        self.pipeline = SourcePipeline(
            self.source, reader_factory, self.publisher, self.gap_log, self.metrics,
            self.config.capture.read_batch_size, self.config.capture.max_pending_keys,
            self.config.redis.max_value_bytes, self.run_id, watermark)
        self.heartbeat = HeartbeatWriter(self._client(), self.tag, self.instance,
                                         self.config.capture.instance_lock_ttl_s)
        from capture.subscriber import Subscriber  # noqa: PLC0415 - keeps import order simple for tests

        self.subscriber = Subscriber(self.config, self.source, self.pipeline, self.heartbeat, self.metrics,
                                     self.key_filter, self.tag, self._session_started, self._server_facts)
        own_prefix = b"echoseen:capture:"
        self.catchup = CatchupScanner(
            self.source, self._client, reader_factory, self.publisher, self.gap_log, self.metrics,
            self.key_filter, own_prefix, self.config.capture.catchup_scan_count,
            self.config.capture.catchup_max_keys_per_s, self.config.capture.clock_skew_margin_s,
            self.config.redis.max_value_bytes, lambda: self.run_id, self._server_time_us)
        expiry = "PTTL+TIME" if not version >= (7, 0) or self.config.redis.force_pttl else "PEXPIRETIME"
        return (f"Redis {self.source.name} (version {'.'.join(map(str, version))}, run_id {self.run_id}, "
                f"notify-keyspace-events '{flags}', {self.config.capture.channel_mode} channels, expiry via "
                f"{expiry}, lock {LOCK_PREFIX}{self.tag})")

    def _check_notify_flags(self) -> str:
        mode = self.config.capture.channel_mode
        try:
            current = self.client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        except redis.exceptions.NoPermissionError:
            # redis-py raises a NOPERM reply as NoPermissionError and drops "NOPERM" from its text.
            log.warning("cannot read notify-keyspace-events on %s (the ACL user lacks CONFIG GET); relying on "
                        "the heartbeat to detect missing notifications", self.source.name)
            return "unknown"
        missing = missing_flags(current, mode)
        if not missing:
            return current
        new_flags = current + missing
        if self.allow_config_set or self.config.capture.allow_config_set:
            self.client.config_set("notify-keyspace-events", new_flags)
            log.warning("set notify-keyspace-events on %s from '%s' to '%s' (allow_config_set)", self.source.name,
                        current, new_flags)
            return new_flags
        raise ConfigError(
            f"Redis {self.source.name} has notify-keyspace-events '{current}', which lacks '{missing}' needed by "
            f"{mode} channels (at least '{required_flags(mode)}'). Run: redis-cli -h {self.source.host} -p "
            f"{self.source.port} CONFIG SET notify-keyspace-events '{new_flags}' (and persist it in redis.conf), or "
            "start the capture with --allow-config-set")

    def _server_time_us(self) -> int:
        seconds, micros = self.client.time()
        return seconds * 1_000_000 + micros

    def _server_facts(self) -> tuple[int, str]:
        run_id = str(self.client.info("server").get("run_id", ""))
        return self._server_time_us(), run_id

    def _session_started(self, subscribed_at_us: int, run_id: str, safe_until_us: int | None,
                         end_reason: str) -> None:
        """Record the gap between what the previous session delivered and this session's start."""
        restarted = bool(self.run_id) and run_id != self.run_id
        if restarted:
            log.warning("Redis %s restarted or failed over: run_id changed from %s to %s", self.source.name,
                        self.run_id, run_id)
        self.run_id = run_id
        self.pipeline.run_id = run_id
        self.gap_log.invalidate_cursors(run_id)
        if self.pipeline.subscribed_since_us is None:
            self.pipeline.subscribed_since_us = subscribed_at_us

        if safe_until_us is None:
            # First session of this process.
            saved = self.saved or {}
            start = saved.get("watermark_us") or saved.get("initial_us") or self.inherited_gap_start_us
            if start is None:
                self.initial_us = subscribed_at_us
                log.info("no saved position for %s in state topic %s: capturing changes from %s on; keys written "
                         "earlier are the backfill's job", self.source.name, self.config.kafka.state_topic,
                         _fmt_us(subscribed_at_us))
                return
            reason = "redis_restart" if saved.get("run_id") and saved.get("run_id") != run_id else "startup"
            if self.inherited_gap_start_us is not None and not saved:
                reason = "topology_change"
            self.pipeline.record_gap(int(start), subscribed_at_us, reason)
            return
        self.pipeline.record_gap(safe_until_us, subscribed_at_us, "redis_restart" if restarted else end_reason)

    # -- running ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        self.pipeline.start()
        self.subscriber.start()
        self.catchup.start()
        self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-{self.source.name}",
                                                  daemon=True)
        self._heartbeat_thread.start()

    def _heartbeat_loop(self) -> None:
        interval_s = self.config.capture.heartbeat_interval_s
        failures = 0
        while not self._stop.wait(interval_s):
            try:
                self.heartbeat.write()
                failures = 0
            except (redis.RedisError, OSError) as exc:
                failures += 1
                if failures in (1, 10) or failures % 60 == 0:
                    log.warning("heartbeat write to %s failed (%d in a row): %s", self.source.name, failures, exc)
            if self.heartbeat.lock_lost:
                self.fatal = (f"another capture took the lock on {self.source.name}; this instance stops so that "
                              "only one capture watches a Redis")
                return

    def threads_alive(self) -> bool:
        return all(part.is_alive() for part in (self.pipeline, self.subscriber, self.catchup)) and \
            self._heartbeat_thread is not None and self._heartbeat_thread.is_alive()

    def final_barrier(self, timeout_s: float) -> None:
        """Write one more heartbeat and wait until the watermark passes it, so a restart has less to scan."""
        try:
            written_us = self.heartbeat.write()
        except (redis.RedisError, OSError):
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.pipeline.watermark_us or 0) >= written_us:
                return
            time.sleep(0.05)

    def stop(self, drain: bool, timeout_s: float) -> None:
        self._stop.set()
        if not self.started:
            return
        self.subscriber.stop()
        self.catchup.stop()
        self.pipeline.stop(drain=drain, timeout_s=timeout_s)
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)

    def release(self) -> None:
        try:
            release_lock(self.client, self.tag, self.instance)
        except (redis.RedisError, OSError) as exc:
            log.warning("could not release the lock on %s: %s", self.source.name, exc)

    def document(self, stopped: bool = False) -> dict[str, Any]:
        return {
            "kind": "capture",
            "source": self.source.name,
            "instance": self.instance,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "run_id": self.run_id,
            "watermark_us": self.pipeline.watermark_us,
            "initial_us": self.initial_us,
            "updated_wall_ms": int(time.time() * 1000),
            "open_gaps": [gap.to_json() for gap in self.gap_log.open_gaps()],
            "recent_gaps": [gap.to_json() for gap in self.gap_log.recent_gaps()],
            "stopped": stopped,
            "counters": {
                "notifications": self.pipeline.notifications,
                "published": self.pipeline.published,
                "bad_values": self.pipeline.bad_values,
                "catchup_published": self.catchup.keys_published,
                "pending": self.pipeline.pending_count(),
                "sessions": self.subscriber.sessions,
            },
        }

    def update_gauges(self) -> None:
        label = self.source.name
        self.metrics.pending_keys.labels(label).set(self.pipeline.pending_count())
        open_gaps = self.gap_log.open_gaps()
        self.metrics.open_gaps.labels(label).set(len(open_gaps))
        now_us = int(time.time() * 1e6)
        oldest = self.gap_log.oldest_open_start_us()
        self.metrics.oldest_open_gap_age.labels(label).set(0 if oldest is None else max(0, now_us - oldest) / 1e6)
        if self.pipeline.watermark_us is not None:
            self.metrics.watermark_age.labels(label).set(max(0, now_us - self.pipeline.watermark_us) / 1e6)


class Capture:
    """The capture daemon; ``run()`` blocks until ``stop()`` or a signal."""

    def __init__(self, config: Config, allow_config_set: bool = False) -> None:
        self.config = config
        self.allow_config_set = allow_config_set
        self.instance = uuid.uuid4().hex[:12]
        self.metrics = CaptureMetrics()
        self.key_filter = KeyFilter.from_config(config)
        self.runners: dict[Source, SourceRunner] = {}
        self._stop = threading.Event()
        self.health: HealthServer | None = None
        self.ready = False
        self._published_by_origin: dict[str, object] = {}

    def stop(self) -> None:
        self._stop.set()

    def _liveness(self) -> tuple[bool, str]:
        timeout_s = self.config.capture.heartbeat_timeout_s
        problems = []
        for runner in self.runners.values():
            if not runner.threads_alive():
                problems.append(f"{runner.source.name}: a worker thread died")
            age_s = runner.subscriber.heartbeat_age_s()
            if age_s is not None and age_s > 3 * timeout_s:
                problems.append(f"{runner.source.name}: no heartbeat delivered for {age_s:.0f} s")
        return (not problems, "; ".join(problems) or "subscriptions deliver heartbeats")

    def _readiness(self) -> tuple[bool, str]:
        if not self.ready:
            return False, "starting"
        problems = [f"{runner.source.name}: not subscribed" for runner in self.runners.values()
                    if not runner.subscriber.connected]
        if self.publisher.queue_length() > self.config.capture.max_produce_queue // 2:
            problems.append(f"Kafka queue holds {self.publisher.queue_length()} records: {self.publisher.last_error}")
        return (not problems, "; ".join(problems) or "subscribed and publishing")

    def _on_delivered(self, event, now_s: float) -> None:
        counter = self._published_by_origin.get(event.origin)
        if counter is None:
            counter = self._published_by_origin[event.origin] = self.metrics.events_published.labels(event.origin)
        counter.inc()
        # NOTE: the delay compares the Redis clock (version_us) with this host's clock; both should be NTP-synced.
        self.metrics.read_to_ack.observe(max(0.0, now_s - event.version_us / 1e6))

    def run(self) -> int:
        config = self.config
        log.info("capture %s starting (version %s), instance %s; effective configuration: %s", socket.gethostname(),
                 __version__, self.instance, config.summary())

        self.health = HealthServer(self.metrics.registry, config.metrics.listen_address, config.capture.metrics_port,
                                   self._liveness, self._readiness).start()
        self.publisher = Publisher(config, on_delivered=self._on_delivered, client_id=f"echoseen-capture-{self.instance}")
        try:
            problems = describe_topic_problems(config, admin_client(config))
            if problems:
                raise ConfigError("; ".join(problems))
            partitions = self.publisher.partition_count()
            saved = state_store.read_all(config)
            sources = discover_primaries(config)
            for source in sources:
                self._add_runner(source, saved.get(state_store.CAPTURE_PREFIX + source.name))
        except EchoseenError:
            self._shutdown(drain=False)
            raise
        log.info("connected to Kafka topic %s with %d partitions (state topic %s)", config.kafka.topic, partitions,
                 config.kafka.state_topic)
        for runner in self.runners.values():
            runner.start()
        self.ready = True

        exit_status = self._loop()
        self._shutdown(drain=True)
        return exit_status

    def _add_runner(self, source: Source, saved: dict | None, inherited_gap_start_us: int | None = None) -> None:
        runner = SourceRunner(self.config, source, self.publisher, self.metrics, self.key_filter, self.instance,
                              saved, inherited_gap_start_us, self.allow_config_set)
        connected = runner.prepare()
        self.runners[source] = runner
        log.info("connected to %s", connected)

    def _loop(self) -> int:
        flush_interval_s = self.config.capture.state_flush_interval_s
        next_topology_check = time.monotonic() + TOPOLOGY_CHECK_INTERVAL_S
        while not self._stop.wait(flush_interval_s):
            for runner in list(self.runners.values()):
                runner.update_gauges()
                if runner.fatal:
                    log.error("%s", runner.fatal)
                    return 1
                if not runner.threads_alive():
                    log.error("a worker thread of %s died; stopping so the supervisor restarts the capture",
                              runner.source.name)
                    return 1
            self._write_state(stopped=False)
            if self.config.redis.cluster and time.monotonic() >= next_topology_check:
                next_topology_check = time.monotonic() + TOPOLOGY_CHECK_INTERVAL_S
                self._follow_topology()
        return 0

    def _follow_topology(self) -> None:
        try:
            primaries = set(discover_primaries(self.config))
        except EchoseenError as exc:
            log.warning("cannot read the cluster topology: %s", exc)
            return
        known = set(self.runners)
        if primaries == known:
            return
        watermarks = [runner.pipeline.watermark_us for runner in self.runners.values()
                      if runner.pipeline.watermark_us is not None]
        gap_start_us = min(watermarks) if watermarks else None
        for source in sorted(known - primaries, key=lambda item: item.name):
            log.warning("%s is no longer a primary of the cluster; stopping its capture", source.name)
            runner = self.runners.pop(source)
            runner.stop(drain=False, timeout_s=5)
        for source in sorted(primaries - known, key=lambda item: item.name):
            log.warning("%s became a primary of the cluster; capturing it with a gap from %s", source.name,
                        _fmt_us(gap_start_us) if gap_start_us else "its subscription")
            try:
                self._add_runner(source, None, inherited_gap_start_us=gap_start_us)
                self.runners[source].start()
            except EchoseenError as exc:
                log.error("cannot capture new primary %s: %s", source.name, exc)

    def _write_state(self, stopped: bool) -> None:
        ticket = Ticket()
        for runner in self.runners.values():
            try:
                self.publisher.produce_raw(self.config.kafka.state_topic, state_store.capture_key(runner.source.name),
                                           state_store.encode(runner.document(stopped)), ticket)
            except Exception as exc:  # noqa: BLE001 - a full queue must not stop the daemon; the next write retries
                log.warning("cannot queue the state of %s: %s", runner.source.name, exc)
        ticket.seal()

    def _shutdown(self, drain: bool) -> None:
        started = time.monotonic()
        timeout_s = self.config.capture.shutdown_timeout_s
        if drain:
            for runner in self.runners.values():
                runner.final_barrier(timeout_s=min(3.0, timeout_s / 4))
        for runner in self.runners.values():
            runner.stop(drain=drain, timeout_s=timeout_s / 2)
        publisher = getattr(self, "publisher", None)
        remaining = 0
        if publisher is not None:
            if self.runners:
                self._write_state(stopped=True)
            remaining = publisher.close(max(1.0, timeout_s - (time.monotonic() - started)))
            if remaining:
                log.error("%d records were not acknowledged by Kafka before the shutdown timeout; the watermark was "
                          "not advanced past them, so the next start's catch-up scan covers them", remaining)
        for runner in self.runners.values():
            runner.release()
        if self.health is not None:
            self.health.stop()
        totals = {"notifications": 0, "published": 0, "bad_values": 0, "catchup_published": 0}
        gaps = 0
        for runner in self.runners.values():
            document = runner.document(stopped=True)
            for name in totals:
                totals[name] += document["counters"][name]
            gaps += len(document["open_gaps"]) + len(document["recent_gaps"])
        log.info("capture stopped after %.1f s of shutdown: %d notifications, %d events published, %d catch-up keys, "
                 "%d bad values, %d gaps open or recent, %d records unacknowledged",
                 time.monotonic() - started, totals["notifications"], totals["published"],
                 totals["catchup_published"], totals["bad_values"], gaps, remaining)


def run(args: argparse.Namespace, config: Config) -> int:
    capture = Capture(config, allow_config_set=args.allow_config_set)

    def request_stop(signum: int, frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        capture.stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return capture.run()
