"""Shared pieces of the benchmarks: the local stack, daemons as subprocesses, sampling and metrics.

Every benchmark script imports this module (``bench/`` is on ``sys.path``
when a script runs as ``python bench/<script>.py``). A script starts the
services it needs in a fresh work directory under /tmp, or uses running ones
given with --redis, --kafka and --kask, and removes what it created when it
ends: the work directory, its topics and its Redis data.

Figures come with the machine (``nproc``, memory, CPU model) and the 1-minute
load average sampled during the run, because absolute rates on a shared
2-core machine vary from one minute to the next.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from devstack.process import free_port
from echoseen import config as config_module
from echoseen.kafka import admin_client, create_topics

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
ECHOSEEN = str(Path(sys.executable).with_name("echoseen"))
PYTHON = sys.executable

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# Command line and output
# ---------------------------------------------------------------------------

def add_stack_arguments(parser: argparse.ArgumentParser, kask: bool = False) -> None:
    """Add the options that select running services instead of starting new ones."""
    parser.add_argument("--redis", metavar="URL",
                        help="use this running Redis (redis://host:port/db) instead of starting one; the "
                             "benchmark empties that database (FLUSHDB) before and after")
    parser.add_argument("--kafka", metavar="HOST:PORT",
                        help="use this running Kafka instead of starting one; topics are created and deleted")
    if kask:
        parser.add_argument("--kask", metavar="URL",
                            help="use this running Kask base URL (http://host:port/echoseen/v1/) instead of "
                                 "starting Cassandra and Kask")
    parser.add_argument("--json-out", metavar="FILE", help="also write the result document to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the topics")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG level")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # librdkafka's and the stack's own chatter is not what a benchmark run is about.
    for name in ("echoseen.kafka.client", "cassandra"):
        logging.getLogger(name).setLevel(logging.WARNING)


def emit(result: dict[str, Any], json_out: str | None) -> None:
    """Print the result document as JSON on stdout, and write it to ``json_out`` when given."""
    text = json.dumps(result, indent=2, sort_keys=False, default=str)
    print(text)
    sys.stdout.flush()
    if json_out:
        Path(json_out).write_text(text + "\n")


def utc_now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return round(value / baseline, 3)


# ---------------------------------------------------------------------------
# The machine and its load
# ---------------------------------------------------------------------------

def machine_facts() -> dict[str, Any]:
    """Describe the machine: cores, memory, CPU model, and `free -g` as printed."""
    cpu_model = "unknown"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total_kib = 0
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_total_kib = int(line.split()[1])
                break
    free_text = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_gib": round(mem_total_kib / 1024 / 1024, 1),
        "free_g": free_text,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def busy_reasons(max_load: float = 1.5) -> list[str]:
    """Say why the machine is too busy for a large measurement; empty when it is quiet."""
    reasons = []
    one_minute = os.getloadavg()[0]
    if one_minute >= max_load:
        reasons.append(f"1-minute load average {one_minute:.2f} is at or above {max_load}")
    runs = subprocess.run(["pgrep", "-f", "-c", "python.* -m pytest|bin/pytest"], capture_output=True, text=True,
                          check=False).stdout.strip()
    if runs and int(runs) > 0:
        reasons.append(f"{runs} pytest process(es) are running")
    return reasons


class LoadSampler:
    """Sample the 1-minute load average in a background thread."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval_s):
                return

    def summary(self) -> dict[str, float]:
        samples = self.samples or [os.getloadavg()[0]]
        return {"min": round(min(samples), 2), "mean": round(sum(samples) / len(samples), 2),
                "max": round(max(samples), 2)}


# ---------------------------------------------------------------------------
# Resident memory and CPU time of processes
# ---------------------------------------------------------------------------

def read_rss_bytes(pid: int) -> int | None:
    """Return the resident set size of a process (VmRSS), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def read_cpu_s(pid: int) -> float | None:
    """Return the user plus system CPU seconds a process used so far, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces, so the fields are counted from its closing parenthesis.
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS_PER_S


@dataclass
class ProcessSeries:
    """Samples of one process: (seconds since the sampler started, RSS bytes, CPU seconds)."""

    name: str
    pid: int
    samples: list[tuple[float, int, float]] = field(default_factory=list)

    def cpu_seconds_between(self, start_s: float, end_s: float) -> float | None:
        inside = [sample for sample in self.samples if start_s <= sample[0] <= end_s]
        if len(inside) < 2:
            return None
        return inside[-1][2] - inside[0][2]

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"pid": self.pid, "samples": 0}
        times = [sample[0] for sample in self.samples]
        rss_mib = [sample[1] / MIB for sample in self.samples]
        half = len(self.samples) // 2
        first_half, second_half = rss_mib[:max(1, half)], rss_mib[half:]
        span_s = times[-1] - times[0]
        cpu_s = self.samples[-1][2] - self.samples[0][2]
        return {
            "pid": self.pid,
            "samples": len(self.samples),
            "duration_s": round(span_s, 1),
            "rss_max_mib": round(max(rss_mib), 1),
            "rss_mean_mib": round(sum(rss_mib) / len(rss_mib), 1),
            "rss_last_mib": round(rss_mib[-1], 1),
            "rss_first_half_max_mib": round(max(first_half), 1),
            "rss_second_half_max_mib": round(max(second_half), 1),
            # Least-squares slope over the second half: a leak shows as a steady positive slope.
            "rss_second_half_slope_mib_per_min": round(_slope(times[half:], rss_mib[half:]) * 60, 3),
            "cpu_s": round(cpu_s, 1),
            "cpu_percent_of_one_core": round(100 * cpu_s / span_s, 1) if span_s > 0 else None,
        }


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    if denominator == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / denominator


def memory_verdict(summary: dict[str, Any], limit_mib: float = 256.0, growth_tolerance_mib: float = 4.0) -> dict:
    """Judge a memory summary: under ``limit_mib``, and no growth over the second half of the run.

    "No growth" means the second half's peak is at most ``growth_tolerance_mib``
    above the first half's peak; allocator noise moves RSS by a few MiB.
    """
    if not summary.get("samples"):
        return {"under_limit": None, "no_growth": None}
    growth = summary["rss_second_half_max_mib"] - summary["rss_first_half_max_mib"]
    return {"under_limit": summary["rss_max_mib"] < limit_mib,
            "no_growth": growth <= growth_tolerance_mib,
            "second_half_peak_growth_mib": round(growth, 1)}


class ProcessSampler:
    """Sample RSS and CPU time of named processes once per ``interval_s`` in a background thread."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.series: dict[str, ProcessSeries] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)

    def __enter__(self) -> "ProcessSampler":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def now_s(self) -> float:
        return time.monotonic() - self._started

    def watch(self, name: str, pid: int | None) -> None:
        """Start sampling a process under ``name``; a later call with the same name replaces it."""
        if pid is None:
            return
        with self._lock:
            self.series[name] = ProcessSeries(name, pid)
        self._sample_one(self.series[name])

    def forget(self, name: str) -> ProcessSeries | None:
        with self._lock:
            return self.series.pop(name, None)

    def _sample_one(self, series: ProcessSeries) -> None:
        rss, cpu = read_rss_bytes(series.pid), read_cpu_s(series.pid)
        if rss is not None and cpu is not None:
            series.samples.append((self.now_s(), rss, cpu))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                current = list(self.series.values())
            for series in current:
                self._sample_one(series)

    def summaries(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: series.summary() for name, series in self.series.items()}


def cpu_snapshot(pids: dict[str, int | None]) -> dict[str, float]:
    """Return the CPU seconds used so far by each named process that is still running."""
    snapshot = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        value = read_cpu_s(pid)
        if value is not None:
            snapshot[name] = value
    return snapshot


def cpu_delta(before: dict[str, float], after: dict[str, float], elapsed_s: float) -> dict[str, dict[str, float]]:
    """CPU seconds and share of one core per process between two snapshots."""
    result = {}
    for name, value in after.items():
        if name in before:
            used = value - before[name]
            result[name] = {"cpu_s": round(used, 2),
                            "percent_of_one_core": round(100 * used / elapsed_s, 1) if elapsed_s > 0 else None}
    return result


def redis_cpu_s(client: redis.Redis) -> float:
    """Return Redis's used_cpu_sys plus used_cpu_user (INFO CPU), in seconds."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


# ---------------------------------------------------------------------------
# Prometheus metrics of the daemons
# ---------------------------------------------------------------------------

Samples = list[tuple[str, dict[str, str], float]]


def parse_metrics(text: str) -> Samples:
    """Flatten a Prometheus text exposition into (sample name, labels, value) triples."""
    samples: Samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append((sample.name, dict(sample.labels), float(sample.value)))
    return samples


def metric_sum(samples: Samples, name: str, **labels: str) -> float:
    """Sum the samples called ``name`` whose labels include ``labels``."""
    return sum(value for sample_name, sample_labels, value in samples
               if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()))


def histogram_buckets(samples: Samples, name: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram (summed over label sets that include ``labels``)."""
    buckets: dict[float, float] = {}
    for sample_name, sample_labels, value in samples:
        if sample_name != name + "_bucket":
            continue
        if not all(sample_labels.get(k) == v for k, v in labels.items()):
            continue
        bound = float(sample_labels["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def bucket_delta(before: dict[float, float], after: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(buckets: dict[float, float], quantile: float) -> float | None:
    """Estimate a quantile from cumulative buckets by linear interpolation inside the bucket, as Prometheus does.

    Returns None without observations, and the highest finite bound when the
    quantile falls into the +Inf bucket (the true value is above it).
    """
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    target = quantile * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= target:
            if math.isinf(bound):
                return previous_bound
            in_bucket = count - previous_count
            if in_bucket <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (target - previous_count) / in_bucket
        previous_bound, previous_count = bound, count
    return previous_bound


def histogram_summary(buckets: dict[float, float]) -> dict[str, Any]:
    """Count and p50/p90/p99 (seconds, interpolated inside buckets) of a bucket delta."""
    total = buckets[max(buckets)] if buckets else 0.0
    result: dict[str, Any] = {"count": int(total)}
    for name, quantile in (("p50_s", 0.5), ("p90_s", 0.9), ("p99_s", 0.99)):
        value = histogram_quantile(buckets, quantile)
        result[name] = None if value is None else round(value, 4)
    return result


def quantiles(values: Iterable[float]) -> dict[str, Any]:
    """Exact p50/p90/p99/max (and count) of a list of seconds."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def pick(quantile: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(quantile * len(ordered)) - 1))
        return round(ordered[index], 4)

    return {"count": len(ordered), "min_s": round(ordered[0], 4), "p50_s": pick(0.5), "p90_s": pick(0.9),
            "p99_s": pick(0.99), "max_s": round(ordered[-1], 4),
            "mean_s": round(sum(ordered) / len(ordered), 4)}


# ---------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------

class Stack:
    """The services one benchmark needs: started here in a work directory, or running ones given by URL.

    Use it as a context manager; leaving it stops what it started and removes
    the work directory (unless ``keep``).
    """

    def __init__(self, name: str, *, redis_url: str | None = None, kafka: str | None = None,
                 kask_url: str | None = None, need_redis: bool = True, need_kafka: bool = True,
                 need_kask: bool = False, notify_keyspace_events: str = "Kg$xe",
                 redis_config: dict[str, str] | None = None, keep: bool = False) -> None:
        self.name = name
        self.keep = keep
        self.workdir = Path(tempfile.mkdtemp(prefix=f"echoseen-bench-{name}-", dir="/tmp"))
        self._redis_url = redis_url
        self._kafka = kafka
        self._kask_url = kask_url
        self._need = {"redis": need_redis, "kafka": need_kafka, "kask": need_kask}
        self._notify = notify_keyspace_events
        self._redis_config = redis_config or {}
        self.redis_server = None
        self.kafka_server = None
        self.cassandra_server = None
        self.kask_server = None
        self.startup_s: dict[str, float] = {}
        self._created_topics: list[str] = []
        self._bootstrap_for_topics: str | None = None

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._need["redis"]:
            if self._redis_url is None:
                from devstack.redis_server import start_redis  # noqa: PLC0415 - only when starting one

                started = time.monotonic()
                self.redis_server = start_redis(self.workdir / "redis", notify_keyspace_events=self._notify,
                                                extra_config=self._redis_config)
                self.startup_s["redis"] = round(time.monotonic() - started, 2)
            else:
                client = self.redis_client()
                client.flushdb()
                if self._notify:
                    client.config_set("notify-keyspace-events", self._notify)
        if self._need["kafka"] and self._kafka is None:
            from devstack.kafka import start_kafka  # noqa: PLC0415

            started = time.monotonic()
            self.kafka_server = start_kafka(self.workdir / "kafka")
            self.startup_s["kafka"] = round(time.monotonic() - started, 2)
        if self._need["kask"] and self._kask_url is None:
            from devstack.cassandra import start_cassandra  # noqa: PLC0415
            from devstack.kask import start_kask  # noqa: PLC0415

            started = time.monotonic()
            self.cassandra_server = start_cassandra(self.workdir / "cassandra")
            self.startup_s["cassandra"] = round(time.monotonic() - started, 2)
            started = time.monotonic()
            self.kask_server = start_kask(self.workdir / "kask", self.cassandra_server)
            self.startup_s["kask"] = round(time.monotonic() - started, 2)
        if self.startup_s:
            log.info("stack %s started in %s: %s", self.name, self.workdir, self.startup_s)

    def stop(self) -> None:
        if not self.keep:
            self.delete_topics()
        if self._redis_url is not None and self._need["redis"] and not self.keep:
            try:
                self.redis_client().flushdb()
            except redis.RedisError as exc:
                log.warning("could not empty the benchmark database of %s: %s", self._redis_url, exc)
        for server in (self.kask_server, self.cassandra_server, self.kafka_server, self.redis_server):
            if server is not None:
                try:
                    server.stop()
                except Exception:  # noqa: BLE001 - keep stopping the others
                    log.exception("stopping %s failed", server)
        self.kask_server = self.cassandra_server = self.kafka_server = self.redis_server = None
        if self.keep:
            log.info("kept the work directory %s", self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- addresses ----------------------------------------------------------

    @property
    def redis_url(self) -> str:
        if self.redis_server is not None:
            return f"redis://127.0.0.1:{self.redis_server.port}/0"
        assert self._redis_url is not None
        return self._redis_url

    @property
    def redis_db(self) -> int:
        path = self.redis_url.rsplit("/", 1)[-1]
        return int(path) if path.isdigit() else 0

    def redis_client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, protocol=2, **kwargs)

    @property
    def bootstrap(self) -> str:
        if self.kafka_server is not None:
            return self.kafka_server.bootstrap
        assert self._kafka is not None
        return self._kafka

    @property
    def kask_url(self) -> str:
        if self.kask_server is not None:
            return self.kask_server.url
        assert self._kask_url is not None
        return self._kask_url

    def pids(self) -> dict[str, int | None]:
        """Process ids of the services started here, for CPU and memory sampling."""
        pids: dict[str, int | None] = {}
        for name, server in (("redis", self.redis_server), ("kafka", self.kafka_server),
                             ("cassandra", self.cassandra_server), ("kask", self.kask_server)):
            process = getattr(server, "process", None) if server is not None else None
            if process is not None:
                pids[name] = process.pid
        return pids

    # -- configuration and topics --------------------------------------------

    def config(self, partitions: int = 12, **sections: dict[str, Any]) -> config_module.Config:
        """Build a Config for this stack with fresh topic and group names; ``sections`` override settings."""
        suffix = uuid.uuid4().hex[:8]
        base = config_module.load(None, environ={})
        config = replace(
            base,
            redis=replace(base.redis, servers=(self.redis_url,)) if self._need["redis"] else base.redis,
            kafka=replace(base.kafka, bootstrap_servers=self.bootstrap, topic=f"bench.{self.name}.events.{suffix}",
                          dead_letter_topic=f"bench.{self.name}.dlq.{suffix}",
                          state_topic=f"bench.{self.name}.state.{suffix}", partitions=partitions),
            kask=replace(base.kask, url=self.kask_url) if self._need["kask"] else base.kask,
            capture=replace(base.capture, metrics_port=free_port()),
            replicator=replace(base.replicator, group_id=f"bench-{self.name}-{suffix}", metrics_port=free_port()),
            backfill=replace(base.backfill, checkpoint_file=str(self.workdir / f"backfill-{suffix}.json"),
                             progress_log_interval_s=30.0),
        )
        for section_name, overrides in sections.items():
            config = replace(config, **{section_name: replace(getattr(config, section_name), **overrides)})
        config_module.validate(config)
        return config

    def create_topics(self, config: config_module.Config) -> None:
        for line in create_topics(config, admin_client(config)):
            log.info("topics: %s", line)
        self._bootstrap_for_topics = config.kafka.bootstrap_servers
        self._created_topics += [config.kafka.topic, config.kafka.dead_letter_topic, config.kafka.state_topic]

    def delete_topics(self) -> None:
        """Delete the topics this run created, when Kafka is still running."""
        if not self._created_topics or self._bootstrap_for_topics is None:
            return
        if self.kafka_server is not None and not self.kafka_server.is_running():
            return
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        admin = AdminClient({"bootstrap.servers": self._bootstrap_for_topics})
        futures = admin.delete_topics(self._created_topics, operation_timeout=30)
        for topic, future in futures.items():
            try:
                future.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - a topic that is already gone is fine
                log.warning("deleting topic %s failed: %s", topic, exc)
        self._created_topics = []

    def topic_disk_usage(self, topic: str) -> dict[str, int] | None:
        """Bytes of the topic's log segments, and the disk blocks its partition folders take; None for an external Kafka.

        The two differ because Kafka preallocates its index files as sparse
        10 MiB files: their size counts, their blocks mostly do not.
        """
        if self.kafka_server is None:
            return None
        data_dir = self.kafka_server.workdir / "data"
        segment_bytes = allocated_bytes = 0
        for folder in data_dir.glob(f"{topic}-*"):
            if folder.name.rsplit("-", 1)[0] != topic:
                continue
            for entry in folder.iterdir():
                if not entry.is_file():
                    continue
                status = entry.stat()
                allocated_bytes += status.st_blocks * 512
                if entry.suffix == ".log":
                    segment_bytes += status.st_size
        return {"segment_bytes": segment_bytes, "allocated_bytes": allocated_bytes}


def disk_free_gib(path: str = "/tmp") -> float:
    usage = shutil.disk_usage(path)
    return round(usage.free / 1024 ** 3, 1)


# ---------------------------------------------------------------------------
# Daemons and helper processes
# ---------------------------------------------------------------------------

class Daemon:
    """An ``echoseen`` subcommand as a subprocess with its own TOML config and log file."""

    def __init__(self, workdir: Path, command: str, config: config_module.Config,
                 extra_args: list[str] | None = None, name: str | None = None) -> None:
        self.command = command
        self.name = name or command
        self.config = config
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{self.name}.toml"
        self.config_path.write_text(config_module.to_toml(config))
        self.log_path = workdir / f"{self.name}.log"
        self.stdout_path = workdir / f"{self.name}.out"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None
        section = {"capture": config.capture, "replicate": config.replicator}.get(command)
        self.metrics_port = section.metrics_port if section is not None else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> "Daemon":
        environment = {key: value for key, value in os.environ.items() if not key.startswith("ECHOSEEN_")}
        if "ECHOSEEN_CACHE_DIR" in os.environ:
            environment["ECHOSEEN_CACHE_DIR"] = os.environ["ECHOSEEN_CACHE_DIR"]
        with open(self.log_path, "ab") as log_file, open(self.stdout_path, "wb") as out_file:
            self.process = subprocess.Popen([ECHOSEEN, self.command, "-c", str(self.config_path), *self.extra_args],
                                            stdout=out_file, stderr=log_file, env=environment)
        log.info("started echoseen %s (pid %d), log %s", self.command, self.process.pid, self.log_path)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def wait_ready(self, timeout_s: float = 90.0) -> float:
        """Wait until /readyz returns 200; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"echoseen {self.command} exited with status {self.process.returncode}; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"echoseen {self.command} was not ready after {timeout_s:.0f} s; log {self.log_path}:\n"
                           f"{self.log_tail()}")

    def samples(self) -> Samples:
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as response:
            return parse_metrics(response.read().decode())

    def wait_exit(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait, and return the exit status; SIGKILL when it does not stop in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("echoseen %s (pid %d) did not stop in %.0f s; killing it", self.command,
                            self.process.pid, timeout_s)
                self.process.kill()
        return self.process.wait(timeout=30)


class Helper:
    """A helper script of bench/ (writer, subscriber) as a subprocess that prints one JSON document at exit."""

    def __init__(self, script: str, args: list[str], workdir: Path, name: str) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in result()
        self.process = subprocess.Popen([PYTHON, str(BENCH_DIR / script), *args], stdout=subprocess.PIPE,
                                        stderr=self._log_file)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def result(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Wait for the helper to exit and return the JSON document it printed."""
        try:
            output, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate(timeout=30)
        finally:
            self._log_file.close()
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}; log {self.log_path}:\n"
                               f"{self.log_path.read_text(errors='replace')[-3000:]}")
        return json.loads(output)


def start_writer(stack: Stack, workdir: Path, *, rate_per_s: float, duration_s: float, echo_keys: int,
                 unrelated_share: float = 0.0, wiki: str = "benchwiki", name: str = "writer",
                 seed: int = 1) -> Helper:
    """Start bench/writer.py: SETEX to random Echo keys (and unrelated keys) at a steady rate; 0 means no limit."""
    url = stack.redis_url
    args = ["--url", url, "--rate", str(rate_per_s), "--duration", str(duration_s), "--echo-keys", str(echo_keys),
            "--unrelated-share", str(unrelated_share), "--wiki", wiki, "--seed", str(seed)]
    return Helper("writer.py", args, workdir, name)


def wait_for(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``condition`` until it is true or ``timeout_s`` passed; return whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
