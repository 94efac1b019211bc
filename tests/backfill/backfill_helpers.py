"""Helpers of the backfill suites: runs in-process and as subprocesses, generated keyspaces, topic and Kask contents."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import aiohttp
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from capture import backfill
from devstack.keyspace import KeyspaceSpec, expected_entries
from echoseen import config as config_module
from echoseen import echo_value, events

ECHOSEEN = str(Path(sys.executable).with_name("echoseen"))

# A fixed reference time makes the generated seen times, and so the age buckets, the same in every run.
AS_OF = datetime(2026, 11, 20, 12, 0, 0, tzinfo=timezone.utc)

# Values a watched key may hold that are not seen times, one per reason the job reports.
BAD_STRING_VALUES = {
    "not_php_serialized": b"20190523123456",
    "empty": b"",
    "wrong_length_prefix": b's:15:"20190523123456";',
    "not_a_timestamp": b's:14:"20191323123456";',
    "not_utf8": b's:2:"\xff\xfe";',
    "too_large": b"x" * 5000,
}


def with_backfill(config: config_module.Config, **settings) -> config_module.Config:
    return replace(config, backfill=replace(config.backfill, **settings))


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    backfill.add_arguments(parser)
    return parser.parse_args(list(argv))


def run_backfill(config: config_module.Config, *argv: str) -> tuple[int, dict]:
    """Run `echoseen backfill` in this process; return its exit status and summary (or report)."""
    return backfill.execute(parse_args(*argv), config)


def write_config(config: config_module.Config, path: Path) -> Path:
    path.write_text(config_module.to_toml(config))
    return path


def start_backfill_process(config_path: Path, log_path: Path, *argv: str) -> subprocess.Popen:
    """Start `echoseen backfill` as a subprocess; its log (stderr) goes to log_path, stdout is piped."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("ECHOSEEN_")}
    log_file = open(log_path, "ab")
    try:
        return subprocess.Popen([ECHOSEEN, "backfill", "--config", str(config_path), *argv],
                                stdout=subprocess.PIPE, stderr=log_file, env=environment)
    finally:
        log_file.close()


def spec(keys: int, wikis: tuple[str, ...], **options) -> KeyspaceSpec:
    return KeyspaceSpec(keys=keys, wikis=wikis, as_of=AS_OF, seed=options.pop("seed", 7), **options)


def expected_by_key(keyspace: KeyspaceSpec) -> dict[bytes, bytes]:
    return {entry.key.encode(): entry.value for entry in expected_entries(keyspace)}


def seen_time(value: bytes) -> str | None:
    return echo_value.decode(value).seen_time


def publishable(values: dict[bytes, bytes], cutoff_ts_mw: str = "") -> set[bytes]:
    """Keys whose value is a seen time other than the placeholder, at or after the cutoff."""
    keys = set()
    for key, value in values.items():
        seen = seen_time(value)
        if seen is not None and seen != echo_value.PLACEHOLDER and seen >= cutoff_ts_mw:
            keys.add(key)
    return keys


def read_events(config: config_module.Config, timeout_s: float = 60.0) -> list[events.SeenTimeEvent]:
    """Read and validate every record of the event topic, from the beginning to its current end."""
    consumer = Consumer({"bootstrap.servers": config.kafka.bootstrap_servers,
                         "group.id": f"backfill-test-reader-{time.monotonic_ns()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    topic = config.kafka.topic
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = [TopicPartition(topic, index, OFFSET_BEGINNING) for index in metadata.topics[topic].partitions]
        remaining = set()
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(partition, timeout=10)
            if high > low:
                remaining.add(partition.partition)
        decoded: list[events.SeenTimeEvent] = []
        if not remaining:
            return decoded
        consumer.assign(partitions)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(message.partition())
                    continue
                decoded.append(events.decode(message.key(), message.value()))
        assert not remaining, f"reading {topic} timed out; partitions left: {remaining}"
        return decoded
    finally:
        consumer.close()


def key_counts(decoded: list[events.SeenTimeEvent]) -> collections.Counter:
    return collections.Counter(event.key for event in decoded)


async def _fetch_bodies(base_url: str, keys: list[bytes], concurrency: int) -> dict[bytes, bytes | None]:
    results: dict[bytes, bytes | None] = {}
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def fetch(key: bytes) -> None:
            url = base_url + quote(key.decode("utf-8"), safe="")
            async with semaphore:
                async with session.get(url) as response:
                    if response.status == 404:
                        results[key] = None
                        return
                    assert response.status == 200, f"GET {url} returned {response.status}"
                    results[key] = await response.read()

        await asyncio.gather(*(fetch(key) for key in keys))
    return results


def kask_bodies(kask_url: str, keys: list[bytes], concurrency: int = 32) -> dict[bytes, bytes | None]:
    """GET each key from Kask (None for 404)."""
    return asyncio.run(_fetch_bodies(kask_url, keys, concurrency))
