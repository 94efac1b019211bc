"""Test helpers shared by the suites: daemons as subprocesses, reading topics, Echo values "now"."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from devstack.process import free_port
from echoseen import config as config_module
from echoseen import echo_value, events

ECHOSEEN = str(Path(sys.executable).with_name("echoseen"))
CLI_TIMEOUT_S = 120


@dataclass
class CliResult:
    status: int
    stdout: str
    stderr: str
    duration_s: float

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_cli(args: list[str], config_path: Path | None = None, env: dict[str, str] | None = None,
            timeout_s: float = CLI_TIMEOUT_S) -> CliResult:
    """Run `echoseen <args> [-c FILE]` with no ECHOSEEN_* variables but those in ``env``."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ECHOSEEN_")}
    environment.update(env or {})
    # A crash in a native library then leaves a Python traceback in stderr.
    environment["PYTHONFAULTHANDLER"] = "1"
    argv = [ECHOSEEN, *args] + (["-c", str(config_path)] if config_path is not None else [])
    started = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=timeout_s)
    return CliResult(completed.returncode, completed.stdout, completed.stderr, time.monotonic() - started)


def now_value(offset_s: float = 0.0) -> bytes:
    """The value Echo writes when a user opens the popup now (optionally with a clock offset)."""
    moment = datetime.fromtimestamp(time.time() + offset_s, tz=timezone.utc)
    return echo_value.encode(echo_value.ts_mw_from_datetime(moment))


class Daemon:
    """An ``echoseen`` subcommand running as a subprocess with its own config file and log."""

    def __init__(self, workdir: Path, command: str, config: config_module.Config, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.command = command
        port_field = {"capture": "capture", "replicate": "replicator"}.get(command)
        if port_field:
            section = getattr(config, port_field)
            if section.metrics_port == 0:
                config = replace(config, **{port_field: replace(section, metrics_port=free_port())})
            self.metrics_port = getattr(config, port_field).metrics_port
        self.config = config
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{command}.toml"
        self.config_path.write_text(config_module.to_toml(config))
        self.log_path = workdir / f"{command}.log"
        self.extra_args = extra_args or []
        self.env = env or {}
        self.process: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        environment = {key: value for key, value in os.environ.items() if not key.startswith("ECHOSEEN_")}
        environment.update(self.env)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen([ECHOSEEN, self.command, "-c", str(self.config_path), *self.extra_args],
                                            stdout=log_file, stderr=subprocess.STDOUT, env=environment)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def probe(self, path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.command} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.probe("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.command} not ready after {timeout_s} s:\n{self.log()}")

    def metric(self, name: str, labels: str = "") -> float:
        """Sum the samples of a metric whose label text contains ``labels``."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait, and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list:
    """Read every record of a topic from the beginning to its current end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-reader-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, index, OFFSET_BEGINNING) for index in metadata.topics[topic].partitions]
        remaining = set()
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(partition, timeout=10)
            if high > low:
                remaining.add(partition.partition)
        records = []
        if not remaining:
            return records
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == -191:
                    remaining.discard(message.partition())
                continue
            records.append(message)
        assert not remaining, f"reading {topic} timed out; partitions left: {remaining}"
        return records
    finally:
        consumer.close()


class TopicMirror:
    """Follows a topic from the beginning and keeps the newest event per key, reading only new records each time.

    Newest means the highest Redis version read with the value, which is what a
    monotonic replicator ends up with. Events are parsed without schema
    validation for speed; the schema itself is tested elsewhere.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.latest: dict[bytes, dict] = {}
        self.records = 0
        self.by_origin: dict[str, int] = {}
        # No partition-EOF events: one left over from an earlier call would end a later call too early.
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-mirror-{time.monotonic_ns()}",
                                   "enable.auto.commit": False})
        metadata = self._consumer.list_topics(topic, timeout=10)
        self._partitions = [TopicPartition(topic, index, OFFSET_BEGINNING)
                            for index in metadata.topics[topic].partitions]
        self._consumer.assign(self._partitions)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Consume until every partition reached the end it had when this call started."""
        ends = {}
        for partition in self._partitions:
            _, high = self._consumer.get_watermark_offsets(partition, timeout=10)
            ends[partition.partition] = high
        positions = {item.partition: item.offset for item in self._consumer.position(self._partitions)}
        remaining = {index for index, high in ends.items() if max(positions.get(index, 0), 0) < high}
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for message in self._consumer.consume(10_000, 0.5):
                if message.error():
                    continue
                self.records += 1
                document = json.loads(message.value())
                self.by_origin[document["origin"]] = self.by_origin.get(document["origin"], 0) + 1
                current = self.latest.get(message.key())
                if current is None or document["version_us"] >= current["version_us"]:
                    self.latest[message.key()] = document
                if message.offset() + 1 >= ends[message.partition()]:
                    remaining.discard(message.partition())
        assert not remaining, f"reading {self.topic} timed out; partitions left: {remaining}"

    def value(self, key: bytes) -> bytes | None:
        document = self.latest.get(key)
        if document is None or document["value_base64"] is None:
            return None
        return base64.b64decode(document["value_base64"])

    def close(self) -> None:
        self._consumer.close()


def latest_events(bootstrap: str, topic: str) -> dict[bytes, events.SeenTimeEvent]:
    """The newest event per key, fully validated, for tests that inspect event fields."""
    latest: dict[bytes, events.SeenTimeEvent] = {}
    for message in read_topic(bootstrap, topic):
        event = events.decode(message.key(), message.value())
        current = latest.get(event.key)
        if current is None or event.version_us >= current.version_us:
            latest[event.key] = event
    return latest


def redis_watched_state(client, patterns=config_module.ECHO_KEY_PATTERNS,
                        key_regex=config_module.ECHO_KEY_REGEX) -> dict[bytes, bytes]:
    """Every watched key in a Redis database with its value."""
    from capture.patterns import KeyFilter

    key_filter = KeyFilter(tuple(patterns), key_regex)
    state = {}
    for key in client.scan_iter(match=key_filter.scan_match() or "*", count=5000):
        if key_filter.matches(key) and client.type(key) == b"string":
            state[key] = client.get(key)
    return state


def assert_kafka_matches_redis(bootstrap: str, topic: str, client, timeout_s: float = 60.0) -> dict:
    """Wait until, for every watched key in Redis, the newest event in Kafka holds the same value.

    Keys gone from Redis must have a delete as their newest event unless they
    had an expiry. Returns a summary; fails with sample keys when time runs out.
    """
    mirror = TopicMirror(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            redis_state = redis_watched_state(client)
            mirror.catch_up()
            latest = mirror.latest
            missing = [key for key in redis_state if key not in latest]
            wrong = [key for key, value in redis_state.items() if key in latest and mirror.value(key) != value]
            stale = [key for key, document in latest.items() if key not in redis_state
                     and document["op"] == events.OP_UPSERT and document["expire_at_ms"] is None]
            if not (missing or wrong or stale) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        mirror.close()
    summary = {"redis_keys": len(redis_state), "kafka_keys": len(latest), "records": mirror.records, "by_origin": mirror.by_origin,
               "missing": len(missing), "wrong": len(wrong), "deleted_but_upsert_in_kafka": len(stale)}
    assert not missing, f"{summary}; keys in Redis with no event, e.g. {missing[:5]}"
    assert not wrong, f"{summary}; keys whose newest event differs from Redis, e.g. {wrong[:5]}"
    assert not stale, f"{summary}; keys gone from Redis whose newest event is an upsert, e.g. {stale[:5]}"
    return summary
