"""The pub/sub subscriber of one source, and the gap bookkeeping around its sessions.

Redis pub/sub delivers at most once: a message published while the
subscriber is disconnected is gone. So this module owns its connection
instead of using redis-py's PubSub, which reconnects and re-subscribes
silently. Every session start is a visible event: the time up to which the
previous session is known to have delivered everything (``safe_until_us``,
the server time of its last returned heartbeat) and the time the new
subscription was confirmed bound the gap, which is recorded before any
notification of the new session is read.

A session ends on a connection error (the server killing the client for its
output-buffer limit, ``CLIENT KILL``, a restart or failover) and also when no
heartbeat has come back for ``heartbeat_timeout_s`` while heartbeat writes
succeed: a subscription that silently stopped delivering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection
from redis.retry import Retry

from capture.heartbeat import HeartbeatWriter
from capture.metrics import CaptureMetrics
from capture.patterns import HEARTBEAT_PREFIX, KEYEVENT_EVENTS, KeyFilter, keyevent_channel, \
    keyspace_channel_pattern
from capture.pipeline import SourcePipeline
from capture.sources import Source
from echoseen.config import Config
from echoseen.retry import Backoff

log = logging.getLogger(__name__)


class SilentSubscription(Exception):
    """The subscription stopped delivering the capture's own heartbeats."""


class Subscriber:
    """Owns the pub/sub connection of one source and feeds notified keys to its pipeline."""

    def __init__(self, config: Config, source: Source, pipeline: SourcePipeline, heartbeat: HeartbeatWriter,
                 metrics: CaptureMetrics, key_filter: KeyFilter, tag: str,
                 session_started: Callable[[int, str, int | None, str], None],
                 server_facts: Callable[[], tuple[int, str]]) -> None:
        self.config = config
        self.source = source
        self.pipeline = pipeline
        self.heartbeat = heartbeat
        self.metrics = metrics
        self.key_filter = key_filter
        self.mode = config.capture.channel_mode
        self._session_started = session_started
        self._server_facts = server_facts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"subscriber-{source.name}", daemon=True)
        self._label = source.name
        self._heartbeat_pattern = f"{HEARTBEAT_PREFIX}{tag}:*"
        self._own_prefix = HEARTBEAT_PREFIX.encode()

        self.connected = False
        self.sessions = 0
        self.safe_until_us: int | None = None
        self.last_heartbeat_monotonic: float | None = None
        self._end_reason = "startup"

        db = source.db
        self._keyspace_prefix = f"__keyspace@{db}__:".encode()
        self._keyevent_prefix = f"__keyevent@{db}__:".encode()
        self._connection: Connection | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def heartbeat_age_s(self) -> float | None:
        if self.last_heartbeat_monotonic is None:
            return None
        return time.monotonic() - self.last_heartbeat_monotonic

    # -- sessions -----------------------------------------------------------------------------------------

    def _connect(self) -> Connection:
        password = self.config.redis_password()
        kwargs = dict(
            host=self.source.host, port=self.source.port, db=self.source.db,
            username=self.config.redis.username or None,
            password=password.reveal() if password else None,
            socket_timeout=self.config.redis.socket_timeout_s,
            socket_connect_timeout=self.config.redis.socket_timeout_s,
            # No internal retries: a reconnect must pass through this class so it is recorded as a gap.
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            client_name="echoseen-capture-subscriber",
        )
        if self.source.tls:
            connection = SSLConnection(ssl_ca_certs=self.config.redis.tls_ca_file or None,
                                       ssl_certfile=self.config.redis.tls_cert_file or None,
                                       ssl_keyfile=self.config.redis.tls_key_file or None, **kwargs)
        else:
            connection = Connection(**kwargs)
        connection.connect()
        return connection

    def _subscribe(self, connection: Connection) -> None:
        db = self.source.db
        if self.mode == "keyspace":
            patterns = [keyspace_channel_pattern(db, pattern) for pattern in self.key_filter.patterns]
            patterns.append(keyspace_channel_pattern(db, self._heartbeat_pattern))
            connection.send_command("PSUBSCRIBE", *patterns)
            expected = len(patterns)
        else:
            channels = [keyevent_channel(db, event) for event in KEYEVENT_EVENTS]
            connection.send_command("SUBSCRIBE", *channels)
            expected = len(channels)
        confirmed = 0
        while confirmed < expected:
            reply = connection.read_response()
            if isinstance(reply, list) and reply and reply[0] in (b"psubscribe", b"subscribe"):
                confirmed += 1

    def _run(self) -> None:
        backoff = Backoff(base_s=0.2, cap_s=10.0)
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                self._connection = connection
                self._subscribe(connection)
                subscribed_at_us, run_id = self._server_facts()
                self._session_started(subscribed_at_us, run_id, self.safe_until_us, self._end_reason)
                self.safe_until_us = subscribed_at_us
                self.last_heartbeat_monotonic = time.monotonic()
                self.connected = True
                self.sessions += 1
                if self.sessions > 1:
                    self.metrics.reconnects.labels(self._label).inc()
                backoff.reset()
                self._read(connection)
            except SilentSubscription as exc:
                self._end_reason = "silent_subscription"
                log.error("subscription on %s stopped delivering: %s; reconnecting", self.source.name, exc)
            except (redis.RedisError, OSError) as exc:
                if self._stop.is_set():
                    break
                self._end_reason = "disconnected" if self.connected else self._end_reason
                delay_s = backoff.next_delay_s()
                log.warning("pub/sub connection to %s lost or refused: %s; reconnecting in %.1f s (attempt %d)",
                            self.source.name, exc, delay_s, backoff.attempt)
                self._stop.wait(delay_s)
            finally:
                self.connected = False
                if connection is not None:
                    connection.disconnect()
                self._connection = None

    def _read(self, connection: Connection) -> None:
        timeout_s = self.config.capture.heartbeat_timeout_s
        while not self._stop.is_set():
            if not connection.can_read(timeout=0.2):
                self._check_silence(timeout_s)
                continue
            batch: list[tuple[bytes, str]] = []
            heartbeats: list[int] = []
            ignored: dict[str, int] = {}
            while True:
                self._parse(connection.read_response(), batch, heartbeats, ignored)
                if len(batch) >= 5000 or not connection.can_read(timeout=0):
                    break
            if batch:
                self.pipeline.offer(batch)
            # A read may hold only ignored notifications; they are counted too.
            if batch or ignored:
                self._count(batch, ignored)
            for sequence in heartbeats:
                server_time_us = self.heartbeat.time_of(sequence)
                if server_time_us is None:
                    continue
                self.pipeline.barrier(server_time_us)
                self.safe_until_us = server_time_us
                self.last_heartbeat_monotonic = time.monotonic()
            self._check_silence(timeout_s)

    def _check_silence(self, timeout_s: float) -> None:
        age_s = self.heartbeat_age_s()
        self.metrics.heartbeat_age.labels(self._label).set(age_s or 0.0)
        written = self.heartbeat.last_write_monotonic
        if age_s is None or age_s < timeout_s or written is None:
            return
        # Only blame the subscription when heartbeats are being written: if the writes fail too,
        # the server is unreachable and the connection error will end the session instead.
        if time.monotonic() - written < timeout_s:
            raise SilentSubscription(f"no heartbeat came back for {age_s:.1f} s although heartbeats were written "
                                     f"(heartbeat_timeout_s = {timeout_s:g})")

    def _count(self, batch: list[tuple[bytes, str]], ignored: dict[str, int]) -> None:
        # Counted per read batch rather than per message: label lookups cost more than the parsing.
        by_event: dict[str, int] = {}
        for _, event_name in batch:
            by_event[event_name] = by_event.get(event_name, 0) + 1
        for event_name, count in by_event.items():
            self.metrics.notifications.labels(self._label, event_name).inc(count)
        for reason, count in ignored.items():
            self.metrics.ignored_notifications.labels(self._label, reason).inc(count)

    def _parse(self, reply: list, batch: list[tuple[bytes, str]], heartbeats: list[int],
               ignored: dict[str, int]) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind == b"pmessage":
            channel, payload = reply[2], reply[3]
            if not channel.startswith(self._keyspace_prefix):
                ignored["other_database"] = ignored.get("other_database", 0) + 1
                return
            key, event = channel[len(self._keyspace_prefix):], payload
        elif kind == b"message":
            channel, payload = reply[1], reply[2]
            if not channel.startswith(self._keyevent_prefix):
                ignored["other_database"] = ignored.get("other_database", 0) + 1
                return
            key, event = payload, channel[len(self._keyevent_prefix):]
        else:
            return

        sequence = self.heartbeat.parse_sequence(key)
        if sequence is not None:
            if event == b"set":
                heartbeats.append(sequence)
            return
        if key.startswith(self._own_prefix) or not self.key_filter.matches(key):
            ignored["unwatched_key"] = ignored.get("unwatched_key", 0) + 1
            return
        batch.append((key, event.decode("ascii", errors="replace")))
