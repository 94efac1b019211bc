"""Progress output and PING latency sampling for the backfill.

Progress is a one-line bar on a terminal and a log line every
``[backfill] progress_log_interval_s`` otherwise. The share done comes from
the SCAN cursor (see :func:`capture.backfill_scan.scan_fraction`) and the
key count from DBSIZE, so a canary that matches few keys still shows how far
through the keyspace it is.

The PING sampler runs in a separate process, so the job's own Python work
(which holds the interpreter lock) does not inflate the latencies it
measures. It takes a baseline before the scan starts, then one sample per
server every ``[backfill] ping_sample_interval_s``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pickle
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from capture.sources import Source
from echoseen.config import Config

log = logging.getLogger(__name__)

BASELINE_PING_SAMPLES = 20
BASELINE_PING_INTERVAL_S = 0.05
SAMPLER_START_TIMEOUT_S = 30.0
BAR_REDRAW_INTERVAL_S = 0.2
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Progress of one server's scan at a time, as a bar (terminal) or periodic log lines."""

    def __init__(self, log_interval_s: float, count_label: str, stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.tty = self._stream.isatty() if tty is None else tty
        self._log_interval_s = log_interval_s
        self._count_label = count_label
        self._server = ""
        self._dbsize = 0
        self._start_fraction = 0.0
        self._started = 0.0
        self._last_output = 0.0
        self._bar_shown = False

    def begin(self, server: str, dbsize: int, start_fraction: float) -> None:
        self._server = server
        self._dbsize = dbsize
        self._start_fraction = start_fraction
        self._started = self._last_output = time.monotonic()

    def restart(self, dbsize: int) -> None:
        self.begin(self._server, dbsize, 0.0)

    def update(self, fraction: float, scanned: int, counted: int) -> None:
        now = time.monotonic()
        interval_s = BAR_REDRAW_INTERVAL_S if self.tty else self._log_interval_s
        if interval_s <= 0 or now - self._last_output < interval_s:
            return
        self._last_output = now
        self._render(now, fraction, scanned, counted)

    def end(self, fraction: float, scanned: int, counted: int) -> None:
        if self.tty:
            self._render(time.monotonic(), fraction, scanned, counted)
            self._stream.write("\n")
            self._stream.flush()
            self._bar_shown = False

    def clear(self) -> None:
        """Erase the bar so that a log line is not appended to it."""
        if self.tty and self._bar_shown:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._bar_shown = False

    def _render(self, now: float, fraction: float, scanned: int, counted: int) -> None:
        elapsed_s = max(now - self._started, 1e-9)
        done_keys = (fraction - self._start_fraction) * self._dbsize
        rate = done_keys / elapsed_s
        remaining_keys = (1.0 - fraction) * self._dbsize
        eta = format_duration(remaining_keys / rate) if rate > 0 else "?"
        percent = 100.0 * fraction
        if self.tty:
            filled = int(BAR_WIDTH * fraction)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self._stream.write(f"\r{self._server} [{bar}] {percent:5.1f}% of {self._dbsize:,} keys, "
                               f"{scanned:,} scanned, {counted:,} {self._count_label}, {rate:,.0f} keys/s, "
                               f"ETA {eta}\033[K")
            self._stream.flush()
            self._bar_shown = True
        else:
            log.info("backfill progress %s: %.1f %% of %d keys (DBSIZE), %d keys scanned, %d %s, "
                     "%.0f keys/s, ETA %s", self._server, percent, self._dbsize, scanned, counted,
                     self._count_label, rate, eta)


def latency_stats(samples_s: Sequence[float]) -> dict[str, Any]:
    """Summarize latencies as p50, p99 and max in milliseconds (nearest-rank percentiles)."""
    if not samples_s:
        return {"samples": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples_s)

    def rank(quantile: float) -> float:
        return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)] * 1000.0

    return {"samples": len(ordered), "p50_ms": round(rank(0.50), 3), "p99_ms": round(rank(0.99), 3),
            "max_ms": round(ordered[-1] * 1000.0, 3)}


def _sample_pings(config: Config, sources: list[Source], interval_s: float) -> None:
    """Body of the sampler process: PING every source on its own connection, one JSON line per sample.

    The process stops when its standard input reaches end of file, which
    happens when the job closes it or dies.
    """
    # A terminal's Ctrl+C reaches the whole process group; the job decides when this process stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import redis

    from capture.sources import connect

    def emit(phase: str, server: str, latency_s: float | None) -> None:
        sys.stdout.write(json.dumps([phase, server, time.monotonic(), latency_s]) + "\n")
        sys.stdout.flush()

    try:
        clients = {source.name: connect(config, source, retries=0, client_name="echoseen-backfill-ping",
                                        socket_timeout_s=2.0) for source in sources}
    except Exception as exc:  # noqa: BLE001 - reported to the job, which runs on without samples
        emit("error", repr(exc), None)
        return

    def sample(phase: str) -> None:
        for name, client in clients.items():
            started = time.perf_counter()
            try:
                client.ping()
                latency_s: float | None = time.perf_counter() - started
            except (redis.RedisError, OSError):
                latency_s = None
            emit(phase, name, latency_s)

    for _ in range(BASELINE_PING_SAMPLES):
        sample("baseline")
        time.sleep(BASELINE_PING_INTERVAL_S)
    emit("ready", "", None)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], interval_s)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            return
        sample("during")


class PingMonitor:
    """PING latency of each server before and during its scan, measured by a separate process."""

    def __init__(self, config: Config, sources: list[Source], interval_s: float) -> None:
        self._config = config
        self._sources = sources
        self._interval_s = interval_s
        self._baseline: dict[str, list[float]] = {source.name: [] for source in sources}
        self._during: list[tuple[str, float, float]] = []
        self._windows: dict[str, list[tuple[float, float]]] = {source.name: [] for source in sources}
        self._open_windows: dict[str, float] = {}
        self._failed: dict[str, int] = {source.name: 0 for source in sources}
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self.error: str | None = None

    @property
    def enabled(self) -> bool:
        return self._interval_s > 0

    def start(self) -> None:
        """Start the sampler and wait until its baseline is taken."""
        if not self.enabled:
            return
        config = self._config
        if isinstance(getattr(config, "environ", None), os._Environ):
            # os.environ cannot be pickled; the sampler needs a plain copy to find the password variable.
            config = dataclasses.replace(config, environ=dict(config.environ))
        package_root = str(Path(__file__).resolve().parent.parent)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
        self._process = subprocess.Popen([sys.executable, "-m", "capture.backfill_progress"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=environment)
        # The pipe carries the configuration to a child of this process only; nothing reaches the command line.
        self._process.stdin.write(pickle.dumps((config, self._sources, self._interval_s)))
        self._process.stdin.flush()
        self._reader = threading.Thread(target=self._read_lines, name="backfill-ping-reader", daemon=True)
        self._reader.start()
        log.info("measuring the PING latency baseline of %d server(s) before the scan (%d samples each)",
                 len(self._sources), BASELINE_PING_SAMPLES)

        deadline = time.monotonic() + SAMPLER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                message = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if message is None:
                self.error = f"the PING sampler exited with status {self._process.wait()}"
                break
            if message[0] == "ready":
                return
            if message[0] == "error":
                self.error = f"the PING sampler could not connect: {message[1]}"
                break
            self._record(message)
        else:
            self.error = f"the PING sampler took its baseline for more than {SAMPLER_START_TIMEOUT_S:.0f} s"
        log.warning("%s; the summary will have no PING latencies", self.error)
        self.stop()

    def _read_lines(self) -> None:
        for line in self._process.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                continue
        self._lines.put(None)

    def scan_started(self, server: str) -> None:
        self._open_windows[server] = time.monotonic()

    def scan_stopped(self, server: str) -> None:
        started = self._open_windows.pop(server, None)
        if started is not None:
            self._windows[server].append((started, time.monotonic()))

    def collect(self) -> None:
        """Take the samples the sampler sent so far; cheap enough for every progress tick."""
        while True:
            try:
                message = self._lines.get_nowait()
            except queue.Empty:
                return
            if message is not None:
                self._record(message)

    def _record(self, message: list) -> None:
        phase, server, at, latency_s = message
        if server not in self._baseline:
            return
        if latency_s is None:
            self._failed[server] += 1
            return
        if phase == "baseline":
            self._baseline[server].append(latency_s)
        elif phase == "during":
            self._during.append((server, at, latency_s))

    def stop(self) -> None:
        if self._process is None:
            return
        # End of file on its standard input stops the sampler.
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.collect()
        self._process = None

    def impact(self, server: str) -> dict[str, Any] | None:
        """PING latency of one server before its scan and while it ran; None when sampling was off."""
        if not self.enabled:
            return None
        windows = list(self._windows.get(server, []))
        if server in self._open_windows:
            windows.append((self._open_windows[server], time.monotonic()))
        during = [latency for name, at, latency in self._during
                  if name == server and any(start <= at <= end for start, end in windows)]
        return {"before": latency_stats(self._baseline.get(server, [])), "during": latency_stats(during),
                "failed_pings": self._failed.get(server, 0), "error": self.error}


def main() -> None:
    """Run as the sampler process: read (config, sources, interval) from standard input, then sample."""
    config, sources, interval_s = pickle.load(sys.stdin.buffer)
    _sample_pings(config, sources, interval_s)


if __name__ == "__main__":
    main()
