"""Helpers of the replicator suites: events, producing, running the replicator, reading Kask and Kafka back.

Sizes are settings so CI can shrink them: ECHOSEEN_TEST_RECORDS (records per
load test, default 300) and ECHOSEEN_TEST_OUTAGE_S (how long Kask stays down in
the outage test, default 10; the full run uses 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from echoseen import config as config_module
from echoseen import echo_value, events
from echoseen import kafka as kafka_module
from replicator.daemon import Replicator
from replicator.kask_client import KaskClient

RECORDS = int(os.environ.get("ECHOSEEN_TEST_RECORDS", "300"))
OUTAGE_S = float(os.environ.get("ECHOSEEN_TEST_OUTAGE_S", "10"))

# Seen times of generated events start here and move one second per step.
BASE_EPOCH_S = 1_717_200_000  # 2024-06-01


def seen_time(step: int) -> str:
    return echo_value.ts_mw_from_epoch_us((BASE_EPOCH_S + step) * 1_000_000)


def echo_key(wiki: str, user: int, kind: str = "alert") -> bytes:
    return f"{wiki}:echo:seen:{kind}:time:{user}".encode()


def upsert(key: bytes, seen: str, version_us: int | None = None, origin: str = events.ORIGIN_LIVE,
           notification: str | None = "set") -> events.SeenTimeEvent:
    if version_us is None:
        version_us = echo_value.epoch_s_from_ts_mw(seen) * 1_000_000 + 1000
    return events.SeenTimeEvent(op=events.OP_UPSERT, key=key, value=echo_value.encode(seen), seen_time=seen,
                                value_error=None, expire_at_ms=None, version_us=version_us, origin=origin,
                                notification=notification, source_server="127.0.0.1:6379", source_db=0,
                                source_run_id="test-run")


def bad_value(key: bytes, value: bytes, error: str) -> events.SeenTimeEvent:
    return events.SeenTimeEvent(op=events.OP_UPSERT, key=key, value=value, seen_time=None, value_error=error,
                                expire_at_ms=None, version_us=int(time.time() * 1e6), origin=events.ORIGIN_LIVE,
                                notification="set", source_server="127.0.0.1:6379", source_db=0,
                                source_run_id="test-run")


def delete(key: bytes, notification: str, version_us: int) -> events.SeenTimeEvent:
    return events.SeenTimeEvent(op=events.OP_DELETE, key=key, value=None, seen_time=None, value_error=None,
                                expire_at_ms=None, version_us=version_us, origin=events.ORIGIN_LIVE,
                                notification=notification, source_server="127.0.0.1:6379", source_db=0,
                                source_run_id="test-run")


def load_events(wiki: str, records: int, keys: int, start_step: int = 0) -> list[events.SeenTimeEvent]:
    """Upserts spread over ``keys`` users, each newer than the one before it for the same key."""
    return [upsert(echo_key(wiki, index % keys), seen_time(start_step + index)) for index in range(records)]


def newest_seen(event_list: Iterable[events.SeenTimeEvent]) -> dict[bytes, str]:
    """The seen time Kask must end with per key, for streams of upserts only."""
    newest: dict[bytes, str] = {}
    for event in event_list:
        if event.op == events.OP_UPSERT and event.seen_time and event.seen_time != echo_value.PLACEHOLDER:
            if event.seen_time > newest.get(event.key, ""):
                newest[event.key] = event.seen_time
    return newest


class EventProducer:
    """A producer for the test topic; ``send`` takes events, ``send_raw`` any key and value."""

    def __init__(self, config: config_module.Config) -> None:
        self.topic = config.kafka.topic
        self._producer = Producer({"bootstrap.servers": config.kafka.bootstrap_servers, "linger.ms": 5,
                                   "enable.idempotence": True, "acks": "all"})

    def send(self, event: events.SeenTimeEvent, partition: int | None = None) -> None:
        key, value = events.encode(event)
        self.send_raw(key, value, partition)

    def send_raw(self, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(self.topic, key=key, value=value, **extra)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def send_all(self, event_list: Iterable[events.SeenTimeEvent]) -> None:
        for event in event_list:
            self.send(event)
        self.flush()

    def flush(self) -> None:
        remaining = self._producer.flush(30)
        assert remaining == 0, f"{remaining} test records were not delivered to {self.topic}"


def create_topics(config: config_module.Config) -> None:
    kafka_module.create_topics(config, kafka_module.admin_client(config))


def raw_event(key: str, **changes: Any) -> bytes:
    """A JSON event document with some fields replaced, for records the codec would never produce."""
    document = upsert(key.encode(), seen_time(0)).to_json_dict()
    document.update(changes)
    return json.dumps(document).encode()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


class RunningReplicator:
    """A Replicator running in a thread of the test process."""

    def __init__(self, config: config_module.Config, dry_run: bool = False) -> None:
        self.replicator = Replicator(config, dry_run=dry_run)
        self.thread = threading.Thread(target=self.replicator.run, name="replicator", daemon=True)

    def start(self, timeout_s: float = 30.0) -> "RunningReplicator":
        self.thread.start()
        if not self.replicator.started.wait(timeout_s):
            raise AssertionError(f"replicator did not start within {timeout_s} s")
        if self.replicator.exit_status is not None:
            raise AssertionError(f"replicator exited at start with status {self.replicator.exit_status}")
        wait_until(lambda: self.replicator._kafka is not None and self.replicator._kafka.joined, timeout_s,
                   "the replicator to join its group")
        return self

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.replicator.counts)

    def total(self) -> int:
        return sum(self.replicator.counts.values())

    def wait_for_total(self, total: int, timeout_s: float = 120.0) -> None:
        wait_until(lambda: self.total() >= total, timeout_s,
                   f"{total} finished records (have {self.total()}: {self.counts})")

    def http(self, path: str) -> tuple[int, dict | str]:
        url = f"http://127.0.0.1:{self.replicator.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            status = exc.code
        return status, (json.loads(body) if path != "/metrics" else body)

    def metric(self, name: str, labels: str = "") -> float:
        _, text = self.http("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {" and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout_s: float = 60.0) -> int | None:
        self.replicator.stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"replicator did not stop within {timeout_s} s"
        return self.replicator.exit_status


@contextlib.contextmanager
def running(config: config_module.Config, dry_run: bool = False) -> Iterator[RunningReplicator]:
    instance = RunningReplicator(config, dry_run=dry_run).start()
    try:
        yield instance
    finally:
        if instance.thread.is_alive():
            instance.stop()


def kask_config(config: config_module.Config, url: str) -> config_module.Config:
    return replace(config, kask=replace(config.kask, url=url))


def kask_bodies(config: config_module.Config, keys: Iterable[bytes]) -> dict[bytes, bytes | None]:
    """GET every key once; the raw body, or None for 404."""

    async def read_all() -> dict[bytes, bytes | None]:
        async with KaskClient(config.kask, max_in_flight=32) as client:
            async def read(key: bytes) -> tuple[bytes, bytes | None]:
                response = await client.get(key)
                assert response.status in (200, 404), f"GET {key!r} returned {response.status}"
                return key, (response.body if response.status == 200 else None)
            return dict(await asyncio.gather(*(read(key) for key in keys)))

    return asyncio.run(read_all())


def kask_post(config: config_module.Config, key: bytes, body: bytes) -> None:
    """Write a body the way MediaWiki does during dual-write."""

    async def post() -> None:
        async with KaskClient(config.kask, max_in_flight=1) as client:
            response = await client.post(key, body)
            assert response.status == 201, f"POST {key!r} returned {response.status}"

    asyncio.run(post())


def missing_or_wrong(config: config_module.Config, expected: dict[bytes, str]) -> dict[bytes, str]:
    """Compare Kask with the expected seen time per key; return what differs (key -> description)."""
    from replicator.apply import codec_from_config

    codec = codec_from_config(config)
    problems = {}
    for key, body in kask_bodies(config, expected).items():
        if body is None:
            problems[key] = "missing"
            continue
        stored = codec.decode(body).seen_time
        if stored != expected[key]:
            problems[key] = f"holds {stored}, expected {expected[key]}"
    return problems


def consumer(config: config_module.Config, group_id: str) -> Consumer:
    return Consumer({"bootstrap.servers": config.kafka.bootstrap_servers, "group.id": group_id,
                     "enable.auto.commit": False})


def partitions(config: config_module.Config, topic: str | None = None) -> list[int]:
    topic = topic or config.kafka.topic
    admin = kafka_module.admin_client(config)
    return sorted(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def committed_offsets(config: config_module.Config, group_id: str | None = None) -> dict[int, int]:
    """Committed offset per partition of the event topic (-1001 when none)."""
    group_id = group_id or config.replicator.group_id
    reader = consumer(config, group_id)
    try:
        entries = reader.committed([TopicPartition(config.kafka.topic, p) for p in partitions(config)], timeout=10)
        return {entry.partition: entry.offset for entry in entries}
    finally:
        reader.close()


def end_offsets(config: config_module.Config, topic: str | None = None) -> dict[int, int]:
    topic = topic or config.kafka.topic
    reader = consumer(config, "end-offsets-reader")
    try:
        return {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions(config, topic)}
    finally:
        reader.close()


def read_records(config: config_module.Config, topic: str) -> list:
    from helpers import read_topic

    return read_topic(config.kafka.bootstrap_servers, topic)


class StreamProducer:
    """Produces new upserts in a background thread at about ``rate_per_s`` until stopped."""

    def __init__(self, config: config_module.Config, wiki: str, rate_per_s: float = 50.0, keys: int = 50,
                 start_step: int = 100_000) -> None:
        self._producer = EventProducer(config)
        self._wiki = wiki
        self._interval_s = 1.0 / rate_per_s
        self._keys = keys
        self._step = start_step
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-producer", daemon=True)
        self.sent: list[events.SeenTimeEvent] = []

    def _run(self) -> None:
        while not self._stopping.is_set():
            event = upsert(echo_key(self._wiki, self._step % self._keys), seen_time(self._step))
            self._producer.send(event)
            self.sent.append(event)
            self._step += 1
            time.sleep(self._interval_s)
        self._producer.flush()

    def send(self, event: events.SeenTimeEvent) -> None:
        """Send one extra event next to the stream; it is not part of ``sent``."""
        self._producer.send(event)

    def start(self) -> "StreamProducer":
        self._thread.start()
        return self

    def stop(self) -> list[events.SeenTimeEvent]:
        self._stopping.set()
        self._thread.join(30)
        return list(self.sent)
