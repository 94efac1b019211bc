"""The capture daemon on a real Redis and Kafka: every change reaches Kafka, through every kind of gap.

Each test ends by comparing the newest event per key in Kafka with what Redis
holds. Values are written as Echo writes them, with the time of the write, so
catch-up scans (which skip seen times older than a gap) carry them.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import redis

from capture import state as state_store
from echoseen import events
from echoseen.kafka import admin_client, create_topics
from helpers import Daemon, assert_kafka_matches_redis, latest_events, now_value, read_topic

pytestmark = pytest.mark.stack

BURST_WRITES = int(os.environ.get("ECHOSEEN_TEST_BURST_WRITES", "500000"))
BURST_KEYS = int(os.environ.get("ECHOSEEN_TEST_BURST_KEYS", "100000"))
KEY = "enwiki:echo:seen:alert:time:{}"


@pytest.fixture
def capture_setup(redis_server, redis_client, kafka_server, make_config, tmp_path):
    """Topics plus a factory of capture subprocesses; every process is stopped after the test."""
    started: list[Daemon] = []

    def start(wait_ready: bool = True, extra_args: list[str] | None = None, **sections) -> Daemon:
        sections.setdefault("capture", {})
        sections["capture"] = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0,
                               "instance_lock_ttl_s": 5.0, **sections["capture"]}
        config = make_config(redis_server=redis_server, kafka_server=kafka_server, **sections)
        daemon = Daemon(tmp_path / f"capture-{len(started)}", "capture", config, extra_args).start()
        started.append(daemon)
        if wait_ready:
            daemon.wait_ready()
        return daemon

    config = make_config(redis_server=redis_server, kafka_server=kafka_server)
    create_topics(config, admin_client(config))
    yield start, config
    for daemon in started:
        daemon.ensure_stopped()


class SteadyWriter:
    """Writes Echo seen times "now" to a rotating set of keys at a steady rate, in its own thread."""

    def __init__(self, client: redis.Redis, keys: int, rate_per_s: float, prefix: str = "enwiki") -> None:
        self.client = client
        self.keys = keys
        self.rate_per_s = rate_per_s
        self.prefix = prefix
        self.written = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick_s = 0.05
        per_tick = max(1, int(self.rate_per_s * tick_s))
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                pipe = self.client.pipeline(transaction=False)
                for _ in range(per_tick):
                    key = f"{self.prefix}:echo:seen:alert:time:{self.written % self.keys}"
                    pipe.set(key, now_value(), ex=31_536_000)
                    self.written += 1
                pipe.execute()
            except (redis.RedisError, OSError):
                self.errors += 1
            self._stop.wait(max(0.0, tick_s - (time.monotonic() - started)))

    def __enter__(self) -> "SteadyWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def capture_documents(config) -> list[dict]:
    return [document for key, document in state_store.read_all(config).items()
            if key.startswith(state_store.CAPTURE_PREFIX)]


def all_gaps(config) -> list[dict]:
    gaps = []
    for document in capture_documents(config):
        gaps.extend(document["open_gaps"] + document["recent_gaps"])
    return gaps


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_notification_families_reach_kafka(capture_setup, redis_client, redis_server, kafka_server):
    start, config = capture_setup
    daemon = start()
    client = redis_client

    client.set(KEY.format(1), now_value())
    client.setex(KEY.format(2), 3600, now_value())
    client.set(KEY.format(3), now_value())
    client.expire(KEY.format(3), 3600)
    client.set(KEY.format(4), now_value(), ex=3600)
    client.persist(KEY.format(4))
    client.set(KEY.format(5), now_value())
    client.delete(KEY.format(5))
    client.set(KEY.format(6), now_value())
    client.unlink(KEY.format(6))
    client.set(KEY.format(7), now_value(), px=200)
    client.set(KEY.format(8), now_value())
    client.rename(KEY.format(8), KEY.format(9))
    client.mset({KEY.format(10): now_value(), "global:echo:seen:message:time:10": now_value()})
    client.eval("redis.call('SET', KEYS[1], ARGV[1]); return 1", 1, KEY.format(11), now_value())
    client.set("enwiki:unrelated:counter", 5)
    # HSET itself publishes nothing with the flags the capture needs; EXPIRE (class g) makes it read the key.
    client.hset("enwiki:echo:seen:alert:time:12", mapping={"not": "a string"})
    client.expire("enwiki:echo:seen:alert:time:12", 3600)
    other_db = redis_server.client(db=1)
    other_db.set(KEY.format(13), now_value())
    time.sleep(1.0)  # let key 7 expire; its removal publishes `expired`
    client.get(KEY.format(7))

    summary = assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, client)
    latest = latest_events(kafka_server.bootstrap, config.kafka.topic)
    notifications = {key.decode(): event.notification for key, event in latest.items()
                     if event.op == events.OP_DELETE}
    # UNLINK publishes the same `del` event as DEL.
    assert notifications == {KEY.format(5): "del", KEY.format(6): "del", KEY.format(7): "expired",
                             KEY.format(8): "rename_from"}
    assert latest[KEY.format(4).encode()].expire_at_ms is None
    assert latest[KEY.format(2).encode()].expire_at_ms is not None
    published_keys = {message.key() for message in read_topic(kafka_server.bootstrap, config.kafka.topic)}
    assert b"enwiki:unrelated:counter" not in published_keys
    assert KEY.format(12).encode() not in published_keys, "a hash under a watched key must not be published"
    assert summary["redis_keys"] == 8  # keys 1, 2, 3, 4, 9, 10, global 10, 11; db 1 is not watched
    assert daemon.metric("echoseen_capture_bad_values_total", 'reason="not_a_string"') == 1
    assert daemon.stop() == 0


def test_pipelined_burst_loses_nothing(capture_setup, redis_client, kafka_server):
    """Users' keys written again and again at full speed: coalesced, and nothing lost."""
    start, config = capture_setup
    daemon = start()

    written = 0
    while written < BURST_WRITES:
        pipe = redis_client.pipeline(transaction=False)
        value = now_value()
        for index in range(written, min(written + 10_000, BURST_WRITES)):
            pipe.setex(KEY.format(index % BURST_KEYS), 31_536_000, value)
        pipe.execute()
        written += 10_000

    summary = assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client, timeout_s=300)
    assert summary["redis_keys"] == min(BURST_WRITES, BURST_KEYS)
    assert daemon.metric("echoseen_capture_notifications_total") + \
        daemon.metric("echoseen_capture_gaps_total") > 0
    assert daemon.stop() == 0


def test_output_buffer_kill_is_caught_up(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    daemon = start()
    original = redis_client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    try:
        redis_client.config_set("client-output-buffer-limit", "pubsub 65536 32768 1")
        pipe = redis_client.pipeline(transaction=False)
        for index in range(50_000):
            pipe.setex(KEY.format(index), 31_536_000, now_value())
        pipe.execute()
    finally:
        redis_client.config_set("client-output-buffer-limit", original)

    assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client, timeout_s=120)
    wait_for(lambda: daemon.metric("echoseen_capture_subscription_reconnects_total") >= 1, 30,
             "the capture to reconnect after the output-buffer kill")
    assert any("disconnected" in gap["reasons"] for gap in all_gaps(config))
    assert daemon.stop() == 0


def test_client_kill_is_caught_up(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    daemon = start()
    with SteadyWriter(redis_client, keys=2000, rate_per_s=2000):
        time.sleep(1)
        assert redis_client.client_kill_filter(_type="pubsub") >= 1
        time.sleep(2)
    assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client, timeout_s=60)
    assert daemon.metric("echoseen_capture_gaps_total", 'reason="disconnected"') >= 1
    assert daemon.stop() == 0


def test_sigkill_and_restart_lose_nothing(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    first = start()
    with SteadyWriter(redis_client, keys=5000, rate_per_s=2000) as writer:
        time.sleep(2)
        first.kill()
        time.sleep(3)
        second = start()
        time.sleep(2)
    assert writer.written > 5000
    assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client, timeout_s=60)
    wait_for(lambda: any("startup" in gap["reasons"] and gap["closed_at_us"] for gap in all_gaps(config)), 30,
             "the startup gap after the SIGKILL to be closed")
    assert second.stop() == 0


def test_sigterm_exits_cleanly_with_summary(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    daemon = start()
    with SteadyWriter(redis_client, keys=1000, rate_per_s=1000):
        time.sleep(1.5)
        started = time.monotonic()
        assert daemon.stop(timeout_s=30) == 0
        elapsed_s = time.monotonic() - started
    assert elapsed_s < config.capture.shutdown_timeout_s + 5
    assert "capture stopped after" in daemon.log()
    documents = capture_documents(config)
    assert documents and all(document["stopped"] for document in documents)
    assert all(document["watermark_us"] for document in documents)


def test_missing_notification_flags_refused(capture_setup, redis_client):
    start, _ = capture_setup
    original = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    try:
        redis_client.config_set("notify-keyspace-events", "")
        daemon = start(wait_ready=False)
        assert daemon.process.wait(timeout=60) == 2
        assert "CONFIG SET notify-keyspace-events" in daemon.log()
        assert daemon.log().count("Traceback") == 0

        allowed = start(extra_args=["--allow-config-set"])
        flags = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
        assert set("Kg$xe") <= set(flags)
        assert allowed.stop() == 0
    finally:
        redis_client.config_set("notify-keyspace-events", original)


def test_second_capture_is_refused(capture_setup):
    start, _ = capture_setup
    first = start()
    second = start(wait_ready=False)
    assert second.process.wait(timeout=60) == 1
    assert "another capture holds the lock" in second.log()
    assert first.probe("/readyz")[0] == 200
    assert first.stop() == 0


def test_keyevent_channels(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    original = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    try:
        redis_client.config_set("notify-keyspace-events", "Eg$xe")
        daemon = start(capture={"channel_mode": "keyevent"})
        for index in range(200):
            redis_client.setex(KEY.format(index), 3600, now_value())
        redis_client.delete(KEY.format(0))
        redis_client.set("unrelated:key", "x")
        assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client)
        # The unrelated key's notification may still be in flight when Kafka already matches Redis.
        wait_for(lambda: daemon.metric("echoseen_capture_ignored_notifications_total",
                                       'reason="unwatched_key"') >= 1, 30, "the unrelated key to be ignored")
        assert daemon.stop() == 0
    finally:
        redis_client.config_set("notify-keyspace-events", original)


def test_forced_pttl_reads_expiry(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    daemon = start(redis={"force_pttl": True})
    assert "expiry via PTTL+TIME" in daemon.log()
    redis_client.set(KEY.format(1), now_value(), ex=1000)
    expected_ms = int(redis_client.pexpiretime(KEY.format(1)))
    assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client)
    event = latest_events(kafka_server.bootstrap, config.kafka.topic)[KEY.format(1).encode()]
    assert abs(event.expire_at_ms - expected_ms) <= 5
    assert daemon.stop() == 0


def test_silent_subscription_detected(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    daemon = start(capture={"heartbeat_timeout_s": 2.0})
    original = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    try:
        redis_client.config_set("notify-keyspace-events", "")
        for index in range(100):
            redis_client.setex(KEY.format(index), 3600, now_value())
        wait_for(lambda: daemon.metric("echoseen_capture_gaps_total", 'reason="silent_subscription"') >= 1, 30,
                 "a silent-subscription gap")
    finally:
        redis_client.config_set("notify-keyspace-events", original)
    assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client)
    assert daemon.stop() == 0


def test_pending_overflow_recorded_and_caught_up(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    daemon = start(capture={"max_pending_keys": 100, "read_batch_size": 50})
    pipe = redis_client.pipeline(transaction=False)
    for index in range(20_000):
        pipe.setex(KEY.format(index), 3600, now_value())
    pipe.execute()
    assert_kafka_matches_redis(kafka_server.bootstrap, config.kafka.topic, redis_client, timeout_s=120)
    assert daemon.metric("echoseen_capture_gaps_total", 'reason="pending_overflow"') >= 1
    assert daemon.stop() == 0


def test_old_seen_times_outside_gap_not_republished(capture_setup, redis_client, kafka_server):
    start, config = capture_setup
    redis_client.set(KEY.format(1), b's:14:"20190523123456";')
    daemon = start()
    redis_client.client_kill_filter(_type="pubsub")
    wait_for(lambda: any(gap["closed_at_us"] for gap in all_gaps(config)), 30, "the disconnect gap to close")
    published = {message.key() for message in read_topic(kafka_server.bootstrap, config.kafka.topic)}
    assert KEY.format(1).encode() not in published, "a 2019 seen time is older than the gap and the skew margin"
    assert daemon.stop() == 0
    assert json.dumps(all_gaps(config))
