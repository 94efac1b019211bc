"""Run the whole migration once on a local stack and print what happened.

    python -m devstack.demo [--keys 200000] [--write-rate 200] [--steady-s 30] [--dir .stack/demo]

Steps, each timed:

1. start Redis (with keyspace notifications), Kafka, Cassandra and Kask in
   the work folder, which is emptied first so the demo can run again;
2. create the topics (`echoseen topics --create`);
3. load a generated Echo keyspace with unrelated keys mixed in
   (devstack.keyspace);
4. start `echoseen capture` and `echoseen replicate` with a generated
   configuration file, and wait until both report ready;
5. run `echoseen backfill` while a load generator writes seen times "now"
   at a steady rate, as users opening their notifications do, and a probe
   measures the end-to-end delay (devstack.demo_probe);
6. wait until the replicator caught up with the backfill, then write and
   probe again for a steady-state window, and wait until the replicator's
   lag is zero (operations.lag);
7. check that Kask holds the last seen time of every key written live, and
   run `echoseen verify`.

Then every process it started is stopped, also on Ctrl+C, SIGTERM or a
failure, and a report is printed and written to DIR/report.json. With
--external it uses running services instead of starting a stack (see
--help). Exit status: 0 when verify passed and every live write reached
Kask, 1 when not, 2 for invalid options, 3 when the stack could not start,
130 after Ctrl+C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from capture.sources import connect, discover_primaries
from devstack import demo_stack
from devstack.demo_probe import CountingClient, DelayProbe, histogram_percentiles, percentile
from devstack.demo_report import render_report
from devstack.keyspace import KeyspaceSpec, LiveWriter, LiveWriteResult, load, sample_echo_keys
from devstack.process import ManagedProcess, StackError
from echoseen import config as config_module
from echoseen.config import Config
from echoseen.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, EchoseenError
from operations.lag import measure_lag

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(".stack/demo")
# Keys drawn from the keyspace for live writes; the first PROBE_KEYS of them are the probe's alone.
LIVE_KEY_SAMPLE = 5000
PROBE_KEYS = 200
DAEMON_READY_TIMEOUT_S = 120.0
TOOL_TIMEOUT_S = 3600.0
# The replicator counts as caught up when its oldest uncommitted record is at most CAUGHT_UP_LAG_S old and
# its lag is at most CAUGHT_UP_RECORDS records. The age alone is not enough: the records the backfill
# produced within a few seconds are all young while the backlog is long. The probe keeps writing, and
# offsets are committed every [replicator] commit_interval_s (1 s by default), so the lag is rarely 0.
CAUGHT_UP_LAG_S = 5.0
CAUGHT_UP_RECORDS = 100
# Duration given to the LiveWriter that runs until the backfill ends and is then stopped.
FOREVER_S = 10.0 ** 7
LAG_POLL_INTERVAL_S = 2.0
KASK_CONFIRM_TIMEOUT_S = 120.0
PROBE_FINISH_WAIT_S = 60.0
# Environment variables that select files or binaries, not settings; the demo keeps them.
KEPT_VARIABLES = frozenset({"ECHOSEEN_CACHE_DIR", "ECHOSEEN_KASK_BINARY", "ECHOSEEN_SCHEMA_DIR"})


@dataclass(frozen=True)
class Options:
    keys: int
    write_rate_per_s: float
    steady_s: float
    workdir: Path
    seed: int
    probe_interval_s: float
    catch_up_timeout_s: float
    # External mode: use the services of an existing configuration instead of starting a stack.
    external: bool = False
    config_path: Path | None = None
    capture_url: str = ""
    replicator_url: str = ""


@dataclass
class Phases:
    """Durations of the demo's steps, printed as they start."""

    started: float = field(default_factory=time.monotonic)
    durations: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        STOP.check()
        print(f"[{time.monotonic() - self.started:7.1f} s] {name} ...", flush=True)
        began = time.monotonic()
        try:
            yield
        finally:
            self.durations.append((name, time.monotonic() - began))

    def total_s(self) -> float:
        return time.monotonic() - self.started


class Interrupted(KeyboardInterrupt):
    """Ctrl+C (SIGINT) or SIGTERM: the demo stops every process it started and reports."""


class StopRequest:
    """Remembers a SIGINT or SIGTERM and raises Interrupted at once and again at the next check.

    The handler's exception can surface as another error, or be swallowed,
    when the signal arrives while a C extension (the Kafka client) calls back
    into Python. So the signal is also remembered: main() classifies any
    failure after it as an interruption, and check() stops at the next step.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def handle(self, signum: int, frame: object) -> None:
        self.signal_name = signal.Signals(signum).name
        raise Interrupted(self.signal_name)

    def check(self) -> None:
        if self.signal_name is not None:
            raise Interrupted(self.signal_name)


STOP = StopRequest()


# ---------------------------------------------------------------------------
# echoseen commands as subprocesses
# ---------------------------------------------------------------------------

def echoseen_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "echoseen.cli", *args]


def start_daemon(command: str, config_args: Sequence[str], log_dir: Path) -> ManagedProcess:
    name = {"replicate": "replicator"}.get(command, command)
    return ManagedProcess(name=f"echoseen-{name}", argv=echoseen_argv(command, *config_args),
                          log_path=log_dir / f"{name}.log").start()


def http_status(url: str, timeout_s: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def http_text(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read().decode("utf-8", errors="replace")


def run_tool(name: str, args: Sequence[str], log_dir: Path, started: list[dict[str, Any]],
             timeout_s: float = TOOL_TIMEOUT_S) -> tuple[int, str]:
    """Run an echoseen command to the end; return its exit status and standard output.

    Standard output goes to logs/<name>.out and standard error (the log) to
    logs/<name>.log. The command runs in its own process group, which is
    stopped when the demo is interrupted or the command overruns.
    """
    stdout_path = log_dir / f"{name}.out"
    log_path = log_dir / f"{name}.log"
    with open(stdout_path, "wb") as stdout_file, open(log_path, "ab") as log_file:
        child = subprocess.Popen(echoseen_argv(*args), stdin=subprocess.DEVNULL,
                                 stdout=stdout_file, stderr=log_file, start_new_session=True)
    started.append({"name": f"echoseen {name}", "pid": child.pid,
                    "start_ticks": demo_stack.process_start_ticks(child.pid)})
    try:
        status = child.wait(timeout=timeout_s)
    except BaseException:
        _stop_group(child)
        raise
    return status, stdout_path.read_text(errors="replace")


def _stop_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------
# Waiting and measuring
# ---------------------------------------------------------------------------

def wait_for_lag(config: Config, done: Callable[[Any], bool], timeout_s: float, what: str,
                 daemons: Sequence[ManagedProcess]) -> Any:
    """Measure the replicator group's lag until ``done(lag)``; raise StackError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_report = time.monotonic()
    lag = None
    while time.monotonic() < deadline:
        for daemon in daemons:
            if not daemon.is_running():
                raise StackError(f"{daemon.name} exited with status {daemon.popen.returncode} while waiting for "
                                 f"{what}; last lines of {daemon.log_path}:\n{daemon.log_tail()}")
        STOP.check()
        lag = measure_lag(config, timeout_s=10.0)
        if done(lag):
            return lag
        if time.monotonic() - last_report >= 30:
            last_report = time.monotonic()
            age = "unknown" if lag.max_seconds is None else f"{lag.max_seconds:.0f} s"
            print(f"           replicator lag: {lag.total_records} records, oldest {age}", flush=True)
        time.sleep(LAG_POLL_INTERVAL_S)
    total = "unknown" if lag is None else lag.total_records
    raise StackError(f"the replicator did not reach {what} within {timeout_s:.0f} s (lag {total} records); "
                     f"see {daemons[-1].log_path}")


def confirm_in_kask(config: Config, expected: dict[str, bytes], timeout_s: float) -> set[str]:
    """Return the keys whose seen time in Kask is at least the seen time last written to Redis.

    Keys not confirmed at first are read again until ``timeout_s`` passes.
    """
    import asyncio

    from echoseen import echo_value
    from replicator.apply import codec_from_config
    from replicator.kask_client import KaskClient

    expected_seen_times = {key: echo_value.decode(value).seen_time for key, value in expected.items()}
    codec = codec_from_config(config)

    async def read_all(keys: list[str]) -> set[str]:
        async with KaskClient(config.kask, max_in_flight=32) as kask:
            stored = await asyncio.gather(*(kask.read(key.encode(), codec) for key in keys))
        return {key for key, read_back in zip(keys, stored)
                if read_back is not None and read_back.seen_time is not None and read_back.seen_time >= expected_seen_times[key]}

    confirmed: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        missing = sorted(set(expected) - confirmed)
        if not missing:
            return confirmed
        confirmed |= asyncio.run(read_all(missing))
        if len(confirmed) == len(expected) or time.monotonic() >= deadline:
            return confirmed
        time.sleep(2.0)


def scrape_replicator(metrics_url: str) -> dict[str, Any]:
    """Read the replicator's record outcomes and its end-to-end delay histogram from /metrics."""
    outcomes: dict[str, int] = {}
    buckets: list[tuple[float, float]] = []
    count = 0.0
    for family in text_string_to_metric_families(http_text(metrics_url)):
        if family.name == "echoseen_replicator_records":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcomes[sample.labels["outcome"]] = int(sample.value)
        elif family.name == "echoseen_replicator_end_to_end_delay_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    buckets.append((float(sample.labels["le"]), sample.value))
                elif sample.name.endswith("_count"):
                    count = sample.value
    buckets.sort()
    bounds = histogram_percentiles(buckets, (0.5, 0.95, 0.99))
    return {
        "outcomes": outcomes,
        "end_to_end_observations": int(count),
        "end_to_end_le_s": {f"p{round(fraction * 100)}": bound for fraction, bound in bounds.items()},
    }


def scrape_capture(metrics_url: str) -> dict[str, int]:
    published: dict[str, int] = {}
    for family in text_string_to_metric_families(http_text(metrics_url)):
        if family.name == "echoseen_capture_events_published":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    published[sample.labels["origin"]] = int(sample.value)
    return published


def delay_summary(probe: DelayProbe, phase: str) -> dict[str, Any]:
    delays = probe.delays(phase)
    summary: dict[str, Any] = {"probes": len(delays), "unfinished": probe.unfinished(phase)}
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0)):
        value = percentile(delays, fraction)
        summary[name + "_s"] = None if value is None else round(value, 4)
    return summary


# ---------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------

@dataclass
class Target:
    """The services and daemons the demo works with, and how its echoseen commands find the configuration."""

    config: Config
    # ["-c", FILE], or [] when the commands read ECHOSEEN_CONFIG and ECHOSEEN_* variables themselves.
    config_args: list[str]
    capture_url: str = ""
    replicator_url: str = ""


@dataclass
class Writer:
    """One LiveWriter running in a thread of its own."""

    writer: LiveWriter
    thread: threading.Thread
    result: dict[str, LiveWriteResult] = field(default_factory=dict)

    @classmethod
    def start(cls, client: CountingClient, keys: Sequence[str], rate_per_s: float, duration_s: float,
              seed: int) -> "Writer":
        writer = LiveWriter(client, keys, rate_per_s, duration_s, seed=seed)
        result: dict[str, LiveWriteResult] = {}
        thread = threading.Thread(target=lambda: result.setdefault("result", writer.run()), name="live-writer",
                                  daemon=True)
        thread.start()
        return cls(writer, thread, result)

    def stop(self, timeout_s: float = 30.0) -> LiveWriteResult:
        self.writer.stop()
        self.thread.join(timeout=timeout_s)
        if "result" not in self.result:
            raise StackError(f"the live writer did not stop within {timeout_s:.0f} s; see the demo's log")
        return self.result["result"]


@dataclass
class Run:
    """The processes the demo started, so it can stop all of them, and its measurements."""

    options: Options
    phases: Phases = field(default_factory=Phases)
    stack: demo_stack.Stack | None = None
    daemons: list[ManagedProcess] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)
    probe: DelayProbe | None = None
    report: dict[str, Any] = field(default_factory=dict)
    start_ticks: dict[int, int | None] = field(default_factory=dict)

    def started_processes(self) -> list[dict[str, Any]]:
        """List every process the demo started with its pid and start time (see demo_stack.is_same_process)."""
        processes = []
        if self.stack is not None:
            processes += [{"name": name, "pid": managed.pid, "start_ticks": self.start_ticks.get(managed.pid)}
                          for name, managed in self.stack.processes().items()]
        processes += [{"name": daemon.name, "pid": daemon.pid, "start_ticks": self.start_ticks.get(daemon.pid)}
                      for daemon in self.daemons]
        return processes + self.tools

    def record_start_ticks(self) -> None:
        """Note the start time of each running process, so a later check cannot mistake a reused pid for it."""
        managed = list(self.stack.processes().values()) if self.stack is not None else []
        for process in managed + self.daemons:
            if process.pid is not None and process.pid not in self.start_ticks:
                self.start_ticks[process.pid] = demo_stack.process_start_ticks(process.pid)

    def stop_all(self) -> None:
        """Stop the load, the daemons and the stack, each step even when an earlier one fails."""
        for writer in self.writers:
            try:
                writer.stop()
            except StackError as exc:
                log.warning("%s", exc)
        if self.probe is not None:
            try:
                self.probe.stop(wait_s=0)
            except RuntimeError as exc:
                log.warning("%s", exc)
        for daemon in reversed(self.daemons):
            try:
                daemon.stop(timeout_s=60)
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("failed to stop %s", daemon.name)
        if self.stack is not None:
            self.stack.stop()


def redis_client(config: Config) -> redis.Redis:
    """Connect to the one Redis server of the configuration, which the demo loads and writes to."""
    sources = discover_primaries(config)
    if config.redis.cluster or len(sources) != 1:
        raise StackError(f"the demo loads one Redis server, but the configuration names {len(sources)} "
                         f"({', '.join(source.name for source in sources)}); configure one in [redis] servers")
    return connect(config, sources[0], client_name="echoseen-demo", retries=3)


def prepare_target(run: Run) -> Target:
    """Start the local stack and write its configuration, or load the configuration of existing services."""
    options = run.options
    if options.external:
        config = config_module.load(options.config_path)
        config_args = ["-c", str(options.config_path)] if options.config_path else []
        return Target(config, config_args, options.capture_url, options.replicator_url)

    with run.phases.phase(f"start Redis, Kafka, Cassandra and Kask in {options.workdir}"):
        run.stack = demo_stack.start_stack(options.workdir)
        run.record_start_ticks()
        config = demo_stack.stack_config(run.stack)
        config_path = demo_stack.write_config(run.stack, config)
        print(f"           Kask: {run.stack.kask.implementation} {run.stack.kask.version} at {run.stack.kask.url}",
              flush=True)
    return Target(config, ["-c", str(config_path)])


def start_daemons(run: Run, target: Target, log_dir: Path) -> None:
    """Start the capture and the replicator unless their URLs were given, then wait until both are ready."""
    config = target.config
    address = config.metrics.listen_address
    if address in ("0.0.0.0", "::", ""):
        address = "127.0.0.1"
    if not target.capture_url:
        run.daemons.append(start_daemon("capture", target.config_args, log_dir))
        target.capture_url = f"http://{address}:{config.capture.metrics_port}"
    if not target.replicator_url:
        run.daemons.append(start_daemon("replicate", target.config_args, log_dir))
        target.replicator_url = f"http://{address}:{config.replicator.metrics_port}"
    run.record_start_ticks()

    deadline = time.monotonic() + DAEMON_READY_TIMEOUT_S
    for name, url in (("capture", target.capture_url), ("replicator", target.replicator_url)):
        managed = next((daemon for daemon in run.daemons if daemon.name == f"echoseen-{name}"), None)

        def ready(url: str = url) -> bool:
            try:
                return http_status(url + "/readyz") == 200
            except OSError:
                return False

        if managed is not None:
            managed.wait_until(ready, max(1.0, deadline - time.monotonic()), "/readyz 200")
            continue
        while not ready():
            if time.monotonic() >= deadline:
                raise StackError(f"the {name} at {url} did not return 200 on /readyz within "
                                 f"{DAEMON_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.5)


def run_demo(run: Run) -> int:
    options = run.options
    phases = run.phases
    log_dir = options.workdir / "logs"

    target = prepare_target(run)
    config = target.config

    with phases.phase("create the topics (echoseen topics --create)"):
        status, output = run_tool("topics", ["topics", "--create", *target.config_args], log_dir, run.tools)
        if status != EXIT_OK:
            raise StackError(f"echoseen topics --create failed with status {status}:\n{output}\n"
                             f"see {log_dir / 'topics.log'}")

    client = redis_client(config)
    with phases.phase(f"load {options.keys} Echo keys and unrelated keys into Redis"):
        spec = KeyspaceSpec(keys=options.keys, seed=options.seed, db=config_module.redis_db(config.redis.servers[0]))
        loaded = load(client, spec)
        live_keys = sample_echo_keys(spec, LIVE_KEY_SAMPLE)
        probe_keys, writer_keys = live_keys[:PROBE_KEYS], live_keys[PROBE_KEYS:]

    with phases.phase("start echoseen capture and echoseen replicate" if not options.external
                      else "wait for the capture and the replicator"):
        start_daemons(run, target, log_dir)

    counting = CountingClient(client)
    run.probe = DelayProbe(config, redis_client(config), probe_keys, interval_s=options.probe_interval_s)
    results: list[LiveWriteResult] = []

    with phases.phase(f"backfill while writing {options.write_rate_per_s:g} seen times per second"):
        run.writers.append(Writer.start(counting, writer_keys, options.write_rate_per_s, FOREVER_S, options.seed))
        run.probe.phase = "backfill"
        run.probe.start()
        # --restart: a checkpoint left by an earlier demo on the same services is discarded, not refused.
        status, output = run_tool("backfill", ["backfill", "--json", "--restart", *target.config_args], log_dir,
                                  run.tools)
        results.append(run.writers[-1].stop())
        try:
            backfill = json.loads(output)
        except ValueError:
            backfill = {}
        if status != EXIT_OK:
            raise StackError(f"echoseen backfill failed with status {status}; see {log_dir / 'backfill.log'}")

    with phases.phase(f"wait until the replicator caught up (lag at most {CAUGHT_UP_RECORDS} records and "
                      f"{CAUGHT_UP_LAG_S:g} s)"):
        wait_for_lag(config, caught_up, options.catch_up_timeout_s, "caught-up", run.daemons)

    with phases.phase(f"steady state: live writes and probes for {options.steady_s:g} s"):
        run.probe.phase = "steady"
        run.writers.append(Writer.start(counting, writer_keys, options.write_rate_per_s, options.steady_s,
                                        options.seed + 1))
        run.writers[-1].thread.join(timeout=options.steady_s + 60)
        results.append(run.writers[-1].stop())
        run.probe.stop(wait_s=PROBE_FINISH_WAIT_S)

    with phases.phase("wait until the replicator's lag is zero"):
        wait_for_lag(config, lambda lag: lag.total_records == 0, options.catch_up_timeout_s, "zero lag",
                     run.daemons)

    last_values = {key: value for result in results for key, value in result.last_values.items()}
    with phases.phase(f"check that Kask holds the last seen time of the {len(last_values)} keys written live"):
        confirmed = confirm_in_kask(config, last_values, KASK_CONFIRM_TIMEOUT_S)

    with phases.phase("verify: compare every watched key in Redis and Kask (echoseen verify)"):
        verify_status, output = run_tool("verify", ["verify", "--json", *target.config_args], log_dir, run.tools)
        try:
            verify = json.loads(output)
        except ValueError:
            verify = {}

    writes_made = sum(result.writes for result in results)
    replicated_writes = sum(count for key, count in counting.writes_per_key.items() if key in confirmed)
    this_run = backfill.get("this_run", {})
    run.report.update({
        "keyspace": {
            "echo_keys": loaded.counts.echo_keys,
            "unrelated_keys": loaded.counts.unrelated_keys,
            "users": loaded.counts.users,
            "placeholders": loaded.counts.placeholders,
            "load_s": round(loaded.elapsed_s, 1),
        },
        "backfill": {
            "exit_status": status,
            "scanned": this_run.get("scanned"),
            "matched": this_run.get("matched"),
            "published": this_run.get("published"),
            "skipped": this_run.get("skipped"),
            "bad_values": this_run.get("bad_values"),
            "copy_s": this_run.get("copy_s"),
        },
        "live_writes": {
            "requested_rate_per_s": options.write_rate_per_s,
            "rate_per_s": [round(result.rate_per_s, 1) for result in results],
            "during_backfill": results[0].writes,
            "during_steady_state": results[1].writes,
            "made": writes_made,
            "keys": len(last_values),
            "keys_confirmed_in_kask": len(confirmed),
            "replicated": replicated_writes,
        },
        "probe": {
            "method": "probe: SETEX of a seen time 'now' on a key no other writer touches, then Kask GETs until "
                      "MediaWiki would read it back",
            "interval_s": options.probe_interval_s,
            "skipped_while_busy": run.probe.skipped,
            "during_backfill": delay_summary(run.probe, "backfill"),
            "steady_state": delay_summary(run.probe, "steady"),
        },
        "capture_published": scrape_capture(target.capture_url + "/metrics"),
        "replicator": scrape_replicator(target.replicator_url + "/metrics"),
        "verify": {
            "exit_status": verify_status,
            "passed": bool(verify.get("passed")),
            "compared": verify.get("compared"),
            "bad": verify.get("bad"),
            "categories": verify.get("categories", {}),
        },
    })
    everything_replicated = replicated_writes == writes_made and len(confirmed) == len(last_values)
    return EXIT_OK if verify_status == EXIT_OK and everything_replicated else EXIT_FAILED


def caught_up(lag: Any) -> bool:
    return lag.max_seconds is not None and lag.max_seconds <= CAUGHT_UP_LAG_S and lag.total_records <= CAUGHT_UP_RECORDS


def clean_environment() -> list[str]:
    """Remove ECHOSEEN_* setting variables, so the operator's environment cannot redirect the demo's commands."""
    removed = [name for name in os.environ if name.startswith("ECHOSEEN_") and name not in KEPT_VARIABLES]
    for name in removed:
        del os.environ[name]
    return removed


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)

    parser.add_argument("--keys", type=int, default=200_000,
                        help="Echo seen-time keys to generate in Redis (default %(default)s)")
    parser.add_argument("--write-rate", type=float, default=200.0, metavar="PER_S",
                        help="live seen-time writes per second during the backfill and the steady state "
                             "(default %(default)s)")
    parser.add_argument("--steady-s", type=float, default=30.0, metavar="SECONDS",
                        help="seconds of live writes and probes after the replicator caught up (default %(default)s)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="work folder, emptied at the start; logs stay in it (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the keyspace and the writes")
    parser.add_argument("--probe-interval-s", type=float, default=0.5, metavar="SECONDS",
                        help="seconds between two delay probes (default %(default)s)")
    parser.add_argument("--catch-up-timeout-s", type=float, default=None, metavar="SECONDS",
                        help="how long the replicator may take to catch up (default: 600 s plus 20 ms per key)")

    external = parser.add_argument_group(
        "existing services",
        "With --external the demo starts no stack: it uses the services of the echoseen configuration (the "
        "file of --config, else $ECHOSEEN_CONFIG, plus ECHOSEEN_* variables), as docker-compose.yml's demo "
        "service does. It starts the capture and the replicator itself unless their URLs are given.")
    external.add_argument("--external", action="store_true", help="use existing services instead of a local stack")
    external.add_argument("-c", "--config", type=Path, metavar="FILE", help="echoseen configuration file")
    external.add_argument("--capture-url", default="", metavar="URL",
                          help="base URL of a running capture's /metrics and /readyz, e.g. http://capture:9464")
    external.add_argument("--replicator-url", default="", metavar="URL",
                          help="base URL of a running replicator's /metrics and /readyz")

    args = parser.parse_args(argv)
    if (args.config or args.capture_url or args.replicator_url) and not args.external:
        parser.error("--config, --capture-url and --replicator-url need --external")
    if args.keys < PROBE_KEYS + 100:
        parser.error(f"--keys must be at least {PROBE_KEYS + 100}, got {args.keys}")
    if args.write_rate <= 0:
        parser.error(f"--write-rate must be positive, got {args.write_rate}")
    if args.steady_s < 0 or args.probe_interval_s <= 0:
        parser.error("--steady-s must not be negative and --probe-interval-s must be positive")

    catch_up_timeout_s = args.catch_up_timeout_s or 600.0 + 0.02 * args.keys
    return Options(args.keys, args.write_rate, args.steady_s, args.dir, args.seed, args.probe_interval_s,
                   catch_up_timeout_s, args.external, args.config, args.capture_url.rstrip("/"),
                   args.replicator_url.rstrip("/"))


def classify_failure(exc: BaseException, run: Run) -> tuple[int, str]:
    """Return the exit status and the message for an exception that ended the demo."""
    if STOP.signal_name is not None or isinstance(exc, KeyboardInterrupt):
        if not isinstance(exc, KeyboardInterrupt):
            log.warning("%s arrived during a call that raised %s: %s", STOP.signal_name, type(exc).__name__, exc)
        return EXIT_INTERRUPTED, f"interrupted ({STOP.signal_name or 'SIGINT'})"
    if isinstance(exc, StackError):
        # A stack that did not start is an unavailable service; a later StackError is a failed run.
        return (EXIT_UNAVAILABLE if run.stack is None and not run.options.external else EXIT_FAILED), str(exc)
    if isinstance(exc, EchoseenError):
        # An invalid configuration (--external) or a service that rejected the demo's connection.
        return exc.exit_status, str(exc)
    log.error("the demo failed", exc_info=exc)
    return EXIT_FAILED, f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # With a local stack the demo's own configuration applies; with --external the environment is the configuration.
    removed = [] if options.external else clean_environment()
    try:
        workdir = demo_stack.prepare_workdir(options.workdir, wipe=True)
    except StackError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    options = Options(**{**options.__dict__, "workdir": workdir})
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    # The demo's own log goes to a file; the terminal shows the phases and the report.
    logging.basicConfig(level=logging.INFO, filename=str(log_dir / "demo.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if removed:
        log.warning("ignoring these environment variables so they cannot redirect the demo: %s", ", ".join(removed))
    signal.signal(signal.SIGINT, STOP.handle)
    signal.signal(signal.SIGTERM, STOP.handle)

    run = Run(options)
    try:
        status = run_demo(run)
        error = None
    except BaseException as exc:  # noqa: BLE001 - reported below, after everything is stopped
        status, error = classify_failure(exc, run)
    finally:
        print(f"[{run.phases.total_s():7.1f} s] stopping everything the demo started ...", flush=True)
        # A second Ctrl+C or SIGTERM must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.stop_all()

    run.report.update({
        "exit_status": status,
        "error": error,
        "workdir": str(workdir),
        "config": str(workdir / demo_stack.CONFIG_FILE),
        "logs": {**({name: str(path) for name, path in run.stack.log_files().items()} if run.stack else {}),
                 **{daemon.name: str(daemon.log_path) for daemon in run.daemons},
                 "echoseen commands": str(log_dir), "demo": str(log_dir / "demo.log")},
        "phases": [{"name": name, "seconds": round(seconds, 1)} for name, seconds in run.phases.durations],
        "stack_startup_s": {name: round(seconds, 1) for name, seconds in run.stack.startup_s.items()}
        if run.stack else {},
        "total_s": round(run.phases.total_s(), 1),
        "processes": run.started_processes(),
    })
    (workdir / "report.json").write_text(json.dumps(run.report, indent=2) + "\n")
    print(render_report(run.report), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
