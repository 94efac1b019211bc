"""Helpers of the operator-tool tests: a configuration file, running `echoseen`, and Kafka and Kask access."""

from __future__ import annotations

import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from echoseen import config as config_module
from echoseen import echo_value, events
from echoseen.kafka import admin_client, create_topics
from helpers import CLI_TIMEOUT_S, CliResult, Daemon, run_cli


@dataclass
class Ops:
    """One test's configuration (fresh topics and group), written to a file the subprocesses read."""

    config: config_module.Config
    workdir: Path
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        path = self.workdir / "echoseen.toml"
        path.write_text(config_module.to_toml(self.config))
        return path

    def with_config(self, **sections) -> "Ops":
        config = self.config
        for name, overrides in sections.items():
            config = replace(config, **{name: replace(getattr(config, name), **overrides)})
        return Ops(config, self.workdir, self.daemons)

    def cli(self, *args: str, timeout_s: float = CLI_TIMEOUT_S, env: dict[str, str] | None = None) -> CliResult:
        """Run `echoseen <args> -c <file>` with no ECHOSEEN_* variables but those in ``env``."""
        return run_cli(list(args), self.config_path, env=env, timeout_s=timeout_s)

    @property
    def bootstrap(self) -> str:
        return self.config.kafka.bootstrap_servers

    def create_topics(self) -> None:
        create_topics(self.config, admin_client(self.config))

    def start_replicator(self, name: str = "replicator") -> Daemon:
        daemon = Daemon(self.workdir / f"{name}-{len(self.daemons)}", "replicate", self.config).start()
        self.daemons.append(daemon)
        daemon.wait_ready(timeout_s=90)
        return daemon

    def start_capture(self) -> Daemon:
        config = replace(self.config, capture=replace(self.config.capture, heartbeat_interval_s=0.5,
                                                      heartbeat_timeout_s=5.0, instance_lock_ttl_s=5.0))
        daemon = Daemon(self.workdir / f"capture-{len(self.daemons)}", "capture", config).start()
        self.daemons.append(daemon)
        daemon.wait_ready(timeout_s=60)
        return daemon

    # Kafka helpers.

    def produce(self, records: list[tuple[bytes, bytes, int | None]], partition: int | None = None,
                topic: str | None = None) -> list[tuple[int, int]]:
        """Produce (key, value, timestamp_ms) records; return the (partition, offset) of each, in order."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", "linger.ms": 5})
        placed: list[tuple[int, int] | None] = [None] * len(records)

        def delivered(index: int):
            def callback(error, message) -> None:
                assert error is None, f"delivery failed: {error}"
                placed[index] = (message.partition(), message.offset())
            return callback

        for index, (key, value, timestamp_ms) in enumerate(records):
            kwargs = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
            if partition is not None:
                kwargs["partition"] = partition
            producer.produce(topic or self.config.kafka.topic, key=key, value=value, on_delivery=delivered(index),
                             **kwargs)
        assert producer.flush(30) == 0, "records still queued after 30 s"
        return [item for item in placed if item is not None]

    def commit(self, offsets: dict[int, int], group_id: str | None = None) -> None:
        """Commit offsets for the group the way a consumer does, without joining it."""
        consumer = self._group_consumer(group_id)
        try:
            consumer.commit(offsets=[TopicPartition(self.config.kafka.topic, partition, offset)
                                     for partition, offset in offsets.items()], asynchronous=False)
        finally:
            consumer.close()

    def committed(self, group_id: str | None = None) -> dict[int, int]:
        consumer = self._group_consumer(group_id)
        try:
            partitions = [TopicPartition(self.config.kafka.topic, index)
                          for index in range(self.config.kafka.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        finally:
            consumer.close()

    def _group_consumer(self, group_id: str | None) -> Consumer:
        # Carries the group id only to commit or read offsets; it never subscribes, so it never joins.
        return Consumer({"bootstrap.servers": self.bootstrap, "enable.auto.commit": False,
                         "group.id": group_id or self.config.replicator.group_id})

    def stop_daemons(self) -> None:
        for daemon in self.daemons:
            daemon.ensure_stopped()


def seen_time_event(key: str, seen_time: str, version_us: int | None = None) -> tuple[bytes, bytes]:
    """A snapshot upsert event for one key, as the backfill would publish it."""
    value = echo_value.encode(seen_time)
    event = events.SeenTimeEvent(
        op=events.OP_UPSERT, key=key.encode(), value=value, seen_time=seen_time, value_error=None,
        expire_at_ms=None, version_us=version_us or int(time.time() * 1e6), origin=events.ORIGIN_SNAPSHOT,
        notification=None, source_server="127.0.0.1:6379", source_db=0, source_run_id="test-run")
    return events.encode(event)


class KaskHttp:
    """Plain HTTP access to the test Kask, to plant or remove values behind the product's back."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"

    def _url(self, key: str) -> str:
        return self.base_url + urllib.parse.quote(key, safe="")

    def get(self, key: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self._url(key), timeout=10) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def post(self, key: str, body: bytes) -> None:
        request = urllib.request.Request(self._url(key), data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201, f"POST {key} answered {response.status}"

    def delete(self, key: str) -> None:
        request = urllib.request.Request(self._url(key), method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204, f"DELETE {key} answered {response.status}"


def wait_until(condition, timeout_s: float, description: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {description}; last result: {last!r}")
