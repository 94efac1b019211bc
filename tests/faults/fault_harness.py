"""The fault suite's harness: the whole pipeline as subprocesses, live Echo writes, and the end-to-end check.

A scenario starts `echoseen capture` and `echoseen replicate` as subprocesses
against one Redis, Kafka and Kask. It writes seen times "now" at a steady rate
with devstack.keyspace.LiveWriter, injects a fault and recovers. It ends with
`echoseen verify`, run as a subprocess, whose exit status and JSON must show
no key missing in Kask and no key older in Kask than in Redis. While the
scenario runs, a watcher reads a sample of keys from Kask over and over and
records every seen time that moved backwards.

Sizes are environment variables, short by default (CI) and full-size in
scripts/faults-full.sh:

  ECHOSEEN_FAULT_RATE_PER_S      live writes per second (default 100)
  ECHOSEEN_FAULT_KEYS            distinct users' keys written (default 1000)
  ECHOSEEN_FAULT_LOAD_S          seconds of load before and after each fault (default 2)
  ECHOSEEN_FAULT_DOWN_S          how long a killed daemon or Redis stays down (default 3)
  ECHOSEEN_FAULT_KAFKA_DOWN_S    how long the Kafka broker stays stopped (default 5)
  ECHOSEEN_FAULT_KASK_DOWN_S     how long Kask stays stopped (default 5)
  ECHOSEEN_FAULT_KASK_SLOW_S     how long Kask responds slowly or with 5xx (default 5)
  ECHOSEEN_FAULT_BURST_WRITES    writes of the output-buffer burst (default 50000)
  ECHOSEEN_FAULT_SETTLE_S        upper bound on the wait for Kask to catch up (default 180)
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from capture.patterns import KeyFilter
from devstack.keyspace import LiveWriter
from echoseen import config as config_module
from echoseen import echo_value
from echoseen.events import key_text
from echoseen.kafka import admin_client, create_topics
from echoseen.kask_body import BodyCodec
from helpers import CliResult, Daemon, read_topic, run_cli
from replicator import dead_letters
from replicator.kask_client import KaskClient, unaddressable_reason


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


RATE_PER_S = _env_float("ECHOSEEN_FAULT_RATE_PER_S", 100)
KEYS = int(_env_float("ECHOSEEN_FAULT_KEYS", 1000))
LOAD_S = _env_float("ECHOSEEN_FAULT_LOAD_S", 2)
DOWN_S = _env_float("ECHOSEEN_FAULT_DOWN_S", 3)
KAFKA_DOWN_S = _env_float("ECHOSEEN_FAULT_KAFKA_DOWN_S", 5)
KASK_DOWN_S = _env_float("ECHOSEEN_FAULT_KASK_DOWN_S", 5)
KASK_SLOW_S = _env_float("ECHOSEEN_FAULT_KASK_SLOW_S", 5)
BURST_WRITES = int(_env_float("ECHOSEEN_FAULT_BURST_WRITES", 50_000))
SETTLE_S = _env_float("ECHOSEEN_FAULT_SETTLE_S", 180)

CLI_TIMEOUT_S = 180.0

# Fast heartbeats and a short lock, so gaps are noticed and a restarted capture takes over quickly.
CAPTURE_SETTINGS = {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 5.0, "instance_lock_ttl_s": 5.0,
                    "state_flush_interval_s": 0.5}
# Short retries and commits, and a session timeout that lets a killed member's partitions move within seconds.
REPLICATOR_SETTINGS = {"retry_base_s": 0.05, "retry_cap_s": 1.0, "commit_interval_s": 0.5,
                       "shutdown_timeout_s": 10.0, "session_timeout_s": 6.0}
# Verify reports every bad key, not only a sample, so a test can name them all.
VERIFY_SETTINGS = {"recheck_rounds": 2, "recheck_delay_s": 1.0, "sample_keys": 100_000}

# Categories of `echoseen verify` that mean a user's seen time was lost or moved backwards.
LOSS_CATEGORIES = ("missing_in_kask", "kask_older", "undecodable_in_kask")

JSON_CODEC = BodyCodec()


def echo_keys(wiki: str, count: int = KEYS) -> list[str]:
    """Keys of ``count`` users of one wiki, alerts and notices alternating."""
    return [f"{wiki}:echo:seen:{'alert' if index % 2 == 0 else 'message'}:time:{index}" for index in range(count)]


def wait_for(predicate: Callable[[], Any], timeout_s: float, description: str, interval_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {description}")
        time.sleep(interval_s)


# ---------------------------------------------------------------------------
# Live writes


class Load:
    """LiveWriter in a background thread until stopped; a write error (Redis down) starts a new writer.

    ``clock_offset_s`` is the application servers' clock error: negative for clocks that run behind Redis.
    """

    def __init__(self, client: redis.Redis, keys: list[str], rate_per_s: float = RATE_PER_S,
                 clock_offset_s: float = 0.0, seed: int = 1) -> None:
        self.client = client
        self.keys = keys
        self.rate_per_s = rate_per_s
        self.clock_offset_s = clock_offset_s
        self.seed = seed
        self.writes = 0
        self.errors = 0
        self.written_keys: set[str] = set()
        self._writer: LiveWriter | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)

    def _run(self) -> None:
        round_number = 0
        while not self._stop.is_set():
            round_number += 1
            # A long duration: the writer runs until stop() or a Redis error ends it.
            self._writer = LiveWriter(self.client, self.keys, self.rate_per_s, 86_400.0,
                                      clock_offset_s=self.clock_offset_s, seed=self.seed * 1000 + round_number)
            if self._stop.is_set():
                return
            try:
                result = self._writer.run()
            except (redis.RedisError, OSError):
                # The writes of this round that reached Redis are not known; Redis itself is the reference.
                self.errors += 1
                self._stop.wait(0.2)
                continue
            self.writes += result.writes
            self.written_keys.update(result.last_values)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self) -> "Load":
        self._stop.set()
        if self._writer is not None:
            self._writer.stop()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the live writer did not stop"
        return self

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# Reading Kask and Redis


def redis_seen_times(client: redis.Redis, config: config_module.Config) -> dict[bytes, str]:
    """Seen time per watched key whose Redis value is a seen time Kask can store under that key."""
    key_filter = KeyFilter.from_config(config)
    seen: dict[bytes, str] = {}
    for key in client.scan_iter(match=key_filter.scan_match() or "*", count=5000):
        if not key_filter.matches(key) or unaddressable_reason(key, config.kask.max_key_bytes):
            continue
        if client.type(key) != b"string":
            continue
        value = client.get(key)
        if value is None:
            continue
        decoded = echo_value.decode(value, config.redis.max_value_bytes)
        if decoded.seen_time is not None and not decoded.is_placeholder:
            seen[key] = decoded.seen_time
    return seen


async def _read_kask(kask: config_module.KaskConfig, keys: Iterable[bytes]) -> dict[bytes, str | None]:
    codec = JSON_CODEC
    async with KaskClient(kask, max_in_flight=32) as client:
        async def read(key: bytes) -> tuple[bytes, str | None]:
            response = await client.get(key)
            if response.status == 404:
                return key, None
            assert response.status == 200, f"GET {key!r} returned {response.status}"
            return key, codec.decode(response.body).seen_time

        return dict(await asyncio.gather(*(read(key) for key in keys)))


def kask_seen_times(kask: config_module.KaskConfig, keys: Iterable[bytes]) -> dict[bytes, str | None]:
    """Seen time MediaWiki would read from Kask per key; None for a missing or unreadable value."""
    return asyncio.run(_read_kask(kask, list(keys)))


def behind_in_kask(client: redis.Redis, config: config_module.Config,
                   kask: config_module.KaskConfig) -> dict[bytes, tuple[str, str | None]]:
    """Keys whose seen time in Kask is missing or older than in Redis: key -> (Redis, Kask)."""
    expected = redis_seen_times(client, config)
    stored = kask_seen_times(kask, expected)
    return {key: (seen, stored[key]) for key, seen in expected.items()
            if stored[key] is None or stored[key] < seen}


class MonotonicWatch:
    """Reads a sample of keys from Kask over and over and records every seen time that moved backwards."""

    def __init__(self, kask: config_module.KaskConfig, keys: Iterable[str], interval_s: float = 0.5) -> None:
        self.kask = kask
        self.keys = [key.encode() for key in keys]
        self.interval_s = interval_s
        self.highest: dict[bytes, str] = {}
        self.regressions: list[tuple[bytes, str, str]] = []
        self.rounds = 0
        self.read_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="kask-watch", daemon=True)

    async def _main(self) -> None:
        async with KaskClient(self.kask, max_in_flight=16) as client:
            while not self._stop.is_set():
                await self._round(client)
                await asyncio.sleep(self.interval_s)

    async def _round(self, client: KaskClient) -> None:
        async def read(key: bytes) -> tuple[bytes, str | None]:
            try:
                response = await client.get(key)
            except Exception:  # noqa: BLE001 - Kask may be down on purpose; the round just misses this key
                self.read_errors += 1
                return key, None
            if response.status != 200:
                return key, None
            return key, JSON_CODEC.decode(response.body).seen_time

        for key, seen in await asyncio.gather(*(read(key) for key in self.keys)):
            if seen is None:
                continue
            highest = self.highest.get(key)
            if highest is not None and seen < highest:
                self.regressions.append((key, highest, seen))
            if highest is None or seen > highest:
                self.highest[key] = seen
        self.rounds += 1

    def start(self) -> "MonotonicWatch":
        self._thread.start()
        return self

    def stop(self) -> "MonotonicWatch":
        self._stop.set()
        self._thread.join(timeout=30)
        return self


# ---------------------------------------------------------------------------
# The pipeline


@dataclass
class Pipeline:
    """One scenario's configuration, daemons and checks.

    The daemons use ``config``. Verify and the checks read ``verify_kask``,
    which is a different URL when the replicator goes through a fault proxy.
    """

    config: config_module.Config
    workdir: Path
    redis_client: redis.Redis
    verify_kask: config_module.KaskConfig
    daemons: list[Daemon] = field(default_factory=list)
    watch: MonotonicWatch | None = None

    @classmethod
    def build(cls, make_config, workdir: Path, redis_server, kafka_server, kask_server,
              kask_url: str | None = None, **sections) -> "Pipeline":
        """Create the topics and build the configuration; ``kask_url`` replaces the Kask the daemons use."""
        for name, defaults in (("capture", CAPTURE_SETTINGS), ("replicator", REPLICATOR_SETTINGS),
                               ("verify", VERIFY_SETTINGS)):
            sections[name] = {**defaults, **sections.get(name, {})}
        config = make_config(redis_server=redis_server, kafka_server=kafka_server, kask_server=kask_server,
                             **sections)
        verify_kask = config.kask
        if kask_url is not None:
            config = replace(config, kask=replace(config.kask, url=kask_url))
        create_topics(config, admin_client(config))
        return cls(config, workdir, redis_server.client(), verify_kask)

    # -- daemons --------------------------------------------------------------------------------------

    def start(self, command: str, name: str | None = None, wait_ready: bool = True,
              config: config_module.Config | None = None) -> Daemon:
        name = name or f"{command}-{len(self.daemons)}"
        daemon = Daemon(self.workdir / name, command, config or self.config).start()
        self.daemons.append(daemon)
        if wait_ready:
            daemon.wait_ready(timeout_s=90)
        return daemon

    def capture(self, name: str | None = None, wait_ready: bool = True) -> Daemon:
        return self.start("capture", name, wait_ready)

    def replicator(self, name: str | None = None, wait_ready: bool = True) -> Daemon:
        return self.start("replicate", name, wait_ready)

    def start_watched(self, keys: list[str]) -> tuple[Daemon, Daemon]:
        """Start a capture and a replicator, watch ``keys`` in Kask, and return both daemons."""
        capture = self.capture()
        replicator = self.replicator()
        self.watch_keys(keys)
        return capture, replicator

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        for daemon in self.daemons:
            daemon.ensure_stopped()
        self.redis_client.close()

    # -- checks ---------------------------------------------------------------------------------------

    def watch_keys(self, keys: list[str], sample: int = 200) -> MonotonicWatch:
        """Start watching up to ``sample`` of the keys for seen times that move backwards."""
        self.watch = MonotonicWatch(self.verify_kask, keys[:sample]).start()
        return self.watch

    def verify_config_path(self) -> Path:
        path = self.workdir / "verify.toml"
        path.write_text(config_module.to_toml(replace(self.config, kask=self.verify_kask)))
        return path

    def verify(self, *args: str) -> tuple[CliResult, dict]:
        """Run `echoseen verify --json --no-store` on every watched key; return the result and its document."""
        result = run_cli(["verify", "--json", "--no-store", *args], self.verify_config_path(),
                         timeout_s=CLI_TIMEOUT_S)
        assert result.stdout.strip(), f"verify printed nothing (exit {result.status}):\n{result.stderr[-3000:]}"
        return result, result.json()

    def lag(self) -> dict:
        """Run `echoseen lag --json` for the replicator's group; return its document."""
        result = run_cli(["lag", "--json"], self.verify_config_path(), timeout_s=CLI_TIMEOUT_S)
        assert result.status == 0, f"lag exited with {result.status}:\n{result.stderr[-2000:]}"
        return result.json()

    def wait_caught_up(self, timeout_s: float = 60.0) -> dict:
        """Wait until the replicator's group has committed every partition to its end; return the lag document."""
        deadline = time.monotonic() + timeout_s
        while True:
            document = self.lag()
            if document["total_lag_records"] == 0:
                return document
            if time.monotonic() > deadline:
                raise AssertionError(f"the replicator has not committed every partition to its end after "
                                     f"{timeout_s:.0f} s: {document['partitions']}")
            time.sleep(1.0)

    def dead_letters(self, expected_records: int, timeout_s: float = 60.0) -> dict[str, dict[str, str]]:
        """Wait for ``expected_records`` records in the dead-letter topic; return the headers of each by key text."""
        topic = self.config.kafka.dead_letter_topic
        deadline = time.monotonic() + timeout_s
        while True:
            records = read_topic(self.config.kafka.bootstrap_servers, topic)
            if len(records) >= expected_records or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert len(records) == expected_records, f"{len(records)} records in {topic}, expected {expected_records}"
        return {key_text(record.key()): dead_letters.headers_dict(record) for record in records}

    def settle(self, timeout_s: float = SETTLE_S) -> dict[bytes, tuple[str, str | None]]:
        """Wait until Kask has caught up with every Redis seen time; return the keys still behind at the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            behind = behind_in_kask(self.redis_client, self.config, self.verify_kask)
            if not behind or time.monotonic() > deadline:
                return behind
            time.sleep(1.0)

    def assert_nothing_lost(self, *verify_args: str) -> dict:
        """Wait for Kask to catch up, then require verify to pass with no key missing or older in Kask."""
        settle_started = time.monotonic()
        behind = self.settle()
        settle_s = time.monotonic() - settle_started
        result, document = self.verify(*verify_args)
        # Shown with `pytest -s`, for the record of each scenario's result.
        print(f"\n{self.workdir.parent.name}: Kask caught up {settle_s:.1f} s after the writes stopped; verify exit "
              f"{result.status}, {document['compared']} keys compared, categories {document['categories']}")
        categories = document["categories"]
        summary = (f"verify exit {result.status}, categories {categories}; still behind after the settle wait: "
                   f"{len(behind)} keys, e.g. {list(behind.items())[:5]}; samples "
                   f"{ {name: samples[:5] for name, samples in document['samples'].items()} }")
        for category in LOSS_CATEGORIES:
            assert categories.get(category, 0) == 0, summary
        assert result.status == 0, summary + "\n" + result.stderr[-2000:]
        assert document["passed"] is True, summary
        assert categories.get("equal", 0) + categories.get("kask_newer", 0) > 0, summary
        if self.watch is not None:
            self.watch.stop()
            assert self.watch.rounds > 0
            assert not self.watch.regressions, f"seen times moved backwards in Kask: {self.watch.regressions[:10]}"
        return document
